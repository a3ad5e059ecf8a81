"""The HDF5 artifact store: atomic writes, provenance attributes, digest checks, CSR round trips."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from orl import artifacts
from orl.artifacts import ArtifactError, Csr, open_artifact, read_attrs, write_artifact


def _write(path: Path, digest: str = "aaaa", stage: str = "knn", **arrays) -> Path:
    arrays = arrays or {"indices": np.arange(12).reshape(4, 3)}
    return write_artifact(path, stage=stage, image_list_digest=digest, params={"k": 3}, arrays=arrays)


def test_attributes_are_recorded(tmp_path: Path) -> None:
    out = _write(tmp_path / "knn.h5")
    attrs = read_attrs(out)
    assert attrs["format_version"] == artifacts.FORMAT_VERSION
    assert attrs["stage"] == "knn"
    assert attrs["image_list_digest"] == "aaaa"
    assert attrs["params"] == {"k": 3}
    assert attrs["params_digest"] == artifacts.digest_params({"k": 3})
    assert attrs["orl_version"]
    assert attrs["created"]


def test_params_digest_ignores_key_order() -> None:
    assert artifacts.digest_params({"a": 1, "b": [1, 2]}) == artifacts.digest_params({"b": [1, 2], "a": 1})
    assert artifacts.digest_params({"a": 1}) != artifacts.digest_params({"a": 2})


def test_arrays_round_trip(tmp_path: Path) -> None:
    big = np.random.default_rng(0).normal(size=(5000, 8)).astype(np.float32)
    names = np.array(["a.jpg", "b/c.png", "ü.jpg"])
    out = write_artifact(
        tmp_path / "x.h5", stage="s", image_list_digest="d", params={}, arrays={"big": big, "names": names}
    )
    with open_artifact(out) as art:
        np.testing.assert_array_equal(art.array("big"), big)
        assert list(art.array("names")) == list(names)
        assert art.dataset("big").compression == "gzip"  # large arrays are chunked and compressed
        np.testing.assert_array_equal(art.dataset("big")[10:20], big[10:20])


def test_csr_round_trip_with_empty_rows(tmp_path: Path) -> None:
    rows = [np.array([[1, 2, 3, 4]]), np.zeros((0, 4), int), np.arange(12).reshape(3, 4), np.zeros((0, 4), int)]
    csr = Csr.from_rows(rows, row_shape=(4,), dtype=np.int32)
    assert len(csr) == 4 and list(csr.lengths()) == [1, 0, 3, 0]
    out = write_artifact(tmp_path / "b.h5", stage="proposals", image_list_digest="d", params={}, arrays={"boxes": csr})
    with open_artifact(out, stage="proposals") as art:
        back = art.csr("boxes")
        for i, row in enumerate(rows):
            np.testing.assert_array_equal(back[i], row)
            np.testing.assert_array_equal(art.csr_row("boxes", i), row)
        assert back.offsets.dtype == np.int64


def test_csr_concatenate_keeps_row_order() -> None:
    a = Csr.from_rows([np.array([1, 2]), np.array([3])], dtype=np.int64)
    b = Csr.from_rows([np.zeros(0, np.int64), np.array([4, 5, 6])], dtype=np.int64)
    c = Csr.concatenate([a, b])
    assert [list(r) for r in c] == [[1, 2], [3], [], [4, 5, 6]]


def test_csr_rejects_bad_offsets() -> None:
    with pytest.raises(ValueError):
        Csr(np.arange(3), np.array([0, 2]))
    with pytest.raises(ValueError):
        Csr(np.arange(3), np.array([0, 2, 1, 3]))


def test_digest_mismatch_names_both_files(tmp_path: Path) -> None:
    a = _write(tmp_path / "index.h5", digest="1111", stage="image_index")
    b = _write(tmp_path / "knn.h5", digest="2222")
    with pytest.raises(ArtifactError) as e:
        open_artifact(b, stage="knn", like=a)
    assert str(a) in str(e.value) and str(b) in str(e.value)
    c = _write(tmp_path / "knn_ok.h5", digest="1111")
    with open_artifact(c, stage="knn", like=a) as art:
        assert art.stage == "knn"


def test_wrong_stage_and_version_are_refused(tmp_path: Path) -> None:
    out = _write(tmp_path / "knn.h5")
    with pytest.raises(ArtifactError, match="expected 'features'"):
        open_artifact(out, stage="features")
    with h5py.File(out, "r+") as f:
        f.attrs["format_version"] = 999
    with pytest.raises(ArtifactError, match="format version 999"):
        open_artifact(out)


def test_missing_and_foreign_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        open_artifact(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(ArtifactError, match="junk.h5"):
        open_artifact(junk)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ArtifactError, match="not an orl artifact"):
        open_artifact(tmp_path / "plain.h5")


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "out.h5"

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(artifacts, "_validate", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        _write(final)
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary file is cleaned up too


def test_failed_write_keeps_previous_artifact(tmp_path: Path) -> None:
    final = _write(tmp_path / "out.h5", digest="old")
    with pytest.raises(TypeError):
        write_artifact(final, stage="knn", image_list_digest="new", params={}, arrays={"bad": object()})
    assert read_attrs(final)["image_list_digest"] == "old"


def test_killed_write_leaves_nothing_at_final_path(tmp_path: Path) -> None:
    """SIGKILL a process in the middle of writing a large artifact: the final path never appears."""
    final = tmp_path / "big.h5"
    script = textwrap.dedent(
        f"""
        import numpy as np, sys
        from orl import artifacts
        real = artifacts._write_array
        def slow(group, name, data):
            real(group, name, data)
            print("wrote", name, flush=True)
            import time; time.sleep(30)
        artifacts._write_array = slow
        artifacts.write_artifact({str(final)!r}, stage="s", image_list_digest="d", params={{}},
                                 arrays={{"a": np.zeros((1000, 100)), "b": np.ones(10)}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("wrote a")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.1)
    assert not final.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(name.startswith(".big.h5.") and name.endswith(".tmp") for name in leftovers)


def test_reserved_attribute_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        write_artifact(tmp_path / "x.h5", stage="s", image_list_digest="d", params={}, arrays={}, attrs={"stage": 1})


def test_write_json_atomic_replaces_whole_files_only(tmp_path, monkeypatch):
    import json as _json

    from orl.artifacts import write_json_atomic

    path = tmp_path / "bench" / "m" / "r.json"
    assert write_json_atomic(path, {"a": 1}) == path and _json.loads(path.read_text()) == {"a": 1}
    # A failure while serialising leaves the old file untouched and no temp file behind.
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert _json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
    # The result files of every benchmark go through it.
    calls = []
    import orl.bench.results as results

    monkeypatch.setattr(results, "write_json_atomic", lambda p, doc: calls.append(p) or Path(p))
    results.write_result(tmp_path / "x.json", method="m", benchmark="b", metrics={}, settings={}, weights="w",
                         weights_sha256="0")
    assert calls == [tmp_path / "x.json"]
