"""Declarations in ``pyproject.toml``: ``[[tool.bncheck.targets]]`` tables, as pytest, ruff and
mypy are configured.

.. code-block:: toml

    [[tool.bncheck.targets]]
    target = "layers.py:RenamedBN"
    names = { weight = "scale", bias = "shift", running_mean = "exp_mean", running_var = "exp_var" }
    dims = [2, 4]
    eps = 1e-3

Each table is one target: ``target`` (a TARGET as ``bncheck verify`` takes it; a file path is
relative to the file holding the table) and any declaration of
:class:`~bncheck.engine.declaration.Declaration`, keyed by its long option name with ``-`` written
``_`` (``channel_axis = -1``, ``fixed = { affine = true }``, ``momentum = "none"`` for the
cumulative average). An unknown key or a wrong type is an
:class:`~bncheck.errors.InvalidArgument` naming the key, the table and the file.

The file is found as pytest finds its rootdir: the nearest ``pyproject.toml`` in this directory
or a parent that has a ``[tool.bncheck]`` table; ``bncheck verify --config FILE.toml`` reads
another file.
"""

from __future__ import annotations

import inspect
import os
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bncheck.engine.declaration import SPECS, Declaration
from bncheck.errors import InvalidArgument
from bncheck.infra.validation import close_matches

__all__ = ["DeclaredTarget", "find_config", "read_config", "declared_targets",
           "declaration_for", "TABLE"]

#: How the tables are written (for messages).
TABLE = "[[tool.bncheck.targets]]"
_FILE = "pyproject.toml"


@dataclass(frozen=True)
class DeclaredTarget:
    """One ``[[tool.bncheck.targets]]`` table: its target and declaration, and where it is."""

    target: str
    declaration: Declaration
    file: Path
    index: int

    @property
    def where(self) -> str:
        """``[[tool.bncheck.targets]] #2 (target='layers.py:RenamedBN') of /path/pyproject.toml``"""
        return f"{TABLE} #{self.index} (target={self.target!r}) of {self.file}"

    @property
    def spec(self) -> str:
        """The target as this process imports it: a file path made relative to the current
        directory from the config file's directory (a ``module:Name`` stays as written)."""
        where, _, name = self.target.rpartition(":")
        if not _is_path(where):
            return self.target
        path = Path(where) if Path(where).is_absolute() else self.file.parent / where
        try:
            shown = os.path.relpath(path)
        except ValueError:  # another drive on Windows
            shown = str(path)
        return f"{shown}:{name}"

    def matches(self, target: str) -> bool:
        """Whether the TARGET a user typed names this table's target (as written, or the same
        file and name)."""
        if target == self.target or target == self.spec:
            return True
        where, _, name = target.rpartition(":")
        mine, _, my_name = self.spec.rpartition(":")
        return (name == my_name and _is_path(where) and _is_path(mine)
                and Path(where).resolve() == Path(mine).resolve())


def _is_path(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def find_config(start: Path | str | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` in ``start`` (default: the current directory) or a parent
    that has a ``[tool.bncheck]`` table; ``None`` when there is none."""
    here = Path.cwd() if start is None else Path(start)
    for folder in (here.resolve(), *here.resolve().parents):
        candidate = folder / _FILE
        if candidate.is_file():
            data = _load(candidate)
            if isinstance(data.get("tool"), dict) and "bncheck" in data["tool"]:
                return candidate
    return None


def read_config(path: Path | str) -> list[DeclaredTarget]:
    """Every ``[[tool.bncheck.targets]]`` table of the TOML file ``path``, checked.

    Raises:
        InvalidArgument: the file cannot be read or parsed, or a table has an unknown key, a
            value of the wrong type or breaking its rule (named with the table and the file).
    """
    file = Path(path)
    data = _load(file)
    tool = data.get("tool", {})
    section = tool.get("bncheck", {}) if isinstance(tool, dict) else {}
    if not isinstance(section, dict):
        raise InvalidArgument(f"Expected [tool.bncheck] to be a table in {file}, received "
                              f"{type(section).__name__}")
    unknown = [k for k in section if k != "targets"]
    if unknown:
        raise InvalidArgument(f"Unknown key {unknown[0]!r} in [tool.bncheck] of {file}; it "
                              f"holds only {TABLE} tables (one per target)")
    tables = section.get("targets", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise InvalidArgument(f"Expected tool.bncheck.targets in {file} to be tables written "
                              f"{TABLE}, received {type(tables).__name__}")
    return [_table(t, file, i) for i, t in enumerate(tables, 1)]


def _load(file: Path) -> dict[str, Any]:
    """``file`` parsed (a broken one is an error naming it, as pytest treats its rootdir's)."""
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgument(f"Expected a TOML file, received config={str(file)!r}: it does "
                              f"not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"Cannot read config={str(file)!r}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"{file} is not valid TOML: {e}") from None


def _table(table: dict[str, Any], file: Path, index: int) -> DeclaredTarget:
    target = table.get("target")
    where = f"{TABLE} #{index} (target={target!r}) of {file}"
    if not isinstance(target, str) or ":" not in target:
        raise InvalidArgument(f"Expected key 'target' in {where} to be a TARGET string like "
                              f"'layers.py:MyBN' or 'package.module:MyBN', received "
                              f"target={target!r}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "target":
            continue
        if key not in SPECS:
            close = close_matches(key, [*SPECS, "target"])
            raise InvalidArgument(f"Unknown key {key!r} in {where}"
                                  + (f"; did you mean {', '.join(close)}?" if close else "")
                                  + f" (keys: target, {', '.join(SPECS)})")
        try:
            values[key] = SPECS[key].check(value, key)
        except (InvalidArgument, TypeError) as e:
            raise InvalidArgument(f"Key {key!r} in {where}: {e}") from None
    return DeclaredTarget(target, Declaration(**values), file, index)


def declared_targets(config: Path | str | None = None, *, start: Path | str | None = None
                     ) -> list[DeclaredTarget]:
    """The tables of ``config``, or of the file :func:`find_config` finds from ``start``
    (none found: ``[]``)."""
    path = Path(config) if config is not None else find_config(start)
    return [] if path is None else read_config(path)


def declaration_for(target: str | Callable[..., Any], *, config: Path | str | None = None,
                    start: Path | str | None = None) -> Declaration:
    """The declaration of ``target`` in the config file (``config``, else the nearest
    ``pyproject.toml`` with a ``[tool.bncheck]`` table from ``start``, default the current
    directory), for :func:`bncheck.check_batchnorm` and the ``bncheck_verify`` fixture.

    ``target`` is a TARGET string, or the class or factory itself (matched by its file and
    name, or by ``module:Name``).

    >>> from bncheck import check_batchnorm                           # doctest: +SKIP
    >>> check_batchnorm(MyBN, declaration=declaration_for(MyBN))      # doctest: +SKIP

    Raises:
        InvalidArgument: no config file, a bad table, or no table names ``target`` (the
            message lists the declared targets).
    """
    tables = declared_targets(config, start=start)
    if not tables:
        raise InvalidArgument(f"Expected a {TABLE} table for target={_shown(target)} in "
                              + (f"config={str(config)!r}" if config is not None else
                                 f"the nearest {_FILE} with a [tool.bncheck] table, found none "
                                 f"from {Path(start or Path.cwd()).resolve()}"))
    names = _names(target)
    for table in tables:
        if any(table.matches(n) for n in names):
            return table.declaration
    raise InvalidArgument(f"Expected a {TABLE} table for target={_shown(target)} in "
                          f"{tables[0].file}; its tables declare "
                          f"{', '.join(t.target for t in tables)}")


def _shown(target: Any) -> str:
    return repr(target) if isinstance(target, str) else getattr(target, "__qualname__",
                                                                repr(target))


def _names(target: str | Callable[..., Any]) -> Sequence[str]:
    """TARGET strings that name ``target``."""
    if isinstance(target, str):
        return [target]
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", "")
    out = [f"{getattr(target, '__module__', '')}:{name}"]
    try:
        source = inspect.getsourcefile(target)
    except TypeError:
        source = None
    if source:
        out.append(f"{source}:{name}")
    return out
