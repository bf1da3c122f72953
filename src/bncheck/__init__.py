"""bncheck: property-based verification for batch normalization.

>>> import torch, bncheck
>>> bncheck.check_batchnorm(torch.nn.BatchNorm1d, properties=["train_forward"], examples=3).ok
True
"""

from typing import TYPE_CHECKING, Any

from bncheck._version import __version__
from bncheck.engine.config import declaration_for
from bncheck.engine.declaration import Declaration
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
    from bncheck.engine.runner import check_batchnorm, verify
    from bncheck.reference import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, batch_norm


def __getattr__(name: str) -> Any:
    # Everything that imports torch or Hypothesis is imported on first use, so that
    # `import bncheck` (and the `bncheck` command before it parses its arguments, where Ctrl-C
    # must already exit 130) stays light. `bncheck.verify` is the function
    # bncheck.engine.runner.verify (no submodule shares its name).
    if name in _REFERENCE:
        import bncheck.reference as reference

        return getattr(reference, name)
    if name == "verify":
        from bncheck.engine.runner import verify

        return verify
    if name == "SyncBatchNorm":  # the distributed package: loaded when first used
        from bncheck.distributed import SyncBatchNorm

        return SyncBatchNorm
    if name == "check_batchnorm":
        from bncheck.engine.runner import check_batchnorm

        return check_batchnorm
    raise AttributeError(f"module 'bncheck' has no attribute {name!r}")
