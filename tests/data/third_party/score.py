"""Precision, recall and verdict score of bncheck on the layers in this folder (README's tables).

    python tests/data/third_party/score.py [--examples 10] [--seed 0] [--only NAME ...]

Each row below is one row of README.md: the declarations, the expected verdict, the real defects
(by the property that owns each) and the properties whose failures are accepted consequences of
those defects. For every layer bncheck runs the whole catalogue (seed 0, no shrinking) and:

- precision = failing-property reports that blame a real defect / all failing-property reports
  (a failure blames a real defect when its property owns one of the layer's real defects, or is a
  listed consequence of one, or says ``consequence of:`` on a layer that has a real defect);
- recall = real defects whose owning property failed / real defects;
- verdict score = layers whose whole verdict (pass/fail) matches the table / layers.

A row with ``world_size`` is a synchronised BatchNorm: it runs the distributed catalogue
(:func:`bncheck.distributed.verify.verify_distributed`) on that many local gloo ranks instead.
The rows are fixed data, so the numbers before and after a change come from the same code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Row:
    spec: str                      # file.py:Name in this folder
    declare: dict[str, Any]        # build_target keywords (README's "declare" column)
    verdict: str                   # "pass" or "fail"
    defects: frozenset[str] = frozenset()       # owning property of each real defect
    consequences: frozenset[str] = frozenset()  # failures accepted as consequences
    needs: str | None = None       # a module the row needs (skipped when missing)
    env: dict[str, str] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)  # verify() keywords (dtypes)
    world_size: int | None = None  # a synchronised BN: verify_distributed on this many ranks


def _fs(*names: str) -> frozenset[str]:
    return frozenset(names)


KERAS_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
               "running_var": "moving_variance"}
KERAS = {"convention": "keras", "mode_argument": "training", "names": KERAS_NAMES}
F16 = _fs("reduced_precision")
RENORM = {"variant": "batch-renorm", "variant_args": {"r_max": 3, "d_max": 5, "warmup": 0}}
GHOST = {"variant": "ghost", "variant_args": {"virtual_batch": 4}}

ROWS: list[Row] = [
    Row("nhwc_names_bn.py:NHWCBatchNorm",
        {"channel_axis": -1, "names": {"weight": "scale", "bias": "shift",
                                       "running_mean": "exp_mean", "running_var": "exp_var"}},
        "fail", F16),
    Row("running_std_bn.py:RunningStdBN",
        {"running_stat": "std", "names": {"running_var": "running_std"}}, "fail", F16),
    Row("cumulative_bn.py:CumulativeBN2d", {"momentum": None, "dims": (4,)}, "pass"),
    Row("keras_style_bn.py:KerasStyleBN",
        {"convention": "keras", "mode_argument": "training",
         "names": {"running_var": "moving_variance"}}, "fail", F16),
    Row("hidden_stats_bn.py:HiddenStatsBN",
        {"names": {"running_mean": "_rm", "running_var": "_rv"}}, "pass"),
    Row("zero_init_bn.py:ZeroInitBN", {}, "fail", _fs("initial_state", "reduced_precision")),
    Row("layout_kernel_bn.py:ContiguousKernelBN", {}, "fail", _fs("train_forward"),
        _fs("eval_forward", "invariances", "differential", "gradients", "running_stats_update",
            "reduced_precision", "train_eval_switch", "grad_mode_independence")),
    Row("d2l_old.py:BatchNorm", {"convention": "onnx", "momentum": 0.9}, "fail",
        _fs("grad_mode_independence", "stats_are_buffers"),
        _fs("eval_forward", "differential", "running_stats_update")),
    Row("d2l_new.py:BatchNorm",
        {"convention": "torch", "running_var": "biased", "momentum": 0.1}, "fail",
        _fs("grad_mode_independence", "stats_are_buffers"),
        _fs("eval_forward", "differential", "running_stats_update")),
    Row("plain_attr_bn.py:PlainAttrBN", {}, "fail", _fs("stats_are_buffers", "train_eval_switch"),
        _fs("eval_forward", "running_stats_update", "differential")),
    Row("custom_gan_bn.py:CustomBN", {"dims": (2,)}, "fail",
        _fs("stats_are_buffers", "running_stats_update"),
        _fs("differential", "reduced_precision", "train_eval_switch")),
    Row("no_affine_bn.py:NoAffineBN", {"fixed": {"affine": True}}, "fail",
        _fs("running_stats_update"), _fs("differential")),
    Row("frozen_bn.py:FrozenBatchNorm2d", {"dims": (4,)}, "fail", _fs("training_mode")),
    Row("ghost_bn.py:GBN", {"dims": (2,), "momentum": 0.01}, "pass"),
    Row("batch_renorm.py:BatchRenorm1d",
        {"running_stat": "std", "names": {"running_var": "running_std"}, "momentum": 0.01,
         "dims": (2, 3)}, "fail",
        _fs("train_forward", "eval_forward", "running_stats_update"),
        _fs("invariances", "gradients", "differential", "reduced_precision",
            "train_eval_switch", "running_stats_convergence")),
    Row("norm_act_bn.py:BatchNormAct2d", {"dims": (4,)}, "fail",
        _fs("train_forward", "eval_forward"),
        _fs("invariances", "gradients", "differential", "reduced_precision")),
    Row("norm_act_bn.py:BatchNormSiLU2d", {"dims": (4,)}, "fail",
        _fs("train_forward", "eval_forward"),
        _fs("invariances", "gradients", "differential", "reduced_precision")),
    Row("norm_act_bn.py:without_activation", {"dims": (4,)}, "pass"),
    Row("train_only_bn.py:TrainOnlyBN",
        {"names": {"weight": "gamma", "bias": "beta"},
         "fixed": {"track_running_stats": False}}, "fail", F16),
    Row("train_only_bn.py:UnbiasedTrainOnlyBN",
        {"names": {"weight": "gamma", "bias": "beta"},
         "fixed": {"track_running_stats": False}}, "fail", _fs("train_forward"),
        _fs("invariances", "gradients", "differential", "reduced_precision")),
    Row("keras.layers:BatchNormalization", KERAS, "fail", _fs("train_forward"),
        _fs("invariances", "reduced_precision", "gradients", "differential",
            "running_stats_update", "train_eval_switch"),
        needs="keras", env={"KERAS_BACKEND": "torch"}, run={"dtypes": ["float32"]}),
    # issue 17
    Row("keras_build_bn.py:KerasBuildBN", KERAS, "pass", needs="keras",
        env={"KERAS_BACKEND": "torch"}, run={"dtypes": ["float32"]}),
    Row("torch.nn:LazyBatchNorm2d", {"dims": (4,)}, "pass"),
    Row("lazy_bn.py:lazy_bn", {"dims": (4,)}, "pass"),
    Row("one_pass_var_bn.py:OnePassVarBN", {}, "fail", _fs("running_stats_update"),
        _fs("differential", "train_eval_switch", "reduced_precision")),
    Row("renorm_bn.py:BatchRenorm2d", {"dims": (4,), **RENORM}, "pass"),
    Row("ghost_virtual_bn.py:GhostBatchNorm1d", {"dims": (2,), **GHOST}, "pass"),
    Row("renorm_warmup_bn.py:RenormStuckWarmup",
        {"dims": (4,), "variant": "batch-renorm", "variant_args": {"warmup": 5000}}, "fail",
        _fs("train_forward"), _fs("reduced_precision", "invariances", "gradients")),
    Row("subclass_own_forward_bn.py:OwnForwardBN2d", {"dims": (4,)}, "fail",
        _fs("constructor", "empty_batch")),
    Row("subclass_own_forward_bn.py:OwnForwardBN2d",
        {"dims": (4,), "momentum": 0.1, "empty_batches": False,
         "fixed": {"affine": True, "track_running_stats": True, "bias": True}}, "pass"),
    Row("view_flatten_bn.py:ViewFlattenBN", {"dims": (4,)}, "fail", _fs("train_forward"),
        _fs("eval_forward", "running_stats_update", "grad_mode_independence", "invariances",
            "stats_are_buffers", "differential", "train_eval_switch", "gradients",
            "reduced_precision", "empty_batch", "running_stats_convergence")),
    Row("realnvp_bn.py:RunningAverageBN", {}, "fail", _fs("training_mode")),
    # synchronised BatchNorms, on 2 local gloo ranks (bncheck verify --world-size 2)
    Row("dp_sync_bn.py:SynchronizedBatchNorm2d", {}, "fail", _fs("sync_forward"),
        world_size=2),
    Row("avg_buffers_sync_bn.py:AveragedBuffersSyncBN", {}, "fail", _fs("sync_running_stats"),
        _fs("sync_uneven", "sync_reduced_precision"), world_size=2),
]


def _load(row: Row) -> Any:
    from bncheck.engine.target import load_target

    file, _, name = row.spec.partition(":")
    if file.endswith(".py"):
        return load_target(f"{HERE / file}:{name}")
    import importlib

    return getattr(importlib.import_module(file), name)


@dataclass
class _Refused:
    """bncheck refused the layer (a usage error, exit 2): counted as one report."""

    message: str
    name: str = "usage error"
    consequence_of: str | None = None


def _blames_defect(row: Row, result: Any) -> bool:
    if result.name in row.defects or result.name in row.consequences:
        return True
    return bool(row.defects) and result.consequence_of is not None


@dataclass
class Score:
    reports: int = 0
    true_reports: int = 0
    defects: int = 0
    named: int = 0
    layers: int = 0
    right: int = 0
    lines: list[str] = field(default_factory=list)

    def render(self) -> str:
        p = self.true_reports / self.reports if self.reports else 1.0
        r = self.named / self.defects if self.defects else 1.0
        return "\n".join([*self.lines, "",
                          f"precision {self.true_reports}/{self.reports} = {p:.1%}",
                          f"recall    {self.named}/{self.defects} = {r:.1%}",
                          f"verdicts  {self.right}/{self.layers}"])


def score(rows: list[Row], *, examples: int, seed: int) -> Score:
    from bncheck.engine.conventions import convention as preset
    from bncheck.errors import BNCheckError
    from bncheck.engine.runner import verify

    out = Score()
    for row in rows:
        if row.needs is not None:
            for k, v in row.env.items():
                os.environ.setdefault(k, v)
            try:
                __import__(row.needs)
            except ImportError:
                out.lines.append(f"{row.spec}: skipped ({row.needs} not importable)")
                continue
        declare = dict(row.declare)
        conv = {k: declare.pop(k) for k in ("running_stat", "running_var") if k in declare}
        if conv:
            declare["convention"] = preset(declare.pop("convention", "torch"), **conv)
        started = time.monotonic()
        try:
            if row.world_size is not None:
                from bncheck.distributed.verify import verify_distributed

                file, _, name = row.spec.partition(":")
                report = verify_distributed(f"{HERE / file}:{name}", world_size=row.world_size,
                                            label=row.spec, examples=examples, seed=seed,
                                            shrink=False, **row.run, **declare)
            else:
                report = verify(_load(row), label=row.spec, examples=examples, seed=seed,
                                shrink=False, **row.run, **declare)
        except (BNCheckError, TypeError, RuntimeError) as e:  # exit 2 (TypeError: a
            # declaration this version of bncheck does not have, "no such option"; RuntimeError:
            # bncheck's worker crashed): one report, blaming nothing
            failed, true, named, verdict = [_Refused(str(e))], [], set(), "usage error"
        else:
            failed = report.failed
            true = [r for r in failed if _blames_defect(row, r)]
            named = {r.name for r in failed} & row.defects
            verdict = "pass" if report.ok else "fail"
        out.reports += len(failed)
        out.true_reports += len(true)
        out.defects += len(row.defects)
        out.named += len(named)
        out.layers += 1
        out.right += verdict == row.verdict
        false = sorted(r.name for r in failed if r not in true)
        missed = sorted(row.defects - named)
        out.lines.append(
            f"{row.spec}: {verdict} (expected {row.verdict}); {len(true)}/{len(failed)} reports "
            f"blame a defect{'; false: ' + ', '.join(false) if false else ''}; "
            f"{len(named)}/{len(row.defects)} defects named"
            f"{'; missed: ' + ', '.join(missed) if missed else ''} "
            f"[{time.monotonic() - started:.0f} s]")
        print(out.lines[-1], file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", action="append", default=[],
                        help="score only rows whose spec contains this text")
    args = parser.parse_args(argv)
    rows = [r for r in ROWS if not args.only or any(o in r.spec for o in args.only)]
    print(score(rows, examples=args.examples, seed=args.seed).render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
