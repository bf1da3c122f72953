"""The top-level ``bncheck`` group. Subcommands live one per module and are imported lazily,
so ``bncheck --help`` stays fast and a subcommand's heavy imports happen only when it runs."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click

from bncheck._version import __version__

# name -> "module:attribute" of the click command.
_COMMANDS: dict[str, str] = {
    "verify": "bncheck.cli._verify:verify",
    "mutants": "bncheck.cli._mutants:mutants",
    "export": "bncheck.cli._export:export",
    "check": "bncheck.cli._check:check",
    "gate": "bncheck.cli._gate:gate",
    "train": "bncheck.cli._train:train",
    "bench": "bncheck.cli._bench:bench",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in _COMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        module = _COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS or not self._available(name):
            return None
        module, attr = _COMMANDS[name].split(":")
        command: Any = getattr(importlib.import_module(module), attr)
        return command  # type: ignore[no-any-return]


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="bncheck")
def main() -> None:
    """bncheck: property-based verification for batch normalization.

    Run `bncheck COMMAND --help` for each command's options.
    """
