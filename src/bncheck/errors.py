"""bncheck's error hierarchy: everything bncheck raises on purpose derives from BNCheckError.

Argument errors also derive from ``ValueError`` or ``TypeError`` so that callers can catch them
the usual way; the CLI maps :class:`UsageError` subclasses to exit code 2 and
:class:`VerificationFailed` to exit code 1.
"""

from __future__ import annotations

__all__ = [
    "BNCheckError",
    "UsageError",
    "InvalidArgument",
    "InvalidArgumentType",
    "TargetError",
    "OutputError",
    "VerificationFailed",
]


class BNCheckError(Exception):
    """Root of every error bncheck raises on purpose."""


class UsageError(BNCheckError):
    """The caller asked for something bncheck cannot do (CLI exit code 2)."""


class InvalidArgument(UsageError, ValueError):
    """An argument has the right type but a value outside its rule: ``name=value`` and the rule."""


class InvalidArgumentType(UsageError, TypeError):
    """An argument has the wrong type: ``name=value`` and the type expected."""


class TargetError(UsageError):
    """A verification TARGET could not be imported, found, or built."""


class OutputError(InvalidArgument):
    """An output file cannot be written where it was asked for (missing or read-only folder,
    a directory in its place); raised before any work where possible."""


class VerificationFailed(BNCheckError, AssertionError):
    """A verified object broke a property; the message is the full mismatch report."""
