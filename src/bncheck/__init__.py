"""bncheck: property-based verification for batch normalization."""

from bncheck._version import __version__
from bncheck.errors import BNCheckError, InvalidArgument, VerificationFailed
from bncheck.models import lenet_bn
from bncheck.reference import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, batch_norm

__all__ = [
    "__version__",
    "BNCheckError",
    "InvalidArgument",
    "VerificationFailed",
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "batch_norm",
    "lenet_bn",
    "check_batchnorm",
    "SyncBatchNorm",
]


def __getattr__(name: str) -> object:
    # check_batchnorm pulls in Hypothesis: imported on first use so `import bncheck` stays light.
    if name == "check_batchnorm":
        from bncheck.verify import check_batchnorm

        return check_batchnorm
    if name == "SyncBatchNorm":  # the distributed package: loaded when first used
        from bncheck.distributed import SyncBatchNorm

        return SyncBatchNorm
    raise AttributeError(f"module 'bncheck' has no attribute {name!r}")
