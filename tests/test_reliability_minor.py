"""Minor inputs of issue 22.7: each refused or reported in one line naming the file or flag; stale temps cleaned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import TINY_BYOL_ARGS, make_index

from orl import cli
from orl import checkpoint as ckpt
from orl.config_check import config_problems
from orl.data.image_index import DatasetError, build_index
from orl.locks import output_lock
from orl.methods import build_method, build_training_dataset
from orl.mining.knn import knn
from orl.mining.proposal_quality import load_gt_boxes
from orl.train.trainer import TrainConfig, train

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def test_infinite_memory_and_a_batch_of_one_are_refused_naming_the_flag(tmp_path: Path, capsys) -> None:
    x = str(tmp_path / "x.h5")
    assert cli.main(["knn", "--features", x, "--index", x, "--out", str(tmp_path / "k.h5"), "--memory-gb", "inf"]) == 1
    assert "orl knn: error: --memory-gb must be a finite number, got inf" in capsys.readouterr().err
    assert cli.main(["pretrain", "--method", "byol", "--index", x, "--out", str(tmp_path / "m.pt"),
                     "--batch-size", "1"]) == 1
    assert "--batch-size must be at least 2" in capsys.readouterr().err
    problems = config_problems({"pretrain": {"batch_size": 1}, "knn": {"memory_gb": float("inf")}}, SCHEMA)
    assert "config pretrain.batch_size: 1 is less than the minimum of 2" in problems, problems
    assert "config knn.memory_gb: inf is greater than the maximum" in problems, problems


def test_a_coco_id_that_is_not_a_number_names_the_file_and_entry(tmp_path: Path) -> None:
    make_index(tmp_path, n=2)
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "img_000.jpg"},
                                          {"id": "abc", "file_name": "img_001.jpg"}]}))
    with pytest.raises(DatasetError, match=r"instances\.json: images\[1\]\.id is 'abc', not an integer id"):
        build_index(tmp_path / "images", ann)


def test_dropped_ground_truth_is_counted(tmp_path: Path) -> None:
    ann = tmp_path / "instances.json"
    anns = [{"image_id": 1, "bbox": [0, 0, 5, 5]}, {"image_id": 1, "bbox": [0, 0, -3, 5]},
            {"image_id": 99, "bbox": [0, 0, 5, 5]}, {"image_id": 1, "bbox": [0, 0, 9, 9], "iscrowd": 1}]
    ann.write_text(json.dumps({"images": [], "annotations": anns}))
    with pytest.warns(UserWarning, match=r"instances\.json: left out 1 annotation\(s\) with a zero or negative box "
                                         r"size and 1 of image ids not in the image index"):
        gt = load_gt_boxes(ann, np.array([1]))
    assert gt[0].tolist() == [[0, 0, 5, 5]]
    ann.write_text(json.dumps({"annotations": [{"image_id": "abc", "bbox": [0, 0, 5, 5]}]}))
    with pytest.raises(DatasetError, match=r"annotations\[0\]\.image_id is 'abc'"):
        load_gt_boxes(ann, np.array([1]))


def test_knn_of_a_single_image_gives_possible_advice() -> None:
    with pytest.raises(ValueError, match="kNN needs at least 2 images .* has 1; add images"):
        knn(np.ones((1, 4), dtype=np.float32), k=1)


def test_stale_temp_files_are_removed_by_the_next_run_that_owns_them(tmp_path: Path) -> None:
    out = tmp_path / "index.h5"
    stale = tmp_path / ".index.h5.k2j3.tmp"
    other = tmp_path / ".knn.h5.k2j3.tmp"  # another output's: not ours to remove
    stale.write_bytes(b"half")
    other.write_bytes(b"half")
    with output_lock(out):
        pass
    assert not stale.exists() and other.exists()

    index, _ = make_index(tmp_path / "data", n=4)
    dataset = build_training_dataset("byol", index, image_size=32, seed=0)
    model = tmp_path / "run" / "model.pt"
    leftover = model.parent / "checkpoints" / ".ckpt-000000004.pt.x1y2.tmp"
    leftover.parent.mkdir(parents=True)
    torch.save(build_method("byol", **TINY_BYOL_ARGS).state_dict(), leftover)  # a whole checkpoint's worth
    cfg = TrainConfig(method="byol", method_args=TINY_BYOL_ARGS, epochs=1, batch_size=4, workers=0, warmup_epochs=0.0)
    assert train(cfg, dataset, model).finished
    assert not leftover.exists() and ckpt.latest_checkpoint(model.parent / "checkpoints") is not None
