"""Distributed BatchNorm: the reference :class:`SyncBatchNorm` and its verification over
``torch.distributed`` (gloo on 127.0.0.1 by default).

>>> from bncheck.distributed import SyncBatchNorm
>>> SyncBatchNorm(4)
SyncBatchNorm(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
"""

from bncheck.distributed.sync_batchnorm import SyncBatchNorm

__all__ = ["SyncBatchNorm"]
