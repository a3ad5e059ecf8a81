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
    # The authors' NonLinearNeckSimCLR (COCO config): fc(no bias)-bn-relu-fc(no bias)-bn.
    assert [type(m) for m in simclr] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert simclr.fc1.bias is None and simclr.fc2.bias is None
    for head in (mlp, moco, simclr):
        assert head(torch.randn(3, 8)).shape == (3, 4)


def test_heads_start_from_the_authors_kaiming_init():
    # OpenSelfSup's necks: Linear weight ~ N(0, 2 / fan_in), bias 0; BN weight 1, bias 0. PyTorch's default
    # (uniform, std 1 / sqrt(3 fan_in)) would be off by a factor sqrt(6) in std and give non-zero biases.
    torch.manual_seed(0)
    for head in (MLP(512, 1024, 256), MoCoHead(512, 1024, 128), SimCLRHead(512, 1024, 128)):
        for m in head.modules():
            if isinstance(m, nn.Linear):
                fan_in = m.weight.shape[1]
                w = m.weight.detach().flatten()
                assert abs(w.mean().item()) < 3e-3
                assert w.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.02)
                # Gaussian, not uniform: a normal's excess kurtosis is 0, a uniform's -1.2.
                z = (w - w.mean()) / w.std()
                assert abs((z**4).mean().item() - 3) < 0.1
                assert m.bias is None or not m.bias.any()
            elif isinstance(m, nn.BatchNorm1d):
                assert torch.all(m.weight == 1) and not m.bias.any()


def test_methods_targets_copy_the_initialised_heads():
    from orl.methods import build_method

    byol = build_method("byol", arch="resnet18", proj_hidden=64, proj_dim=16, pred_hidden=64)
    for (_, p), (_, t) in zip(byol.projector.named_parameters(), byol.target_projector.named_parameters()):
        assert torch.equal(p, t)
    assert byol.predictor.fc1.weight.std().item() == pytest.approx((2 / 16) ** 0.5, rel=0.15)
