"""The ``bncheck`` command line: a thin layer that parses, calls the library and renders."""

from bncheck.cli._app import main

__all__ = ["main"]
