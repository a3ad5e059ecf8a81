"""Stage 4 export: torchvision state_dict of the ONLINE backbone, Detectron2 names, random-init reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from orl.checkpoint import save_final
from orl.methods import build_method
from orl.models import export as ex
from orl.stages import export as stage

TINY = dict(arch="resnet18", proj_hidden=32, proj_dim=16, pred_hidden=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A tiny ORL model after 3 SGD + EMA steps (online and target differ), saved as model.pt."""
    torch.manual_seed(0)
    m = build_method("orl", **TINY)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        keys = ("view1", "view2", "intra1", "intra2", "inter1", "inter2")
        batch = {k: torch.randn(4, 3, 32, 32, generator=g) for k in keys}
        opt.zero_grad()
        m(batch)["loss"].backward()
        opt.step()
        m.after_step(step, 3)
    path = save_final(tmp_path_factory.mktemp("model") / "model.pt", m)
    return path, m.eval()


def _res5(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def test_export_gives_the_online_backbone_in_torchvision_and_detectron2_form(trained, tmp_path: Path):
    model_path, method = trained
    info = stage.export(tmp_path, model=model_path)
    assert info["arch"] == "resnet18" and info["method"] == "orl" and info["network"] == "online"
    assert json.loads((tmp_path / "export.json").read_text())["model_sha256"] == info["model_sha256"]

    state = torch.load(tmp_path / "backbone.pth", weights_only=True)
    net = torchvision.models.resnet18(weights=None)
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    net.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = _res5(net, x)
        online = method.backbone(x)
        target = method.target_backbone(x)
    torch.testing.assert_close(ours, online, rtol=0, atol=0)
    assert not torch.allclose(ours, target, atol=1e-4), "exported the EMA target instead of the online backbone"
    assert torch.equal(ex.load_into_torchvision(tmp_path / "backbone.pth", "resnet18").conv1.weight, net.conv1.weight)

    d2 = ex.read_detectron2(tmp_path / "backbone_d2.pkl")
    assert d2["__author__"] == "orl" and d2["matching_heuristics"] is True
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in d2["model"].values())
    np.testing.assert_array_equal(d2["model"]["stem.conv1.weight"], method.backbone.conv1.weight.detach().numpy())
    np.testing.assert_array_equal(d2["model"]["res5.1.conv2.norm.running_var"],
                                  method.backbone.layer4[1].bn2.running_var.numpy())
    np.testing.assert_array_equal(d2["model"]["res3.0.shortcut.norm.bias"],
                                  method.backbone.layer2[0].downsample[1].bias.detach().numpy())
    assert info["detectron2_config"]["MODEL.RESNETS.RES2_OUT_CHANNELS"] == 64


def _d2_resnet_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    """Detectron2's ResNet parameter shapes, written from its build_resnet_backbone rules (independently of ours)."""
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    basic = depth in (18, 34)
    shapes: dict[str, tuple[int, ...]] = {"stem.conv1.weight": (64, 3, 7, 7)}

    def conv(name: str, shape: tuple[int, ...]) -> None:
        shapes[f"{name}.weight"] = shape
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.norm.{p}"] = (shape[0],)

    conv("stem.conv1", (64, 3, 7, 7))
    in_ch, out_ch = 64, 64 if basic else 256
    for s, n in enumerate(blocks):
        bottleneck = out_ch // 4
        for b in range(n):
            name = f"res{s + 2}.{b}"
            if in_ch != out_ch:
                conv(f"{name}.shortcut", (out_ch, in_ch, 1, 1))
            if basic:
                conv(f"{name}.conv1", (out_ch, in_ch, 3, 3))
                conv(f"{name}.conv2", (out_ch, out_ch, 3, 3))
            else:
                conv(f"{name}.conv1", (bottleneck, in_ch, 1, 1))
                conv(f"{name}.conv2", (bottleneck, bottleneck, 3, 3))
                conv(f"{name}.conv3", (out_ch, bottleneck, 1, 1))
            in_ch = out_ch
        out_ch *= 2
    return shapes


@pytest.mark.parametrize("arch,depth", [("resnet18", 18), ("resnet50", 50), ("resnet34", 34), ("resnet101", 101)])
def test_detectron2_mapping_covers_every_backbone_tensor_once(arch: str, depth: int):
    with torch.device("meta"):  # shapes only, nothing allocated
        state = {k: v for k, v in getattr(torchvision.models, arch)().state_dict().items() if not k.startswith("fc.")}
    names = ex.detectron2_names(state)
    # Every tensor but the BN counters is exported, each under its own name.
    assert set(names) == {k for k in state if not k.endswith("num_batches_tracked")}
    assert len(set(names.values())) == len(names)
    assert {d2: tuple(state[tv].shape) for tv, d2 in names.items()} == _d2_resnet_shapes(depth)
    assert ex.arch_of(state) == arch
    assert ex.detectron2_config(arch)["MODEL.RESNETS.DEPTH"] == depth
    assert ("MODEL.RESNETS.RES2_OUT_CHANNELS" in ex.detectron2_config(arch)) == (depth < 50)


def test_detectron2_names_refuse_unknown_keys():
    assert ex.detectron2_name("layer4.2.bn3.running_mean") == "res5.2.conv3.norm.running_mean"
    assert ex.detectron2_name("layer1.0.downsample.1.num_batches_tracked") is None
    with pytest.raises(ex.ExportError, match="fc.weight"):
        ex.detectron2_name("fc.weight")


def test_random_init_reference_export(tmp_path: Path):
    assert stage.main(["--random-init", "--arch", "resnet18", "--seed", "0", "--out-dir", str(tmp_path / "a")]) == 0
    stage.main(["--random-init", "--arch", "resnet18", "--seed", "0", "--out-dir", str(tmp_path / "b")])
    stage.main(["--random-init", "--arch", "resnet18", "--seed", "1", "--out-dir", str(tmp_path / "c")])
    a, b, c = (torch.load(tmp_path / d / "backbone.pth", weights_only=True) for d in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    ex.load_into_torchvision(tmp_path / "a" / "backbone.pth", "resnet18")
    info = json.loads((tmp_path / "a" / "export.json").read_text())
    assert info["random_init"] is True and info["seed"] == 0 and info["arch"] == "resnet18"
    assert (tmp_path / "a" / "backbone_d2.pkl").is_file()


def test_export_argument_errors(trained, tmp_path: Path):
    model_path, _ = trained
    with pytest.raises(ValueError, match="--arch resnet50 given"):
        stage.export(tmp_path, model=model_path, arch="resnet50")
    with pytest.raises(ValueError, match="needs --arch"):
        stage.export(tmp_path, model=None)
    with pytest.raises(SystemExit):  # --model and --random-init are exclusive
        stage.main(["--model", str(model_path), "--random-init", "--out-dir", str(tmp_path)])
    with pytest.raises(ex.ExportError, match="missing"):
        ex.check_torchvision({"conv1.weight": torch.zeros(64, 3, 7, 7)}, "resnet18")
