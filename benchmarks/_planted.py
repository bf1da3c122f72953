"""A benchmark-only copy of the reference with a real, planted slowdown.

``BNCHECK_BENCH_PLANT=extra-pass nox -s bench -- --gate`` times this instead of
:func:`bncheck.batch_norm`, to show that the gate fails on a slowdown: the copy makes one extra
full-size elementwise pass over the input (and so one more in the backward) before the real work.
Nothing outside ``benchmarks/`` uses it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

import bncheck

PLANTS = ("extra-pass",)


def slowed_batch_norm(input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """:func:`bncheck.batch_norm` after a planted extra pass over ``input``."""
    return bncheck.batch_norm(input.mul(1.0), *args, **kwargs)
