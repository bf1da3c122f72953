"""The public surface: one error hierarchy with an enum status, the entry points in
``bncheck.__all__``, and one shared ``max_errors`` (empty arrays, NaN, mismatched sizes)."""

from __future__ import annotations

import math

import numpy as np
import torch

import bncheck
from bncheck.engine.compare import max_errors
from bncheck.engine.runner import Status, verify
from bncheck.errors import BNCheckError, PropertyFailure


def test_one_error_hierarchy_and_enum_status():
    assert issubclass(PropertyFailure, BNCheckError) and issubclass(PropertyFailure,
                                                                    AssertionError)
    report = verify(torch.nn.BatchNorm1d, properties=["train_forward"], examples=2)
    assert report.results[0].status is Status.PASSED
    assert report.to_json()["properties"][0]["status"] == "passed"


def test_entry_points():
    assert {"verify", "check_batchnorm", "BatchNorm", "batch_norm", "BNCheckError",
            "VerificationFailed"} <= set(bncheck.__all__)
    assert "lenet_bn" not in bncheck.__all__
    assert bncheck.verify(torch.nn.BatchNorm1d, properties=["train_forward"], examples=2).ok


def test_max_errors_is_shared_and_handles_empty_arrays():
    from bncheck.onnx import _report, gate, verify

    assert gate.max_errors is _report.max_errors is verify.max_errors is max_errors
    empty = np.zeros((0, 3), dtype=np.float32)
    assert max_errors(empty, empty) == (0.0, 0.0)
    assert max_errors(np.array([1.0]), np.array([np.nan]))[0] == math.inf
    assert max_errors(np.ones(2), np.ones(3)) == (math.inf, math.inf)
