"""The seed notebook's LeNet-BN, from one builder, with a from-scratch or a ``torch.nn`` BatchNorm.

>>> import torch
>>> from bncheck.reference.lenet import lenet_bn
>>> net = lenet_bn(bn="scratch", seed=0).eval()
>>> net(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])

Both variants share the architecture, the parameter order and the ``state_dict`` keys, and the
same ``seed`` gives both the same initial weights, so weights transfer between them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bncheck.errors import InvalidArgument
from bncheck.infra.validation import check_type
from bncheck.reference import BatchNorm

__all__ = ["lenet_bn", "resolve_bn", "BN_LAYER_INDICES", "BUILTIN_BN", "INPUT_SHAPE", "BNFactory"]

#: Builds a BatchNorm for ``num_features`` channels and inputs of ``num_dims`` dims (2 or 4).
BNFactory = Callable[[int, int], nn.Module]

#: Indices in the Sequential of the four BatchNorm layers (as in the seed: net[1] is the first).
BN_LAYER_INDICES = (1, 5, 10, 13)

#: One sample's shape (C, H, W): Fashion-MNIST images.
INPUT_SHAPE = (1, 28, 28)


def _torch_bn(num_features: int, num_dims: int) -> nn.Module:
    return nn.BatchNorm2d(num_features) if num_dims == 4 else nn.BatchNorm1d(num_features)


def _scratch_bn(num_features: int, num_dims: int) -> nn.Module:
    return BatchNorm(num_features)


_BUILTIN: dict[str, BNFactory] = {"scratch": _scratch_bn, "torch": _torch_bn}

#: Names ``--bn`` accepts besides a ``FILE.py:Name`` / ``pkg.mod:Name`` TARGET.
BUILTIN_BN = tuple(_BUILTIN)


def resolve_bn(bn: str) -> str | BNFactory:
    """``"scratch"``/``"torch"`` as is; anything else is a TARGET turned into a factory.

    Raises:
        InvalidArgument: neither a built-in name nor a TARGET (no ``:``).
        TargetError: the TARGET cannot be imported or found (see :mod:`bncheck.engine.target`).
    """
    check_type(str, bn, "bn")
    if bn in _BUILTIN:
        return bn
    if ":" not in bn:
        from bncheck.infra.validation import close_matches

        close = close_matches(bn, _BUILTIN)
        raise InvalidArgument(
            f"Expected bn to be {' or '.join(map(repr, _BUILTIN))} or a TARGET "
            f"(path/to/file.py:Name or package.module:Name), received bn={bn!r}"
            + (f"; did you mean {close[0]!r}?" if close else ""))
    from bncheck.engine.target import bn_factory, load_target

    return bn_factory(load_target(bn))


def lenet_bn(bn: str | BNFactory = "scratch", *, seed: int = 0) -> nn.Sequential:
    """Build the seed's LeNet-BN (input ``(N, 1, 28, 28)``, 10 logits).

    Args:
        bn: ``"scratch"`` (:class:`bncheck.BatchNorm`), ``"torch"`` (``nn.BatchNorm1d/2d``),
            or a factory ``bn(num_features, num_dims)`` returning any BatchNorm module.
        seed: seeds the Conv/Linear initialization; the global RNG is left untouched.

    Raises:
        InvalidArgument: ``bn`` is an unknown name.
    """
    if isinstance(bn, str):
        if bn not in _BUILTIN:
            raise InvalidArgument(
                f"Expected bn to be one of {sorted(_BUILTIN)} or a factory "
                f"bn(num_features, num_dims), received bn={bn!r}")
        factory = _BUILTIN[bn]
    elif callable(bn):
        factory = bn
    else:
        check_type(str, bn, "bn")
        raise AssertionError("unreachable")
    check_type(int, seed, "seed")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5), factory(6, 4), nn.Sigmoid(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), factory(16, 4), nn.Sigmoid(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 120), factory(120, 2), nn.Sigmoid(),
            nn.Linear(120, 84), factory(84, 2), nn.Sigmoid(),
            nn.Linear(84, 10),
        )
