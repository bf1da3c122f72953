"""The reference with its opt-in compiled path, as a ``bncheck verify`` target:

    bncheck verify benchmarks/compiled_reference.py:BatchNorm

Training mode runs ``torch.compile``-generated kernels (eval mode is the same code either way).
"""

import functools

import bncheck

BatchNorm = functools.partial(bncheck.BatchNorm, compiled=True)
