"""The reference under torch's transforms: torch.func, forward-mode AD, vectorized autograd,
torch.export and torch.compile, each compared with torch's own BatchNorm on the same tensors.

Under a transform the reference computes training mode as the composite formula
(``bncheck.reference._kernels.composite_train``); these tests are what keeps that path equal to
torch.

Tolerances: float64 to 1e-10 (the same formulas in double over at most 40 values per channel);
the compiled float32 model at ``assert_close``'s float32 defaults (rtol 1.3e-6, atol 1e-5:
Inductor's fused reductions round in another order than torch's eager kernels).
torch.compile is slow here (C++ code generation, ~10-30 s per graph on a loaded machine): one
small model, compiled once per fullgraph setting, shared by the training and eval checks.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

import bncheck

TOL = {"rtol": 1e-10, "atol": 1e-10}
IMPLS = {"torch": F.batch_norm, "bncheck": bncheck.batch_norm}
MODULES = {"torch": nn.BatchNorm1d, "bncheck": bncheck.BatchNorm1d}


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)
    w = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(3, generator=gen, dtype=torch.float64)
    return x, w, b


def _train(fn):
    return lambda x, w, b: fn(x, None, None, w, b, training=True)


def _eval(fn):
    rm, rv = torch.linspace(-1, 1, 3, dtype=torch.float64), torch.linspace(0.5, 2, 3,
                                                                            dtype=torch.float64)
    return lambda x, w, b: fn(x, rm, rv, w, b, training=False)


TRANSFORMS = {
    "jacrev": lambda f, x, w, b: torch.func.jacrev(f, argnums=(0, 1, 2))(x, w, b),
    "jacfwd": lambda f, x, w, b: torch.func.jacfwd(f, argnums=(0, 1, 2))(x, w, b),
    "vmap": lambda f, x, w, b: torch.func.vmap(f, in_dims=(0, None, None))(
        torch.stack([x, 2 * x + 1]), w, b),
    "jvp": lambda f, x, w, b: torch.func.jvp(f, (x, w, b), (x.cos(), w.sin(), b.exp())),
    "jvp (parameters)": lambda f, x, w, b: torch.func.jvp(  # as an nn.Module's would be
        f, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_()),
        (x.cos(), w.sin(), b.exp())),
    "vjp": lambda f, x, w, b: torch.func.vjp(f, x, w, b)[1](x.sin()),
    "hessian": lambda f, x, w, b: torch.func.hessian(lambda x: f(x, w, b).sin().sum())(x[:2]),
    "vectorized jacobian": lambda f, x, w, b: torch.autograd.functional.jacobian(
        f, (x, w, b), vectorize=True),
    "batched grads": lambda f, x, w, b: torch.autograd.grad(
        f(*(t.requires_grad_() for t in (x, w, b))), (x, w, b),
        torch.stack([x.sin(), x.cos()]), is_grads_batched=True),
}


def _dual(f, x, w, b):
    """Forward-mode AD with dual tensors (``torch.autograd.forward_ad``), the primal tensors
    also recording for reverse mode (as a model's are)."""
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    with fwAD.dual_level():
        y = f(fwAD.make_dual(x, x.cos()), fwAD.make_dual(w, w.sin()), b)
        return fwAD.unpack_dual(y).tangent


TRANSFORMS["forward AD"] = _dual


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_transforms_match_torch(transform: str, mode: str) -> None:
    x, w, b = _data()
    wrap = _train if mode == "train" else _eval
    results = {name: TRANSFORMS[transform](wrap(fn), x.clone(), w.clone(), b.clone())
               for name, fn in IMPLS.items()}
    torch.testing.assert_close(results["bncheck"], results["torch"], **TOL)


def test_vmap_over_running_statistics_refused_as_torch_refuses() -> None:
    x = torch.randn(2, 5, 3)
    for fn in IMPLS.values():
        with pytest.raises(RuntimeError):
            torch.func.vmap(lambda x, fn=fn: fn(x, torch.zeros(3), torch.ones(3),
                                                training=True))(x)


@pytest.mark.parametrize("training", [True, False])
def test_functional_call_matches_torch(training: bool) -> None:
    x = _data()[0]
    out = {}
    for name, cls in MODULES.items():
        m = cls(3, dtype=torch.float64).train(training)
        state = {k: v.clone() for k, v in {**dict(m.named_parameters()),
                                            **dict(m.named_buffers())}.items()}
        state["weight"] = state["weight"] + 0.5
        y = torch.func.functional_call(m, state, (x,))
        out[name] = (y, state["running_mean"], state["running_var"],
                     state["num_batches_tracked"], m.running_mean)
    torch.testing.assert_close(out["bncheck"], out["torch"], **TOL)


def test_grad_of_a_module_through_functional_call_matches_torch() -> None:
    x = _data()[0]
    grads = {}
    for name, cls in MODULES.items():  # torch.func.grad refuses a buffer updated in place
        m = cls(3, dtype=torch.float64, track_running_stats=False)
        params = {k: v.detach() + 0.25 for k, v in m.named_parameters()}
        def loss(p: dict, m: nn.Module = m) -> torch.Tensor:
            return torch.func.functional_call(m, p, (x,)).square().mean()

        grads[name] = torch.func.grad(loss)(params)
    torch.testing.assert_close(grads["bncheck"], grads["torch"], **TOL)


@pytest.mark.parametrize("training", [True, False])
def test_export_matches_torch(training: bool) -> None:
    x = _data()[0].float()
    out = {}
    for name, cls in MODULES.items():
        m = cls(3).train(training)
        exported = torch.export.export(m, (x,)).module()
        y = exported(x)
        out[name] = (y, exported.running_mean, exported.running_var)
    torch.testing.assert_close(out["bncheck"], out["torch"])
    assert not training or not torch.equal(out["bncheck"][1], torch.zeros(3))  # updated


def _model(bn: type[nn.Module]) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), bn(4), nn.ReLU())


def _step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One forward (and backward in training) of ``model`` (compiled or not): the output, the
    gradients and the BatchNorm's statistics after."""
    model.zero_grad()
    y = model(x)
    y.square().mean().backward() if model.training else None
    seq = getattr(model, "_orig_mod", model)
    conv, bn = seq[0], seq[1]
    grads = (conv.weight.grad, bn.weight.grad, bn.bias.grad) if model.training else ()
    return (y.detach(), *grads, bn.running_mean.clone(), bn.running_var.clone(),
            bn.num_batches_tracked.clone())


@pytest.mark.parametrize("fullgraph", [False, True], ids=["default", "fullgraph"])
def test_compiled_model_matches_torch_in_training_and_eval(fullgraph: bool) -> None:
    torch._dynamo.reset()
    x = torch.randn(6, 3, 7, 7, generator=torch.Generator().manual_seed(1))
    eager, ours = _model(nn.BatchNorm2d), _model(bncheck.BatchNorm2d)
    compiled = torch.compile(copy.deepcopy(ours), fullgraph=fullgraph)
    for training in (True, True, False):  # two steps: the statistics move twice
        eager.train(training)
        compiled.train(training)
        torch.testing.assert_close(_step(compiled, x), _step(eager, x))
