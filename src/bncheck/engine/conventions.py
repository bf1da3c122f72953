"""Running-statistics conventions: the one place bncheck states how running statistics move.

>>> import torch
>>> from bncheck.engine.conventions import TORCH, ONNX
>>> TORCH.update(torch.tensor([0.0]), torch.tensor([1.0]), momentum=0.1, steps=1)
tensor([0.1000])
>>> ONNX.update(torch.tensor([0.0]), torch.tensor([1.0]), momentum=0.9, steps=1)
tensor([0.1000])

Two axes vary between real implementations:

* which value the momentum weights: the *batch* statistic (PyTorch:
  ``new = (1 - m) * old + m * batch``, default ``m = 0.1``) or the *old* running value
  (ONNX BatchNormalization, Keras, Flax and the seed notebook: ``new = m * old + (1 - m) * batch``,
  default ``m = 0.9``);
* whether the running variance stores the *unbiased* batch variance (PyTorch, ``n / (n - 1)``
  times the biased one) or the *biased* one (ONNX, Keras, Flax, d2l-en).

``momentum=None`` means a cumulative average over all batches seen (PyTorch's rule, whatever the
momentum axis): the batch weight of step ``k`` is ``1 / k``.

A third axis says what is *stored*: the running variance (``running_stat="var"``) or the running
standard deviation (``"std"``, which moves toward the batch standard deviation). A preset also
names the eps and the channel axis its framework defaults to (``keras``: eps 1e-3, channels last).

d2l-en's current ``batch_norm`` mixes them: ``Convention(momentum_weights="batch",
running_var="biased")``; its older version (and the seed notebook) is the ``onnx`` preset.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import Tensor

from bncheck.errors import InvalidArgument

__all__ = ["Convention", "TORCH", "ONNX", "KERAS", "FLAX", "PRESETS", "convention"]

MomentumWeights = Literal["batch", "old"]
RunningVar = Literal["unbiased", "biased"]
RunningStat = Literal["var", "std"]


@dataclass(frozen=True)
class Convention:
    """How a BatchNorm's running statistics follow its batch statistics.

    Args:
        momentum_weights: ``"batch"`` (``new = (1 - m) * old + m * batch``) or ``"old"``
            (``new = m * old + (1 - m) * batch``).
        running_var: ``"unbiased"`` or ``"biased"``: which batch variance the running variance
            averages (normalization in training always uses the biased one).
        momentum: the default momentum in this convention's own meaning.
        name: a label for reports.
        running_stat: ``"var"`` (the running variance is stored) or ``"std"`` (the running
            standard deviation is stored and moves toward the batch standard deviation).
        eps: the eps this framework's layers default to.
        channel_axis: where this framework's layers keep channels (1, or -1 for channels last).
    """

    momentum_weights: MomentumWeights = "batch"
    running_var: RunningVar = "unbiased"
    momentum: float = 0.1
    name: str = "torch"
    running_stat: RunningStat = "var"
    eps: float = 1e-5
    channel_axis: int = 1

    def __post_init__(self) -> None:
        if self.momentum_weights not in ("batch", "old"):
            raise InvalidArgument(f"Expected momentum_weights to be 'batch' or 'old', received "
                                  f"momentum_weights={self.momentum_weights!r}")
        if self.running_var not in ("unbiased", "biased"):
            raise InvalidArgument(f"Expected running_var to be 'unbiased' or 'biased', received "
                                  f"running_var={self.running_var!r}")
        if not 0.0 <= self.momentum <= 1.0:
            raise InvalidArgument(f"Expected 0 <= momentum <= 1, received "
                                  f"momentum={self.momentum!r}")
        if self.running_stat not in ("var", "std"):
            raise InvalidArgument(f"Expected running_stat to be 'var' or 'std', received "
                                  f"running_stat={self.running_stat!r}")
        if self.channel_axis not in (1, -1):
            raise InvalidArgument(f"Expected channel_axis to be 1 or -1, received "
                                  f"channel_axis={self.channel_axis!r}")

    def batch_weight(self, momentum: float | None, steps: int) -> float:
        """The weight of the batch statistic at training step ``steps`` (1 for the first)."""
        if momentum is None:
            return 1.0 / steps
        return momentum if self.momentum_weights == "batch" else 1.0 - momentum

    def torch_momentum(self, momentum: float | None) -> float | None:
        """``momentum`` translated to PyTorch's meaning (the batch weight); None stays None."""
        return None if momentum is None else self.batch_weight(momentum, 1)

    def momentum_for(self, batch_weight: float) -> float:
        """The momentum, in this convention's meaning, that gives the batch statistic weight
        ``batch_weight`` (the inverse of :meth:`batch_weight`; both directions decided here).

        >>> ONNX.momentum_for(0.1)
        0.9
        """
        return batch_weight if self.momentum_weights == "batch" else 1.0 - batch_weight

    def correction(self, count: int) -> float:
        """The factor from the biased batch variance of ``count`` values per channel to the one
        the running variance averages: ``count / (count - 1)`` (unbiased) or 1 (biased). The one
        place bncheck applies Bessel's correction."""
        if self.running_var == "biased":
            return 1.0
        return count / (count - 1) if count > 1 else float("inf")

    def running_variance(self, biased_var: Tensor, count: int) -> Tensor:
        """The batch variance the running variance averages, from the biased one of ``count``
        values per channel."""
        return biased_var * self.correction(count)

    def expected_stats(self, old_mean: Tensor, old_var: Tensor, batch_mean: Tensor,
                       batch_var: Tensor, *, count: int, momentum: float | None,
                       steps: int) -> tuple[Tensor, Tensor]:
        """The running mean and *variance* after one step on a batch with the given (biased)
        statistics of ``count`` values per channel; a ``std`` convention blends standard
        deviations and the variance returned is the square of the blended one."""
        mean = self.update(old_mean, batch_mean, momentum=momentum, steps=steps)
        target = self.running_variance(batch_var, count)
        if self.running_stat == "std":
            std = self.update(old_var.clamp_min(0).sqrt(), target.sqrt(), momentum=momentum,
                              steps=steps)
            return mean, std.square()
        return mean, self.update(old_var, target, momentum=momentum, steps=steps)

    def update(self, old: Tensor, batch: Tensor, *, momentum: float | None, steps: int) -> Tensor:
        """The running statistic after one training step: ``old`` moved toward ``batch``."""
        w = self.batch_weight(momentum, steps)
        return (1.0 - w) * old + w * batch

    def describe(self) -> str:
        rule = ("new = (1 - m) * old + m * batch" if self.momentum_weights == "batch"
                else "new = m * old + (1 - m) * batch")
        stored = "" if self.running_stat == "var" else ", running std stored"
        return (f"{self.name}: {rule}, {self.running_var} running variance{stored}, "
                f"m = {self.momentum:g}")

    def with_(self, *, momentum_weights: str | None = None, running_var: str | None = None,
              momentum: float | None = None, running_stat: str | None = None) -> Convention:
        """A copy with the given axes overridden (the name records the change)."""
        changes: dict[str, object] = {}
        if momentum_weights is not None and momentum_weights != self.momentum_weights:
            changes["momentum_weights"] = momentum_weights
        if running_var is not None and running_var != self.running_var:
            changes["running_var"] = running_var
        if running_stat is not None and running_stat != self.running_stat:
            changes["running_stat"] = running_stat
        if momentum is not None:
            changes["momentum"] = momentum
        if not changes:
            return self
        axes = {k: v for k, v in changes.items() if k != "momentum"}
        name = self.name + "".join(f"+{k}={v}" for k, v in axes.items())
        return replace(self, name=name, **changes)  # type: ignore[arg-type]


#: PyTorch's BatchNorm: weight on the batch 0.1, unbiased running variance, eps 1e-5, channels
#: first. The one place bncheck states torch's default momentum and eps.
TORCH = Convention("batch", "unbiased", 0.1, "torch", eps=1e-5)
ONNX = Convention("old", "biased", 0.9, "onnx")
#: Keras/TensorFlow ``BatchNormalization``: weight on the old value 0.99, biased variance,
#: epsilon 1e-3, channels last (``axis=-1``).
KERAS = Convention("old", "biased", 0.99, "keras", eps=1e-3, channel_axis=-1)
#: Flax's ``BatchNorm`` (``flax.nnx`` and ``flax.linen``): ``ra = m * ra + (1 - m) * batch`` with
#: m = 0.99, the biased batch variance, epsilon 1e-5, channels last (``axis=-1``); where each
#: comes from in Flax's code: docs/jax.md.
FLAX = Convention("old", "biased", 0.99, "flax", eps=1e-5, channel_axis=-1)
PRESETS: dict[str, Convention] = {"torch": TORCH, "onnx": ONNX, "keras": KERAS, "flax": FLAX}


def convention(name: str, *, momentum_weights: str | None = None,
               running_var: str | None = None, momentum: float | None = None,
               running_stat: str | None = None) -> Convention:
    """The preset ``name`` (``"torch"``, ``"onnx"``, ``"keras"`` or ``"flax"``), with per-axis
    overrides.

    >>> convention("torch", running_var="biased").describe()  # d2l-en's current rule
    'torch+running_var=biased: new = (1 - m) * old + m * batch, biased running variance, m = 0.1'
    """
    if name not in PRESETS:
        raise InvalidArgument(f"Expected convention to be one of {sorted(PRESETS)}, "
                              f"received convention={name!r}")
    return PRESETS[name].with_(momentum_weights=momentum_weights, running_var=running_var,
                               momentum=momentum, running_stat=running_stat)
