"""``bncheck export``: build a model source, export it, verify it, write it atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bncheck.cli._common import console, debug_option, handles_errors, interrupted
from bncheck.cli._watched import runs_watched, timeout_option
from bncheck.errors import VerificationFailed

if TYPE_CHECKING:
    from bncheck.onnx.source import ModelSource


def source_options(fn: click.decorators.FC) -> click.decorators.FC:
    """The model source options, shared with ``bncheck check``."""
    for option in reversed([
        click.option("--model", "model_spec", default=None,
                     metavar="FILE.py:factory|package.module:factory",
                     help="The model to build instead of LeNet-BN: a function or Module class, "
                          "called with the --model-arg keyword arguments (random init under "
                          "--seed; nothing is downloaded)."),
        click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                     help="A keyword argument for the --model factory (repeatable); VALUE is "
                          "a Python literal or a string, e.g. spatial_dims=2."),
        click.option("--input-shape", "input_shapes", multiple=True, metavar="N,C,H,W",
                     help="An input's shape, batch first (repeatable, one per input). With "
                          "--model: what the model takes. For `check` without a source: the "
                          "symbolic dimensions of the graph's inputs."),
        click.option("--static-batch", is_flag=True,
                     help="Export dim 0 as fixed (default: a dynamic batch axis)."),
        click.option("--bn", "bn", default=None, metavar="scratch|torch|FILE.py:Name",
                     help="LeNet-BN's BatchNorm: bncheck's reference (scratch, the default), "
                          "torch.nn (torch), or a TARGET as in `bncheck verify`."),
        click.option("--calibrate", type=int, default=None, metavar="N",
                     help="Training-mode forwards on generated data that give the BatchNorms "
                          "running statistics (default: 24 for LeNet-BN, 8 otherwise)."),
        click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
                     help="A state_dict (torch.save) to load instead of calibrating; read "
                          "with weights_only=True."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seeds the weights, the calibration batches and the inputs."),
    ]):
        fn = option(fn)
    return fn


def runs_user_code(options: dict[str, Any]) -> bool:
    """Whether the source options name the user's code (a TARGET for --bn, or --model)."""
    return options.get("model_spec") is not None or options.get("bn") not in (None, "scratch",
                                                                              "torch")


def make_source(model_spec: str | None, model_args: tuple[str, ...],
                input_shapes: tuple[str, ...], bn: str | None, static_batch: bool) -> Any:
    """The :class:`~bncheck.onnx.source.ModelSource` the source options name."""
    from bncheck.onnx.source import model_source, parse_model_arg, parse_shape

    return model_source(model_spec, model_args=dict(parse_model_arg(a) for a in model_args),
                        input_shapes=[parse_shape(s) for s in input_shapes], bn=bn,
                        dynamic_batch=not static_batch)


@click.command()
@click.argument("out", type=click.Path(path_type=Path), metavar="OUT.onnx")
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
@click.option("--polygraphy", is_flag=True,
              help="Also write the goldens in Polygraphy's format: OUT.polygraphy-inputs.json "
                   "and OUT.polygraphy-outputs.json (for polygraphy run --load-inputs "
                   "--load-outputs).")
@timeout_option("Seconds each call into the model's code may take (building it, a "
                "calibration forward, the export's trace, an eager forward) before it counts as "
                "hung and is stopped; with --bn FILE.py:Name or --model.")
@debug_option
@runs_watched(runs_user_code)
@handles_errors
def export(out: Path, model_spec: str | None, model_args: tuple[str, ...],
           input_shapes: tuple[str, ...], static_batch: bool, bn: str | None,
           calibrate: int | None, checkpoint: Path | None, seed: int, opset: int | None,
           exporter: str, keep_bn: bool, keep_failed: bool, polygraphy: bool,
           timeout: float, debug: bool) -> None:
    """Export a model to OUT.onnx and verify it on every runtime.

    Builds LeNet-BN (--bn, default scratch) or --model FILE.py:factory /
    package.module:factory (with --model-arg and --input-shape), gives its BatchNorms running
    statistics by training-mode forwards on generated data (--calibrate N, or --checkpoint),
    puts it in eval mode and exports it with a dynamic batch axis. The file must pass
    onnx.checker and shape inference, match the eager model in eval mode (under no_grad,
    inference_mode and with grad enabled) on onnxruntime CPU (DISABLE_ALL, ENABLE_ALL),
    onnxruntime CUDA/TensorRT (skipped without them), onnx.reference and OpenVINO (f32 and its
    default precision), and keep each sample independent of the rest of the batch. A failure
    names the first diverging module (e.g. layer3.1.bn2) and graph node.

    Writes OUT.onnx, OUT.json (the manifest) and OUT.npz (golden inputs and outputs) only when
    everything passes (or with --keep-failed), atomically: an existing OUT.onnx is never left
    partly overwritten.

    Exit codes: 0 verified, 1 verification failed or the exporter raised, 2 usage error,
    130 interrupted.

    Example: bncheck export r18.onnx --model monai.networks.nets:resnet18
    --model-arg spatial_dims=2 --model-arg n_input_channels=3 --input-shape 1,3,64,64
    """
    from bncheck.onnx.export import check_opset

    paths = plan_export(out, polygraphy=polygraphy)
    check_opset(opset, exporter)
    source = make_source(model_spec, model_args, input_shapes, bn, static_batch)
    export_verified(paths, source, seed=seed, checkpoint=checkpoint, calibrate=calibrate,
                    exporter=exporter, opset=opset, keep_bn=keep_bn, keep_failed=keep_failed)


@dataclass(frozen=True)
class ExportPaths:
    """The files an export writes: OUT.onnx, its manifest, its goldens (and Polygraphy's)."""

    onnx: Path
    manifest: Path
    goldens: Path
    polygraphy: tuple[Path, ...] = ()

    def files(self) -> list[Path]:
        return [self.onnx, self.manifest, self.goldens, *self.polygraphy]


def plan_export(out: Path, *, name: str = "OUT", polygraphy: bool = False) -> ExportPaths:
    """Check every path an export of ``out`` writes, before any work (``name``: the option the
    user gave it as).

    Raises:
        OutputError: a path cannot be written.
    """
    from bncheck.infra.io import check_output_path

    out = check_output_path(out, name, suffix=".onnx")
    kinds = ("inputs", "outputs") if polygraphy else ()
    return ExportPaths(
        out, check_output_path(out.with_suffix(".json"), f"{name} (its manifest)"),
        check_output_path(out.with_suffix(".npz"), f"{name} (its goldens)"),
        tuple(check_output_path(out.with_suffix(f".polygraphy-{kind}.json"),
                                f"{name} (its Polygraphy {kind})") for kind in kinds))


def export_verified(paths: ExportPaths, source: ModelSource, *, seed: int,
                    checkpoint: Path | None, calibrate: int | None, exporter: str = "dynamo",
                    opset: int | None = None,
                    keep_bn: bool = False, keep_failed: bool = False,
                    unwritten: str | None = None) -> None:
    """``bncheck export``'s work: build ``source`` (calibrated, or from ``checkpoint``), export
    it, verify it on every runtime, render the table and write ``paths`` atomically when it
    passes (or with ``keep_failed``). ``unwritten`` is what a failure or Ctrl-C says about the
    files (default: ``bncheck export``'s words, "nothing written ..."); Ctrl-C exits 130.

    Raises:
        VerificationFailed: the file does not match the eager model.
        UsageError: the source cannot be built or exported (also its code's errors).
    """
    from rich.markup import escape

    from bncheck.cli._onnx_render import render_report
    from bncheck.onnx.export import export_onnx, write_atomic
    from bncheck.onnx.manifest import (
        golden_arrays,
        golden_batch,
        make_manifest,
        manifest_bytes,
        npz_bytes,
    )
    from bncheck.onnx.verify import verify_against_torch

    out = paths.onnx
    con = console()
    stage = f"building and calibrating {source.label}"
    try:
        with con.status(escape(f"{stage} ...")):
            model = source.build(seed=seed, checkpoint=checkpoint, calibrate=calibrate)
        stage = f"exporting with the {exporter} exporter"
        with con.status(escape(f"{stage} ...")):
            data = export_onnx(model, source=source, exporter=exporter, opset=opset,
                               keep_bn=keep_bn)
        stage = "verifying on every runtime"
        with con.status(escape(f"{stage} ...")):
            report = verify_against_torch(data, model, source=source, seed=seed)
    except KeyboardInterrupt:
        interrupted(f"while {stage}; " + (unwritten or "nothing written (the files are "
                                                       "written together, after every check)"))
    render_report(con, report, title=f"{out.name}: {source.label}, exporter={exporter}, "
                                     f"{'--keep-bn' if keep_bn else 'optimized'}")
    info = {**source.to_json(), "seed": seed,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "calibrate": calibrate, "exporter": exporter, "opset_requested": opset,
            "keep_bn": keep_bn}
    if report.ok or keep_failed:
        golden = golden_arrays(model, source, seed=seed,
                               input_names=[i["name"] for i in report.inputs],
                               output_names=[o["name"] for o in report.outputs])
        manifest = make_manifest(data=data, report=report, onnx_file=out.name,
                                 golden_file=paths.goldens.name, source=info,
                                 golden_rows=golden_batch(source))
        files = {out: data, paths.manifest: manifest_bytes(manifest),
                 paths.goldens: npz_bytes(golden)}
        if paths.polygraphy:
            from bncheck.onnx.polygraphy_io import inputs_bytes, outputs_bytes

            ins = {i["name"]: golden[i["name"]] for i in report.inputs}
            files[paths.polygraphy[0]] = inputs_bytes(ins)
            files[paths.polygraphy[1]] = outputs_bytes({o["name"]: golden[o["name"]]
                                                        for o in report.outputs})
        write_atomic(files)
        con.print(escape(f"wrote {out}, " + ", ".join(p.name for p in list(files)[1:])))
    if not report.ok:
        kept = (f"files kept (--keep-failed): {out}, {paths.manifest.name}, "
                f"{paths.goldens.name}" if keep_failed
                else unwritten or "nothing written (--keep-failed writes the files anyway)")
        raise VerificationFailed(f"{out.name} failed verification\n"
                                 f"{report.failure_message()}\n{kept}")
    con.print(f"[green]verified[/]: {escape(out.name)} matches the eager model on every "
              f"runtime")
