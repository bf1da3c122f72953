"""Closeness checks with ``torch.testing.assert_close``-style mismatch reports.

>>> import torch
>>> from bncheck.engine.compare import compare
>>> m = compare(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]), name="running_mean")
>>> print(m)
running_mean: Mismatched elements: 1 / 2 (50.0%)
Greatest absolute difference: 0.5 at channel 1 (up to 1e-05 allowed)
Greatest relative difference: 0.2 at channel 1 (up to 1.3e-06 allowed)
At channel 1: expected 2.5, got 2

Attributes (shape, dtype) are compared first, values after. Every tolerance carries its reason.
:func:`max_errors` is the one max-abs/max-rel error measure (the ONNX checks use it too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bncheck.errors import InvalidArgument, VerificationFailed

__all__ = ["Tolerance", "default_tolerance", "compare", "assert_close", "Mismatch",
           "max_errors"]


@dataclass(frozen=True)
class Tolerance:
    """``|actual - expected| <= atol + rtol * |expected|`` and the reason for it (dtype,
    reduction length, conditioning). ``atol`` may be a tensor: one bound per element or
    channel, broadcast against the values."""

    rtol: float
    atol: float | Tensor
    reason: str

    def scaled(self, factor: float, why: str) -> Tolerance:
        """The same tolerance multiplied by ``factor``, with ``why`` appended to the reason."""
        reason = f"{self.reason}; x{factor:g}: {why}"
        return Tolerance(self.rtol * factor, self.atol * factor, reason)

    def kwargs(self) -> dict[str, object]:
        return {"rtol": self.rtol, "atol": self.atol}

    def __add__(self, other: Tolerance) -> Tolerance:
        """The sum of two bounds (two runs or two implementations, each with its own error)."""
        return Tolerance(self.rtol + other.rtol, self.atol + other.atol,
                         f"{self.reason} (sum of the two runs' bounds)")

    def restricted(self, keep: Tensor) -> Tolerance:
        """The bounds of the channels ``keep`` selects (a per-channel ``atol``)."""
        atol = self.atol[keep] if isinstance(self.atol, Tensor) else self.atol
        return Tolerance(self.rtol, atol, self.reason)


# torch.testing.assert_close's defaults: rtol is about the dtype's epsilon, atol a small floor.
_DTYPE_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}


def default_tolerance(dtype: torch.dtype) -> Tolerance:
    """``torch.testing.assert_close``'s default tolerance for ``dtype``."""
    if dtype not in _DTYPE_TOLERANCES:
        raise InvalidArgument(
            f"Expected a floating dtype in {[str(d) for d in _DTYPE_TOLERANCES]}, "
            f"received dtype={dtype}")
    rtol, atol = _DTYPE_TOLERANCES[dtype]
    return Tolerance(rtol, atol, f"assert_close default for {str(dtype).removeprefix('torch.')}")


@dataclass(frozen=True)
class Mismatch:
    """A failed comparison: which value, and the report lines."""

    name: str
    lines: tuple[str, ...]
    max_abs: float = float("nan")
    max_rel: float = float("nan")

    def __str__(self) -> str:
        return f"{self.name}: " + "\n".join(self.lines)


def _as_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray | np.generic | float | int | list):
        return torch.as_tensor(np.asarray(x))
    raise InvalidArgument(f"Expected a tensor or array, received {type(x).__name__}")


def max_errors(actual: Any, expected: Any) -> tuple[float, float]:
    """The greatest absolute and relative difference of two arrays of the same shape.

    ``inf`` when the shapes differ or exactly one side is NaN at some element; 0 for empty
    arrays (nothing differs). The relative difference divides by ``max(|expected|, tiny)``
    (float32's smallest normal number), so an exact zero expected stays finite.
    """
    a = _as_tensor(actual).to(torch.float64).cpu()
    e = _as_tensor(expected).to(torch.float64).cpu()
    if tuple(a.shape) != tuple(e.shape):
        return float("inf"), float("inf")
    if a.numel() == 0:
        return 0.0, 0.0
    both_nan = torch.isnan(a) & torch.isnan(e)
    diff = torch.where(both_nan, torch.zeros_like(a), (a - e).abs())
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    rel = diff / e.abs().clamp_min(torch.finfo(torch.float32).tiny)
    rel = torch.where(torch.isnan(rel), torch.zeros_like(rel), rel)
    return float(diff.max()), float(rel.max())


def _value(v: float) -> str:
    return "nan" if v != v else f"{v:.6g}"


def _where(flat_index: int, shape: tuple[int, ...]) -> str:
    if len(shape) <= 1:
        return f"channel {flat_index}" if shape else "index ()"
    idx = np.unravel_index(flat_index, shape)
    return f"index {tuple(int(i) for i in idx)}"


def compare(actual: Any, expected: Any, *, rtol: float | None = None,
            atol: float | Tensor | None = None,
            tolerance: Tolerance | None = None, name: str = "output",
            equal_nan: bool = True, check_dtype: bool = True) -> Mismatch | None:
    """Compare ``actual`` with ``expected``; ``None`` when close, else a :class:`Mismatch`.

    ``|actual - expected| <= atol + rtol * |expected|`` elementwise, as assert_close. Give
    ``rtol`` and ``atol`` both or neither (neither: ``tolerance`` or the expected dtype's default).
    ``1-D`` values are reported "at channel k" (BatchNorm statistics are per channel).
    ``atol`` may be a tensor broadcastable to ``expected`` (e.g. one bound per channel); the
    report then gives the bound at the greatest difference.
    """
    if (rtol is None) != (atol is None):
        raise InvalidArgument(f"Give rtol and atol both or neither, received rtol={rtol!r}, "
                              f"atol={atol!r}")
    a, e = _as_tensor(actual), _as_tensor(expected)
    if tuple(a.shape) != tuple(e.shape):
        return Mismatch(name, (f"The values for attribute 'shape' do not match: "
                               f"{tuple(a.shape)} != {tuple(e.shape)}.",))
    if check_dtype and a.dtype != e.dtype:
        return Mismatch(name, (f"The values for attribute 'dtype' do not match: "
                               f"{a.dtype} != {e.dtype}.",))
    if rtol is None or atol is None:
        tol = tolerance or default_tolerance(e.dtype if e.is_floating_point() else torch.float64)
        rtol, atol = tol.rtol, tol.atol
    a64, e64 = a.to(torch.float64).cpu(), e.to(torch.float64).cpu()
    if e64.numel() == 0:
        return None
    nan_a, nan_e = torch.isnan(a64), torch.isnan(e64)
    both_nan = nan_a & nan_e if equal_nan else torch.zeros_like(nan_a)
    same_inf = torch.isinf(a64) & torch.isinf(e64) & (a64 == e64)
    diff = (a64 - e64).abs()
    finite = torch.isfinite(a64) & torch.isfinite(e64)
    atol_t = torch.broadcast_to(torch.as_tensor(atol, dtype=torch.float64), e64.shape)
    ok = (finite & (diff <= atol_t + rtol * e64.abs())) | both_nan | same_inf
    if bool(ok.all()):
        return None
    bad = int((~ok).sum())
    total = ok.numel()
    shape = tuple(a.shape)
    # NaN on one side only is the worst kind of mismatch: reported first, as NaN.
    one_nan = (nan_a ^ nan_e) & ~ok
    diff = torch.where(ok | both_nan | same_inf, torch.zeros_like(diff), diff)
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    rel = diff / e64.abs()
    rel = torch.where(torch.isnan(rel), torch.zeros_like(rel), rel)
    flat_a, flat_e = a64.flatten(), e64.flatten()
    if bool(one_nan.any()):
        i = int(one_nan.flatten().nonzero()[0])
        lines: tuple[str, ...] = (
            f"Mismatched elements: {bad} / {total} ({100.0 * bad / total:.1f}%), "
            f"{int(one_nan.sum())} of them NaN on one side only",
            f"Greatest absolute difference: nan at {_where(i, shape)}",
            f"At {_where(i, shape)}: expected {_value(float(flat_e[i]))}, "
            f"got {_value(float(flat_a[i]))}",
        )
        return Mismatch(name, lines, float("nan"), float("nan"))
    i_abs = int(torch.argmax(diff.flatten()))
    i_rel = int(torch.argmax(rel.flatten()))
    max_abs = float(diff.flatten()[i_abs])
    max_rel = float(rel.flatten()[i_rel])
    lines = (
        f"Mismatched elements: {bad} / {total} ({100.0 * bad / total:.1f}%)",
        f"Greatest absolute difference: {max_abs:.6g} at {_where(i_abs, shape)} "
        f"(up to {float(atol_t.flatten()[i_abs]):.3g} allowed)",
        f"Greatest relative difference: {max_rel:.6g} at {_where(i_rel, shape)} "
        f"(up to {rtol:g} allowed)",
        f"At {_where(i_abs, shape)}: expected {_value(float(flat_e[i_abs]))}, "
        f"got {_value(float(flat_a[i_abs]))}",
    )
    return Mismatch(name, lines, max_abs, max_rel)


def assert_close(actual: Any, expected: Any, **kwargs: Any) -> None:
    """Like :func:`compare`, raising :class:`VerificationFailed` with the report on mismatch."""
    mismatch = compare(actual, expected, **kwargs)
    if mismatch is not None:
        raise VerificationFailed(str(mismatch))
