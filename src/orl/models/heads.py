"""Projection / prediction heads of BYOL (and ORL), MoCo v2 and SimCLR, initialised as the authors' necks."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def init_as_authors(module: nn.Module) -> nn.Module:
    """The authors' neck init (OpenSelfSup `_init_weights(init_linear='kaiming')`); returns `module`.

    Linear: weight ~ N(0, 2 / fan_in) (mmcv kaiming_init, mode fan_in, relu, normal), bias 0; BatchNorm: weight 1,
    bias 0. BYOL, ORL, MoCo v2 and SimCLR all call it with 'kaiming' on their projectors and predictors.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class MLP(nn.Sequential):
    """BYOL/ORL projector or predictor: Linear(bias) -> BN1d -> ReLU -> Linear(no bias), no BN at the end."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256, last_bias: bool = False) -> None:
        super().__init__(
            OrderedDict(
                fc1=nn.Linear(in_dim, hidden_dim, bias=True),
                bn1=nn.BatchNorm1d(hidden_dim),
                relu=nn.ReLU(inplace=True),
                fc2=nn.Linear(hidden_dim, out_dim, bias=last_bias),
            )
        )
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        init_as_authors(self)


class MoCoHead(nn.Sequential):
    """MoCo v2 MLP head: Linear(bias) -> ReLU -> Linear(bias) (2048 -> 2048 -> 128 at paper scale), no BN."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> None:
        super().__init__(
            OrderedDict(
                fc1=nn.Linear(in_dim, hidden_dim),
                relu=nn.ReLU(inplace=True),
                fc2=nn.Linear(hidden_dim, out_dim),
            )
        )
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        init_as_authors(self)


class SimCLRHead(nn.Sequential):
    """SimCLR head as the authors' COCO config (NonLinearNeckSimCLR, fc0_bias False): Linear -> BN -> ReLU -> Linear -> BN.

    Neither Linear has a bias (each is followed by BN); the last BN is affine, as in OpenSelfSup (the SimCLR code
    keeps only its bias there). 2048 -> 2048 -> 128 at paper scale.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> None:
        super().__init__(
            OrderedDict(
                fc1=nn.Linear(in_dim, hidden_dim, bias=False),
                bn1=nn.BatchNorm1d(hidden_dim),
                relu=nn.ReLU(inplace=True),
                fc2=nn.Linear(hidden_dim, out_dim, bias=False),
                bn2=nn.BatchNorm1d(out_dim),
            )
        )
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        init_as_authors(self)
