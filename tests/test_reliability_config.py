"""The results folder is refused when empty, the root, a file or inside the dataset; `~` is expanded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from workflow_helpers import snakemake

from orl.config_check import results_folder


@pytest.mark.parametrize(("results", "problem"), [("", "empty"), ("  ", "empty"), ("/", "file-system root"),
                                                   ("/./", "file-system root")])
def test_empty_or_root_results_are_refused(results: str, problem: str) -> None:
    with pytest.raises(ValueError, match=f"config results: .*{problem}"):
        results_folder({"results": results})


def test_a_file_or_a_folder_inside_the_dataset_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        results_folder({"results": str(tmp_path / "notes.txt")})
    images = tmp_path / "images"
    images.mkdir()
    dataset = {"kind": "folder", "images": str(images)}
    with pytest.raises(ValueError, match="is inside the dataset folder"):
        results_folder({"results": str(images / "results"), "dataset": dataset})
    assert results_folder({"results": str(tmp_path / "results/"), "dataset": dataset}) == str(tmp_path / "results")
    # the demo's data lives inside results, the other way round: allowed
    assert results_folder({"results": "results", "dataset": {"kind": "demo"}}) == "results"


def test_tilde_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert results_folder({"results": "~/x"}) == os.path.join(str(tmp_path), "x")


@pytest.mark.slow
def test_dry_run_with_results_at_the_root_stops_with_one_line(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "-n", config={"results": "/"}, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "config results: '/' is the file-system root" in out, out[-3000:]
    assert "/index/images.h5" not in out
