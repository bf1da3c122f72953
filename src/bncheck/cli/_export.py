"""``bncheck export``: build, calibrate, export and verify LeNet-BN; write it atomically."""

from __future__ import annotations

from pathlib import Path

import click

from bncheck.cli._common import console, debug_option, handles_errors
from bncheck.errors import InvalidArgument, VerificationFailed


def source_options(fn: click.decorators.FC) -> click.decorators.FC:
    """``--bn``, ``--checkpoint`` and ``--seed``, shared with ``bncheck check``."""
    fn = click.option("--seed", type=int, default=0, show_default=True,
                      help="Seeds the weights, the calibration batches and the inputs.")(fn)
    fn = click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
                      help="A state_dict (torch.save) to load instead of calibrating; read "
                           "with weights_only=True.")(fn)
    fn = click.option("--bn", "bn", default=None, metavar="scratch|torch|FILE.py:Name",
                      help="The BatchNorm in LeNet-BN: bncheck's reference (scratch), "
                           "torch.nn (torch), or a TARGET as in `bncheck verify`.")(fn)
    return fn


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT.onnx")
@source_options
@click.option("--opset", type=int, default=None,
              help="ONNX opset to export (default: the exporter's; dynamo 18-23, "
                   "torchscript 7-20).")
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo",
              show_default=True, help="torch.onnx.export(dynamo=True) or the TorchScript one.")
@click.option("--keep-bn", is_flag=True,
              help="Export without BN folding, so BatchNormalization nodes stay.")
@click.option("--keep-failed", is_flag=True,
              help="Write the files even when verification fails (exit code still 1).")
@debug_option
@handles_errors
def export(out: Path, bn: str | None, checkpoint: Path | None, seed: int, opset: int | None,
           exporter: str, keep_bn: bool, keep_failed: bool, debug: bool) -> None:
    """Export the seed's LeNet-BN to OUT.onnx and verify it on every runtime.

    Builds LeNet-BN with --bn (default scratch), gives its BatchNorms running statistics by
    training-mode forwards on deterministic batches (or loads --checkpoint), puts it in eval
    mode and exports it with a dynamic batch axis. The file must pass onnx.checker and shape
    inference, match the eager model in eval mode (under no_grad, inference_mode and with grad
    enabled; batches 1, 7 and 64) on onnxruntime CPU (DISABLE_ALL, ENABLE_ALL), onnxruntime
    CUDA (skipped without it) and onnx.reference, and keep each sample independent of the rest
    of the batch. A failure names the first diverging layer.

    Writes OUT.onnx, OUT.json (the manifest) and OUT.npz (golden inputs and outputs) only when
    everything passes (or with --keep-failed), atomically: an existing OUT.onnx is never left
    partly overwritten.

    Exit codes: 0 verified, 1 verification failed, 2 usage error.

    Example: bncheck export lenet.onnx --bn torch --keep-bn
    """
    from bncheck.cli._onnx_render import render_report
    from bncheck.onnx.build import build_model
    from bncheck.onnx.export import INPUT_NAME, OUTPUT_NAME, check_opset, export_onnx, write_atomic
    from bncheck.onnx.manifest import golden_arrays, make_manifest, manifest_bytes, npz_bytes
    from bncheck.onnx.verify import verify_against_torch

    if out.suffix != ".onnx":
        raise InvalidArgument(f"Expected OUT to end in .onnx (the manifest and goldens go beside "
                              f"it as .json and .npz), received OUT={str(out)!r}")
    if not out.parent.is_dir():
        raise InvalidArgument(f"Expected OUT in an existing folder, received OUT={str(out)!r} "
                              f"(no folder {str(out.parent)!r})")
    check_opset(opset, exporter)
    bn = bn or "scratch"
    model = build_model(bn, seed=seed, checkpoint=checkpoint)
    data = export_onnx(model, exporter=exporter, opset=opset, keep_bn=keep_bn)
    report = verify_against_torch(data, model, seed=seed)
    con = console()
    render_report(con, report, title=f"{out.name}: LeNet-BN (bn={bn}), exporter={exporter}, "
                                     f"{'--keep-bn' if keep_bn else 'optimized'}")
    json_path, npz_path = out.with_suffix(".json"), out.with_suffix(".npz")
    source = {"bn": bn, "seed": seed, "checkpoint": None if checkpoint is None
              else str(checkpoint), "exporter": exporter, "opset_requested": opset,
              "keep_bn": keep_bn}
    if report.ok or keep_failed:
        golden = golden_arrays(model, seed=seed, input_name=INPUT_NAME, output_name=OUTPUT_NAME)
        manifest = make_manifest(data=data, report=report, onnx_file=out.name,
                                 golden_file=npz_path.name, source=source)
        write_atomic({out: data, json_path: manifest_bytes(manifest), npz_path: npz_bytes(golden)})
        con.print(f"wrote {out}, {json_path.name}, {npz_path.name}")
    if not report.ok:
        kept = (f"files kept (--keep-failed): {out}, {json_path.name}, {npz_path.name}"
                if keep_failed else "nothing written (--keep-failed writes the files anyway)")
        raise VerificationFailed(f"{out.name} failed verification\n"
                                 f"{report.failure_message()}\n{kept}")
    con.print(f"[green]verified[/]: {out.name} matches the eager model on every runtime")
