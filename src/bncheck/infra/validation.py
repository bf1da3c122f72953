"""Small shared argument checkers; each message names ``name=value`` and the rule broken."""

from __future__ import annotations

import difflib
import enum
import math
from collections.abc import Iterable
from typing import Any, Final, Literal

from bncheck.errors import InvalidArgument, InvalidArgumentType


class _NotSet(enum.Enum):
    NOT_SET = "not_set"

    def __repr__(self) -> str:
        return "not_set"


#: "Not given" for arguments where ``None`` is itself meaningful (``momentum=None`` is PyTorch's
#: cumulative average), as Hypothesis's ``not_set``: ``momentum: float | None | NotSet = not_set``.
not_set: Final = _NotSet.NOT_SET
NotSet = Literal[_NotSet.NOT_SET]


#: Seconds one example may take in single-process verification (``verify``, ``mutants``,
#: ``train``'s verify and export steps, the Python API's ``timeout``) before the target counts
#: as hung. The one place this default is decided.
DEFAULT_TIMEOUT: Final = 60.0
#: Seconds one case may take on a rank (``--world-size``, ``verify_distributed``): every rank
#: runs tiny tensors in milliseconds; a collective that never completes takes forever.
RANK_TIMEOUT: Final = 10.0
#: The longest time limit accepted (seconds, about 11.6 days): the operating system's waits take
#: milliseconds as a C int (``poll``: at most 2**31 - 1 ms, 24.8 days), and a longer limit
#: means "none" anyway.
MAX_TIMEOUT: Final = 1e6


def check_timeout(timeout: Any, name: str = "timeout") -> None:
    """``timeout`` is a positive, finite number of seconds, or ``None`` (the Python API's "no
    worker process, no limit"; the CLI has no such value)."""
    if timeout is not None:
        check_finite_float(timeout, name, min_value=0.0, exclude_min=True,
                           max_value=MAX_TIMEOUT)


def default_timeout(timeout: float | None, *, ranks: bool) -> float:
    """The CLI's ``--timeout``: the seconds given, else :data:`RANK_TIMEOUT` with ranks and
    :data:`DEFAULT_TIMEOUT` without (so no ``None`` reaches the library from the CLI)."""
    check_timeout(timeout)
    if timeout is not None:
        return timeout
    return RANK_TIMEOUT if ranks else DEFAULT_TIMEOUT


def describe(value: Any) -> str:
    """A short, readable rendering of a received value for error messages."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(value).__name__}(shape={tuple(shape)}, dtype={dtype})"
    return repr(value)


def check_type(typ: type | tuple[type, ...], value: Any, name: str) -> None:
    if isinstance(value, bool) and typ in (int, float, (int, float)):
        raise InvalidArgumentType(f"{name}={value!r} must be a number, not a bool")
    if not isinstance(value, typ):
        names = (
            " or ".join(t.__name__ for t in typ) if isinstance(typ, tuple) else typ.__name__
        )
        raise InvalidArgumentType(
            f"Expected {name} to be {names}, but received {name}={describe(value)} "
            f"of type {type(value).__name__}"
        )


def check_positive_int(value: Any, name: str) -> None:
    check_type(int, value, name)
    if value < 1:
        raise InvalidArgument(
            f"Expected {name} to be a positive integer, received {name}={value!r}")


def check_finite_float(value: Any, name: str, *, min_value: float | None = None,
                       max_value: float | None = None, exclude_min: bool = False) -> None:
    check_type((int, float), value, name)
    if not math.isfinite(value):
        raise InvalidArgument(f"Expected {name} to be finite, received {name}={value!r}")
    if min_value is not None and (value < min_value or (exclude_min and value == min_value)):
        op = ">" if exclude_min else ">="
        raise InvalidArgument(f"Expected {name} {op} {min_value}, received {name}={value!r}")
    if max_value is not None and value > max_value:
        raise InvalidArgument(f"Expected {name} <= {max_value}, received {name}={value!r}")


def check_min_max(min_name: str, min_value: int | float, max_name: str,
                  max_value: int | float) -> None:
    if min_value > max_value:
        raise InvalidArgument(
            f"Cannot have {max_name}={max_value!r} < {min_name}={min_value!r}"
        )


def check_momentum(momentum: Any, *, allow_none: bool, name: str = "momentum") -> None:
    if momentum is None:
        if allow_none:
            return
        raise InvalidArgumentType(
            f"Expected {name} to be a float in [0, 1], received {name}=None "
            "(None means a cumulative average, which only the BatchNorm module can keep)"
        )
    check_finite_float(momentum, name, min_value=0.0, max_value=1.0)


def check_eps(eps: Any, name: str = "eps", *, training: bool = True) -> None:
    """The one rule for ``eps``, as torch 2.13's ``F.batch_norm`` applies it: a finite number,
    ``>= 0``, and ``> 0`` where batch statistics are normalized (``training``: a constant
    channel has variance 0, so ``eps=0`` would divide by zero)."""
    check_finite_float(eps, name, min_value=0.0)
    if training and eps == 0:
        raise InvalidArgument(
            f"Expected {name} > 0.0, received {name}={eps!r} (training normalizes with batch "
            f"statistics, and a constant channel has variance 0)")


def close_matches(name: str, choices: Iterable[str], *, cutoff: float = 0.75) -> list[str]:
    """Up to three of ``choices`` close to ``name`` (difflib; a case-insensitive match first)."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=cutoff)
    same = [c for c in choices if c.lower() == name.lower() and c not in close]
    return (same + close)[:3]


def unknown_name(kind: str, name: str, available: Iterable[str]) -> InvalidArgument:
    """``Unknown kind='name'; did you mean ...? available: ...`` as an error to raise."""
    available = list(available)
    close = close_matches(name, available)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return InvalidArgument(f"Unknown {kind}={name!r}; {hint}available: {', '.join(available)}")


def check_names(value: Any, name: str) -> tuple[str, ...]:
    """``value`` is a list or tuple of strings (not one string, whose letters would be taken
    one by one); returns it as a tuple."""
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple) or \
            not all(isinstance(v, str) for v in value):
        raise InvalidArgumentType(f"Expected {name} to be a list of names, received "
                                  f"{name}={describe(value)}"
                                  + (f" (write {name}=[{value!r}])" if isinstance(value, str)
                                     else ""))
    return tuple(value)
