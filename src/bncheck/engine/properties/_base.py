"""The property contract: a typed drawn case with one renderer, checks that collect every
independent failure, the registry, and what every property shares (building, comparing).

A property is ``run(ctx, case, checks)``: it calls the target only through
:class:`~bncheck.engine.adapter.Adapted` (whose :meth:`~bncheck.engine.adapter.Adapted.invoke` is
the one path
into user code), records each independent finding with ``checks`` and returns; the runner raises
the collected findings as one :class:`~bncheck.errors.PropertyFailure`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from hypothesis import strategies as st
from torch import Tensor

from bncheck.engine import oracle
from bncheck.engine.adapter import Adapted, Target
from bncheck.engine.compare import Tolerance, compare
from bncheck.engine.properties._tolerance import forward_tolerance
from bncheck.engine.strategies import (
    BNCase,
    BNConfig,
    Mode,
    bn_cases,
    bn_configs,
    dtype_name,
    layout_cases,
    show_values,
)
from bncheck.errors import PropertyFailure
from bncheck.infra.validation import not_set

__all__ = ["Context", "Facts", "Property", "PropertyCase", "DrawnCase", "Checks", "REGISTRY",
           "register", "check_output", "expect_close", "stat_values", "needs_full", "needs_stats",
           "FULL", "REDUCED", "activation_after", "one_pass_variance", "layout_examples",
           "overflow_examples"]

FULL = (torch.float32, torch.float64)
REDUCED = (torch.float16, torch.bfloat16)
#: Channel counts up to this are drawn now and then (past vector widths 8 and 16).
WIDE_CHANNELS = 17


class DrawnCase(Protocol):
    """What every property's drawn case offers: its dtype and one rendering."""

    @property
    def dtype(self) -> torch.dtype: ...

    def describe(self) -> str: ...

    def with_dtype(self, dtype: torch.dtype) -> DrawnCase: ...


@dataclass(frozen=True)
class PropertyCase:
    """A drawn :class:`~bncheck.engine.strategies.BNCase` and the extras a property draws with it,
    each typed and rendered in one place (:meth:`describe`)."""

    case: BNCase
    #: running mean and variance installed before the property runs
    installed: tuple[Tensor, Tensor] | None = None
    #: training steps taken
    steps: int | None = None
    #: a positive per-channel scale and a shift applied to the input (invariances)
    scale: tuple[float, ...] | None = None
    shift: tuple[float, ...] | None = None
    #: a permutation of the batch
    permutation: tuple[int, ...] | None = None
    #: the grad mode of the eval forwards (train_eval_switch)
    eval_mode: Mode | None = None
    #: num_batches_tracked installed before the property runs (a long horizon: behaviour keyed
    #: on the count, such as a cumulative average or a warm-up, is reached there)
    tracked: int | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.case.dtype

    def with_dtype(self, dtype: torch.dtype) -> PropertyCase:
        return replace(self, case=self.case.with_dtype(dtype))

    def with_matching_grad_modes(self) -> PropertyCase:
        """The same case with grad enabled for training forwards and disabled for eval ones (a
        layer that picks its mode from grad mode then sees the mode it is in)."""
        mode = Mode(self.case.mode.training, "enabled" if self.case.mode.training else "no_grad")
        return replace(self, case=replace(self.case, mode=mode),
                       eval_mode=None if self.eval_mode is None else Mode(False, "no_grad"))

    def describe(self) -> str:
        parts = [self.case.describe()]
        if self.installed is not None:
            parts.append(f"installed running_mean={show_values(self.installed[0])}, "
                         f"running_var={show_values(self.installed[1])}")
        if self.steps is not None:
            parts.append(f"training steps={self.steps}")
        if self.scale is not None and self.shift is not None:
            parts.append(f"input scaled by {show_values(torch.tensor(self.scale))} and shifted "
                         f"by {show_values(torch.tensor(self.shift))} per channel")
        if self.permutation is not None:
            parts.append(f"batch permutation={list(self.permutation)}")
        if self.eval_mode is not None:
            parts.append(f"eval forwards in {self.eval_mode}")
        if self.tracked is not None:
            parts.append(f"installed num_batches_tracked={self.tracked}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Facts:
    """What bncheck learned about the target before running properties (preflight)."""

    #: why the running statistics do not follow ``module.to(dtype)``, or None when they do
    stats_not_cast: str | None = None
    #: that the target picks train/eval from autograd's grad mode, or None
    mode_from_grad: str | None = None
    #: that no running statistics were found, or None
    no_stats: str | None = None
    #: that a training forward normalizes with the stored statistics and leaves them unchanged
    #: (a frozen BatchNorm: not a BatchNorm in training), or None
    frozen: str | None = None
    #: that a training forward normalizes with the running averages it has just updated (a
    #: RealNVP-style design): the training properties' failures are its consequences, or None
    running_in_training: str | None = None
    #: that the target computes in float32 whatever dtype it is given (a Keras dtype policy):
    #: its float64 cases are judged as float32 ones, or None
    computes_in_float32: str | None = None


@dataclass(frozen=True)
class Context:
    """What the properties verify: the target, the dtypes requested, the preflight facts."""

    target: Target
    dtypes: tuple[torch.dtype, ...] = (*FULL, *REDUCED)
    facts: Facts = field(default_factory=Facts)

    @property
    def full_dtypes(self) -> tuple[torch.dtype, ...]:
        """float32/float64 among the requested dtypes; float64 judged as float32 when the
        target computes in float32 whatever it is given (:attr:`Facts.computes_in_float32`)."""
        full = tuple(d for d in self.dtypes if d in FULL)
        if self.facts.computes_in_float32 and torch.float64 in full:
            full = tuple(dict.fromkeys(torch.float32 if d == torch.float64 else d
                                       for d in full))
        return full

    @property
    def reduced_dtypes(self) -> tuple[torch.dtype, ...]:
        return tuple(d for d in self.dtypes if d in REDUCED)

    def configs(self, *, track_running_stats: bool | None = None, allow_cumulative: bool = True,
                min_batch_weight: float = 0.0, max_batch_weight: float = 1.0,
                ) -> st.SearchStrategy[BNConfig]:
        """Configurations: drawn where the target's constructor takes the keyword, else (and
        for fixed flags and a declared momentum) the values the target declares."""
        t, conf, fixed = self.target, self.target.configurable, self.target.fixed_flags
        track = track_running_stats
        if "track_running_stats" not in conf:
            track = fixed.get("track_running_stats", True)
        affine = None if "affine" in conf else fixed.get("affine", True)
        bias = None if "bias" in conf else fixed.get("bias", True)
        return bn_configs(
            convention=t.convention, eps=None if "eps" in conf else t.eps,
            momentum=not_set if "momentum" in conf else t.momentum, affine=affine,
            track_running_stats=track, bias=bias,
            allow_cumulative=allow_cumulative and t.cumulative, min_batch_weight=min_batch_weight,
            max_batch_weight=max_batch_weight)

    def cases(self, *, dtypes: tuple[torch.dtype, ...] | None = None,
              configs: st.SearchStrategy[BNConfig] | None = None, **kwargs: Any
              ) -> st.SearchStrategy[BNCase]:
        if "max_channels" not in kwargs:  # sometimes past a vector width (channel tail bugs)
            kwargs.setdefault("wide_channels", WIDE_CHANNELS)
        v = self.target.variant
        if v is not None and v.name == "ghost":  # two or three virtual batches, whole
            vb = v.virtual_batch
            kwargs.update(min_batch=2 * vb, max_batch=3 * vb, batch_multiple=vb)
        return bn_cases(dims=self.target.dims, dtypes=dtypes or self.full_dtypes,
                        configs=configs if configs is not None else self.configs(), **kwargs)

    def with_stats(self, cases: st.SearchStrategy[BNCase], **extra: st.SearchStrategy[Any]
                   ) -> st.SearchStrategy[PropertyCase]:
        """Each case with running statistics to install (and ``extra`` fields drawn)."""
        return cases.flatmap(lambda c: st.builds(
            PropertyCase, st.just(c), stat_values(c.num_features), **extra))

    def tracked_cases(self, *, extra: Mapping[str, st.SearchStrategy[Any]] | None = None,
                      **kwargs: Any) -> st.SearchStrategy[PropertyCase]:
        """Cases (:meth:`cases`'s ``kwargs``) of a layer that tracks running statistics, each
        with statistics to install (and ``extra`` fields drawn, :meth:`with_stats`)."""
        return self.with_stats(self.cases(configs=self.configs(track_running_stats=True),
                                          **kwargs), **(extra or {}))

    def build(self, case: BNCase, *, dtype: torch.dtype | None = None) -> Adapted:
        """Build the target for ``case`` (converted to the case's dtype unless float32) with the
        case's weight and bias."""
        c = case.config
        dtype = dtype or case.dtype
        bn = self.target.build(case.num_features, ndim=case.ndim, eps=c.eps, momentum=c.momentum,
                               affine=c.affine, track_running_stats=c.track_running_stats,
                               bias=c.bias, dtype=None if dtype == torch.float32 else dtype)
        bn.set_params(case.weight, case.bias)
        return bn


class Checks:
    """Collects every independent check that fails in one run of a property.

    The first failure is reported in full, each further one on one line; a check that cannot
    go on after a failure (the target raised, a missing output) raises at once instead.
    """

    def __init__(self) -> None:
        self.failures: list[str] = []

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def that(self, ok: bool, message: str) -> bool:
        if not ok:
            self.fail(message)
        return ok

    def close(self, actual: Tensor, expected: Tensor, tol: Tolerance, what: str,
              *, note: str = "", explain: Callable[[], str] | None = None) -> bool:
        """``actual`` within ``tol`` of ``expected`` (an assert_close-style report if not;
        ``explain()``, asked only then, may add a line naming a likely cause)."""
        mismatch = compare(actual, expected, rtol=tol.rtol, atol=tol.atol, name=what,
                           check_dtype=False)
        if mismatch is None:
            return True
        cause = explain() if explain is not None else ""
        self.fail(f"{mismatch}{note}\nTolerance: {tol.reason}" + (f"\n{cause}" if cause else ""))
        return False

    def raise_if_failed(self) -> None:
        if not self.failures:
            return
        first, *rest = self.failures
        if rest:
            first += (f"\nAlso failed ({len(rest)} more independent check"
                      f"{'s' if len(rest) > 1 else ''}):\n"
                      + "\n".join(f"- {m.splitlines()[0]}" for m in rest))
        raise PropertyFailure(first)


@dataclass(frozen=True)
class Property:
    """A named check: what it checks, the defect it catches, its tolerance rule."""

    number: int
    name: str
    checks: str
    catches: str
    tolerance: str
    cases: Callable[[Context], st.SearchStrategy[Any]]
    run: Callable[[Context, Any, Checks], None]
    requires: Callable[[Context], str | None]
    #: whether it checks training behaviour (skipped for a frozen target, see Facts.frozen)
    trains: bool = True
    #: fixed cases run after the drawn ones pass (what a few drawn examples cannot be relied on
    #: to reach, e.g. one case per memory layout), or None
    fixed: Callable[[Context], Sequence[Any]] | None = None

    def fixed_cases(self, ctx: Context) -> Sequence[Any]:
        """The fixed cases to run on ``ctx`` after the drawn ones (none by default)."""
        return () if self.fixed is None else self.fixed(ctx)

    def skip_reason(self, ctx: Context) -> str | None:
        if ctx.target.framework != "torch":
            from bncheck.frameworks import framework

            reason = framework(ctx.target.framework).skip_reason(self.name)
            if reason is not None:
                return reason
        if ctx.facts.frozen and self.trains:
            return ("checks training behaviour, and the target is frozen: it never normalizes "
                    "with batch statistics (see training_mode)")
        return self.requires(ctx)

    def describe(self, case: DrawnCase) -> str:
        return case.describe()

    def check(self, ctx: Context, case: DrawnCase) -> None:
        """Run the property once on ``case``; raise :class:`PropertyFailure` with every
        independent failure."""
        checks = Checks()
        run = self.run
        if ctx.target.framework != "torch":  # a torch-only property's meaning there
            from bncheck.frameworks import framework

            run = framework(ctx.target.framework).run_for(self.name) or run
        run(ctx, case, checks)
        checks.raise_if_failed()


REGISTRY: dict[str, Property] = {}


def layout_examples(ctx: Context) -> list[PropertyCase]:
    """One fixed training case per memory layout (:func:`~bncheck.engine.strategies.layout_cases`)
    at the target's largest input rank, in its default configuration (the declared flags and
    momentum, else torch's defaults) and float32 (or the first full dtype requested); none for
    a target of another framework (torch memory layouts do not reach it) or without full dtypes.
    """
    t = ctx.target
    if t.framework != "torch" or not ctx.full_dtypes:
        return []
    dtype = torch.float32 if torch.float32 in ctx.full_dtypes else ctx.full_dtypes[0]
    return [PropertyCase(c) for c in layout_cases(max(t.dims), batch=_fixed_batch(t, 4),
                                                  dtype=dtype, config=_declared_config(t))]


def _flag(t: Target, name: str) -> bool:
    """A constructor flag of a fixed case: as declared (``--fixed``), on where the constructor
    takes it (torch's default for every flag)."""
    return True if name in t.configurable else bool(t.fixed_flags.get(name, True))


def _declared_config(t: Target) -> BNConfig:
    """The configuration of a fixed case: the declared flags, eps and momentum."""
    return BNConfig(eps=t.eps, momentum=t.momentum, affine=_flag(t, "affine"),
                    track_running_stats=_flag(t, "track_running_stats"), bias=_flag(t, "bias"))


def _fixed_batch(t: Target, rows: int) -> int:
    """A fixed case's batch: ``rows``, or two virtual batches of a declared ghost BatchNorm."""
    v = t.variant
    return 2 * v.virtual_batch if v is not None and v.name == "ghost" else rows


def overflow_examples(ctx: Context) -> list[PropertyCase]:
    """One fixed float16 training case on which statistics computed in 16 bits overflow while
    the right ones fit float16 (its largest value is 65504), whatever the seed (a few drawn
    float16 examples reach such magnitudes only by chance): channel 0 alternates +200 and -200
    (each square, 4e4, fits; a 16-bit running sum of two does not; the variance, 4e4, does);
    channel 1 is one 300 among zeros (the square of its deviation, 262.5^2 = 68906, overflows
    elementwise; the variance, 9844, fits). None without float16 requested, or for a target
    that keeps no running statistics."""
    t = ctx.target
    config = _declared_config(t)
    if torch.float16 not in ctx.reduced_dtypes or not config.track_running_stats:
        return []
    batch, ndim = _fixed_batch(t, 8), min(t.dims)
    alternating = torch.tensor([200.0, -200.0] * batch, dtype=torch.float64)[:batch]
    outlier = torch.zeros(batch, dtype=torch.float64)
    outlier[0] = 300.0
    x = torch.stack([alternating, outlier], dim=1).reshape(batch, 2, *(1,) * (ndim - 2))
    case = BNCase(tuple(x.shape), torch.float16, Mode(True), config, x.to(torch.float16),
                  torch.tensor([1.0, 0.5], dtype=torch.float64),
                  torch.tensor([0.0, 0.25], dtype=torch.float64), ("standard",) * 2,
                  "contiguous")
    installed = (torch.tensor([0.5, -0.5], dtype=torch.float64),
                 torch.tensor([1.0, 2.0], dtype=torch.float64))
    return [PropertyCase(case, installed)]


def needs_full(ctx: Context) -> str | None:
    if not ctx.full_dtypes:
        return ("needs float32 or float64; requested dtypes: "
                + ", ".join(dtype_name(d) for d in ctx.dtypes))
    return None


def needs_stats(ctx: Context) -> str | None:
    """Skip reason of the properties that read the running statistics, when there are none
    (reported once, by the preflight)."""
    if ctx.facts.no_stats and dict(ctx.target.fixed).get("track_running_stats") is False:
        return "needs running statistics; the target declares it keeps none"
    if ctx.facts.no_stats:
        return "needs the running statistics, which were not found (see running_statistics)"
    return needs_full(ctx)


def register(number: int, name: str, *, checks: str, catches: str, tolerance: str,
             cases: Callable[[Context], st.SearchStrategy[Any]],
             requires: Callable[[Context], str | None] = needs_full, trains: bool = True,
             fixed: Callable[[Context], Sequence[Any]] | None = None,
             ) -> Callable[[Callable[[Context, Any, Checks], None]],
                           Callable[[Context, Any, Checks], None]]:
    """Add the decorated ``run(ctx, case, checks)`` to :data:`REGISTRY` as property ``name``
    (``trains=False``: it holds for a frozen BatchNorm too, see :attr:`Facts.frozen`;
    ``fixed(ctx)``: cases run after the drawn ones pass, see :attr:`Property.fixed`)."""

    def deco(run: Callable[[Context, Any, Checks], None]) -> Callable[[Context, Any, Checks],
                                                                        None]:
        REGISTRY[name] = Property(number, name, checks, catches, tolerance, cases, run, requires,
                                  trains, fixed)
        return run

    return deco


def expect_close(actual: Tensor, expected: Tensor, tol: Tolerance, what: str) -> None:
    """Raise :class:`PropertyFailure` with an assert_close-style report unless close (a check
    that ends the property; :meth:`Checks.close` records one and goes on)."""
    checks = Checks()
    checks.close(actual, expected, tol, what)
    checks.raise_if_failed()


def check_output(y: Tensor, x: Tensor, what: str) -> None:
    """The output has the input's shape and dtype (nothing else can be compared otherwise)."""
    if tuple(y.shape) != tuple(x.shape):
        raise PropertyFailure(f"{what}: output shape {tuple(y.shape)} != input shape "
                              f"{tuple(x.shape)}")
    if y.dtype != x.dtype:
        raise PropertyFailure(f"{what}: output dtype {dtype_name(y.dtype)} != input dtype "
                              f"{dtype_name(x.dtype)}")


def oracle_train(bn: Adapted, x: Tensor, eps: float, dtype: torch.dtype
                 ) -> tuple[Tensor, Tolerance]:
    """The training-mode output the oracle gives for ``x`` with ``bn``'s weight and bias, and
    its tolerance."""
    if bn.target.variant is not None:  # judged by its own oracle
        from bncheck.engine.properties._variants import variant_train

        return variant_train(bn, x, eps, dtype)
    mean, var = oracle.batch_stats(x)
    w, b = bn.params()
    return (oracle.normalize(x, mean, var, eps=eps, weight=w, bias=b),
            forward_tolerance(x, mean, var, eps=eps, weight=w, bias=b, dtype=dtype))


def oracle_eval(bn: Adapted, x: Tensor, mean: Tensor, var: Tensor, eps: float,
                dtype: torch.dtype) -> tuple[Tensor, Tolerance]:
    """The eval-mode output for ``x`` with running statistics ``mean``, ``var``."""
    w, b = bn.params()
    return (oracle.normalize(x, mean, var, eps=eps, weight=w, bias=b),
            forward_tolerance(x, mean, var, eps=eps, n=1, weight=w, bias=b, dtype=dtype))


#: Counts installed in num_batches_tracked (None: as built). Behaviour keyed on the count is
#: otherwise never reached: a cumulative average's 1/k at k = 1e5 in float32, warm-ups.
HORIZONS = (None, 10**3, 10**5, 10**6)


def horizons() -> st.SearchStrategy[int | None]:
    """Installed counts; shrinks to None (the count the layer was built with)."""
    return st.sampled_from(HORIZONS)


def install_count(bn: Adapted, tracked: int | None) -> int | None:
    """Put ``tracked`` into ``bn``'s num_batches_tracked (when it has one and ``tracked`` is
    given); returns the count the next step starts from."""
    if tracked is not None and bn.num_batches_tracked() is not None:
        bn.set_num_batches_tracked(tracked)
        if bn.num_batches_tracked() != tracked:  # a narrow or floating counter
            raise PropertyFailure(
                f"num_batches_tracked cannot hold {tracked}: it reads "
                f"{bn.num_batches_tracked()} after {tracked} was stored (store it as a "
                f"torch.long buffer, as torch does)")
    return bn.num_batches_tracked()


def stat_values(c: int) -> st.SearchStrategy[tuple[Tensor, Tensor]]:
    """Running statistics to install: mean in [-2, 2], variance in [0.05, 4] per channel."""
    def vec(lo: float, hi: float) -> st.SearchStrategy[Tensor]:
        return st.lists(st.floats(lo, hi), min_size=c, max_size=c).map(
            lambda v: torch.tensor(v, dtype=torch.float64))
    return st.tuples(vec(-2.0, 2.0), vec(0.05, 4.0))


#: Activations that norm+activation blocks (timm's BatchNormAct2d, fused layers) apply after
#: the normalization, in the order they are tried.
_ACTIVATIONS: tuple[tuple[str, Callable[[Tensor], Tensor]], ...] = (
    ("ReLU", torch.relu),
    ("ReLU6", lambda t: torch.clamp(t, 0.0, 6.0)),
    ("LeakyReLU(0.01)", lambda t: torch.nn.functional.leaky_relu(t, 0.01)),
    ("SiLU/Swish", torch.nn.functional.silu),
    ("GELU", torch.nn.functional.gelu),
    ("ELU", torch.nn.functional.elu),
    ("Hardswish", torch.nn.functional.hardswish),
    ("Sigmoid", torch.sigmoid),
    ("Tanh", torch.tanh),
)


def activation_after(actual: Tensor, expected: Tensor, tol: Tolerance) -> str:
    """A line naming the activation ``actual`` equals ``expected`` passed through (within
    ``tol``, where plain ``expected`` does not), else ``""``: a norm+activation block is not a
    BatchNorm, and that is the defect to name, not the numbers."""
    for name, act in _ACTIVATIONS:
        through = act(expected.double()).to(expected.dtype)
        if compare(actual, through, rtol=tol.rtol, atol=tol.atol, name="",
                   check_dtype=False) is None:
            return (f"The output equals {name}(expected output): an activation is applied after "
                    f"the normalization (a norm+activation block is not a plain BatchNorm); "
                    f"verify the layer built without its activation")
    return ""


def one_pass_variance(x: Tensor, actual: Tensor, expected: Tensor, tol: Tolerance, *,
                      eps: float, weight: Tensor | None, bias: Tensor | None) -> str:
    """A line naming a one-pass variance (``E[x^2] - E[x]^2``) when it explains the mismatch,
    else ``""``.

    Its fingerprint, on every mismatched channel: the channel's mean is large against its
    spread (``|mean| >= 10 std``); the output is the expected one times a per-channel factor
    ``f``; and the variance that ``f`` implies, ``var' = (var + eps) / f^2 - eps``, is a whole
    number of units in the last place of ``mean^2`` in the accumulation dtype (float32 for
    16-bit and float32 inputs): ``E[x^2]`` and ``E[x]^2`` both round to that grid, and their
    difference is exact. Other defects that scale a channel (eps outside the square root, the
    unbiased variance) land between grid points."""
    nd = x.dim()
    if nd < 2 or actual.shape != expected.shape or x.numel() == 0:
        return ""
    mean, var = oracle.batch_stats(x)
    mantissa = 52 if x.dtype == torch.float64 else 23
    y, e = actual.detach().to(torch.float64), expected.to(torch.float64)
    b = oracle.channel_view(bias, nd) if bias is not None else 0.0
    w = oracle.channel_view(weight, nd) if weight is not None else 1.0
    a, c = (y - b) / w, (e - b) / w
    over = (y - e).abs() > tol.atol + tol.rtol * e.abs()
    bad = over.transpose(0, 1).reshape(over.shape[1], -1).any(dim=1)
    if not bool(bad.any()):
        return ""
    out_u = 2.0 ** -(52 if actual.dtype == torch.float64 else 23)
    for ch in bad.nonzero().flatten().tolist():
        m2, v = float(mean[ch]) ** 2, float(var[ch])
        if not m2 >= 100 * (v + eps):
            return ""  # |mean| < 10 std: a one-pass variance loses too little to be the cause
        ac, cc = a.select(1, ch).flatten(), c.select(1, ch).flatten()
        norm = float(cc.norm())
        if not norm > 0 or not bool(torch.isfinite(ac).all()):
            return ""
        f = float(ac @ cc) / norm**2
        if not f > 0 or float((ac - f * cc).abs().max()) > 1e-3 * float(cc.abs().max()) * f:
            return ""  # not a per-channel scale
        implied = (v + eps) / f**2 - eps
        ulp = 2.0 ** (math.floor(math.log2(m2)) - mantissa)
        # f is fitted from the output's values: its error, carried into units of the grid
        spread = 8 * 2 * (implied + eps) * out_u / math.sqrt(cc.numel()) / ulp
        units = implied / ulp
        if spread > 0.1 or abs(units - round(units)) > max(0.02, 3 * spread):
            return ""
    worst = int(bad.nonzero()[0])
    ratio = float(mean[worst].abs() / var[worst].sqrt()) if var[worst] > 0 else float("inf")
    return (f"The output is the expected one scaled per channel, on channels whose mean is "
            f"large against their spread (channel {worst}: |mean|/std = {ratio:.3g}), and the "
            f"variance it was normalized with is a whole number of "
            f"{'float64' if mantissa == 52 else 'float32'} units of "
            f"mean^2, as a one-pass variance E[x^2] - E[x]^2 computes it (losing digits to "
            f"cancellation): compute the variance from the centred values, mean((x - mean)^2) "
            f"(two passes; Flax: use_fast_variance=False)")
