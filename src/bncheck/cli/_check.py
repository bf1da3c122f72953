"""``bncheck check``: verify an existing ONNX file against a PyTorch source, its goldens, or
(with neither) the runtimes against one another."""

from __future__ import annotations

from pathlib import Path

import click

from bncheck.cli._common import console, debug_option, handles_errors, interrupted
from bncheck.cli._export import make_source, runs_user_code, source_options
from bncheck.cli._watched import runs_watched, timeout_option
from bncheck.errors import InvalidArgument, VerificationFailed


@click.command()
@click.argument("model_path", type=click.Path(path_type=Path), metavar="MODEL.onnx")
@source_options
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The manifest naming the golden inputs/outputs (default: MODEL.json when "
                   "it exists).")
@click.option("--polygraphy-inputs", "pg_inputs", type=click.Path(path_type=Path),
              default=None, help="Golden inputs saved by polygraphy run --save-inputs.")
@click.option("--polygraphy-outputs", "pg_outputs", type=click.Path(path_type=Path),
              default=None, help="Golden outputs saved by polygraphy run --save-outputs "
                                 "(with --polygraphy-inputs).")
@click.option("--polygraphy-runner", "pg_runner", default=None, metavar="NAME",
              help="The runner in --polygraphy-outputs to compare with (default: the first).")
@click.option("--training-graph", is_flag=True, default=False,
              help="Without a source or manifest: the file was exported in training mode on "
                   "purpose (BatchNorm with batch statistics); compare the runtimes, do not "
                   "require batch independence.")
@timeout_option("Seconds each call into the model's code may take (building it, a "
                "calibration forward, the export's trace, an eager forward) before it counts as "
                "hung and is stopped; with --bn FILE.py:Name or --model.")
@debug_option
@runs_watched(runs_user_code)
@handles_errors
def check(model_path: Path, model_spec: str | None, model_args: tuple[str, ...],
          input_shapes: tuple[str, ...], static_batch: bool, bn: str | None,
          calibrate: int | None, checkpoint: Path | None, seed: int, manifest: Path | None,
          pg_inputs: Path | None, pg_outputs: Path | None, pg_runner: str | None,
          training_graph: bool, timeout: float, debug: bool) -> None:
    """Verify MODEL.onnx on every runtime, with the same table and exit codes as export.

    With --bn or --model (and --checkpoint or --seed): against that PyTorch source, built
    as `bncheck export` builds it, in eval mode; a failure names the first diverging module.
    Else, with a manifest (MODEL.json, or --manifest): against its golden inputs and outputs;
    or with --polygraphy-inputs and --polygraphy-outputs: against what polygraphy run saved.
    Else, any ONNX file: inputs are generated from the graph's signature (--input-shape for
    symbolic dimensions), every runtime is compared with onnxruntime CPU DISABLE_ALL, batch
    independence is checked (the nodes that make a sample depend on its batch are named),
    and every BatchNormalization node (training_mode, epsilon, momentum, where its
    statistics come from) and every recorded Conv/Gemm fold is reported. --training-graph
    checks a graph exported in training mode on purpose as such (no batch independence).

    A file that is not ONNX, is truncated, fails onnx.checker or has another input signature
    than the source's gets a one-line error and exit code 2.

    Exit codes: 0 verified, 1 verification failed, 2 usage error, 130 interrupted.

    Example: bncheck check resnet.onnx --input-shape 1,3,224,224
    """

    try:
        _check(model_path, model_spec, model_args, input_shapes, static_batch, bn, calibrate,
               checkpoint, seed, manifest, pg_inputs, pg_outputs, pg_runner, training_graph)
    except KeyboardInterrupt:
        interrupted("before the verification finished; check writes no files")


def _check(model_path: Path, model_spec: str | None, model_args: tuple[str, ...],
           input_shapes: tuple[str, ...], static_batch: bool, bn: str | None,
           calibrate: int | None, checkpoint: Path | None, seed: int, manifest: Path | None,
           pg_inputs: Path | None, pg_outputs: Path | None, pg_runner: str | None,
           training_graph: bool = False) -> None:
    from rich.markup import escape

    from bncheck.cli._onnx_render import render_report
    from bncheck.onnx.manifest import layers_from_manifest, read_golden, read_manifest, sha256
    from bncheck.onnx.source import parse_shape
    from bncheck.onnx.standalone import verify_standalone
    from bncheck.onnx.verify import load_onnx, verify_against_golden, verify_against_torch

    data, _ = load_onnx(model_path)
    con = console()
    if training_graph and (bn is not None or model_spec is not None or manifest is not None
                           or pg_inputs is not None
                           or model_path.with_suffix(".json").is_file()):
        raise InvalidArgument("--training-graph checks a file without a source or manifest "
                              "(runtimes vs each other); give it without --bn/--model, "
                              "--manifest or --polygraphy-inputs/--polygraphy-outputs")
    if (pg_inputs is None) != (pg_outputs is None):
        raise InvalidArgument("Give --polygraphy-inputs and --polygraphy-outputs both or "
                              "neither")
    if pg_inputs is not None and pg_outputs is not None:
        from bncheck.onnx.polygraphy_io import read_golden as read_polygraphy

        if bn is not None or model_spec is not None or manifest is not None:
            raise InvalidArgument("Give --polygraphy-inputs/-outputs, or --bn/--model, or "
                                  "--manifest: one reference at a time")
        report = verify_against_golden(data, read_polygraphy(pg_inputs, pg_outputs,
                                                             runner=pg_runner), seed=seed,
                                       layers=[])
        title = f"{model_path.name} vs Polygraphy's {pg_outputs.name}"
    elif bn is not None or model_spec is not None:
        if manifest is not None:
            raise InvalidArgument("Give --bn/--model or --manifest, not both")
        source = make_source(model_spec, model_args, input_shapes, bn, static_batch)
        with con.status(f"building {source.label} ..."):
            model = source.build(seed=seed, checkpoint=checkpoint, calibrate=calibrate)
        with con.status("verifying on every runtime ..."):
            report = verify_against_torch(data, model, source=source, seed=seed)
        title = f"{model_path.name} vs {source.label} (seed={seed}" + (
            f", checkpoint={checkpoint})" if checkpoint else ")")
    elif manifest is not None or model_path.with_suffix(".json").is_file():
        if checkpoint is not None or model_args:
            raise InvalidArgument("--checkpoint and --model-arg need --bn or --model (the "
                                  "model to load them into)")
        manifest = manifest or model_path.with_suffix(".json")
        info = read_manifest(manifest)
        golden = read_golden(manifest, info)
        report = verify_against_golden(data, golden, seed=seed,
                                       layers=layers_from_manifest(info))
        title = f"{model_path.name} vs the goldens of {manifest.name}"
        same = info.get("sha256") == sha256(data)
        con.print(f"sha256 {'matches' if same else 'differs from'} the manifest's")
    else:
        if checkpoint is not None or model_args:
            raise InvalidArgument("--checkpoint and --model-arg need --bn or --model (the "
                                  "model to load them into)")
        with con.status("running every runtime ..."):
            report = verify_standalone(data, input_shapes=[parse_shape(s)
                                                           for s in input_shapes],
                                       seed=seed, where=str(model_path),
                                       training_graph=training_graph)
        title = f"{model_path.name}: no source and no manifest, runtimes vs each other"
    render_report(con, report, title=title)
    outcome = report.verdict()
    if not outcome.ok and outcome.code != 1:  # nothing compared: not a pass
        from bncheck.errors import UsageError

        raise UsageError(f"{model_path.name}: {outcome.reason}")
    if not outcome.ok:
        raise VerificationFailed(f"{model_path.name} failed verification\n"
                                 f"{report.failure_message()}")
    con.print(f"[green]verified[/]: {escape(model_path.name)}")
