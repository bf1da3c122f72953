"""The bad-input contract: every command and the Python API, given bad input as a new user would,
answer in one paragraph that names the argument, what was expected and what was received, with
the documented exit code (2 usage error, 1 verification failed) or error type; never a
traceback, never a hang, never a silently wrong result.

One table, run in-process (click's CliRunner) in a folder of bad files (:func:`make_bad_files`);
docs/reliability.md's "Bad input" table is run the same way (:func:`test_readme_table`).
``fuzz/sweep_bad_input.py`` runs the same tables with a time limit per case and counts.
"""

from __future__ import annotations

import gzip
import json
import re
import shlex
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).parents[2]
HANGING = ROOT / "tests" / "data" / "hanging_bn.py"

# (command line after `bncheck`, exit code, a fragment of what the user sees)
CLI_CASES: list[tuple[str, int, str]] = [
    # -- verify: the target ---------------------------------------------------------------
    ("verify nope.py:BN", 2, "TARGET='nope.py:BN': file 'nope.py' does not exist"),
    ("verify dir.py:BN", 2, "TARGET='dir.py:BN': 'dir.py' is a directory, expected a Python file"),
    ("verify empty.py:BN", 2, "'empty.py' has no attribute 'BN'; it defines no classes"),
    ("verify syntax.py:BN", 2, "importing 'syntax.py' raised SyntaxError"),
    ("verify raises_on_import.py:BN", 2, "importing 'raises_on_import.py' raised RuntimeError: "
                                         "boom at import"),
    ("verify exits_on_import.py:BN", 2, "importing 'exits_on_import.py' raised SystemExit: 3"),
    ("verify notpy.txt:BN", 2, "TARGET='notpy.txt:BN': 'notpy.txt' is a file but not a .py"),
    ("verify torch.nn:NoSuchNorm", 2, "has no attribute 'NoSuchNorm'; no name close to it"),
    ("verify torch.nn:BatchNorm2D", 2, "has no attribute 'BatchNorm2D'; did you mean BatchNorm2d"),
    ("verify torch.nn:batchnorm2d", 2, "did you mean BatchNorm2d"),
    ("verify nosuchpackage:BN", 2, "no module named 'nosuchpackage'"),
    ("verify no_colon", 2, "Expected TARGET in the form path/to/file.py:Name"),
    ("verify torch.nn:", 2, "Expected TARGET in the form"),
    ("verify :BN", 2, "Expected TARGET in the form"),
    ("verify 'torch.nn:Batch Norm'", 2, "Expected TARGET in the form"),
    ("verify math:pi", 2, "'pi' is a float, expected a Module class or a factory"),
    ("verify torch.nn:Linear", 2, "cannot be built from num_features alone: it also needs "
                                  "out_features"),
    ("verify torch.nn:Module", 2, "cannot build the target"),
    ("verify not_a_module.py:BN", 2, "is a class but not a torch.nn.Module"),
    ("verify torch:zeros", 2, "returned Tensor, expected a torch.nn.Module"),
    ("verify torch.nn:BatchNorm2d --dims 2", 2, "Expected dims among the input ranks "
                                                "torch.nn:BatchNorm2d accepts (4), received "
                                                "dims=(2,)"),
    ("verify tests/data/hanging_bn.py:LoopsOnFloat16 --timeout 1 --examples 2 --property "
     "reduced_precision", 1, "did not return within 1 s (at tests/data/hanging_bn.py:"),
    ("verify a b", 2, "Got unexpected extra argument (b)"),
    # -- verify: options ------------------------------------------------------------------
    ("verify --seeds 1", 2, "No such option '--seeds'. (Did you mean one of: '--dims', "
                            "'--eps', '--seed'?)"),
    ("verify --dims 2,x", 2, "--dims='2,x'"),
    ("verify --dims 7", 2, "dims=(7,)"),
    ("verify --dims ''", 2, "dims=()"),
    ("verify --dims -2", 2, "dims=(-2,)"),
    ("verify --dtypes float8", 2, "Expected dtypes from"),
    ("verify --dtypes int64", 2, "Expected dtypes from"),
    ("verify --dtypes ''", 2, "Expected at least one dtype"),
    ("verify --property nope", 2, "Unknown property='nope'"),
    ("verify --property train_forwrd", 2, "Unknown property='train_forwrd'; did you mean "
                                          "train_forward?"),
    ("verify --momentum fast", 2, "--momentum='fast'"),
    ("verify --momentum 1.5", 2, "momentum=1.5"),
    ("verify --momentum -0.1", 2, "momentum=-0.1"),
    ("verify --momentum nan", 2, "momentum=nan"),
    ("verify --momentum inf", 2, "momentum=inf"),
    ("verify --momentum ''", 2, "--momentum=''"),
    ("verify --eps -1", 2, "Expected eps >= 0.0, received eps=-1.0"),
    ("verify --eps 0", 2, "Expected eps > 0.0, received eps=0.0 (training normalizes with "
                          "batch statistics"),
    ("verify --eps nan", 2, "Expected eps to be finite, received eps=nan"),
    ("verify --eps inf", 2, "Expected eps to be finite, received eps=inf"),
    ("verify --eps 1e400", 2, "Expected eps to be finite, received eps=inf"),
    ("verify --eps tiny", 2, "Expected --eps to be a number, received --eps='tiny'"),
    ("verify --channel-axis 0", 2, "channel_axis=0"),
    ("verify --channel-axis 2", 2, "Expected channel_axis to be 1 or -1, received "
                                   "channel_axis=2"),
    ("verify --names weight", 2, "--names='weight'"),
    ("verify --names gain=scale", 2, "'gain' is not one of them"),
    ("verify --names weight=", 2, "--names='weight='"),
    ("verify --names weight=1x", 2, "Expected names['weight'] to be an attribute name"),
    ("verify --fixed affine=yes", 2, "--fixed affine=true or affine=false"),
    ("verify --fixed eps=true", 2, "Expected fixed keys from"),
    ("verify --mode-argument 1x", 2, "mode_argument='1x'"),
    ("verify --convention caffe", 2, "Invalid value for '--convention'"),
    ("verify --momentum-weights sideways", 2, "Invalid value for '--momentum-weights'"),
    ("verify --running-var sample", 2, "Invalid value for '--running-var'"),
    ("verify --running-stat mean", 2, "Invalid value for '--running-stat'"),
    ("verify --examples 0", 2, "Invalid value for '--examples'"),
    ("verify --examples many", 2, "Invalid value for '--examples'"),
    ("verify --profile fast", 2, "Invalid value for '--profile'"),
    ("verify --seed 1.5", 2, "Invalid value for '--seed'"),
    ("verify --timeout 0", 2, "Invalid value for '--timeout'"),
    ("verify --timeout -1", 2, "Invalid value for '--timeout'"),
    ("verify --timeout nan", 2, "Expected timeout to be finite, received timeout=nan"),
    ("verify --timeout inf", 2, "Expected timeout to be finite, received timeout=inf"),
    ("verify --jobs 0", 2, "Expected --jobs to be a whole number >= 1 or 'auto', received "
                           "--jobs='0'"),
    ("verify --jobs 2 --world-size 2", 2, "with --world-size the ranks are the processes"),
    ("verify --world-size 1", 2, "Invalid value for '--world-size'"),
    ("verify --world-size 2 --property train_forward", 2, "Unknown distributed property"),
    ("verify --device tpu", 2, "Invalid value for '--device'"),
    ("verify torch.nn:SyncBatchNorm --world-size 2", 2, "does not run on CPU"),
    # -- verify: outputs (checked before any work) -------------------------------------------
    ("verify --json nodir/r.json", 2, "folder 'nodir' does not exist"),
    ("verify --json /proc/r.json", 2, "folder '/proc' is not writable"),
    ("verify --json a_dir", 2, "which is a directory"),
    ("verify --json a_file/r.json", 2, "folder 'a_file' is not a directory"),
    # -- mutants --------------------------------------------------------------------------
    ("mutants --mutant nope", 2, "Unknown mutant='nope'; available: seed_bata_typo"),
    ("mutants --mutant eps_outsde_sqrt", 2, "Unknown mutant='eps_outsde_sqrt'; did you mean "
                                            "eps_outside_sqrt?"),
    ("mutants --mutnt eps_outside_sqrt", 2, "No such option '--mutnt'. (Did you mean one of: "
                                            "'--mutant'"),
    ("mutants --examples 0", 2, "Invalid value for '--examples'"),
    ("mutants --seed x", 2, "Invalid value for '--seed'"),
    ("mutants --profile fast", 2, "Invalid value for '--profile'"),
    ("mutants --timeout 0", 2, "Invalid value for '--timeout'"),
    ("mutants --timeout nan", 2, "timeout=nan"),
    ("mutants --world-size 1", 2, "Invalid value for '--world-size'"),
    ("mutants --world-size 2 --mutant eps_outside_sqrt", 2, "Unknown distributed mutant"),
    ("mutants --json nodir/m.json", 2, "folder 'nodir' does not exist"),
    ("mutants --json /proc/m.json", 2, "is not writable"),
    ("mutants --json a_dir", 2, "which is a directory"),
    # -- train ------------------------------------------------------------------------------
    ("train --data nodir", 2, "Expected the data directory nodir to hold the Fashion-MNIST "
                              "IDX files, but it does not exist"),
    ("train --data a_file", 2, "but it is a file, not a directory"),
    ("train --data a_dir", 2, "missing train-images-idx3-ubyte"),
    ("train --data idx_truncated", 2, "truncated data"),
    ("train --data idx_labels_as_images", 2, "expected images with 3 dims"),
    ("train --data idx_bad_magic", 2, "not an IDX file"),
    ("train --data idx_empty", 2, "truncated header"),
    ("train --data idx_not_gzip", 2, "not a readable gzip file"),
    ("train --data idx_label_range", 2, "expected labels in 0..9"),
    ("train --data idx_counts", 2, "holds 3 images but"),
    ("train --bn nope", 2, "Expected bn to be 'scratch' or 'torch' or a TARGET "
                           "(path/to/file.py:Name or package.module:Name), received bn='nope'"),
    ("train --bn scrach", 2, "received bn='scrach'; did you mean 'scratch'?"),
    ("train --bn raising_bn.py:RaisingBN --data idx_ok --out run --no-verify", 2,
     "training LeNet-BN with bn=raising_bn.py:RaisingBN: RuntimeError: the layer is broken at "),
    ("train --bn raising_bn.py:RaisingBN --out holds_lenet_onnx_dir", 2,
     "Expected --out (its lenet.onnx) to be a file path, received --out (its lenet.onnx)="
     "'holds_lenet_onnx_dir/lenet.onnx', which is a directory"),
    ("train --timeout nan", 2, "Expected timeout to be finite, received timeout=nan"),
    ("train --convention keras", 2, "train --bn scratch (nothing is verified) cannot honour "
                                    "the declaration convention=keras (--convention)"),
    ("train --timeout 0", 2, "Invalid value for '--timeout': 0.0 is not in the range x>0"),
    ("train --timeout x", 2, "Invalid value for '--timeout': 'x' is not a valid float"),
    ("train --epochs 0", 2, "Expected --epochs to be a positive integer, received --epochs=0"),
    ("train --epochs x", 2, "Invalid value for '--epochs'"),
    ("train --lr 0", 2, "lr"),
    ("train --lr -1", 2, "lr"),
    ("train --lr nan", 2, "lr"),
    ("train --lr inf", 2, "lr"),
    ("train --batch-size 0", 2, "batch"),
    ("train --limit 0", 2, "limit"),
    ("train --steps 0 --compare", 2, "steps"),
    ("train --out /proc/run", 2, "/proc"),
    ("train --out a_file", 2, "a_file"),
    ("train --checkpoint /proc/c.pt", 2, "--checkpoint"),
    ("train --checkpoint nodir/c.pt", 2, "--checkpoint"),
    ("train --json nodir/m.json", 2, "--json"),
    ("train --json /proc/m.json", 2, "--json"),
    ("train --json a_dir", 2, "which is a directory"),
    # -- export -----------------------------------------------------------------------------
    ("export", 2, "Missing argument 'OUT.onnx'"),
    ("export out.txt", 2, "Expected OUT to end in .onnx, received OUT='out.txt'"),
    ("export nodir/m.onnx", 2, "folder 'nodir' does not exist"),
    ("export /proc/m.onnx", 2, "Cannot write OUT='/proc/m.onnx': folder '/proc' is not "
                               "writable"),
    ("export a_dir", 2, "Expected OUT to be a file path, received OUT='a_dir', which is a "
                        "directory"),
    ("export m.onnx --bn nope", 2, "received bn='nope'"),
    ("export m.onnx --bn nope.py:BN", 2, "TARGET='nope.py:BN': file 'nope.py' does not exist"),
    ("export m.onnx --bn raising_bn.py:RaisingBN", 2,
     "calibrating LeNet-BN (bn=raising_bn.py:RaisingBN) (training-mode forward 1 of 24): "
     "RuntimeError: the layer is broken at "),
    ("export m.onnx --bn hanging_lenet_bn.py:BN --timeout 1", 2,
     "calibrating LeNet-BN (bn=hanging_lenet_bn.py:BN) (training-mode forward 1 of 24): did "
     "not return within 1 s (at hanging_lenet_bn.py:"),
    ("export m.onnx --bn hanging_lenet_bn.py:BN --timeout nan", 2,
     "Expected timeout to be finite, received timeout=nan"),
    ("export m.onnx --checkpoint nope.pt", 2, "Expected checkpoint to be an existing "
                                              "state_dict file, received checkpoint='nope.pt'"),
    ("export m.onnx --checkpoint empty.pt", 2, "checkpoint='empty.pt' is not a file written by "
                                               "torch.save"),
    ("export m.onnx --checkpoint random.pt", 2, "checkpoint='random.pt' is not a file written "
                                                "by torch.save"),
    ("export m.onnx --checkpoint model.pt", 2, "holds a pickled torch.nn.modules.linear.Linear "
                                               "object, not a state_dict (was a whole model "
                                               "saved with torch.save(model)?)"),
    ("export m.onnx --checkpoint wrong_keys.pt", 2, "does not fit LeNet-BN (bn=scratch): "
                                                    "missing keys"),
    ("export m.onnx --checkpoint a_dir", 2, "Invalid value for '--checkpoint': File 'a_dir' is "
                                            "a directory"),
    ("export m.onnx --opset 0", 2, "Expected opset in [18, 23] for the dynamo exporter, "
                                   "received opset=0"),
    ("export m.onnx --opset 99", 2, "received opset=99"),
    ("export m.onnx --calibrate -1", 2, "calibrate"),
    ("export m.onnx --model nope.py:make --input-shape 1,4", 2, "file 'nope.py' does not "
                                                                "exist"),
    ("export m.onnx --model torch.nn:Linear", 2, "Expected --input-shape for "
                                                 "--model='torch.nn:Linear'"),
    ("export m.onnx --model torch.nn:Linear --input-shape 2,x", 2,
     "received --input-shape='2,x'"),
    ("export m.onnx --model torch.nn:Linear --model-arg in_features --input-shape 2,4", 2,
     "Expected --model-arg as KEY=VALUE"),
    ("export m.onnx --bn torch --model torch.nn:Linear --input-shape 2,4", 2,
     "--bn replaces LeNet-BN's BatchNorm"),
    ("export m.onnx --exporter jit", 2, "Invalid value for '--exporter'"),
    # -- check ------------------------------------------------------------------------------
    ("check", 2, "Missing argument 'MODEL.onnx'"),
    ("check nope.onnx", 2, "'nope.onnx' does not exist"),
    ("check empty.onnx", 2, "'empty.onnx' is not a valid ONNX model: empty graph"),
    ("check random.onnx", 2, "'random.onnx' is not an ONNX model (truncated or not a "
                             "ModelProto"),
    ("check text.onnx", 2, "'text.onnx' is not an ONNX model"),
    ("check truncated.onnx", 2, "'truncated.onnx' is not an ONNX model"),
    ("check a_dir", 2, "'a_dir' is a directory, expected an ONNX file"),
    ("check tiny.onnx --manifest nope.json", 2, "no manifest 'nope.json'"),
    ("check tiny.onnx --manifest bad.json", 2, "manifest 'bad.json' is not JSON"),
    ("check tiny.onnx --manifest empty.json", 2, "manifest 'empty.json' is not JSON"),
    ("check tiny.onnx --bn torch", 2, "wrong input signature"),
    ("check lenet_like.onnx --bn raising_bn.py:RaisingBN", 2, "RuntimeError: the layer is "
                                                              "broken at "),
    ("check lenet_like.onnx --bn hanging_lenet_bn.py:BN --timeout 1", 2,
     "did not return within 1 s (at hanging_lenet_bn.py:"),
    ("check lenet_like.onnx --polygraphy-inputs nope.json", 2,
     "Give --polygraphy-inputs and --polygraphy-outputs both or neither"),
    ("check lenet_like.onnx --bn torch --manifest bad.json", 2,
     "Give --bn/--model or --manifest, not both"),
    ("check lenet_like.onnx --checkpoint random.pt", 2, "--checkpoint and --model-arg need "
                                                        "--bn or --model"),
    # -- gate -------------------------------------------------------------------------------
    ("gate --exports nodir", 2, "Expected --exports to be a folder with the goldens, received "
                                "exports='nodir'"),
    ("gate --exports a_file", 2, "Invalid value for '--exports': Directory 'a_file' is a file"),
    ("gate --exports a_dir", 2, "no golden manifest 'a_dir/lenet_scratch.json' for gate "
                                "variant 'lenet_scratch': run from the repository root, or "
                                "create the goldens with `bncheck gate --update`"),
    ("gate --updat", 2, "No such option '--updat'. Did you mean '--update'?"),
    # -- bench ----------------------------------------------------------------------------
    ("bench --section nope", 2, "Invalid value for '--section'"),
    ("bench --shape 4xx", 2, "--shape"),
    ("bench --shape 4", 2, "--shape"),
    ("bench --rounds 0", 2, "Invalid value for '--rounds'"),
    ("bench --threads 0", 2, "Invalid value for '--threads'"),
    ("bench --json nodir/b.json", 2, "folder 'nodir' does not exist"),
    ("bench --json /proc/b.json", 2, "is not writable"),
    # -- the command itself -------------------------------------------------------------------
    ("frobnicate", 2, "No such command 'frobnicate'"),
    ("verfy", 2, "No such command 'verfy'"),
]

# (a Python expression; names: bncheck, torch, st (bncheck.engine.strategies), x = randn(4, 3),
#  BN = torch.nn.BatchNorm1d), the error type raised, a fragment of its message
API_CASES: list[tuple[str, str, str]] = [
    # -- bncheck.batch_norm ---------------------------------------------------------------
    ("bncheck.batch_norm([1.0, 2.0], None, None)", "InvalidArgumentType", "input"),
    ("bncheck.batch_norm(torch.ones(4, 3, dtype=torch.int64), None, None)",
     "InvalidArgumentType", "input"),
    ("bncheck.batch_norm(torch.ones(4), None, None)", "InvalidArgument", "input"),
    ("bncheck.batch_norm(torch.tensor(1.0), None, None)", "InvalidArgument", "input"),
    ("bncheck.batch_norm(x, torch.zeros(2), torch.ones(3))", "InvalidArgument", "running_mean"),
    ("bncheck.batch_norm(x, torch.zeros(3), torch.ones(2))", "InvalidArgument", "running_var"),
    ("bncheck.batch_norm(x, None, None, weight=torch.ones(2), training=True)", "InvalidArgument",
     "weight should contain 3 elements not 2"),
    ("bncheck.batch_norm(x, None, None, bias=torch.ones(5), training=True)", "InvalidArgument",
     "bias should contain 3 elements not 5"),
    ("bncheck.batch_norm(x, None, None, weight=[1.0, 1.0, 1.0], training=True)",
     "InvalidArgumentType", "weight"),
    ("bncheck.batch_norm(x, None, None, training=False)", "InvalidArgument", "running_mean"),
    ("bncheck.batch_norm(x, torch.zeros(3), torch.ones(3), momentum='0.1')",
     "InvalidArgumentType", "momentum='0.1'"),
    ("bncheck.batch_norm(x, None, None, eps=-1.0)", "InvalidArgument", "eps=-1.0"),
    ("bncheck.batch_norm(x, None, None, eps='0.1')", "InvalidArgumentType", "eps='0.1'"),
    ("bncheck.batch_norm(x[:1], None, None, training=True)", "InvalidArgument",
     "Expected more than 1 value per channel when training"),
    ("bncheck.batch_norm(x, None, None, training=True, eps=0.0)", "InvalidArgument",
     "Expected eps > 0.0, received eps=0.0 (training normalizes with batch statistics"),
    # -- bncheck.BatchNorm ------------------------------------------------------------------
    ("bncheck.BatchNorm(-3)", "InvalidArgument", "num_features=-3"),
    ("bncheck.BatchNorm(2.5)", "InvalidArgumentType", "num_features=2.5"),
    ("bncheck.BatchNorm('3')", "InvalidArgumentType", "num_features='3'"),
    ("bncheck.BatchNorm(True)", "InvalidArgumentType", "num_features=True"),
    ("bncheck.BatchNorm(3, eps=-1.0).eval()(x)", "InvalidArgument", "eps=-1.0"),
    ("bncheck.BatchNorm(3)(torch.randn(4, 5))", "InvalidArgument", "running_mean should "
                                                                  "contain 5 elements not 3"),
    ("bncheck.BatchNorm(3)(torch.randn(4))", "InvalidArgument", "input"),
    ("bncheck.BatchNorm2d(3)(torch.randn(4, 3))", "InvalidArgument", "input"),
    ("bncheck.BatchNorm(3)(torch.randn(1, 3))", "InvalidArgument",
     "Expected more than 1 value per channel when training"),
    ("bncheck.BatchNorm(3)('x')", "InvalidArgumentType", "input"),
    # -- check_batchnorm / verify --------------------------------------------------------------
    ("bncheck.check_batchnorm(BN, eps=-1.0)", "InvalidArgument", "eps=-1.0"),
    ("bncheck.check_batchnorm(BN, eps=0.0)", "InvalidArgument", "eps=0.0"),
    ("bncheck.check_batchnorm(BN, momentum=2.0)", "InvalidArgument", "momentum=2.0"),
    ("bncheck.check_batchnorm(BN, momentum=float('nan'))", "InvalidArgument", "momentum=nan"),
    ("bncheck.check_batchnorm(BN, dims=[7])", "InvalidArgument", "dims=(7,)"),
    ("bncheck.check_batchnorm(BN, dims=[])", "InvalidArgument", "dims=()"),
    ("bncheck.check_batchnorm(BN, dtypes=['float8'])", "InvalidArgument", "Expected dtypes"),
    ("bncheck.check_batchnorm(BN, properties=['nope'])", "InvalidArgument",
     "Unknown property='nope'"),
    ("bncheck.check_batchnorm(BN, properties='train_forward')", "InvalidArgumentType",
     "received properties='train_forward' (write properties=['train_forward'])"),
    ("bncheck.check_batchnorm(BN, dtypes='float32')", "InvalidArgumentType",
     "dtypes='float32'"),
    ("bncheck.check_batchnorm(BN, dims='2,4')", "InvalidArgumentType", "dims='2,4'"),
    ("bncheck.check_batchnorm(torch.nn.BatchNorm2d, dims=[2])", "InvalidArgument",
     "Expected dims among the input ranks BatchNorm2d accepts (4), received dims=(2,)"),
    ("bncheck.check_batchnorm(BN, examples=0)", "InvalidArgument", "examples=0"),
    ("bncheck.check_batchnorm(BN, examples=1.5)", "InvalidArgumentType", "examples=1.5"),
    ("bncheck.check_batchnorm(BN, seed='x')", "InvalidArgumentType", "seed='x'"),
    ("bncheck.check_batchnorm(BN, profile='fast')", "InvalidArgument", "profile='fast'"),
    ("bncheck.check_batchnorm(BN, convention='caffe')", "InvalidArgument", "caffe"),
    ("bncheck.check_batchnorm(BN, names={'gain': 'g'})", "InvalidArgument",
     "'gain' is not one of them"),
    ("bncheck.check_batchnorm(BN, fixed={'eps': 1.0})", "InvalidArgument", "Expected fixed keys"),
    ("bncheck.check_batchnorm(BN, fixed={'affine': 'yes'})", "InvalidArgumentType",
     "fixed['affine']"),
    ("bncheck.check_batchnorm(BN, channel_axis=0)", "InvalidArgument", "channel_axis=0"),
    ("bncheck.check_batchnorm(BN, mode_argument='1x')", "InvalidArgument", "mode_argument='1x'"),
    ("bncheck.check_batchnorm(BN, empty_batches='yes')", "InvalidArgumentType",
     "empty_batches='yes'"),
    ("bncheck.check_batchnorm(BN, timeout=0)", "InvalidArgument", "timeout=0"),
    ("bncheck.check_batchnorm(BN, timeout=float('nan'))", "InvalidArgument", "timeout=nan"),
    ("bncheck.check_batchnorm(BN, jobs=0)", "InvalidArgument", "jobs >= 1, received jobs=0"),
    ("bncheck.check_batchnorm(BN, jobs=2, timeout=None)", "InvalidArgument",
     "timeout=None runs them in this process"),
    ("bncheck.check_batchnorm(3)", "InvalidArgument", "Expected a Module class or a factory"),
    ("bncheck.check_batchnorm(torch.nn.Linear)", "TargetError", "out_features"),
    ("bncheck.check_batchnorm(BN(3))", "InvalidArgument", "received an instance "
                                                        "BatchNorm1d(3, eps=1e-05"),
    ("bncheck.verify(BN, properties=['train_forwrd'])", "InvalidArgument",
     "did you mean train_forward"),
    ("bncheck.verify(BN, seed=True)", "InvalidArgumentType", "seed=True must be a number, "
                                                             "not a bool"),
    # -- strategies ---------------------------------------------------------------------------
    ("st.shapes(dims=[7])", "InvalidArgument", "dims"),
    ("st.shapes(min_batch=0)", "InvalidArgument", "min_batch=0"),
    ("st.shapes(min_batch=5, max_batch=2)", "InvalidArgument", "max_batch=2 < min_batch=5"),
    ("st.shapes(max_side=2.5)", "InvalidArgumentType", "max_side=2.5"),
    ("st.dtypes(dtypes=['float8'])", "InvalidArgument", "float8"),
    ("st.modes(training='yes')", "InvalidArgumentType", "training='yes'"),
    ("st.modes(grad_modes=['sometimes'])", "InvalidArgument", "sometimes"),
    ("st.bn_configs(eps=-1.0)", "InvalidArgument", "eps=-1.0"),
    ("st.bn_configs(momentum=2.0)", "InvalidArgument", "momentum=2.0"),
    ("st.bn_configs(min_batch_weight=0.9, max_batch_weight=0.1)", "InvalidArgument",
     "max_batch_weight=0.1 < min_batch_weight=0.9"),
    ("st.inputs((4, 3), torch.int64)", "InvalidArgument", "int64"),
    ("st.inputs((4,))", "InvalidArgument", "shape"),
    ("st.channel_values('weird')", "InvalidArgument", "weird"),
    ("st.bn_cases(dims=[1])", "InvalidArgument", "dims"),
    # -- SyncBatchNorm ------------------------------------------------------------------------
    ("bncheck.SyncBatchNorm(-1)", "InvalidArgument", "num_features=-1"),
    ("bncheck.SyncBatchNorm(3, process_group='world')", "InvalidArgumentType", "process_group"),
    ("bncheck.SyncBatchNorm.convert_sync_batchnorm(3)", "InvalidArgumentType", "module=3"),
]


def make_bad_files(root: Path) -> None:
    """The files the tables name, in ``root``."""
    (root / "dir.py").mkdir()
    (root / "a_dir").mkdir()
    (root / "holds_lenet_onnx_dir" / "lenet.onnx").mkdir(parents=True)
    (root / "a_file").write_text("just text\n")
    (root / "empty.py").write_text("")
    (root / "syntax.py").write_text("class BN(:\n")
    (root / "raises_on_import.py").write_text("raise RuntimeError('boom at import')\n")
    (root / "exits_on_import.py").write_text("import sys\nsys.exit(3)\n")
    (root / "notpy.txt").write_text("class BN:\n    pass\n")
    (root / "not_a_module.py").write_text("class BN:\n    def __init__(self, n):\n"
                                          "        self.n = n\n")
    (root / "tests" / "data").mkdir(parents=True)
    (root / "tests" / "data" / "hanging_bn.py").write_text(HANGING.read_text())
    (root / "hanging_lenet_bn.py").write_text(
        "import torch\n\n\nclass BN(torch.nn.Module):  # LeNet-BN's: BN(num_features, num_dims)\n"
        "    def __init__(self, num_features, num_dims=4):\n"
        "        super().__init__()\n"
        "        self.weight = torch.nn.Parameter(torch.ones(num_features))\n\n"
        "    def forward(self, x):\n"
        "        while True:\n"
        "            pass\n")
    (root / "lenet_like.onnx").write_bytes(_lenet_like_onnx())
    (root / "raising_bn.py").write_text(
        "import torch\n\n\nclass RaisingBN(torch.nn.BatchNorm2d):\n"
        "    def forward(self, x):\n"
        "        raise RuntimeError('the layer is broken')\n")
    _round_two_files(root)
    # ONNX files
    (root / "empty.onnx").write_bytes(b"")
    (root / "random.onnx").write_bytes(bytes(range(256)) * 4)
    (root / "text.onnx").write_text("this is not a model\n")
    tiny = _tiny_onnx()
    (root / "tiny.onnx").write_bytes(tiny)
    (root / "truncated.onnx").write_bytes(tiny[: len(tiny) // 2])
    (root / "zero_dim.onnx").write_bytes(_tiny_onnx(shape=["N", 0]))
    _external_data_onnx(root / "ext_missing.onnx")
    (root / "bad.json").write_text("{not json")
    (root / "empty.json").write_text("")
    # checkpoints
    (root / "empty.pt").write_bytes(b"")
    (root / "random.pt").write_bytes(_noise(512))
    torch.save(torch.nn.Linear(2, 2), root / "model.pt")  # a pickled model, not a state_dict
    torch.save(torch.nn.Linear(2, 2).state_dict(), root / "wrong_keys.pt")
    # IDX folders
    _idx_folder(root / "idx_ok")
    _idx_folder(root / "idx_truncated", truncate_images=True)
    _idx_folder(root / "idx_labels_as_images", labels_as_images=True)
    _idx_folder(root / "idx_bad_magic", images=_noise(64))
    _idx_folder(root / "idx_empty", images=b"")
    _idx_folder(root / "idx_label_range", labels=_idx(bytes([1, 12, 3]), (3,)))
    _idx_folder(root / "idx_counts", labels=_idx(bytes([1, 2]), (2,)))
    folder = root / "idx_not_gzip"
    _idx_folder(folder)
    (folder / "train-images-idx3-ubyte").rename(folder / "train-images-idx3-ubyte.gz")


def _round_two_files(root: Path) -> None:
    """The second battery's files (issue 19): modules that misbehave at import, targets that
    are not BatchNorms, a FIFO, a truncated golden."""
    import os
    import shutil

    (root / "exits_0_on_import.py").write_text("import os\nos._exit(0)\n")
    (root / "loops_on_import.py").write_text("while True:\n    pass\n")
    (root / "thread_on_import.py").write_text(
        "import threading, time\nimport torch\n"
        "threading.Thread(target=time.sleep, args=(10**6,)).start()  # not a daemon\n"
        "BN = torch.nn.BatchNorm1d\n")
    (root / "float64_on_import.py").write_text(
        "import torch\ntorch.set_default_dtype(torch.float64)\nBN = torch.nn.BatchNorm1d\n")
    (root / "no_grad_on_import.py").write_text(
        "import torch\ntorch.set_grad_enabled(False)\nBN = torch.nn.BatchNorm1d\n")
    (root / "chdir_on_import.py").write_text(
        "import os\nimport torch\nos.chdir('/')\nBN = torch.nn.BatchNorm1d\n")
    (root / "not_bn.py").write_text(
        "import torch\n\n\nclass Tuple(torch.nn.BatchNorm1d):\n"
        "    def forward(self, x):\n        return super().forward(x), x\n\n\n"
        "class Array(torch.nn.BatchNorm1d):\n"
        "    def forward(self, x):\n        return super().forward(x).detach().numpy()\n\n\n"
        "class NoInput(torch.nn.Module):\n    def __init__(self, num_features):\n"
        "        super().__init__()\n\n    def forward(self):\n        return torch.zeros(1)\n"
        "\n\nclass Meta(torch.nn.BatchNorm1d):\n"
        "    def forward(self, x):\n        return torch.empty_like(x, device='meta')\n")
    (root / "real.json").write_text("an earlier report")
    (root / "link.json").symlink_to("real.json")
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "fifo.py")
        os.mkfifo(root / "fifo.onnx")
    goldens = root / "goldens_truncated"
    goldens.mkdir()
    for name in ("lenet_scratch.json", "lenet_scratch.npz"):
        shutil.copy(ROOT / "exports" / name, goldens / name)
    npz = goldens / "lenet_scratch.npz"
    npz.write_bytes(npz.read_bytes()[:300])
    # `check --manifest`: a manifest naming that golden (check reads it before any runtime)
    from bncheck.onnx.manifest import MANIFEST_FORMAT

    (goldens / "truncated_golden.json").write_text(
        json.dumps({"format": MANIFEST_FORMAT, "golden": {"file": "lenet_scratch.npz"}}))


def _idx(body: bytes, dims: tuple[int, ...], code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body


def _idx_folder(folder: Path, *, truncate_images: bool = False, labels_as_images: bool = False,
                images: bytes | None = None, labels: bytes | None = None) -> None:
    folder.mkdir()
    n = 3
    image_bytes = _idx(bytes(n * 28 * 28), (n, 28, 28))
    label_bytes = _idx(bytes([1, 2, 3]), (n,))
    if truncate_images:
        image_bytes = image_bytes[:-100]
    if labels_as_images:
        image_bytes = label_bytes
    for split, (img, lab) in {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
                              }.items():
        (folder / img).write_bytes(image_bytes if images is None or split == "test" else images)
        (folder / lab).write_bytes(label_bytes if labels is None else labels)


def _noise(n: int) -> bytes:
    """Random-looking bytes, the same on every run: ``os.urandom`` once began with 0x80 (a
    pickle's first byte; 1 run in 256) and the checkpoint's message changed accordingly."""
    import random

    return random.Random(0).randbytes(n)


def _tiny_onnx(shape: list[int | str] | None = None) -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape or [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape or [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return bytes(model.SerializeToString())


def _external_data_onnx(path: Path) -> None:
    """A model whose weight lives in an external data file, saved without that file."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, path, save_as_external_data=True, location=path.name + ".data",
              size_threshold=0)
    (path.parent / (path.name + ".data")).unlink()


def _lenet_like_onnx() -> bytes:
    """LeNet-BN's signature, (N, 1, 28, 28) float32 in, (N, 10) out: Flatten and a Gemm."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((784, 10), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w"], ["logits"])], "lenet_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return bytes(model.SerializeToString())


def namespace() -> dict[str, Any]:
    import bncheck
    from bncheck.engine import strategies

    return {"bncheck": bncheck, "torch": torch, "st": strategies, "BN": torch.nn.BatchNorm1d,
            "x": torch.randn(4, 3, generator=torch.Generator().manual_seed(0))}


def invoke(command: str, env: dict[str, str] | None = None) -> Any:
    """``bncheck COMMAND`` in-process (with ``env`` set): click's result."""
    from bncheck.cli import main

    return CliRunner().invoke(main, shlex.split(command), env=env)


def run_cli(command: str, env: dict[str, str] | None = None
            ) -> tuple[int, str, BaseException | None]:
    """``bncheck COMMAND`` in-process (with ``env`` set): exit code, what the user sees
    (whitespace joined), and an exception that escaped the command (None or SystemExit when it
    ended properly)."""
    r = invoke(command, env)
    return r.exit_code, " ".join(r.output.split()), r.exception


def run_api(call: str) -> BaseException | None:
    """The exception ``call`` raises (None when it returns)."""
    try:
        eval(call, namespace())
    except Exception as e:  # noqa: BLE001 - the table says which one is expected
        return e
    return None


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad_input")
    make_bad_files(root)
    return root


def check_cli(command: str, code: int, seen: str, env: dict[str, str] | None = None) -> None:
    r = invoke(command, env)
    exit_code, output, exc = r.exit_code, " ".join(r.output.split()), r.exception
    assert exc is None or isinstance(exc, SystemExit), f"{type(exc).__name__}: {exc}"
    assert "Traceback" not in output, output
    assert exit_code == code, output
    assert seen in output, output
    if code == 2:  # a usage error is written to stderr, not into the report
        assert seen in " ".join(r.stderr.split()), output


def check_api(call: str, error: str, seen: str) -> None:
    from bncheck import errors

    raised = run_api(call)
    assert raised is not None, "no error raised"
    assert isinstance(raised, getattr(errors, error)), f"{type(raised).__name__}: {raised}"
    assert seen in str(raised), str(raised)


@pytest.mark.parametrize("command,code,seen", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli(bad_files: Path, monkeypatch: pytest.MonkeyPatch, command: str, code: int,
             seen: str) -> None:
    monkeypatch.chdir(bad_files)
    check_cli(command, code, seen)


@pytest.mark.parametrize("call,error,seen", API_CASES, ids=[c[0] for c in API_CASES])
def test_api(call: str, error: str, seen: str) -> None:
    check_api(call, error, seen)


def readme_rows() -> list[tuple[str, str, str]]:
    """docs/reliability.md's bad-input table: (input, what the user sees, exit code or error
    type); ``ok`` rows must return without an error."""
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    section = text.split("### Bad input", 1)[-1].split("\n#", 1)[0] if "### Bad input" in \
        text else ""
    rows = re.findall(r"^\| `([^`]+)` \| (.+?) \| (\w+) \|$", section, re.M)
    return [(inp, seen, code) for inp, seen, code in rows]


@pytest.mark.parametrize("given,seen,code", readme_rows(), ids=[r[0] for r in readme_rows()])
def test_readme_table(bad_files: Path, monkeypatch: pytest.MonkeyPatch, given: str, seen: str,
                      code: str) -> None:
    monkeypatch.chdir(bad_files)
    if code == "ok":
        assert run_api(given) is None
        return
    fragments = re.findall(r"`([^`]+)`", seen)
    assert fragments, f"the docs/reliability.md row for {given} shows no message"
    # a row may set environment variables as a shell line does: `NAME=value bncheck ...`
    env = dict(re.findall(r"(\w+)=(\S*) ", given.split("bncheck ", 1)[0]))
    command = given.split("bncheck ", 1)[-1] if re.match(r"(\w+=\S* )*bncheck ", given) \
        else None
    if command is not None:
        for fragment in fragments:
            check_cli(command, int(code), fragment.removeprefix("Error: "), env)
    else:
        for fragment in fragments:
            check_api(given, code, fragment)


def test_the_readme_has_the_table() -> None:
    assert len(readme_rows()) >= 30


def test_gzip_fixture_is_really_not_gzip(bad_files: Path) -> None:
    with pytest.raises(gzip.BadGzipFile), \
            gzip.open(bad_files / "idx_not_gzip" / "train-images-idx3-ubyte.gz") as fh:
        fh.read()
