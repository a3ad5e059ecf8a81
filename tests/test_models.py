"""Backbones and heads: shapes, torchvision key names, head layouts."""

import pytest
import torch
import torchvision
from torch import nn

from orl.models.backbones import build_backbone, feature_dim, global_pool
from orl.models.heads import MLP, MoCoHead, SimCLRHead


def test_backbone_returns_res5_map_and_loads_into_torchvision():
    bb = build_backbone("resnet18")
    assert feature_dim("resnet18") == 512 and feature_dim("resnet50") == 2048
    out = bb(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 512, 2, 2)
    assert global_pool(out).shape == (2, 512)
    res = torchvision.models.resnet18().load_state_dict(bb.state_dict(), strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys


def test_resnet50_keys_match_torchvision_without_fc():
    keys = set(build_backbone("resnet50").state_dict())
    tv = {k for k in torchvision.models.resnet50().state_dict() if not k.startswith("fc.")}
    assert keys == tv


def test_unknown_arch():
    with pytest.raises(ValueError, match="resnet50"):
        build_backbone("vgg16")


def test_heads_layout():
    mlp = MLP(8, 16, 4)
    assert [type(m) for m in mlp] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert mlp.fc1.bias is not None and mlp.fc2.bias is None  # no bias, no BN at the end
    moco = MoCoHead(8, 16, 4)
    assert [type(m) for m in moco] == [nn.Linear, nn.ReLU, nn.Linear] and moco.fc2.bias is not None
    simclr = SimCLRHead(8, 16, 4)
    assert [type(m) for m in simclr] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    for head in (mlp, moco, simclr):
        assert head(torch.randn(3, 8)).shape == (3, 4)
