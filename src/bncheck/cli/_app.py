"""The top-level ``bncheck`` group. Subcommands live one per module and are imported lazily,
so ``bncheck --help`` stays fast and a subcommand's heavy imports happen only when it runs."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator
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
    "scan": "bncheck.cli._scan:scan",
}


@contextlib.contextmanager
def _ctrl_c_exits() -> Iterator[None]:
    """Ctrl-C outside a command's own handling (parsing, importing the command): exit 130 with
    one line, not click's "Aborted!" and exit 1."""
    try:
        yield
    except KeyboardInterrupt:
        if "--debug" in sys.argv[1:]:  # a command's --debug: the traceback it asked for
            raise
        from bncheck.cli._common import EXIT_INTERRUPTED, err

        err("interrupted (Ctrl-C) before the command started; nothing was done")
        sys.exit(EXIT_INTERRUPTED)


class _LazyGroup(click.Group):
    def make_context(self, info_name: str | None, args: list[str], *rest: Any,
                     **kwargs: Any) -> click.Context:
        # A shell cannot pass a NUL byte, but a caller of main() can; paths would then fail
        # deep inside os.stat (found by fuzz/fuzz_cli.py).
        bad = next((a for a in args if "\x00" in a), None)
        if bad is not None:
            from bncheck.cli._common import EXIT_USAGE, err

            err(f"Expected arguments without NUL bytes, received {bad!r}")
            sys.exit(EXIT_USAGE)
        with _ctrl_c_exits():
            return super().make_context(info_name, args, *rest, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _ctrl_c_exits():
            return super().invoke(ctx)

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
