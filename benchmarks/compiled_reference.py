"""The reference with its opt-in compiled path, as a ``bncheck verify`` target:

    bncheck verify benchmarks/compiled_reference.py:BatchNorm

Training mode runs ``torch.compile``-generated kernels (eval mode is the same code either way).
"""

from __future__ import annotations

import torch

import bncheck


class BatchNorm(bncheck.BatchNorm):
    """:class:`bncheck.BatchNorm` with ``compiled=True``; the same signature otherwise."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias, compiled=True)
