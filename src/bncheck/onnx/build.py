"""Build the seed's LeNet-BN for export: deterministic weights, calibrated running statistics.

>>> from bncheck.onnx.build import build_model
>>> model = build_model("scratch", seed=0)
>>> model.training, float(model[1].running_var.min()) != 1.0
(False, True)

The running statistics come from training-mode forwards (grad enabled, as in training) on
deterministic image-like batches, so every BatchNorm has statistics far from the (0, 1) of a
fresh layer and an export that ignores them cannot pass by accident.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from bncheck.infra.validation import check_positive_int, check_type
from bncheck.reference.lenet import BUILTIN_BN, INPUT_SHAPE, BNFactory, resolve_bn

__all__ = ["BUILTIN_BN", "resolve_bn", "build_model", "calibrate", "make_inputs", "load_checkpoint"]

#: Calibration: this many training-mode forwards of this batch size. Enough steps that the
#: running statistics are mostly batch statistics (0.9 ** 24 = 8% of the initial 0 / 1 left),
#: and a small batch, so a running-variance bias of n / (n - 1) shows in Linear layers.
CALIBRATION_STEPS, CALIBRATION_BATCH = 24, 16


def make_inputs(batch: int, *, seed: int) -> Tensor:
    """A deterministic ``(batch, 1, 28, 28)`` float32 batch of image-like values in [0, 1).

    The same ``(batch, seed)`` gives the same bytes on every machine (torch's CPU generator).
    """
    check_positive_int(batch, "batch")
    check_type(int, seed, "seed")
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *INPUT_SHAPE), generator=gen, dtype=torch.float32)


def calibrate(model: nn.Module, *, seed: int, steps: int = CALIBRATION_STEPS,
              batch: int = CALIBRATION_BATCH,
              make: Callable[[int, int], tuple[Tensor, ...]] | None = None,
              label: str = "the model") -> None:
    """Run ``steps`` training-mode forwards (grad enabled) so BatchNorm running stats move.

    ``make(batch, seed)`` gives the inputs (default: LeNet-BN's); they are offset and scaled
    (``x * 2 + 0.25``) so the statistics differ per channel and layer.

    Raises:
        TargetError: a forward raised (the message names the file and line).
    """
    from bncheck.engine.target import user_code

    make = make or (lambda b, s: (make_inputs(b, seed=s),))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        # Grad mode stays enabled (a BatchNorm may, wrongly, look at it), but nothing
        # requires grad, so no graph is built: 10x faster on CPU.
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            for step in range(steps):
                xs = make(batch, 10_000 + 97 * seed + step)
                with user_code(f"calibrating {label} (training-mode forward {step + 1} of "
                               f"{steps})"):
                    model(*(x * 2.0 + 0.25 for x in xs))
    finally:
        for p in params:
            p.requires_grad_(True)
    model.eval()


def load_checkpoint(model: nn.Module, path: str | Path, *, label: str = "this LeNet-BN"
                    ) -> None:
    """Load a ``state_dict`` saved with ``torch.save`` (read with ``weights_only=True``).

    The checkpoint format is ``bncheck.training``'s; this reads it with
    :func:`bncheck.training.load_checkpoint`.

    Raises:
        InvalidArgument: the file is missing or unreadable, holds a pickled model or no
            state_dict, or its keys or shapes do not fit the model (``label``).
    """
    from bncheck.training import load_checkpoint as load

    load(model, path, what=label)


def build_model(bn: str | BNFactory = "scratch", *, seed: int = 0,
                checkpoint: str | Path | None = None) -> nn.Sequential:
    """The seed's LeNet-BN with non-trivial running statistics, in eval mode.

    Args:
        bn: ``"scratch"``, ``"torch"``, a TARGET string (``FILE.py:Name``) or a factory.
        seed: seeds the weights and the calibration batches.
        checkpoint: a ``state_dict`` file to load instead of calibrating.

    Raises:
        InvalidArgument: unknown ``bn``, a bad checkpoint.
        TargetError: the TARGET cannot be loaded or built, or raised in a forward.
    """
    from bncheck.onnx.source import lenet_source

    model = lenet_source(bn).build(seed=seed, checkpoint=checkpoint)
    assert isinstance(model, nn.Sequential)
    return model
