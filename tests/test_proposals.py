"""Stage 2c: reproducible selective-search proposals, sharding + gather, failures, max_side, quality report."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orl.artifacts import ArtifactError, open_artifact, read_attrs
from orl.data.image_index import build_index, write_index
from orl.mining import proposals as P
from orl.mining.box_filter import filter_boxes
from orl.mining.proposal_quality import proposal_quality
from orl.stages import gather_proposals, proposals
from orl.stages.gather_proposals import run_gather
from orl.stages.proposals import run_shard

OPENCV = P.ProposalSettings(backend="opencv", seed=0)


def _scene(rng: np.random.Generator, w: int = 128, h: int = 96) -> np.ndarray:
    """A noisy background with a few flat and textured rectangles: enough structure for hundreds of boxes."""
    img = rng.normal(110, 25, (h, w, 3)).clip(0, 255)
    for _ in range(6):
        x, y = rng.integers(0, w - 16), rng.integers(0, h - 16)
        bw, bh = rng.integers(12, w // 2), rng.integers(12, h // 2)
        img[y : y + bh, x : x + bw] = rng.integers(0, 255, 3) + rng.normal(0, 8, (min(bh, h - y), min(bw, w - x), 1))
    return img.clip(0, 255).astype(np.uint8)


def _write_images(folder: Path, n: int, seed: int = 0, prefix: str = "img") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for k in range(n):
        name = f"{prefix}{k:02d}.png"
        Image.fromarray(_scene(rng)).save(folder / name)
        names.append(name)
    return names


def _index(tmp: Path, folder: Path, annotations: Path | None = None, name: str = "images.h5") -> Path:
    out = tmp / name
    write_index(build_index(folder, annotations), out)
    return out


@pytest.fixture
def five(tmp_path: Path) -> Path:
    """An index of five small synthetic scenes."""
    _write_images(tmp_path / "imgs", 5)
    return _index(tmp_path, tmp_path / "imgs")


def _shards(index: Path, out_dir: Path, shards: int, settings: P.ProposalSettings = OPENCV, threads: int = 1):
    return [
        run_shard(index, i, shards, settings, threads, out_dir / f"s{shards}-part-{i}.h5") for i in range(shards)
    ]


def _boxes(path: Path) -> list[np.ndarray]:
    with open_artifact(path) as art:
        return list(art.csr("boxes"))


def test_opencv_order_is_unseeded_without_the_fix():
    # Documents the problem the srand() reseeding solves: OpenCV itself returns the same set in a varying order.
    rgb = _scene(np.random.default_rng(3))
    import cv2

    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    runs = []
    for _ in range(3):
        ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        ss.setBaseImage(bgr)
        ss.switchToSelectiveSearchFast()
        runs.append(np.asarray(ss.process()))
    assert all({tuple(b) for b in r} == {tuple(b) for b in runs[0]} for r in runs)
    assert any(not np.array_equal(r, runs[0]) for r in runs[1:])


def test_propose_reproducible_and_seed_dependent():
    rgb = _scene(np.random.default_rng(4))
    a = P.propose(rgb, OPENCV, position=3)
    b = P.propose(rgb, OPENCV, position=3)
    assert a.dtype == np.int32 and a.ndim == 2 and a.shape[1] == 4 and len(a) > 50
    np.testing.assert_array_equal(a, b)
    other = P.propose(rgb, P.ProposalSettings(seed=1), position=3)
    assert {tuple(r) for r in other} == {tuple(r) for r in a}  # the seed changes the order only
    assert not np.array_equal(other, a)
    assert P.image_seed(0, 3) != P.image_seed(0, 4) != P.image_seed(1, 3)


def test_shard_identical_across_runs(five: Path, tmp_path: Path):
    a = _boxes(run_shard(five, 0, 1, OPENCV, 1, tmp_path / "a.h5"))
    b = _boxes(run_shard(five, 0, 1, OPENCV, 1, tmp_path / "b.h5"))
    assert len(a) == 5 and all(len(r) > 0 for r in a)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_identical_across_shard_counts_and_workers(five: Path, tmp_path: Path):
    gathered = []
    for shards, threads in [(1, 1), (2, 2), (3, 1)]:
        parts = _shards(five, tmp_path, shards, threads=threads)
        out, _, _ = run_gather(five, parts, tmp_path / f"gathered-{shards}.h5")
        gathered.append(_boxes(out))
    for other in gathered[1:]:
        assert len(other) == len(gathered[0]) == 5
        for x, y in zip(gathered[0], other):
            np.testing.assert_array_equal(x, y)


def test_gather_keeps_image_order(five: Path, tmp_path: Path):
    parts = _shards(five, tmp_path, 3)
    out, quality, _ = run_gather(five, list(reversed(parts)), tmp_path / "proposals.h5")
    q = json.loads(quality.read_text())  # a plain folder has no annotations: box counts only
    assert q["ground_truth"] is False and q["raw"]["recall@0.5"] is None and q["raw"]["mean_boxes_per_image"] > 0
    rows = _boxes(out)
    from orl.data.image_index import load_index

    index = load_index(five)
    for i, row in enumerate(rows):
        task = P.ImageTask(i, str(index.path(i)), int(index.widths[i]), int(index.heights[i]))
        np.testing.assert_array_equal(row, P.propose_task(task, OPENCV).boxes)
    attrs = read_attrs(out)
    assert attrs["stage"] == "proposals" and attrs["num_images"] == 5 and attrs["failed"] == []


def test_gather_refuses_foreign_missing_and_overlapping_parts(five: Path, tmp_path: Path):
    _write_images(tmp_path / "other", 5, seed=9, prefix="x")
    other_index = _index(tmp_path, tmp_path / "other", name="other.h5")
    foreign = run_shard(other_index, 0, 2, OPENCV, 1, tmp_path / "foreign-0.h5")
    two = _shards(five, tmp_path, 2)
    three = _shards(five, tmp_path, 3)
    with pytest.raises(ArtifactError, match="image list"):
        run_gather(five, [foreign, two[1]], tmp_path / "g.h5")
    with pytest.raises(ArtifactError, match="missing"):
        run_gather(five, [three[0], three[2]], tmp_path / "g.h5")
    with pytest.raises(ArtifactError, match="missing"):
        run_gather(five, [three[0], three[1]], tmp_path / "g.h5")
    with pytest.raises(ArtifactError, match="overlap"):
        run_gather(five, [two[0], two[1], three[1]], tmp_path / "g.h5")
    with pytest.raises(ArtifactError, match="overlap"):
        run_gather(five, [two[0], two[0], two[1]], tmp_path / "g.h5")
    seeded = run_shard(five, 1, 2, P.ProposalSettings(seed=7), 1, tmp_path / "seed7.h5")
    with pytest.raises(ArtifactError, match="same settings"):
        run_gather(five, [two[0], seeded], tmp_path / "g.h5")
    assert not (tmp_path / "g.h5").exists()


def test_grayscale_and_tiny_images(tmp_path: Path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rgb = _scene(np.random.default_rng(5))
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    Image.fromarray(_scene(np.random.default_rng(6), w=40, h=30)).save(folder / "tiny.png")
    index = _index(tmp_path, folder)
    rows = _boxes(run_shard(index, 0, 1, OPENCV, 1, tmp_path / "p.h5"))
    gray, tiny = rows  # folder order is sorted names
    assert len(gray) > 0 and len(tiny) > 0
    assert (tiny[:, 0] + tiny[:, 2]).max() <= 40 and (tiny[:, 1] + tiny[:, 3]).max() <= 30
    kept = filter_boxes(tiny)  # nothing reaches 96 px: the first raw box is the fallback
    np.testing.assert_array_equal(kept, tiny[:1])


def test_corrupt_image_gets_zero_boxes_and_is_reported(five: Path, tmp_path: Path):
    (tmp_path / "imgs" / "img02.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.warns(UserWarning, match="img02.png"):
        part = run_shard(five, 0, 1, OPENCV, 1, tmp_path / "p.h5")
    rows = _boxes(part)
    assert len(rows[2]) == 0 and all(len(r) > 0 for k, r in enumerate(rows) if k != 2)
    failed = read_attrs(part)["failed"]
    assert len(failed) == 1 and failed[0][:2] == [2, "img02.png"] and "decode" in failed[0][2]
    with pytest.warns(UserWarning, match="img02.png"):
        out, _, _ = run_gather(five, [part], tmp_path / "g.h5")
    assert read_attrs(out)["failed"] == failed


def test_image_resized_since_indexing_is_reported(five: Path, tmp_path: Path):
    Image.fromarray(_scene(np.random.default_rng(7), w=64, h=48)).save(tmp_path / "imgs" / "img01.png")
    with pytest.warns(UserWarning, match="changed since indexing"):
        part = run_shard(five, 0, 1, OPENCV, 1, tmp_path / "p.h5")
    assert len(_boxes(part)[1]) == 0


def test_max_side_maps_boxes_to_original_coordinates():
    rgb = _scene(np.random.default_rng(8), w=128, h=96)
    small = P.ProposalSettings(max_side=64)
    boxes = P.propose(rgb, small, position=0)
    assert len(boxes) > 0
    assert boxes[:, 0].min() >= 0 and boxes[:, 1].min() >= 0 and (boxes[:, 2:] >= 1).all()
    assert (boxes[:, 0] + boxes[:, 2]).max() == 128 and (boxes[:, 1] + boxes[:, 3]).max() == 96
    # exactly the downscaled run's boxes, scaled by 2 (128x96 -> 64x48 is an exact factor)
    direct = P.opencv_boxes(P.downscale(rgb, 64), P.image_seed(0, 0))
    np.testing.assert_array_equal(boxes, direct * 2)
    np.testing.assert_array_equal(P.propose(rgb, P.ProposalSettings(max_side=500), 0), P.propose(rgb, OPENCV, 0))


def test_map_boxes_back_rounds_outward_and_clips():
    boxes = np.array([[0, 0, 3, 3], [2, 1, 1, 2]], dtype=np.int32)
    out = P.map_boxes_back(boxes, (3, 3), (10, 10))  # scale 10/3
    np.testing.assert_array_equal(out, [[0, 0, 10, 10], [6, 3, 4, 7]])


def test_selectivesearch_backend_drops_duplicates():
    import selectivesearch

    rgb = _scene(np.random.default_rng(10), w=96, h=72)
    settings = P.ProposalSettings(backend="selectivesearch", scale=100, sigma=0.8, min_size=10)
    boxes = P.propose(rgb, settings, position=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage's LBP-on-float warning inside the package
        _, regions = selectivesearch.selective_search(rgb, scale=100, sigma=0.8, min_size=10)
    raw = [tuple(r["rect"]) for r in regions]
    assert len(set(raw)) < len(raw)  # the package does repeat boxes
    first = list(dict.fromkeys(raw))  # unique, first occurrence, original order
    want = np.array(first) + np.array([0, 0, 1, 1])  # inclusive extents -> pixel widths
    np.testing.assert_array_equal(boxes, want)
    np.testing.assert_array_equal(P.propose(rgb, settings, 0), boxes)


def test_stage_cli_functions(five: Path, tmp_path: Path):
    parser = argparse.ArgumentParser()
    proposals.add_arguments(parser)
    parts = []
    for i in range(2):
        args = parser.parse_args(
            ["--index", str(five), "--shard", str(i), "--shards", "2", "--backend", "selectivesearch",
             "--scale", "100", "--max-side", "64", "--out", str(tmp_path / f"part-{i}.h5")]
        )
        proposals.run(args)
        parts.append(tmp_path / f"part-{i}.h5")
    attrs = read_attrs(parts[1])
    assert (attrs["shard"], attrs["shards"], attrs["start"], attrs["stop"]) == (1, 2, 2, 5)
    assert attrs["params"]["backend"] == "selectivesearch" and attrs["params"]["max_side"] == 64
    gparser = argparse.ArgumentParser()
    gather_proposals.add_arguments(gparser)
    gather_proposals.run(gparser.parse_args(["--index", str(five), "--parts", *map(str, parts),
                                             "--out", str(tmp_path / "proposals.h5")]))
    assert len(_boxes(tmp_path / "proposals.h5")) == 5


def _coco_json(path: Path, names: list[str], sizes: list[tuple[int, int]], anns: list[dict]) -> Path:
    images = [{"id": 100 + k, "file_name": n, "width": w, "height": h} for k, (n, (w, h)) in enumerate(zip(names, sizes))]
    for k, a in enumerate(anns):
        a.setdefault("id", k + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("category_id", 1)
        a["area"] = a["bbox"][2] * a["bbox"][3]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    return path


def test_quality_json_on_annotated_set(tmp_path: Path):
    names = _write_images(tmp_path / "imgs", 3)
    anns = [
        {"image_id": 100, "bbox": [0, 0, 128, 96]},  # the whole image: selective search always proposes it
        {"image_id": 100, "bbox": [10, 10, 30, 20]},
        {"image_id": 101, "bbox": [0, 0, 128, 96], "iscrowd": 1},  # ignored
        {"image_id": 102, "bbox": [5, 5, 100, 80]},
    ]
    ann = _coco_json(tmp_path / "instances.json", names, [(128, 96)] * 3, anns)
    index = _index(tmp_path, tmp_path / "imgs", ann)
    parts = _shards(index, tmp_path, 2)
    flt = {"min_size": 32, "max_aspect": 3.0, "iou_thresh": 0.5, "max_boxes": 100}
    out, qpath, _ = run_gather(index, parts, tmp_path / "mining" / "proposals.h5", filter_params=flt)
    assert qpath == tmp_path / "mining" / "proposals_quality.json"
    q = json.loads(qpath.read_text())
    assert q["num_images"] == 3 and q["num_gt_boxes"] == 3 and q["filter"] == flt
    assert 0 <= q["filtered"]["recall@0.7"] <= q["filtered"]["recall@0.5"] <= q["raw"]["recall@0.5"] <= 1
    assert q["raw"]["recall@0.5"] >= 2 / 3  # both large boxes are found
    assert q["raw"]["mean_boxes_per_image"] > q["filtered"]["mean_boxes_per_image"] >= 1
    assert [q["recall_by_gt_area"][a]["num_gt_boxes"] for a in ("small", "medium", "large")] == [1, 1, 1]
    assert q["proposals"]["backend"] == "opencv" and q["failed_images"] == 0


def test_proposal_quality_by_hand():
    gt = [np.array([[0, 0, 100, 100], [200, 200, 10, 10]], float), np.zeros((0, 4)), np.array([[0, 0, 50, 50.0]])]
    from orl.artifacts import Csr

    boxes = Csr.from_rows(
        [np.array([[0, 0, 100, 100], [200, 200, 10, 14]]), np.array([[0, 0, 5, 5]]), np.zeros((0, 4))],
        row_shape=(4,), dtype=np.int32,
    )
    q = proposal_quality(boxes, gt, min_size=96)
    # GT 2 is matched at IoU 100/140 = 0.714 by the raw boxes; the filter drops that small box
    assert q["raw"]["recall@0.5"] == pytest.approx(2 / 3) and q["raw"]["recall@0.7"] == pytest.approx(2 / 3)
    assert q["filtered"]["recall@0.5"] == pytest.approx(1 / 3)
    assert q["raw"]["mean_boxes_per_image"] == 1.0 and q["filtered"]["mean_boxes_per_image"] == pytest.approx(2 / 3)
    assert q["filtered"]["images_using_fallback_box"] == 1 and q["raw"]["images_without_boxes"] == 1


@pytest.mark.coco128
def test_coco128_smoke(coco128: Path, tmp_path: Path):
    data = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    images = data["images"][:3]
    ids = {im["id"] for im in images}
    subset = {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    ann = tmp_path / "instances3.json"
    ann.write_text(json.dumps(subset))
    index = _index(tmp_path, coco128 / "images", ann)
    # max_side keeps this a few seconds; the full-resolution numbers come from benchmarks/studies/proposal_quality_coco128.sh
    settings = P.ProposalSettings(max_side=320)
    part = run_shard(index, 0, 1, settings, 1, tmp_path / "p.h5")
    _, qpath, mean_raw = run_gather(index, [part], tmp_path / "proposals.h5")
    q = json.loads(qpath.read_text())
    crowdless = [a for a in subset["annotations"] if not a.get("iscrowd") and a["bbox"][2] > 0 and a["bbox"][3] > 0]
    assert q["num_images"] == 3 and q["num_gt_boxes"] == len(crowdless) > 0
    assert mean_raw > 200
    assert q["raw"]["recall@0.5"] > 0.5
    assert 1 <= q["filtered"]["mean_boxes_per_image"] <= 100


def test_guard_resizes_extreme_images_only() -> None:
    from orl.mining.proposals import guarded_size

    assert guarded_size(480, 640, 4000, 10) is None
    assert guarded_size(20, 20000, 4000, 10) == (20, 200)  # the long side squeezed to 10 x the short side
    assert guarded_size(6000, 4000, 4000, 10) == (4000, 2667)
    assert guarded_size(20, 20000, None, None) is None


def test_extreme_image_is_searched_resized_with_a_warning_and_boxes_in_full_coordinates(tmp_path: Path) -> None:
    from orl.stages.proposals import run_shard

    rng = np.random.default_rng(0)
    img = np.repeat(np.repeat(rng.integers(0, 255, (2, 300, 3), dtype=np.uint8), 10, axis=0), 10, axis=1)
    (tmp_path / "img").mkdir()
    Image.fromarray(img).save(tmp_path / "img" / "thin.png")  # 20 x 3000
    Image.fromarray(img[:, :40]).save(tmp_path / "img" / "small.png")
    index = write_index(build_index(tmp_path / "img"), tmp_path / "index.h5")
    settings = P.ProposalSettings(guard_long_side=4000, guard_aspect=10)
    with pytest.warns(UserWarning, match=r"1 extreme image\(s\).*thin.png \(3000x20 searched at 200x20\)"):
        out = run_shard(index, 0, 1, settings, 1, tmp_path / "part.h5")
    with open_artifact(out) as art:
        assert [row[1] for row in art.attrs["guarded"]] == ["thin.png"]
        boxes = art.csr_row("boxes", 1)  # sorted names: small.png, thin.png
    assert len(boxes) and boxes[:, 0].min() >= 0 and (boxes[:, 0] + boxes[:, 2]).max() <= 3000
    assert (boxes[:, 0] + boxes[:, 2]).max() > 2000  # boxes span the full width, not the 200 px copy
