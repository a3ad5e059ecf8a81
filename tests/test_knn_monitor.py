"""The online kNN monitor: the weighted vote on constructed cases, and a trainer run with the monitor on resumes exactly."""

from __future__ import annotations

import csv
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from orl.bench.feature_classifiers import knn_scores, knn_top1
from orl.methods import build_training_dataset
from orl.train.knn_monitor import KnnMonitor, KnnMonitorConfig
from orl.train.trainer import TrainConfig, Trainer
from train_helpers import TINY_BYOL_ARGS, make_index

COLOURS = ((220, 30, 30), (30, 200, 30), (30, 30, 220), (200, 200, 30))


class ChannelMeans(nn.Module):
    """A stand-in backbone whose 'res5 map' is the per-channel mean of the image: GAP gives the mean colour."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True) * self.scale


def _crop_folder(root: Path, per_class: int, shuffle_labels: bool, seed: int = 0, size: int = 16) -> Path:
    """ImageFolder train/ and val/ of solid-colour crops: one colour per class, or (shuffled) a random colour per
    crop in a random class folder, so the labels say nothing about the image."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        folder_of = np.repeat(np.arange(len(COLOURS)), per_class)
        for i, label in enumerate(rng.permutation(folder_of) if shuffle_labels else folder_of):
            colour = rng.integers(0, 256, 3) if shuffle_labels else np.array(COLOURS[label])
            noise = rng.integers(-20, 21, (size, size, 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            out = root / split / f"class_{label}"
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(out / f"{i:04d}.png")
    return root


def _monitor(root: Path, image_size: int = 16) -> KnnMonitor:
    return KnnMonitor(KnnMonitorConfig(train_dir=root / "train", val_dir=root / "val", image_size=image_size))


def test_weighted_vote_matches_a_direct_computation() -> None:
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(30, 8, generator=g), dim=1)
    labels = torch.randint(0, 3, (30,), generator=g)
    queries = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1)
    scores = knn_scores(bank, labels, queries, 3, k=4, temperature=0.5)
    for q in range(5):
        sims = [(float(queries[q] @ bank[j]), int(labels[j])) for j in range(30)]
        expected = [0.0, 0.0, 0.0]
        for sim, label in sorted(sims, reverse=True)[:4]:
            expected[label] += math.exp(sim / 0.5)
        torch.testing.assert_close(scores[q], torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_separable_features_give_100_and_shuffled_labels_about_chance() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(10, 32)
    labels = torch.arange(10).repeat_interleave(40)
    feats = centres[labels] + 0.05 * torch.randn(400, 32, generator=g)
    queries = centres[labels] + 0.05 * torch.randn(400, 32, generator=g)
    assert knn_top1(feats, labels, queries, labels, 10) == 100.0
    # Features with no structure and random labels: each query's vote is independent of its label.
    bank, queries = torch.randn(2000, 64, generator=g), torch.randn(1000, 64, generator=g)
    bank_labels, query_labels = torch.randint(0, 10, (2000,), generator=g), torch.randint(0, 10, (1000,), generator=g)
    assert abs(knn_top1(bank, bank_labels, queries, query_labels, 10) - 10.0) < 3.5  # ~3.7 standard deviations


def test_monitor_on_colour_crops_separable_and_shuffled(tmp_path: Path) -> None:
    backbone = ChannelMeans().train()
    separable = _monitor(_crop_folder(tmp_path / "sep", per_class=20, shuffle_labels=False))
    rng_before = torch.get_rng_state()
    assert separable.evaluate(backbone) == 100.0
    assert torch.equal(torch.get_rng_state(), rng_before), "the monitor must draw no random numbers"
    assert backbone.training, "the backbone's train mode is restored after the evaluation"
    shuffled = _monitor(_crop_folder(tmp_path / "shuf", per_class=40, shuffle_labels=True))
    assert abs(shuffled.evaluate(backbone) - 25.0) < 12.0  # 4 classes: chance is 25 %


# ------------------------------------------------------------------------------------------------ with the trainer

CFG = dict(method="byol", method_args=TINY_BYOL_ARGS, epochs=2, batch_size=4, warmup_epochs=1.0, workers=0,
           log_every=1, image_size=32, seed=0)


def _train(index, out: Path, monitor: KnnMonitor | None, stop_after: int | None = None) -> object:
    dataset = build_training_dataset("byol", index, image_size=32, seed=0)

    def stop_hook(trainer: Trainer, step: int) -> None:
        if stop_after is not None and step == stop_after:
            trainer.request_stop(signal.SIGTERM)

    return Trainer(TrainConfig(**CFG), dataset, out, on_step=stop_hook, knn_monitor=monitor,
                   meta={"image_list_digest": index.digest}).fit()


def _knn_column(out: Path) -> list[tuple[int, str]]:
    with open(out.parent / "metrics.csv", newline="") as f:
        return [(int(r["step"]), r["knn_top1"]) for r in csv.DictReader(f)]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [2, 1], ids=["after-epoch-1", "mid-epoch"])
def test_resume_with_the_monitor_is_exact(tmp_path: Path, stop_after: int) -> None:
    index, _ = make_index(tmp_path)
    monitor = _monitor(_crop_folder(tmp_path / "crops", per_class=3, shuffle_labels=False, size=32), image_size=32)
    plain = tmp_path / "plain" / "model.pt"
    assert _train(index, plain, None).finished
    straight = tmp_path / "straight" / "model.pt"
    assert _train(index, straight, monitor).finished
    resumed = tmp_path / "resumed" / "model.pt"
    assert not _train(index, resumed, monitor, stop_after=stop_after).finished
    assert _train(index, resumed, monitor).finished

    a, b, c = _state(plain), _state(straight), _state(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), f"the monitor changed training: {k}"
        assert torch.equal(b[k], c[k]), f"resumed weights differ: {k}"
    column = _knn_column(straight)
    # 8 images, batch 4: 2 steps per epoch; a value at step 0 (before any update) and at the end of each epoch.
    assert [s for s, v in column if v] == [0, 2, 4] and column[0][0] == 0
    assert [s for s, _ in column] == [0, 1, 2, 3, 4]
    assert _knn_column(resumed) == column
    assert all(0.0 <= float(v) <= 100.0 for _, v in column if v)
