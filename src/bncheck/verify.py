"""Run the property catalogue against a BatchNorm with Hypothesis and collect a report.

>>> import torch
>>> from bncheck.verify import verify
>>> report = verify(torch.nn.BatchNorm2d, properties=["train_forward"], examples=3, seed=0)
>>> report.ok, report.results[0].status
(True, 'passed')

Each property is its own Hypothesis run, seeded by ``seed`` (derandomized, no example database),
so ``properties=[name], seed=seed`` replays exactly the case a full run reported. A failure
carries the shrunk counterexample and its mismatch report; an exception raised inside the target
is a failure of the property that triggered it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Flaky
from hypothesis.reporting import with_reporter

from bncheck._validation import check_type
from bncheck.adapter import PropertyFailure, Target
from bncheck.conventions import Convention
from bncheck.errors import InvalidArgument, VerificationFailed
from bncheck.profiles import PROFILES, profile_from_env, register_profiles
from bncheck.properties import CATALOGUE, Context, Property, get
from bncheck.strategies import DTYPES, dtype_name

__all__ = ["PropertyResult", "Report", "verify", "check_batchnorm", "build_target"]


@dataclass
class PropertyResult:
    """One property's outcome: ``passed``, ``failed``, ``skipped`` or ``error`` (bncheck bug)."""

    name: str
    status: str
    message: str = ""
    counterexample: str = ""
    examples: int = 0
    seconds: float = 0.0
    replay: str = ""

    def render(self, label: str) -> str:
        if self.status == "passed":
            return f"property {self.name} passed ({self.examples} examples)"
        if self.status == "skipped":
            return f"property {self.name} skipped: {self.message}"
        head = f"property {self.name} {self.status} ({label}, {self.counterexample})"
        tail = f"\nReproduce: {self.replay}" if self.replay else ""
        return f"{head}\n{self.message}{tail}"


@dataclass
class Report:
    """All properties' results for one target."""

    target: str
    convention: str
    seed: int
    profile: str
    results: list[PropertyResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status in ("passed", "skipped") for r in self.results)

    @property
    def failed(self) -> list[PropertyResult]:
        return [r for r in self.results if r.status in ("failed", "error")]

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "convention": self.convention, "seed": self.seed,
                "profile": self.profile, "ok": self.ok,
                "properties": [asdict(r) for r in self.results]}

    def render(self) -> str:
        """The failures (or a one-line summary), as the assertion message."""
        parts = [r.render(self.target) for r in self.failed]
        passed = sum(r.status == "passed" for r in self.results)
        summary = (f"{self.target}: {passed} passed, {len(self.failed)} failed, "
                   f"{sum(r.status == 'skipped' for r in self.results)} skipped "
                   f"(convention {self.convention}, seed {self.seed})")
        return "\n\n".join([summary, *parts])


def build_target(obj: Any, *, label: str | None = None, convention: Convention | str = "torch",
                 momentum: float | None = None, eps: float = 1e-5,
                 dims: Sequence[int] | None = None) -> Target:
    """A :class:`~bncheck.adapter.Target` for ``obj`` (a Module class or factory)."""
    from bncheck.conventions import convention as preset

    conv = preset(convention) if isinstance(convention, str) else convention
    if not callable(obj):
        raise InvalidArgument(f"Expected a Module class or a factory, received {obj!r}")
    if dims is not None:
        dims = tuple(dims)
        bad = [d for d in dims if d not in (2, 3, 4, 5)]
        if not dims or bad:
            raise InvalidArgument(f"Expected dims to be input ranks from 2 to 5, received "
                                  f"dims={dims!r}")
    return Target.from_object(obj, label=label, convention=conv, momentum=momentum, eps=eps,
                              dims=dims)


def _settings(profile: str, examples: int | None, shrink: bool) -> settings:
    register_profiles()
    base = settings.get_profile(profile)  # not loaded: the caller's current profile stays
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(base, max_examples=examples or base.max_examples, database=None,
                    derandomize=False, deadline=None, report_multiple_bugs=False,
                    suppress_health_check=list(HealthCheck), phases=phases, print_blob=False)


def run_property(prop: Property, ctx: Context, *, seed: int, config: settings
                 ) -> PropertyResult:
    """Run one property with Hypothesis; never raises for a failing target."""
    reason = prop.skip_reason(ctx)
    if reason is not None:
        return PropertyResult(prop.name, "skipped", reason)
    state: dict[str, Any] = {"count": 0, "case": None}

    def test(case: Any) -> None:
        state["count"] += 1
        state["case"] = case
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            prop.run(ctx, case)

    runner = hypothesis_seed(seed)(config(given(prop.cases(ctx))(test)))
    start = time.perf_counter()
    try:
        with with_reporter(lambda _msg: None):
            runner()
    except PropertyFailure as e:
        return PropertyResult(prop.name, "failed", str(e), prop.describe(state["case"]),
                              state["count"], time.perf_counter() - start)
    except Flaky as e:
        inner = [x for x in getattr(e, "exceptions", ()) if isinstance(x, PropertyFailure)]
        detail = f"\nFirst failure: {inner[0]}" if inner else ""
        return PropertyResult(prop.name, "failed",
                              "the target is nondeterministic: the same case failed once and "
                              f"passed when rerun (random state or global state in forward?)"
                              f"{detail}", prop.describe(state["case"]), state["count"],
                              time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 - reported as an error of bncheck, not a crash
        case = prop.describe(state["case"]) if state["case"] is not None else "no case drawn"
        return PropertyResult(prop.name, "error",
                              f"internal error in bncheck ({type(e).__name__}: {e}); please "
                              f"report it with --debug output", case, state["count"],
                              time.perf_counter() - start)
    return PropertyResult(prop.name, "passed", "", "", state["count"],
                          time.perf_counter() - start)


def verify(obj: Any | Target, *, properties: Sequence[str] | None = None,
           dtypes: Sequence[str | torch.dtype] | None = None, profile: str | None = None,
           examples: int | None = None, seed: int | None = None, shrink: bool = True,
           replay: Callable[[str, int], str] | None = None,
           on_result: Callable[[PropertyResult], None] | None = None, **target_kwargs: Any
           ) -> Report:
    """Run the catalogue (or ``properties``) against ``obj`` and return a :class:`Report`.

    Args:
        obj: a Module class, a factory, or a prepared :class:`~bncheck.adapter.Target`.
        properties: names to run (default: all).
        dtypes: requested dtypes (default: float32, float64, float16, bfloat16).
        profile: Hypothesis profile ``dev``, ``ci`` or ``thorough`` (default: the one
            ``HYPOTHESIS_PROFILE`` names, if it is one of those, else ``ci``).
        examples: examples per property (default: the profile's).
        seed: Hypothesis seed (default: 0 under ``ci``, else random); reported for replay.
        shrink: shrink failing cases to the smallest counterexample.
        replay: ``replay(property, seed)`` gives the command that reproduces a failure.
        on_result: called with each result as it completes.
        target_kwargs: ``convention``, ``momentum``, ``eps``, ``dims``, ``label`` for
            :func:`build_target`.
    """
    target = obj if isinstance(obj, Target) else build_target(obj, **target_kwargs)
    if profile is None:  # HYPOTHESIS_PROFILE may name the user's own profile: then ci
        env = profile_from_env("ci")
        profile = env if env in PROFILES else "ci"
    if profile not in PROFILES:
        raise InvalidArgument(f"Expected profile to be one of {sorted(PROFILES)}, received "
                              f"profile={profile!r}")
    if examples is not None:
        check_type(int, examples, "examples")
        if examples < 1:
            raise InvalidArgument(f"Expected examples >= 1, received examples={examples}")
    if seed is None:
        seed = 0 if profile == "ci" else secrets.randbelow(2**31)
    check_type(int, seed, "seed")
    requested = tuple(DTYPES.values()) if dtypes is None else _resolve_dtypes(dtypes)
    chosen = [get(n) for n in properties] if properties else list(CATALOGUE)
    ctx = Context(target, requested)
    config = _settings(profile, examples, shrink)
    report = Report(target.label, target.convention.describe(), seed, profile)
    # Tiny tensors: intra-op threads only add contention (200x slower on a loaded 2-core box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for prop in chosen:
            result = run_property(prop, ctx, seed=seed, config=config)
            if result.status in ("failed", "error") and replay is not None:
                result.replay = replay(prop.name, seed)
            report.results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        torch.set_num_threads(threads)
    return report


def _resolve_dtypes(dtypes: Sequence[str | torch.dtype]) -> tuple[torch.dtype, ...]:
    out = []
    for d in dtypes:
        if isinstance(d, str):
            if d not in DTYPES:
                raise InvalidArgument(f"Expected dtypes from {sorted(DTYPES)}, received {d!r}")
            out.append(DTYPES[d])
        elif d in DTYPES.values():
            out.append(d)
        else:
            raise InvalidArgument(f"Expected dtypes from {sorted(DTYPES)}, received {d!r}")
    if not out:
        raise InvalidArgument("Expected at least one dtype, received dtypes=()")
    return tuple(out)


def check_batchnorm(obj: Any, *, convention: Convention | str = "torch",
                    momentum: float | None = None, eps: float = 1e-5,
                    dims: Sequence[int] | None = None,
                    dtypes: Sequence[str | torch.dtype] | None = None,
                    properties: Sequence[str] | None = None, profile: str | None = None,
                    examples: int | None = None, seed: int | None = None) -> Report:
    """Run the property catalogue against ``obj``; raise with the report if any property fails.

    >>> import torch
    >>> from bncheck import check_batchnorm
    >>> _ = check_batchnorm(torch.nn.BatchNorm1d, properties=["eval_forward"], examples=3)

    Use it in your own test suite; the Hypothesis profile comes from ``HYPOTHESIS_PROFILE``
    (``dev``, ``ci``, ``thorough``) unless ``profile`` is given.

    Raises:
        VerificationFailed: (an ``AssertionError``) some property failed; the message is the
            report: each failure's shrunk counterexample, mismatch and replay call.
        InvalidArgument: a bad argument.
    """
    label = getattr(obj, "__qualname__", repr(obj))

    def replay(name: str, s: int) -> str:
        return (f"check_batchnorm({label}, properties=[{name!r}], seed={s}"
                f"{'' if examples is None else f', examples={examples}'}"
                f"{'' if profile is None else f', profile={profile!r}'})")

    report = verify(obj, properties=properties, dtypes=dtypes, profile=profile,
                    examples=examples, seed=seed, replay=replay, convention=convention,
                    momentum=momentum, eps=eps, dims=dims)
    if not report.ok:
        raise VerificationFailed(report.render())
    return report


def dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return ",".join(dtype_name(d) for d in dtypes)
