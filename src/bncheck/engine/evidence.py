"""When a verification counts as passed: one rule, one place.

>>> from bncheck.engine.evidence import verdict
>>> verdict(passed=3, failed=0).code, verdict(passed=0, failed=0).code
(0, 2)

A verification tool's one unforgivable answer is "passed" when nothing was checked. Every
command that verifies (``verify``, ``check``, ``gate``, ``train``'s verify step) and every
report's ``ok`` come here: a run passes only when the named target was loaded (it reached a
report at all), at least one check ran and passed, and none failed. A run that checked nothing
(every property skipped, no output compared) is a usage error: what was asked cannot be
verified, and the message says why.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Verdict", "verdict", "EXIT_OK", "EXIT_FAILED", "EXIT_NOTHING_VERIFIED"]

EXIT_OK, EXIT_FAILED, EXIT_NOTHING_VERIFIED = 0, 1, 2


@dataclass(frozen=True)
class Verdict:
    """A run's outcome: ``ok`` (evidence that it passes), its exit code, and why not ok."""

    ok: bool
    code: int
    reason: str


def verdict(*, passed: int, failed: int, skipped: str = "") -> Verdict:
    """The outcome of a run in which ``passed`` checks passed and ``failed`` failed.

    Args:
        passed: checks that ran and passed (properties, compared outputs).
        failed: checks that failed or errored.
        skipped: why the others did not run, for the message when nothing ran.
    """
    if failed:
        return Verdict(False, EXIT_FAILED, f"{failed} failed")
    if passed < 1:
        why = f" ({skipped})" if skipped else ""
        return Verdict(False, EXIT_NOTHING_VERIFIED,
                       f"nothing was verified: no check ran{why}; bncheck exits 0 only when at "
                       f"least one ran and passed. Ask for properties, dtypes or outputs that "
                       f"apply to this target")
    return Verdict(True, EXIT_OK, "")
