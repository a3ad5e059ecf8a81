"""Linear and semi-supervised benchmarks: lr schedules, the crop folder builder, label subsets, tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_helpers import random_backbone, run_stage, tiny_demo
from PIL import Image

from orl.bench.classification import linear_milestones, scan_image_folder, semi_milestones, set_lrs, step_lr
from orl.bench.crops import build_crop_folder, crop_box
from orl.bench.linear import LinearProbe
from orl.bench.semi_supervised import read_subset_list, sample_subset, subset_from_list
from orl.models.backbones import build_backbone
from orl.stages import bench_crops, bench_linear, bench_semi

# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    ("epochs", "milestones"), [(28, [8, 16, 24]), (14, [4, 8, 12]), (84, [24, 48, 72]), (7, [2, 4, 6])]
)
def test_linear_milestones_are_the_authors(epochs: int, milestones: list[int]) -> None:
    assert linear_milestones(epochs) == milestones


def test_linear_lr_at_epoch_boundaries() -> None:
    lrs = [step_lr(0.01, e, linear_milestones(28), 0.1) for e in range(28)]
    expected = [0.01] * 8 + [1e-3] * 8 + [1e-4] * 8 + [1e-5] * 4
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)


def test_semi_lr_at_epoch_boundaries_for_both_groups() -> None:
    assert semi_milestones(20) == [12, 16] and semi_milestones(5) == [3, 4]
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(
        [
            {"params": [params[0]], "lr": 0.01, "initial_lr": 0.01},
            {"params": [params[1]], "lr": 1.0, "initial_lr": 1.0},
        ],
        lr=0.01,
        momentum=0.9,
    )
    seen = []
    for epoch in range(20):
        set_lrs(opt, step_lr(1.0, epoch, semi_milestones(20), 0.2))
        seen.append([g["lr"] for g in opt.param_groups])
    seen = np.array(seen)
    np.testing.assert_allclose(seen[:12], [[0.01, 1.0]] * 12)
    np.testing.assert_allclose(seen[12:16], [[0.002, 0.2]] * 4)
    np.testing.assert_allclose(seen[16:], [[0.0004, 0.04]] * 4)


# ---------------------------------------------------------------- crops


def test_crop_box_is_a_square_with_context_clipped_to_the_image() -> None:
    assert crop_box(40, 40, 20, 10, 100, 100, context=0.1) == (38, 33, 62, 57)  # side 24 around (50, 45)
    assert crop_box(0, 0, 10, 10, 100, 100, context=0.5) == (0, 0, 15, 15)  # clipped at the top-left corner


def test_crop_folder_from_coco(tmp_path: Path) -> None:
    demo = tiny_demo(tmp_path / "demo", num_train=6, num_val=3)
    splits = {s: (demo / "annotations" / f"instances_{s}.json", demo / s) for s in ("train", "val")}
    counts = build_crop_folder(splits, tmp_path / "crops", size=24)
    for split in ("train", "val"):
        doc = json.loads((demo / "annotations" / f"instances_{split}.json").read_text())
        expected = sum(1 for a in doc["annotations"] if not a.get("iscrowd", 0) and min(a["bbox"][2:]) >= 4)
        files = sorted((tmp_path / "crops" / split).rglob("*.jpg"))
        assert len(files) == expected == sum(counts[split].values())
        assert len([d for d in (tmp_path / "crops" / split).iterdir() if d.is_dir()]) == len(doc["categories"])
        with Image.open(files[0]) as im:
            assert im.size == (24, 24)
    paths, labels, classes = scan_image_folder(tmp_path / "crops" / "train")
    val_paths, val_labels, _ = scan_image_folder(tmp_path / "crops" / "val", classes)
    assert len(classes) == 10 and len(paths) == len(labels) and set(val_labels) <= set(range(10))
    assert json.loads((tmp_path / "crops" / "crops.json").read_text())["size"] == 24


def test_crop_folder_cap_per_class_is_a_seeded_sample(tmp_path: Path) -> None:
    demo = tiny_demo(tmp_path / "demo", num_train=8, num_val=2)
    splits = {"train": (demo / "annotations" / "instances_train.json", demo / "train")}
    counts = build_crop_folder(splits, tmp_path / "a", size=16, max_per_class={"train": 2})
    assert counts["train"] and max(counts["train"].values()) <= 2
    build_crop_folder(splits, tmp_path / "b", size=16, max_per_class={"train": 2})
    names = [sorted(p.name for p in (tmp_path / d / "train").rglob("*.jpg")) for d in ("a", "b")]
    assert names[0] == names[1]


def test_scan_refuses_val_classes_unknown_to_train(tmp_path: Path) -> None:
    for split, name in (("train", "a"), ("val", "b")):
        (tmp_path / split / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / name / "x.png")
    _, _, classes = scan_image_folder(tmp_path / "train")
    with pytest.raises(ValueError, match="absent from the train split"):
        scan_image_folder(tmp_path / "val", classes)


# ---------------------------------------------------------------- label subsets


def test_per_class_subset_counts_and_determinism() -> None:
    labels = [0] * 200 + [1] * 50 + [2] * 3
    idx = sample_subset(labels, 0.1, seed=0)
    counts = np.bincount(np.asarray(labels)[idx], minlength=3)
    assert counts.tolist() == [20, 5, 1]  # round(10 %), at least one per class
    np.testing.assert_array_equal(idx, sample_subset(labels, 0.1, seed=0))
    assert not np.array_equal(idx, sample_subset(labels, 0.1, seed=1))


def test_simclr_subset_list(tmp_path: Path) -> None:
    paths = [Path(f"/data/train/n0{c}/n0{c}_{i}.JPEG") for c in range(2) for i in range(3)]
    (tmp_path / "1percent.txt").write_text("n00_2.JPEG\nn01_0.JPEG\n\n")
    np.testing.assert_array_equal(subset_from_list(paths, read_subset_list(tmp_path / "1percent.txt")), [2, 3])
    (tmp_path / "labelled.txt").write_text("n00/n00_1.JPEG 0\n")  # OpenSelfSup's "path label" lines
    np.testing.assert_array_equal(subset_from_list(paths, read_subset_list(tmp_path / "labelled.txt")), [1])
    with pytest.raises(ValueError, match="not in the train folder"):
        subset_from_list(paths, ["missing.JPEG"])


# ---------------------------------------------------------------- models


def test_linear_probe_keeps_the_backbone_frozen_and_in_eval_mode() -> None:
    torch.manual_seed(0)
    probe = LinearProbe(build_backbone("resnet18"), "resnet18", num_classes=3)
    before = {k: v.clone() for k, v in probe.backbone.state_dict().items()}
    opt = torch.optim.SGD([p for p in probe.parameters() if p.requires_grad], lr=0.1)
    probe.train()
    assert not probe.backbone.training and probe.norm.training
    loss = torch.nn.functional.cross_entropy(probe(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    for k, v in probe.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN running statistics unchanged
    assert probe.fc.weight.shape == (3, 4 * 512)


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_crops_linear_and_semi_stages_end_to_end(tmp_path: Path) -> None:
    demo = tiny_demo(tmp_path / "demo", num_train=12, num_val=6)
    run_stage(bench_crops, ["--demo-root", str(demo), "--out", str(tmp_path / "crops"), "--size", "32"])
    weights = random_backbone(tmp_path / "backbone.pth")
    common = [
        "--weights",
        str(weights),
        "--method-name",
        "random",
        "--train-dir",
        str(tmp_path / "crops" / "train"),
        "--val-dir",
        str(tmp_path / "crops" / "val"),
        "--crop-size",
        "32",
        "--workers",
        "0",
        "--threads",
        "1",
    ]
    out = tmp_path / "bench" / "random"
    run_stage(
        bench_linear,
        [
            *common,
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--benchmark-name",
            "linear_demo",
            "--out",
            str(out / "linear_demo.json"),
        ],
    )
    doc = json.loads((out / "linear_demo.json").read_text())
    assert doc["benchmark"] == "linear_demo" and 0 <= doc["metrics"]["top1"]["mean"] <= 100
    assert doc["settings"]["milestones"] == [1, 2, 3] and len(doc["details"]["history"]) == 2
    assert doc["details"]["history"][1]["lr"] == pytest.approx(0.001)

    # Both subsets in one process (--percent 1 10), each from a fresh copy of the weights.
    outs = [out / "semi_1pct.json", out / "semi_10pct.json"]
    run_stage(
        bench_semi, [*common, "--percent", "1", "10", "--epochs", "2", "--batch-size", "8", "--out", *map(str, outs)]
    )
    present = [d for d in (tmp_path / "crops" / "train").iterdir() if any(d.iterdir())]
    for path, percent, wd in zip(outs, (1.0, 10.0), (0.0, 1e-4), strict=True):
        semi = json.loads(path.read_text())
        assert semi["benchmark"] == path.stem and semi["settings"]["percent"] == percent
        assert semi["settings"]["weight_decay"] == wd and semi["settings"]["milestones"] == [1, 2]
        assert semi["settings"]["num_labelled"] >= len(present)  # at least one image per class
        assert 0 <= semi["metrics"]["top1"]["mean"] <= 100
    with pytest.raises(ValueError, match="one value per --percent"):
        run_stage(bench_semi, [*common, "--percent", "1", "10", "--out", str(outs[0])])
