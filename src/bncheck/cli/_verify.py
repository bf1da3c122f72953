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

from bncheck._validation import not_set
from bncheck.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    JOBS_ENV,
    console,
    debug_option,
    err,
    handles_errors,
    resolve_jobs,
)
from bncheck.cli._distributed import SYNC_REFERENCE, distributed_options
from bncheck.errors import InvalidArgument

REFERENCE = "bncheck.reference:BatchNorm"
_STYLE = {"passed": "green", "failed": "red", "skipped": "yellow", "error": "magenta"}


# -- parsing: strings to values; every rule is checked by the library ---------------------------
def _ints(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InvalidArgument(f"Expected {name} to be comma-separated input ranks like 2,4, "
                              f"received {name}={text!r}") from None


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(v.strip() for v in text.split(",") if v.strip())


_EXAMPLES = {"--fixed": "affine=true", "--variant-args": "virtual_batch=4"}


def _pairs(text: str | None, name: str) -> dict[str, str] | None:
    if text is None:
        return None
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InvalidArgument(f"Expected {name} as key=value pairs like "
                                  f"{_EXAMPLES.get(name, 'weight=scale')}, "
                                  f"received {name}={text!r}")
        out[key.strip()] = value.strip()
    return out


def _flags(text: str | None) -> dict[str, bool] | None:
    pairs = _pairs(text, "--fixed")
    if pairs is None:
        return None
    out = {}
    for key, value in pairs.items():
        if value.lower() not in ("true", "false"):
            raise InvalidArgument(f"Expected --fixed {key}=true or {key}=false, received "
                                  f"--fixed={text!r}")
        out[key] = value.lower() == "true"
    return out


def _momentum(text: str | None) -> Any:
    if text is None:
        return not_set
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"Expected --momentum to be a number in [0, 1] or 'none', "
                              f"received --momentum={text!r}") from None


# -- the command -------------------------------------------------------------------------------
@click.command()
@click.argument("target", required=False)
@click.option("--convention", type=click.Choice(["torch", "onnx", "keras"]), default="torch",
              show_default=True, help="Running-statistics rule the target follows: torch "
              "(new = (1-m)*old + m*batch, unbiased, m=0.1), onnx (new = m*old + (1-m)*batch, "
              "biased, m=0.9; the seed notebook, old d2l) or keras (onnx's rule, m=0.99, "
              "eps 1e-3, channels last).")
@click.option("--momentum-weights", type=click.Choice(["batch", "old"]),
              help="Override: which value the momentum weights.")
@click.option("--running-var", type=click.Choice(["unbiased", "biased"]),
              help="Override: which batch variance the running variance averages.")
@click.option("--running-stat", type=click.Choice(["var", "std"]),
              help="What the target stores: the running variance (default) or running std.")
@click.option("--momentum", "momentum_text", metavar="M",
              help="The target's momentum (a number or 'none'); given, it is always passed to "
              "the constructor and never drawn. Default: the convention's (drawn when the "
              "constructor takes momentum).")
@click.option("--eps", type=float, help="The target's eps (default: the convention's).")
@click.option("--dims", "dims_text", metavar="2,4",
              help="Input ranks the target supports (default 2,4; 4 for nn.BatchNorm2d...).")
@click.option("--names", "names_text", metavar="K=V,...",
              help="The target's own attribute names, e.g. weight=scale,bias=shift,"
              "running_mean=exp_mean,running_var=exp_var.")
@click.option("--channel-axis", type=click.IntRange(-1, 1), metavar="1|-1",
              help="-1 for channels-last layers ((N, C), (N, L, C), (N, H, W, C)).")
@click.option("--mode-argument", metavar="NAME",
              help="The call keyword that selects train/eval (Keras: training).")
@click.option("--fixed", "fixed_text", metavar="K=V,...",
              help="Constructor flags never to draw, e.g. affine=true,track_running_stats=true.")
@click.option("--empty-batches/--no-empty-batches", default=None,
              help="The target accepts empty batches (checked by empty_batch), or does not "
              "(default: torch's BatchNorm classes and their subclasses do).")
@click.option("--variant", type=click.Choice(["batch-renorm", "ghost"]),
              help="The BatchNorm variant the target is, judged by its own oracle "
              "(docs/variants.md).")
@click.option("--variant-args", "variant_args_text", metavar="K=V,...",
              help="The variant's arguments, e.g. r_max=3,d_max=5,warmup=0 or virtual_batch=4; "
              "those the constructor takes are passed to it.")
@click.option("--dtypes", "dtypes_text", metavar="LIST",
              help="Comma-separated dtypes to check (default float32,float64,float16,bfloat16).")
@click.option("--property", "properties", multiple=True, metavar="NAME",
              help="Run only this property (repeatable).")
@click.option("--profile", type=click.Choice(["dev", "ci", "thorough"]),
              help="Hypothesis profile (default: $HYPOTHESIS_PROFILE, else ci).")
@click.option("--examples", type=click.IntRange(min=1), help="Examples per property.")
@click.option("--seed", type=int, help="Hypothesis seed (default 0 under ci, else random).")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Also write the report as JSON here (checked before any work).")
@click.option("--jobs", "jobs_text", metavar="N|auto", envvar=JOBS_ENV,
              help="Properties run at once, each in a worker process of its own (default "
              "auto: one per CPU this process may use, at most 4; env BNCHECK_JOBS). The report "
              "is the same whatever N is.")
@distributed_options()
@debug_option
@handles_errors
def verify(target: str | None, convention: str, momentum_weights: str | None,
           running_var: str | None, running_stat: str | None, momentum_text: str | None,
           eps: float | None, dims_text: str | None, names_text: str | None,
           channel_axis: int | None, mode_argument: str | None, fixed_text: str | None,
           empty_batches: bool | None, variant: str | None, variant_args_text: str | None,
           dtypes_text: str | None, properties: tuple[str, ...],
           profile: str | None, examples: int | None, seed: int | None,
           json_path: Path | None, jobs_text: str | None, world_size: int | None,
           timeout: float | None, device: str, debug: bool) -> None:
    """Check a BatchNorm implementation against the property catalogue.

    TARGET is path/to/file.py:Name or package.module:Name, a Module class or a factory, built as
    Name(num_features) or, when its signature has num_dims, Name(num_features, num_dims).
    Without TARGET, bncheck's reference BatchNorm is checked. With --world-size N, the
    distributed properties run on N local processes (TARGET defaults to bncheck.SyncBatchNorm).
    The target runs in a worker process: one that does not return within --timeout seconds
    fails that property and the run goes on.

    Exit status: 0 all properties pass, 1 some property fails, 2 usage error, 130 Ctrl-C.
    """
    from bncheck._io import check_output_path
    from bncheck.conventions import convention as preset
    from bncheck.properties import get
    from bncheck.target import load_target
    from bncheck.verify import _resolve_dtypes, build_target, check_timeout, resolve_profile

    if json_path is not None:
        json_path = check_output_path(json_path, "--json")
    check_timeout(timeout)  # click's range lets nan and inf through
    jobs = _jobs(jobs_text, world_size)
    profile = resolve_profile(profile)  # named in the replay even when it came from the env
    dims = _ints(dims_text, "--dims")
    dtype_names = _names(dtypes_text)
    dtypes = _resolve_dtypes(dtype_names) if dtype_names is not None else None
    if world_size:
        from bncheck.cli._distributed import check_property_names

        check_property_names(properties)
    for name in () if world_size else properties:
        get(name)
    spec = target or (SYNC_REFERENCE if world_size else REFERENCE)
    obj = load_target(spec)
    if world_size:
        from bncheck.distributed.verify import refuse_on_device

        refuse_on_device(obj, device)
    conv = preset(convention, momentum_weights=momentum_weights, running_var=running_var,
                  running_stat=running_stat)
    label = "bncheck reference BatchNorm" if target is None and not world_size else spec
    t = build_target(
        obj, label=label, convention=conv,
        momentum=_momentum(momentum_text), eps=not_set if eps is None else eps,
        dims=(2, 3, 4, 5) if target is None and dims is None and not world_size else dims,
        names=_pairs(names_text, "--names"), channel_axis=channel_axis,
        mode_argument=mode_argument, fixed=_flags(fixed_text), empty_batches=empty_batches,
        debug=debug, variant=variant, variant_args=_pairs(variant_args_text, "--variant-args"))
    distributed = None if not world_size else {"spec": spec, "world_size": world_size,
                                                "timeout": timeout, "device": device}
    _run(t, list(properties) or None, dtypes, profile, examples, seed, json_path,
         replay=_replay_command(profile), distributed=distributed, timeout=timeout, jobs=jobs)


def _jobs(text: str | None, world_size: int | None) -> int:
    """``--jobs`` (see :func:`~bncheck.cli._common.resolve_jobs`); with ``--world-size`` the
    ranks are the processes, so ``--jobs`` given on the command line is refused."""
    source = click.get_current_context().get_parameter_source("jobs_text")
    if world_size and source is click.core.ParameterSource.COMMANDLINE:
        raise InvalidArgument(f"--jobs={text} runs properties side by side in one process each; "
                              "with --world-size the ranks are the processes: leave --jobs out")
    return resolve_jobs(None if world_size else text)


def _shown(value: Any) -> str:
    """An option's value as the user would type it (``1`` for 1.0; every float round-trips)."""
    if isinstance(value, float) and float(f"{value:g}") == value:
        return f"{value:g}"
    return str(value)


def _replay_command(profile: str) -> Any:
    """``bncheck verify`` with the options the user gave, one property and the seed."""
    ctx = click.get_current_context()
    args: list[str] = ["bncheck", "verify"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.name in ("properties", "seed", "json_path", "profile", "debug",
                          "jobs_text") or \
                value is None or value == param.default:
            continue
        if isinstance(param, click.Argument):
            args.insert(2, str(value))
        elif isinstance(param, click.Option) and param.is_flag:
            args.append(param.opts[0])
        elif isinstance(param, click.Option):
            args += [param.opts[0], _shown(value)]
    prof = [] if profile == "ci" else ["--profile", profile]

    def replay(name: str, seed: int) -> str:
        return shlex.join([*args, *prof, "--property", name, "--seed", str(seed)])
    return replay


def _run(t: Any, properties: list[str] | None, dtypes: Any, profile: str,
         examples: int | None, seed: int | None, json_path: Path | None, *, replay: Any,
         distributed: dict[str, Any] | None = None, timeout: float | None = None,
         jobs: int = 1) -> None:
    from bncheck._io import write_json_atomic
    from bncheck._workers import DEFAULT_TIMEOUT
    from bncheck.verify import PropertyResult, Report, describe_target
    from bncheck.verify import verify as run

    out = console()
    out.print(f"bncheck verify {escape(t.label)}")
    out.print(f"  convention: {escape(t.convention.describe())}")
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

            report = run_verify(distributed["spec"], t, world_size=distributed["world_size"],
                                timeout=distributed["timeout"], device=distributed["device"],
                                properties=properties, dtypes=dtypes, profile=profile,
                                examples=examples, seed=seed, replay=replay, on_result=finished)
        else:
            report = run(t, properties=properties, dtypes=dtypes, profile=profile,
                         examples=examples, seed=seed, replay=replay, on_result=finished,
                         timeout=DEFAULT_TIMEOUT if timeout is None else timeout, jobs=jobs)
    except KeyboardInterrupt:
        partial = Report(t.label, t.convention.describe(), -1 if seed is None else seed,
                         profile, done)
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
    if not report.ok:
        sys.exit(EXIT_FAILED)


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
