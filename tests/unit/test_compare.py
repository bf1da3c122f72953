"""compare(): attributes first, then values, reported in torch.testing.assert_close's style."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bncheck.engine.compare import Tolerance, assert_close, compare, default_tolerance
from bncheck.errors import InvalidArgument, VerificationFailed


def test_close_values_pass():
    assert compare(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-7])) is None


def test_report_names_count_greatest_differences_and_tolerance():
    m = compare(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 2.1, 3.0, 4.5]),
                name="running_var")
    assert m is not None
    text = str(m)
    assert text.startswith("running_var: Mismatched elements: 2 / 4 (50.0%)")
    assert "Greatest absolute difference: 0.5 at channel 3 (up to 1e-05 allowed)" in text
    assert "Greatest relative difference: 0.111111 at channel 3 (up to 1.3e-06 allowed)" in text
    assert math.isclose(m.max_abs, 0.5)


def test_multi_dim_index():
    e = torch.zeros(2, 3, 2, 2)
    a = e.clone()
    a[1, 2, 0, 1] = 1.0
    assert "at index (1, 2, 0, 1)" in str(compare(a, e))


@pytest.mark.parametrize("actual,expected,what", [
    (torch.zeros(2), torch.zeros(3), "shape"),
    (torch.zeros(2, dtype=torch.float64), torch.zeros(2), "dtype"),
])
def test_attributes_first(actual, expected, what):
    m = compare(actual, expected)
    assert m is not None and f"attribute '{what}'" in str(m)


def test_nan_where_expected_is_finite_is_a_mismatch():
    assert compare(torch.tensor([float("nan")]), torch.tensor([0.0])) is not None
    assert compare(torch.tensor([0.0]), torch.tensor([float("nan")])) is not None
    assert compare(torch.tensor([float("nan")]), torch.tensor([float("nan")])) is None
    assert compare(torch.tensor([float("nan")]), torch.tensor([float("nan")]),
                   equal_nan=False) is not None
    assert compare(torch.tensor([float("inf")]), torch.tensor([float("inf")])) is None
    assert compare(torch.tensor([float("inf")]), torch.tensor([-float("inf")])) is not None


def test_numpy_and_explicit_tolerances():
    assert compare(np.array([1.0]), np.array([1.05]), rtol=0.0, atol=0.1) is None
    assert compare(np.array([1.0]), np.array([1.05]), tolerance=Tolerance(0, 0.01, "x")) is not None
    with pytest.raises(InvalidArgument, match="rtol and atol both or neither"):
        compare(np.array([1.0]), np.array([1.0]), rtol=0.1)


def test_assert_close_raises_verification_failed():
    with pytest.raises(VerificationFailed, match="Mismatched elements: 1 / 1"):
        assert_close(torch.tensor([0.0]), torch.tensor([1.0]), name="y")


def test_default_tolerances_follow_assert_close():
    assert default_tolerance(torch.float32).rtol == 1.3e-6
    assert default_tolerance(torch.float16).atol == 1e-5
    with pytest.raises(InvalidArgument, match="dtype=torch.int64"):
        default_tolerance(torch.int64)


def test_infinities_must_match_exactly():
    assert compare(torch.tensor([1.0]), torch.tensor([float("inf")])) is not None
    assert compare(torch.tensor([float("inf")]), torch.tensor([1e30])) is not None
