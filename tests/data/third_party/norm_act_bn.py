"""A norm+activation block in the style of timm's ``timm/layers/norm_act.py`` (``BatchNormAct2d``:
a ``nn.BatchNorm2d`` subclass whose forward applies an activation after the normalization),
shortened to what matters here. It is not a plain BatchNorm: bncheck must say the output is an
activation of the BatchNorm's, not report bare numbers."""

from torch import nn


class BatchNormAct2d(nn.BatchNorm2d):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, apply_act=True, act_layer=nn.ReLU):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats)
        self.act = act_layer() if apply_act else nn.Identity()

    def forward(self, x):
        return self.act(super().forward(x))


class BatchNormSiLU2d(BatchNormAct2d):
    def __init__(self, num_features, **kwargs):
        super().__init__(num_features, act_layer=nn.SiLU, **kwargs)


def without_activation(num_features, **kwargs):
    """The same block with its activation off: a plain BatchNorm2d."""
    return BatchNormAct2d(num_features, apply_act=False, **kwargs)
