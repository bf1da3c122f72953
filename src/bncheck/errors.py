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
    "PropertyFailure",
    "TargetRaised",
    "TargetHung",
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


class PropertyFailure(BNCheckError, AssertionError):
    """A property does not hold for one drawn case; the message is the mismatch report.

    Raised inside a property run and turned into a failed result by :func:`bncheck.verify.verify`;
    it is a finding about the target, not an error of bncheck.
    """


class TargetRaised(PropertyFailure):
    """The target's own code raised while a property exercised it (message: where, and what)."""


class TargetHung(TargetRaised):
    """The target's code did not return within the time limit (bncheck stopped the process it
    ran in); the message says how long, what was running, and where in the user's code."""
