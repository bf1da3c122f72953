"""``bncheck verify``: run the property catalogue against a BatchNorm implementation."""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from bncheck.cli._common import EXIT_FAILED, console, debug_option, handles_errors
from bncheck.cli._distributed import SYNC_REFERENCE, distributed_options, replay_flags
from bncheck.errors import InvalidArgument

REFERENCE = "bncheck.reference:BatchNorm"
_STYLE = {"passed": "green", "failed": "red", "skipped": "yellow", "error": "magenta"}


def _ints(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InvalidArgument(f"Expected {name} to be comma-separated input ranks like 2,4, "
                              f"received {name}={text!r}") from None
    return values


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(v.strip() for v in text.split(",") if v.strip())


def _momentum(text: str | None) -> float | None | str:
    if text is None:
        return "default"
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"Expected --momentum to be a number in [0, 1] or 'none', "
                              f"received --momentum={text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise InvalidArgument(f"Expected --momentum in [0, 1], received --momentum={text}")
    return value


@click.command()
@click.argument("target", required=False)
@click.option("--convention", type=click.Choice(["torch", "onnx"]), default="torch",
              show_default=True, help="Running-statistics rule the target follows: torch "
              "(new = (1-m)*old + m*batch, unbiased, m=0.1) or onnx (new = m*old + (1-m)*batch, "
              "biased, m=0.9; also Keras, Flax, the seed notebook).")
@click.option("--momentum-weights", type=click.Choice(["batch", "old"]),
              help="Override: which value the momentum weights.")
@click.option("--running-var", type=click.Choice(["unbiased", "biased"]),
              help="Override: which batch variance the running variance averages.")
@click.option("--momentum", "momentum_text", metavar="M",
              help="The target's momentum (a number or 'none'); default: the convention's.")
@click.option("--eps", type=float, default=1e-5, show_default=True, help="The target's eps.")
@click.option("--dims", "dims_text", metavar="2,4",
              help="Input ranks the target supports (default 2,4; 4 for nn.BatchNorm2d...).")
@click.option("--dtypes", "dtypes_text", metavar="LIST",
              help="Comma-separated dtypes to check (default float32,float64,float16,bfloat16).")
@click.option("--property", "properties", multiple=True, metavar="NAME",
              help="Run only this property (repeatable).")
@click.option("--profile", type=click.Choice(["dev", "ci", "thorough"]),
              help="Hypothesis profile (default: $HYPOTHESIS_PROFILE, else ci).")
@click.option("--examples", type=click.IntRange(min=1), help="Examples per property.")
@click.option("--seed", type=int, help="Hypothesis seed (default 0 under ci, else random).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the report as JSON here.")
@distributed_options()
@debug_option
@handles_errors
def verify(target: str | None, convention: str, momentum_weights: str | None,
           running_var: str | None, momentum_text: str | None, eps: float,
           dims_text: str | None, dtypes_text: str | None, properties: tuple[str, ...],
           profile: str | None, examples: int | None, seed: int | None,
           json_path: Path | None, world_size: int | None, timeout: float, device: str,
           debug: bool) -> None:
    """Check a BatchNorm implementation against the property catalogue.

    TARGET is path/to/file.py:Name or package.module:Name, a Module class or a factory, built as
    Name(num_features) or, when its signature has num_dims, Name(num_features, num_dims).
    Without TARGET, bncheck's reference BatchNorm is checked. With --world-size N, the
    distributed properties run on N local processes (TARGET defaults to bncheck.SyncBatchNorm).

    Exit status: 0 all properties pass, 1 some property fails, 2 usage error.
    """
    from bncheck.conventions import convention as preset
    from bncheck.profiles import PROFILES, profile_from_env
    from bncheck.properties import get
    from bncheck.target import load_target
    from bncheck.verify import _resolve_dtypes, build_target
    from bncheck.verify import verify as run

    spec = target or (SYNC_REFERENCE if world_size else REFERENCE)
    # Resolved here so the replay command names it even when it came from HYPOTHESIS_PROFILE.
    if profile is None:
        env = profile_from_env("ci")
        profile = env if env in PROFILES else "ci"
    conv = preset(convention, momentum_weights=momentum_weights, running_var=running_var)
    mom = _momentum(momentum_text)
    dims = _ints(dims_text, "--dims")
    if target is None and dims is None:
        dims = (2, 3, 4, 5)  # the reference takes every rank: differential vs BatchNorm1d/2d/3d
    dtype_names = _names(dtypes_text)
    dtypes = _resolve_dtypes(dtype_names) if dtype_names is not None else None
    if world_size:
        from bncheck.cli._distributed import check_property_names

        check_property_names(properties)
    for name in () if world_size else properties:
        get(name)
    obj = load_target(spec)
    if world_size:
        from bncheck.distributed.verify import refuse_on_device

        refuse_on_device(obj, device)
    label = "bncheck reference BatchNorm" if target is None and not world_size else spec
    t = build_target(obj, label=label, convention=conv,
                     momentum=None if mom == "default" else mom,  # type: ignore[arg-type]
                     eps=eps, dims=dims)
    if mom is None:  # an explicit cumulative average
        t = dataclasses.replace(t, momentum=None, cumulative=True)

    def replay(name: str, s: int) -> str:
        args = ["bncheck", "verify"] + ([target] if target else [])
        for flag, value in (("--convention", convention if convention != "torch" else None),
                            ("--momentum-weights", momentum_weights),
                            ("--running-var", running_var), ("--momentum", momentum_text),
                            ("--eps", None if eps == 1e-5 else repr(eps)), ("--dims", dims_text),
                            ("--dtypes", dtypes_text),
                            ("--profile", profile if profile != "ci" else None),
                            ("--examples", None if examples is None else str(examples))):
            if value is not None:
                args += [flag, value]
        args += replay_flags(world_size, timeout, device)
        return shlex.join([*args, "--property", name, "--seed", str(s)])

    out = console()
    out.print(f"bncheck verify {escape(label)}")
    out.print(f"  convention: {escape(conv.describe())}")
    out.print(f"  momentum {t.momentum}, eps {t.eps:g}, dims {','.join(map(str, t.dims))}, "
              f"dtypes {dtypes_text or 'float32,float64,float16,bfloat16'}; configurable: "
              f"{', '.join(sorted(t.configurable)) or 'nothing (built with defaults)'}")
    start = time.perf_counter()
    if world_size:
        from bncheck.cli._distributed import run_verify

        report = run_verify(spec, t, world_size=world_size, timeout=timeout, device=device,
                            properties=list(properties) or None, dtypes=dtypes,
                            profile=profile, examples=examples, seed=seed, replay=replay)
    else:
        report = run(t, properties=list(properties) or None, dtypes=dtypes, profile=profile,
                     examples=examples, seed=seed, replay=replay)
    wall = time.perf_counter() - start
    out.print(f"  profile {report.profile}, seed {report.seed}")
    table = Table(title=None, show_lines=False)
    for col in ("property", "result", "examples", "time", "detail"):
        table.add_column(col)
    for r in report.results:
        detail = r.message.splitlines()[0] if r.message else ""
        if r.status != "skipped" and len(detail) > 70:
            detail = detail[:70].rsplit(" ", 1)[0] + " ..."
        table.add_row(r.name, f"[{_STYLE[r.status]}]{r.status}[/]", str(r.examples),
                      f"{r.seconds:.2f}s", escape(detail))
    out.print(table)
    for r in report.failed:
        out.print(escape(r.render(label)), soft_wrap=True)
        out.print()
    passed = sum(r.status == "passed" for r in report.results)
    skipped = sum(r.status == "skipped" for r in report.results)
    out.print(f"{passed} passed, {len(report.failed)} failed, {skipped} skipped in {wall:.1f}s")
    if json_path is not None:
        data = report.to_json()
        data["wall_seconds"] = wall
        data["command"] = shlex.join(["bncheck", "verify", *sys.argv[2:]])
        json_path.write_text(json.dumps(data, indent=2))
    if not report.ok:
        sys.exit(EXIT_FAILED)
