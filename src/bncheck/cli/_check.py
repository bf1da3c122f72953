"""``bncheck check``: verify an existing ONNX file against a PyTorch source or its goldens."""

from __future__ import annotations

from pathlib import Path

import click

from bncheck.cli._common import console, debug_option, handles_errors
from bncheck.cli._export import source_options
from bncheck.errors import InvalidArgument, VerificationFailed


@click.command()
@click.argument("model_path", type=click.Path(path_type=Path), metavar="MODEL.onnx")
@source_options
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The manifest naming the golden inputs/outputs (default: MODEL.json).")
@debug_option
@handles_errors
def check(model_path: Path, bn: str | None, checkpoint: Path | None, seed: int,
          manifest: Path | None, debug: bool) -> None:
    """Verify MODEL.onnx on every runtime, with the same table and exit codes as export.

    With --bn (and --checkpoint or --seed), against that PyTorch source: LeNet-BN built and
    calibrated as `bncheck export` does, in eval mode. Without --bn, against the golden inputs
    and outputs that its manifest (MODEL.json, or --manifest) names.

    A file that is not ONNX, is truncated, fails onnx.checker or has another input signature
    than one float32 (N, 1, 28, 28) gets a one-line error and exit code 2.

    Exit codes: 0 verified, 1 verification failed, 2 usage error.

    Example: bncheck check lenet.onnx --bn scratch --seed 0
    """
    from bncheck.cli._onnx_render import render_report
    from bncheck.onnx.build import build_model
    from bncheck.onnx.manifest import read_golden, read_manifest, sha256
    from bncheck.onnx.verify import load_onnx, verify_against_golden, verify_against_torch

    data, _ = load_onnx(model_path)
    con = console()
    if bn is not None:
        if manifest is not None:
            raise InvalidArgument("Give --bn or --manifest, not both")
        model = build_model(bn, seed=seed, checkpoint=checkpoint)
        report = verify_against_torch(data, model, seed=seed)
        title = f"{model_path.name} vs LeNet-BN (bn={bn}, seed={seed}" + (
            f", checkpoint={checkpoint})" if checkpoint else ")")
    else:
        if checkpoint is not None:
            raise InvalidArgument("--checkpoint needs --bn (the BatchNorm to load it into)")
        manifest = manifest or model_path.with_suffix(".json")
        info = read_manifest(manifest)
        golden = read_golden(manifest, info)
        report = verify_against_golden(data, golden, seed=seed)
        title = f"{model_path.name} vs the goldens of {manifest.name}"
        same = info.get("sha256") == sha256(data)
        con.print(f"sha256 {'matches' if same else 'differs from'} the manifest's")
    render_report(con, report, title=title)
    if not report.ok:
        raise VerificationFailed(f"{model_path.name} failed verification\n"
                                 f"{report.failure_message()}")
    con.print(f"[green]verified[/]: {model_path.name}")
