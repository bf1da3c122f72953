"""``bncheck verify``: run the property catalogue against a BatchNorm implementation."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from bncheck.cli._common import (
    EXIT_INTERRUPTED,
    JOBS_ENV,
    console,
    debug_option,
    err,
    handles_errors,
    resolve_jobs,
)
from bncheck.cli._distributed import SYNC_REFERENCE, distributed_options
from bncheck.cli._watched import runs_watched
from bncheck.engine.declaration import Declaration, declaration_options
from bncheck.errors import InvalidArgument
from bncheck.infra.validation import DEFAULT_TIMEOUT, default_timeout

REFERENCE = "bncheck.reference:BatchNorm"
_STYLE = {"passed": "green", "failed": "red", "skipped": "yellow", "error": "magenta"}


# -- the command -------------------------------------------------------------------------------
@click.command()
@click.argument("target", required=False)
@declaration_options()
@click.option("--property", "properties", multiple=True, metavar="NAME",
              help="Run only this property (repeatable).")
@click.option("--profile", type=click.Choice(["dev", "ci", "thorough"]),
              help="Hypothesis profile (default: $HYPOTHESIS_PROFILE, else ci).")
@click.option("--examples", type=click.IntRange(min=1), help="Examples per property.")
@click.option("--seed", type=int, help="Hypothesis seed (default 0 under ci, else random).")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Also write the report as JSON here (checked before any work).")
@click.option("--config", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE.toml",
              help="Read the [[tool.bncheck.targets]] tables from this file (default: the "
              "nearest pyproject.toml, here or in a parent folder, with a [tool.bncheck] "
              "table). Flags override the table of TARGET.")
@click.option("--jobs", "jobs_text", metavar="N|auto", envvar=JOBS_ENV,
              help="Properties run at once, each in a worker process of its own (default "
              "auto: one per CPU this process may use, at most 4; env BNCHECK_JOBS; the Python "
              "API's default is jobs=1). The report is the same whatever N is.")
@distributed_options()
@debug_option
@runs_watched(lambda _: True)  # the target's module is imported in the watched worker
@handles_errors
def verify(target: str | None, properties: tuple[str, ...], profile: str | None,
           examples: int | None, seed: int | None, json_path: Path | None,
           config: Path | None, jobs_text: str | None, world_size: int | None,
           timeout: float | None, device: str, debug: bool, **declared: Any) -> None:
    """Check a BatchNorm implementation against the property catalogue.

    TARGET is path/to/file.py:Name or package.module:Name, a Module class or a factory, built as
    Name(num_features) or, when its signature has num_dims, Name(num_features, num_dims).
    Without TARGET, every target declared in the config file ([[tool.bncheck.targets]] tables
    in the nearest pyproject.toml, or --config FILE.toml) is checked, one report each; with no
    such tables, bncheck's reference BatchNorm. With TARGET, the table that declares it applies
    and the flags override it. With --world-size N, the distributed properties run on N local
    processes (TARGET defaults to bncheck.SyncBatchNorm).
    The target runs in a worker process: one that does not return within --timeout seconds
    fails that property and the run goes on.

    Exit status: 0 all properties pass, 1 some property fails, 2 usage error, 130 Ctrl-C.
    """
    from bncheck.engine.properties import get
    from bncheck.engine.runner import resolve_profile
    from bncheck.infra.io import check_output_path, write_json_atomic

    if json_path is not None:
        json_path = check_output_path(json_path, "--json")
    timeout = default_timeout(timeout, ranks=bool(world_size))  # nan and inf refused too
    jobs = _jobs(jobs_text, world_size)
    profile = resolve_profile(profile)  # named in the replay even when it came from the env
    if world_size:
        from bncheck.cli._distributed import check_property_names
        from bncheck.infra.workers import check_process_count

        check_process_count(world_size, "--world-size")

        check_property_names(properties)
    for name in () if world_size else properties:
        get(name)
    plan = _plan(target, config, declared, world_size)
    distributed = None if not world_size else {"world_size": world_size, "timeout": timeout,
                                                "device": device}
    reports: list[Any] = []
    for arg, spec, declaration in plan:
        if declaration.framework not in (None, "torch"):
            _check_flax(arg, declaration)
            if world_size:
                reports.append(_run_flax_sync(
                    spec, declaration, world_size, properties, examples, seed,
                    json_path if len(plan) == 1 else None,
                    _replay_command(profile, arg, declaration)))
                continue
        t = _target(arg, spec, declaration, world_size=world_size, device=device, debug=debug)
        reports.append(_run(t, spec, list(properties) or None, profile, examples, seed,
                            json_path if len(plan) == 1 else None,
                            replay=_replay_command(profile, arg, declaration),
                            distributed=distributed, timeout=timeout, jobs=jobs))
    if len(plan) > 1:
        failed = [r.target for r in reports if not r.ok]
        console().print(f"{len(plan)} declared targets: {len(plan) - len(failed)} passed"
                        + (f", {len(failed)} failed ({', '.join(failed)})" if failed else ""))
        if json_path is not None:
            write_json_atomic(json_path, {"ok": not failed,
                                          "reports": [r.to_json() for r in reports]})
    outcomes = [r.verdict() for r in reports]  # exit 0 only on evidence (bncheck.engine.evidence)
    for report, outcome in zip(reports, outcomes, strict=True):
        if not outcome.ok and not report.failed:
            err(f"{report.target}: {outcome.reason}" if len(reports) > 1 else outcome.reason)
    if not all(o.ok for o in outcomes):
        sys.exit(max(o.code for o in outcomes))


def _plan(target: str | None, config: Path | None, declared: dict[str, Any],
          world_size: int | None) -> list[tuple[str | None, str, Declaration]]:
    """What to verify: ``(TARGET as typed or None, spec to import, declaration)`` for TARGET
    (its config table, if any, under the flags), or for every declared target when TARGET is
    left out (none declared: the reference)."""
    from bncheck.engine.config import declared_targets

    tables = declared_targets(config)
    if config is not None and not tables:
        raise InvalidArgument(f"--config={str(config)!r} declares no targets: expected "
                              f"[[tool.bncheck.targets]] tables with a target key")
    if target is None and tables:
        return [(t.spec, t.spec, Declaration.from_cli(declared, base=t.declaration))
                for t in tables]
    base = next((t.declaration for t in tables if target and t.matches(target)), None)
    spec = target if target is not None else (SYNC_REFERENCE if world_size else REFERENCE)
    return [(target, spec, Declaration.from_cli(declared, base=base))]


def _target(arg: str | None, spec: str, declaration: Declaration, *, world_size: int | None,
            device: str, debug: bool) -> Any:
    from bncheck.engine.runner import build_target
    from bncheck.engine.target import load_target

    obj = load_target(spec)
    if world_size:
        from bncheck.distributed.verify import refuse_on_device

        refuse_on_device(obj, device)
    reference = arg is None and not world_size
    if reference and declaration.dims is None:
        declaration = declaration.replace(dims=(2, 3, 4, 5))  # the reference takes every rank
    label = "bncheck reference BatchNorm" if reference else spec
    return build_target(obj, label=label, declaration=declaration, debug=debug)


def _check_flax(arg: str | None, declaration: Declaration) -> None:
    """A Flax framework needs a TARGET written in Flax, and jax and flax installed."""
    from bncheck.frameworks import framework

    name = declaration.framework or "torch"
    if arg is None:
        raise InvalidArgument(f"--framework {name} verifies a TARGET written in Flax, e.g. "
                              f"bncheck verify flax.nnx:BatchNorm --framework flax-nnx; "
                              f"received no TARGET")
    framework(name).adapter()  # jax and flax installed, else a clear error


def _run_flax_sync(spec: str, declaration: Declaration, world_size: int,
                   properties: tuple[str, ...], examples: int | None, seed: int | None,
                   json_path: Path | None, replay: Any) -> Any:
    """``--world-size N`` for a Flax target: its ``axis_name`` synchronisation over ``jax.vmap``
    and ``shard_map`` on N CPU devices (:mod:`bncheck.frameworks.flax_sync`)."""
    from bncheck.frameworks.flax_sync import verify_synchronised
    from bncheck.infra.io import write_json_atomic

    out = console()
    out.print(f"bncheck verify {escape(spec)} ({world_size} shards, jax.vmap and shard_map)")
    start = time.perf_counter()
    report = verify_synchronised(spec, framework=declaration.framework or "torch",
                                 world_size=world_size, properties=list(properties) or None,
                                 examples=examples, seed=0 if seed is None else seed,
                                 fixed=dict(declaration.fixed or {}))
    for r in report.failed:
        r.replay = replay(r.name, report.seed)
    wall = time.perf_counter() - start
    out.print(f"  convention: {escape(report.convention)}")
    out.print(_table(report))
    for r in report.failed:
        out.print(escape(r.render(spec)), soft_wrap=True)
        out.print()
    out.print(f"{report.summary()} in {wall:.1f}s")
    if json_path is not None:
        write_json_atomic(json_path, {**report.to_json(), "wall_seconds": wall})
    return report


def _jobs(text: str | None, world_size: int | None) -> int:
    """``--jobs`` (see :func:`~bncheck.cli._common.resolve_jobs`); with ``--world-size`` the
    ranks are the processes, so ``--jobs`` given on the command line is refused."""
    source = click.get_current_context().get_parameter_source("jobs_text")
    if world_size and source is click.core.ParameterSource.COMMANDLINE:
        raise InvalidArgument(f"--jobs={text} runs properties side by side in one process each; "
                              "with --world-size the ranks are the processes: leave --jobs out")
    named = JOBS_ENV if source is click.core.ParameterSource.ENVIRONMENT else "--jobs"
    return resolve_jobs(None if world_size else text, named)


def _replay_command(profile: str, target: str | None, declaration: Declaration) -> Any:
    """``bncheck verify`` with the target, its whole declaration (from flags or a config
    table), the other options the user gave, one property and the seed."""
    from bncheck.engine.declaration import SPECS, shown

    ctx = click.get_current_context()
    args: list[str] = ["bncheck", "verify"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.name in ("target", "properties", "seed", "json_path", "profile", "debug",
                          "jobs_text", "config") or param.name in SPECS or \
                value is None or value == param.default:
            continue
        if isinstance(param, click.Option) and param.is_flag:
            args.append(param.opts[0])
        elif isinstance(param, click.Option):
            args += [param.opts[0], shown(value)]
    args[2:2] = [] if target is None else [target]
    args += declaration.cli_args()
    prof = [] if profile == "ci" else ["--profile", profile]

    def replay(name: str, seed: int) -> str:
        return shlex.join([*args, *prof, "--property", name, "--seed", str(seed)])
    return replay


def _run(t: Any, spec: str, properties: list[str] | None, profile: str,
         examples: int | None, seed: int | None, json_path: Path | None, *, replay: Any,
         distributed: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT,
         jobs: int = 1) -> Any:
    from bncheck.engine.runner import PropertyResult, Report, describe_target
    from bncheck.engine.runner import verify as run
    from bncheck.infra.io import write_json_atomic

    out = console()
    out.print(f"bncheck verify {escape(t.label)}")
    out.print(f"  convention: {escape(t.convention.describe())}")
    out.print(f"  declared: {escape(t.declaration.describe())}")
    out.print(f"  {escape(describe_target(t))}")
    done: list[PropertyResult] = []

    def finished(r: PropertyResult) -> None:
        done.append(r)
        if out.is_terminal:  # progress on a terminal; quiet when piped
            out.print(f"  [{_STYLE[r.status]}]{r.status:7}[/] {r.name} ({r.seconds:.1f}s)")

    start = time.perf_counter()
    try:
        if distributed:
            from bncheck.cli._distributed import run_verify

            report = run_verify(spec, t, world_size=distributed["world_size"],
                                timeout=distributed["timeout"], device=distributed["device"],
                                properties=properties, profile=profile,
                                examples=examples, seed=seed, replay=replay, on_result=finished)
        else:
            report = run(t, properties=properties, profile=profile,
                         examples=examples, seed=seed, replay=replay, on_result=finished,
                         timeout=timeout, jobs=jobs)
    except KeyboardInterrupt:
        partial = Report(t.label, t.convention.describe(), -1 if seed is None else seed,
                         profile, done, declaration=t.declaration.to_json())
        err(f"interrupted (Ctrl-C) after {len(done)} properties"
            + (f" (finished: {', '.join(r.name for r in done)})" if done else "")
            + (f"; partial report written to {json_path}" if json_path else ""))
        if json_path is not None:
            write_json_atomic(json_path, {**partial.to_json(), "interrupted": True})
        sys.exit(EXIT_INTERRUPTED)
    wall = time.perf_counter() - start
    out.print(f"  profile {report.profile}, seed {report.seed}")
    out.print(_table(report))
    for r in report.failed:
        out.print(escape(r.render(t.label)), soft_wrap=True)
        out.print()
    out.print(f"{report.summary()} in {wall:.1f}s")
    if json_path is not None:
        write_json_atomic(json_path, {**report.to_json(), "wall_seconds": wall,
                                      "command": shlex.join(["bncheck", "verify",
                                                             *sys.argv[2:]])})
    return report


def _table(report: Any) -> Table:
    table = Table(title=None, show_lines=False)
    for col in ("property", "result", "examples", "time", "detail"):
        table.add_column(col)
    for r in report.results:
        detail = r.message.splitlines()[0] if r.message else ""
        if r.status != "skipped" and len(detail) > 70:
            detail = detail[:70].rsplit(" ", 1)[0] + " ..."
        table.add_row(r.name, f"[{_STYLE[r.status]}]{r.status}[/]", str(r.examples),
                      f"{r.seconds:.2f}s", escape(detail))
    return table
