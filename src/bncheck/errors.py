"""bncheck's error hierarchy, every exception class bncheck defines in one module: everything
bncheck raises on purpose derives from BNCheckError (two internal signals excepted:
:class:`WorkerDied` and :class:`RankAbort`).

Argument errors also derive from ``ValueError`` or ``TypeError`` so that callers can catch them
the usual way; the CLI maps :class:`UsageError` subclasses to exit code 2, a failed check of the
user's code (:class:`VerificationFailed`, :class:`ExportFailed`) to exit code 1.
"""

from __future__ import annotations

from typing import Any

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
    "ExportFailed",
    "ModelFileError",
    "DataError",
    "TrainingDiverged",
    "RankFailure",
    "RankAbort",
    "WorkerDied",
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

    Raised inside a property run and turned into a failed result by
    :func:`bncheck.engine.runner.verify`;
    it is a finding about the target, not an error of bncheck.
    """


class TargetRaised(PropertyFailure):
    """The target's own code raised while a property exercised it (message: where, and what)."""


class TargetHung(TargetRaised):
    """The target's code did not return within the time limit (bncheck stopped the process it
    ran in); the message says how long, what was running, and where in the user's code."""


class ExportFailed(BNCheckError):
    """torch.onnx.export raised: the model cannot be exported as asked (a finding about the
    user's model, CLI exit code 1, not a usage error)."""


class ModelFileError(UsageError):
    """The file is not a valid ONNX model, or not one with the input signature expected."""


class DataError(InvalidArgument):
    """A data directory or IDX file is missing or malformed; the message names the file."""


class TrainingDiverged(BNCheckError):
    """The training loss became NaN or infinite, or far above the untrained model's loss."""

    def __init__(self, message: str, *, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step


class RankFailure(BNCheckError):
    """Some ranks died, hung or raised: ``failures`` maps each such rank to the reason."""

    def __init__(self, failures: dict[int, str]) -> None:
        self.failures = dict(failures)  # died, then raised, then hung: the likely cause first
        super().__init__("; ".join(f"rank {r}: {why}" for r, why in self.failures.items()))


class RankAbort(BaseException):
    """A rank died, hung or raised: ends the distributed property at once (not shrunk: every
    rerun needs fresh processes). A ``BaseException`` so that Hypothesis lets it through
    unshrunk; ``case`` is the :class:`~bncheck.distributed.cases.SyncCase` it ran."""

    def __init__(self, message: str, case: Any) -> None:
        super().__init__(message)
        self.case = case


class WorkerDied(Exception):
    """The worker process exited (or closed its pipe) instead of answering (an internal signal
    the watchdog turns into a result)."""
