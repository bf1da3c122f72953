"""pytest plugin (entry point ``bncheck``): the property catalogue in your own test suite.

::

    import pytest

    @pytest.mark.bncheck(convention="onnx", dims=(2, 4))     # defaults for this test
    def test_my_bn(bncheck_verify):
        bncheck_verify(MyBN)                                 # raises with the counterexample

The fixture ``bncheck_verify`` is :func:`bncheck.check_batchnorm` (a :class:`VerifyFixture`):
keyword arguments given in the call win over the ``bncheck`` marker's, which win over the
command line (``--bncheck-profile``, ``--bncheck-seed``), which wins over the ini keys
(``bncheck_profile``, ``bncheck_seed``); with none of them the profile comes from
``HYPOTHESIS_PROFILE`` (``bncheck-ci`` or ``ci``), as :func:`bncheck.check_batchnorm` reads it.
A failure shows the test's own line and bncheck's report (the property, the shrunk
counterexample, the mismatch, the replay call), not bncheck's source.

Loading the plugin is light: this module imports pytest and the standard library only;
Hypothesis, torch and the catalogue are imported when a test uses the fixture. Only when
``HYPOTHESIS_PROFILE`` names one of bncheck's profiles (``bncheck-dev``, ``bncheck-ci``,
``bncheck-thorough``) does configuring pytest import Hypothesis, to register and load that
profile for the whole run, as the variable asks. bncheck registers its profiles under those
names only: a user's own profiles, ``ci`` included, are never redefined or loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import pytest

if TYPE_CHECKING:
    import torch

    from bncheck.engine.conventions import Convention
    from bncheck.engine.declaration import Declaration
    from bncheck.engine.runner import Report

__all__ = ["CheckOptions", "VerifyFixture", "PROFILE_NAMES"]

#: bncheck's profiles (:data:`bncheck.engine.profiles.PROFILES`; kept here so that loading the
#: plugin
#: does not import Hypothesis, and checked equal by the tests) and their registered prefix.
PROFILE_NAMES = ("dev", "ci", "thorough")
PREFIX = "bncheck-"

_PROFILE_KEY = pytest.StashKey[tuple[str | None, str]]()
_SEED_KEY = pytest.StashKey[tuple[int | None, str]]()


class CheckOptions(TypedDict, total=False):
    """The keywords of :func:`bncheck.check_batchnorm`, as the fixture and the marker take them."""

    declaration: Declaration | None
    convention: Convention | str
    momentum_weights: str | None
    running_var: str | None
    running_stat: str | None
    momentum: float | None
    eps: float
    dims: Sequence[int] | None
    dtypes: Sequence[str | torch.dtype] | None
    properties: Sequence[str] | None
    profile: str | None
    examples: int | None
    seed: int | None
    names: Mapping[str, str] | None
    channel_axis: int | None
    mode_argument: str | None
    fixed: Mapping[str, Any] | None
    empty_batches: bool | None
    timeout: float | None
    jobs: int
    framework: str | None
    variant: str | None
    variant_args: Mapping[str, Any] | None


OPTION_NAMES = frozenset(CheckOptions.__annotations__)


class VerifyFixture:
    """The ``bncheck_verify`` fixture: :func:`bncheck.check_batchnorm` with this test's defaults
    (the ``bncheck`` marker's keywords, then ``--bncheck-profile``/``--bncheck-seed`` or their
    ini keys)."""

    def __init__(self, defaults: CheckOptions, nodeid: str) -> None:
        self.defaults = defaults
        self.nodeid = nodeid

    def __call__(self, obj: Any, /, **options: Unpack[CheckOptions]) -> Report:
        """Run the catalogue against ``obj`` (a BatchNorm class or factory); return the
        :class:`~bncheck.engine.runner.Report`, or fail the test with bncheck's report."""
        __tracebackhide__ = True
        from bncheck.engine.runner import check_batchnorm
        from bncheck.errors import BNCheckError

        _check_option_names(options, "bncheck_verify()")
        merged: dict[str, Any] = {**self.defaults, **options}
        try:
            return check_batchnorm(obj, **merged)
        except BNCheckError as e:
            # raised here, from None: the traceback ends at the test's own line, and the
            # message is the report (property, counterexample, mismatch, replay)
            raise e.with_traceback(None) from None


def _check_option_names(options: Mapping[str, Any], where: str) -> None:
    __tracebackhide__ = True
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        import difflib

        hints = [f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(
            u, OPTION_NAMES, n=1)) else repr(u) for u in unknown]
        raise pytest.UsageError(
            f"{where}: unknown keyword {', '.join(hints)}; expected keywords of "
            f"bncheck.check_batchnorm: {', '.join(sorted(OPTION_NAMES))}")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bncheck", "bncheck (the bncheck_verify fixture)")
    group.addoption("--bncheck-profile", choices=PROFILE_NAMES, default=None,
                    help="Hypothesis profile of the bncheck_verify fixture (default: the ini key "
                         "bncheck_profile, else HYPOTHESIS_PROFILE, else ci)")
    group.addoption("--bncheck-seed", type=int, default=None, metavar="SEED",
                    help="seed of the bncheck_verify fixture's draws (default: the ini key "
                         "bncheck_seed, else 0 under the ci profile and random otherwise)")
    parser.addini("bncheck_profile", "Hypothesis profile of the bncheck_verify fixture: "
                  + ", ".join(PROFILE_NAMES), default="")
    parser.addini("bncheck_seed", "seed of the bncheck_verify fixture's draws", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bncheck(**options): keyword defaults of the bncheck_verify fixture for this "
        "test (any keyword of bncheck.check_batchnorm: convention, dims, properties, ...)")
    config.stash[_PROFILE_KEY] = _resolve_profile(config)
    config.stash[_SEED_KEY] = _resolve_seed(config)
    name = os.environ.get("HYPOTHESIS_PROFILE", "")
    if name.startswith(PREFIX) and name.removeprefix(PREFIX) in PROFILE_NAMES:
        from bncheck.engine.profiles import load_profile

        load_profile(name)


def _resolve_profile(config: pytest.Config) -> tuple[str | None, str]:
    given = config.getoption("bncheck_profile")
    if given is not None:
        return given, "--bncheck-profile"
    ini = str(config.getini("bncheck_profile")).strip()
    if ini:
        if ini.removeprefix(PREFIX) not in PROFILE_NAMES:
            raise pytest.UsageError(
                f"Expected the ini key bncheck_profile to be one of {', '.join(PROFILE_NAMES)}, "
                f"received bncheck_profile={ini!r}")
        return ini.removeprefix(PREFIX), "ini bncheck_profile"
    env = os.environ.get("HYPOTHESIS_PROFILE", "").removeprefix(PREFIX)
    if env in PROFILE_NAMES:
        return None, f"HYPOTHESIS_PROFILE={os.environ['HYPOTHESIS_PROFILE']}"
    return None, "default"


def _resolve_seed(config: pytest.Config) -> tuple[int | None, str]:
    given = config.getoption("bncheck_seed")
    if given is not None:
        return given, "--bncheck-seed"
    ini = str(config.getini("bncheck_seed")).strip()
    if ini:
        try:
            return int(ini), "ini bncheck_seed"
        except ValueError:
            raise pytest.UsageError(f"Expected the ini key bncheck_seed to be a whole number, "
                                    f"received bncheck_seed={ini!r}") from None
    return None, "default"


def pytest_report_header(config: pytest.Config) -> str:
    from bncheck._version import __version__

    profile, profile_from = config.stash[_PROFILE_KEY]
    seed, seed_from = config.stash[_SEED_KEY]
    if profile is None:
        env = os.environ.get("HYPOTHESIS_PROFILE", "").removeprefix(PREFIX)
        profile = env if env in PROFILE_NAMES else "ci"  # bncheck.engine.runner.resolve_profile
    if seed is not None:
        seed_text = f"seed {seed} ({seed_from})"
    else:
        seed_text = "seed 0 (the ci default)" if profile == "ci" else "seed random per call"
    return f"bncheck {__version__}: bncheck_verify profile {profile} ({profile_from}), {seed_text}"


@pytest.fixture
def bncheck_verify(request: pytest.FixtureRequest) -> VerifyFixture:
    """:func:`bncheck.check_batchnorm` with this test's defaults: run the catalogue against a
    BatchNorm, fail the test with bncheck's report."""
    defaults: dict[str, Any] = {}
    profile, _ = request.config.stash[_PROFILE_KEY]
    seed, _ = request.config.stash[_SEED_KEY]
    if profile is not None:
        defaults["profile"] = profile
    if seed is not None:
        defaults["seed"] = seed
    for mark in reversed(list(request.node.iter_markers("bncheck"))):  # closest mark wins
        if mark.args:
            raise pytest.UsageError(
                f"{request.node.nodeid}: @pytest.mark.bncheck takes keywords only (defaults of "
                f"bncheck_verify), received positional {mark.args!r}")
        _check_option_names(mark.kwargs, f"{request.node.nodeid}: @pytest.mark.bncheck")
        defaults.update(mark.kwargs)
    return VerifyFixture(CheckOptions(**defaults), request.node.nodeid)  # type: ignore[typeddict-item]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("bncheck") is not None and \
                "bncheck_verify" not in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.bncheck gives defaults to the bncheck_verify "
                f"fixture, and this test does not use it (add a bncheck_verify argument)")
