"""Scratch = torch, step by step: two LeNet-BN variants trained in lockstep on the same batches.

>>> from bncheck.training.data import synthetic_dataset
>>> from bncheck.training import compare_variants
>>> report = compare_variants(synthetic_dataset(64), steps=4, batch_size=16)
>>> report.passed, report.steps
(True, 4)

Both variants start every step from bitwise-identical weights and buffers (the second is loaded
from the first before each step), take one SGD step on the same batch, and are compared after
it: the loss, every BatchNorm layer's output, ``running_mean``, ``running_var`` and
``num_batches_tracked``. The only differences left are the float32 rounding of the two BatchNorm
implementations, so each comparison has a bound derived from that rounding (re-synchronizing
keeps the bound from growing: run freely, lr=1.0 amplifies rounding step after step, 1e-6
relative in the loss after 10 steps here, so no fixed tolerance would stay both safe and tight).

The bound, per BatchNorm layer, on its real inputs ``x`` (``n`` values per channel):

* its own rounding, for each variant:
  :func:`~bncheck.engine.properties._tolerance.forward_tolerance`
  and :func:`~bncheck.engine.properties._tolerance.stats_tolerance` (the rules ``bncheck verify``
  uses: a naive ``n * u`` summation bound with u = 2**-24 for float32, x8 margin), summed for
  the two variants;
* plus how far the layer's inputs already differ (``d`` = max per channel of ``|x_a - x_b|``,
  from earlier layers' rounding): exactly, the batch mean moves by at most ``d``, the batch
  variance by at most ``4 d (std + d)``, the output by at most
  ``|gamma| (2 d / s) (1 + max|xhat| (1 + d / s))``; the running statistics by the momentum times
  that. The first layer's inputs are identical (same weights, same images), so ``d = 0`` there.

The loss: the last BatchNorm's output bound carried through the head (sigmoid: slope <= 1/4;
linear: ``|W|`` times the bound, plus both variants' dot-product rounding ``2 k u |W| |h|`` for
fan-in ``k``) gives a bound ``e`` on every logit; cross-entropy moves by at most ``2 e``
(its gradient in the logits has 1-norm <= 2), plus both variants' rounding of the log-sum-exp.

A divergence names the first step and, in network order, the first layer and quantity over its
bound, with an ``assert_close``-style report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bncheck.engine.compare import Mismatch, Tolerance, compare
from bncheck.engine.conventions import TORCH
from bncheck.engine.oracle import batch_stats, channel_view, count_per_channel, reduce_dims
from bncheck.engine.properties._tolerance import (
    SAFETY,
    forward_tolerance,
    gradient_tolerances,
    roundoff,
    stats_tolerance,
)
from bncheck.errors import InvalidArgument
from bncheck.infra.validation import check_finite_float, check_positive_int, check_type
from bncheck.reference.lenet import BNFactory, lenet_bn
from bncheck.training._loop import check_batch_size, xavier_init
from bncheck.training._population import bn_buffer
from bncheck.training.data import Dataset, batches

__all__ = ["LockstepDivergence", "LockstepReport", "compare_variants"]

_U = roundoff(torch.float32)


@dataclass(frozen=True)
class LockstepDivergence:
    """The first comparison over its bound: ``step`` (from 1), ``where`` (layer or "loss")."""

    step: int
    where: str
    mismatch: Mismatch
    reason: str

    def __str__(self) -> str:
        return (f"step {self.step}: {self.where}: {self.mismatch}\n"
                f"Tolerance: {self.reason}")


@dataclass
class LockstepReport:
    """The outcome of :func:`compare_variants`.

    ``steps``: steps compared. ``worst``: per quantity (``"loss"``, ``"output"``,
    ``"running_mean"``, ``"running_var"``), the largest ``difference / bound`` seen, with its
    step and layer (below 1 everywhere when passed). ``losses``: the two variants' losses.
    """

    names: tuple[str, str]
    steps: int = 0
    divergence: LockstepDivergence | None = None
    worst: dict[str, tuple[float, int, str]] = field(default_factory=dict)
    losses: list[tuple[float, float]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.divergence is None

    def _note(self, kind: str, ratio: float, step: int, where: str) -> None:
        if kind not in self.worst or ratio > self.worst[kind][0]:
            self.worst[kind] = (ratio, step, where)


def compare_variants(
    data: Dataset,
    *,
    variant_a: str | BNFactory = "scratch",
    variant_b: str | BNFactory = "torch",
    steps: int | None = None,
    epochs: int = 1,
    lr: float = 1.0,
    batch_size: int = 256,
    seed: int = 0,
    on_step: Callable[[int, int], None] | None = None,
) -> LockstepReport:
    """Train LeNet-BN with ``variant_a`` and ``variant_b`` in lockstep and compare every step.

    Args:
        data: the training set; batches are drawn as :func:`bncheck.training.train` draws them
            (same seed, same order; a last batch of one sample is dropped).
        variant_a, variant_b: BatchNorm variants as :func:`bncheck.reference.lenet.lenet_bn` takes
        them
            (``"scratch"``, ``"torch"`` or a factory); their ``state_dict`` keys must agree.
        steps: stop after this many steps (default: all of ``epochs`` epochs).
        epochs, lr, batch_size, seed: the recipe, as for ``train``.
        on_step: called with ``(step, total)`` after each step (progress).

    Returns a :class:`LockstepReport`; it stops at the first divergence.

    Raises:
        InvalidArgument: bad arguments, or variants whose ``state_dict`` keys differ.
    """
    check_type(Dataset, data, "data")
    check_positive_int(epochs, "epochs")
    check_finite_float(lr, "lr", min_value=0.0, exclude_min=True)
    check_batch_size(batch_size)
    check_type(int, seed, "seed")
    if steps is not None:
        check_positive_int(steps, "steps")
    models = (lenet_bn(variant_a, seed=seed), lenet_bn(variant_b, seed=seed))
    names = tuple(v if isinstance(v, str) else getattr(v, "__qualname__", repr(v))
                  for v in (variant_a, variant_b))
    keys = [set(m.state_dict()) for m in models]
    if keys[0] != keys[1]:
        raise InvalidArgument(f"Cannot compare variant_a={names[0]!r} with variant_b="
                              f"{names[1]!r}: their state_dict keys differ "
                              f"({sorted(keys[0] ^ keys[1])[:4]})")
    xavier_init(models[0], seed=seed)
    report = LockstepReport((names[0], names[1]))
    drop = len(data) % batch_size == 1
    per_epoch = (len(data) - drop) // batch_size + ((len(data) - drop) % batch_size > 0)
    total = per_epoch * epochs if steps is None else min(steps, per_epoch * epochs)
    optimizers = [torch.optim.SGD(m.parameters(), lr=lr) for m in models]
    shuffler = torch.Generator().manual_seed(seed)
    step = 0
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        for _ in range(epochs):
            for x, y in batches(data, batch_size=batch_size, shuffle=True, generator=shuffler,
                                drop_last=drop):
                step += 1
                models[1].load_state_dict(models[0].state_dict())
                report.divergence = _step(models, optimizers, x, y, step, report)
                if on_step is not None:
                    on_step(step, total)
                if report.divergence is not None or step >= total:
                    report.steps = step
                    return report
    report.steps = step
    return report


class _Recorder:
    """Hooks that keep each BatchNorm child's input, output, upstream gradient and input
    gradient, and its running statistics before the step."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [(i, name, m) for i, (name, m) in enumerate(model.named_children())
                       if isinstance(getattr(m, "running_mean", None), Tensor)]
        self.inputs: dict[int, Tensor] = {}
        self.outputs: dict[int, Tensor] = {}
        self.grad_outputs: dict[int, Tensor] = {}
        self.grad_inputs: dict[int, Tensor] = {}
        self.before = {i: (bn_buffer(m, "running_mean").detach().clone(),
                           bn_buffer(m, "running_var").detach().clone())
                       for i, _, m in self.layers}
        self.handles = [h for i, _, m in self.layers for h in (
            m.register_forward_hook(self._forward(i)),
            m.register_full_backward_hook(self._backward(i)))]

    def _forward(self, index: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            self.inputs[index] = args[0].detach().clone()
            self.outputs[index] = output.detach().clone()
        return hook

    def _backward(self, index: int) -> Callable[..., None]:
        def hook(module: nn.Module, grad_input: tuple[Tensor | None, ...],
                 grad_output: tuple[Tensor | None, ...]) -> None:
            if grad_input[0] is not None and grad_output[0] is not None:
                self.grad_inputs[index] = grad_input[0].detach().clone()
                self.grad_outputs[index] = grad_output[0].detach().clone()
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


_Check = tuple[str, Tensor, Tensor, Tolerance]


def _step(models: tuple[nn.Module, nn.Module], optimizers: Sequence[torch.optim.Optimizer],
          x: Tensor, y: Tensor, step: int, report: LockstepReport) -> LockstepDivergence | None:
    recorders, losses, logits = [], [], []
    for model, optimizer in zip(models, optimizers, strict=True):
        model.train()
        recorder = _Recorder(model)
        try:
            optimizer.zero_grad(set_to_none=True)
            z = model(x)
            loss = nn.functional.cross_entropy(z, y)
            loss.backward()
            optimizer.step()
        finally:
            recorder.remove()
        recorders.append(recorder)
        losses.append(loss.detach())
        logits.append(z.detach())
    report.losses.append((float(losses[0]), float(losses[1])))
    a, b = recorders
    if not a.layers:
        raise InvalidArgument("Expected a model with BatchNorm layers, received none")
    pairs = [(index, name, bn_a, bn_b)
             for (index, name, bn_a), (_, _, bn_b) in zip(a.layers, b.layers, strict=True)]
    # In the order things happen: the forward layer by layer, the loss, the backward.
    ordered: list[tuple[str, list[_Check]]] = []
    backward: list[tuple[str, list[_Check]]] = []
    bound = torch.zeros(())
    for index, name, bn_a, bn_b in pairs:
        channels = len(bn_buffer(bn_a, "running_mean"))
        where = (f"layer {index} ({name}: {type(bn_a).__name__}({channels}) vs "
                 f"{type(bn_b).__name__})")
        layer = _Layer(a, b, index, bn_a, bn_b)
        ordered.append((where, layer.forward_checks()))
        backward.insert(0, (where + ", backward", layer.backward_checks()))
        bound = layer.output_bound
        found = _exact(bn_a, bn_b, step, where)
        if found is not None:
            ordered.append((where, []))
            return _first(report, ordered, step) or found
    last = a.layers[-1][0]
    ordered.append(("loss", [("loss", losses[1], losses[0],
                              _loss_tolerance(models[0], last, a.outputs[last], bound,
                                              logits[0]))]))
    return _first(report, ordered + backward, step)


def _first(report: LockstepReport, ordered: list[tuple[str, list[_Check]]],
           step: int) -> LockstepDivergence | None:
    for where, checks in ordered:
        for kind, actual, expected, tol in checks:
            found = _check(report, kind, actual, expected, tol, step, where)
            if found is not None:
                return found
    return None


class _Layer:
    """The bounds of one BatchNorm layer's comparisons (see the module docs)."""

    def __init__(self, a: _Recorder, b: _Recorder, index: int, bn_a: nn.Module,
                 bn_b: nn.Module) -> None:
        self.a, self.b, self.index, self.bn_a, self.bn_b = a, b, index, bn_a, bn_b
        self.x32 = a.inputs[index]
        x = self.x = self.x32.to(torch.float64)
        self.dims = reduce_dims(x.dim())
        self.n = count_per_channel(x.shape)
        self.d = (x - b.inputs[index].to(torch.float64)).abs().amax(dim=self.dims)
        self.mean, self.var = batch_stats(x)
        self.eps = float(getattr(bn_a, "eps", TORCH.eps))
        self.std, self.s = self.var.sqrt(), (self.var + self.eps).sqrt()
        self.weight, self.bias = (None if t is None else t.detach().to(torch.float64)
                                  for t in (getattr(bn_a, "weight", None),
                                            getattr(bn_a, "bias", None)))
        self.gamma = self.weight.abs() if self.weight is not None else torch.ones_like(self.s)
        self.xhat_max = (x - channel_view(self.mean, x.dim())).abs().amax(dim=self.dims) / self.s
        d, s = self.d, self.s
        # How far the inputs' difference d can move xhat, and s relatively (first order).
        self.dxhat = (2 * d / s) * (1 + self.xhat_max * (1 + d / s))
        self.ds_rel = 2 * d * (self.std + d) / s.square()
        self.upstream = f"inputs that already differ by up to {float(d.max()):.3g}"
        self.output_bound = torch.zeros_like(s)

    def forward_checks(self) -> list[_Check]:
        x, d, n = self.x, self.d, self.n
        own = forward_tolerance(x, self.mean, self.var, eps=self.eps, n=n, weight=self.weight,
                                bias=self.bias, dtype=torch.float32)
        out_tol = own + own
        out_tol = Tolerance(out_tol.rtol, out_tol.atol + channel_view(
            self.gamma * self.dxhat, x.dim()), f"{own.reason}; both variants; plus the effect "
                                               f"of {self.upstream}")
        y = self.a.outputs[self.index].to(torch.float64)
        self.output_bound = (out_tol.atol + out_tol.rtol * y.abs()).amax(dim=self.dims)
        momentum = getattr(self.bn_a, "momentum", TORCH.momentum)
        # a cumulative average (momentum None): the batch's weight is 1 / (batches so far)
        steps = 1 if momentum is not None else int(bn_buffer(self.bn_a, "num_batches_tracked"))
        momentum = TORCH.batch_weight(momentum, steps)
        old_mean, old_var = (t.to(torch.float64) for t in self.a.before[self.index])
        correction = TORCH.correction(n)
        mean_tol, var_tol = stats_tolerance(self.x32, old_mean, old_var, self.mean, self.var,
                                            weight=momentum, correction=correction,
                                            stat_dtype=torch.float32)
        tail = f" (both variants); plus momentum x the effect of {self.upstream}"
        mean_tol = Tolerance(2 * mean_tol.rtol, 2 * mean_tol.atol + momentum * d,
                                    mean_tol.reason + tail)
        var_tol = Tolerance(2 * var_tol.rtol, 2 * var_tol.atol
                                   + momentum * correction * 4 * d * (self.std + d),
                                   var_tol.reason + tail)
        a, b = self.bn_a, self.bn_b
        return [("output", self.b.outputs[self.index], self.a.outputs[self.index], out_tol),
                ("running_mean", bn_buffer(b, "running_mean"), bn_buffer(a, "running_mean"),
                 mean_tol),
                ("running_var", bn_buffer(b, "running_var"), bn_buffer(a, "running_var"),
                 var_tol)]

    def backward_checks(self) -> list[_Check]:
        a, b, i = self.a, self.b, self.index
        if i not in a.grad_outputs or i not in b.grad_outputs:
            return []
        g = a.grad_outputs[i].to(torch.float64)
        dg = (g - b.grad_outputs[i].to(torch.float64)).abs().amax(dim=self.dims)
        big_g = g.abs().amax(dim=self.dims)
        xm, dxhat, n = self.xhat_max, self.dxhat, self.n
        dx_tol, dw_tol, db_tol = gradient_tolerances(
            self.x32, self.mean, self.var, eps=self.eps, grad=a.grad_outputs[i],
            weight=self.weight, training=True, dtype=torch.float32)
        why = f"both variants; plus the effect of {self.upstream} and upstream gradients " \
              f"that differ by up to {float(dg.max()):.3g}"
        # dx = gamma / s * (g - mean(g) - xhat * mean(g * xhat)): first-order perturbation.
        term = big_g * (2 + xm.square())
        dx_extra = self.gamma / self.s * (dg * (2 + xm.square()) + 2 * big_g * xm * dxhat
                                          + term * self.ds_rel)
        checks: list[_Check] = [(
            "input gradient", b.grad_inputs[i], a.grad_inputs[i],
            Tolerance(2 * dx_tol.rtol, 2 * dx_tol.atol
                             + channel_view(dx_extra, self.x.dim()), f"{dx_tol.reason}; {why}"))]
        for kind, p_a, p_b, tol, extra in (
                ("weight gradient", getattr(self.bn_a, "weight", None),
                 getattr(self.bn_b, "weight", None), dw_tol, n * (dg * xm + big_g * dxhat)),
                ("bias gradient", getattr(self.bn_a, "bias", None),
                 getattr(self.bn_b, "bias", None), db_tol, n * dg)):
            if p_a is not None and p_b is not None and p_a.grad is not None \
                    and p_b.grad is not None:
                checks.append((kind, p_b.grad, p_a.grad, Tolerance(
                    2 * tol.rtol, 2 * tol.atol + extra, f"{tol.reason}; {why}")))
        return checks


def _check(report: LockstepReport, kind: str, actual: Tensor, expected: Tensor,
           tol: Tolerance, step: int, where: str) -> LockstepDivergence | None:
    a64, e64 = actual.detach().to(torch.float64), expected.detach().to(torch.float64)
    allowed = tol.atol + tol.rtol * e64.abs()
    diff = (a64 - e64).abs()
    ratio = float((diff / allowed).max()) if diff.numel() else 0.0
    report._note(kind, ratio if math.isfinite(ratio) else math.inf, step, where)
    mismatch = compare(actual, expected, rtol=tol.rtol, atol=tol.atol, name=kind)
    if mismatch is None:
        return None
    return LockstepDivergence(step, where, mismatch, tol.reason)


def _exact(bn_a: nn.Module, bn_b: nn.Module, step: int, where: str) -> LockstepDivergence | None:
    count_a = getattr(bn_a, "num_batches_tracked", None)
    count_b = getattr(bn_b, "num_batches_tracked", None)
    if count_a is None and count_b is None:
        return None
    if count_a is not None and count_b is not None and torch.equal(count_a, count_b):
        return None
    mismatch = Mismatch("num_batches_tracked", (f"{count_b} != {count_a}",))
    return LockstepDivergence(step, where, mismatch, "a count: must be equal")


def _loss_tolerance(model: nn.Module, last_bn: int, last_output: Tensor, bound: Tensor,
                    logits: Tensor) -> Tolerance:
    """Carry the last BatchNorm's output bound through the head to the cross-entropy."""
    e = bound.clone()
    h = last_output.to(torch.float64)
    for module in list(model.children())[last_bn + 1:]:
        if isinstance(module, nn.Sigmoid):
            e, h = e / 4, torch.sigmoid(h)
        elif isinstance(module, nn.ReLU | nn.Flatten | nn.Identity):
            h = module(h)
        elif isinstance(module, nn.Linear):
            w = module.weight.detach().to(torch.float64).abs()
            k = w.shape[1]
            rounding = 2 * k * _U * (w @ h.abs().amax(dim=0))
            e = w @ e + rounding
            h = module(h.to(module.weight.dtype)).to(torch.float64)
        else:
            raise InvalidArgument(f"Cannot bound the loss through a {type(module).__name__} after "
                                  f"the last BatchNorm (supported: Sigmoid, ReLU, Linear, "
                                  f"Flatten)")
    z_max = float(logits.abs().max())
    classes = logits.shape[1]
    lse = 2 * SAFETY * _U * (z_max + math.log(classes))
    atol = 2 * float(e.max()) + lse
    return Tolerance(0.0, torch.tensor(atol, dtype=torch.float64),
                            f"logits within {float(e.max()):.3g} (the last BatchNorm's output "
                            f"bound through the head), cross-entropy moves by at most 2x that, "
                            f"plus both variants' log-sum-exp rounding {lse:.2g}")
