"""Importing the user's module: time limited, and leaving bncheck's process as it found it.

>>> from bncheck.infra.user_import import importing
>>> with importing("torch.nn:BatchNorm2d"):
...     import torch.nn

The CLI runs every command that loads a TARGET in a watched worker process
(:func:`bncheck.cli._watched.runs_watched`), so the user's module never runs in bncheck's own
process: a module that loops forever at import is stopped at ``--timeout`` (the import is a
:func:`~bncheck.infra.workers.time_limited` block), one that ends the process (``os._exit(0)``) is
reported as such with exit 2, and one that starts a thread cannot keep bncheck alive.

What a module may not do at import is change the process-wide state every layer shares:
:func:`importing` compares torch's global settings before and after and raises a
:class:`~bncheck.errors.TargetError` naming each change (a module that calls
``torch.set_default_dtype(torch.float64)`` changes torch's own BatchNorm too, so the layer's
results would say nothing about the layer). The working directory is put back (bncheck's
relative output paths stay where the user meant them).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from bncheck.errors import TargetError

__all__ = ["importing", "global_state", "IMPORTING"]

#: How the watched parent names an import that does not return.
IMPORTING = "importing the target"


def _getters() -> dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]]:
    """torch's process-wide settings that change what a layer computes: name -> (get, set)."""
    import torch

    getters: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
        "default dtype": (torch.get_default_dtype, torch.set_default_dtype),
        "grad mode (torch.set_grad_enabled)": (torch.is_grad_enabled, torch.set_grad_enabled),
        "deterministic algorithms": (torch.are_deterministic_algorithms_enabled,
                                     torch.use_deterministic_algorithms),
        "anomaly detection": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
        "float32 matmul precision": (torch.get_float32_matmul_precision,
                                     torch.set_float32_matmul_precision),
    }
    if hasattr(torch, "get_default_device"):
        getters["default device"] = (torch.get_default_device, torch.set_default_device)
    return getters


def global_state() -> dict[str, Any]:
    """The values of the settings :func:`importing` guards."""
    return {name: get() for name, (get, _) in _getters().items()}


@contextlib.contextmanager
def importing(spec: str) -> Iterator[None]:
    """A block that imports the user's module for ``spec``.

    Raises:
        TargetError: the import changed torch's global state (the state is restored first).
    """
    from bncheck.infra.workers import time_limited

    before = global_state()
    cwd = os.getcwd()
    try:
        with time_limited(f"{IMPORTING} {spec}"):
            yield
    finally:
        with contextlib.suppress(OSError):
            if os.getcwd() != cwd:
                os.chdir(cwd)
    after = global_state()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    if not changed:
        return
    setters = _getters()
    for name, (old, _) in changed.items():
        with contextlib.suppress(Exception):  # best effort: the error below is what matters
            setters[name][1](old)
    what = ", ".join(f"{k} {_shown(old)} -> {_shown(new)}" for k, (old, new) in changed.items())
    raise TargetError(
        f"TARGET={spec!r}: importing it changed torch's global state ({what}). Such a change "
        f"alters every layer in the process, torch's own included, so no result would be about "
        f"the layer: make the change inside the layer (or in your own test setup), not at "
        f"import")


def _shown(value: Any) -> str:
    return str(value).removeprefix("torch.")
