"""bncheck: property-based verification for batch normalization.

>>> import torch, bncheck
>>> bncheck.check_batchnorm(torch.nn.BatchNorm1d, properties=["train_forward"], examples=3).ok
True
"""

from typing import TYPE_CHECKING, Any

from bncheck._version import __version__
from bncheck.config import declaration_for
from bncheck.declaration import Declaration
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

__all__ = [
    "__version__",
    "verify",
    "check_batchnorm",
    "Declaration",
    "declaration_for",
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


_REFERENCE = ("BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "batch_norm")

if TYPE_CHECKING:  # what mypy and pyright see; at run time __getattr__ imports them on first use
    from bncheck.distributed.sync_batchnorm import SyncBatchNorm
    from bncheck.reference import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, batch_norm
    from bncheck.verify import check_batchnorm, verify


def __getattr__(name: str) -> Any:
    # Everything that imports torch or Hypothesis is imported on first use, so that
    # `import bncheck` (and the `bncheck` command before it parses its arguments, where Ctrl-C
    # must already exit 130) stays light. `bncheck.verify` is the module bncheck.verify, which
    # is callable as its function verify() (so that importing the submodule, which binds the
    # package attribute to the module, changes nothing for the caller).
    if name in _REFERENCE:
        import bncheck.reference as reference

        return getattr(reference, name)
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
