"""The reference BatchNorm's arithmetic: written from the formula, fast on CPU.

No call into ``F.batch_norm``, ``torch.batch_norm`` or a native BatchNorm kernel: the reference is
bncheck's independent oracle for other BatchNorms. Each piece below was chosen by measurement
(``benchmarks/``, README "Performance"):

* **training** (batch statistics): :class:`BatchNormFunction`, a ``torch.autograd.Function``. Its
  forward takes one pass for the per-channel sum, one that writes the centred values ``x - mean``
  into the output buffer, one that sums their squares without a temporary (a two-pass variance,
  never ``E[x²] - E[x]²``), and normalizes the centred values in place; it updates the running
  statistics where autograd records nothing. Its backward is the analytic gradient and saves only
  what native BatchNorm saves: the input, the weight, the per-channel mean and ``1 / std``. It
  allocates one full-size buffer per direction (the output, the input gradient) and no
  full-size temporary: a fresh block can cost more in page faults than the op itself
  (:data:`_SMALL_BYTES`). Small inputs are dominated by per-op overhead (~1-3 us a call here),
  so each per-channel step is one call where one suffices.
* **eval** (given statistics): the folded form ``x * scale + shift`` with
  ``scale = weight / sqrt(var + eps)`` and ``shift = bias - mean * scale``, as PyTorch's CPU kernel
  computes it: one multiply that allocates the output, one add in place.
* **composite** (under a transform): where the input is traced or transformed rather than
  computed (``torch.compile``, ``torch.export``, ``torch.func``, forward-mode AD, a fake or other
  tensor subclass, a dispatch mode such as ``FakeTensorMode``), :func:`transformed` says so and
  :func:`composite_train` computes training mode as the plain formula of differentiable torch
  ops, which every transform knows: the compiler fuses it, ``vmap`` batches it, forward and
  reverse AD derive it. The fast path's ``autograd.Function``, in-place and ``out=`` tricks stay
  out of traced graphs.
* **compiled** (opt-in): the same forward and analytic backward written for ``torch.compile``,
  whose generated kernels fuse each direction's reductions and elementwise work; the same
  autograd Function holds them, so the same tensors are saved and ``retain_graph`` works.

float16/bfloat16 input is computed in float32 (float32 accumulation) and returned in its dtype.
Tensors are handled as rows (:func:`rows`): ``(N, C, L)`` for contiguous input, ``(M, C)`` for
2-dim and channels-last input, so neither layout is copied on the way.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

__all__ = ["compute_dtype", "reduction_dims", "rows", "unrows", "is_channels_last",
           "BatchNormFunction", "RunningStats", "train", "train_forward", "train_backward",
           "blend", "eval_forward", "formula", "composite_train", "transformed",
           "compiled_forward", "compiled_backward"]

_REDUCED = (torch.float16, torch.bfloat16)

#: From this many elements on, the forward's sum of squares of 2-dim rows takes a norm (no
#: temporary, slower on small rows) instead of a product-sum: with glibc's default allocator,
#: blocks above 32 MB are fresh mmaps whose page faults cost about 4x a copy (measured at
#: (64, 64, 56, 56) float32).
_NO_TEMPORARY_FROM = 1 << 23

#: glibc's initial mmap threshold (128 KiB): a larger block may be a fresh mmap whose pages fault
#: in on first touch (~1.7 us per 4 KiB page here, ~1.4 ms for a (256, 6, 24, 24) float32 block:
#: 15x a copy of it). Below it, a temporary is cheap.
_SMALL_BYTES = 128 << 10


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype BatchNorm arithmetic runs in: float32 for float16/bfloat16, else ``dtype``."""
    return torch.float32 if dtype in _REDUCED else dtype


def reduction_dims(ndim: int) -> list[int]:
    """The dims a BatchNorm reduces over for an ``ndim``-dim input: all but the channel dim 1."""
    return [0, *range(2, ndim)]


def is_channels_last(t: Tensor) -> bool:
    """Whether ``t`` is stored channels-last (channels innermost) rather than contiguously."""
    return t.dim() > 2 and not t.is_contiguous() and t.movedim(1, -1).is_contiguous()


def rows(t: Tensor, channels_last: bool) -> Tensor:
    """``t`` (N, C, *) with dim 1 the channels and every other dim reduced over: ``(M, C)`` where
    channels are innermost (2-dim input, ``channels_last``, or spatial size 1), else
    ``(N, C, L)``.

    A view for 2-dim, contiguous and (with ``channels_last``) channels-last tensors, a contiguous
    copy for any other layout.
    """
    c = t.shape[1]
    if t.dim() == 2:
        return t
    if channels_last:
        return t.movedim(1, -1).reshape(-1, c)
    if t.numel() == t.shape[0] * c:  # (N, C, 1, ...): (N, C) rows, the 2-dim code path
        return t.reshape(t.shape[0], c)
    return t.reshape(t.shape[0], c, -1)


def unrows(r: Tensor, shape: torch.Size, channels_last: bool) -> Tensor:
    """Undo :func:`rows`: back to ``shape`` in the same memory layout."""
    if channels_last:
        return r.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)
    return r.reshape(shape)


def _per_channel(v: Tensor, r: Tensor) -> Tensor:
    """``(C,)`` values shaped to broadcast against rows ``r``."""
    return v if r.dim() == 2 else v.view(1, -1, 1)


def _in(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``, without a call when it already is (a no-op ``.to`` costs ~1 us)."""
    return t if t.dtype == dtype else t.to(dtype)


def _channel_sum(r: Tensor, dtype: torch.dtype) -> Tensor:
    """Per-channel sum of rows ``r``, accumulated in ``dtype``."""
    return r.sum(0, dtype=dtype) if r.dim() == 2 else r.sum(2, dtype=dtype).sum(0)


def _channel_sum_of_squares(d: Tensor) -> Tensor:
    """Per-channel sum of ``d**2``, without a full-size temporary where that matters."""
    if d.dim() == 3:  # the norm of contiguous rows is one fused pass
        return torch.linalg.vector_norm(d, dim=2).square_().sum(0)
    if d.numel() < _NO_TEMPORARY_FROM:
        return torch.linalg.vecdot(d, d, dim=0)
    return torch.linalg.vector_norm(d, dim=0).square_()


def _centered_dot(r: Tensor, m: Tensor, g: Tensor, dtype: torch.dtype,
                  keep: bool) -> tuple[Tensor, Tensor]:
    """Per-channel sum of ``(r - m) * g`` and a new buffer that holds ``r - m`` if ``keep``.

    Small 2-dim rows take one product-sum (its temporary is small); others multiply the
    centred values by ``g`` in place, sum, and centre again: no full-size temporary, whose
    fresh pages can cost more than the whole op (README "Performance", allocator).
    """
    d = r - m
    if d.dim() == 2 and d.numel() * d.element_size() < _SMALL_BYTES:
        return d, torch.linalg.vecdot(d, g, dim=0)
    dot = _channel_sum(d.mul_(g), dtype)
    if keep:
        torch.sub(r, m, out=d)
    return d, dot


def train_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                  eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalize ``x`` with its batch statistics (no autograd graph).

    Returns:
        ``(y, mean, invstd, sum_of_squares)``: the output in ``x``'s dtype and layout, and per
        channel the batch mean, ``1 / sqrt(biased var + eps)`` and the sum of squared deviations
        (in the compute dtype), from which the caller derives the unbiased variance.
    """
    cdtype = compute_dtype(x.dtype)
    channels_last = x.dim() > 2 and is_channels_last(x)
    r = rows(x, channels_last)
    c = r.shape[1]
    n = r.numel() // c
    if r.dim() == 2:
        mean = r.mean(0, dtype=cdtype)
        d = r - mean  # a new buffer in the compute dtype: becomes the output
    else:
        mean = r.sum(2, dtype=cdtype).sum(0).div_(n)
        d = r - mean.view(1, c, 1)
    sum_sq = _channel_sum_of_squares(d)
    invstd = torch.add(_eps_tensor(eps, cdtype), sum_sq, alpha=1 / n).rsqrt_()  # one call
    scale = invstd if weight is None else invstd * _in(weight, cdtype)
    if r.dim() == 2:  # channels innermost: one fused pass
        if bias is None:
            d.mul_(scale)
        else:
            torch.addcmul(_in(bias, cdtype), d, scale, out=d)
    else:  # (N, C, L): two passes are faster than a broadcasting addcmul here (4x at L=64)
        d.mul_(scale.view(1, c, 1))
        if bias is not None:
            d.add_(_in(bias, cdtype).view(1, c, 1))
    y = unrows(d, x.shape, channels_last) if x.dim() > 2 else d
    return _in(y, x.dtype), mean, invstd, sum_sq


def train_backward(dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor,
                   needs: tuple[bool, bool, bool]
                   ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The analytic gradients of :func:`train_forward`'s output for input, weight and bias.

    With ``xhat = (x - mean) * invstd`` and sums over each channel's ``n`` values:
    ``dbias = sum(dy)``, ``dweight = sum(dy * xhat)`` and
    ``dx = weight * invstd * (dy - sum(dy) / n - xhat * sum(dy * xhat) / n)``.
    """
    need_input, need_weight, need_bias = needs
    cdtype = compute_dtype(x.dtype)
    channels_last = x.dim() > 2 and is_channels_last(x)
    r = rows(x, channels_last)
    g = _in(rows(dy, channels_last), cdtype)  # dy in another layout is copied into x's
    c = r.shape[1]
    n = r.numel() // c
    sum_dy = _channel_sum(g, cdtype)
    grad_input = grad_weight = None
    if need_input or need_weight:
        # d = x - mean, a new buffer that becomes grad_input
        d, dot = _centered_dot(r, _per_channel(mean, r), g, cdtype, keep=need_input)
        grad_weight = dot.mul_(invstd)  # sum(dy * xhat)
        if need_input:
            k = invstd if weight is None else invstd * _in(weight, cdtype)
            # dx = k * dy + coef * d + shift, with coef = -k * invstd * sum(dy * xhat) / n
            # and shift = -k * sum(dy) / n
            k_n = k * (-1.0 / n)
            shift = k_n * sum_dy
            coef = k_n.mul_(invstd).mul_(grad_weight)
            if d.dim() == 2:  # channels innermost: one fused pass (slower for (N, C, L) rows)
                torch.addcmul(shift, d, coef, out=d).addcmul_(g, k)
            else:
                d.mul_(coef.view(1, c, 1)).add_(shift.view(1, c, 1)).addcmul_(g, k.view(1, c, 1))
            grad_input = _in(unrows(d, x.shape, channels_last) if x.dim() > 2 else d, x.dtype)
        if not need_weight:
            grad_weight = None
    grad_bias = sum_dy if need_bias else None
    return grad_input, grad_weight, grad_bias


def blend(running: Tensor, batch: Tensor, momentum: float) -> None:
    """``running = (1 - momentum) * running + momentum * batch`` in place, in ``batch``'s
    (compute) dtype: a float16 batch variance may overflow where the blend does not."""
    if running.dtype == batch.dtype:
        running.lerp_(batch, momentum)
    else:
        running.copy_(running.to(batch.dtype).lerp_(batch, momentum))


#: What a training call updates: ``(running_mean, running_var, momentum)``, either may be None.
RunningStats = tuple[Tensor | None, Tensor | None, float]


def _update(stats: RunningStats | None, mean: Tensor, sum_sq: Tensor, count: int) -> None:
    """Move the running statistics toward the batch's (the variance unbiased, as PyTorch
    stores it). Called where autograd does not record (no graph reaches the buffers)."""
    if stats is None:
        return
    running_mean, running_var, momentum = stats
    if running_mean is not None:
        blend(running_mean, mean, momentum)
    if running_var is not None:
        blend(running_var, sum_sq.div(count - 1), momentum)


def _like(grad: Tensor | None, param: Tensor | None) -> Tensor | None:
    return grad if grad is None or param is None else _in(grad, param.dtype)


def formula(x: Tensor, weight: Tensor | None, bias: Tensor | None,
            eps: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Training BatchNorm as the plain, twice-differentiable formula (autograd derives the
    backward): ``(y, mean, biased var)``. Used for double backward."""
    cdtype = compute_dtype(x.dtype)
    dims = reduction_dims(x.dim())
    xc = x.to(cdtype)
    mean = xc.mean(dim=dims, keepdim=True)
    d = xc - mean
    var = d.square().mean(dim=dims, keepdim=True)
    y = d * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(cdtype).view(mean.shape)
    if bias is not None:
        y = y + bias.to(cdtype).view(mean.shape)
    return y.to(x.dtype), mean.flatten(), var.flatten()


class BatchNormFunction(torch.autograd.Function):
    """Training BatchNorm with an analytic backward:
    ``apply(x, weight, bias, eps, compiled, stats)`` returns ``y`` and updates ``stats``
    (:data:`RunningStats`, or None) in place.

    Saved for backward: ``x``, ``weight``, ``bias`` and two per-channel vectors (native BatchNorm
    saves the same but ``bias``). ``compiled`` runs both directions through ``torch.compile``
    (:func:`compiled_forward`, :func:`compiled_backward`). Double backward
    (``create_graph=True``) differentiates :func:`formula` instead, so ``gradgradcheck`` holds.
    The statistics are updated inside ``forward``, where autograd records nothing: no
    ``no_grad`` block and no extra outputs per call.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                eps: float, compiled: bool = False, stats: RunningStats | None = None
                ) -> Tensor:
        y, mean, invstd, sum_sq = (compiled_forward if compiled else train_forward)(
            x, weight, bias, eps)
        _update(stats, mean, sum_sq, x.numel() // x.shape[1])
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.eps, ctx.compiled = eps, compiled
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, mean, invstd = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        # create_graph=True wants a differentiable backward; a batched gradient (vectorized
        # jacobian, ``is_grads_batched``) or a transform cannot go through the in-place kernels
        if torch.is_grad_enabled() or torch._C._functorch.is_legacy_batchedtensor(dy) \
                or transformed(dy):
            return (*_formula_gradients(dy, x, weight, bias, ctx.eps, needs), None, None, None)
        kernel = compiled_backward if ctx.compiled else train_backward
        gx, gw, gb = kernel(dy, x, weight, mean, invstd, needs)
        return gx, _like(gw, weight), _like(gb, bias), None, None, None


def transformed(x: Tensor) -> bool:
    """Whether ``x`` is being traced or transformed rather than computed: under
    ``torch.compile``/``torch.export`` (Dynamo), a ``torch.func`` transform, a forward-mode AD
    level, a ``TorchDispatchMode`` (fake tensors, ``make_fx``), or ``x`` a tensor subclass.
    About 1 us in eager mode; Dynamo reads the first test as a constant."""
    return (_is_compiling()
            or (type(x) is not Tensor and type(x) is not _Parameter)
            or _forward_ad._current_level >= 0
            or _functorch_active()
            or _dispatch_modes() > 0)


_is_compiling = torch.compiler.is_compiling
_Parameter = torch.nn.Parameter
_functorch_active = torch._C._are_functorch_transforms_active
_dispatch_modes = torch._C._len_torch_dispatch_stack


def composite_train(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                    stats: RunningStats | None = None) -> Tensor:
    """Training BatchNorm as :func:`formula` (differentiable torch ops only) with the running
    statistics updated in place from the batch's, detached: what every transform can trace."""
    y, mean, var = formula(x, weight, bias, eps)
    if stats is not None:
        n = x.numel() // x.shape[1]
        running_mean, running_var, momentum = stats
        with torch.no_grad():
            if running_mean is not None:
                running_mean.copy_(_blended(running_mean, mean.detach(), momentum))
            if running_var is not None:
                running_var.copy_(_blended(running_var, var.detach() * (n / (n - 1)), momentum))
    return y


def _blended(running: Tensor, batch: Tensor, momentum: float) -> Tensor:
    """:func:`blend` out of place (in ``batch``'s dtype, back in ``running``'s)."""
    return torch.lerp(running.to(batch.dtype), batch, momentum).to(running.dtype)


def train(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
          stats: RunningStats | None = None, *, compiled: bool = False) -> Tensor:
    """Training BatchNorm of a non-empty ``x`` (arguments already checked): the composite
    formula under a transform (:func:`transformed`), else through :class:`BatchNormFunction`
    where a gradient is wanted, else straight to the kernels. Updates ``stats`` in place."""
    if transformed(x):
        return composite_train(x, weight, bias, eps, stats)
    if torch.is_grad_enabled() and (x.requires_grad
                                    or (weight is not None and weight.requires_grad)
                                    or (bias is not None and bias.requires_grad)):
        return BatchNormFunction.apply(x, weight, bias, eps, compiled, stats)  # type: ignore[no-any-return]
    # Inference tensors would need graphs of their own: the eager kernels serve them.
    compiled = compiled and not (torch.is_inference_mode_enabled() or x.is_inference())
    y, mean, _, sum_sq = (compiled_forward if compiled else train_forward)(x, weight, bias, eps)
    _update(stats, mean, sum_sq, x.numel() // x.shape[1])
    return y


def _formula_gradients(dy: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                       eps: float, needs: tuple[bool, ...]) -> list[Tensor | None]:
    inputs = [t for t, need in zip((x, weight, bias), needs, strict=True)
              if need and t is not None]
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        y = formula(x, weight, bias, eps)[0]
        grads = iter(torch.autograd.grad(y, inputs, dy, create_graph=create_graph,
                                         allow_unused=True))
    return [next(grads) if need else None for need in needs]


def eval_forward(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None,
                 bias: Tensor | None, eps: float) -> Tensor:
    """Normalize ``x`` with given statistics: ``x * scale + shift``, differentiable."""
    cdtype = compute_dtype(x.dtype)
    scale = torch.rsqrt(var.to(cdtype) + eps)
    if weight is not None:
        scale = scale * weight.to(cdtype)
    shift = -mean.to(cdtype) * scale
    if bias is not None:
        shift = shift + bias.to(cdtype)
    view = [1, x.shape[1]] + [1] * (x.dim() - 2)
    return (x * scale.view(view)).add_(shift.view(view)).to(x.dtype)


# --- the compiled path ---------------------------------------------------------------------------

def _forward_math(r: Tensor, weight: Tensor, bias: Tensor,
                  eps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`train_forward` on rows, written for the compiler (no in-place ops; it fuses).
    Sums of ``(N, C, L)`` rows run over ``L`` first, then ``N``: the contiguous inner loop makes
    the generated reductions 15-30 % faster than one reduction over both (and they round less)."""
    cdtype = compute_dtype(r.dtype)
    n = r.numel() // r.shape[1]
    xc = r.to(cdtype)
    mean = _channel_sum(xc, cdtype) / n
    d = xc - _per_channel(mean, r)
    sum_sq = _channel_sum(d.square(), cdtype)
    invstd = torch.rsqrt(sum_sq / n + eps)
    y = d * _per_channel(invstd * weight.to(cdtype), r) + _per_channel(bias.to(cdtype), r)
    return y.to(r.dtype), mean, invstd, sum_sq


def _backward_math(g: Tensor, r: Tensor, weight: Tensor, mean: Tensor,
                   invstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`train_backward` on rows, written for the compiler: both reductions in one pass
    over ``(g, x)``, the input gradient in a second."""
    cdtype = compute_dtype(r.dtype)
    n = r.numel() // r.shape[1]
    g = g.to(cdtype)
    d = r.to(cdtype) - _per_channel(mean, r)
    sum_dy = _channel_sum(g, cdtype)
    grad_weight = _channel_sum(g * d, cdtype) * invstd
    k = invstd * weight.to(cdtype)
    dx = _per_channel(k, r) * (g - _per_channel(sum_dy / n, r)
                               - d * _per_channel(grad_weight * invstd / n, r))
    return dx.to(r.dtype), grad_weight, sum_dy


def _rows_for_compiler(t: Tensor, channels_last: bool) -> Tensor:
    """:func:`rows` of ``t``, contiguous and without its view base: the compiler guards on
    strides and on the base's layout, and would compile once per layout of the caller's tensor
    (a copy only for layouts :func:`rows` does not view: strided or expanded 2-dim input, an
    expanded gradient)."""
    return rows(t, channels_last).detach().contiguous()


def _present(t: Tensor | None, x: Tensor, fill: float) -> Tensor:
    """``t``, or ``fill`` per channel: one graph serves layers with and without affine."""
    return t.detach() if t is not None else x.new_full((x.shape[1],), fill,
                                                       dtype=compute_dtype(x.dtype))


#: Inductor options, chosen by measurement: a scalar tail loop instead of a masked vector one
#: makes the dynamic-shape kernels about 2x faster at (256, 16, 8, 8) (bncheck bench).
_OPTIONS: dict[str, str | int | bool | Callable[..., Any]] = {"cpp.enable_loop_tail_vec": False}
_compiled: dict[tuple[str, torch.dtype, int], Callable[..., Any]] = {}
_eps_tensors: dict[tuple[float, torch.dtype], Tensor] = {}


def _compiled_for(fn: Callable[..., Any], r: Tensor) -> Callable[..., Any]:
    """``fn`` compiled for rows of ``r``'s dtype and rank (sizes and eps dynamic).

    Each (dtype, rank) gets its own copy of ``fn``'s code object: the compiler keeps its graphs,
    and counts them against its recompile limit (8), per code object. One graph per dtype and
    rank (contiguous rows, always under ``no_grad``; sizes of 1 add at most three more) stays
    within the limit without raising the global setting (past the limit it would silently run
    ``fn`` eagerly, with a warning).
    """
    key = (fn.__name__, r.dtype, r.dim())
    compiled = _compiled.get(key)
    if compiled is None:
        code = fn.__code__.replace(co_name=f"{fn.__name__}_{str(r.dtype)[6:]}_{r.dim()}")
        copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__,
                                  fn.__closure__)
        compiled = _compiled[key] = torch.compile(copy, dynamic=True, options=_OPTIONS)
    return compiled


def _eps_tensor(eps: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """``eps`` as a 0-dim tensor, reused: the compiler would compile once per float value, and
    an eager op with a Python number costs ~2 us more than with a tensor (it wraps the number
    in a new one)."""
    t = _eps_tensors.get((eps, dtype))
    if t is None:
        if len(_eps_tensors) >= 64:  # many distinct values (a property run): keep it small
            _eps_tensors.clear()
        with torch.inference_mode(False):  # usable in and out of inference mode
            t = _eps_tensors[(eps, dtype)] = torch.tensor(eps, dtype=dtype)
    return t


def compiled_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                     eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`train_forward` by ``torch.compile``-generated kernels (compiled on first use)."""
    channels_last = is_channels_last(x)
    with torch.no_grad():  # one graph whatever the grad mode (the Function does the backward)
        r = _rows_for_compiler(x, channels_last)
        y, mean, invstd, sum_sq = _compiled_for(_forward_math, r)(
            r, _present(weight, x, 1.0), _present(bias, x, 0.0), _eps_tensor(eps))
    return unrows(y, x.shape, channels_last), mean, invstd, sum_sq


def compiled_backward(dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor,
                      invstd: Tensor, needs: tuple[bool, bool, bool]
                      ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """:func:`train_backward` by ``torch.compile``-generated kernels."""
    channels_last = is_channels_last(x)
    r = _rows_for_compiler(x, channels_last)
    dx, grad_weight, grad_bias = _compiled_for(_backward_math, r)(
        _rows_for_compiler(dy, channels_last), r, _present(weight, x, 1.0), mean, invstd)
    return (unrows(dx, x.shape, channels_last) if needs[0] else None,
            grad_weight if needs[1] else None, grad_bias if needs[2] else None)
