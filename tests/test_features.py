"""The feature bank (ORL_SPEC 2a): shape, unit rows, row i = image i, eval-mode preprocessing, and the stage."""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from orl.artifacts import open_artifact
from orl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from orl.data.image_index import build_index, write_index
from orl.mining.features import compute_features
from orl.stages import feature_bank

# Solid colours in an order unrelated to the file names' sort order, and image sizes of different aspect ratios.
COLORS = [(250, 10, 10), (10, 240, 30), (20, 20, 230), (200, 200, 20), (120, 30, 180)]
SIZES = [(40, 30), (30, 50), (64, 64), (33, 47), (80, 20)]


class ColourModel(nn.Module):
    """embed(x) = per-channel mean of the normalised input, plus a mode-dependent 4th feature; records input shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.shapes: list[tuple[int, ...]] = []

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        colour = x.mean(dim=(2, 3)) * self.scale
        # In train mode the 4th feature dominates; in eval mode it is 0, so eval-mode features are pure colour.
        mode = torch.full((x.shape[0], 1), 100.0 if self.training else 0.0)
        return torch.cat([colour, mode], dim=1)


def _expected(color: tuple[int, int, int]) -> np.ndarray:
    v = (np.array(color) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    v = np.append(v, 0.0)
    return v / np.linalg.norm(v)


@pytest.fixture
def index_path(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (color, size) in enumerate(zip(COLORS, SIZES)):
        # Names sort in reverse of creation order, so row order must follow the index, not creation.
        Image.new("RGB", size, color).save(folder / f"img_{9 - i}.png")
    return write_index(build_index(folder), tmp_path / "index.h5")


def test_shape_unit_norm_order_and_eval_mode(index_path: Path) -> None:
    from orl.data.image_index import load_index

    index = load_index(index_path)
    model = ColourModel().train()
    feats = compute_features(model, index, resize=20, crop=16, batch_size=2, workers=0, device="cpu")
    assert feats.shape == (5, 4) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-6)
    # Row i is image i of the index (names sorted: img_5 .. img_9 = colours 4 .. 0).
    for row, name in enumerate(index.file_names):
        color = COLORS[9 - int(name[4])]
        np.testing.assert_allclose(feats[row], _expected(color), atol=2e-3)
    # Eval mode was used (the mode feature is 0) and the caller's mode is restored.
    assert np.abs(feats[:, 3]).max() == 0
    assert model.training
    # Short side resized then centre crop: every image arrives as crop x crop; batches of 2, 2, 1.
    assert model.shapes == [(2, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16)]


def test_worker_processes_keep_row_order(index_path: Path) -> None:
    from orl.data.image_index import load_index

    index = load_index(index_path)
    one = compute_features(ColourModel(), index, resize=20, crop=16, batch_size=1, workers=0, device="cpu")
    two = compute_features(ColourModel(), index, resize=20, crop=16, batch_size=1, workers=2, device="cpu")
    np.testing.assert_array_equal(one, two)


def test_crop_larger_than_resize_is_refused(index_path: Path) -> None:
    from orl.data.image_index import load_index

    with pytest.raises(ValueError, match="crop"):
        compute_features(ColourModel(), load_index(index_path), resize=16, crop=20, batch_size=2, workers=0)


def test_stage_writes_feature_artifact(index_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_path = tmp_path / "model.pt"
    model_path.write_bytes(b"weights")
    loaded: list[tuple[Path, str]] = []

    def load_pretrained(path, map_location="cpu"):
        loaded.append((Path(path), map_location))
        return ColourModel()

    # The real orl.methods.pretrained rebuilds a trained Method; here a stand-in returns the tiny model.
    fake = types.ModuleType("orl.methods.pretrained")
    fake.load_pretrained = load_pretrained
    monkeypatch.setitem(sys.modules, "orl.methods.pretrained", fake)

    out = tmp_path / "features.h5"
    parser = argparse.ArgumentParser()
    feature_bank.add_arguments(parser)
    args = parser.parse_args(
        ["--model", str(model_path), "--index", str(index_path), "--out", str(out), "--resize", "20", "--crop", "16",
         "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    )
    feature_bank.run(args)
    assert loaded == [(model_path, "cpu")]
    with open_artifact(out, stage="features", like=index_path) as art:
        feats = art.array("features")
        assert feats.shape == (5, 4)
        np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-6)
        assert art.attrs["model"] == str(model_path)
        assert art.params == {"resize": 20, "crop": 16, "precision": "fp32"}
