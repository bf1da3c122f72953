"""BatchNorms that never return for float16 inputs, for the watchdog tests: bncheck must stop
them, report where they were, and go on with the other properties.

Each is torch's BatchNorm2d except for float16 inputs (only ``reduced_precision`` draws them).
With ``BNCHECK_HANG_MARK=path`` set, the process writes its pid to that file before hanging.
"""

import ctypes
import os

import torch


def _mark():
    path = os.environ.get("BNCHECK_HANG_MARK")
    if path:
        with open(path, "w") as fh:
            fh.write(str(os.getpid()))


class LoopsOnFloat16(torch.nn.BatchNorm2d):
    """A pure-Python loop that never ends."""

    def forward(self, input):
        if input.dtype == torch.float16:
            _mark()
            while True:
                pass
        return super().forward(input)


def _deadlock():
    # ctypes.PyDLL keeps the GIL held during the call (ctypes.CDLL would release it), and a
    # default pthread mutex locked twice by its owner waits forever, through signals: a C call
    # that never returns and never lets another Python thread run.
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER (glibc)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)  # never returns


class BlocksInCOnFloat16(torch.nn.BatchNorm2d):
    """A C call that holds the GIL and never returns."""

    def forward(self, input):
        if input.dtype == torch.float16:
            _mark()
            _deadlock()
        return super().forward(input)


class LoopsInTraining(torch.nn.Module):
    """LeNet-BN's kind of BatchNorm (``BN(num_features, num_dims)``) whose training forward
    never ends (a pure-Python loop): for `bncheck export --bn` and `check --bn`."""

    def __init__(self, num_features, num_dims=4):
        super().__init__()
        self.inner = (torch.nn.BatchNorm2d if num_dims == 4 else torch.nn.BatchNorm1d)(
            num_features)

    def forward(self, input):
        if self.training:
            _mark()
            while True:
                pass
        return self.inner(input)
