"""Detection benchmark: COCO AP of perfect predictions, the 1x lr schedule, backbone loading, resume, tiny runs."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from orl.bench import coco_data, coco_eval
from orl.bench import detection as det
from orl.bench.detection_model import HeadSizes, build_mask_rcnn
from orl.bench.weights import infer_arch, read_backbone_state
from orl.data.demo_scenes import generate_demo_dataset
from orl.runtime import Runtime
from orl.stages import bench_detection

# pycocotools' decode trips a NumPy 2 DeprecationWarning once per mask; it is theirs and harmless.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
CPU = Runtime(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
TINY_HEADS = HeadSizes(fpn_channels=16, box_head_dim=32, roi_batch_size=16, test_proposals=50, detections_per_image=20)
# Flags of a run that takes seconds on one CPU thread: tiny images, heads and schedule.
TINY_FLAGS = [
    "--iterations", "3", "--batch-size", "2", "--lr", "0.01", "--warmup-iters", "2", "--milestones", "2",
    "--train-min-sizes", "64", "96", "--train-size-step", "32", "--train-max-size", "160", "--test-min-size", "96",
    "--test-max-size", "160", "--fpn-channels", "16", "--box-head-dim", "32", "--roi-batch-size", "16",
    "--test-proposals", "50", "--detections-per-image", "20", "--workers", "0", "--threads", "1", "--log-every", "1",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8 train / 4 val demo scenes of 96 px."""
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"), num_train=8, num_val=4, image_size=96)


def _resnet18_weights(path: Path, seed: int = 1) -> dict[str, torch.Tensor]:
    """A randomly initialised resnet18 exported like export/<method>/backbone.pth (no fc)."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18()
    with torch.no_grad():  # non-default BN statistics, so that loading them is visible
        net.bn1.running_mean.uniform_(-1, 1)
        net.layer3[0].bn1.running_var.uniform_(0.5, 2)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, path)
    return state


def _perfect_results(coco, image_ids) -> list[dict]:
    """The ground truth itself as detector outputs (score 1), through detections_to_coco."""
    cats = coco_data.category_mapping(coco)
    label_of = {c: k + 1 for k, c in enumerate(cats)}
    results = []
    for image_id in image_ids:
        anns = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64)
        boxes[:, 2:] += boxes[:, :2]
        masks = torch.from_numpy(np.stack([coco.annToMask(a) for a in anns])).float()[:, None]
        output = {"boxes": boxes, "labels": torch.tensor([label_of[a["category_id"]] for a in anns]),
                  "scores": torch.ones(len(anns)), "masks": masks}
        results.extend(coco_eval.detections_to_coco(image_id, output, cats))
    return results


def _assert_perfect(annotations: Path, images: Path) -> None:
    coco = coco_data.load_coco(annotations)
    val = coco_data.CocoInstances(coco, images, for_training=False)
    metrics = coco_eval.coco_evaluate(coco, _perfect_results(coco, val.image_ids))
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75"):
            assert metrics[iou_type][name] == pytest.approx(1.0), (iou_type, name, metrics[iou_type])


def test_cocoeval_of_perfect_predictions_is_one(demo: dict[str, Path]) -> None:
    _assert_perfect(demo["val_annotations"], demo["val_images"])


def test_cocoeval_of_no_predictions_is_zero(demo: dict[str, Path]) -> None:
    coco = coco_data.load_coco(demo["val_annotations"])
    metrics = coco_eval.coco_evaluate(coco, [])
    assert coco_eval.headline(metrics) == {t: {"AP": 0.0, "AP50": 0.0, "AP75": 0.0} for t in ("bbox", "segm")}


def test_lr_schedule_warmup_and_milestones() -> None:
    cfg = det.DetectionConfig()  # the paper's 1x: 0.02, 1k warmup from 0.001 x, x0.1 at 60k and 80k
    assert det.detection_lr(0, cfg) == pytest.approx(0.02 * 0.001)
    assert det.detection_lr(500, cfg) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert det.detection_lr(1000, cfg) == pytest.approx(0.02)
    assert det.detection_lr(59_999, cfg) == pytest.approx(0.02)
    assert det.detection_lr(60_000, cfg) == pytest.approx(0.002)
    assert det.detection_lr(79_999, cfg) == pytest.approx(0.002)
    assert det.detection_lr(80_000, cfg) == pytest.approx(0.0002)
    assert det.detection_lr(89_999, cfg) == pytest.approx(0.0002)


def test_train_sizes_follow_detectron2() -> None:
    assert det.train_sizes(640, 800) == (640, 672, 704, 736, 768, 800)
    assert det.parse_sizes([640, 800], 32) == (640, 672, 704, 736, 768, 800)
    assert det.parse_sizes([100, 150], 32) == (100, 132, 150)
    assert det.parse_sizes([800], 32) == (800,)


def test_backbone_loads_exported_weights_exactly(tmp_path: Path) -> None:
    state = _resnet18_weights(tmp_path / "backbone.pth")
    loaded = read_backbone_state(tmp_path / "backbone.pth")
    assert infer_arch(loaded) == "resnet18"
    model = build_mask_rcnn("resnet18", 10, loaded, train_min_sizes=(64,), train_max_size=100, test_min_size=64,
                            test_max_size=100, heads=TINY_HEADS)
    body = model.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert torch.equal(body.bn1.running_mean, state["bn1.running_mean"])
    assert torch.equal(body.layer3[0].bn1.running_var, state["layer3.0.bn1.running_var"])
    # Paper setup: live BatchNorm (not torchvision's FrozenBatchNorm2d) and every backbone layer trainable.
    assert isinstance(body.bn1, nn.BatchNorm2d)
    assert all(p.requires_grad for p in model.parameters())
    # freeze_at (Detectron2's FREEZE_AT), off in the paper: frozen stages keep the loaded weights AND statistics.
    frozen = build_mask_rcnn("resnet18", 10, loaded, train_min_sizes=(64,), train_max_size=100, test_min_size=64,
                             test_max_size=100, heads=TINY_HEADS, freeze_at=4)
    fbody = frozen.backbone.body
    assert isinstance(fbody.layer3[0].bn1, FrozenBatchNorm2d) and isinstance(fbody.layer4[0].bn1, nn.BatchNorm2d)
    assert torch.equal(fbody.layer3[0].bn1.running_var, state["layer3.0.bn1.running_var"])
    assert not any(p.requires_grad for p in fbody.layer3.parameters())
    assert all(p.requires_grad for p in fbody.layer4.parameters())


def test_arch_inference_and_wrong_weights(tmp_path: Path) -> None:
    r50 = torchvision.models.resnet50().state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in r50.items()}}, tmp_path / "wrapped.pth")
    loaded = read_backbone_state(tmp_path / "wrapped.pth")  # wrapper and DDP prefix removed, fc dropped
    assert infer_arch(loaded) == "resnet50" and not any(k.startswith("fc.") for k in loaded)
    with pytest.raises(ValueError, match="do not fit"):
        build_mask_rcnn("resnet18", 3, loaded, train_min_sizes=(64,), train_max_size=100, test_min_size=64,
                        test_max_size=100, heads=TINY_HEADS)


def test_train_stream_resumes_and_shards() -> None:
    groups = np.array([0, 1, 0, 0, 1, 1, 0, 1, 0, 0])
    full = coco_data.TrainBatchStream(groups, 2, seed=3)
    it = iter(full)
    first = [next(it) for _ in range(12)]
    resumed = iter(coco_data.TrainBatchStream(groups, 2, seed=3, start=5))
    assert [next(resumed) for _ in range(7)] == first[5:]
    for batch in first:  # aspect grouping: a batch never mixes landscape and portrait images
        assert len({int(groups[i]) for i, _flip in batch}) == 1
    r0 = iter(coco_data.TrainBatchStream(groups, 1, seed=3, rank=0, world_size=2))
    r1 = iter(coco_data.TrainBatchStream(groups, 1, seed=3, rank=1, world_size=2))
    one_epoch = [next(r0)[0][0] for _ in range(5)] + [next(r1)[0][0] for _ in range(5)]
    assert sorted(one_epoch) == list(range(10))  # the two ranks split the first epoch between them


def test_flip_moves_boxes_and_masks_together(demo: dict[str, Path]) -> None:
    coco = coco_data.load_coco(demo["train_annotations"])
    ds = coco_data.CocoInstances(coco, demo["train_images"], for_training=True)
    image, target = ds[(0, False)]
    flipped, ftarget = ds[(0, True)]
    assert torch.equal(flipped, image.flip(-1))
    assert torch.equal(ftarget["masks"], target["masks"].flip(-1))
    for box, mask in zip(ftarget["boxes"], ftarget["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        tight = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        assert box.tolist() == pytest.approx(tight, abs=1.01)


def _tiny_setup(demo: dict[str, Path], tmp_path: Path, iterations: int):
    cfg = det.DetectionConfig(iterations=iterations, batch_size=2, lr=0.01, warmup_iters=2, milestones=(3,),
                              train_min_sizes=(64, 96), train_max_size=160, test_min_size=96, test_max_size=160,
                              heads=TINY_HEADS)
    coco = coco_data.load_coco(demo["train_annotations"])
    ds = coco_data.CocoInstances(coco, demo["train_images"], for_training=True)
    torch.manual_seed(0)
    model = build_mask_rcnn("resnet18", 10, None, train_min_sizes=cfg.train_min_sizes, train_max_size=160,
                            test_min_size=96, test_max_size=160, heads=TINY_HEADS)
    return cfg, ds, model, {"run": "tiny"}


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_weights(demo: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, ds, model, fp = _tiny_setup(demo, tmp_path, iterations=4)
    reference = det.train(model, ds, cfg, CPU, out=tmp_path / "a" / "detection.json", fingerprint=fp,
                          arch="resnet18", workers=0, checkpoint_every=0)
    out = tmp_path / "b" / "detection.json"
    calls = {"n": 0}

    def stop_after_two(self: det._StopFlag, rt: Runtime) -> int:
        calls["n"] += 1
        return 15 if calls["n"] == 2 else 0  # SIGTERM seen after the second iteration

    cfg, ds, model, fp = _tiny_setup(demo, tmp_path, iterations=4)
    monkeypatch.setattr(det._StopFlag, "agreed", stop_after_two)
    with pytest.raises(det.Interrupted) as stopped:
        det.train(model, ds, cfg, CPU, out=out, fingerprint=fp, arch="resnet18", workers=0, checkpoint_every=0)
    assert stopped.value.code == 143 and stopped.value.step == 2 and stopped.value.path.is_file()
    monkeypatch.undo()
    cfg, ds, model, fp = _tiny_setup(demo, tmp_path, iterations=4)
    resumed = det.train(model, ds, cfg, CPU, out=out, fingerprint=fp, arch="resnet18", workers=0, checkpoint_every=0)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def _run_stage(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    bench_detection.add_arguments(parser)
    bench_detection.run(parser.parse_args(argv))


def _check_report(path: Path) -> dict:
    report = json.loads(path.read_text())
    for iou_type in ("bbox", "segm"):
        assert set(report[iou_type]) == {"AP", "AP50", "AP75"}
        assert all(0.0 <= v <= 1.0 for v in report[iou_type].values()), report[iou_type]
    return report


@pytest.mark.slow
def test_end_to_end_on_demo_scenes(demo: dict[str, Path], tmp_path: Path) -> None:
    weights = tmp_path / "backbone.pth"
    _resnet18_weights(weights)
    out = tmp_path / "bench" / "orl" / "detection.json"
    _run_stage(["--weights", str(weights), "--method-name", "orl",
                "--train-images", str(demo["train_images"]), "--train-annotations", str(demo["train_annotations"]),
                "--val-images", str(demo["val_images"]), "--val-annotations", str(demo["val_annotations"]),
                "--out", str(out), "--checkpoint-every", "2", *TINY_FLAGS])
    report = _check_report(out)
    assert report["weights"]["arch"] == "resnet18" and len(report["weights"]["sha256"]) == 64
    assert report["settings"]["iterations"] == 3 and report["settings"]["train_min_sizes"] == [64, 96]
    assert report["method"] == "orl"
    assert report["chance"] == {t: dict.fromkeys(report[t], 0.0) for t in ("bbox", "segm")}  # AP chance is 0
    assert not det.checkpoint_dir(out).exists()  # removed after success


@pytest.mark.slow
def test_two_process_ddp_run_writes_the_report(demo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "detection.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "orl.stages.bench_detection", "--weights", "none", "--arch", "resnet18", "--method-name", "random",
           "--train-images", str(demo["train_images"]), "--train-annotations", str(demo["train_annotations"]),
           "--val-images", str(demo["val_images"]), "--val-annotations", str(demo["val_annotations"]),
           "--out", str(out), "--device", "cpu", *TINY_FLAGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = _check_report(out)
    assert report["settings"]["world_size"] == 2 and report["weights"]["sha256"] is None
    assert report["data"]["num_val_images"] == 4


def _split_coco128(coco128: Path, tmp_path: Path) -> tuple[Path, Path]:
    data = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    images = sorted(data["images"], key=lambda im: im["file_name"])
    paths = []
    for name, part in (("train", images[:96]), ("val", images[96:])):
        ids = {im["id"] for im in part}
        split = {**data, "images": part, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
        path = tmp_path / f"instances_{name}.json"
        path.write_text(json.dumps(split))
        paths.append(path)
    return paths[0], paths[1]


def test_cocoeval_of_perfect_predictions_on_coco128(coco128: Path, tmp_path: Path) -> None:
    _train_json, val_json = _split_coco128(coco128, tmp_path)
    _assert_perfect(val_json, coco128 / "images")  # polygons, RLE and crowd regions of real COCO


def test_masks_match_pycocotools_on_coco128(coco128: Path) -> None:
    coco = coco_data.load_coco(coco128 / "annotations" / "instances_train2017.json")
    for ann in coco.loadAnns(coco.getAnnIds())[::7] + [a for a in coco.dataset["annotations"] if a["iscrowd"]]:
        info = coco.imgs[ann["image_id"]]
        mask = coco_data.segmentation_to_mask(ann["segmentation"], info["height"], info["width"])
        assert np.array_equal(mask, coco.annToMask(ann))


@pytest.mark.slow
def test_few_iterations_on_coco128(coco128: Path, tmp_path: Path) -> None:
    train_json, val_json = _split_coco128(coco128, tmp_path)
    train_set = coco_data.CocoInstances(coco_data.load_coco(train_json), coco128 / "images", for_training=True)
    assert len(train_set) < 96  # images without (non-crowd) annotations are dropped from training
    out = tmp_path / "detection.json"
    flags = [*TINY_FLAGS]
    flags[flags.index("--iterations") + 1] = "4"
    _run_stage(["--weights", "none", "--arch", "resnet18", "--method-name", "random",
                "--train-images", str(coco128 / "images"), "--train-annotations", str(train_json),
                "--val-images", str(coco128 / "images"), "--val-annotations", str(val_json), "--out", str(out),
                *flags])
    report = _check_report(out)
    assert report["data"]["num_val_images"] == 32
