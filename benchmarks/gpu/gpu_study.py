"""GPU study of the small tier: random init, BYOL and ORL at --scale x the CPU tier's steps, over seeds, one table.

Each seed is one Snakemake run of the demo config with configs/small.yaml and a GPU layer on top (no image-level
baselines, no ablations; epochs x --scale at the same batch, so --scale x the optimiser steps; one GPU per training
job, the device input pipeline), into <root>/seed<k>/. The seeds run at the same time, each with its own GPU-lease
folder so that they share the one GPU (ResNet-18 at 32 px leaves most of an H100 idle) while each seed's own jobs
still take it one at a time. The world (demo.seed) is the same for every seed: seeds vary the training only. Then it
prints one table: kNN and linear top-1 on the object crops (knn_demo, linear_demo; mean ± std over seeds), their
margin over random init (per-seed differences) and the mined pairs' lift over random pairs (same category).

Needs snakemake, pycocotools and OpenCV with ximgproc (opencv-contrib-python-headless) besides orl's own
dependencies; it names what is missing and stops. From the repository root:

    python benchmarks/gpu/gpu_study.py                 # 3 seeds at 10x the CPU steps, sized for <= 8 min on one H100
    python benchmarks/gpu/gpu_study.py --smoke         # CPU, one seed, tiny world and 1 epoch: under a minute
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METHODS = ("random", "byol", "orl")
PROBES = ("knn_demo", "linear_demo")
TARGETS = ("bench/summary.csv", "mining/pair_quality.json")
NEEDS = {"snakemake": "snakemake", "pycocotools": "pycocotools", "cv2": "opencv-contrib-python-headless"}

# The CPU tier (configs/small.yaml) trains 10 epochs at batch 64; the GPU layer multiplies the epochs.
CPU_EPOCHS = 10


def gpu_layer(seed: int, results: Path, scale: int) -> str:
    """The config layer of one GPU seed: GPU training at scale x the epochs, monitor every scale epochs."""
    return json.dumps({
        "results": str(results),
        "baselines": [],
        "pretrain": {"seed": seed, "epochs": CPU_EPOCHS * scale, "gpus": 1, "workers": 4, "threads": 5,
                     "pipeline": "device", "precision": "bf16", "checkpoint_every": scale,
                     "knn_monitor": {"every": scale}},
        "features": {"workers": 2, "threads": 4},
        "correspondence": {"workers": 2, "threads": 4, "gpus": 1},
        "proposals": {"shards": 2, "threads": 2},
        "bench": {"threads": 4, "workers": 2, "gpus": 1},
    })


def smoke_layer(seed: int, results: Path) -> str:
    """The CPU smoke layer: a tiny world of the same kind, one epoch of every training, small probe sets."""
    return json.dumps({
        "results": str(results),
        "baselines": [],
        "demo": {"num_train": 48, "num_val": 24},
        "pretrain": {"seed": seed, "epochs": 1, "batch_size": 16, "threads": 1, "workers": 0,
                     "knn_monitor": {"every": 1}},
        "features": {"threads": 1},
        "correspondence": {"threads": 1, "embed_shards": 1},
        "proposals": {"shards": 1},
        "bench": {"threads": 1, "crops": {"max_train_per_class": 10, "max_val_per_class": 5},
                  "frozen": {"folds": 2, "weight_decays": [1.0e-4]}},
    })


def missing_modules() -> list[str]:
    """pip names of the study's dependencies that are not importable (cv2 must have ximgproc)."""
    out = [pip for mod, pip in NEEDS.items() if importlib.util.find_spec(mod) is None]
    if "opencv-contrib-python-headless" not in out:
        import cv2

        if not hasattr(cv2, "ximgproc"):
            out.append("opencv-contrib-python-headless")
    return out


def snakemake_command(layer: Path, cores: int, targets: list[str]) -> list[str]:
    """Snakemake on the demo config, configs/small.yaml and `layer` (the last wins), for `targets`."""
    return [sys.executable, "-m", "snakemake", *targets, "--cores", str(cores), "--configfile",
            str(REPO / "config.yaml"), str(REPO / "configs" / "small.yaml"), str(layer)]


def run_seeds(root: Path, seeds: list[int], scale: int, cores: int, smoke: bool) -> None:
    """One Snakemake run per seed, all at once, each with its own GPU-lease folder; raises if any fails."""
    procs = []
    for seed in seeds:
        folder = root / f"seed{seed}"
        layer = root / f"seed{seed}.yaml"  # JSON is YAML
        root.mkdir(parents=True, exist_ok=True)
        layer.write_text(smoke_layer(seed, folder) if smoke else gpu_layer(seed, folder, scale), encoding="utf-8")
        # The rules call `orl`: this interpreter's scripts folder first, so a venv works without being activated.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "PATH": path, "ORL_GPU_LOCK_DIR": str(root / f"gpu-locks-seed{seed}")}
        log = (root / f"seed{seed}.log").open("w")
        cmd = snakemake_command(layer, cores, [str(folder / t) for t in TARGETS])
        procs.append((seed, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for seed, proc, log in procs:
        if proc.wait() != 0:
            failed.append(f"seed {seed} (log {log.name})")
        log.close()
    if failed:
        raise RuntimeError(f"gpu_study: Snakemake failed for {', '.join(failed)}")


def seed_scores(folder: Path) -> dict[str, dict[str, float]]:
    """{method: {probe: top-1}} from one seed's bench/summary.csv; ValueError names what is missing."""
    from orl.viz.summary import read_summary_rows

    path = folder / "bench" / "summary.csv"
    scores: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    for row in read_summary_rows(path):
        if row["method"] in scores and row["benchmark"] in PROBES and row["metric"] == "top1":
            scores[row["method"]][row["benchmark"]] = row["mean"]
    gaps = [f"{m}/{p}" for m in METHODS for p in PROBES if scores[m].get(p) is None]
    if gaps:
        raise ValueError(f"{path}: no top-1 for {', '.join(gaps)}")
    return scores


def pair_lift(folder: Path) -> float | None:
    """Mined pairs' lift over random pairs in landing on the same category (None when undefined)."""
    doc = json.loads((folder / "mining" / "pair_quality.json").read_text(encoding="utf-8"))
    return doc.get("lift_over_random", {}).get("same_category")


def _mean_std(values: list[float], digits: int = 1) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(per_seed: dict[int, dict[str, dict[str, float]]], lifts: dict[int, float | None]) -> str:
    """The study's table: per method and probe, top-1 and margin over random init over seeds; the pair lift."""
    lines = ["| method | " + " | ".join(f"{p} top-1 | {p} margin" for p in PROBES) + " | pair lift (same category) |",
             "|---|" + "---:|" * (2 * len(PROBES) + 1)]
    finite = [v for v in lifts.values() if v is not None]
    for m in METHODS:
        cells = []
        for p in PROBES:
            top1 = [s[m][p] for s in per_seed.values()]
            margin = [s[m][p] - s["random"][p] for s in per_seed.values()]
            cells += [_mean_std(top1), "-" if m == "random" else _mean_std(margin)]
        lift = _mean_std(finite, 2) if m == "orl" and finite else "-"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {lift} |")
    seeds = ", ".join(map(str, per_seed))
    return "\n".join(lines) + f"\n\nSeeds: {seeds}; margin = method minus random init of the same seed.\n"


def main() -> int:
    """Check the dependencies, run the seeds, print the table (and write it as JSON beside the runs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (smoke: 0)")
    parser.add_argument("--scale", type=int, default=10, help="steps relative to the CPU tier (10-30)")
    parser.add_argument("--root", type=Path, default=None, help="default: results/gpu_study (smoke: /tmp/...)")
    parser.add_argument("--cores", type=int, default=None, help="Snakemake cores per seed (default: 5; smoke 2)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny world, 1 epoch, one seed: under a minute")
    args = parser.parse_args()
    missing = missing_modules()
    if missing:
        print(f"gpu_study: missing Python packages: {' '.join(missing)} (pip install them)", file=sys.stderr)
        return 2
    seeds = args.seeds or ([0] if args.smoke else [0, 1, 2])
    root = (args.root or (Path("/tmp/orl-gpu-study-smoke") if args.smoke else REPO / "results" / "gpu_study")).resolve()
    if args.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the smoke mode is the CPU path even on a GPU machine
    start = time.perf_counter()
    run_seeds(root, seeds, args.scale, args.cores or (2 if args.smoke else 5), args.smoke)
    per_seed = {s: seed_scores(root / f"seed{s}") for s in seeds}
    lifts = {s: pair_lift(root / f"seed{s}") for s in seeds}
    text = table(per_seed, lifts)
    (root / "gpu_study.json").write_text(json.dumps({"scores": per_seed, "pair_lift": lifts, "scale": args.scale,
                                                     "smoke": args.smoke}, indent=1) + "\n", encoding="utf-8")
    mode = "CPU smoke" if args.smoke else f"{args.scale}x the CPU steps"
    print(text + f"Wall time {time.perf_counter() - start:.0f} s ({mode}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
