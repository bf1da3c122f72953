"""Hypothesis settings profiles ``dev``, ``ci`` and ``thorough``.

>>> from bncheck.profiles import load_profile
>>> load_profile("ci").derandomize
True

``ci`` is deterministic (``derandomize=True``, no example database), so a CI run never flakes
and a failure there fails the same way on a laptop. The profile is chosen by the
``HYPOTHESIS_PROFILE`` environment variable (default ``dev``) when tests import bncheck's
pytest plugin, or explicitly with :func:`load_profile`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, Verbosity, settings

from bncheck.errors import InvalidArgument

__all__ = ["PROFILES", "register_profiles", "load_profile", "profile_from_env"]

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

#: max_examples per property for each profile.
PROFILES: dict[str, int] = {"dev": 25, "ci": 20, "thorough": 300}


def register_profiles() -> None:
    """Register ``dev``, ``ci`` and ``thorough`` with Hypothesis (idempotent)."""
    settings.register_profile(
        "dev", max_examples=PROFILES["dev"], deadline=None, suppress_health_check=_SUPPRESS)
    settings.register_profile(
        "ci", max_examples=PROFILES["ci"], deadline=None, derandomize=True, database=None,
        print_blob=True, suppress_health_check=_SUPPRESS,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])
    settings.register_profile(
        "thorough", max_examples=PROFILES["thorough"], deadline=None,
        suppress_health_check=_SUPPRESS, verbosity=Verbosity.normal)


def load_profile(name: str) -> settings:
    """Register the profiles, make ``name`` the current one, and return its settings."""
    if name not in PROFILES:
        raise InvalidArgument(
            f"Expected profile to be one of {sorted(PROFILES)}, received profile={name!r}")
    register_profiles()
    settings.load_profile(name)
    return settings.get_profile(name)


def profile_from_env(default: str = "dev") -> str:
    """The profile named by ``HYPOTHESIS_PROFILE``, or ``default``."""
    return os.environ.get("HYPOTHESIS_PROFILE", default)
