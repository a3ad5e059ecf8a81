"""The trainer: exact resume, SIGTERM -> checkpoint + non-zero exit, NaN detection, online weights in model.pt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from orl import checkpoint as ckpt
from orl.methods import build_training_dataset
from orl.methods.pretrained import load_pretrained
from orl.train.trainer import NonFiniteLossError, TrainConfig, Trainer
from train_helpers import TINY_BYOL_ARGS, TINY_CLI_ARGS, make_index

pytestmark = pytest.mark.slow

# 8 images, batch 4 -> 2 steps per epoch, 4 steps in 2 epochs; warmup 1 epoch so both lr phases are exercised.
CFG = dict(method="byol", method_args=TINY_BYOL_ARGS, epochs=2, batch_size=4, warmup_epochs=1.0, workers=0,
           log_every=1, image_size=32, seed=0)


def _train(tmp: Path, index, out: Path, stop_after: int | None = None, **overrides) -> object:
    dataset = build_training_dataset("byol", index, image_size=32, seed=0)
    cfg = TrainConfig(**{**CFG, **overrides})

    def stop_hook(trainer: Trainer, step: int) -> None:
        if stop_after is not None and step == stop_after:
            trainer.request_stop(signal.SIGTERM)  # what the SIGTERM handler does

    return Trainer(cfg, dataset, out, on_step=stop_hook, meta={"image_list_digest": index.digest}).fit()


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted 2-epoch run: (index, model.pt path)."""
    tmp = tmp_path_factory.mktemp("straight")
    index, _ = make_index(tmp)
    result = _train(tmp, index, tmp / "run" / "model.pt")
    assert result.finished and result.exit_code == 0 and result.step == 4
    return index, tmp / "run" / "model.pt"


def _assert_same_weights(a: Path, b: Path) -> None:
    sa = torch.load(a, weights_only=True)["state_dict"]
    sb = torch.load(b, weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("stop_after", [2, 1], ids=["after-epoch-1", "mid-epoch"])
def test_resume_equals_straight_run(straight, tmp_path: Path, stop_after: int) -> None:
    index, straight_model = straight
    out = tmp_path / "run" / "model.pt"
    first = _train(tmp_path, index, out, stop_after=stop_after)
    assert not first.finished and first.exit_code == 143 and first.step == stop_after
    assert not out.exists(), "model.pt must only be written at the end"
    assert ckpt.latest_checkpoint(out.parent / "checkpoints") == ckpt.checkpoint_path(out.parent / "checkpoints", stop_after)
    # Resume with a DataLoader worker this time: views are keyed by (seed, epoch, image), not by process.
    second = _train(tmp_path, index, out, workers=1)
    assert second.finished and second.step == 4
    _assert_same_weights(out, straight_model)
    rows = (out.parent / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,lr,loss,") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]


def test_same_seed_same_weights(straight, tmp_path: Path) -> None:
    index, straight_model = straight
    _train(tmp_path, index, tmp_path / "again" / "model.pt")
    _assert_same_weights(tmp_path / "again" / "model.pt", straight_model)


def test_load_pretrained_returns_online_weights(straight) -> None:
    _, model_path = straight
    state = torch.load(model_path, weights_only=True)
    assert set(state) == {"method", "hparams", "state_dict", "meta"}
    method = load_pretrained(model_path)
    assert not method.training
    online = method.online_backbone().state_dict()
    saved = state["state_dict"]
    # After a few EMA steps the target has moved away from the online network...
    differs = [k for k in online if online[k].is_floating_point()
               and not torch.equal(saved[f"backbone.{k}"], saved[f"target_backbone.{k}"])]
    assert differs, "online and target backbones should differ after training"
    # ...and what later stages load is the online one.
    for k, v in online.items():
        assert torch.equal(v, saved[f"backbone.{k}"]), k
    assert method.online_backbone() is method.backbone


def test_latest_checkpoint_skips_corrupt_files(tmp_path: Path) -> None:
    good = {k: 0 for k in ckpt.CHECKPOINT_KEYS}
    ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 5), good)
    ckpt.checkpoint_path(tmp_path, 9).write_bytes(b"not a checkpoint")
    full = ckpt.checkpoint_path(tmp_path, 5).read_bytes()
    ckpt.checkpoint_path(tmp_path, 7).write_bytes(full[: len(full) // 2])  # truncated write
    (tmp_path / ".ckpt-000000011.pt.abc.tmp").write_bytes(full)  # temp files are never candidates
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        assert ckpt.latest_checkpoint(tmp_path) == ckpt.checkpoint_path(tmp_path, 5)
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None


def test_nan_loss_names_iteration_and_terms(straight, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orl.methods.byol import BYOL

    index, _ = straight
    real_forward = BYOL.forward
    calls = {"n": 0}

    def poisoned(self, batch):
        out = real_forward(self, batch)
        calls["n"] += 1
        if calls["n"] == 3:  # iteration 2 (counted from 0)
            out["loss_21"] = out["loss_21"] * float("nan")
            out["loss"] = out["loss_12"] + out["loss_21"]
        return out

    monkeypatch.setattr(BYOL, "forward", poisoned)
    out = tmp_path / "run" / "model.pt"
    with pytest.raises(NonFiniteLossError) as err:
        _train(tmp_path, index, out, log_every=10)  # detection is deferred to the log step; still exact
    msg = str(err.value)
    assert "iteration 2" in msg and "loss=nan" in msg and "loss_21=nan" in msg and "loss_12=" in msg, msg
    assert not out.exists()


def test_sigterm_saves_checkpoint_and_exits_nonzero(tmp_path: Path) -> None:
    _, index_path = make_index(tmp_path)
    out = tmp_path / "run" / "model.pt"
    cmd = [sys.executable, "-m", "orl.cli", "pretrain", "--method", "byol", "--index", str(index_path),
           "--out", str(out), "--epochs", "1000", "--batch-size", "4", "--workers", "1", "--log-every", "1",
           "--checkpoint-every", "1000", *TINY_CLI_ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Own session: the signal goes to the whole process group (trainer + DataLoader worker), as SLURM/Ctrl-C do.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        metrics = out.parent / "metrics.csv"
        deadline = time.monotonic() + 180
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr.decode()[-2000:]
    latest = ckpt.latest_checkpoint(out.parent / "checkpoints")
    assert latest is not None, stderr.decode()[-2000:]
    state = ckpt.load_checkpoint(latest)
    assert state["step"] >= 1 and state["method"] == "byol"
    assert not out.exists()
    assert b"rerun the same command to resume" in stderr


def test_checkpoints_of_another_configuration_are_set_aside(straight, tmp_path: Path) -> None:
    index, _ = straight
    out = tmp_path / "run" / "model.pt"
    first = _train(tmp_path, index, out, stop_after=1)
    assert not first.finished
    with pytest.warns(UserWarning, match="different configuration"):
        second = _train(tmp_path, index, out, epochs=1, seed=1)
    assert second.finished and second.step == 2  # started from scratch, not from the seed-0 checkpoint
    stale = list((out.parent / "checkpoints").glob("stale-*/ckpt-*.pt"))
    assert [p.name for p in stale] == ["ckpt-000000001.pt"]


def test_method_args_parsing() -> None:
    from orl.stages.pretrain import parse_method_args

    parsed = parse_method_args(["proj_hidden=512", "base_momentum=0.99", "lr=1e-4", "shuffle_bn=false",
                                "arch=resnet18", "x=none", "dims=[1, 2]"])
    assert parsed == {"proj_hidden": 512, "base_momentum": 0.99, "lr": 1e-4, "shuffle_bn": False,
                      "arch": "resnet18", "x": None, "dims": [1, 2]}
    with pytest.raises(ValueError, match="key=value"):
        parse_method_args(["oops"])


@pytest.mark.parametrize("method,args,explicit,expected", [
    ("moco_v2", {"arch": "resnet18", "proj_hidden": 16, "proj_dim": 8, "queue_size": 16}, None, 0.0),
    ("simclr", {"arch": "resnet18", "proj_hidden": 16, "proj_dim": 8}, None, 10.0),
    ("simclr", {"arch": "resnet18", "proj_hidden": 16, "proj_dim": 8}, 0.5, 0.5),
])
def test_warmup_is_the_methods_unless_set(method, args, explicit, expected, tmp_path: Path) -> None:
    index, _ = make_index(tmp_path, n=4)
    cfg = TrainConfig(method=method, method_args=args, epochs=1, batch_size=4, warmup_epochs=explicit, workers=0,
                      image_size=32, seed=0)
    out = tmp_path / "run" / "model.pt"
    assert Trainer(cfg, build_training_dataset(method, index, image_size=32), out).fit().finished
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["config"]["warmup_epochs"] == expected
    assert meta["config"]["sync_bn"] is (method != "moco_v2")


def test_early_stop_after_snakemake_removed_the_empty_output_folder(tmp_path: Path) -> None:
    """On SIGTERM Snakemake removes the still-empty folders of missing outputs (os.removedirs in
    DAG.cleanup_workdir) while the trainer finishes its step: it must recreate them, checkpoint and exit 143."""
    index, _ = make_index(tmp_path)
    out = tmp_path / "results" / "pretrain" / "byol" / "model.pt"
    dataset = build_training_dataset("byol", index, image_size=32, seed=0)
    cfg = TrainConfig(**{**CFG, "log_every": 10, "epochs": 1, "batch_size": 2})

    def snakemake_cleanup(trainer: Trainer, step: int) -> None:
        if step == 1:
            assert not any(out.parent.iterdir())  # nothing written yet: the folder Snakemake would remove
            os.removedirs(out.parent)
            trainer.request_stop(signal.SIGTERM)

    result = Trainer(cfg, dataset, out, on_step=snakemake_cleanup).fit()
    assert result.exit_code == 143 and result.step == 1
    assert result.checkpoint is not None and ckpt.load_checkpoint(result.checkpoint)["step"] == 1
    assert (out.parent / "metrics.csv").read_text().splitlines()[1].startswith("1,")
