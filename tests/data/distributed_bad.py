"""Synchronised BatchNorms that misbehave on one rank, for the watchdog tests.

Each is bncheck.SyncBatchNorm except on the named rank, in training.
"""

import os

import torch.distributed as dist

from bncheck import SyncBatchNorm


def _rank():
    return dist.get_rank() if dist.is_initialized() else 0


class DiesOnRank1(SyncBatchNorm):
    """Rank 1's process exits (as if killed by the OOM killer) in its first training forward."""

    def forward(self, input):
        if self.training and _rank() == 1:
            os._exit(7)
        return super().forward(input)


class WrongShapeOnRank1(SyncBatchNorm):
    """Rank 1 returns its output flattened to (N, -1)."""

    def forward(self, input):
        y = super().forward(input)
        return y.reshape(y.shape[0], -1)[:, :1] if _rank() == 1 and y.dim() > 1 else y


class RaisesOnRank0(SyncBatchNorm):
    """Rank 0 raises before the collective; the other ranks wait for it in vain."""

    def forward(self, input):
        if self.training and _rank() == 0:
            raise RuntimeError("rank 0 ran out of patience")
        return super().forward(input)
