# A cumulative-average BatchNorm as people write it: subclass nn.BatchNorm2d and pass
# momentum=None. Correct; declare it with check_batchnorm(CumulativeBN2d, momentum=None).
from torch import nn


class CumulativeBN2d(nn.BatchNorm2d):
    def __init__(self, n):
        super().__init__(n, momentum=None)
