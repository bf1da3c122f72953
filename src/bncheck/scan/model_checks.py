"""Model-level checks: what no single layer's verification can see.

>>> import torch
>>> from torch import nn
>>> from bncheck.scan.model_checks import eval_per_sample
>>> model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).eval()
>>> eval_per_sample(model, (torch.rand(4, 4),)).status
'passed'

Each check takes the model (eval mode, running statistics in place) and deterministic inputs,
works on a deep copy, and returns a :class:`Check` whose ``paths`` name the layers it blames.
The user's code runs inside :func:`bncheck.engine.target.user_code` (time limited in a watched
worker): an exception in the model fails the check that ran it, with its file and line.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bncheck.errors import TargetError
from bncheck.scan.inventory import NormLayer, own_statistics

__all__ = ["Check", "outputs_of", "eval_reaches_norm_layers", "eval_per_sample",
           "eval_grad_mode_independence", "frozen_layers", "fusion_matches_eval",
           "FLOAT32_RTOL", "FLOAT64_RTOL"]

#: Relative to the output's largest magnitude. float32: the same model on a batch and on one
#: sample, or under another grad mode, may take other kernels (oneDNN blocks by batch), whose
#: rounding differs by ~1e-6 relative per layer; a layer that normalizes with batch statistics
#: changes the output by O(1) of its scale. 1e-3 sits between with room both ways (ResNet-18's
#: batch-vs-sample difference is ~1e-6 here).
FLOAT32_RTOL = 1e-3
#: float64 (fusion, gradients): rounding is ~1e-16 per operation, ~1e-13 through a deep net;
#: a folding defect as small as a dropped eps=1e-5 on unit variance changes outputs by 5e-6.
FLOAT64_RTOL = 1e-8


@dataclass
class Check:
    """One model-level check's outcome: ``passed``, ``failed``, ``skipped`` or ``note`` (a
    finding that is not a failure unless asked, such as a frozen layer)."""

    name: str
    status: str
    message: str = ""
    paths: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message,
                "paths": self.paths}


def outputs_of(out: Any) -> list[Tensor]:
    """Every tensor in a model's output, in order (tensor, tuple, list, dict)."""
    if isinstance(out, Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, list | tuple) \
        else ()
    return [t for item in items for t in outputs_of(item)]


def _run(model: nn.Module, inputs: Sequence[Tensor], what: str) -> list[Tensor]:
    from bncheck.engine.target import user_code

    with user_code(what):
        return [t.detach() for t in outputs_of(model(*inputs))]


def _differs(a: Sequence[Tensor], b: Sequence[Tensor], rtol: float) -> str | None:
    """Where ``a`` and ``b`` differ beyond ``rtol`` of their scale (``None``: they agree)."""
    if len(a) != len(b):
        return f"{len(a)} output tensors vs {len(b)}"
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.shape != y.shape:
            return f"output {i}: shape {tuple(x.shape)} vs {tuple(y.shape)}"
        if not (x.is_floating_point() and y.is_floating_point()):
            if not torch.equal(x, y):
                return f"output {i}: values differ"
            continue
        x64, y64 = x.double(), y.double()
        if not (torch.isfinite(x64).all() and torch.isfinite(y64).all()):
            if torch.equal(x64.nan_to_num(), y64.nan_to_num()):
                continue
            return f"output {i}: non-finite values differ"
        scale = max(float(x64.abs().max()) if x64.numel() else 0.0, 1e-12)
        diff = (x64 - y64).abs()
        worst = float(diff.max()) if diff.numel() else 0.0
        if worst > rtol * scale:
            return (f"output {i}: greatest absolute difference {worst:.3g} (up to "
                    f"{rtol * scale:.3g} allowed: {rtol:g} x the output's scale {scale:.3g})")
    return None


def _norm_modules(model: nn.Module, layers: Sequence[NormLayer]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    return {layer.path: modules[layer.path] for layer in layers}


def _stats(module: nn.Module) -> list[Tensor]:
    from bncheck.engine.adapter import attribute

    pair = own_statistics(module)
    return [] if pair is None else [attribute(module, n).detach().clone() for n in pair]


def _train_owner(model: nn.Module, path: str) -> str:
    """The nearest module at or above ``path`` whose class overrides ``train()``, described."""
    parts = path.split(".") if path else []
    modules = dict(model.named_modules())
    for i in range(len(parts), -1, -1):
        at = ".".join(parts[:i])
        cls = type(modules[at])
        if cls.train is not nn.Module.train and not issubclass(
                cls, nn.modules.batchnorm._NormBase):
            return f"{cls.__qualname__}.train() of {at or 'the model'}"
    return ""


def eval_reaches_norm_layers(model: nn.Module, inputs: Sequence[Tensor],
                             layers: Sequence[NormLayer]) -> Check:
    """After ``model.eval()`` every normalization layer is in eval mode, and an eval forward
    (with and without grad) leaves every layer's running statistics alone."""
    name = "eval_reaches_norm_layers"
    m = copy.deepcopy(model).eval()
    norms = _norm_modules(m, layers)
    still = [p for p, mod in norms.items() if mod.training]
    if still:
        blocks = sorted({owner for p in still if (owner := _train_owner(m, p))})
        return Check(name, "failed",
                     f"after model.eval(), {len(still)} layer(s) still in training mode: "
                     f"{', '.join(p or '(model)' for p in still)}"
                     + (f"; kept there by {'; '.join(blocks)}" if blocks else ""), still)
    before = {p: _stats(mod) for p, mod in norms.items()}
    moved: dict[str, str] = {}
    for grad, ctx in ((False, torch.no_grad), (True, torch.enable_grad)):
        with ctx():
            _run(m, inputs, f"an eval forward ({'grad enabled' if grad else 'no grad'})")
        for p, mod in norms.items():
            if p not in moved and any(not torch.equal(a, b) for a, b in
                                      zip(before[p], _stats(mod), strict=True)):
                moved[p] = "grad enabled" if grad else "no grad"
    if moved:
        return Check(name, "failed",
                     "running statistics changed during an eval-mode forward: "
                     + ", ".join(f"{p or '(model)'} ({how})" for p, how in moved.items()),
                     list(moved))
    return Check(name, "passed", f"{len(norms)} layer(s) in eval mode; statistics unchanged")


def eval_per_sample(model: nn.Module, inputs: Sequence[Tensor]) -> Check:
    """In eval mode each sample's output is what it gets alone (with and without grad)."""
    name = "eval_per_sample"
    m = copy.deepcopy(model).eval()
    batch = inputs[0].shape[0]
    for grad, ctx in ((False, torch.no_grad), (True, torch.enable_grad)):
        mode = "grad enabled" if grad else "no grad"
        with ctx():
            whole = _run(m, inputs, f"an eval forward ({mode})")
            for i in range(batch):
                alone = _run(m, [x[i:i + 1] for x in inputs], f"an eval forward of one sample "
                             f"({mode})")
                rows = [t[i:i + 1] if t.dim() and t.shape[0] == batch else t for t in whole]
                where = _differs(alone, rows, FLOAT32_RTOL)
                if where:
                    return Check(name, "failed",
                                 f"sample {i}'s eval output ({mode}) depends on the rest of "
                                 f"the batch of {batch}: {where}")
    return Check(name, "passed", f"{batch} samples, each alone and in the batch, with and "
                                 f"without grad")


def eval_grad_mode_independence(model: nn.Module, inputs: Sequence[Tensor]) -> Check:
    """Eval output is the same with grad enabled, under ``no_grad`` and ``inference_mode``; and
    autograd's gradient is the derivative of the function seen under ``no_grad`` (float64: a
    vector-Jacobian product against a central difference)."""
    name = "eval_grad_mode_independence"
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref = _run(m, inputs, "an eval forward (no grad)")
    for label, ctx in (("grad enabled", torch.enable_grad), ("inference_mode",
                                                             torch.inference_mode)):
        with ctx():
            got = _run(m, inputs, f"an eval forward ({label})")
        where = _differs(got, ref, FLOAT32_RTOL)
        if where:
            return Check(name, "failed", f"eval output with {label} differs from no_grad: "
                                         f"{where}")
    return _gradients_match(m, inputs, name)


def _gradients_match(model: nn.Module, inputs: Sequence[Tensor], name: str) -> Check:
    from bncheck.engine.target import user_code

    try:
        with user_code("an eval forward in float64"):
            m64 = copy.deepcopy(model).double().eval()
            xs = [x.double() for x in inputs]
            with torch.no_grad():
                outputs_of(m64(*xs))
    except TargetError as e:
        return Check(name, "passed", f"outputs agree across grad modes; gradients not "
                                     f"compared (the model does not run in float64: {e})")
    gen = torch.Generator().manual_seed(0)
    floats = [i for i, x in enumerate(xs) if x.is_floating_point()]
    dirs = [torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in xs]
    xs_req = [x.clone().requires_grad_(i in floats) for i, x in enumerate(xs)]
    with torch.enable_grad(), user_code("an eval forward and backward in float64"):
        outs = [t for t in outputs_of(m64(*xs_req)) if t.is_floating_point()]
        cot = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in outs]
        total = sum(((t * c).sum() for t, c in zip(outs, cot, strict=True)),
                    torch.zeros((), dtype=torch.float64))
        if not total.requires_grad:
            return Check(name, "passed", "outputs agree across grad modes; no output depends "
                                         "on the inputs through autograd")
        grads = torch.autograd.grad(total, [xs_req[i] for i in floats], allow_unused=True)
    analytic = sum(float((g * dirs[i]).sum()) for g, i in zip(grads, floats, strict=True)
                   if g is not None)

    magnitude = [0.0]

    def f(step: float) -> float:
        shifted = [x + step * d if i in floats else x for i, (x, d) in
                   enumerate(zip(xs, dirs, strict=True))]
        with torch.no_grad():
            got = [t for t in outputs_of(m64(*shifted)) if t.is_floating_point()]
        magnitude[0] = float(sum((t * c).abs().sum() for t, c in zip(got, cot, strict=True)))
        return float(sum((t * c).sum() for t, c in zip(got, cot, strict=True)))

    # Central differences in float64 at two step sizes: truncation ~h^2 and rounding
    # ~1e-16 / h stay far below 1e-4 relative; a ReLU or max-pool kink crossed within +-h
    # (likely somewhere among a big net's millions of units at h=1e-6) spoils one step size,
    # rarely both. A gradient of another function (a layer that normalizes with batch
    # statistics, or detaches, under grad) disagrees at every h.
    tries = []
    for h in (1e-8, 1e-9):
        with user_code("eval forwards in float64 (central difference)"):
            numeric = (f(h) - f(-h)) / (2 * h)
        scale = max(abs(analytic), abs(numeric))
        # Rounding: f sums terms of total size `magnitude`, each forward rounds them by a few
        # hundred ulps at most (float64 eps 2.2e-16), and the difference divides by 2h.
        noise = 1e3 * 2.2e-16 * magnitude[0] / h
        if abs(analytic - numeric) <= 1e-4 * scale + noise:
            return Check(name, "passed", "outputs agree under no_grad, grad enabled and "
                                         "inference_mode; autograd's gradient matches the "
                                         "no-grad function (float64)")
        tries.append(f"{numeric:.6g} (h={h:g})")
    return Check(name, "failed",
                 f"eval gradients (autograd, grad enabled) are not the derivative of the eval "
                 f"output under no_grad: directional derivative {analytic:.6g} vs "
                 f"{' and '.join(tries)} by central differences in float64 (up to 1e-4 "
                 f"relative, plus the differences' rounding, allowed)")


def frozen_layers(model: nn.Module, inputs: Sequence[Tensor], layers: Sequence[NormLayer],
                  *, frozen_classes: Sequence[str] = (), strict: bool = False) -> Check:
    """Layers set up frozen: kept in eval by ``model.train()``, statistics that never update
    in training, parameters with ``requires_grad=False`` while the layer trains, a frozen class.
    A ``note`` (deliberate in fine-tuning), ``failed`` with ``strict``."""
    name = "frozen_layers"
    m = copy.deepcopy(model).train()
    norms = _norm_modules(m, layers)
    found: dict[str, str] = {p: "a frozen class (same output in training and eval)"
                             for p in frozen_classes}
    before = {p: _stats(mod) for p, mod in norms.items()}
    with torch.enable_grad():
        try:
            _run(m, inputs, "a training-mode forward")
            ran = True
        except TargetError:
            ran = False
    for p, mod in norms.items():
        if p in found:
            continue
        params = list(mod.parameters(recurse=False))
        no_grad = bool(params) and not any(q.requires_grad for q in params)
        if not mod.training:
            owner = _train_owner(m, p)
            found[p] = ("kept in eval mode by " + (owner or "model.train()")
                        + ("; parameters requires_grad=False" if no_grad else ""))
        elif ran and before[p] and all(torch.equal(a, b) for a, b in
                                       zip(before[p], _stats(mod), strict=True)):
            found[p] = "in training mode, but its running statistics did not change"
        elif no_grad:
            found[p] = ("parameters requires_grad=False while in training mode (its "
                        "statistics still update)")
    if not found:
        return Check(name, "passed", "no layer is set up frozen")
    status = "failed" if strict else "note"
    return Check(name, status, "; ".join(f"{p or '(model)'}: {why}" for p, why in found.items())
                 + ("" if strict else " (reported, not a failure; --strict-frozen fails it)"),
                 list(found))


#: Methods by which a model fuses its own Conv+BN (YOLO-style ``fuse``, torchvision's
#: quantizable ``fuse_model``).
FUSE_METHODS = ("fuse", "fuse_model")


def fusion_methods(model: nn.Module) -> list[tuple[str, str]]:
    """``(module path, method)`` of every fuse method the model's own classes define."""
    out = []
    for path, module in model.named_modules():
        for method in FUSE_METHODS:
            if callable(getattr(type(module), method, None)) and not hasattr(nn.Module, method):
                out.append((path, method))
    return out


def fusion_matches_eval(model: nn.Module, inputs: Sequence[Tensor]) -> Check:
    """The model's own Conv+BN fusion equals the unfused eval model, in float32 and float64
    (each fuse method, on a copy, at each dtype; fused after the cast, so float64 folds in
    float64)."""
    name = "fusion_matches_eval"
    methods = [(p, m) for p, m in fusion_methods(model) if not p or
               all(not p.startswith(f"{q}.") for q, _ in fusion_methods(model) if not q)]
    if not methods:
        return Check(name, "skipped", "the model defines no fuse() or fuse_model() method")
    for dtype, rtol in ((torch.float32, FLOAT32_RTOL), (torch.float64, FLOAT64_RTOL)):
        for path, method in methods:
            label = f"{path + '.' if path else 'model.'}{method}()"
            try:
                base = copy.deepcopy(model).to(dtype).eval()
                xs = [x.to(dtype) if x.is_floating_point() else x for x in inputs]
                with torch.no_grad():
                    ref = _run(base, xs, f"an eval forward in {dtype}")
            except TargetError:
                if dtype is torch.float64:
                    continue  # the model does not run in float64: float32 only
                raise
            fused = copy.deepcopy(base)
            target = dict(fused.named_modules())[path]
            from bncheck.engine.target import user_code

            with user_code(f"calling {label}"):
                returned = getattr(target, method)()
            if not path and isinstance(returned, nn.Module):
                fused = returned
            with torch.no_grad():
                got = _run(fused.eval(), xs, f"an eval forward after {label}")
            where = _differs(got, ref, rtol)
            if where:
                return Check(name, "failed", f"{label} changes the eval output in {dtype}: "
                                             f"{where}", [path] if path else [])
    names = ", ".join(f"{p + '.' if p else 'model.'}{m}()" for p, m in methods)
    return Check(name, "passed", f"{names} equals the unfused eval model in float32 and "
                                 f"float64")

