"""Polygraphy's saved inputs and outputs, read and written without Polygraphy installed.

>>> import numpy as np
>>> from bncheck.onnx.polygraphy_io import outputs_bytes, parse_outputs
>>> data = outputs_bytes({"logits": np.arange(3, dtype=np.float32)})
>>> parse_outputs(data, where="example")["logits"].tolist()
[0.0, 1.0, 2.0]

``polygraphy run model.onnx --onnxrt --save-inputs in.json --save-outputs out.json`` writes
JSON in which every array is ``{"array": base64 of np.save bytes, "polygraphy_class":
"ndarray"}``: the inputs as a list of feed dicts (one per iteration), the outputs as
``RunResults`` (per runner, a list of ``IterationResult`` whose outputs are ``LazyArray``).
bncheck reads both to compare a file with a team's Polygraphy goldens (``bncheck check
--polygraphy-inputs/--polygraphy-outputs``) and writes them beside its own goldens
(``bncheck export --polygraphy``), which ``polygraphy run --load-inputs/--load-outputs`` then
compares against. Only the first iteration is used.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.onnx.graph import ModelFileError

__all__ = ["RUNNER", "inputs_bytes", "outputs_bytes", "parse_inputs", "parse_outputs",
           "read_golden"]

#: The runner name bncheck's outputs are saved under.
RUNNER = "bncheck-eager-eval"


def _encode(array: np.ndarray) -> dict[str, str]:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return {"array": base64.b64encode(buffer.getvalue()).decode(), "polygraphy_class": "ndarray"}


def _decode(value: Any, where: str, name: str) -> np.ndarray:
    if isinstance(value, dict) and value.get("polygraphy_class") == "LazyArray":
        if "values" not in value:
            raise ModelFileError(f"{where}: output {name!r} is stored in a separate file "
                                 f"(Polygraphy's LazyArray for large arrays); bncheck reads "
                                 f"arrays stored inline only")
        value = value["values"]
    if not (isinstance(value, dict) and value.get("polygraphy_class") == "ndarray"
            and isinstance(value.get("array"), str)):
        raise ModelFileError(f"{where}: {name!r} is not a Polygraphy ndarray "
                             f"(expected {{'array': base64, 'polygraphy_class': 'ndarray'}})")
    try:
        return np.load(io.BytesIO(base64.b64decode(value["array"])), allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ModelFileError(f"{where}: {name!r} cannot be decoded as an array ({e})") from None


def inputs_bytes(feeds: Mapping[str, np.ndarray]) -> bytes:
    """One iteration of inputs, as ``polygraphy run --save-inputs`` writes them."""
    return (json.dumps([{k: _encode(v) for k, v in feeds.items()}], indent=2) + "\n").encode()


def outputs_bytes(outputs: Mapping[str, np.ndarray], runner: str = RUNNER) -> bytes:
    """One iteration of outputs, as ``polygraphy run --save-outputs`` writes ``RunResults``."""
    iteration = {"outputs": {k: {"values": _encode(v), "polygraphy_class": "LazyArray"}
                             for k, v in outputs.items()},
                 "runtime": None, "runner_name": runner, "polygraphy_class": "IterationResult"}
    results = {"lst": [[runner, [iteration]]], "polygraphy_class": "RunResults"}
    return (json.dumps(results, indent=2) + "\n").encode()


def _json(data: bytes | str, where: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{where} is not JSON ({e})") from None


def parse_inputs(data: bytes | str, *, where: str) -> dict[str, np.ndarray]:
    """The first iteration's feeds from ``--save-inputs`` JSON.

    Raises:
        ModelFileError: not JSON, not a list of feed dicts, an array that does not decode.
    """
    loaded = _json(data, where)
    if not isinstance(loaded, list) or not loaded or not isinstance(loaded[0], dict):
        raise ModelFileError(f"{where} is not Polygraphy's saved inputs (expected a list of "
                             f"{{input name: array}} dicts, one per iteration)")
    return {k: _decode(v, where, k) for k, v in loaded[0].items()}


def parse_outputs(data: bytes | str, *, where: str, runner: str | None = None
                  ) -> dict[str, np.ndarray]:
    """The first iteration's outputs of ``runner`` (default: the first) from ``RunResults``.

    Raises:
        ModelFileError: not JSON, not RunResults, no such runner (the message lists them).
    """
    loaded = _json(data, where)
    if not isinstance(loaded, dict) or loaded.get("polygraphy_class") != "RunResults":
        raise ModelFileError(f"{where} is not Polygraphy's saved outputs (expected RunResults "
                             f"JSON from polygraphy run --save-outputs)")
    entries = loaded.get("lst")
    if not isinstance(entries, list) or not entries:
        raise ModelFileError(f"{where} holds no runner results")
    names = [e[0] for e in entries if isinstance(e, list) and len(e) == 2]
    chosen = next((e for e in entries if runner is None or e[0] == runner), None)
    if chosen is None:
        raise ModelFileError(f"{where} has no runner {runner!r}; it has {names}")
    iterations = chosen[1]
    if not iterations or not isinstance(iterations[0], dict):
        raise ModelFileError(f"{where}: runner {chosen[0]!r} has no iterations")
    outputs = iterations[0].get("outputs", {})
    return {k: _decode(v, where, k) for k, v in outputs.items()}


def read_golden(inputs_path: str | Path, outputs_path: str | Path, *,
                runner: str | None = None) -> dict[str, np.ndarray]:
    """Polygraphy's saved inputs and outputs as one golden (keyed by graph names).

    Raises:
        ModelFileError: a file is missing or not in Polygraphy's format.
    """
    golden: dict[str, np.ndarray] = {}
    for path, parse in ((inputs_path, parse_inputs), (outputs_path, parse_outputs)):
        p = Path(path)
        if not p.is_file():
            raise ModelFileError(f"{str(p)!r} does not exist")
        kwargs: dict[str, Any] = {"runner": runner} if parse is parse_outputs else {}
        golden.update(parse(p.read_bytes(), where=repr(str(p)), **kwargs))
    return golden
