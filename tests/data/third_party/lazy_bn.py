# torch's own LazyBatchNorm2d, as people use it: num_features inferred at the first call, here
# returned by a factory that ignores the channel count (the class itself takes no num_features
# either: bncheck builds it as LazyBatchNorm2d(eps=..., momentum=...) once it is declared so).
# Correct; verify with --dims 4.
import torch


def lazy_bn(num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
    return torch.nn.LazyBatchNorm2d(eps=eps, momentum=momentum, affine=affine,
                                    track_running_stats=track_running_stats)
