"""Tolerance rules: each bound comes from the dtype's unit roundoff and the reduction length.

The bounds are first-order error bounds for a *correct* implementation that reduces in the
accumulation dtype (float32 for float16/bfloat16 inputs, as PyTorch, cuDNN and ONNX Runtime do)
with a naive (worst-case) summation of ``n`` terms and a two-pass variance:

* the batch mean is off by at most ``n * u * max|x|``;
* the biased variance by at most ``n * u * (var + max|x| * std) + (n * u * max|x|)**2`` (two-pass:
  the error of the mean enters squared; Welford: deviations rounded against a moving mean);
* the normalized value ``xhat = (x - mean) / sqrt(var + eps)`` then by ``e_mean / s + |xhat| *
  e_var / s**2`` plus a few roundings, where ``s = sqrt(var + eps)``;
* the output is finally rounded to its dtype: relative ``2 * u_out``.

``SAFETY`` covers the dropped constants and higher-order terms; the float64 oracle's own error is
bounded by the same formula with float64's roundoff, far below.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bncheck.engine.compare import Tolerance
from bncheck.engine.oracle import channel_view, count_per_channel, reduce_dims

__all__ = ["SAFETY", "roundoff", "accumulation_dtype", "forward_tolerance",
           "stats_tolerance", "gradient_tolerances", "std_tolerance"]

#: Margin over the first-order bounds (dropped constants, rounding of intermediate steps).
SAFETY = 8.0

_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11,
             torch.bfloat16: 2.0**-8}


def roundoff(dtype: torch.dtype) -> float:
    """The unit roundoff of ``dtype`` (half the machine epsilon)."""
    return _ROUNDOFF[dtype]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a correct BatchNorm accumulates in: float32 for 16-bit inputs, else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _xhat_error(x64: Tensor, mean: Tensor, var: Tensor, eps: float, n: int,
                u: float) -> tuple[Tensor, Tensor]:
    """Per-channel bound on the error of xhat, and max|xhat| (both ``(C,)``)."""
    dims = reduce_dims(x64.dim())
    big = x64.abs().amax(dim=dims) if x64.numel() else torch.zeros_like(mean)
    s = torch.sqrt(var + eps)
    dev = (x64 - channel_view(mean, x64.dim())).abs().amax(dim=dims) / s
    r = (big + mean.abs()) / s
    e_mean = n * u * r
    # Relative to s**2: two-pass summation (n u var), the mean's error squared, and the
    # deviations rounded against a moving mean as Welford's algorithm does (n u max|x| std).
    e_var = (n * u * (var + big * torch.sqrt(var))) / s.square() + e_mean.square()
    return e_mean + dev * e_var + 2 * u * (dev + 1), dev


def forward_tolerance(x: Tensor, mean: Tensor, var: Tensor, *, eps: float, n: int | None = None,
                      weight: Tensor | None = None, bias: Tensor | None = None,
                      dtype: torch.dtype | None = None) -> Tolerance:
    """Tolerance of ``weight * (x - mean) / sqrt(var + eps) + bias`` for an implementation
    whose statistics come from a reduction over ``n`` values per channel (``n=1``: given
    statistics, eval mode). ``(C,)`` float64 arguments; ``dtype`` is the output dtype."""
    dtype = dtype or x.dtype
    x64 = x.detach().to(torch.float64)
    n = count_per_channel(x64.shape) if n is None else n
    u, u_out = roundoff(accumulation_dtype(dtype)), roundoff(dtype)
    dxhat, dev = _xhat_error(x64, mean, var, eps, n, u)
    if u_out > u:
        # 16-bit outputs: the mean and 1/std may be rounded to the output dtype before they are
        # applied (PyTorch's CPU kernel does), and so may each intermediate product.
        r = (x64.abs().amax(dim=reduce_dims(x64.dim())) + mean.abs()) / torch.sqrt(var + eps)
        dxhat = dxhat + 2 * u_out * (r + dev + 1)
    g = weight.abs() if weight is not None else torch.ones_like(mean)
    b = bias.abs() if bias is not None else torch.zeros_like(mean)
    # Floors: the output's subnormal spacing, and underflow of intermediates in the
    # accumulation dtype (products below its smallest normal number lose all relative accuracy).
    tiny = torch.finfo(dtype).tiny * torch.finfo(dtype).eps
    acc = torch.finfo(accumulation_dtype(dtype))
    underflow = SAFETY * acc.tiny * (1 + g)
    # A folded scale weight / sqrt(var + eps) (y = x * scale + shift, as torch's eval kernel
    # computes) below the smallest normal number keeps only its subnormal spacing (found by
    # fuzz/fuzz_reference.py), or is flushed to zero where subnormals are (XLA on CPU: a
    # bfloat16 Flax BatchNorm with a weight of 1.2e-38 output 0 for 2.5e-36); either error is
    # at most the smallest normal number times x and the mean.
    big = x64.abs().amax(dim=reduce_dims(x64.dim())) if x64.numel() else torch.zeros_like(mean)
    folded = SAFETY * acc.tiny * (big + mean.abs())
    atol = (SAFETY * (g * dxhat + max(u, u_out) * (g * dev + b)) + 2 * tiny + underflow
            + folded)
    # A bound past float64's range is infinite, never NaN (0 * inf where a constant channel of
    # values near 1e300 meets an overflowing term; found by fuzz/fuzz_reference.py).
    atol = torch.nan_to_num(atol, nan=torch.inf)
    return Tolerance(
        2 * u_out + SAFETY * u, channel_view(atol, x64.dim()),
        f"{str(dtype).removeprefix('torch.')} output (u={u_out:.2g}), statistics accumulated "
        f"in {str(accumulation_dtype(dtype)).removeprefix('torch.')} over n={n} values per "
        f"channel: mean error n*u*max|x|, two-pass variance, x{SAFETY:g} margin")


def stats_tolerance(x: Tensor, old_mean: Tensor, old_var: Tensor, batch_mean: Tensor,
                    batch_var: Tensor, *, weight: float, correction: float,
                    stat_dtype: torch.dtype) -> tuple[Tolerance, Tolerance]:
    """Tolerances of the running mean and variance after one update with batch weight
    ``weight``; ``correction`` is ``n / (n - 1)`` for an unbiased running variance, else 1."""
    x64 = x.detach().to(torch.float64)
    n = count_per_channel(x64.shape)
    u = roundoff(accumulation_dtype(x.dtype))
    u_s = roundoff(stat_dtype) if stat_dtype.is_floating_point else 0.0
    dims = reduce_dims(x64.dim())
    big = x64.abs().amax(dim=dims) if x64.numel() else torch.zeros_like(batch_mean)
    e_mean = n * u * big
    if roundoff(x.dtype) > u:
        # 16-bit inputs: the batch mean may be rounded to the input dtype before the variance
        # pass (PyTorch's CPU kernel does); its error then enters the variance squared.
        e_mean = e_mean + roundoff(x.dtype) * batch_mean.abs()
    e_var = n * u * (batch_var + big * torch.sqrt(batch_var)) + e_mean.square()
    why = (f"batch statistics over n={n} values in "
           f"{str(accumulation_dtype(x.dtype)).removeprefix('torch.')}, blended with weight "
           f"{weight:.3g} and stored in {str(stat_dtype).removeprefix('torch.')}, x{SAFETY:g}")
    mean_atol = SAFETY * (weight * e_mean + u_s * (old_mean.abs() + weight * batch_mean.abs()))
    var_atol = SAFETY * (weight * correction * e_var
                         + u_s * (old_var.abs() + weight * correction * batch_var))
    rtol = 2 * u_s + SAFETY * u
    # Values below the smallest normal number of the statistics' dtype are not representable.
    floor = 2 * torch.finfo(stat_dtype).tiny if stat_dtype.is_floating_point else 0.0
    mean_atol, var_atol = mean_atol + floor, var_atol + floor
    return (Tolerance(rtol, mean_atol, "running mean: " + why),
            Tolerance(rtol, var_atol, "running variance: " + why))


def gradient_tolerances(x: Tensor, mean: Tensor, var: Tensor, *, eps: float, grad: Tensor,
                        weight: Tensor | None, training: bool,
                        dtype: torch.dtype) -> tuple[Tolerance, Tolerance,
                                                     Tolerance]:
    """Tolerances of the input, weight and bias gradients for upstream gradient ``grad``.

    ``dx = weight / s * (g - mean(g) - xhat * mean(g * xhat))`` in training (``weight / s * g``
    in eval), ``dweight = sum(g * xhat)``, ``dbias = sum(g)``: sums of ``n`` terms each.
    """
    x64 = x.detach().to(torch.float64)
    n = count_per_channel(x64.shape)
    u = roundoff(accumulation_dtype(dtype))
    dxhat, dev = _xhat_error(x64, mean, var, eps, n if training else 1, u)
    dims = reduce_dims(x64.dim())
    gmax = grad.detach().to(torch.float64).abs().amax(dim=dims)
    gw = weight.abs() if weight is not None else torch.ones_like(mean)
    s = torch.sqrt(var + eps)
    floor = 2 * torch.finfo(dtype).tiny  # gradients below the smallest normal number
    dx = SAFETY * gw / s * gmax * (n * u * (1 + dev.square()) + dxhat * (1 + 2 * dev)) + floor
    dw = SAFETY * n * gmax * (dxhat + u * dev) + floor
    db = SAFETY * n * u * gmax + floor
    why = f"gradient sums over n={n} values in {str(dtype).removeprefix('torch.')}, x{SAFETY:g}"
    return (Tolerance(SAFETY * u, channel_view(dx, x64.dim()), "input grad: " + why),
            Tolerance(SAFETY * u, dw, "weight grad: " + why),
            Tolerance(SAFETY * u, db, "bias grad: " + why))


def std_tolerance(var_tol: Tolerance, expected_var: Tensor) -> Tolerance:
    """The tolerance of a stored standard deviation from its variance's: ``d(sqrt v) = dv /
    (2 sqrt v)`` to first order, with ``sqrt(atol)`` where the variance is near zero."""
    atol = torch.as_tensor(var_tol.atol, dtype=torch.float64)
    s = expected_var.clamp_min(0).sqrt()
    std_atol = torch.minimum(atol / (2 * s).clamp_min(1e-300), atol.sqrt())
    return Tolerance(var_tol.rtol, std_atol, var_tol.reason + "; as a standard deviation")
