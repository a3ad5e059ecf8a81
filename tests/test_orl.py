"""ORL (stage 3): RoI sampling from the correspondence artifact, the three loss terms, a short training run."""

from __future__ import annotations

import csv
import inspect
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from orl.artifacts import ArtifactError
from orl.data.datasets import SeededSampler
from orl.data.images import open_rgb
from orl.data.orl_dataset import ORLDataset, crop_resize
from orl.methods import build_training_dataset
from orl.methods import BYOL, ORL, build_method
from orl.methods.pretrained import load_pretrained
from orl.models.backbones import ResNetBackbone, global_pool
from orl.stages import pretrain
from orl.train.trainer import TrainConfig, Trainer
from orl_helpers import TINY_ORL_ARGS, make_correspondence
from train_helpers import make_index

KEYS = {"view1", "view2", "intra1", "intra2", "inter1", "inter2", "index", "neighbor"}
TINY = dict(arch="resnet18", proj_hidden=32, proj_dim=16, pred_hidden=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    """(index loaded from its artifact, index path, correspondence path) for 8 tiny images, K = 2."""
    from orl.data.image_index import load_index

    tmp = tmp_path_factory.mktemp("orl")
    _, index_path = make_index(tmp)
    index = load_index(index_path)
    return index, index_path, make_correspondence(index, tmp / "correspondence.h5", k=2)


def _dataset(data, **kw) -> ORLDataset:
    index, _, corr = data
    return build_training_dataset("orl", index, image_size=32, seed=0, correspondence=corr, roi_size=24, **kw)


# ------------------------------------------------------------------------------------------------------- sampling
def test_inter_pairs_come_only_from_mined_pairs_of_the_chosen_neighbour(data):
    from orl.artifacts import open_artifact

    index, _, corr = data
    ds = _dataset(data)
    with open_artifact(corr) as art:
        boxes, pairs, neighbors = art.csr("boxes"), art.csr("pairs"), art.array("neighbors")
    k = neighbors.shape[1]
    used_slots, used_pairs = set(), set()
    for epoch in range(40):
        for i in range(len(index)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(epoch * 100 + i)
                d = ds.draw_rois(i, int(index.widths[i]), int(index.heights[i]))
            assert d.neighbor == neighbors[i, d.neighbor_slot]
            row = pairs[i * k + d.neighbor_slot]
            assert row[d.pair_id].tolist() == [*d.inter1.tolist(), *d.inter2.tolist()]
            assert d.intra1.tolist() == boxes[i][d.box_id].tolist()
            used_slots.add((i, d.neighbor_slot))
            used_pairs.add((i, d.neighbor_slot, d.pair_id))
    # Uniform choices: every neighbour of every image and every mined pair shows up over 40 draws.
    assert used_slots == {(i, j) for i in range(len(index)) for j in range(k)}
    assert len(used_pairs) == len(pairs.values)


def test_sample_crops_rois_from_the_full_images(data):
    index, _, _ = data
    ds = _dataset(data)
    raw = _dataset(data)
    raw.patch1 = raw.patch2 = v2.PILToTensor()  # no augmentation: patches are the bare crops
    for i in (0, 5):
        item = ds[(0, i)]
        assert set(item) == KEYS
        assert item["view1"].shape == item["view2"].shape == (3, 32, 32)
        for key in ("intra1", "intra2", "inter1", "inter2"):
            assert item[key].shape == (3, 24, 24) and item[key].dtype == torch.float32
        bare = raw[(0, i)]
        with torch.random.fork_rng(devices=[]):
            # sample() draws the boxes first, with the per-sample seed; replay that draw.
            from orl.data.datasets import sample_seed

            torch.manual_seed(sample_seed(0, 0, i))
            img = open_rgb(index.path(i))
            d = ds.draw_rois(i, *img.size)
        assert bare["neighbor"] == d.neighbor == item["neighbor"]
        other = open_rgb(index.path(d.neighbor))
        expect = {"intra1": (img, d.intra1), "intra2": (img, d.intra2), "inter1": (img, d.inter1),
                  "inter2": (other, d.inter2)}
        for key, (source, box) in expect.items():
            assert torch.equal(bare[key], v2.functional.pil_to_tensor(crop_resize(source, box, 24))), key


def test_samples_are_deterministic_and_the_artifact_is_opened_lazily(data):
    ds = _dataset(data)
    assert not ds.reader.is_open, "the artifact must not be opened before the DataLoader forks"
    a, b, c = ds[(0, 3)], ds[(0, 3)], ds[(1, 3)]
    assert ds.reader.is_open
    for key in ("view1", "intra2", "inter2"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["view1"], c["view1"])  # another epoch, other views
    assert not pickle.loads(pickle.dumps(ds)).reader.is_open  # spawn workers get a path, not a handle
    # A worker forked after the main process opened the file reopens it, and sees the same samples.
    sampler = SeededSampler(len(ds), batch_size=4, shuffle=False)
    main = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=0)))
    worker = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=1)))
    for key in KEYS:
        assert torch.equal(main[key], worker[key]), key
    ds.reader.close()


def test_mismatched_or_missing_artifact_fails_fast(data, tmp_path: Path):
    index, index_path, _ = data
    other = make_correspondence(index, tmp_path / "other.h5", digest="0123456789abcdef")
    with pytest.raises(ArtifactError) as err:
        build_training_dataset("orl", index, correspondence=other)
    assert str(other) in str(err.value) and str(index_path) in str(err.value)
    with pytest.raises(ValueError, match="--correspondence"):
        build_training_dataset("orl", index)
    with pytest.raises(ArtifactError, match="not found"):
        build_training_dataset("orl", index, correspondence=tmp_path / "missing.h5")


# ---------------------------------------------------------------------------------------------------- the method
def _batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = {"view1": 32, "view2": 32, "intra1": 24, "intra2": 24, "inter1": 24, "inter2": 24}
    return {k: torch.randn(n, 3, s, s, generator=g) for k, s in sizes.items()}


def _d(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (2 - 2 * F.cosine_similarity(p, z, dim=1)).mean()


def test_loss_terms_and_weighted_sum():
    torch.manual_seed(0)
    m = ORL(**TINY, w_global=0.5, w_intra=2.0, w_inter=0.25)
    batch = _batch()
    out = m(batch)
    expected_keys = {"loss"} | {f"loss_{t}{s}" for t in ("global", "intra", "inter") for s in ("", "_12", "_21")}
    assert set(out) == expected_keys
    pairs = {"global": ("view1", "view2", m.predictor), "intra": ("intra1", "intra2", m.intra_predictor),
             "inter": ("inter1", "inter2", m.inter_predictor)}
    with torch.no_grad():
        for term, (a, b, pred) in pairs.items():
            # By hand: D(pred(online(a)), target(b)) + D(pred(online(b)), target(a)), online and target apart.
            pa = pred(m.projector(global_pool(m.backbone(batch[a]))))
            pb = pred(m.projector(global_pool(m.backbone(batch[b]))))
            ta = m.target_projector(global_pool(m.target_backbone(batch[a])))
            tb = m.target_projector(global_pool(m.target_backbone(batch[b])))
            assert out[f"loss_{term}_12"].item() == pytest.approx(_d(pa, tb).item(), rel=1e-5)
            assert out[f"loss_{term}_21"].item() == pytest.approx(_d(pb, ta).item(), rel=1e-5)
            assert out[f"loss_{term}"].item() == pytest.approx((_d(pa, tb) + _d(pb, ta)).item(), rel=1e-5)
    total = 0.5 * out["loss_global"] + 2.0 * out["loss_intra"] + 0.25 * out["loss_inter"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    # The global term is exactly BYOL's loss for the same initialisation.
    torch.manual_seed(0)
    byol = BYOL(**TINY)
    assert byol(batch)["loss"].item() == pytest.approx(out["loss_global"].item(), rel=1e-6)


def test_three_distinct_predictors_one_shared_target():
    torch.manual_seed(0)
    m = ORL(**TINY)
    preds = [m.global_predictor, m.intra_predictor, m.inter_predictor]
    assert len({id(p) for p in preds}) == 3
    ids = [{id(p) for p in pred.parameters()} for pred in preds]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    # One online and one target backbone (and projector) only; no duplicated state_dict keys.
    assert sum(isinstance(mod, ResNetBackbone) for mod in m.modules()) == 2
    assert not any(k.startswith("global_predictor") for k in m.state_dict())
    assert all(not p.requires_grad for p in [*m.target_backbone.parameters(), *m.target_projector.parameters()])
    # Each term's gradient reaches its own predictor only; every term reaches the shared backbone.
    for term, pred in zip(("global", "intra", "inter"), preds):
        m.zero_grad(set_to_none=True)
        m(_batch())[f"loss_{term}"].backward()
        for other in preds:
            has_grad = all(p.grad is not None for p in other.parameters())
            assert has_grad == (other is pred), term
        assert all(p.grad is not None for p in m.backbone.parameters())
    # One EMA over the shared target, BYOL's schedule.
    before = m.target_backbone.conv1.weight.clone()
    with torch.no_grad():
        m.backbone.conv1.weight.add_(1.0)
    m.after_step(0, 100)
    assert m.momentum == pytest.approx(0.99)
    torch.testing.assert_close(m.target_backbone.conv1.weight, 0.99 * before + 0.01 * m.backbone.conv1.weight)


def test_hparams_rebuild_and_optimiser_are_byols():
    m = build_method("orl", **TINY, w_inter=0.5)
    hp = m.hparams()
    assert hp == {**TINY, "base_momentum": 0.99, "w_global": 1.0, "w_intra": 1.0, "w_inter": 0.5}
    rebuilt = build_method("orl", **hp)
    assert rebuilt.weights == m.weights
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    assert ORL.default_optim == BYOL.default_optim
    defaults = {n: p.default for n, p in inspect.signature(ORL.__init__).parameters.items()}
    assert (defaults["w_global"], defaults["w_intra"], defaults["w_inter"]) == (1.0, 1.0, 1.0)
    assert (defaults["arch"], defaults["proj_hidden"], defaults["proj_dim"], defaults["pred_hidden"]) == (
        "resnet50", 4096, 256, 4096)


# ------------------------------------------------------------------------------------------------------ training
def _metrics(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_short_orl_run_lowers_its_loss(data, tmp_path: Path):
    index, _, corr = data
    # 8 images, one batch per epoch, 6 steps: the three predictors learn to match the target (12 -> ~4.5).
    dataset = build_training_dataset("orl", index, image_size=32, seed=0, correspondence=corr, roi_size=16)
    cfg = TrainConfig(method="orl", method_args=TINY_ORL_ARGS, epochs=6, batch_size=8, warmup_epochs=0,
                      workers=0, log_every=1, image_size=32, seed=0, lr=0.2, base_batch=8, weight_decay=0.0)
    result = Trainer(cfg, dataset, tmp_path / "run" / "model.pt", meta={"image_list_digest": index.digest}).fit()
    assert result.finished and result.step == 6
    rows = _metrics(tmp_path / "run" / "metrics.csv")
    assert {"loss_global", "loss_intra", "loss_inter", "loss_inter_21"} <= set(rows[0])
    for term in ("loss", "loss_global", "loss_intra", "loss_inter"):
        first, last = np.mean([r[term] for r in rows[:2]]), np.mean([r[term] for r in rows[-2:]])
        assert last < 0.8 * first, (term, first, last)
    method = load_pretrained(tmp_path / "run" / "model.pt")
    assert isinstance(method, ORL) and method.hparams()["arch"] == "resnet18"


@pytest.mark.slow
def test_pretrain_stage_trains_orl_and_requires_the_artifact(data, tmp_path: Path):
    _, index_path, corr = data
    base = ["--method", "orl", "--index", str(index_path), "--arch", "resnet18", "--epochs", "1", "--batch-size", "4",
            "--image-size", "32", "--threads", "1", "--workers", "0", "--device", "cpu",
            "--method-args", "proj_hidden=32", "proj_dim=16", "pred_hidden=32", "w_inter=0.5"]
    out = tmp_path / "orl" / "model.pt"
    with pytest.raises(ValueError, match="--method orl needs --correspondence"):
        pretrain.main([*base, "--out", str(out)])
    with pytest.raises(ValueError, match="only used by --method orl"):
        pretrain.main([*base[:1], "byol", *base[2:], "--out", str(out), "--correspondence", str(corr)])
    assert pretrain.main([*base, "--out", str(out), "--correspondence", str(corr), "--roi-size", "24"]) == 0
    state = torch.load(out, weights_only=True)
    assert state["method"] == "orl" and state["hparams"]["w_inter"] == 0.5
    assert state["meta"]["correspondence"] == str(corr) and state["meta"]["roi_size"] == 24
    assert len(state["meta"]["correspondence_params_digest"]) == 16


@pytest.mark.slow
def test_orl_resume_equals_straight_run(data, tmp_path: Path):
    import signal

    index, _, corr = data
    dataset = build_training_dataset("orl", index, image_size=32, seed=0, correspondence=corr, roi_size=16)
    cfg = dict(method="orl", method_args=TINY_ORL_ARGS, epochs=1, batch_size=4, warmup_epochs=0.5, workers=0,
               log_every=1, image_size=32, seed=0)

    def run(out: Path, stop_after: int | None = None, **kw) -> object:
        def hook(trainer: Trainer, step: int) -> None:
            if step == stop_after:
                trainer.request_stop(signal.SIGTERM)

        return Trainer(TrainConfig(**{**cfg, **kw}), dataset, out, on_step=hook,
                       meta={"image_list_digest": index.digest}).fit()

    assert run(tmp_path / "a" / "model.pt").finished
    assert not run(tmp_path / "b" / "model.pt", stop_after=1).finished  # mid-epoch
    assert run(tmp_path / "b" / "model.pt", workers=1).finished  # resumed in a worker process
    sa = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6, msg=lambda msg, k=k: f"{k}: {msg}")


@pytest.mark.slow
def test_two_process_gloo_orl_matches_single_process_accumulation(data, tmp_path: Path):
    # As tests/test_ddp.py for BYOL: 2 ranks x batch 4 == 1 process x batch 4 x accum 2 (same images, same BN
    # batches). For ORL this also proves that all three predictors take part in DDP's gradient all-reduce.
    import os
    import subprocess
    import sys

    index, index_path, corr = data
    ddp_out = tmp_path / "ddp" / "model.pt"
    tiny = [f"{k}={v}" for k, v in TINY_ORL_ARGS.items() if k != "arch"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "orl.cli",
           "pretrain", "--method", "orl", "--index", str(index_path), "--correspondence", str(corr), "--roi-size", "16",
           "--out", str(ddp_out), "--arch", "resnet18", "--image-size", "32", "--threads", "1", "--epochs", "1",
           "--batch-size", "4", "--warmup-epochs", "0", "--workers", "0", "--log-every", "1", "--device", "cpu",
           "--method-args", *tiny]
    env = {"GLOO_SOCKET_IFNAME": "lo", **os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    single_out = tmp_path / "single" / "model.pt"
    cfg = TrainConfig(method="orl", method_args=TINY_ORL_ARGS, epochs=1, batch_size=4, accum_steps=2,
                      warmup_epochs=0, workers=0, log_every=1, image_size=32, seed=0)
    dataset = build_training_dataset("orl", index, image_size=32, seed=0, correspondence=corr, roi_size=16)
    assert Trainer(cfg, dataset, single_out).fit().finished
    ddp_row, single_row = _metrics(ddp_out.parent / "metrics.csv")[0], _metrics(single_out.parent / "metrics.csv")[0]
    for key in ("loss", "loss_global", "loss_intra", "loss_inter"):
        assert ddp_row[key] == pytest.approx(single_row[key], abs=1e-5), key
    ddp_sd = torch.load(ddp_out, weights_only=True)["state_dict"]
    single_sd = torch.load(single_out, weights_only=True)["state_dict"]
    for name, _ in build_method("orl", **TINY_ORL_ARGS).named_parameters():
        torch.testing.assert_close(ddp_sd[name], single_sd[name], rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_orl_refuses_two_view_batches():
    torch.manual_seed(0)
    m = ORL(**TINY)
    with pytest.raises(KeyError, match="intra1"):
        m({k: v for k, v in _batch().items() if k in ("view1", "view2")})
