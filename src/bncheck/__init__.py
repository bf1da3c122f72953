"""bncheck: property-based verification for batch normalization.

>>> import torch, bncheck
>>> bncheck.check_batchnorm(torch.nn.BatchNorm1d, properties=["train_forward"], examples=3).ok
True
"""

from bncheck._version import __version__
from bncheck.errors import (
    BNCheckError,
    InvalidArgument,
    InvalidArgumentType,
    OutputError,
    PropertyFailure,
    TargetError,
    UsageError,
    VerificationFailed,
)
from bncheck.reference import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, batch_norm

__all__ = [
    "__version__",
    "verify",
    "check_batchnorm",
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "batch_norm",
    "SyncBatchNorm",
    "BNCheckError",
    "UsageError",
    "InvalidArgument",
    "InvalidArgumentType",
    "TargetError",
    "OutputError",
    "VerificationFailed",
    "PropertyFailure",
]


def __getattr__(name: str) -> object:
    # verify and check_batchnorm pull in Hypothesis: imported on first use so that
    # `import bncheck` stays light. `bncheck.verify` is the module bncheck.verify, which is
    # callable as its function verify() (so that importing the submodule, which binds the
    # package attribute to the module, changes nothing for the caller).
    if name == "verify":
        import bncheck.verify as module

        return module
    if name == "SyncBatchNorm":  # the distributed package: loaded when first used
        from bncheck.distributed import SyncBatchNorm

        return SyncBatchNorm
    if name == "check_batchnorm":
        from bncheck.verify import check_batchnorm

        return check_batchnorm
    raise AttributeError(f"module 'bncheck' has no attribute {name!r}")
