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

from pathlib import Path

import torch
from torch import Tensor, nn

from bncheck._validation import check_positive_int, check_type
from bncheck.errors import InvalidArgument
from bncheck.models import INPUT_SHAPE, BNFactory, lenet_bn

__all__ = ["BUILTIN_BN", "resolve_bn", "build_model", "calibrate", "make_inputs", "load_checkpoint"]

#: Names ``--bn`` accepts besides a ``FILE.py:Name`` / ``pkg.mod:Name`` TARGET.
BUILTIN_BN = ("scratch", "torch")

#: Calibration: this many training-mode forwards of this batch size. Enough steps that the
#: running statistics are mostly batch statistics (0.9 ** 24 = 8% of the initial 0 / 1 left),
#: and a small batch, so a running-variance bias of n / (n - 1) shows in Linear layers.
CALIBRATION_STEPS, CALIBRATION_BATCH = 24, 16


def resolve_bn(bn: str) -> str | BNFactory:
    """``"scratch"``/``"torch"`` as is; anything else is a TARGET turned into a factory."""
    check_type(str, bn, "bn")
    if bn in BUILTIN_BN:
        return bn
    from bncheck.target import bn_factory, load_target

    return bn_factory(load_target(bn))


def make_inputs(batch: int, *, seed: int) -> Tensor:
    """A deterministic ``(batch, 1, 28, 28)`` float32 batch of image-like values in [0, 1).

    The same ``(batch, seed)`` gives the same bytes on every machine (torch's CPU generator).
    """
    check_positive_int(batch, "batch")
    check_type(int, seed, "seed")
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *INPUT_SHAPE), generator=gen, dtype=torch.float32)


def calibrate(model: nn.Module, *, seed: int, steps: int = CALIBRATION_STEPS,
              batch: int = CALIBRATION_BATCH) -> None:
    """Run ``steps`` training-mode forwards (grad enabled) so BatchNorm running stats move."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        # Grad mode stays enabled (a BatchNorm may, wrongly, look at it), but nothing
        # requires grad, so no graph is built: 10x faster on CPU.
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            for step in range(steps):
                # Offset and scale the batches so the statistics differ per channel and layer.
                x = make_inputs(batch, seed=10_000 + 97 * seed + step) * 2.0 + 0.25
                model(x)
    finally:
        for p in params:
            p.requires_grad_(True)
    model.eval()


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a ``state_dict`` saved with ``torch.save`` (read with ``weights_only=True``).

    Raises:
        InvalidArgument: the file is missing or unreadable, is not a state_dict, or its keys
            or shapes do not fit the model.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidArgument(f"Expected --checkpoint to be an existing file, received "
                              f"checkpoint={str(p)!r} (no such file)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors of every kind: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidArgument(f"checkpoint={str(p)!r} cannot be read with "
                              f"torch.load(weights_only=True): {first}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise InvalidArgument(f"checkpoint={str(p)!r} is a {type(state).__name__}, expected a "
                              f"state_dict (a dict of parameter and buffer names to tensors)")
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_clip(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_clip(unexpected)}")
        raise InvalidArgument(f"checkpoint={str(p)!r} does not fit this LeNet-BN: "
                              + "; ".join(parts))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        detail = lines[0] if lines else str(e).splitlines()[0]
        raise InvalidArgument(f"checkpoint={str(p)!r} does not fit this LeNet-BN: "
                              f"{detail}") from None


def _clip(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)})"


def build_model(bn: str | BNFactory = "scratch", *, seed: int = 0,
                checkpoint: str | Path | None = None) -> nn.Sequential:
    """The seed's LeNet-BN with non-trivial running statistics, in eval mode.

    Args:
        bn: ``"scratch"``, ``"torch"``, a TARGET string (``FILE.py:Name``) or a factory.
        seed: seeds the weights and the calibration batches.
        checkpoint: a ``state_dict`` file to load instead of calibrating.

    Raises:
        InvalidArgument: unknown ``bn``, a bad checkpoint.
        TargetError: the TARGET cannot be loaded or built.
    """
    check_type(int, seed, "seed")
    if seed < 0:
        raise InvalidArgument(f"Expected seed >= 0, received seed={seed}")
    factory = resolve_bn(bn) if isinstance(bn, str) else bn
    model = lenet_bn(factory, seed=seed)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    else:
        calibrate(model, seed=seed)
    return model.eval()
