"""Stage 2d, correspondence mining: the T rule, top-T on the flattened matrix, cached == the authors' per-query
re-embedding, shard-count invariance, single-box and fallback images, refusal of foreign parts, roi_align mode,
pair-quality figures on a hand-made case, and the correspondence figure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orl.artifacts import ArtifactError, Csr, open_artifact, read_attrs, write_artifact
from orl.bench.weights import sha256_file
from orl.checkpoint import save_final
from orl.data.image_index import build_index, load_index, write_index
from orl.methods import build_method
from orl.methods.pretrained import load_pretrained
from orl.mining.correspondence import mine_query, num_pairs, top_pairs
from orl.mining.naive_mining import naive_mine
from orl.mining.pair_quality import load_gt, pair_quality
from orl.mining.roi_embed import FilterSettings, RoiEmbedder, RoiSettings, image_tasks, kept_boxes
from orl.stages import gather_correspondence, mine_pairs, roi_embed
from orl.viz.correspondence import draw_pairs, plot_correspondence

W, H = 64, 48
K = 2
FILT = FilterSettings(min_size=8, max_aspect=3.0, iou=0.5, max_boxes=30)
CROP = RoiSettings(mode="crop", crop_size=32)
# Neighbours (K = 2): image 3 has a single proposal and is a neighbour of 0, 1 and 5; image 4's proposals are all
# too small (fallback box).
NEIGHBORS = np.array([[3, 1], [3, 2], [1, 0], [0, 5], [3, 0], [3, 4]], dtype=np.int64)


def _scene(rng: np.random.Generator) -> np.ndarray:
    img = rng.normal(110, 25, (H, W, 3))
    for _ in range(5):
        x, y = rng.integers(0, W - 8), rng.integers(0, H - 8)
        img[y : y + rng.integers(8, H // 2), x : x + rng.integers(8, W // 2)] = rng.integers(0, 255, 3)
    return img.clip(0, 255).astype(np.uint8)


def _random_boxes(rng: np.random.Generator, n: int, lo: int = 8) -> np.ndarray:
    w = rng.integers(lo, W + 1, n)
    h = rng.integers(lo, H + 1, n)
    x = (rng.random(n) * (W - w + 1)).astype(int)
    y = (rng.random(n) * (H - h + 1)).astype(int)
    return np.stack([x, y, w, h], 1).astype(np.int32)


def _dataset(root: Path, n: int, seed: int, prefix: str = "img") -> Path:
    folder = root / "imgs"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(_scene(rng)).save(folder / f"{prefix}{i:02d}.png")
    return write_index(build_index(folder), root / "images.h5")


def _proposals(index_path: Path, rows: list[np.ndarray], out: Path, tag: str = "hand") -> Path:
    digest = load_index(index_path).digest
    return write_artifact(out, stage="proposals", image_list_digest=digest, params={"backend": tag},
                          arrays={"boxes": Csr.from_rows(rows, row_shape=(4,), dtype=np.int32)})


def _knn(index_path: Path, neighbors: np.ndarray, out: Path) -> Path:
    digest = load_index(index_path).digest
    sims = np.linspace(0.9, 0.5, neighbors.size, dtype=np.float32).reshape(neighbors.shape)
    return write_artifact(out, stage="knn", image_list_digest=digest, params={"k": neighbors.shape[1]},
                          arrays={"indices": neighbors, "similarities": sims}, attrs={"k": neighbors.shape[1]})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Six 64x48 scenes, hand-made proposals and kNN, a tiny random-init BYOL saved as model.pt."""
    root = tmp_path_factory.mktemp("corr")
    index = _dataset(root, 6, seed=0)
    rng = np.random.default_rng(1)
    rows = [_random_boxes(rng, 60), _random_boxes(rng, 25), _random_boxes(rng, 40),
            np.array([[5, 4, 30, 20]], np.int32),  # a single proposal
            np.array([[0, 0, 4, 4], [10, 10, 3, 6]], np.int32),  # nothing passes: fallback to the first
            _random_boxes(rng, 30)]
    torch.manual_seed(0)
    method = build_method("byol", arch="resnet18", proj_hidden=64, proj_dim=32, pred_hidden=64)
    return {
        "root": root,
        "index": index,
        "raw": rows,
        "proposals": _proposals(index, rows, root / "proposals.h5"),
        "knn": _knn(index, NEIGHBORS, root / "knn.h5"),
        "model": save_final(root / "model.pt", method),
    }


def _embed(world: dict, shards: int, out_dir: Path, settings: RoiSettings = CROP, batch_size: int = 8) -> list[Path]:
    return [
        roi_embed.run_shard(world["model"], world["index"], world["proposals"], s, shards, settings, FILT,
                            out_dir / f"emb-{settings.mode}-{shards}-{s}.h5", batch_size=batch_size, device="cpu")
        for s in range(shards)
    ]


def _mine(world: dict, emb: list[Path], shards: int, out_dir: Path, ratio: float = 0.1, tag: str = "") -> list[Path]:
    return [
        mine_pairs.run_shard(
            world["index"], world["knn"], emb, s, shards, ratio, out_dir / f"pairs{tag}-{shards}-{s}.h5"
        )
        for s in range(shards)
    ]


def _gather(world: dict, emb: list[Path], pairs: list[Path], out: Path, **kw) -> Path:
    return gather_correspondence.gather(world["index"], world["knn"], world["proposals"], emb, pairs, out, **kw)[0]


@pytest.fixture(scope="module")
def mined(world: dict) -> dict:
    """The crop-mode pipeline with one shard, gathered."""
    out = world["root"] / "one"
    emb = _embed(world, 1, out)
    pairs = _mine(world, emb, 1, out)
    return {"emb": emb, "pairs": pairs, "out": _gather(world, emb, pairs, out / "correspondence.h5")}


def _read(path: Path) -> dict:
    with open_artifact(path, stage="correspondence") as art:
        return {
            "boxes": art.csr("boxes"), "neighbors": art.array("neighbors"), "pairs": art.csr("pairs"),
            "pair_scores": art.csr("pair_scores"), "pair_box_ids": art.csr("pair_box_ids"), "attrs": dict(art.attrs),
        }


# --- the T rule and top-T -------------------------------------------------------------------------------------


@pytest.mark.parametrize("b,t", [(1, 1), (9, 1), (10, 1), (19, 1), (20, 2), (30, 3), (100, 10)])
def test_num_pairs_formula(b: int, t: int) -> None:
    assert num_pairs(b, 0.1) == t


def _brute_top(sim: np.ndarray, t: int) -> list[tuple[int, int]]:
    flat = sim.ravel()
    order = sorted(range(flat.size), key=lambda f: (-flat[f], f))[:t]
    return [divmod(f, sim.shape[1]) for f in order]


@pytest.mark.parametrize("seed", range(6))
def test_top_pairs_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bq, bk = rng.integers(1, 30), rng.integers(1, 30)
    # Coarse values: many exact ties, which must go to the lower flattened index.
    sim = np.round(rng.uniform(-1, 1, (bq, bk)), 1)
    for t in (1, 2, 5, bq * bk, bq * bk + 3):
        ids, s = top_pairs(sim, t)
        ref = _brute_top(sim, t)
        assert [tuple(r) for r in ids.tolist()] == ref
        np.testing.assert_array_equal(s, [sim[a, b] for a, b in ref])
        assert ids.dtype == np.int32 and (np.diff(s) <= 0).all()


def test_mine_query_single_box_neighbour_reused() -> None:
    rng = np.random.default_rng(0)
    emb_q = rng.normal(size=(25, 16))
    single = rng.normal(size=(1, 16))
    (ids, scores), = mine_query(emb_q, [single], 0.1)
    assert len(ids) == num_pairs(25, 0.1) == 2
    assert (ids[:, 1] == 0).all() and len(set(ids[:, 0].tolist())) == 2  # the one neighbour box, in both pairs
    qn = emb_q / np.linalg.norm(emb_q, axis=1, keepdims=True)
    cos = qn @ (single[0] / np.linalg.norm(single[0]))
    np.testing.assert_array_equal(ids[:, 0], np.argsort(-cos, kind="stable")[:2])
    np.testing.assert_allclose(scores, np.sort(cos)[::-1][:2], rtol=1e-6)


# --- the pipeline ---------------------------------------------------------------------------------------------


def test_artifact_contract(world: dict, mined: dict) -> None:
    c = _read(mined["out"])
    n = 6
    assert len(c["boxes"]) == n and c["boxes"].values.dtype == np.int32 and c["boxes"].values.shape[1] == 4
    np.testing.assert_array_equal(c["neighbors"], NEIGHBORS)
    assert len(c["pairs"]) == len(c["pair_scores"]) == len(c["pair_box_ids"]) == n * K
    assert c["pairs"].values.dtype == np.int32 and c["pairs"].values.shape[1] == 8
    assert c["pair_scores"].values.dtype == np.float32 and c["pair_box_ids"].values.shape[1] == 2
    for i in range(n):  # boxes = the §2d filter of the raw proposals, in filter order
        np.testing.assert_array_equal(c["boxes"][i], kept_boxes(world["raw"][i], W, H, FILT)[0])
    for q in range(n):
        for j in range(K):
            r, k = q * K + j, NEIGHBORS[q, j]
            ids, pairs, scores = c["pair_box_ids"][r], c["pairs"][r], c["pair_scores"][r]
            assert len(ids) == num_pairs(len(c["boxes"][q]), 0.1)
            np.testing.assert_array_equal(pairs[:, :4], c["boxes"][q][ids[:, 0]])
            np.testing.assert_array_equal(pairs[:, 4:], c["boxes"][k][ids[:, 1]])
            assert (np.diff(scores) <= 0).all() and (np.abs(scores) <= 1 + 1e-6).all()
    a = c["attrs"]
    assert a["mode"] == "crop" and a["ratio"] == 0.1 and a["k"] == K and a["crop_size"] == 32
    assert a["filter"] == FILT.params() and a["num_fallback_images"] == 1 and a["fallback_first_box"] == [4]
    assert a["knn"] == str(world["knn"]) and a["proposals"] == str(world["proposals"])
    assert a["model_sha256"] == sha256_file(world["model"]) and a["knn_params_digest"]
    assert a["image_list_digest"] == load_index(world["index"]).digest
    assert max(len(c["pair_box_ids"][r]) for r in range(n * K)) >= 2  # some query has B_q >= 20


def test_single_proposal_image_and_single_box_neighbours(mined: dict) -> None:
    c = _read(mined["out"])
    np.testing.assert_array_equal(c["boxes"][3], [[5, 4, 30, 20]])
    np.testing.assert_array_equal(c["boxes"][4], [[0, 0, 4, 4]])  # fallback: the first raw box
    # Query 3 (one box): one pair per neighbour.
    assert [len(c["pairs"][3 * K + j]) for j in range(K)] == [1, 1]
    # Queries whose neighbour has a single kept box (image 3 or 4): every pair uses that box.
    for q, j in [(0, 0), (1, 0), (4, 0), (5, 0), (5, 1)]:
        ids = c["pair_box_ids"][q * K + j]
        assert len(ids) == num_pairs(len(c["boxes"][q]), 0.1) and (ids[:, 1] == 0).all()
    assert len(c["pairs"][0]) >= 2  # image 0 has >= 20 kept boxes: the single box appears in several pairs


def test_cached_pairs_identical_to_naive_per_query_reembedding(world: dict, mined: dict) -> None:
    c = _read(mined["out"])
    index = load_index(world["index"])
    images = image_tasks([index.path(i) for i in range(len(index))], index.widths, index.heights)
    kept = [c["boxes"][i] for i in range(len(index))]
    method = load_pretrained(world["model"])
    embedder = RoiEmbedder(method.online_backbone(), "cpu", batch_size=8)
    boxes, scores, ids = naive_mine(embedder, images, kept, NEIGHBORS, 0.1, CROP.crop_size)
    assert len(boxes) == len(index) * K
    for r in range(len(boxes)):
        np.testing.assert_array_equal(ids[r], c["pair_box_ids"][r])
        np.testing.assert_array_equal(boxes[r], c["pairs"][r])
        np.testing.assert_array_equal(scores[r], c["pair_scores"][r])
    # The naive algorithm embeds every query and neighbour again: (1 + K) x the cached crop forwards.
    cached_forwards = read_attrs(mined["emb"][0])["crop_forwards"]
    assert cached_forwards == len(c["boxes"].values)
    assert embedder.crop_forwards == sum(len(kept[q]) + sum(len(kept[k]) for k in NEIGHBORS[q]) for q in range(6))


def test_shard_count_invariance(world: dict, mined: dict, tmp_path: Path) -> None:
    emb = _embed(world, 2, tmp_path)
    out = _gather(world, emb, _mine(world, emb, 3, tmp_path), tmp_path / "c.h5")
    a, b = _read(mined["out"]), _read(out)
    for name in ("boxes", "pairs", "pair_scores", "pair_box_ids"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
        np.testing.assert_array_equal(a[name].offsets, b[name].offsets)
    np.testing.assert_array_equal(a["neighbors"], b["neighbors"])
    assert a["attrs"]["params_digest"] == b["attrs"]["params_digest"]
    # The embeddings themselves are identical too, whatever crops shared a batch.
    with open_artifact(mined["emb"][0]) as one, open_artifact(emb[0]) as e0, open_artifact(emb[1]) as e1:
        joined = np.concatenate([e0.csr("embeddings").values, e1.csr("embeddings").values])
        assert one.csr("embeddings").values.dtype == np.float16
        np.testing.assert_array_equal(one.csr("embeddings").values, joined)


def test_new_ratio_reuses_embeddings(world: dict, mined: dict, tmp_path: Path) -> None:
    pairs = _mine(world, mined["emb"], 1, tmp_path, ratio=0.25, tag="r25")
    c = _read(_gather(world, mined["emb"], pairs, tmp_path / "c.h5"))
    assert c["attrs"]["ratio"] == 0.25
    assert len(c["pairs"][0]) == num_pairs(len(c["boxes"][0]), 0.25) > len(_read(mined["out"])["pairs"][0])
    # The top pairs at ratio 0.1 are a prefix of those at 0.25.
    base = _read(mined["out"])
    np.testing.assert_array_equal(c["pairs"][0][: len(base["pairs"][0])], base["pairs"][0])


def test_gather_refuses_foreign_missing_and_mismatched_parts(world: dict, mined: dict, tmp_path: Path) -> None:
    other = _dataset(tmp_path / "other", 6, seed=5, prefix="x")
    foreign_world = dict(world, index=other,
                         proposals=_proposals(other, world["raw"], tmp_path / "other-proposals.h5"),
                         knn=_knn(other, NEIGHBORS, tmp_path / "other-knn.h5"))
    foreign = _embed(foreign_world, 1, tmp_path)
    with pytest.raises(ArtifactError, match="image list") as err:
        _gather(world, foreign, mined["pairs"], tmp_path / "g.h5")
    assert str(foreign[0]) in str(err.value) and str(world["index"]) in str(err.value)
    with pytest.raises(ArtifactError, match="image list"):
        _mine(world, foreign, 1, tmp_path, tag="foreign")
    two = _embed(world, 2, tmp_path)
    with pytest.raises(ArtifactError, match="missing"):
        _gather(world, two[:1], mined["pairs"], tmp_path / "g.h5")
    with pytest.raises(ArtifactError, match="overlap"):
        _gather(world, [two[0], *mined["emb"]], mined["pairs"], tmp_path / "g.h5")
    # Pairs mined from other embeddings (roi_align) than the parts given.
    roi = _embed(world, 1, tmp_path, settings=RoiSettings(mode="roi_align", image_size=64))
    with pytest.raises(ArtifactError, match="mine-pairs"):
        _gather(world, roi, mined["pairs"], tmp_path / "g.h5")
    # Proposals other than those the boxes were filtered from.
    props = _proposals(world["index"], world["raw"], tmp_path / "p2.h5", tag="other")
    with pytest.raises(ArtifactError, match="proposals"):
        gather_correspondence.gather(
            world["index"], world["knn"], props, mined["emb"], mined["pairs"], tmp_path / "g.h5"
        )
    # Neighbours other than those the pairs were mined with.
    knn2 = _knn(world["index"], NEIGHBORS[:, ::-1].copy(), tmp_path / "knn2.h5")
    with pytest.raises(ArtifactError, match="neighbours"):
        gather_correspondence.gather(world["index"], knn2, world["proposals"], mined["emb"], mined["pairs"],
                                     tmp_path / "g.h5")
    assert not (tmp_path / "g.h5").exists()


def test_roi_align_mode_unit_norm(world: dict, tmp_path: Path) -> None:
    settings = RoiSettings(mode="roi_align", image_size=64)
    emb = _embed(world, 1, tmp_path, settings=settings)
    attrs = read_attrs(emb[0])
    assert attrs["mode"] == "roi_align" and attrs["image_forwards"] == 6 and attrs["crop_forwards"] == 0
    with open_artifact(emb[0]) as art:
        e = art.csr("embeddings").values.astype(np.float64)
    assert e.shape[1] == 512 and np.isfinite(e).all()
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=2e-3)  # float16 storage
    c = _read(_gather(world, emb, _mine(world, emb, 1, tmp_path, tag="roi"), tmp_path / "c.h5"))
    assert c["attrs"]["mode"] == "roi_align" and c["attrs"]["image_size"] == 64
    assert sum(len(r) for r in c["pairs"]) > 0


def test_stage_flags(world: dict, tmp_path: Path) -> None:
    def parse(module, argv: list[str]) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        return parser.parse_args(argv)

    emb = tmp_path / "emb-0.h5"
    roi_embed.run(parse(roi_embed, [
        "--model", str(world["model"]), "--index", str(world["index"]), "--proposals", str(world["proposals"]),
        "--shard", "0", "--shards", "1", "--mode", "crop", "--crop-size", "32", "--image-size", "64",
        "--min-size", "8", "--max-aspect", "3", "--iou", "0.5", "--max-boxes", "30", "--batch-size", "8",
        "--workers", "0", "--threads", "1", "--device", "cpu", "--out", str(emb)]))
    pairs = tmp_path / "pairs-0.h5"
    mine_pairs.run(parse(mine_pairs, [
        "--index", str(world["index"]), "--knn", str(world["knn"]), "--embeddings", str(emb), "--shard", "0",
        "--shards", "1", "--ratio", "0.1", "--threads", "1", "--out", str(pairs)]))
    out = tmp_path / "correspondence.h5"
    gather_correspondence.run(parse(gather_correspondence, [
        "--index", str(world["index"]), "--knn", str(world["knn"]), "--proposals", str(world["proposals"]),
        "--embeddings", str(emb), "--pairs", str(pairs), "--out", str(out)]))
    assert read_attrs(out)["stage"] == "correspondence"
    with pytest.raises(ValueError, match="annotations"):  # a plain image folder has no ground truth
        gather_correspondence.gather(world["index"], world["knn"], world["proposals"], [emb], [pairs],
                                     tmp_path / "c2.h5", quality=tmp_path / "q.json")


def test_fallback_kinds() -> None:
    boxes, fb = kept_boxes(np.zeros((0, 4), np.int32), 40, 30, FILT)
    np.testing.assert_array_equal(boxes, [[0, 0, 40, 30]])
    assert fb == "whole_image"
    assert kept_boxes(np.array([[0, 0, 2, 2], [0, 0, 20, 20]]), 40, 30, FILT)[1] is None
    assert kept_boxes(np.array([[0, 0, 20, 20], [0, 0, 2, 2]]), 40, 30, FILT)[1] is None
    assert kept_boxes(np.array([[0, 0, 2, 2], [1, 1, 2, 50]]), 40, 30, FILT)[1] == "first_box"


# --- pair quality ---------------------------------------------------------------------------------------------


def test_pair_quality_hand_made() -> None:
    # Image 0: GT cat 1 at A, cat 2 at B; kept boxes [A, B, nothing]. Image 1: GT cat 1 at C; kept [C, nothing].
    A, B, C = [0, 0, 10, 10], [20, 20, 10, 10], [5, 5, 10, 10]
    none0, none1 = [40, 0, 10, 10], [40, 40, 10, 10]
    boxes = Csr.from_rows([np.array([A, B, none0]), np.array([C, none1])], row_shape=(4,), dtype=np.int32)
    gt = [(np.array([A, B], float), np.array([1, 2])), (np.array([[5, 5, 10, 11]], float), np.array([1]))]
    neighbors = np.array([[1], [0]])
    # (0 -> 1): pairs (A, C) same category, (B, C) both objects but different category; (1 -> 0): (none1, A).
    ids = Csr.from_rows([np.array([[0, 0], [1, 0]]), np.array([[1, 0]])], row_shape=(2,), dtype=np.int32)
    q = pair_quality(boxes, neighbors, ids, gt, seed=0)
    assert q["num_pairs"] == 3 and q["mean_kept_boxes"] == 2.5 and q["mean_pairs_per_image_pair"] == 1.5
    assert q["mined"]["both_cover_object"] == pytest.approx(2 / 3)
    assert q["mined"]["same_category"] == pytest.approx(1 / 3)
    assert q["mined"]["same_category_given_both"] == pytest.approx(1 / 2)
    assert q["kept_boxes_covering_object"] == pytest.approx(3 / 5)
    assert q["image_pairs_sharing_gt_category"] == 1.0
    # Uniform random pairs: (0 -> 1) both-cover 2/3 * 1/2, same-category 1/6; (1 -> 0) the same; weights 2 and 1.
    assert q["random_expected"]["both_cover_object"] == pytest.approx(1 / 3)
    assert q["random_expected"]["same_category"] == pytest.approx(1 / 6)
    assert q["lift_over_random"]["both_cover_object"] == pytest.approx(2.0)
    # The seeded draw is reproducible, and over many draws approaches the expectation.
    assert pair_quality(boxes, neighbors, ids, gt, seed=0)["random"] == q["random"]
    many = Csr.from_rows([np.zeros((3000, 2)), np.zeros((3000, 2))], row_shape=(2,), dtype=np.int32)
    r = pair_quality(boxes, neighbors, many, gt, seed=1)["random"]
    assert r["both_cover_object"] == pytest.approx(1 / 3, abs=0.03)
    assert r["same_category"] == pytest.approx(1 / 6, abs=0.03)


@pytest.mark.coco128
def test_pipeline_quality_on_coco128(coco128: Path, tmp_path: Path) -> None:
    """Real photos, ground-truth boxes used as the proposals: every kept box covers an object."""
    ann = coco128 / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    keep = data["images"][:4]
    ids = {k["id"] for k in keep}
    sub = dict(data, images=keep, annotations=[a for a in data["annotations"] if a["image_id"] in ids])
    (tmp_path / "ann.json").write_text(json.dumps(sub))
    index_path = write_index(build_index(coco128 / "images", tmp_path / "ann.json"), tmp_path / "images.h5")
    index = load_index(index_path)
    gt = load_gt(tmp_path / "ann.json", index.ids)
    rows = [np.round(g).astype(np.int32) for g, _ in gt]
    torch.manual_seed(0)
    method = build_method("byol", arch="resnet18", proj_hidden=64, proj_dim=32, pred_hidden=64)
    world = {
        "index": index_path,
        "proposals": _proposals(index_path, rows, tmp_path / "proposals.h5"),
        "knn": _knn(index_path, np.array([[1, 2], [0, 3], [3, 0], [2, 1]]), tmp_path / "knn.h5"),
        "model": save_final(tmp_path / "model.pt", method),
    }
    emb = _embed(world, 1, tmp_path)
    qpath = tmp_path / "quality.json"
    gather_correspondence.gather(index_path, world["knn"], world["proposals"], emb, _mine(world, emb, 1, tmp_path),
                                 tmp_path / "c.h5", quality=qpath)
    q = json.loads(qpath.read_text())
    assert q["num_images"] == 4 and q["kept_boxes_covering_object"] == 1.0
    assert q["mined"]["both_cover_object"] == 1.0 and q["random"]["both_cover_object"] == 1.0
    assert 0.0 <= q["mined"]["same_category"] <= 1.0


# --- figure ---------------------------------------------------------------------------------------------------


def test_figure_writes_png_of_expected_size(world: dict, mined: dict, tmp_path: Path) -> None:
    out = plot_correspondence(mined["out"], world["index"], tmp_path / "fig.png", num=3, seed=0, panel=96, cols=2)
    assert out.stat().st_size > 1000
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (2 * 2 * 96, 2 * 96)
        assert np.asarray(img.convert("RGB")).std() > 10  # not a blank canvas
    rgb = np.zeros((40, 50, 3), np.uint8)
    single = draw_pairs([(rgb, rgb)], [np.array([[1, 2, 10, 10, 3, 4, 20, 20]])], tmp_path / "one.png", panel=64)
    with Image.open(single) as img:
        assert img.size == (128, 64)
