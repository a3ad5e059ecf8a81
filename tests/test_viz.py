"""Figures and the run summary: attention maps, training curves, `orl run-summary`."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from PIL import Image

from orl import cli
from orl.checkpoint import save_final
from orl.methods import build_method
from orl.viz import attention, curves, summary

TINY_BYOL = {"arch": "resnet18", "proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32}
SIZE = 64
VIZ_STAGES = {
    "plot-attention": ("orl.stages.plot_attention", "attention maps"),
    "plot-curves": ("orl.stages.plot_curves", "training curves"),
    "run-summary": ("orl.stages.run_summary", "run summary"),
}


@pytest.fixture(autouse=True)
def _stages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the stages with the real dispatcher (a no-op once orl.cli lists them)."""
    for name, entry in VIZ_STAGES.items():
        monkeypatch.setitem(cli.STAGES, name, cli.STAGES.get(name, entry))


def orl_main(argv: list[str]) -> int:
    """`orl ...` in-process: the exit status of the dispatcher."""
    return cli.main(argv)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random BYOL as model.pt and its online backbone as a torchvision backbone.pth."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    method = build_method("byol", **TINY_BYOL)
    model_pt = save_final(root / "byol" / "model.pt", method, {"note": "test"})
    backbone_pth = root / "export" / "backbone.pth"
    backbone_pth.parent.mkdir(parents=True)
    torch.manual_seed(1)  # different weights, so the two columns differ
    other = build_method("byol", **TINY_BYOL).online_backbone()
    torch.save(other.state_dict(), backbone_pth)
    return {"byol": model_pt, "other": backbone_pth}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small images of different sizes and modes (one grayscale)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(4):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((48 + 8 * i, 40 + 4 * i), Image.BILINEAR)
        (img.convert("L") if i == 2 else img).save(folder / f"im{i}.png")
    return folder


# --- attention -------------------------------------------------------------------------------------------------


def test_attention_maps_are_normalised_per_image_at_image_size(models: dict[str, Path], image_dir: Path) -> None:
    paths = attention.select_images(image_dir, 3)
    assert [p.name for p in paths] == ["im0.png", "im1.png", "im2.png"]
    shown, x = attention.load_images(paths, SIZE)
    assert shown.shape == (3, SIZE, SIZE, 3) and shown.dtype == np.uint8 and x.shape == (3, 3, SIZE, SIZE)
    for path in models.values():
        maps = attention.attention_maps(attention.load_model(path), x)
        assert maps.shape == (3, SIZE, SIZE) and maps.dtype == np.float32
        assert np.allclose(maps.min(axis=(1, 2)), 0.0) and np.allclose(maps.max(axis=(1, 2)), 1.0)


def test_attention_map_is_the_channel_mean_of_res5(models: dict[str, Path], image_dir: Path) -> None:
    _, x = attention.load_images(attention.select_images(image_dir, 2), SIZE)
    backbone = attention.load_model(models["byol"])
    with torch.no_grad():
        feats = backbone(x)
    ref = torch.nn.functional.interpolate(feats.mean(1, keepdim=True), size=(SIZE, SIZE), mode="bilinear")[:, 0]
    ref = (ref - ref.amin((1, 2), keepdim=True)) / (ref.amax((1, 2), keepdim=True) - ref.amin((1, 2), keepdim=True))
    assert np.allclose(attention.attention_maps(backbone, x, batch_size=1), ref.numpy(), atol=1e-5)


def test_model_pt_uses_the_online_backbone(models: dict[str, Path]) -> None:
    from orl.methods.pretrained import load_pretrained

    online = load_pretrained(models["byol"]).online_backbone().state_dict()
    loaded = attention.load_model(models["byol"]).state_dict()
    assert loaded.keys() == online.keys() and all(torch.equal(loaded[k], online[k]) for k in online)


def test_constant_map_is_zero_not_nan() -> None:
    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(x), 4, 2, 2)

    maps = attention.attention_maps(Flat(), torch.zeros(2, 3, 64, 64))
    assert np.isfinite(maps).all() and (maps == 0).all()


def test_attention_figure_has_expected_pixel_size(models: dict[str, Path], image_dir: Path, tmp_path: Path) -> None:
    out = attention.plot_attention(models, tmp_path / "att.png", images=image_dir, num=3, size=SIZE, panel=80)
    assert out.stat().st_size > 1000
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (3 * 80, attention.HEADER_PX + 3 * 80)
        assert np.asarray(img.convert("RGB")).std() > 10


def test_plot_attention_cli_with_index_and_paths(models: dict[str, Path], image_dir: Path, tmp_path: Path) -> None:
    from orl.data.image_index import build_index, write_index

    index = write_index(build_index(image_dir), tmp_path / "images.h5")
    out = tmp_path / "fig" / "attention.png"
    spec = [f"{k}={v}" for k, v in models.items()]
    assert orl_main(["plot-attention", "--models", *spec, "--images", str(index), "--num", "2", "--size", "64",
                     "--threads", "1", "--out", str(out)]) == 0
    with Image.open(out) as img:
        assert img.size == (3 * 64, attention.HEADER_PX + 2 * 64)
    one = tmp_path / "one.png"
    assert orl_main(["plot-attention", "--models", spec[0], "--paths", str(image_dir / "im3.png"), "--size", "64",
                     "--out", str(one)]) == 0
    with Image.open(one) as img:
        assert img.size == (2 * 64, attention.HEADER_PX + 64)


def test_attention_bad_inputs(models: dict[str, Path], image_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NAME=PATH"):
        attention.parse_models(["byol"])
    with pytest.raises(ValueError, match="twice"):
        attention.parse_models(["a=x.pt", "a=y.pt"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        attention.select_images(tmp_path / "nowhere", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        attention.select_images(tmp_path / "empty", 2)
    with pytest.raises(Exception, match="missing.pt"):
        attention.plot_attention({"x": tmp_path / "missing.pt"}, tmp_path / "a.png", images=image_dir, size=SIZE)
    junk = tmp_path / "junk.pt"
    torch.save({"a": 1}, junk)
    with pytest.raises(Exception, match="junk.pt"):
        attention.load_model(junk)
    with pytest.raises(ValueError, match="colormap"):
        attention.plot_attention(models, tmp_path / "a.png", images=image_dir, cmap="no-such-map")
    with pytest.raises(ValueError, match="size"):
        attention.load_images([image_dir / "im0.png"], 16)


# --- training curves -------------------------------------------------------------------------------------------


HEADER = "step,epoch,lr,loss,loss_12,loss_21,images_per_s"  # what MetricsLog writes for BYOL


def _write_metrics(path: Path, rows: list[list[float]], header: str = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


def test_curves_png_from_metrics_csv(tmp_path: Path) -> None:
    rows = [[s, s / 10, 0.05 * min(1, s / 10), 4 - s / 20, 2 - s / 40, 2 - s / 40, 100.0] for s in range(5, 55, 5)]
    metrics = _write_metrics(tmp_path / "byol" / "metrics.csv", rows)
    m = curves.read_metrics(metrics)
    assert m.loss_names == ["loss", "loss_12", "loss_21"] and m.steps.tolist() == list(range(5, 55, 5))
    out = curves.plot_curves(metrics, tmp_path / "curves.png", title="byol", width=640, height=480)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (640, 480)
        assert np.asarray(img.convert("RGB")).std() > 10


def _green_pixels(path: Path) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(rgb - np.array([44, 160, 44])).sum(axis=2) < 30).sum())  # matplotlib's tab:green


def test_curves_draw_the_knn_monitor_from_step_0(tmp_path: Path) -> None:
    header = "step,epoch,knn_top1,lr,loss,loss_12,loss_21,images_per_s"  # the step-0 row has only the kNN value
    rows = [[0, 0.0, 12.5, "", "", "", "", ""]]
    rows += [[s, s / 10, 12.5 + s if s % 10 == 0 else "", 0.05, 4 - s / 20, 2, 2, 100.0] for s in range(5, 55, 5)]
    metrics = _write_metrics(tmp_path / "knn" / "metrics.csv", rows, header=header)
    m = curves.read_metrics(metrics)
    assert m.steps[0] == 0 and np.isnan(m.columns["loss"][0]) and m.columns["knn_top1"][0] == 12.5
    with_knn = curves.plot_curves(metrics, tmp_path / "with.png")
    plain = curves.plot_curves(_write_metrics(tmp_path / "plain" / "metrics.csv", [r[:2] + r[3:] for r in rows[1:]],
                                              header=HEADER), tmp_path / "plain.png")
    assert _green_pixels(with_knn) > 200 and _green_pixels(plain) == 0


def test_curves_with_one_row_and_cli(tmp_path: Path) -> None:
    metrics = _write_metrics(tmp_path / "metrics.csv", [[1, 0.5, 0.001, 3.9, 1.9, 2.0, 12.5]])
    out = tmp_path / "one.png"
    assert orl_main(["plot-curves", "--metrics", str(metrics), "--title", "byol", "--out", str(out)]) == 0
    with Image.open(out) as img:
        assert img.size == (800, 600)


def test_curves_bad_inputs_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope" / "metrics.csv"
    with pytest.raises(curves.MetricsError, match="nope/metrics.csv"):
        curves.read_metrics(missing)
    no_loss = _write_metrics(tmp_path / "noloss.csv", [[1, 0.1, 0.01, 5.0]], header="step,epoch,lr,images_per_s")
    with pytest.raises(curves.MetricsError, match="noloss.csv.*no loss column"):
        curves.read_metrics(no_loss)
    header_only = _write_metrics(tmp_path / "header.csv", [])
    with pytest.raises(curves.MetricsError, match="header.csv"):
        curves.read_metrics(header_only)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(curves.MetricsError, match="empty.csv"):
        curves.read_metrics(tmp_path / "empty.csv")
    assert orl_main(["plot-curves", "--metrics", str(missing), "--out", str(tmp_path / "x.png")]) == 1
    assert "nope/metrics.csv" in capsys.readouterr().err


# --- run summary -----------------------------------------------------------------------------------------------


def _fake_results(root: Path) -> Path:
    (root / "bench").mkdir(parents=True)
    (root / "bench" / "summary.csv").write_text(
        "method,benchmark,metric,mean,std,n,settings\n"
        "byol,voc07_svm,mAP,71.234,,1,arch=resnet18\n"
        "orl,voc07_svm,mAP,74.5,0.25,3,arch=resnet18\n"
        "byol,voc07_lowshot,mAP@k=1,20.5,1.5,5,\n"
        "byol,voc07_lowshot,mAP@k=2,30.5,1.0,5,\n"
        "orl,voc07_lowshot,mAP@k=1,22.75,1.25,5,\n"
        "orl,imagenet_linear,top5,90.0,,1,\n"
        "orl,imagenet_linear,top1,66.6,,1,\n"
    )
    (root / "bench" / "summary.md").write_text("| method |\n")
    (root / "mining").mkdir()
    (root / "mining" / "proposals_quality.json").write_text(json.dumps({
        "num_images": 64, "ground_truth": True, "num_gt_boxes": 542, "iou_thresholds": [0.5, 0.7],
        "raw": {"recall@0.5": 0.5646, "recall@0.7": 0.3745, "mean_boxes_per_image": 764.6},
        "filtered": {"recall@0.5": 0.2528, "recall@0.7": 0.1052, "mean_boxes_per_image": 40.27},
    }))
    (root / "mining" / "pair_quality.json").write_text("{not json")
    return root


def test_run_summary_prints_each_methods_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _fake_results(tmp_path / "results")
    out = root / "summary.txt"
    assert orl_main(["run-summary", "--results", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text(encoding="utf-8") == printed
    assert str(root / "bench" / "summary.md") in printed and "snakemake --report report.html" in printed
    svm = next(line for line in printed.splitlines() if "voc07_svm" in line)
    assert "71.23" in svm and "74.50 ± 0.25" in svm and svm.index("71.23") < svm.index("74.50")  # byol, then orl
    low = next(line for line in printed.splitlines() if "voc07_lowshot" in line)
    assert "mAP@k=1" in low and "20.50 ± 1.50" in low and "22.75 ± 1.25" in low
    lin = next(line for line in printed.splitlines() if "imagenet_linear" in line)
    assert "top1" in lin and "66.60" in lin and " - " in lin + " "  # byol has no linear result
    assert "0.565" in printed and "0.253" in printed and "542 ground-truth boxes" in printed
    assert "pair_quality.json): unreadable" in printed


def test_run_summary_prints_margins_over_random_init(tmp_path: Path) -> None:
    root = tmp_path / "results"
    (root / "bench").mkdir(parents=True)
    (root / "bench" / "summary.csv").write_text(
        "method,benchmark,metric,mean,std,n,settings\n"
        "byol,knn_demo,top1,31.5,,1,\n"
        "orl,knn_demo,top1,35.25,,1,\n"
        "random,knn_demo,top1,30.0,,1,\n"
        "chance,knn_demo,top1,10.0,,,chance: 100 / classes\n"
        "orl,detection,bbox/AP,0.1,,1,\n"
    )
    text = summary.build_summary(root)
    head = text.splitlines()
    table = head.index(next(line for line in head if line.startswith("Headline")))
    assert "random" in head[table + 1] and "chance" in head[table + 1]
    assert head[table + 1].index("orl") < head[table + 1].index("random") < head[table + 1].index("chance")
    margins = text[text.index("Margin over random init"):]
    knn = next(line for line in margins.splitlines() if "knn_demo" in line)
    assert "+1.50" in knn and "+5.25" in knn and knn.index("+1.50") < knn.index("+5.25")
    assert "detection" not in margins  # no random-init row to compare with
    assert "chance" not in margins.splitlines()[1]


def test_run_summary_on_an_empty_results_folder(tmp_path: Path) -> None:
    text = summary.build_summary(tmp_path)
    assert "not made (no benchmark ran)" in text and "Headline" not in text
    with pytest.raises(FileNotFoundError, match="absent"):
        summary.build_summary(tmp_path / "absent")


def test_pair_quality_lines(tmp_path: Path) -> None:
    path = tmp_path / "pair_quality.json"
    path.write_text(json.dumps({
        "num_pairs": 10, "num_image_pairs": 5, "mined": {"both_cover_object": 0.4, "same_category": 0.3},
        "random": {"both_cover_object": 0.1, "same_category": 0.1},
        "random_expected": {"both_cover_object": 0.2, "same_category": None},
    }))
    lines = summary.pair_lines(path)
    assert "10 pairs over 5 image pairs" in lines[0]
    both = next(line for line in lines if "both boxes" in line)
    assert "0.400" in both and "0.200" in both and "x2.00" in both  # the exact expectation is the baseline
    same = next(line for line in lines if "same category" in line)
    assert "0.300" in same and "n/a" in same


def test_run_summary_keeps_three_decimals_for_fractional_metrics(tmp_path: Path) -> None:
    """Detection AP is a fraction: a margin of 0.005 must not print as +0.00."""
    root = tmp_path / "results"
    (root / "bench").mkdir(parents=True)
    (root / "bench" / "summary.csv").write_text(
        "method,benchmark,metric,mean,std,n,settings\n"
        "orl,detection,bbox/AP,0.009,,1,\n"
        "random,detection,bbox/AP,0.004,,1,\n"
        "orl,knn_demo,top1,35.25,,1,\n"
        "random,knn_demo,top1,30.0,,1,\n"
    )
    text = summary.build_summary(root)
    margins = text[text.index("Margin over random init"):]
    assert "+0.005" in next(line for line in margins.splitlines() if "detection" in line)
    assert "+5.25" in next(line for line in margins.splitlines() if "knn_demo" in line)
    headline = text[text.index("Headline"):text.index("Margin over random init")]
    assert "0.009" in next(line for line in headline.splitlines() if "detection" in line)
