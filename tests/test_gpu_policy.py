"""GPU policy checked on CPU: fp32 is IEEE fp32 (no TF32), bf16 falls back to fp16 + GradScaler where a GPU lacks
it, Mask R-CNN's box arithmetic stays float32 under bf16, MoCo's queue pointer never reads a device tensor, faiss
uses the GPU it is given, and local jobs lease distinct GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orl import gpu_lease
from orl import checkpoint as ckpt
from orl.bench import detection as det
from orl.bench.detection_model import HeadSizes, build_mask_rcnn
from orl.methods import build_method, build_training_dataset
from orl.methods.losses import infonce_loss, nt_xent_loss
from orl.mining.knn import gpu_number
from orl.precision import autocast_dtype, ieee_fp32
from orl.train import trainer as trainer_module
from orl.train.trainer import TrainConfig, Trainer
from train_helpers import TINY_BYOL_ARGS, make_index


@pytest.fixture
def tf32_on():
    """TF32 allowed, as launch.configure_determinism leaves it for GPU training; the flags restored afterwards."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ---------------------------------------------------------------------------------------------- fp32 / TF32
def test_ieee_fp32_turns_tf32_off_and_restores(tf32_on) -> None:
    with ieee_fp32():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    with pytest.raises(RuntimeError), ieee_fp32():
        raise RuntimeError("the flags come back on errors too")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("loss", ["infonce", "nt_xent"])
def test_contrastive_logits_are_ieee_fp32_under_tf32_training(loss: str, tf32_on,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    matmul = torch.Tensor.__matmul__

    def spy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return matmul(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    value = infonce_loss(q, k, torch.randn(16, 8, generator=g)) if loss == "infonce" else nt_xent_loss(q, k)
    assert torch.isfinite(value)
    assert seen == [False]  # the one logits matmul ran with TF32 off
    assert torch.backends.cuda.matmul.allow_tf32  # and training's setting is back


# ------------------------------------------------------------------------------------------ bf16 -> fp16
def test_bf16_falls_back_to_fp16_without_native_bf16(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Tesla V100-SXM2-32GB")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert autocast_dtype("bf16", gpu) is torch.float16  # emulated bf16 does not count
    note = capsys.readouterr().err
    assert "V100" in note and "fp16" in note and "GradScaler" in note
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert autocast_dtype("bf16", gpu) is torch.bfloat16
    assert autocast_dtype("fp16", gpu) is torch.float16 and autocast_dtype("fp32", gpu) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is None  # CPU trains in fp32
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype("fp8", gpu)


@pytest.mark.slow
def test_trainer_fp16_fallback_trains_with_a_grad_scaler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fp16 path (autocast + GradScaler) runs end to end on CPU and checkpoints the scaler's state."""
    calls: list[tuple[str, str]] = []

    def fp16_everywhere(precision: str, device: torch.device, **_: object) -> torch.dtype:
        calls.append((precision, device.type))
        return torch.float16  # what a GPU without bf16 gets for precision bf16

    monkeypatch.setattr(trainer_module, "autocast_dtype", fp16_everywhere)
    scalers: list[str] = []
    real_scaler = torch.amp.GradScaler

    def recording_scaler(device: str = "cuda", *args: object, **kwargs: object) -> torch.amp.GradScaler:
        scalers.append(device)
        return real_scaler(device, *args, **kwargs)

    monkeypatch.setattr(torch.amp, "GradScaler", recording_scaler)
    index, _ = make_index(tmp_path, n=8)
    cfg = TrainConfig(method="byol", method_args=TINY_BYOL_ARGS, epochs=1, batch_size=4, warmup_epochs=0,
                      workers=0, log_every=1, image_size=32, seed=0, precision="bf16")
    result = Trainer(cfg, build_training_dataset("byol", index, image_size=32, seed=0), tmp_path / "m.pt").fit()
    assert result.finished and calls == [("bf16", "cpu")] and scalers == ["cpu"]
    state = ckpt.load_checkpoint(result.checkpoint)
    assert state["scaler"] and state["scaler"]["scale"] > 0  # the resumable scaler state


# ----------------------------------------------------------------------------------- detection box math
def test_bf16_detection_keeps_anchors_and_proposals_float32() -> None:
    torch.manual_seed(0)
    heads = HeadSizes(fpn_channels=16, box_head_dim=32, roi_batch_size=16, test_proposals=50, detections_per_image=20)
    model = build_mask_rcnn("resnet18", 3, None, train_min_sizes=(96,), train_max_size=160, test_min_size=96,
                            test_max_size=160, heads=heads).train()
    seen: dict[str, torch.dtype] = {}

    def record(name: str, pick=lambda out: out):  # a forward hook that returns None keeps the output
        return lambda module, args, out: seen.setdefault(name, pick(out).dtype) and None

    model.backbone.body.layer1.register_forward_hook(record("layer1"))
    model.rpn.register_forward_hook(record("proposals", lambda out: out[0][0]))  # (boxes per image, losses)
    model.roi_heads.box_head.fc6.register_forward_hook(record("fc6"))
    images = [torch.rand(3, 90, 120)]
    masks = torch.zeros(1, 90, 120, dtype=torch.uint8)
    masks[0, 20:60, 30:90] = 1
    targets = [{"boxes": torch.tensor([[30.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([1]), "masks": masks}]
    names = set(model.state_dict())
    with det.autocast_networks(model, "cpu", torch.bfloat16):
        losses = model(images, targets)
    assert seen == {"layer1": torch.bfloat16, "proposals": torch.float32, "fc6": torch.bfloat16}, seen
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert set(model.state_dict()) == names and "forward" not in vars(model.backbone)  # nothing left behind


# ------------------------------------------------------------------------------------------- MoCo queue
def test_moco_queue_pointer_stays_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    moco = build_method("moco_v2", arch="resnet18", proj_hidden=16, proj_dim=8, queue_size=10)
    keys = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)

    def no_device_read(self: torch.Tensor) -> int:
        raise AssertionError("int() of a tensor: a GPU sync every step")

    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "__int__", no_device_read)
        for _ in range(3):
            moco.enqueue(keys)  # 12 keys into a queue of 10: wraps
    assert int(moco.queue_ptr) == 2 and torch.equal(moco.queue[:2], keys[2:])
    restored = build_method("moco_v2", arch="resnet18", proj_hidden=16, proj_dim=8, queue_size=10)
    restored.load_state_dict(moco.state_dict())  # a resume continues at the saved position
    restored.enqueue(keys[:1])
    assert int(restored.queue_ptr) == 3 and torch.equal(restored.queue[2], keys[0])


# -------------------------------------------------------------------------------------------------- faiss
def test_faiss_gpu_number_follows_the_device() -> None:
    assert (gpu_number(None), gpu_number("cuda"), gpu_number("cuda:3")) == (0, 0, 3)
    with pytest.raises(ValueError, match="cuda"):
        gpu_number("cpu")


# --------------------------------------------------------------------------------------- local GPU lease
@pytest.fixture
def four_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine showing GPUs 0-3 outside SLURM, with its own lock folder."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setenv(gpu_lease.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    return tmp_path


def _leased(env: dict[str, str], count: int) -> subprocess.Popen:
    """A job holding `count` GPUs: prints its CUDA_VISIBLE_DEVICES, then waits for stdin to close."""
    code = "import os, sys; print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True); sys.stdin.read()"
    return subprocess.Popen([sys.executable, "-m", "orl.gpu_lease", str(count), sys.executable, "-c", code],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_local_jobs_get_distinct_gpus(four_gpus: Path) -> None:
    env = dict(os.environ)
    jobs = [_leased(env, 2), _leased(env, 1)]
    try:
        held = [job.stdout.readline().strip().split(",") for job in jobs]
        assert len(held[0]) == 2 and len(held[1]) == 1 and not set(held[0]) & set(held[1]), held
        # 1 GPU left: a 2-GPU lease waits; the last one is free.
        assert gpu_lease.try_lease(2, ["0", "1", "2", "3"], four_gpus / "locks") is None
        last = gpu_lease.try_lease(1, ["0", "1", "2", "3"], four_gpus / "locks")
        assert last is not None and last[0][0] not in held[0] + held[1]
        for fd in last[1]:
            os.close(fd)
    finally:
        for job in jobs:
            job.communicate("", timeout=30)
    assert all(job.returncode == 0 for job in jobs)
    # The exec'ed jobs held the locks until they ended: all four are free again.
    again = gpu_lease.try_lease(4, ["0", "1", "2", "3"], four_gpus / "locks")
    assert again is not None and sorted(again[0]) == ["0", "1", "2", "3"]


def test_lease_changes_nothing_under_slurm_or_without_gpus(four_gpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match="asks for 5 GPUs"):
        gpu_lease.lease(5)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert gpu_lease.lease(1) is None  # SLURM binds the job's GPUs itself
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_lease.lease(1) is None  # no GPU: the command runs as is


@pytest.mark.slow
def test_every_gpu_capable_rule_runs_under_a_lease(tmp_path: Path) -> None:
    """Dry run of the whole demo: each rule whose stage takes a visible GPU starts through orl.gpu_lease."""
    import re

    import slurm_helpers as sh
    from workflow_helpers import demo_config

    config = demo_config({"knn": {"route": "numpy"}, "bench": {"detection": {"gpus": 2}}})
    proc = subprocess.run(sh.snakemake_cmd(tmp_path, config, "-n", "-p", "--cores", "2", limit=120), env=sh.env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shells: dict[str, str] = {}
    rule = None
    for line in proc.stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m.group(1)
        elif line.startswith("Shell command:") and rule:
            shells[rule] = line.split(":", 1)[1].strip()
    leased = {"pretrain_byol", "features", "roi_embed", "bench_svm", "bench_frozen", "bench_semi", "bench_detection"}
    assert leased <= set(shells), sorted(shells)
    for name in leased:
        assert re.match(r"^(ORL_EXPECT_GPUS=\d+ )?python -m orl\.gpu_lease \d+ ", shells[name]), (name, shells[name])
    assert shells["bench_detection"].startswith("ORL_EXPECT_GPUS=2 python -m orl.gpu_lease 2 torchrun ")
    assert "gpu_lease" not in shells["knn"]  # the numpy route needs no GPU
    assert "gpu_lease" not in shells["index_images"]  # nor do the CPU stages
