"""The reference against torch 2.13's own BatchNorm1d/2d/3d module test samples.

``torch.testing._internal.common_modules.module_db`` holds the constructor arguments and inputs
torch tests its BatchNorm modules with (affine or not, momentum None, no running statistics,
``bias=False``, a zero-size batch, 2- to 5-dim inputs), for float32 and float64, in training
and eval mode. Each sample builds torch's module and bncheck's with the same arguments and the same
(randomized) state, and compares two forward steps, the gradients of input, weight and bias, and
the ``state_dict`` after.

Tolerances: float64 to 1e-10 (exact formulas in double; reductions of at most 144 values differ
by ~1e-15), float32 at ``assert_close``'s defaults (rtol 1.3e-6, atol 1e-5: different reduction
orders over at most 144 values), except the weight and bias gradients, which are sums that can
cancel: bounded per channel by :func:`sum_tolerance` from the magnitudes of their terms.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bncheck

common_modules = pytest.importorskip("torch.testing._internal.common_modules")

OURS = {nn.BatchNorm1d: bncheck.BatchNorm1d, nn.BatchNorm2d: bncheck.BatchNorm2d,
        nn.BatchNorm3d: bncheck.BatchNorm3d}


def _samples() -> list[tuple[str, object, object, torch.dtype, bool]]:
    """torch's samples, their random inputs drawn from a fixed seed (not from whatever the global
    generator holds when this module is imported, which depends on the test order)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _draw_samples()


def _draw_samples() -> list[tuple[str, object, object, torch.dtype, bool]]:
    out = []
    for info in common_modules.module_db:
        if info.module_cls not in OURS:
            continue
        for dtype in info.dtypes:
            for training in (True, False):
                samples = info.module_inputs_func(info, device="cpu", dtype=dtype,
                                                  requires_grad=True, training=training)
                for i, sample in enumerate(samples):
                    name = (f"{info.name}-{str(dtype).removeprefix('torch.')}-"
                            f"{'train' if training else 'eval'}-{sample.desc or i}")
                    out.append((name, info.module_cls, sample, dtype, training))
    return out


SAMPLES = _samples()


def tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {}


def _normalized(bn: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """x-hat, in float64, recovered from the output: (y - bias) / weight (weight >= 0.5 here)."""
    shape = (1, -1) + (1,) * (y.dim() - 2)
    xhat = y.detach().double()
    if getattr(bn, "bias", None) is not None:
        xhat = xhat - bn.bias.detach().double().view(shape)
    if getattr(bn, "weight", None) is not None:
        xhat = xhat / bn.weight.detach().double().view(shape)
    return xhat


def sum_tolerance(terms: torch.Tensor) -> torch.Tensor:
    """Per channel (dim 1), how far two float32 sums of ``terms`` may differ: each side's cascade
    summation errs by at most (ceil(log2 n) + 2) * u * sum|terms| (the + 2: each term rounded
    once more before it is added), u = 2**-24, so twice that, plus atol's 1e-5 floor. The weight
    gradient sum(dy * x_hat) cancels: a channel summing to 1.9 from terms whose magnitudes sum to
    610 differed by 1.4e-5 between torch and the reference, over the 1e-5 a fixed atol allows
    (found at 1 in ~1000 runs of these samples, whose inputs come from torch's global RNG)."""
    n = terms.numel() // terms.shape[1]
    dims = [d for d in range(terms.dim()) if d != 1]
    steps = max(1, math.ceil(math.log2(max(n, 2)))) + 2
    return 2 * steps * 2.0**-24 * terms.abs().sum(dims) + 1e-5


def test_the_samples_are_torchs_own() -> None:
    # 3 classes x 2 dtypes x train/eval; torch 2.13.0 has 7-8 samples per class and mode.
    assert len(SAMPLES) == 88
    descs = {s[2].desc for s in SAMPLES}
    assert {"zero_batch", "affine_not_bias", "not_tracking_stats"} <= descs


@pytest.mark.parametrize("name,cls,sample,dtype,training", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_reference_matches_torch_on_its_own_samples(name, cls, sample, dtype, training):
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    theirs = cls(*args, **kwargs, dtype=dtype)
    ours = OURS[cls](*args, **kwargs, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in theirs.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen, dtype=dtype) + 0.5)
    ours.load_state_dict(theirs.state_dict())  # strict: the same keys (no bias with bias=False)
    theirs.train(training)
    ours.train(training)
    (x,) = sample.forward_input.args
    for _ in range(2):
        x_theirs = x.detach().clone().requires_grad_()
        x_ours = x.detach().clone().requires_grad_()
        y_theirs, y_ours = theirs(x_theirs), ours(x_ours)
        torch.testing.assert_close(y_ours, y_theirs, **tol(dtype))
    grad = torch.randn(y_theirs.shape, generator=gen, dtype=dtype)
    y_theirs.backward(grad)
    y_ours.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **tol(dtype))
    for (key, p_ours), (_, p_theirs) in zip(ours.named_parameters(), theirs.named_parameters(),
                                            strict=True):
        if dtype == torch.float64:
            torch.testing.assert_close(p_ours.grad, p_theirs.grad, **tol(dtype), msg=key)
            continue
        terms = grad.double() * _normalized(ours, y_ours) if key == "weight" else grad.double()
        bound = sum_tolerance(terms)
        diff = (p_ours.grad.double() - p_theirs.grad.double()).abs()
        assert (diff <= bound).all(), (
            f"{key} gradient: ours {p_ours.grad.tolist()}, torch's {p_theirs.grad.tolist()}, "
            f"difference {diff.tolist()} > allowed {bound.tolist()}")
    sd_ours, sd_theirs = ours.state_dict(), theirs.state_dict()
    assert sd_ours.keys() == sd_theirs.keys()
    for key in sd_ours:
        torch.testing.assert_close(sd_ours[key], sd_theirs[key], **tol(dtype), msg=key)
