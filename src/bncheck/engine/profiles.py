"""bncheck's Hypothesis settings profiles ``dev``, ``ci`` and ``thorough``.

>>> from bncheck.engine.profiles import load_profile
>>> load_profile("ci").derandomize
True

They are registered with Hypothesis under their own names, ``bncheck-dev``, ``bncheck-ci`` and
``bncheck-thorough``, so a user's own ``ci`` profile is never redefined. ``ci`` is deterministic
(``derandomize=True``, no example database), so a CI run never flakes and a failure there fails
the same way on a laptop. ``HYPOTHESIS_PROFILE=bncheck-ci`` (or ``ci``, for ``bncheck verify``)
picks one; :func:`load_profile` makes one current.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from hypothesis import HealthCheck, Phase, Verbosity, settings

from bncheck.errors import InvalidArgument

__all__ = ["PROFILES", "register_profiles", "load_profile", "profile_from_env", "registered_name",
           "machine_independent_draws"]

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

#: max_examples per property for each profile.
PROFILES: dict[str, int] = {"dev": 25, "ci": 20, "thorough": 300}


PREFIX = "bncheck-"


def registered_name(name: str) -> str:
    """The name Hypothesis knows bncheck's profile ``name`` by: ``bncheck-<name>``."""
    return PREFIX + name


def register_profiles() -> None:
    """Register ``bncheck-dev``, ``bncheck-ci`` and ``bncheck-thorough`` (idempotent); no other
    profile is touched."""
    settings.register_profile(
        registered_name("dev"), max_examples=PROFILES["dev"], deadline=None,
        suppress_health_check=_SUPPRESS)
    settings.register_profile(
        registered_name("ci"), max_examples=PROFILES["ci"], deadline=None, derandomize=True,
        database=None, print_blob=True, suppress_health_check=_SUPPRESS,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])
    settings.register_profile(
        registered_name("thorough"), max_examples=PROFILES["thorough"], deadline=None,
        suppress_health_check=_SUPPRESS, verbosity=Verbosity.normal)


def load_profile(name: str) -> settings:
    """Register the profiles, make bncheck's ``name`` (``dev``, ``ci``, ``thorough``, or the
    same with the ``bncheck-`` prefix) the current one, and return its settings."""
    short = name.removeprefix(PREFIX)
    if short not in PROFILES:
        raise InvalidArgument(
            f"Expected profile to be one of {sorted(PROFILES)}, received profile={name!r}")
    register_profiles()
    settings.load_profile(registered_name(short))
    return settings.get_profile(registered_name(short))


def profile_from_env(default: str = "dev") -> str:
    """bncheck's profile named by ``HYPOTHESIS_PROFILE`` (``bncheck-ci`` or ``ci`` -> ``ci``),
    or ``default`` when it is unset or names a profile of the user's own."""
    value = os.environ.get("HYPOTHESIS_PROFILE", "")
    short = value.removeprefix(PREFIX)
    return short if short in PROFILES else default


@contextlib.contextmanager
def machine_independent_draws() -> Iterator[None]:
    """Make Hypothesis draw the same cases for the same seed on every machine.

    Hypothesis (since 6.13x) draws about 15% of floats, and some integers, from a pool of
    "local constants": every numeric literal in every loaded module that is not in
    site-packages, the standard library or a ``test``/``tests`` folder. So the cases a seed draws
    depend on how bncheck is installed (editable: its own source is in the pool; from a wheel:
    it is not), on the folder a checkout lives in, on the script that calls bncheck and on the
    target's own file. Inside this context the pool is empty, so a seed and bncheck's version
    alone fix the cases, and a ``Reproduce:`` line replays the same counterexample anywhere.
    Restored on exit (no lasting change to the caller's Hypothesis).
    """
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover - a Hypothesis without the pool
        yield
        return
    original = getattr(providers, "_get_local_constants", None)
    if original is None or not hasattr(providers, "Constants"):  # pragma: no cover
        yield
        return
    empty = providers.Constants()
    providers._get_local_constants = lambda: empty
    providers.CONSTANTS_CACHE.cache.clear()
    try:
        yield
    finally:
        providers._get_local_constants = original
        providers.CONSTANTS_CACHE.cache.clear()
