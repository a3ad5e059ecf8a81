"""The Snakemake workflow: config validation, the whole DAG, a real run, reruns and COCO-format data."""

from __future__ import annotations

from pathlib import Path

import pytest

from orl.data.image_index import load_index
from workflow_helpers import check, demo_config, snakemake


def test_dry_run_of_whole_dag_on_default_config(tmp_path: Path) -> None:
    proc = check(snakemake(tmp_path, "-n", "--cores", "2"))
    for rule in ("demo_data", "index_images", "all"):
        assert rule in proc.stdout


def test_frozen_protocols_and_knn_monitor_are_wired(tmp_path: Path) -> None:
    """The demo benchmarks every method with bench-frozen, and every pretraining rule runs the kNN monitor."""
    proc = check(snakemake(tmp_path, "-n", "-p", "--cores", "2"))
    out = proc.stdout + proc.stderr  # Snakemake prints the shell commands on stderr
    for method in ("byol", "orl", "random"):
        assert (f"--features results/bench/{method}/frozen_features.h5 --linear-out results/bench/{method}/linear_demo.json"
                f" --knn-out results/bench/{method}/knn_demo.json") in out
    monitor = "--knn-train-dir results/data/demo_crops/train --knn-val-dir results/data/demo_crops/val --knn-every 1"
    assert out.count(monitor) == 2  # pretrain_byol and pretrain_orl
    assert "orl bench-linear" not in out  # the demo's linear evaluation is the frozen protocol
    off = check(snakemake(tmp_path, "-n", "-p", "--cores", "2", config=demo_config({"pretrain": {"knn_monitor": {"every": 0}}})))
    assert "--knn-train-dir" not in off.stdout + off.stderr
    clash = snakemake(tmp_path, "-n", config=demo_config({"bench": {"enabled": ["linear", "frozen"],
                                                                   "linear": {"datasets": {"demo": {}}}}}))
    assert clash.returncode != 0 and "both write linear_demo.json" in clash.stdout + clash.stderr


def test_invalid_config_is_refused_at_load(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "-n", config={"dataset": {"kind": "coco"}})
    assert proc.returncode != 0
    assert "images" in proc.stderr + proc.stdout  # the schema names the missing key
    proc = snakemake(tmp_path, "-n", config={"demo": {"num_train": 0}})
    assert proc.returncode != 0
    proc = snakemake(tmp_path, "-n", config={"no_such_key": 1})
    assert proc.returncode != 0


@pytest.mark.slow
def test_coco_format_data(coco128: Path, tmp_path: Path) -> None:
    config = {
        "dataset": {
            "kind": "coco",
            "images": str(coco128 / "images"),
            "annotations": str(coco128 / "annotations" / "instances_train2017.json"),
        }
    }
    check(snakemake(tmp_path, "--cores", "2", "results/index/images.h5", config=config))
    index = load_index(tmp_path / "results" / "index" / "images.h5")
    assert len(index) == 128
    assert index.annotations == (coco128 / "annotations" / "instances_train2017.json").resolve()


@pytest.mark.parametrize("name", ["coco", "coco_plus"])
def test_paper_configs_dry_run(name: str, repo: Path, tmp_path: Path) -> None:
    """The shipped paper-scale configs validate and build the whole DAG (on empty stand-in data)."""
    (tmp_path / "data" / "coco" / "train2017").mkdir(parents=True)
    (tmp_path / "data" / "coco_plus").mkdir(parents=True)
    (tmp_path / "data" / "VOCdevkit" / "VOC2007").mkdir(parents=True)
    (tmp_path / "data" / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "data" / "coco" / "annotations" / "instances_train2017.json").write_text("{}")
    proc = check(snakemake(tmp_path, "-n", "-p", "--cores", "8", "--configfile", str(repo / "configs" / f"{name}.yaml")))
    out = proc.stdout
    shards = 64 if name == "coco" else 128
    assert f"--shards {shards}" in out and f"part-{shards - 1}.h5" in out
    for method in ("byol", "moco_v2", "simclr", "orl"):
        assert f"pretrain --method {method}" in out
    # paper values reach the commands, and no demo value leaks in from config.yaml
    # 8 GPUs leased locally (a no-op under SLURM), and torchrun gives workers the SIGTERM lead to save
    assert ("python -m orl.gpu_lease 8 torchrun --standalone --nproc_per_node=8 --shutdown-timeout=300 --no-python"
            " orl pretrain --method byol") in out
    assert "--arch resnet50 --epochs 800 --batch-size 64" in out
    assert "--image-size 224" in out and "--roi-size 96" in out
    assert "--epochs 20" in out  # semi-supervised, not the demo's 5
    assert "--knn-train-dir" not in out and "bench-frozen" not in out  # no labelled crops: monitor off
    # Each method's warmup is its own recipe (no shared --warmup-epochs); extraction runs in fp32.
    assert "--warmup-epochs" not in out
    extract = [line for line in out.splitlines() if "orl feature-bank" in line or "orl roi-embed" in line]
    assert extract and all("--precision fp32" in line for line in extract)


def test_unset_voc_folder_is_named_when_needed(repo: Path, tmp_path: Path) -> None:
    """A paper config without VOC2007 still builds everything else; the SVM rule names the missing setting."""
    config = {"dataset": {"kind": "folder", "images": str(tmp_path / "imgs")}}
    (tmp_path / "imgs").mkdir()
    check(snakemake(tmp_path, "-n", "results/index/images.h5", config=config))
    proc = snakemake(tmp_path, "-n", "results/bench/random/voc07_svm.json", config=config)
    assert proc.returncode != 0
    assert "bench.svm.voc_root (not set in the config)" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_baselines_train_through_snakemake_and_torchrun(tmp_path: Path) -> None:
    """With `baselines` listed, MoCo v2 and SimCLR train through their rules; BYOL runs as 2 gloo processes."""
    from demo_run import TINY_RUN

    from workflow_helpers import deep_merge

    config = deep_merge(
        TINY_RUN,
        {
            "baselines": ["moco_v2", "simclr"],
            "pretrain": {
                "methods": {"byol": {"processes": 2}, "moco_v2": {"method_args": {"queue_size": 64}}},
            },
        },
    )
    targets = [f"results/pretrain/{m}/model.pt" for m in ("byol", "moco_v2", "simclr")]
    proc = check(snakemake(tmp_path, "--cores", "2", "-p", *targets, config=config))
    assert "torchrun --standalone --nproc_per_node=2 --shutdown-timeout=300 --no-python orl pretrain --method byol" \
        in proc.stdout + proc.stderr
    import torch

    from orl.methods import METHODS
    from orl.methods.pretrained import load_pretrained

    for method in ("byol", "moco_v2", "simclr"):
        model = load_pretrained(tmp_path / "results" / "pretrain" / method / "model.pt")
        assert isinstance(model, METHODS[method])
        assert all(torch.isfinite(p).all() for p in model.parameters())
    log = (tmp_path / "results" / "logs" / "pretrain_byol.log").read_text()
    assert "trained byol" in log


def test_orl_ablations_train_orl_with_their_overrides(tmp_path: Path) -> None:
    """Each orl_ablations entry is one more stage-3 run of ORL, on the same correspondence, exported and benchmarked."""
    config = demo_config({"orl_ablations": {"orl_no_inter": {"w_inter": 0}}})
    out = check(snakemake(tmp_path, "-n", "-p", "--cores", "2", config=config))
    text = out.stdout + out.stderr
    lines = [line for line in text.splitlines() if "--out results/pretrain/orl_no_inter/model.pt" in line]
    assert lines and "pretrain --method orl " in lines[0]
    assert "--correspondence results/mining/correspondence.h5" in lines[0] and "w_inter=0" in lines[0]
    assert "proj_hidden=512" in lines[0]  # ORL's own method arguments are kept
    assert "results/bench/orl_no_inter/knn_demo.json" in text
    bad = snakemake(tmp_path, "-n", config=demo_config({"orl_ablations": {"byol": {"w_inter": 0}}}))
    assert bad.returncode != 0  # ablation names start with orl_


@pytest.mark.slow
def test_study_command_dry_runs(repo: Path, tmp_path: Path) -> None:
    """benchmarks/studies/study.py --dry-run plans every seed: byol, orl, both ablations and all benchmarks."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "studies" / "study.py"), "--dry-run", "--seeds", "0", "1", "--root", str(tmp_path)],
        capture_output=True, text=True, cwd=repo,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for rule in ("pretrain_byol", "pretrain_orl_no_inter", "pretrain_orl_no_intra", "bench_frozen", "bench_detection"):
        assert rule in proc.stdout
    assert (tmp_path / "seed1.yaml").read_text().startswith(f"results: '{tmp_path / 'seed1'}'")
    assert not (tmp_path / "seed0").exists()  # a dry run writes no results
