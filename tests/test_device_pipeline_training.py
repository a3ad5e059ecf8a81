"""Training with the device input pipeline: the loss curve of the cpu pipeline within noise, exact resume, and a
2-process gloo run equal to one process with the same global batch (see tests/test_ddp.py for why accum 2)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orl.methods import build_method, build_training_dataset
from orl.train.trainer import TrainConfig, Trainer
from orl_helpers import TINY_ORL_ARGS, make_correspondence
from train_helpers import TINY_BYOL_ARGS, TINY_CLI_ARGS, make_index

pytestmark = pytest.mark.slow

CFG = dict(method="byol", method_args=TINY_BYOL_ARGS, epochs=2, batch_size=8, warmup_epochs=0.0, workers=0,
           log_every=1, image_size=32, seed=0)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _train(index, out: Path, pipeline: str, stop_after: int | None = None, data_seed: int = 0, **overrides):
    dataset = build_training_dataset("byol", index, image_size=32, seed=data_seed, pipeline=pipeline)

    def stop_hook(trainer: Trainer, step: int) -> None:
        if stop_after is not None and step == stop_after:
            trainer.request_stop(signal.SIGTERM)

    cfg = TrainConfig(**{**CFG, "pipeline": pipeline, **overrides})
    return Trainer(cfg, dataset, out, on_step=stop_hook, meta={"image_list_digest": index.digest}).fit()


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory):
    """Uninterrupted 4-step BYOL runs, same init: each pipeline, and the cpu one on two more view seeds.

    Batch 8 rather than 4: with BatchNorm over four 1x1 maps, a one-level change of the pixels moves the loss by
    0.1-0.3 and the curves decorrelate within two steps (measured), which leaves nothing to compare.
    """
    tmp = tmp_path_factory.mktemp("pipelines")
    index, _ = make_index(tmp, n=16)
    models = {}
    for pipeline, data_seed in (("cpu", 0), ("device", 0), ("cpu", 1), ("cpu", 2)):
        out = tmp / f"{pipeline}{data_seed}" / "model.pt"
        assert _train(index, out, pipeline, data_seed=data_seed).finished
        models[pipeline if data_seed == 0 else f"cpu{data_seed}"] = out
    return index, models


def _losses(model: Path) -> list[float]:
    return [float(r["loss"]) for r in _rows(model.parent / "metrics.csv")]


def test_byol_loss_curve_is_the_cpu_pipelines_within_noise(straight) -> None:
    """Noise = how much the curve moves when only the views' seed changes (large at 32 px, batch 8); the device
    pipeline's curve must stay within it of the cpu one's. Measured at the first step with a fixed model over 12
    batches, device - cpu losses average -0.03 (sd 0.11), the same spread as adding 1 level of pixel noise."""
    _, models = straight
    cpu, dev = _losses(models["cpu"]), _losses(models["device"])
    others = [_losses(models["cpu1"]), _losses(models["cpu2"])]
    assert len(cpu) == len(dev) == 4
    noise = max(abs(a - b) for o in others for a, b in zip(cpu, o))
    diff = max(abs(a - b) for a, b in zip(cpu, dev))
    assert 0 < diff <= noise, (diff, noise, cpu, dev, others)
    mean_diff = abs(sum(cpu) - sum(dev)) / len(cpu)
    assert mean_diff <= max(abs(sum(cpu) - sum(o)) / len(cpu) for o in others) + 0.1
    meta = torch.load(models["device"], weights_only=True)["meta"]
    assert meta["config"]["pipeline"] == "device"


@pytest.mark.parametrize("stop_after", [1, 2], ids=["mid-epoch", "after-epoch-1"])
def test_resume_with_the_device_pipeline_is_exact(straight, tmp_path: Path, stop_after: int) -> None:
    index, models = straight
    out = tmp_path / "run" / "model.pt"
    assert not _train(index, out, "device", stop_after=stop_after).finished
    assert _train(index, out, "device", workers=1).finished  # resumed, with a worker this time
    ref, got = _state(models["device"]), _state(out)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_a_cpu_pipeline_checkpoint_is_not_resumed_by_the_device_pipeline(straight, tmp_path: Path) -> None:
    index, _ = straight
    out = tmp_path / "run" / "model.pt"
    assert not _train(index, out, "cpu", stop_after=1).finished
    with pytest.warns(UserWarning, match="different configuration"):
        assert _train(index, out, "device").finished


def test_two_process_gloo_with_the_device_pipeline_matches_one_process(tmp_path: Path) -> None:
    index, index_path = make_index(tmp_path, n=8)
    ddp_out = tmp_path / "ddp" / "model.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "orl.cli", "pretrain", "--method", "byol", "--index", str(index_path), "--out", str(ddp_out),
           "--epochs", "1", "--batch-size", "4", "--warmup-epochs", "0", "--workers", "0", "--log-every", "1",
           "--device", "cpu", "--pipeline", "device", *TINY_CLI_ARGS]
    env = {"GLOO_SOCKET_IFNAME": "lo", **os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single_out = tmp_path / "single" / "model.pt"
    assert _train(index, single_out, "device", epochs=1, batch_size=4, accum_steps=2).finished
    ddp_rows, single_rows = _rows(ddp_out.parent / "metrics.csv"), _rows(single_out.parent / "metrics.csv")
    for key in ("loss", "loss_12", "loss_21"):
        assert float(ddp_rows[0][key]) == pytest.approx(float(single_rows[0][key]), abs=1e-6), key
    ddp_sd, single_sd = _state(ddp_out), _state(single_out)
    for name, _ in build_method("byol", **TINY_BYOL_ARGS).named_parameters():
        torch.testing.assert_close(ddp_sd[name], single_sd[name], rtol=0, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_orl_loss_curve_is_the_cpu_pipelines_within_noise(tmp_path: Path) -> None:
    index, _ = make_index(tmp_path, n=8)
    corr = make_correspondence(index, tmp_path / "corr.h5")
    cfg = TrainConfig(**{**CFG, "method": "orl", "method_args": TINY_ORL_ARGS, "epochs": 1, "batch_size": 4})
    losses = {}
    for pipeline, data_seed in (("cpu", 0), ("device", 0), ("cpu", 1), ("cpu", 2)):
        dataset = build_training_dataset("orl", index, image_size=32, seed=data_seed, pipeline=pipeline,
                                         correspondence=corr, roi_size=16)
        out = tmp_path / f"{pipeline}{data_seed}" / "model.pt"
        assert Trainer(cfg, dataset, out).fit().finished
        losses[pipeline, data_seed] = [float(r["loss"]) for r in _rows(out.parent / "metrics.csv")]
    cpu, dev = losses["cpu", 0], losses["device", 0]
    assert len(cpu) == len(dev) == 2
    noise = max(abs(a - b) for s in (1, 2) for a, b in zip(cpu, losses["cpu", s]))
    assert 0 < max(abs(a - b) for a, b in zip(cpu, dev)) <= noise, losses


def test_the_pipeline_setting_reaches_every_pretraining_rule(tmp_path: Path) -> None:
    from workflow_helpers import check, demo_config, snakemake

    config = demo_config({"pretrain": {"pipeline": "device", "decode": "device", "methods": {"orl": {"pipeline": "cpu"}}}})
    out = check(snakemake(tmp_path, "-n", "-p", "--cores", "2", config=config))
    lines = [line for line in (out.stdout + out.stderr).splitlines() if " pretrain --method " in line]
    byol = [line for line in lines if "--method byol" in line]
    orl = [line for line in lines if "--method orl" in line]
    assert byol and orl and all("--pipeline device --decode device" in line for line in byol)
    assert all("--pipeline cpu" in line for line in orl)
    default = check(snakemake(tmp_path, "-n", "-p", "--cores", "2"))
    assert "--pipeline auto --decode worker" in default.stdout + default.stderr


def test_every_method_trains_with_the_device_pipeline_through_snakemake(tmp_path: Path) -> None:
    """byol, moco_v2, simclr and orl through their rules with pipeline device and JPEGs decoded on the device."""
    from demo_run import TINY_RUN
    from workflow_helpers import check, deep_merge, snakemake

    from orl.methods import METHODS
    from orl.methods.pretrained import load_pretrained

    config = deep_merge(TINY_RUN, {"baselines": ["moco_v2", "simclr"],
                                   "pretrain": {"pipeline": "device", "decode": "device",
                                                "methods": {"moco_v2": {"method_args": {"queue_size": 64}}}}})
    methods = ("byol", "moco_v2", "simclr", "orl")
    check(snakemake(tmp_path, "--cores", "2", *(f"results/pretrain/{m}/model.pt" for m in methods), config=config))
    for method in methods:
        path = tmp_path / "results" / "pretrain" / method / "model.pt"
        model = load_pretrained(path)
        assert isinstance(model, METHODS[method]) and all(torch.isfinite(p).all() for p in model.parameters())
        cfg = torch.load(path, weights_only=True)["meta"]["config"]
        assert (cfg["pipeline"], cfg["decode"]) == ("device", "device"), method
