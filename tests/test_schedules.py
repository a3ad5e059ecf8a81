"""Learning-rate schedule and scaling rules (ORL_SPEC section 1; "things easy to get wrong" 8)."""

from __future__ import annotations

import math

import pytest

from orl.train.schedules import global_batch_size, scaled_lr, warmup_cosine_lr, warmup_steps_for

PEAK, TOTAL, WARMUP = 0.4, 1000, 40


def test_warmup_starts_at_1e4_of_peak_and_reaches_peak() -> None:
    assert warmup_cosine_lr(0, TOTAL, PEAK, WARMUP) == pytest.approx(1e-4 * PEAK)
    assert warmup_cosine_lr(WARMUP // 2, TOTAL, PEAK, WARMUP) == pytest.approx(PEAK * (1e-4 + (1 - 1e-4) * 0.5))
    assert warmup_cosine_lr(WARMUP, TOTAL, PEAK, WARMUP) == pytest.approx(PEAK)
    lrs = [warmup_cosine_lr(k, TOTAL, PEAK, WARMUP) for k in range(WARMUP + 1)]
    assert all(b > a for a, b in zip(lrs, lrs[1:])), "warmup must increase every iteration"


def test_cosine_half_and_end() -> None:
    half = WARMUP + (TOTAL - WARMUP) // 2
    assert warmup_cosine_lr(half, TOTAL, PEAK, WARMUP) == pytest.approx(PEAK / 2)
    assert warmup_cosine_lr(TOTAL, TOTAL, PEAK, WARMUP) == pytest.approx(0.0, abs=1e-12)
    last = warmup_cosine_lr(TOTAL - 1, TOTAL, PEAK, WARMUP)
    assert 0 < last < 1e-5 * PEAK * 10
    lrs = [warmup_cosine_lr(k, TOTAL, PEAK, WARMUP) for k in range(WARMUP, TOTAL + 1)]
    assert all(b < a for a, b in zip(lrs, lrs[1:])), "cosine must decrease every iteration"


def test_no_warmup_is_plain_cosine() -> None:
    assert warmup_cosine_lr(0, 100, 1.0, 0) == pytest.approx(1.0)
    assert warmup_cosine_lr(25, 100, 1.0, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_warmup_steps_from_epochs() -> None:
    assert warmup_steps_for(4, 231) == 924
    assert warmup_steps_for(0.5, 10) == 5


def test_lr_scales_with_global_batch_incl_world_size_and_accum() -> None:
    # Paper: 64 per GPU x 8 GPUs = 512 -> lr 0.4.
    assert global_batch_size(64, 8, 1) == 512
    assert scaled_lr(0.4, 512, global_batch_size(64, 8, 1)) == pytest.approx(0.4)
    # Same global batch from 2 nodes x 4 GPUs x 32 x accum 2.
    assert global_batch_size(32, 8, 2) == 512
    # Half the processes -> half the lr; accumulation counts like more processes.
    assert scaled_lr(0.4, 512, global_batch_size(64, 4, 1)) == pytest.approx(0.2)
    assert scaled_lr(0.4, 512, global_batch_size(16, 2, 4)) == pytest.approx(0.4 * 128 / 512)
    with pytest.raises(ValueError):
        global_batch_size(0, 1, 1)


def test_trainer_optimizer_uses_global_batch() -> None:
    """build_optimizer scales the method's base lr by the global batch, honouring config overrides."""
    from orl.methods import build_method
    from orl.train.trainer import TrainConfig, build_optimizer

    method = build_method("byol", arch="resnet18", proj_hidden=16, proj_dim=8, pred_hidden=16)
    opt, peak, resolved = build_optimizer(method, TrainConfig(), global_batch=128)
    assert peak == pytest.approx(0.4 * 128 / 512) and resolved["name"] == "sgd"
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1e-4)
    opt, peak, _ = build_optimizer(method, TrainConfig(lr=1.0, weight_decay=0.0), global_batch=1024)
    assert peak == pytest.approx(2.0) and opt.param_groups[0]["weight_decay"] == 0.0
    # EMA target parameters are not optimised.
    optimised = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in optimised for p in method.target_backbone.parameters())
