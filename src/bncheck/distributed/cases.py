"""Distributed cases: a drawn global batch, its split over ranks, and the process groups.

>>> from hypothesis import given
>>> from bncheck.distributed.cases import splits
>>> @given(splits(5, 3, min_size=1))
... def test_sizes(sizes):
...     assert sum(sizes) == 5 and len(sizes) == 3 and min(sizes) >= 1

A :class:`SyncCase` holds one single-process :class:`~bncheck.engine.strategies.BNCase` (the global
batch, dtype, configuration, weight and bias, drawn by :mod:`bncheck.engine.strategies`) plus the
per-rank batch sizes and the blocks of ranks that synchronise together. Rank ``r`` receives
rows ``sum(sizes[:r]) .. sum(sizes[:r+1])``; a block's batch is its ranks' rows in rank order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import Tensor

from bncheck.engine.strategies import BNCase
from bncheck.errors import InvalidArgument
from bncheck.infra.validation import check_min_max, check_positive_int, check_type

__all__ = ["SyncCase", "splits", "splits_with_empty"]


@dataclass(frozen=True)
class SyncCase:
    """A global batch split over ranks; ``blocks`` are the process groups (rank tuples)."""

    case: BNCase
    sizes: tuple[int, ...]
    blocks: tuple[tuple[int, ...], ...]
    stats: tuple[Tensor, Tensor] | None = None

    @property
    def world_size(self) -> int:
        return len(self.sizes)

    def rank_inputs(self, t: Tensor | None = None) -> list[Tensor]:
        """``t`` (default: the global input) split into each rank's rows."""
        t = self.case.x if t is None else t
        return list(torch.split(t, list(self.sizes), dim=0))

    def block_rows(self, block: tuple[int, ...], t: Tensor | None = None) -> Tensor:
        """The rows of ``block``'s ranks, concatenated in rank order."""
        parts = self.rank_inputs(t)
        return torch.cat([parts[r] for r in block], dim=0)

    def group_of(self, rank: int) -> tuple[int, ...]:
        return next(b for b in self.blocks if rank in b)

    def describe(self) -> str:
        text = (f"world_size={self.world_size}, split per rank={list(self.sizes)} "
                f"(global batch {sum(self.sizes)})")
        if len(self.blocks) > 1:
            text += f", process groups={[list(b) for b in self.blocks]}"
        text += ", " + self.case.describe()
        if self.stats is not None:
            def show(t: Tensor) -> str:
                return str([float(f"{v:.6g}") for v in t.tolist()])
            text += (f", installed running_mean={show(self.stats[0])}, "
                     f"running_var={show(self.stats[1])}")
        return text


def _check_split(total: int, parts: int, min_size: int) -> None:
    check_type(int, total, "total")
    check_positive_int(parts, "parts")
    check_type(int, min_size, "min_size")
    if min_size < 0 or total < 0:
        raise InvalidArgument(f"Expected total >= 0 and min_size >= 0, received total={total}, "
                              f"min_size={min_size}")
    check_min_max("parts * min_size", parts * min_size, "total", total)


def splits(total: int, parts: int, *, min_size: int = 0) -> st.SearchStrategy[tuple[int, ...]]:
    """Sizes of ``parts`` consecutive pieces of a batch of ``total`` rows, each at least
    ``min_size``. Shrinks toward everything past ``min_size`` on the last piece."""
    _check_split(total, parts, min_size)
    rest = total - parts * min_size
    cuts = st.lists(st.integers(0, rest), min_size=parts - 1, max_size=parts - 1)

    def sizes(points: list[int]) -> tuple[int, ...]:
        edges = [0, *sorted(points), rest]
        return tuple(min_size + b - a for a, b in zip(edges, edges[1:], strict=False))
    return cuts.map(sizes)


def splits_with_empty(total: int, parts: int) -> st.SearchStrategy[tuple[int, ...]]:
    """Like :func:`splits` with ``min_size=0``, but at least one piece is empty (drawn where)."""
    if parts < 2:
        raise InvalidArgument(f"Expected parts >= 2 (one empty, one not), received parts={parts}")
    _check_split(total, parts, 0)
    return st.tuples(splits(total, parts - 1), st.integers(0, parts - 1)).map(
        lambda t: (*t[0][:t[1]], 0, *t[0][t[1]:]))
