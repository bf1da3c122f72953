"""Fuzz the functional reference, bncheck.batch_norm, against the float64 oracle.

Arbitrary ranks (1 to 6), shapes (0 to 5 per dim), dtypes (the four floating ones, and int64,
bool and complex64 that must be refused), values (ordinary, any float32 bit pattern incl. NaN,
inf and subnormals, constant channels, huge and tiny scales), layouts (contiguous, channels
last, transposed, strided slices, a stride-0 expanded batch), training or eval, missing,
mis-sized or negative running statistics, weight and bias, and any momentum and eps.

A crash is: an exception other than bncheck's documented ``BNCheckError``; an output of another
shape or dtype; a non-finite output for finite arguments where the oracle is finite and within
the dtype's range; or an output outside the catalogue's own forward tolerance of the oracle
(:func:`bncheck.engine.properties._tolerance.forward_tolerance`). The domain: arguments whose
intermediates fit the compute dtype (float32 for 16-bit inputs): squared deviations from the
mean, and the folded ``scale = weight / sqrt(var + eps)`` times ``max|x|`` and ``|mean|``. The
reference computes ``x * scale + shift`` as torch's kernels do (it is a drop-in for them), so
where those overflow (weights near the dtype's maximum, a constant channel times an infinite
scale) it gives NaN exactly where torch does: a documented limit, not a crash.

    python fuzz/fuzz_reference.py --seconds 300
"""

from __future__ import annotations

import math
import sys

import atheris

with atheris.instrument_imports(include=["bncheck"]):
    import torch

    import bncheck
    import bncheck.reference
    import bncheck.reference._kernels  # noqa: F401 - instrumented for coverage
    from bncheck.engine import oracle
    from bncheck.engine.compare import compare
    from bncheck.engine.properties._tolerance import forward_tolerance
    from bncheck.errors import BNCheckError
    from bncheck.reference import compute_dtype

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool,
          torch.complex64]
MOMENTA = [0.1, 0.0, 1.0, 0.5, None, -0.1, 2.0, math.nan]
EPSILONS = [1e-5, 0.0, 1e-3, 0.5, -1.0, math.nan, math.inf, 1e-30]


def _values(fdp: atheris.FuzzedDataProvider, n: int) -> list[float]:
    kind = fdp.ConsumeIntInRange(0, 4)
    if kind == 0:
        return [fdp.ConsumeFloatInRange(-1e3, 1e3) for _ in range(n)]
    if kind == 1:
        return [fdp.ConsumeFloat() for _ in range(n)]
    if kind == 2:
        return [fdp.ConsumeFloatInRange(-10, 10)] * n
    scale = 10.0 ** fdp.ConsumeIntInRange(-40, 40)
    return [fdp.ConsumeFloatInRange(-1, 1) * scale for _ in range(n)]


def _layout(fdp: atheris.FuzzedDataProvider, x: torch.Tensor) -> torch.Tensor:
    kind = fdp.ConsumeIntInRange(0, 4)
    if kind == 1 and x.dim() in (4, 5):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return x.contiguous(memory_format=fmt)
    if kind == 2 and x.dim() >= 3:
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    if kind == 3 and x.dim() >= 1:
        return torch.cat([x, x], dim=-1)[..., ::2]
    if kind == 4 and x.dim() >= 1 and x.shape[0] > 0:
        return x[:1].expand(x.shape)
    return x


def _channel(fdp: atheris.FuzzedDataProvider, c: int, dtype: torch.dtype) -> torch.Tensor | None:
    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 0:
        return None
    size = c + (1 if kind == 3 else 0)
    return torch.tensor(_values(fdp, size), dtype=torch.float64).to(dtype)


def _finite(*ts: torch.Tensor | None) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in ts)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    ndim = fdp.ConsumeIntInRange(1, 6)
    shape = [fdp.ConsumeIntInRange(0, 5) for _ in range(ndim)]
    dtype = DTYPES[fdp.ConsumeIntInRange(0, len(DTYPES) - 1)]
    n = math.prod(shape)
    x = _layout(fdp, torch.tensor(_values(fdp, n), dtype=torch.float64).reshape(shape).to(dtype))
    channels = shape[1] if ndim > 1 else 1
    stat_dtype = [torch.float32, dtype][fdp.ConsumeIntInRange(0, 1)]
    rm, rv = _channel(fdp, channels, stat_dtype), _channel(fdp, channels, stat_dtype)
    w, b = _channel(fdp, channels, dtype), _channel(fdp, channels, dtype)
    training = fdp.ConsumeBool()
    momentum = MOMENTA[fdp.ConsumeIntInRange(0, len(MOMENTA) - 1)]
    eps = EPSILONS[fdp.ConsumeIntInRange(0, len(EPSILONS) - 1)]
    before = None if rm is None or rv is None else (rm.clone(), rv.clone())
    try:
        y = bncheck.batch_norm(x, rm, rv, w, b, training, momentum, eps)  # type: ignore[arg-type]
    except BNCheckError:
        return
    assert isinstance(y, torch.Tensor), type(y)
    assert y.shape == x.shape and y.dtype == x.dtype, (y.shape, y.dtype, x.shape, x.dtype)
    if x.numel() == 0 or not _finite(x, w, b) or not isinstance(eps, float):
        return
    if training:
        mean, var = oracle.batch_stats(x)
    else:
        assert before is not None  # eval without running statistics raises
        mean, var = before[0].to(torch.float64), before[1].to(torch.float64)
        if not _finite(mean, var) or bool((var < 0).any()):
            return  # a negative running variance is not a variance: only no crash is asked
    ref = oracle.normalize(x, mean, var, eps=eps, weight=w, bias=b)
    big = torch.finfo(compute_dtype(x.dtype)).max
    x64 = x.to(torch.float64)
    dev = (x64 - oracle.channel_view(mean, x.dim())).abs()
    # The reference folds weight / sqrt(var + eps) into one scale and applies x * scale + shift
    # with shift = bias - mean * scale, as torch's kernels do: each must fit the compute dtype.
    scale = (1.0 if w is None else w.to(torch.float64).abs()) / torch.sqrt(var + eps)
    reach = torch.maximum(x64.abs().amax(dim=oracle.reduce_dims(x.dim())), mean.abs())
    if not _finite(ref) or bool((ref.abs() > torch.finfo(x.dtype).max).any()) \
            or bool((dev.square() >= big).any()) or bool((scale * reach >= big).any()) \
            or bool((scale >= big).any()):
        return  # outside the domain: the oracle or an intermediate does not fit the dtype
    assert bool(torch.isfinite(y).all()), (
        f"non-finite output for finite input: {x.dtype} {tuple(x.shape)} training={training} "
        f"eps={eps} x={x.flatten()[:8].tolist()} y={y.flatten()[:8].tolist()}")
    n_red = oracle.count_per_channel(x.shape) if training else 1
    tol = forward_tolerance(x, mean, var, eps=eps, n=n_red,
                            weight=None if w is None else w.to(torch.float64),
                            bias=None if b is None else b.to(torch.float64))
    problem = compare(y, ref, tolerance=tol, name="output", check_dtype=False)
    assert problem is None, f"{x.dtype} {tuple(x.shape)} training={training}: {problem}"


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from _runner import main

    main("reference", test_one_input, timeout=30)
