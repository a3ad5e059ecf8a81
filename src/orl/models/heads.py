"""Projection / prediction heads of BYOL (and ORL), MoCo v2 and SimCLR."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


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


class SimCLRHead(MLP):
    """SimCLR projection head: Linear -> BN1d -> ReLU -> Linear(bias) (2048 -> 2048 -> 128 at paper scale)."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, last_bias=True)
