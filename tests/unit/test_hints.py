"""Every hint that names a flag or a declaration names one that is accepted (issue 16): the
source's string literals are walked for ``--option`` names and for ``--fixed``/``--names``
keys, and the preflight's generated hints are produced by layers that trigger them and parsed
back as the user would type them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import pytest
import torch
from torch import nn

import bncheck
from bncheck.cli._app import _COMMANDS, main
from bncheck.engine.declaration import FLAG_TYPES, NAME_KEYS, SPECS, Declaration
from bncheck.engine.preflight import preflight
from bncheck.engine.runner import build_target

SRC = Path(bncheck.__file__).parent
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
KEYED = re.compile(r"(?<![\w-])--(fixed|names)[ =]'?([a-z_]+)=")
PY_KEYED = re.compile(r"\b(fixed|names)=\{\{?'?\"?([a-z_]+)")
#: Flags of other programs that bncheck's texts name (as commands to run).
FOREIGN = {"--onnxrt", "--load-inputs", "--load-outputs", "--save-inputs", "--save-outputs",
           "--update-baseline", "--xla"}  # --xla_*: XLA_FLAGS (frameworks/flax_sync.py)


def _options(command: click.Command) -> set[str]:
    return {o for p in command.params if isinstance(p, click.Option)
            for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


def _pytest_options() -> set[str]:
    """The options bncheck's pytest plugin adds to ``pytest`` (its texts name them too)."""
    from _pytest.config.argparsing import Parser

    from bncheck import pytest_plugin

    parser = Parser(_ispytest=True)  # the plugin's pytest_addoption, as pytest calls it
    pytest_plugin.pytest_addoption(parser)
    return {o for group in parser._groups for option in group.options
            for o in option.names() if o.startswith("--")}


def accepted() -> set[str]:
    ctx = click.Context(main)
    out = {"--help", "--version"} | _pytest_options()
    for name in _COMMANDS:
        command = main.get_command(ctx, name)
        if command is not None:
            out |= _options(command)
    return out


def _texts() -> list[tuple[str, str]]:
    """Every string literal in bncheck's source (f-strings by their literal parts)."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.append((f"{path.relative_to(SRC)}:{node.lineno}", node.value))
    return out


def test_every_flag_a_text_names_is_an_option_of_some_command():
    known = accepted() | FOREIGN
    named = {(flag, where) for where, text in _texts() for flag in FLAG.findall(text)}
    assert len(named) > 100  # the walk sees the texts
    wrong = sorted((flag, where) for flag, where in named if flag not in known)
    assert not wrong, f"texts name flags no command accepts: {wrong}"


def test_every_declaration_key_a_text_names_is_accepted():
    from bncheck.frameworks import all_flag_types  # Flax's flags too (--framework flax-*)

    keys = {"fixed": set(FLAG_TYPES) | set(all_flag_types()), "names": set(NAME_KEYS)}
    seen = []
    for where, text in _texts():
        for pattern in (KEYED, PY_KEYED):
            for kind, key in pattern.findall(text):
                seen.append((kind, key))
                assert key in keys[kind], f"{where}: {kind} key {key!r} is not accepted: {text!r}"
    assert ("fixed", "track_running_stats") in seen  # the walk reaches the hints


def test_every_declaration_option_is_a_verify_option_and_a_config_key():
    verify = main.get_command(click.Context(main), "verify")
    assert {s.option for s in SPECS.values()} <= _options(verify)
    assert all(s.key == s.option.removeprefix("--").replace("-", "_") for s in SPECS.values())


class _NoneMomentumForwardFails(nn.BatchNorm1d):
    """Takes momentum=None in its constructor, but its forward cannot use it."""

    def forward(self, x):
        if self.momentum is None:
            raise ValueError("momentum must be a number")
        return super().forward(x)


class _NoUnaffine(nn.BatchNorm1d):
    def __init__(self, num_features, affine=True, **kwargs):
        if not affine:
            raise ValueError("affine=False is not supported")
        super().__init__(num_features, affine=affine, **kwargs)


class _UntrackedForwardFails(nn.BatchNorm1d):
    def forward(self, x):
        if not self.track_running_stats:
            raise RuntimeError("needs running statistics")
        return super().forward(x)


@pytest.mark.parametrize("layer,flag", [(_NoneMomentumForwardFails, "momentum"),
                                        (_NoUnaffine, "affine"),
                                        (_UntrackedForwardFails, "track_running_stats")])
def test_the_preflights_hints_parse_as_typed(layer, flag):
    _, findings, _ = preflight(build_target(layer))
    (finding,) = [f for f in findings if f.flag == flag]
    flags = FLAG.findall(finding.message)
    assert set(flags) <= accepted(), finding.message
    for text in re.findall(r"--fixed (\S+?)\)", finding.message):
        Declaration.from_cli({"fixed": text})  # raises if the hint is refused
    for text in re.findall(r"--momentum (\S+?)[,)]", finding.message):
        Declaration.from_cli({"momentum": text})
    if flag == "momentum":
        assert "--fixed" not in finding.message, finding.message


def test_the_walk_catches_a_refused_hint():
    # The example: a hint naming --fixed momentum=true, which --fixed refuses.
    with pytest.raises(Exception, match="fixed keys from"):
        Declaration.from_cli({"fixed": "momentum=true"})
    assert KEYED.findall("declare it (--fixed momentum=true)") == [("fixed", "momentum")]
    assert "momentum" not in FLAG_TYPES and torch.nn  # the key check above would flag it
