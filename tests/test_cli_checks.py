"""Bad arguments are refused before any work, with one line; warnings read as orl's, not as Python's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from orl.artifacts import write_artifact
from orl.data.image_index import build_index, write_index
from workflow_helpers import check, snakemake


def _orl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orl.cli", *args], capture_output=True, text=True, timeout=300)


def _images(folder: Path) -> Path:
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 24), (200, 0, 0)).save(folder / "a.png")
    Image.new("RGB", (32, 24), (0, 200, 0)).save(folder / "b.gif")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_export_of_an_artifact_says_it_is_not_a_model(tmp_path: Path) -> None:
    knn = write_artifact(tmp_path / "knn.h5", stage="knn", image_list_digest="d", params={}, arrays={})
    proc = _orl("export", "--model", str(knn), "--out-dir", str(tmp_path / "export"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"orl export: error: {knn}: is an HDF5 artifact, not a model; pass a training "
                                   "output such as results/pretrain/<method>/model.pt")


def test_folder_as_out_and_impossible_counts_are_refused_before_work(tmp_path: Path) -> None:
    index = write_index(build_index(_images(tmp_path / "img")), tmp_path / "index.h5")
    proc = _orl("proposals", "--index", str(index), "--out", str(tmp_path))
    assert proc.returncode == 1 and f"--out {tmp_path} is a folder" in proc.stderr
    assert "proposals shard" not in proc.stderr  # refused before the shard was computed
    proc = _orl("index", "--images", str(tmp_path / "img"), "--out", str(tmp_path / "i.h5"), "--threads", "0")
    assert proc.returncode == 1 and "--threads must be positive, got 0" in proc.stderr
    proc = _orl("knn", "--features", "f.h5", "--index", str(index), "--out", str(tmp_path / "k.h5"), "--memory-gb", "-1")
    assert proc.returncode == 1 and "--memory-gb must be positive, got -1.0" in proc.stderr


def test_gif_is_indexed_and_ignored_files_are_listed_in_a_plain_warning(tmp_path: Path) -> None:
    proc = _orl("index", "--images", str(_images(tmp_path / "img")), "--out", str(tmp_path / "i.h5"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("indexed 2 images")
    assert proc.stderr.startswith("orl index: warning: ignored 1 file(s)") and "notes.txt" in proc.stderr
    assert ".py:" not in proc.stderr


def test_config_typo_names_the_key_briefly_and_index_warnings_reach_the_console(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "-n", config={"no_such_key": 1})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "config (top level): Additional properties are not allowed ('no_such_key'" in out
    assert len(out.splitlines()) < 30
    images = _images(tmp_path / "img")
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    config = {"dataset": {"kind": "folder", "images": str(images)}}
    proc = check(snakemake(tmp_path, "--cores", "1", "results/index/images.h5", config=config))
    assert "orl index: warning: left out 1 unreadable image(s)" in proc.stdout + proc.stderr


def test_stage_with_several_outputs_is_checked_per_output(tmp_path: Path) -> None:
    """bench-semi writes one JSON per percent: each --out is checked (a folder is refused), and a list is no crash."""
    proc = _orl("bench-semi", "--method-name", "m", "--weights", str(tmp_path / "w.pth"), "--train-dir", str(tmp_path), "--val-dir",
                str(tmp_path), "--percent", "1", "10", "--out", str(tmp_path / "a.json"), str(tmp_path))
    assert proc.returncode == 1 and f"--out {tmp_path} is a folder" in proc.stderr
    proc = _orl("bench-semi", "--method-name", "m", "--weights", str(tmp_path / "w.pth"), "--train-dir", str(tmp_path), "--val-dir",
                str(tmp_path), "--percent", "1", "10", "--out", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert proc.returncode == 1 and "path should be string" not in proc.stderr and "no images" in proc.stderr
