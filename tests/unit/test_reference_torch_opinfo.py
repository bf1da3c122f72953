"""The reference against torch 2.13's own OpInfo samples of ``nn.functional.batch_norm``.

``torch.testing._internal.common_methods_invocations.op_db`` holds the inputs torch tests its
functional BatchNorm with (two variants, ``batch_norm`` and ``without_cudnn``, 12 samples each):
1- to 4-dim inputs, an empty 1-dim input, one channel, momentum 0 and negative, eps 0.6, no
running statistics. Each sample runs torch's op and ``bncheck.batch_norm`` on the same tensors
(running statistics cloned), and compares the output, the running statistics after, and the
gradients of input, weight and bias for one random output gradient.

Tolerances: float64 to 1e-10 (the same formulas in double; reductions of at most 125 values differ
by ~1e-15); float32 at ``assert_close``'s defaults (rtol 1.3e-6, atol 1e-5: different reduction
orders over at most 125 values). float16/bfloat16 are held to "no worse than torch": both are
compared with the float64 result of torch's op on the same (rounded) inputs, and bncheck's
greatest error may exceed torch's by at most one unit in the last place of the output's
magnitude (the two round the final float32 result to the low precision independently).
"""

from __future__ import annotations

import pytest
import torch

import bncheck

cmi = pytest.importorskip("torch.testing._internal.common_methods_invocations")

OPS = [op for op in cmi.op_db if op.name == "nn.functional.batch_norm"]
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _samples() -> list[tuple[str, object, torch.dtype, object]]:
    """torch's samples, drawn from a fixed seed (not from whatever the global generator holds
    when this module is imported, which depends on the test order)."""
    out = []
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for op in OPS:
            for dtype in DTYPES:
                for i, sample in enumerate(op.sample_inputs("cpu", dtype, requires_grad=True)):
                    name = f"{op.variant_test_name or 'batch_norm'}-{str(dtype)[6:]}-{i}"
                    out.append((name, op, dtype, sample))
    return out


SAMPLES = _samples()


def _run(fn, sample, dtype: torch.dtype | None = None, grad_seed: int = 0):
    """``fn(input, *args, **kwargs)`` on fresh copies of the sample's tensors (in ``dtype`` if
    given): the output, the running statistics after, and the gradients of input, weight, bias
    (zeros where a tensor gets no gradient)."""
    def fresh(t):
        if t is None:
            return None
        t = t.detach().to(dtype or t.dtype).clone()
        return t
    x = fresh(sample.input).requires_grad_()
    running_mean, running_var, weight, bias = (fresh(a) for a in sample.args)
    leaves = [x] + [t.requires_grad_() for t in (weight, bias) if t is not None]
    y = fn(x, running_mean, running_var, weight, bias, **sample.kwargs)
    gen = torch.Generator().manual_seed(grad_seed)
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)
    grads = torch.autograd.grad(y, leaves, dy, allow_unused=True) if y.requires_grad else \
        [None] * len(leaves)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True)]
    return y.detach(), [t for t in (running_mean, running_var) if t is not None], grads


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {}


def test_the_samples_are_torchs_own() -> None:
    # 2 variants x 4 dtypes x 12 samples in torch 2.13.0: the "24 samples" per dtype.
    assert len(OPS) == 2
    assert sum(1 for s in SAMPLES if s[2] == torch.float32) == 24
    assert len(SAMPLES) == 96


FULL = [s for s in SAMPLES if s[2] in (torch.float32, torch.float64)]
REDUCED = [s for s in SAMPLES if s[2] in (torch.float16, torch.bfloat16)]


@pytest.mark.parametrize("name,op,dtype,sample", FULL, ids=[s[0] for s in FULL])
def test_reference_matches_torch_on_its_opinfo_samples(name, op, dtype, sample) -> None:
    y_t, stats_t, grads_t = _run(op.op, sample)
    y_o, stats_o, grads_o = _run(bncheck.batch_norm, sample)
    torch.testing.assert_close(y_o, y_t, **_tol(dtype), msg=lambda m: f"output: {m}")
    assert len(stats_o) == len(stats_t)
    for what, ours, theirs in zip(("running_mean", "running_var"), stats_o, stats_t,
                                  strict=False):
        torch.testing.assert_close(ours, theirs, **_tol(dtype), msg=lambda m, w=what: f"{w}: {m}")
    for what, ours, theirs in zip(("input", "weight", "bias"), grads_o, grads_t, strict=False):
        torch.testing.assert_close(ours, theirs, **_tol(dtype),
                                   msg=lambda m, w=what: f"gradient of {w}: {m}")


def _error(result, exact) -> list[float]:
    y, stats, grads = result
    ye, stats_e, grads_e = exact
    pairs = [(y, ye), *zip(stats, stats_e, strict=True), *zip(grads, grads_e, strict=True)]
    return [float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
            for a, b in pairs]


@pytest.mark.parametrize("name,op,dtype,sample", REDUCED, ids=[s[0] for s in REDUCED])
def test_reference_is_no_worse_than_torch_in_low_precision(name, op, dtype, sample) -> None:
    exact = _run(op.op, sample, torch.float64)
    theirs = _error(_run(op.op, sample), exact)
    ours = _error(_run(bncheck.batch_norm, sample), exact)
    eps = torch.finfo(dtype).eps
    for i, (e_o, e_t, (ref)) in enumerate(zip(ours, theirs, _flat(exact), strict=True)):
        ulp = eps * max(1.0, float(ref.abs().max()) if ref.numel() else 0.0)
        assert e_o <= e_t + ulp, (f"{name}: item {i} (output, statistics, gradients) is off "
                                  f"by {e_o:.3g} from float64, torch by {e_t:.3g} (+{ulp:.3g})")


def _flat(result) -> list[torch.Tensor]:
    y, stats, grads = result
    return [y, *stats, *grads]
