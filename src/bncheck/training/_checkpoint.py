"""The checkpoint format, written and read in one place: a plain ``state_dict``.

>>> import tempfile, pathlib
>>> from bncheck.reference.lenet import lenet_bn
>>> from bncheck.training import load_checkpoint, save_checkpoint
>>> path = pathlib.Path(tempfile.mkdtemp()) / "lenet.pt"
>>> _ = save_checkpoint(lenet_bn("scratch"), path, note="an example")
>>> load_checkpoint(lenet_bn("torch"), path)
'an example'

The file is what ``torch.save(model.state_dict(), path)`` writes and loads with
``torch.load(path, weights_only=True)``; the same keys fit ``lenet_bn("scratch")`` and
``lenet_bn("torch")``. A note (what the model was trained on) rides in the ``state_dict``'s own
``_metadata`` (torch keeps it there for per-module versions), so the keys stay those of the model.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bncheck.errors import InvalidArgument
from bncheck.infra.io import check_output_path, write_atomic
from bncheck.infra.validation import check_type

__all__ = ["save_checkpoint", "load_checkpoint", "read_state_dict"]

_NOTE_KEY = "bncheck"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], *,
                    note: str | None = None) -> Path:
    """Write ``model.state_dict()`` (on the CPU) to ``path`` atomically; returns the path.

    ``note`` is kept in the ``state_dict``'s ``_metadata`` and returned by
    :func:`load_checkpoint`.

    Raises:
        OutputError: ``path`` cannot be written (missing or read-only folder, a directory).
    """
    check_type(nn.Module, model, "model")
    check_type((str, os.PathLike), path, "checkpoint")
    path = check_output_path(path, "checkpoint")
    original = model.state_dict()
    state: OrderedDict[str, Tensor] = OrderedDict(
        (k, v.detach().cpu()) for k, v in original.items())
    metadata = dict(getattr(original, "_metadata", {}))
    if note is not None:
        metadata[""] = {**metadata.get("", {}), _NOTE_KEY: note}
    state._metadata = metadata  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic({path: buffer.getvalue()})
    return path


def read_state_dict(path: str | os.PathLike[str], name: str = "checkpoint") -> dict[str, Tensor]:
    """Read a ``state_dict`` file with ``torch.load(weights_only=True)``, or say clearly why not.

    Raises:
        InvalidArgument: (``name=path``) no such file; not a file ``torch.save`` wrote; a
            pickled object other than a ``state_dict`` (a whole model, say); not a dict of
            names to tensors.
    """
    check_type((str, os.PathLike), path, name)
    p = Path(path)
    shown = f"{name}={str(p)!r}"
    if not p.is_file():
        what = "a directory" if p.is_dir() else "no such file"
        raise InvalidArgument(f"Expected {name} to be an existing state_dict file, received "
                              f"{shown} ({what})")
    fix = "save one with torch.save(model.state_dict(), path)"
    if not zipfile.is_zipfile(p):
        head = p.read_bytes()[:8]
        if not head.startswith(b"\x80"):  # a pickle (torch.save's legacy format) starts so
            raise InvalidArgument(
                f"{shown} is not a file written by torch.save (expected a zip archive holding a "
                f"pickled state_dict; the file has {p.stat().st_size} bytes, starting "
                f"0x{head.hex() or '(empty)'}); {fix}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors of every kind: one message
        text = _ANSI.sub("", str(e))
        found = _GLOBAL.search(text)
        if found:
            raise InvalidArgument(
                f"{shown} holds a pickled {found.group(1)} object, not a state_dict (was a "
                f"whole model saved with torch.save(model)?); {fix}") from None
        raise InvalidArgument(f"{shown} cannot be read as a state_dict "
                              f"({type(e).__name__}); {fix}") from None
    _check_state_dict(state, shown, fix)
    return state  # type: ignore[no-any-return]


def _check_state_dict(state: Any, shown: str, fix: str) -> None:
    if not isinstance(state, dict):
        raise InvalidArgument(f"{shown} holds a {type(state).__name__}, expected a state_dict "
                              f"(a dict of parameter and buffer names to tensors); {fix}")
    for key, value in state.items():
        if isinstance(key, str) and isinstance(value, Tensor):
            continue
        nested = [k for k, v in state.items() if isinstance(v, dict)
                  and v and all(isinstance(t, Tensor) for t in v.values())]
        hint = (f"; its entry {nested[0]!r} looks like one: torch.save(checkpoint[{nested[0]!r}],"
                f" path)" if nested else f"; {fix}")
        raise InvalidArgument(
            f"{shown} holds a dict whose entry {key!r} is a {type(value).__name__}, expected a "
            f"state_dict (a dict of parameter and buffer names to tensors){hint}")


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str],
                    name: str = "checkpoint", *, what: str = "this LeNet-BN") -> str | None:
    """Load the ``state_dict`` at ``path`` into ``model`` (strictly); returns its note, if any.

    ``what`` names the model in the message when the keys or shapes do not fit.

    Raises:
        InvalidArgument: the file cannot be read as a ``state_dict`` (see
            :func:`read_state_dict`), or its keys or shapes do not fit ``model``.
    """
    check_type(nn.Module, model, "model")
    state = read_state_dict(path, name)
    shown = f"{name}={str(path)!r}"
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_clip(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_clip(unexpected)}")
        raise InvalidArgument(f"{shown} does not fit {what}: " + "; ".join(parts))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        detail = lines[0] if lines else str(e).strip().splitlines()[0]
        raise InvalidArgument(f"{shown} does not fit {what}: {detail}") from None
    note = getattr(state, "_metadata", {}).get("", {}).get(_NOTE_KEY)
    return note if isinstance(note, str) else None


def _clip(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)})"
