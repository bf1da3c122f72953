"""Hypothesis strategies for BatchNorm inputs, modes and configurations.

>>> from hypothesis import given
>>> from bncheck.engine import strategies as bst
>>> @given(bst.bn_cases(dims=(4,), training=True))
... def test_output_shape(case):
...     assert case.x.shape == case.shape

Every strategy validates its arguments when called (``name=value`` and the rule broken, as
Hypothesis does) and draws tensor *contents* through Hypothesis, so failing inputs shrink. Input
values stress batch normalization: large offsets with small spread (mean >> std), near-constant
and constant channels (variance ~ 0, where eps matters), wide spreads (squares overflow float16),
and every memory layout a caller may hand a layer: channels_last, a strided last dimension,
permuted batch and channel strides, a storage offset, an expanded (stride 0) dimension, and
transposed spatial strides (as ``x.transpose(2, 3)`` leaves them: a ``x.view(...)`` raises).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import Tensor

from bncheck.engine.conventions import TORCH, Convention
from bncheck.errors import InvalidArgument
from bncheck.infra.validation import (
    NotSet,
    check_eps,
    check_finite_float,
    check_min_max,
    check_momentum,
    check_positive_int,
    check_type,
    not_set,
)

__all__ = [
    "Mode", "BNConfig", "BNCase", "GRAD_MODES", "KINDS", "LAYOUTS", "DTYPES",
    "shapes", "dtypes", "modes", "bn_configs", "inputs", "channel_values", "bn_cases",
    "layout_cases",
]

GradMode = Literal["enabled", "no_grad", "inference_mode"]
GRAD_MODES: tuple[str, ...] = ("enabled", "no_grad", "inference_mode")
#: What a channel's values look like (see :func:`inputs`).
KINDS: tuple[str, ...] = ("standard", "offset", "near_constant", "constant", "wide")
LAYOUTS: tuple[str, ...] = ("contiguous", "channels_last", "non_contiguous", "permuted",
                             "storage_offset", "expanded", "spatial_transposed")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64,
                                  "float16": torch.float16, "bfloat16": torch.bfloat16}
_REDUCED = (torch.float16, torch.bfloat16)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Mode:
    """Train or eval, and the autograd mode the forward runs under."""

    training: bool
    grad: str = "enabled"

    def context(self) -> contextlib.AbstractContextManager[Any]:
        """The context manager for :attr:`grad`: nothing, ``no_grad`` or ``inference_mode``."""
        if self.grad == "no_grad":
            return torch.no_grad()
        if self.grad == "inference_mode":
            return torch.inference_mode()
        return contextlib.nullcontext()

    def __str__(self) -> str:
        return ("train" if self.training else "eval") + (
            "" if self.grad == "enabled" else f"+{self.grad}")


@dataclass(frozen=True)
class BNConfig:
    """Constructor arguments, in torch's names; ``momentum`` in the convention's own meaning."""

    eps: float = TORCH.eps
    momentum: float | None = TORCH.momentum
    affine: bool = True
    track_running_stats: bool = True
    bias: bool = True

    def __str__(self) -> str:
        momentum = "None" if self.momentum is None else f"{self.momentum:g}"
        return (f"eps={self.eps:g}, momentum={momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}"
                + ("" if self.bias else ", bias=False"))


@dataclass(frozen=True)
class BNCase:
    """One drawn test case: everything a property needs to run a BatchNorm once."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    mode: Mode
    config: BNConfig
    x: Tensor
    weight: Tensor
    bias: Tensor
    kinds: tuple[str, ...]
    layout: str

    @property
    def num_features(self) -> int:
        return self.shape[1]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def describe(self) -> str:
        text = (f"shape={self.shape}, dtype={dtype_name(self.dtype)}, mode={self.mode}, "
                f"layout={self.layout}, channels={list(self.kinds)}, {self.config}")
        return (f"{text}, x={show_values(self.x)}, weight={show_values(self.weight)}, "
                f"bias={show_values(self.bias)}")

    def with_dtype(self, dtype: torch.dtype) -> BNCase:
        """The same case in ``dtype`` (the values rounded to it)."""
        from dataclasses import replace

        return replace(self, dtype=dtype, x=self.x.to(dtype))


def show_values(t: Tensor, *, limit: int = 16) -> str:
    """The values of a small tensor, or its shape and a summary when it is big."""
    v = t.detach().to(torch.float64)
    if v.numel() <= limit:
        return str([float(f"{x:.6g}") for x in v.flatten()])
    finite = v[torch.isfinite(v)]
    if finite.numel() == 0:
        return f"<{v.numel()} values, none finite>"
    return (f"<{v.numel()} values, min {float(finite.min()):.6g}, max {float(finite.max()):.6g}, "
            f"mean {float(finite.mean()):.6g}>")


# -- argument checks ---------------------------------------------------------------------------
def _check_choices(values: Any, name: str, allowed: Sequence[Any]) -> tuple[Any, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | frozenset | set):
        raise InvalidArgument(f"Expected {name} to be a sequence of values from "
                              f"{list(allowed)}, received {name}={values!r}")
    values = tuple(values)
    if not values:
        raise InvalidArgument(f"Expected at least one value in {name}, received {name}=()")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise InvalidArgument(f"Expected {name} to hold values from {list(allowed)}, "
                              f"received {name}={values!r} ({bad[0]!r} is not one of them)")
    return values


def _check_dtypes(values: Any, name: str = "dtypes") -> tuple[torch.dtype, ...]:
    resolved = tuple(DTYPES.get(v, v) if isinstance(v, str) else v for v in (
        values if isinstance(values, Sequence) and not isinstance(values, str) else [values]))
    if isinstance(values, str):
        raise InvalidArgument(f"Expected {name} to be a sequence of dtypes, received "
                              f"{name}={values!r}; did you mean {name}=[{values!r}]?")
    return _check_choices(resolved, name, tuple(DTYPES.values()))


# -- strategies --------------------------------------------------------------------------------
def shapes(*, dims: Sequence[int] = (2, 4), min_batch: int = 2, max_batch: int = 6,
           min_channels: int = 1, max_channels: int = 4, min_side: int = 1,
           max_side: int = 4, wide_channels: int | None = None, batch_multiple: int = 1
           ) -> st.SearchStrategy[tuple[int, ...]]:
    """Input shapes ``(N, C, *spatial)`` with ``len(shape)`` in ``dims``.

    ``batch_multiple``: ``N`` is a multiple of it (a ghost BatchNorm's virtual batch), between
    ``min_batch`` and ``max_batch`` rounded to multiples.

    ``wide_channels`` (above ``max_channels``): about one shape in four has between
    ``max_channels + 1`` and ``wide_channels`` channels, so that code paths for channel counts
    past a vector width (8, 16) are exercised; shrinking still goes to the small counts.

    ``min_batch=2`` (the default) is the smallest batch a training forward accepts; with small
    batches the biased and unbiased variances differ by up to a factor 2. Use ``min_batch=1``
    only for eval mode.
    """
    dims = _check_choices(dims, "dims", (2, 3, 4, 5))
    for name, value in (("min_batch", min_batch), ("max_batch", max_batch),
                        ("min_channels", min_channels), ("max_channels", max_channels),
                        ("min_side", min_side), ("max_side", max_side)):
        check_positive_int(value, name)
    check_min_max("min_batch", min_batch, "max_batch", max_batch)
    check_min_max("min_channels", min_channels, "max_channels", max_channels)
    check_min_max("min_side", min_side, "max_side", max_side)
    channels: st.SearchStrategy[int] = st.integers(min_channels, max_channels)
    if wide_channels is not None:
        check_positive_int(wide_channels, "wide_channels")
        check_min_max("max_channels", max_channels, "wide_channels", wide_channels)
        if wide_channels > max_channels:
            small, wide = channels, st.integers(max_channels + 1, wide_channels)
            channels = st.integers(0, 3).flatmap(lambda k: wide if k == 3 else small)
    check_positive_int(batch_multiple, "batch_multiple")
    lo = -(-min_batch // batch_multiple)
    batches = st.integers(lo, max(lo, max_batch // batch_multiple)).map(
        lambda k: k * batch_multiple)
    return st.tuples(
        st.sampled_from(dims), batches,
        channels,
        st.lists(st.integers(min_side, max_side), min_size=3, max_size=3),
    ).map(lambda t: (t[1], t[2], *t[3][: t[0] - 2]))


def dtypes(*, dtypes: Sequence[torch.dtype | str] | None = None) -> st.SearchStrategy[torch.dtype]:
    """Floating dtypes; ``dtypes=None`` means float32, float64, float16 and bfloat16."""
    return st.sampled_from(
        tuple(DTYPES.values()) if dtypes is None else _check_dtypes(dtypes))


def modes(*, training: bool | None = None,
          grad_modes: Sequence[str] | None = None) -> st.SearchStrategy[Mode]:
    """Train or eval (``training=None``: both) under each of ``grad_modes`` (``None``: enabled,
    ``no_grad`` and ``inference_mode``)."""
    if training is not None:
        check_type(bool, training, "training")
    grads = GRAD_MODES if grad_modes is None else _check_choices(grad_modes, "grad_modes",
                                                                  GRAD_MODES)
    trains = (True, False) if training is None else (training,)
    return st.builds(Mode, st.sampled_from(trains), st.sampled_from(grads))


_EPS = st.one_of(st.sampled_from([1e-5, 1e-3, 0.1]), st.floats(1e-6, 0.5))


def bn_configs(*, convention: Convention = TORCH, eps: float | None = None,
               momentum: float | None | NotSet = not_set, affine: bool | None = None,
               track_running_stats: bool | None = None, bias: bool | None = True,
               allow_cumulative: bool = True, min_batch_weight: float = 0.0,
               max_batch_weight: float = 1.0) -> st.SearchStrategy[BNConfig]:
    """BatchNorm configurations; an argument left at its default is drawn.

    Args:
        convention: gives momentum its meaning (and the default momentum among those drawn).
        eps: fixed, or ``None`` to draw from 1e-5, 1e-3, 0.1 and ``[1e-6, 0.5]``.
        momentum: fixed (a float, or ``None`` for the cumulative average); not given: drawn.
        affine, track_running_stats, bias: fixed, or ``None`` to draw both values (``bias``
            defaults to True: torch's ``bias=False`` is drawn only for targets that take it).
        allow_cumulative: whether a drawn momentum may be ``None``.
        min_batch_weight, max_batch_weight: bounds on the *batch weight* of drawn momenta (the
            momentum in torch's meaning, ``1 - momentum`` in ONNX's).
    """
    check_type(Convention, convention, "convention")
    if eps is not None:
        check_eps(eps)
    if momentum is not not_set:
        check_momentum(momentum, allow_none=True)
    for name, flag in (("affine", affine), ("track_running_stats", track_running_stats),
                       ("bias", bias)):
        if flag is not None:
            check_type(bool, flag, name)
    check_type(bool, allow_cumulative, "allow_cumulative")
    for name, value in (("min_batch_weight", min_batch_weight),
                        ("max_batch_weight", max_batch_weight)):
        check_finite_float(value, name, min_value=0.0, max_value=1.0)
    check_min_max("min_batch_weight", min_batch_weight, "max_batch_weight", max_batch_weight)

    from_weight = convention.momentum_for  # the inverse of batch_weight, decided there

    if momentum is not_set:
        default_w = convention.batch_weight(convention.momentum, 1)
        fixed = [w for w in (default_w, min_batch_weight, max_batch_weight)
                 if min_batch_weight <= w <= max_batch_weight]
        weights = st.one_of(st.sampled_from(fixed or [min_batch_weight]),
                            st.floats(min_batch_weight, max_batch_weight))
        mom: st.SearchStrategy[float | None] = weights.map(from_weight)
        if allow_cumulative:
            mom = st.one_of(mom, st.none())
    else:
        mom = st.just(None if momentum is None else float(momentum))
    return st.builds(
        BNConfig,
        st.just(eps) if eps is not None else _EPS,
        mom,
        st.just(affine) if affine is not None else st.booleans(),
        st.just(track_running_stats) if track_running_stats is not None else st.booleans(),
        st.just(bias) if bias is not None else st.booleans(),
    )


def _kind_ranges(kind: str, dtype: torch.dtype) -> tuple[tuple[float, float], tuple[float, float]]:
    """(offset range, spread range) of a channel of ``kind``; offsets of "offset" channels are
    a multiple of the spread (mean/std up to 1e3, 1e2 in 16-bit dtypes)."""
    ratio = 100.0 if dtype in _REDUCED else 1000.0
    return {
        "standard": ((-2.0, 2.0), (0.25, 2.0)),
        "offset": ((10.0, ratio), (0.01, 1.0)),
        "near_constant": ((-1.0, 1.0), (1e-4, 1e-2)),
        "constant": ((-1.0, 1.0), (0.0, 0.0)),
        "wide": ((-10.0, 10.0), (300.0, 3000.0)),
    }[kind]


def channel_values(kind: str, dtype: torch.dtype = torch.float32
                   ) -> st.SearchStrategy[tuple[float, float]]:
    """``(offset, spread)`` of one channel of ``kind`` (one of :data:`KINDS`): its values are
    ``offset + spread * z`` with ``z`` in ``[-1, 1]``."""
    _check_choices([kind], "kind", KINDS)
    dtype = _check_dtypes([dtype], "dtype")[0]
    return _channel_values(kind, dtype)


@st.composite
def _channel_values(draw: st.DrawFn, kind: str, dtype: torch.dtype) -> tuple[float, float]:
    (olo, ohi), (slo, shi) = _kind_ranges(kind, dtype)
    spread = draw(st.floats(slo, shi)) if shi > 0 else 0.0
    if kind == "offset":
        sign = draw(st.sampled_from([1.0, -1.0]))
        return sign * spread * draw(st.floats(olo, ohi)), spread
    return draw(st.floats(olo, ohi)), spread


def _layout(x: Tensor, layout: str) -> Tensor:
    """``x`` in ``layout`` (same values, except ``expanded``, which repeats one slice)."""
    if layout == "channels_last" and x.dim() in (4, 5):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return x.contiguous(memory_format=fmt)
    if layout == "non_contiguous":
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    if layout == "permuted":  # channel-major memory: stride(1) > stride(0)
        return x.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "storage_offset":
        flat = torch.zeros(x.numel() + 3, dtype=x.dtype)
        flat[3:] = x.reshape(-1)
        return flat[3:].view(x.shape)
    if layout == "spatial_transposed" and x.dim() >= 4:  # as x.transpose(2, 3) leaves it
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "expanded":  # stride 0: the last dimension (the batch for (N, C))
        dim = x.dim() - 1 if x.dim() > 2 else 0
        return x.narrow(dim, 0, 1).expand(x.shape)
    return x


@st.composite
def _inputs_with_kinds(draw: st.DrawFn, shape: tuple[int, ...], dtype: torch.dtype,
                       kinds: tuple[str, ...], layouts: tuple[str, ...]
                       ) -> tuple[Tensor, tuple[str, ...], str]:
    chans = tuple(draw(st.sampled_from(kinds)) for _ in range(shape[1]))
    specs = [draw(_channel_values(k, dtype)) for k in chans]
    z = draw(arrays(np.float64, shape, elements=st.floats(-1.0, 1.0), fill=st.nothing()))
    offset = np.array([s[0] for s in specs]).reshape([1, -1] + [1] * (len(shape) - 2))
    spread = np.array([s[1] for s in specs]).reshape(offset.shape)
    x = torch.from_numpy(offset + spread * z).to(dtype)
    layout = draw(st.sampled_from(layouts))
    return _layout(x, layout), chans, layout


def inputs(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, *,
           kinds: Sequence[str] | None = None,
           layouts: Sequence[str] | None = None) -> st.SearchStrategy[Tensor]:
    """Input tensors of ``shape`` and ``dtype``; each channel's values are of one of ``kinds``
    (``None``: all of :data:`KINDS`), in one of ``layouts`` (``None``: all of :data:`LAYOUTS`).

    Kinds: ``standard`` (offset in [-2, 2], spread in [0.25, 2]), ``offset`` (mean up to 1e3
    times the spread), ``near_constant`` (spread 1e-4 to 1e-2), ``constant`` (variance exactly
    0), ``wide`` (spread 10 to 1000: squares overflow float16).
    """
    check_type(tuple, shape, "shape")
    if len(shape) < 2 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise InvalidArgument(f"Expected shape to be (N, C, *spatial) of positive ints, "
                              f"received shape={shape!r}")
    dtype = _check_dtypes([dtype], "dtype")[0]
    ks = KINDS if kinds is None else _check_choices(kinds, "kinds", KINDS)
    ls = LAYOUTS if layouts is None else _check_choices(layouts, "layouts", LAYOUTS)
    return _inputs_with_kinds(shape, dtype, ks, ls).map(lambda t: t[0])


def _params(c: int, low: float, high: float) -> st.SearchStrategy[Tensor]:
    return st.lists(st.floats(low, high), min_size=c, max_size=c).map(
        lambda v: torch.tensor(v, dtype=torch.float64))


@st.composite
def _cases(draw: st.DrawFn, shape_st: st.SearchStrategy[tuple[int, ...]],
           dtype_st: st.SearchStrategy[torch.dtype], mode_st: st.SearchStrategy[Mode],
           config_st: st.SearchStrategy[BNConfig], kinds: tuple[str, ...],
           layouts: tuple[str, ...]) -> BNCase:
    shape = draw(shape_st)
    dtype = draw(dtype_st)
    mode = draw(mode_st)
    config = draw(config_st)
    x, chans, layout = draw(_inputs_with_kinds(shape, dtype, kinds, layouts))
    weight = draw(_params(shape[1], -2.0, 2.0))
    bias = draw(_params(shape[1], -2.0, 2.0))
    return BNCase(shape, dtype, mode, config, x, weight, bias, chans, layout)


def bn_cases(*, dims: Sequence[int] = (2, 4),
             dtypes: Sequence[torch.dtype | str] | None = ("float32", "float64"),
             training: bool | None = None, grad_modes: Sequence[str] | None = None,
             configs: st.SearchStrategy[BNConfig] | None = None, min_batch: int | None = None,
             max_batch: int = 6, max_channels: int = 4, max_side: int = 4,
             wide_channels: int | None = None, kinds: Sequence[str] | None = None,
             layouts: Sequence[str] | None = None, batch_multiple: int = 1
             ) -> st.SearchStrategy[BNCase]:
    """Complete test cases: shape, dtype, mode, configuration, input, random weight and bias.

    Weight and bias are drawn in ``[-2, 2]`` per channel, not left at ones and zeros (a
    swapped weight and bias is invisible at the initial values).

    Args:
        dims: input ranks (2 to 5).
        dtypes: default float32 and float64; ``None`` means every dtype, as for
            :func:`dtypes` (one meaning of ``None`` for dtypes everywhere).
        training, grad_modes: as :func:`modes`.
        configs: ``None`` means ``bn_configs()``.
        min_batch: ``None`` means 1 when ``training=False``, else 2 (training needs two values
            per channel).
        max_batch, max_channels, max_side, wide_channels, batch_multiple: as :func:`shapes`.
        kinds, layouts: as :func:`inputs`.
    """
    if min_batch is None:
        min_batch = 1 if training is False else 2
    check_positive_int(min_batch, "min_batch")
    if training is not False and min_batch < 2:
        raise InvalidArgument(f"Cannot have min_batch={min_batch} < 2 unless training=False: "
                              f"a training forward needs more than one value per channel")
    dts = tuple(DTYPES.values()) if dtypes is None else _check_dtypes(dtypes)
    ks = KINDS if kinds is None else _check_choices(kinds, "kinds", KINDS)
    ls = LAYOUTS if layouts is None else _check_choices(layouts, "layouts", LAYOUTS)
    if configs is None:
        configs = bn_configs()
    elif not isinstance(configs, st.SearchStrategy):
        raise InvalidArgument(f"Expected configs to be a SearchStrategy of BNConfig, received "
                              f"configs={configs!r}")
    return _cases(
        shapes(dims=dims, min_batch=min_batch, max_batch=max_batch, max_channels=max_channels,
               max_side=max_side, wide_channels=wide_channels, batch_multiple=batch_multiple),
        st.sampled_from(dts), modes(training=training, grad_modes=grad_modes), configs, ks, ls)


def layout_cases(ndim: int, *, batch: int = 4, channels: int = 3,
                 dtype: torch.dtype = torch.float32, config: BNConfig | None = None,
                 mode: Mode | None = None, layouts: Sequence[str] | None = None
                 ) -> list[BNCase]:
    """One fixed case per memory layout (default: all of :data:`LAYOUTS` that differ from
    contiguous at rank ``ndim``): the same seeded values, spatial sides 3, 4, 2 (all different,
    so transposing two of them changes the strides), weight and bias not at their defaults.

    A handful of drawn examples reaches a given layout of :data:`LAYOUTS` only by chance (one
    draw in seven, and only at a rank and side where the layout changes the strides); these
    reach each one, every run.

    >>> tuple(c.layout for c in layout_cases(2))
    ('non_contiguous', 'permuted', 'storage_offset', 'expanded')
    """
    check_positive_int(batch, "batch")
    check_positive_int(channels, "channels")
    if ndim not in (2, 3, 4, 5):
        raise InvalidArgument(f"Expected ndim in (2, 3, 4, 5), received ndim={ndim!r}")
    wanted = (tuple(v for v in LAYOUTS if v != "contiguous") if layouts is None
              else _check_choices(layouts, "layouts", LAYOUTS))
    shape = (batch, channels, *(3, 4, 2)[:ndim - 2])
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5 + 0.5).to(dtype)
    weight = torch.linspace(0.5, 1.5, channels, dtype=torch.float64)
    bias = torch.linspace(-0.25, 0.25, channels, dtype=torch.float64)
    out = []
    for layout in wanted:
        laid = _layout(x, layout)
        if layout != "contiguous" and laid.stride() == x.stride() and \
                laid.storage_offset() == 0:
            continue  # the same strides as contiguous at this rank
        out.append(BNCase(shape, dtype, mode or Mode(True), config or BNConfig(), laid,
                          weight, bias, ("standard",) * channels, layout))
    return out
