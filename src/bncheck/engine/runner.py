"""Run the property catalogue against a BatchNorm with Hypothesis and collect a report.

>>> import torch
>>> from bncheck.engine.runner import verify
>>> report = verify(torch.nn.BatchNorm2d, properties=["train_forward"], examples=3, seed=0)
>>> report.ok, report.results[0].status
(True, <Status.PASSED: 'passed'>)

Each property is its own Hypothesis run, seeded by ``seed`` (derandomized, no example database,
no draws from the machine's "local constants": see
:func:`bncheck.engine.profiles.machine_independent_draws`), so ``properties=[name], seed=seed``
replays
exactly the case a full run reported, on any machine. A failure carries the shrunk
counterexample and its mismatch report; an exception raised inside the target is a failure of
the property that triggered it; a failure caused by a defect another property owns says so.
After the drawn cases pass, a property's fixed cases run (``Property.fixed``: train_forward's
one case per memory layout), so what a few draws reach only by chance is reached every run.
"""

from __future__ import annotations

import enum
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Flaky
from hypothesis.reporting import with_reporter

from bncheck.engine.adapter import Target, supported_dims
from bncheck.engine.declaration import Declaration
from bncheck.engine.preflight import CORE_FORWARD
from bncheck.engine.profiles import (
    PROFILES,
    machine_independent_draws,
    profile_from_env,
    register_profiles,
    registered_name,
)
from bncheck.engine.properties import CATALOGUE, Context, Property, get
from bncheck.engine.strategies import DTYPES, dtype_name
from bncheck.errors import (
    InvalidArgument,
    PropertyFailure,
    TargetHung,
    VerificationFailed,
)
from bncheck.infra.validation import DEFAULT_TIMEOUT, check_names, check_timeout, check_type

__all__ = ["Status", "PropertyResult", "Report", "verify", "check_batchnorm", "build_target"]


class Status(enum.StrEnum):
    """A property's outcome."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    ERROR = "error"  # a bug in bncheck


@dataclass
class PropertyResult:
    """One property's outcome; a failure may be the ``consequence_of`` a defect another property
    owns (then the message says so first)."""

    name: str
    status: Status
    message: str = ""
    counterexample: str = ""
    examples: int = 0
    seconds: float = 0.0
    replay: str = ""
    consequence_of: str | None = None

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    def render(self, label: str) -> str:
        if self.status is Status.PASSED:
            return f"property {self.name} passed ({self.examples} examples)"
        if self.status is Status.SKIPPED:
            return f"property {self.name} skipped: {self.message}"
        head = f"property {self.name} {self.status} ({label}, {self.counterexample})"
        tail = f"\nReproduce: {self.replay}" if self.replay else ""
        return f"{head}\n{self.message}{tail}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "message": self.message,
                "counterexample": self.counterexample, "examples": self.examples,
                "seconds": self.seconds, "replay": self.replay,
                "consequence_of": self.consequence_of}


@dataclass
class Report:
    """All properties' results for one target (in the order they finished)."""

    target: str
    convention: str
    seed: int
    profile: str
    results: list[PropertyResult] = field(default_factory=list)
    #: the declaration verified, whole (:meth:`bncheck.engine.declaration.Declaration.to_json`)
    declaration: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """At least one property passed and none failed
        (:func:`bncheck.engine.evidence.verdict`)."""
        return self.verdict().ok

    def verdict(self) -> Any:
        """The run's :class:`~bncheck.engine.evidence.Verdict` (exit code, and why when not ok)."""
        from bncheck.engine.evidence import verdict

        skipped = "; ".join(f"{r.name}: {r.message}" for r in self.results
                            if r.status is Status.SKIPPED)
        return verdict(passed=self.count(Status.PASSED), failed=len(self.failed),
                       skipped=skipped)

    @property
    def failed(self) -> list[PropertyResult]:
        return [r for r in self.results if r.status in (Status.FAILED, Status.ERROR)]

    def count(self, status: Status) -> int:
        return sum(r.status is status for r in self.results)

    def summary(self) -> str:
        return (f"{self.count(Status.PASSED)} passed, {len(self.failed)} failed, "
                f"{self.count(Status.SKIPPED)} skipped")

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "convention": self.convention, "seed": self.seed,
                "profile": self.profile, "ok": self.ok, "declaration": self.declaration,
                "properties": [r.to_json() for r in self.results]}

    def render(self) -> str:
        """The failures (or a one-line summary), as the assertion message."""
        parts = [r.render(self.target) for r in self.failed]
        summary = (f"{self.target}: {self.summary()} (convention {self.convention}, "
                   f"seed {self.seed})")
        return "\n\n".join([summary, *parts])


def build_target(obj: Any, *, label: str | None = None,
                 declaration: Declaration | None = None, debug: bool = False,
                 **declared: Any) -> Target:
    """A :class:`~bncheck.engine.adapter.Target` for ``obj`` (a Module class or factory) as the user
    declares it: ``declaration`` and/or the declarations as keyword arguments (those win),
    every one checked by :class:`~bncheck.engine.declaration.Declaration`'s rule.

    >>> import torch
    >>> build_target(torch.nn.BatchNorm1d, eps=1e-3).eps
    0.001

    Args:
        obj: the BatchNorm class or factory.
        label: how reports name it.
        declaration: what the user declares (:class:`~bncheck.engine.declaration.Declaration`).
        debug: failures show the user-side traceback of exceptions in the target.
        declared: the fields of :class:`~bncheck.engine.declaration.Declaration` (``convention``,
            ``momentum``, ``eps``, ``dims``, ``names``, ``channel_axis``, ``mode_argument``,
            ``fixed``, ``empty_batches``, ``variant``, ``variant_args``, ...); an unknown name
            is an error. ``variant`` (``"batch-renorm"`` or ``"ghost"``,
            :mod:`bncheck.engine.variants`) is judged by that variant's oracle; ``variant_args``
            (``{"r_max": 3, "d_max": 5, "warmup": 0}`` or ``{"virtual_batch": 4}``) the
            constructor takes are passed to it.

    Raises:
        InvalidArgument: a value breaks its rule (``name=value`` and the rule), or an unknown
            declaration.
    """
    decl = as_declaration(declaration, declared)
    if isinstance(obj, torch.nn.Module):
        raise InvalidArgument(f"Expected a Module class or a factory, received an instance "
                              f"{obj!r}; pass its class, {type(obj).__qualname__}, or a factory "
                              f"that builds one from num_features")
    if not callable(obj):
        raise InvalidArgument(f"Expected a Module class or a factory, received {obj!r}")
    if decl.dims is not None:
        known = supported_dims(obj)
        if known is not None and not set(decl.dims) <= set(known):
            raise InvalidArgument(
                f"Expected dims among the input ranks {label or obj.__qualname__} accepts "
                f"({', '.join(map(str, known))}), received dims={decl.dims!r} (its ranks found "
                f"by trying it)")
    return Target.from_object(obj, decl, label=label, debug=debug)


def as_declaration(declaration: Declaration | None, declared: Mapping[str, Any]
                   ) -> Declaration:
    """``declaration`` with ``declared`` (keyword arguments) over it; both checked."""
    if declaration is not None:
        check_type(Declaration, declaration, "declaration")
        return declaration.replace(**declared) if declared else declaration
    return Declaration.from_kwargs(declared)


def _settings(profile: str, examples: int | None, shrink: bool) -> settings:
    register_profiles()
    base = settings.get_profile(registered_name(profile))  # not loaded: the caller's stays
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(base, max_examples=examples or base.max_examples, database=None,
                    derandomize=False, deadline=None, report_multiple_bugs=False,
                    suppress_health_check=list(HealthCheck), phases=phases, print_blob=False)


def _once(prop: Property, ctx: Context, case: Any) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        prop.check(ctx, case)


def _watched_once(prop: Property, ctx: Context, case: Any,
                  on_example: Callable[[Any], None] | None) -> None:
    """:func:`_once`, told to ``on_example`` before (the case) and after (``None``)."""
    if on_example is None:
        _once(prop, ctx, case)
        return
    on_example(case)
    try:
        _once(prop, ctx, case)
    finally:
        on_example(None)


#: The owner named by the training failures of a layer that normalizes training batches with
#: its running averages (a design: no rerun without it exists).
RUNNING_IN_TRAINING = "training normalizes with the running averages (training_mode)"


def _consequence(prop: Property, ctx: Context, case: Any,
                 on_example: Callable[[Any], None] | None = None) -> str | None:
    """The defect(s) other properties own that explain this failure: the failing case rerun
    without them (in float32, where statistics that ``.to()`` does not cast have the right
    dtype; with grad enabled in training and disabled in eval, where a layer that picks its
    mode from grad mode is in the right mode) passes."""
    facts = getattr(ctx, "facts", None)  # the distributed properties have none
    design = getattr(facts, "running_in_training", None)
    if design and prop.name in ("train_forward", "invariances", "gradients", "differential",
                                "reduced_precision", "empty_batch",
                                "running_stats_convergence"):
        return RUNNING_IN_TRAINING
    if case is None or facts is None or prop.name in ("stats_are_buffers",
                                                       "grad_mode_independence"):
        return None
    fixes: list[tuple[str, Callable[[Any], Any]]] = []
    if (facts.stats_not_cast and getattr(case, "dtype", torch.float32) != torch.float32
            and hasattr(case, "with_dtype")):
        fixes.append((facts.stats_not_cast, lambda c: c.with_dtype(torch.float32)))
    if facts.mode_from_grad and hasattr(case, "with_matching_grad_modes"):
        fixes.append((facts.mode_from_grad, lambda c: c.with_matching_grad_modes()))
    tries = [[f] for f in fixes] + ([fixes] if len(fixes) > 1 else [])
    for chosen in tries:
        fixed = case
        for _, fix in chosen:
            fixed = fix(fixed)
        if fixed.describe() == case.describe():
            continue
        try:
            _watched_once(prop, ctx, fixed, on_example)
        except PropertyFailure:
            continue
        return "; ".join(reason for reason, _ in chosen)
    return None


def run_property(prop: Property, ctx: Context, *, seed: int, config: settings,
                 on_example: Callable[[Any], None] | None = None) -> PropertyResult:
    """Run one property with Hypothesis; never raises for a failing target.

    ``on_example(case)`` is called before each run of the target on a case and
    ``on_example(None)`` after it (the watchdog's heartbeat).
    """
    reason = prop.skip_reason(ctx)
    if reason is not None:
        return PropertyResult(prop.name, Status.SKIPPED, reason)
    state: dict[str, Any] = {"count": 0, "case": None}

    def test(case: Any) -> None:
        state["count"] += 1
        state["case"] = case
        _watched_once(prop, ctx, case, on_example)

    runner = hypothesis_seed(seed)(config(given(prop.cases(ctx))(test)))
    start = time.perf_counter()

    def result(status: Status, message: str) -> PropertyResult:
        case = state["case"]
        shown = prop.describe(case) if case is not None else "no case drawn"
        return PropertyResult(prop.name, status, message, shown, state["count"],
                              time.perf_counter() - start)

    try:
        with machine_independent_draws(), with_reporter(lambda _msg: None):
            runner()
        fixed = getattr(prop, "fixed_cases", None)  # the distributed properties have none
        for case in (fixed(ctx) if fixed is not None else ()):
            test(case)  # after the drawn cases pass: reached every run (no shrinking needed)
    except PropertyFailure as e:
        res = result(Status.FAILED, str(e))
        owner = _consequence(prop, ctx, state["case"], on_example)
        if owner is not None:
            res.consequence_of = owner
            why = "" if owner == RUNNING_IN_TRAINING else " (the same case passes without it)"
            res.message = f"consequence of: {owner}{why}\n{res.message}"
        return res
    except Flaky as e:
        inner = [x for x in getattr(e, "exceptions", ()) if isinstance(x, PropertyFailure)]
        detail = f"\nFirst failure: {inner[0]}" if inner else ""
        return result(Status.FAILED, "the target is nondeterministic: the same case failed once "
                      "and passed when rerun (random state or global state in forward?)"
                      f"{detail}")
    except Exception as e:  # noqa: BLE001 - reported as an error of bncheck, not a crash
        return result(Status.ERROR, f"internal error in bncheck ({type(e).__name__}: {e}); "
                      f"please report it with --debug output")
    return PropertyResult(prop.name, Status.PASSED, "", "", state["count"],
                          time.perf_counter() - start)


def resolve_profile(profile: str | None) -> str:
    """``profile``, or the one ``HYPOTHESIS_PROFILE`` names (``ci`` or ``bncheck-ci``), else
    ``ci``; validated."""
    if profile is None:
        return profile_from_env("ci")
    if profile not in PROFILES:
        raise InvalidArgument(f"Expected profile to be one of {sorted(PROFILES)}, received "
                              f"profile={profile!r}")
    return profile


def verify(obj: Any, *, declaration: Declaration | None = None,
           properties: Sequence[str] | None = None, profile: str | None = None,
           examples: int | None = None, seed: int | None = None, shrink: bool = True,
           replay: Callable[[str, int], str] | None = None,
           on_result: Callable[[PropertyResult], None] | None = None,
           timeout: float | None = DEFAULT_TIMEOUT, jobs: int = 1, label: str | None = None,
           debug: bool = False, **declared: Any) -> Report:
    """Run the catalogue (or ``properties``) against ``obj`` and return a :class:`Report`.

    Args:
        obj: a Module class, a factory, or a prepared :class:`~bncheck.engine.adapter.Target`.
        declaration: what the user declares about ``obj``
            (:class:`~bncheck.engine.declaration.Declaration`; with a prepared Target, over its
            own).
        properties: names to run (default: all).
        profile: Hypothesis profile ``dev``, ``ci`` or ``thorough`` (default: the one
            ``HYPOTHESIS_PROFILE`` names, if it is one of those, else ``ci``).
        examples: examples per property (default: the profile's).
        seed: Hypothesis seed (default: 0 under ``ci``, else random); reported for replay.
        shrink: shrink failing cases to the smallest counterexample.
        replay: ``replay(property, seed)`` gives the command that reproduces a failure.
        on_result: called with each result as it completes (a ``constructor`` result first
            when a drawn flag crashes the target).
        timeout: seconds one example may take. The target runs in a worker process that is
            stopped when an example takes longer (also for code that holds the GIL); the
            property then fails with the case and where the target was, and the run goes on.
            The worker is forked from this process, so any object works, even a class defined
            inside a test function (from a fresh interpreter when this process runs other
            threads or has initialised CUDA: the object must then be importable by name).
            ``None``: run in this process, without a limit (for a debugger).
        jobs: properties run at once, each in a worker process of its own (``1``: one after
            another in one worker). The report, and every result in it, is the same whatever
            ``jobs`` is: each property is drawn from ``seed`` alone and runs whole in one
            process. Needs worker processes (``timeout`` not ``None``). The CLI's default is
            ``--jobs auto`` (one per CPU, at most 4); a library call takes one unless asked.
        label, debug: as :func:`build_target` (a prepared Target keeps its own).
        declared: the fields of :class:`~bncheck.engine.declaration.Declaration` (``convention``,
            ``eps``, ``dims``, ``names``, ``dtypes``, ...), over ``declaration``; an unknown
            name is an error, never ignored.

    Raises:
        InvalidArgument: a bad argument, or an unknown declaration.
        TargetError: ``obj`` is not a BatchNorm bncheck can build and run.
    """
    from bncheck.infra.watchdog import Watched, runner_for

    target = prepare(obj, declaration, declared, label=label, debug=debug)
    profile, seed = resolve_run(profile, examples, seed)
    check_timeout(timeout)
    check_jobs(jobs, timeout)
    requested = resolve_dtypes(target.declaration)
    wanted = () if properties is None else check_names(properties, "properties")
    chosen = [get(n) for n in wanted] if wanted else list(CATALOGUE)
    report = Report(target.label, target.convention.describe(), seed, profile,
                    declaration=target.declaration.to_json())

    def add(res: PropertyResult) -> None:
        if res.status in (Status.FAILED, Status.ERROR) and replay is not None and \
                res.name in {p.name for p in chosen}:
            res.replay = replay(res.name, seed)
        report.results.append(res)
        if on_result is not None:
            on_result(res)

    # Tiny tensors: intra-op threads only add contention (200x slower on a loaded 2-core box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runner = runner_for(target, requested, profile, examples, shrink, timeout)
    try:
        try:
            target, findings, facts = runner.preflight()
        except TargetHung as e:  # every property would hang the same way
            add(PropertyResult("preflight", Status.FAILED, str(e), CORE_FORWARD))
            for prop in chosen:
                add(PropertyResult(prop.name, Status.SKIPPED, "not run: the target's first "
                                   "training forward did not return (preflight)"))
            return report
        for f in findings:
            if f.flag == "training_mode" and not any(p.trains for p in chosen):
                continue  # only its eval behaviour is verified: what a frozen layer declares
            add(PropertyResult("constructor" if f.value is not None or f.flag not in \
                               ("running_statistics", "training_mode") else f.flag,
                               Status.FAILED, f.message, f.call))
        if jobs > 1 and len(chosen) > 1 and isinstance(runner, Watched):
            _run_in_parallel(runner, chosen, seed, jobs, add)
        else:
            for prop in chosen:
                add(runner.run(prop, seed))
    finally:
        runner.close()
        torch.set_num_threads(threads)
    return report


def prepare(obj: Any, declaration: Declaration | None, declared: Mapping[str, Any], *,
            label: str | None = None, debug: bool = False) -> Target:
    """The :class:`~bncheck.engine.adapter.Target` a run verifies: ``obj`` built as declared, or a
    prepared Target rebuilt with further declarations over its own (never ignored)."""
    if not isinstance(obj, Target):
        return build_target(obj, label=label, declaration=declaration, debug=debug, **declared)
    if declaration is None and not declared:
        return obj
    base = obj.declaration if declaration is None else declaration
    return build_target(obj.obj, label=label or obj.label, debug=debug or obj.debug,
                        declaration=base, **declared)


def resolve_dtypes(declaration: Declaration) -> tuple[torch.dtype, ...]:
    """The dtypes a run checks: the declared ones, else every dtype bncheck knows."""
    names = declaration.dtypes or tuple(DTYPES)
    return tuple(DTYPES[n] for n in names)


def _run_in_parallel(runner: Any, chosen: Sequence[Property], seed: int, jobs: int,
                     add: Callable[[PropertyResult], None]) -> None:
    """:func:`bncheck.infra.watchdog.run_parallel`, reporting in catalogue order: a result is
    added once every property before it has been (the same report, and the same progress
    lines, as one after another); on Ctrl-C every finished one is added before it propagates."""
    from bncheck.infra.watchdog import run_parallel

    finished: dict[int, PropertyResult] = {}
    reported = 0

    def done(i: int, result: PropertyResult) -> None:
        nonlocal reported
        finished[i] = result
        while reported in finished:
            add(finished.pop(reported))
            reported += 1

    try:
        run_parallel(runner, chosen, seed, jobs, done)
    except KeyboardInterrupt:  # every finished property is in the partial report
        for i in sorted(finished):
            add(finished.pop(i))
        raise


def resolve_run(profile: str | None, examples: int | None, seed: int | None
                ) -> tuple[str, int]:
    """The profile and seed a run uses, ``examples`` checked (one rule for single-process and
    distributed runs): the seed defaults to 0 under ``ci`` (deterministic), else random."""
    profile = resolve_profile(profile)
    if examples is not None:
        check_type(int, examples, "examples")
        if examples < 1:
            raise InvalidArgument(f"Expected examples >= 1, received examples={examples}")
    if seed is None:
        seed = 0 if profile == "ci" else secrets.randbelow(2**31)
    check_type(int, seed, "seed")
    return profile, seed


def check_jobs(jobs: Any, timeout: float | None) -> None:
    """``jobs`` is an int >= 1; more than one needs worker processes (a ``timeout``)."""
    check_type(int, jobs, "jobs")
    if jobs < 1:
        raise InvalidArgument(f"Expected jobs >= 1, received jobs={jobs}")
    if jobs > 1 and timeout is None:
        raise InvalidArgument(f"jobs={jobs} runs properties in worker processes, but "
                              "timeout=None runs them in this process: give a timeout, or "
                              "jobs=1")


def check_batchnorm(obj: Any, *, declaration: Declaration | None = None,
                    properties: Sequence[str] | None = None, profile: str | None = None,
                    examples: int | None = None, seed: int | None = None,
                    timeout: float | None = DEFAULT_TIMEOUT, jobs: int = 1,
                    **declared: Any) -> Report:
    """Run the property catalogue against ``obj``; raise with the report if any property fails.

    >>> import torch
    >>> from bncheck import check_batchnorm
    >>> _ = check_batchnorm(torch.nn.BatchNorm1d, properties=["eval_forward"], examples=3)

    Use it in your own test suite; the Hypothesis profile comes from ``HYPOTHESIS_PROFILE``
    (``ci``/``bncheck-ci``, ``dev``, ``thorough``) unless ``profile`` is given. What you declare
    about ``obj`` is ``declaration`` (a :class:`~bncheck.engine.declaration.Declaration`, e.g. one
    read
    from pyproject.toml with :func:`bncheck.engine.config.declaration_for`) and/or its fields as
    keyword arguments (``convention``, ``momentum``, ``eps``, ``dims``, ``names``,
    ``channel_axis``, ``mode_argument``, ``fixed``, ``empty_batches``, ``variant``,
    ``variant_args``, ``dtypes``, ...; these win); ``momentum=None`` declares a cumulative
    average. ``timeout`` (seconds per example; ``None``: no worker process, no limit) and
    ``jobs`` (properties run at once, each in its own worker; the CLI's default is ``auto``)
    are :func:`verify`'s.

    Raises:
        VerificationFailed: (an ``AssertionError``) some property failed; the message is the
            report: each failure's shrunk counterexample, mismatch and replay call.
        InvalidArgument: a bad argument, or an unknown declaration.
        TargetError: ``obj`` is not a BatchNorm bncheck can build and run.
    """
    label = getattr(obj, "__qualname__", repr(obj))

    def replay(name: str, s: int) -> str:
        return (f"check_batchnorm({label}, properties=[{name!r}], seed={s}"
                f"{'' if examples is None else f', examples={examples}'}"
                f"{'' if profile is None else f', profile={profile!r}'}) "
                f"with the same declarations")

    report = verify(obj, declaration=declaration, properties=properties, profile=profile,
                    examples=examples, seed=seed, replay=replay, timeout=timeout, jobs=jobs,
                    **declared)
    if not report.ok:
        raise VerificationFailed(report.render())
    return report


def dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return ",".join(dtype_name(d) for d in dtypes)


def describe_target(t: Target) -> str:
    """One line: the momentum, eps, ranks and what is drawn, as the run will use them."""
    drawn = sorted(t.configurable)
    if "momentum" in t.configurable:
        momentum = "momentum drawn" + (" (incl. None)" if t.cumulative else "")
    else:
        how = "declared" if t.momentum_declared else "convention default"
        momentum = f"momentum {'None' if t.momentum is None else f'{t.momentum:g}'} ({how})"
    eps = "eps drawn" if "eps" in t.configurable else f"eps {t.eps:g}"
    if "eps" not in t.configurable:
        eps += " (declared)" if t.eps_declared else " (convention default)"
    extras = [f"{k}={v}" for k, v in t.fixed]
    extras += [f"{k}={v}" for k, v in t.names.declared().items()]
    if t.channel_axis == -1:
        extras.append("channels last")
    if t.mode_argument:
        extras.append(f"mode via {t.mode_argument}=")
    return (f"{momentum}, {eps}, dims {','.join(map(str, t.dims))}; drawn: "
            f"{', '.join(drawn) or 'nothing (built with defaults)'}"
            + (f"; declared: {', '.join(extras)}" if extras else ""))

