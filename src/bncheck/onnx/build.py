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

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bncheck._validation import check_positive_int, check_type
from bncheck.errors import InvalidArgument
from bncheck.models import INPUT_SHAPE, BNFactory

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
              batch: int = CALIBRATION_BATCH,
              make: Callable[[int, int], tuple[Tensor, ...]] | None = None,
              label: str = "the model") -> None:
    """Run ``steps`` training-mode forwards (grad enabled) so BatchNorm running stats move.

    ``make(batch, seed)`` gives the inputs (default: LeNet-BN's); they are offset and scaled
    (``x * 2 + 0.25``) so the statistics differ per channel and layer.

    Raises:
        TargetError: a forward raised (the message names the file and line).
    """
    from bncheck.target import user_code

    make = make or (lambda b, s: (make_inputs(b, seed=s),))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        # Grad mode stays enabled (a BatchNorm may, wrongly, look at it), but nothing
        # requires grad, so no graph is built: 10x faster on CPU.
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad(), user_code(f"calibrating {label} (training-mode forward)"):
            for step in range(steps):
                xs = make(batch, 10_000 + 97 * seed + step)
                model(*(x * 2.0 + 0.25 for x in xs))
    finally:
        for p in params:
            p.requires_grad_(True)
    model.eval()


def _torch_load(p: Path) -> Any:
    """``torch.load(weights_only=True)`` with one-paragraph errors for what users hand in."""
    head = p.read_bytes()[:4]
    if head[:2] != b"PK" and head[:1] != b"\x80":
        raise InvalidArgument(f"checkpoint={str(p)!r} is not a file written by torch.save "
                              f"(it starts with bytes {head!r}, neither a zip archive nor a "
                              f"pickle)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors of every kind: one paragraph
        text = str(e)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            raise InvalidArgument(
                f"checkpoint={str(p)!r} holds a pickled {found.group(1)} object (a whole model "
                f"saved with torch.save(model)), not a state_dict; bncheck reads checkpoints "
                f"with weights_only=True and never runs pickled code. Save the weights instead: "
                f"torch.save(model.state_dict(), {p.name!r})") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\s*\n|$)", text, re.S)
        why = (detail.group(1).strip().splitlines()[0] if detail
               else (text.strip().splitlines() or [type(e).__name__])[0])
        raise InvalidArgument(f"checkpoint={str(p)!r} is not a readable torch.save file "
                              f"(truncated or corrupt: {why})") from None


def load_checkpoint(model: nn.Module, path: str | Path, *, label: str = "this LeNet-BN"
                    ) -> None:
    """Load a ``state_dict`` saved with ``torch.save`` (read with ``weights_only=True``).

    Raises:
        InvalidArgument: the file is missing or unreadable, holds a pickled model or no
            state_dict, or its keys or shapes do not fit the model.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidArgument(f"Expected --checkpoint to be an existing file, received "
                              f"checkpoint={str(p)!r} (no such file)")
    state = _torch_load(p)
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise InvalidArgument(f"checkpoint={str(p)!r} is a {type(state).__name__}, expected a "
                              f"state_dict (a dict of parameter and buffer names to tensors)")
    nested = [k for k, v in state.items() if isinstance(v, dict)]
    if nested and not any(isinstance(v, Tensor) for v in state.values()):
        raise InvalidArgument(f"checkpoint={str(p)!r} is a dict of dicts (keys {nested[:4]}), "
                              f"expected the state_dict itself: save "
                              f"torch.save(checkpoint[{nested[0]!r}], PATH) instead")
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_clip(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_clip(unexpected)}")
        raise InvalidArgument(f"checkpoint={str(p)!r} does not fit {label}: "
                              + "; ".join(parts))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        detail = lines[0] if lines else str(e).splitlines()[0]
        raise InvalidArgument(f"checkpoint={str(p)!r} does not fit {label}: "
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
        TargetError: the TARGET cannot be loaded or built, or raised in a forward.
    """
    from bncheck.onnx.source import lenet_source

    model = lenet_source(bn).build(seed=seed, checkpoint=checkpoint)
    assert isinstance(model, nn.Sequential)
    return model
