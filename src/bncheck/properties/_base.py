"""The property registry and what every property shares: the context, building, comparing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from bncheck import oracle
from bncheck.adapter import Adapted, PropertyFailure, Target
from bncheck.compare import compare
from bncheck.properties._tolerance import ChannelTolerance, forward_tolerance
from bncheck.strategies import BNCase, BNConfig, bn_cases, bn_configs, dtype_name

__all__ = ["Context", "Property", "REGISTRY", "register", "expect_close", "check_output",
           "stat_values", "FULL", "REDUCED"]

FULL = (torch.float32, torch.float64)
REDUCED = (torch.float16, torch.bfloat16)
_DRAW: Any = "draw"


@dataclass(frozen=True)
class Context:
    """What the properties verify: the target and the dtypes requested."""

    target: Target
    dtypes: tuple[torch.dtype, ...] = (*FULL, *REDUCED)

    @property
    def full_dtypes(self) -> tuple[torch.dtype, ...]:
        return tuple(d for d in self.dtypes if d in FULL)

    @property
    def reduced_dtypes(self) -> tuple[torch.dtype, ...]:
        return tuple(d for d in self.dtypes if d in REDUCED)

    def configs(self, *, track_running_stats: bool | None = None, allow_cumulative: bool = True,
                min_batch_weight: float = 0.0, max_batch_weight: float = 1.0,
                ) -> st.SearchStrategy[BNConfig]:
        """Configurations: drawn where the target's constructor takes the keyword, else the
        values the target declares."""
        t, conf = self.target, self.target.configurable
        track = track_running_stats
        if "track_running_stats" not in conf:
            track = True
        momentum: Any = _DRAW if "momentum" in conf else t.momentum
        return bn_configs(
            convention=t.convention, eps=None if "eps" in conf else t.eps, momentum=momentum,
            affine=None if "affine" in conf else True, track_running_stats=track,
            allow_cumulative=allow_cumulative and t.cumulative, min_batch_weight=min_batch_weight,
            max_batch_weight=max_batch_weight)

    def cases(self, *, dtypes: tuple[torch.dtype, ...] | None = None,
              configs: st.SearchStrategy[BNConfig] | None = None, **kwargs: Any
              ) -> st.SearchStrategy[BNCase]:
        if "max_channels" not in kwargs:  # sometimes past a vector width (channel tail bugs)
            kwargs.setdefault("wide_channels", WIDE_CHANNELS)
        return bn_cases(dims=self.target.dims, dtypes=dtypes or self.full_dtypes,
                        configs=configs if configs is not None else self.configs(), **kwargs)

    def build(self, case: BNCase, *, dtype: torch.dtype | None = None) -> Adapted:
        """Build the target for ``case`` (converted to the case's dtype unless float32) with the
        case's weight and bias."""
        c = case.config
        dtype = dtype or case.dtype
        bn = self.target.build(case.num_features, ndim=case.ndim, eps=c.eps, momentum=c.momentum,
                               affine=c.affine, track_running_stats=c.track_running_stats,
                               dtype=None if dtype == torch.float32 else dtype)
        bn.set_params(case.weight, case.bias)
        return bn


#: Channel counts up to this are drawn now and then (past vector widths 8 and 16).
WIDE_CHANNELS = 17


@dataclass(frozen=True)
class Property:
    """A named check: what it checks, the defect it catches, its tolerance rule."""

    number: int
    name: str
    checks: str
    catches: str
    tolerance: str
    cases: Callable[[Context], st.SearchStrategy[Any]]
    run: Callable[[Context, Any], None]
    requires: Callable[[Context], str | None]

    def skip_reason(self, ctx: Context) -> str | None:
        return self.requires(ctx)

    def describe(self, case: Any) -> str:
        if isinstance(case, BNCase):
            return case.describe()
        if isinstance(case, tuple) and case and isinstance(case[0], BNCase):
            extras = [_show(v) for v in case[1:]]
            return case[0].describe() + "".join(f", {e}" for e in extras if e)
        describe = getattr(case, "describe", None)
        return describe() if callable(describe) else repr(case)


def _show(value: Any) -> str:
    """Short rendering of a drawn extra (installed statistics, scales, permutations...)."""
    if (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(v, Tensor) for v in value)):
        return f"installed running_mean={_show(value[0])}, running_var={_show(value[1])}"
    if isinstance(value, int):
        return f"training steps={value}"
    if isinstance(value, Tensor):
        return str([float(f"{v:.6g}") for v in value.detach().flatten().tolist()])
    if isinstance(value, tuple | list):
        return "(" + ", ".join(_show(v) for v in value) + ")" if isinstance(value, tuple) \
            else str([float(f"{v:.6g}") if isinstance(v, float) else v for v in value])
    return str(value)


REGISTRY: dict[str, Property] = {}


def needs_full(ctx: Context) -> str | None:
    if not ctx.full_dtypes:
        return ("needs float32 or float64; requested dtypes: "
                + ", ".join(dtype_name(d) for d in ctx.dtypes))
    return None


def register(number: int, name: str, *, checks: str, catches: str, tolerance: str,
             cases: Callable[[Context], st.SearchStrategy[Any]],
             requires: Callable[[Context], str | None] = needs_full,
             ) -> Callable[[Callable[[Context, Any], None]], Callable[[Context, Any], None]]:
    """Add the decorated ``run(ctx, case)`` to :data:`REGISTRY` as property ``name``."""

    def deco(run: Callable[[Context, Any], None]) -> Callable[[Context, Any], None]:
        REGISTRY[name] = Property(number, name, checks, catches, tolerance, cases, run, requires)
        return run

    return deco


def check_output(y: Tensor, x: Tensor, what: str) -> None:
    """The output has the input's shape and dtype."""
    if tuple(y.shape) != tuple(x.shape):
        raise PropertyFailure(f"{what}: output shape {tuple(y.shape)} != input shape "
                              f"{tuple(x.shape)}")
    if y.dtype != x.dtype:
        raise PropertyFailure(f"{what}: output dtype {dtype_name(y.dtype)} != input dtype "
                              f"{dtype_name(x.dtype)}")


def expect_close(actual: Tensor, expected: Tensor, tol: ChannelTolerance, what: str) -> None:
    """Raise :class:`PropertyFailure` with an assert_close-style report unless close."""
    mismatch = compare(actual, expected, rtol=tol.rtol, atol=tol.atol, name=what,
                       check_dtype=False)
    if mismatch is not None:
        raise PropertyFailure(f"{mismatch}\nTolerance: {tol.reason}")


def expect_oracle_train(bn: Adapted, x: Tensor, y: Tensor, eps: float, what: str) -> None:
    """``y`` is the training-mode output of ``bn`` for ``x``: compare with the oracle."""
    mean, var = oracle.batch_stats(x)
    params = bn.params()
    w, b = params if params is not None else (None, None)
    expected = oracle.normalize(x, mean, var, eps=eps, weight=w, bias=b)
    expect_close(y, expected, forward_tolerance(x, mean, var, eps=eps, weight=w, bias=b,
                                                dtype=y.dtype if y.is_floating_point()
                                                else x.dtype), what)


def expect_oracle_eval(bn: Adapted, x: Tensor, y: Tensor, mean: Tensor, var: Tensor,
                       eps: float, what: str) -> None:
    """``y`` is the eval-mode output for ``x`` with running statistics ``mean``, ``var``."""
    params = bn.params()
    w, b = params if params is not None else (None, None)
    expected = oracle.normalize(x, mean, var, eps=eps, weight=w, bias=b)
    expect_close(y, expected, forward_tolerance(x, mean, var, eps=eps, n=1, weight=w, bias=b,
                                                dtype=y.dtype if y.is_floating_point()
                                                else x.dtype), what)


def stat_values(c: int) -> st.SearchStrategy[tuple[Tensor, Tensor]]:
    """Running statistics to install: mean in [-2, 2], variance in [0.05, 4] per channel."""
    def vec(lo: float, hi: float) -> st.SearchStrategy[Tensor]:
        return st.lists(st.floats(lo, hi), min_size=c, max_size=c).map(
            lambda v: torch.tensor(v, dtype=torch.float64))
    return st.tuples(vec(-2.0, 2.0), vec(0.05, 4.0))
