"""BatchNorms that never return for float16 inputs, for the watchdog tests: bncheck must stop
them, report where they were, and go on with the other properties.

Each is torch's BatchNorm1d/2d except for float16 inputs (only ``reduced_precision`` draws them).
"""

import ctypes

import torch


class LoopsOnFloat16(torch.nn.BatchNorm2d):
    """A pure-Python loop that never ends."""

    def forward(self, input):
        while input.dtype == torch.float16:
            pass
        return super().forward(input)


def _deadlock():
    # ctypes.PyDLL keeps the GIL held during the call (ctypes.CDLL would release it), and a
    # default pthread mutex locked twice by its owner waits forever, through signals: a C call
    # that never returns and never lets another Python thread run.
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER (glibc)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)


class BlocksInCOnFloat16(torch.nn.BatchNorm2d):
    """A C call that holds the GIL and never returns."""

    def forward(self, input):
        if input.dtype == torch.float16:
            _deadlock()
        return super().forward(input)
