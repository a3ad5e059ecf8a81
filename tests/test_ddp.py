"""A real 2-process DDP run (torchrun, gloo, CPU) matches the single-process run with the same global batch.

Why the comparison is exact although BYOL has BatchNorm: each DDP process normalises over its own half of the
global batch, so "one process with the whole batch" is NOT the same computation. The equivalent single-process
setup is gradient accumulation: 1 process x batch 4 x accum_steps 2 vs 2 processes x batch 4 x accum 1. The
sampler (orl.data.datasets.SeededSampler) gives accumulation micro-batch a of the single process exactly the images
that DDP rank a gets, and views are keyed by (seed, epoch, image), so both runs see identical tensors with identical
BN statistics. The logged loss is the mean over micro-batches resp. ranks, and the update uses the mean of the
micro-batch gradients resp. DDP's all-reduced mean: first-step losses and all trained parameters must agree
(up to float summation order). BN running statistics (buffers) legitimately differ: DDP keeps rank 0's.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orl.methods import build_method, build_training_dataset
from orl.train.trainer import TrainConfig, Trainer
from train_helpers import TINY_BYOL_ARGS, TINY_CLI_ARGS, make_index

pytestmark = pytest.mark.slow


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_two_process_gloo_matches_single_process(tmp_path: Path) -> None:
    index, index_path = make_index(tmp_path, n=8)
    ddp_out = tmp_path / "ddp" / "model.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "orl.cli", "pretrain", "--method", "byol", "--index", str(index_path), "--out", str(ddp_out),
           "--epochs", "1", "--batch-size", "4", "--warmup-epochs", "0", "--workers", "0", "--log-every", "1",
           "--device", "cpu", *TINY_CLI_ARGS]
    # Loopback for gloo: a sandbox's hostname may resolve to an address the two processes cannot reach.
    env = {"GLOO_SOCKET_IFNAME": "lo", **os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ddp_out.exists()

    single_out = tmp_path / "single" / "model.pt"
    cfg = TrainConfig(method="byol", method_args=TINY_BYOL_ARGS, epochs=1, batch_size=4, accum_steps=2,
                      warmup_epochs=0, workers=0, log_every=1, image_size=32, seed=0)
    result = Trainer(cfg, build_training_dataset("byol", index, image_size=32, seed=0), single_out).fit()
    assert result.finished

    ddp_rows, single_rows = _rows(ddp_out.parent / "metrics.csv"), _rows(single_out.parent / "metrics.csv")
    assert len(ddp_rows) == len(single_rows) == 1  # 8 images / global batch 8
    for key in ("lr", "loss", "loss_12", "loss_21"):
        assert float(ddp_rows[0][key]) == pytest.approx(float(single_rows[0][key]), abs=1e-6), key

    ddp_meta = torch.load(ddp_out, weights_only=True)
    single_meta = torch.load(single_out, weights_only=True)
    assert ddp_meta["meta"]["world_size"] == 2 and ddp_meta["meta"]["optim"]["global_batch"] == 8
    assert single_meta["meta"]["optim"]["peak_lr"] == pytest.approx(ddp_meta["meta"]["optim"]["peak_lr"])
    ddp_sd, single_sd = ddp_meta["state_dict"], single_meta["state_dict"]
    for name, _ in build_method("byol", **TINY_BYOL_ARGS).named_parameters():
        torch.testing.assert_close(ddp_sd[name], single_sd[name], rtol=0, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_two_process_gloo_with_the_knn_monitor_on_rank_0(tmp_path: Path) -> None:
    """Rank 0 alone evaluates the monitor; the ranks stay in step and train as without it."""
    from orl.train.knn_monitor import KnnMonitor, KnnMonitorConfig
    from test_knn_monitor import _crop_folder

    index, index_path = make_index(tmp_path, n=8)
    crops = _crop_folder(tmp_path / "crops", per_class=3, shuffle_labels=False, size=32)
    ddp_out = tmp_path / "ddp" / "model.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "orl.cli", "pretrain", "--method", "byol", "--index", str(index_path), "--out", str(ddp_out),
           "--epochs", "2", "--batch-size", "4", "--warmup-epochs", "0", "--workers", "0", "--log-every", "1",
           "--device", "cpu", "--knn-train-dir", str(crops / "train"), "--knn-val-dir", str(crops / "val"),
           *TINY_CLI_ARGS]
    env = {"GLOO_SOCKET_IFNAME": "lo", **os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    single_out = tmp_path / "single" / "model.pt"
    cfg = TrainConfig(method="byol", method_args=TINY_BYOL_ARGS, epochs=2, batch_size=4, accum_steps=2,
                      warmup_epochs=0, workers=0, log_every=1, image_size=32, seed=0)
    monitor = KnnMonitor(KnnMonitorConfig(train_dir=crops / "train", val_dir=crops / "val", image_size=32))
    assert Trainer(cfg, build_training_dataset("byol", index, image_size=32, seed=0), single_out, knn_monitor=monitor).fit().finished

    ddp_rows, single_rows = _rows(ddp_out.parent / "metrics.csv"), _rows(single_out.parent / "metrics.csv")
    assert [r["step"] for r in ddp_rows] == [r["step"] for r in single_rows] == ["0", "1", "2"]
    for a, b in zip(ddp_rows, single_rows, strict=True):
        assert float(a["knn_top1"]) == pytest.approx(float(b["knn_top1"]), abs=1e-4)
    ddp_sd = torch.load(ddp_out, weights_only=True)["state_dict"]
    single_sd = torch.load(single_out, weights_only=True)["state_dict"]
    for name, _ in build_method("byol", **TINY_BYOL_ARGS).named_parameters():
        torch.testing.assert_close(ddp_sd[name], single_sd[name], rtol=0, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
