"""Exact cosine kNN (ORL_SPEC 2b): every route equals brute force, self excluded by index, ties by index, chunking,
and the `orl knn` stage round trip including refusal of features made from another image list."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orl.artifacts import ArtifactError, open_artifact, write_artifact
from orl.data.image_index import build_index, write_index
from orl.mining import knn as knn_mod
from orl.mining.knn import available_routes, chunk_rows, knn, resolve_route
from orl.stages import knn as knn_stage

ALL_ROUTES = ["faiss-gpu", "torch", "faiss-cpu", "numpy"]


def _route(route: str) -> str:
    if route not in available_routes():
        pytest.skip(f"route {route} not available here")
    return route


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: float64 similarities, self by index to -inf, stable sort (ties -> lower index)."""
    x64 = x.astype(np.float64)
    x64 /= np.linalg.norm(x64, axis=1, keepdims=True)
    s = x64 @ x64.T
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


@pytest.mark.parametrize("route", ALL_ROUTES)
@pytest.mark.parametrize("n,d,k", [(257, 32, 10), (40, 8, 5), (2, 4, 1), (11, 3, 10)])
def test_routes_match_brute_force(route: str, n: int, d: int, k: int) -> None:
    x = _unit(np.random.default_rng(n * 100 + d), n, d)
    ref_idx, ref_sim = _brute_force(x, k)
    idx, sim = knn(x, k, route=_route(route))
    assert idx.dtype == np.int64 and sim.dtype == np.float32
    assert idx.shape == sim.shape == (n, k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sim, ref_sim, atol=1e-5)
    assert not (idx == np.arange(n)[:, None]).any()


@pytest.mark.parametrize("route", ALL_ROUTES)
def test_unnormalised_input_is_cosine(route: str) -> None:
    x = _unit(np.random.default_rng(1), 50, 6) * np.random.default_rng(2).uniform(0.1, 10, size=(50, 1))
    ref_idx, ref_sim = _brute_force(x, 4)
    idx, sim = knn(x.astype(np.float32), 4, route=_route(route))
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sim, ref_sim, atol=1e-5)


@pytest.mark.parametrize("route", ALL_ROUTES)
def test_duplicate_images_keep_their_twin(route: str) -> None:
    x = _unit(np.random.default_rng(3), 30, 16)
    x[17] = x[4]  # an exact duplicate image: self-similarity and twin-similarity are both 1
    idx, sim = knn(x, 5, route=_route(route))
    assert idx[4, 0] == 17 and idx[17, 0] == 4
    np.testing.assert_allclose(sim[[4, 17], 0], 1.0, atol=1e-6)
    assert not (idx == np.arange(30)[:, None]).any()


@pytest.mark.parametrize("route", ALL_ROUTES)
@pytest.mark.parametrize("chunk", [1, 3, 8, None])
def test_ties_ordered_by_index_and_chunk_independent(route: str, chunk: int | None) -> None:
    # One-hot rows give exact similarities 0 or 1: massive ties, inside the top k and across its boundary.
    labels = np.array([0, 1, 0, 2, 0, 1, 3, 0, 2, 0, 0, 1])
    x = np.eye(4, dtype=np.float32)[labels]
    k = 6
    idx, sim = knn(x, k, route=_route(route), chunk_size=chunk)
    ref_idx, ref_sim = _brute_force(x, k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(sim, ref_sim.astype(np.float32))
    # Spelled out for image 0 (label 0): the other label-0 images in index order, then the lowest other indices.
    assert idx[0].tolist() == [2, 4, 7, 9, 10, 1]


@pytest.mark.parametrize("route", ALL_ROUTES)
def test_chunking_gives_identical_results(route: str) -> None:
    x = _unit(np.random.default_rng(4), 203, 24)
    full = knn(x, 7, route=_route(route), chunk_size=10_000)
    for chunk in (1, 13, 64, 202):
        part = knn(x, 7, route=route, chunk_size=chunk)
        np.testing.assert_array_equal(part[0], full[0])
        np.testing.assert_array_equal(part[1], full[1])
    # A tiny memory budget forces many chunks through the same path.
    budget = knn(x, 7, route=route, memory_budget=20 * 203 * 5)
    np.testing.assert_array_equal(budget[0], full[0])


def test_query_range_is_a_slice_of_the_full_result() -> None:
    x = _unit(np.random.default_rng(5), 60, 8)
    idx, sim = knn(x, 5, route="numpy")
    part_idx, part_sim = knn(x, 5, route="numpy", query_range=(20, 45), chunk_size=7)
    np.testing.assert_array_equal(part_idx, idx[20:45])
    np.testing.assert_array_equal(part_sim, sim[20:45])


def test_k_must_be_below_n() -> None:
    x = _unit(np.random.default_rng(6), 5, 4)
    with pytest.raises(ValueError, match="at least 6 images"):
        knn(x, 5)
    with pytest.raises(ValueError, match="at least 2 images"):
        knn(x[:1], 1)
    with pytest.raises(ValueError, match="positive integer"):
        knn(x, 0)
    idx, _ = knn(x, 4)  # k = N - 1: everyone else, in similarity order
    assert sorted(idx[0].tolist()) == [1, 2, 3, 4]


def test_bad_features_are_refused() -> None:
    x = _unit(np.random.default_rng(7), 6, 4)
    x[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        knn(x, 2)
    x[2] = 0
    with pytest.raises(ValueError, match="all zero"):
        knn(x, 2)
    with pytest.raises(ValueError, match="unknown kNN route"):
        knn(_unit(np.random.default_rng(8), 6, 4), 2, route="annoy")


def test_auto_route_and_chunk_size() -> None:
    route = resolve_route("auto")
    assert route in available_routes()
    if "faiss-gpu" in available_routes():
        assert route == "faiss-gpu"
    elif not knn_mod._torch_cuda_available():
        assert route == next(r for r in knn_mod._CPU_PREFERENCE if r in available_routes())
    # COCO+ with the default 1 GiB budget: a few hundred query rows per chunk, block well under the budget.
    for route in ("torch", "numpy", "faiss-cpu", "faiss-gpu"):
        rows = chunk_rows(241_690, route=route)
        assert 100 <= rows <= 1000
        assert rows * 241_690 * knn_mod._BYTES_PER_ELEMENT[route] <= knn_mod.DEFAULT_MEMORY_BUDGET


# --- stage round trip -------------------------------------------------------------------------------------------


def _index(tmp_path: Path, name: str, n: int) -> tuple[Path, str]:
    folder = tmp_path / name
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (8 + i, 8), (i * 10 % 256, 0, 0)).save(folder / f"{i:03d}.png")
    index = build_index(folder)
    return write_index(index, tmp_path / f"{name}.h5"), index.digest


def _features(path: Path, digest: str, x: np.ndarray) -> Path:
    return write_artifact(path, stage="features", image_list_digest=digest, params={}, arrays={"features": x})


def _run_stage(*argv: str) -> None:
    parser = argparse.ArgumentParser()
    knn_stage.add_arguments(parser)
    knn_stage.run(parser.parse_args(list(argv)))


def test_stage_round_trip(tmp_path: Path) -> None:
    index, digest = _index(tmp_path, "a", 12)
    x = _unit(np.random.default_rng(9), 12, 8)
    x[5] = x[2]
    feats = _features(tmp_path / "features.h5", digest, x)
    out = tmp_path / "knn.h5"
    _run_stage("--features", str(feats), "--index", str(index), "--out", str(out), "--k", "3", "--route", "numpy",
               "--chunk-size", "5")
    with open_artifact(out, stage="knn", like=index) as art:
        np.testing.assert_array_equal(art.array("indices"), _brute_force(x, 3)[0])
        np.testing.assert_allclose(art.array("similarities"), _brute_force(x, 3)[1], atol=1e-6)
        assert art.attrs["route"] == "numpy" and art.attrs["k"] == 3 and art.params == {"k": 3}
        assert art.array("indices")[2, 0] == 5


def test_stage_refuses_features_from_another_image_list(tmp_path: Path) -> None:
    index_a, _ = _index(tmp_path, "a", 12)
    _, digest_b = _index(tmp_path, "b", 13)
    feats = _features(tmp_path / "features_b.h5", digest_b, _unit(np.random.default_rng(10), 13, 8))
    with pytest.raises(ArtifactError) as err:
        _run_stage("--features", str(feats), "--index", str(index_a), "--out", str(tmp_path / "knn.h5"))
    assert str(feats) in str(err.value) and str(index_a) in str(err.value)
    assert not (tmp_path / "knn.h5").exists()


def test_stage_refuses_k_too_large(tmp_path: Path) -> None:
    index, digest = _index(tmp_path, "a", 4)
    feats = _features(tmp_path / "features.h5", digest, _unit(np.random.default_rng(11), 4, 8))
    with pytest.raises(ValueError, match="at least 11 images"):
        _run_stage("--features", str(feats), "--index", str(index), "--out", str(tmp_path / "knn.h5"), "--k", "10")
