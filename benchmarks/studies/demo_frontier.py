"""Learnability frontier of demo worlds: crop-probe top-1 of BYOL checkpoints against random init, over steps.

For each world variant (knobs of orl.data.demo_scenes.World, image size, view size, lr ...) this script writes the
demo scenes and their object crops, trains BYOL with `orl pretrain`
with the trainer's online kNN monitor on (weighted kNN, cosine, k = 20, T = 0.07, on frozen L2-normalised GAP
features of the crops; its step-0 value is the random init). It prints one JSON line per (variant, evaluation)
and writes them to --out. It is the script behind the frontier curve of docs/results.md.

    python benchmarks/studies/demo_frontier.py --variants big3 --epochs 8 --out /tmp/frontier.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from orl.bench.crops import write_crops
from orl.data.demo_scenes import DEFAULT_WORLD, generate_demo_dataset

# name -> (World overrides, run overrides)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "current": ({}, {"image_size": 160, "min_objects": 2, "max_objects": 6}),
    "big3": (
        {"scale": (0.18, 0.32), "clutter": (1, 1), "background_contrast": 25.0, "textured": True},
        {"image_size": 128, "min_objects": 1, "max_objects": 3},
    ),
    "grey": (
        {"scale": (0.18, 0.32), "clutter": (1, 1), "background_contrast": 25.0, "saturation": 0.0, "inside": True},
        {"image_size": 128, "min_objects": 1, "max_objects": 3},
    ),
    "flat_grey": (
        {"scale": (0.18, 0.32), "clutter": (1, 1), "background_contrast": 25.0, "saturation": 0.0, "inside": True,
         "textured": False},
        {"image_size": 128, "min_objects": 1, "max_objects": 3},
    ),
    "mono": (
        {"scale": (0.18, 0.32), "clutter": (1, 1), "background_contrast": 25.0, "saturation": 0.0, "inside": True,
         "background_saturation": 0.0, "background_range": (90.0, 160.0)},
        {"image_size": 128, "min_objects": 1, "max_objects": 3},
    ),
    "plainbg": (
        {"scale": (0.22, 0.35), "clutter": (0, 0), "background_contrast": 10.0, "saturation": 0.0, "inside": True,
         "background_saturation": 0.0, "background_range": (120.0, 136.0), "background_stripes": 0.0,
         "background_grain": (5.0, 5.0)},
        {"image_size": 128, "min_objects": 2, "max_objects": 3},
    ),
    "clean": (
        {"scale": (0.22, 0.35), "clutter": (0, 0), "background_contrast": 10.0, "saturation": 0.0, "inside": True,
         "background_saturation": 0.0, "background_range": (120.0, 136.0), "background_stripes": 0.0,
         "background_grain": (5.0, 5.0), "tones": (30.0, 225.0)},
        {"image_size": 128, "min_objects": 2, "max_objects": 3},
    ),
    "lowsat": (
        {"scale": (0.18, 0.32), "clutter": (1, 1), "background_contrast": 25.0, "saturation": 0.3, "inside": True},
        {"image_size": 128, "min_objects": 1, "max_objects": 3},
    ),
    "big3_flat": (
        {"scale": (0.18, 0.32), "clutter": (1, 1), "background_contrast": 25.0, "textured": False},
        {"image_size": 128, "min_objects": 1, "max_objects": 3},
    ),
}
RUN_DEFAULTS = {
    "num_train": 256,
    "num_val": 128,
    "view_size": 64,
    "crop_size": 64,
    "lr": None,
    "batch_size": 32,
    "warmup_epochs": 1,
    "arch": "resnet18",
    "knn_every": 1,
}


def run_variant(name: str, root: Path, epochs: int, seed: int, threads: int, extra: dict) -> list[dict]:
    """Make the world, train BYOL, probe each checkpoint; one record per checkpoint (+ random init)."""
    world_kw, run_kw = VARIANTS[name]
    cfg = {**RUN_DEFAULTS, **run_kw, **extra}
    world = replace(DEFAULT_WORLD, **{**world_kw, **cfg.pop("world", {})})
    work = root / f"{name}-s{seed}"
    data, crops = work / "data", work / "crops"
    t0 = time.time()
    if not data.exists():
        generate_demo_dataset(
            data,
            seed=seed,
            num_train=cfg["num_train"],
            num_val=cfg["num_val"],
            image_size=cfg["image_size"],
            min_objects=cfg["min_objects"],
            max_objects=cfg["max_objects"],
            world=world,
        )
        for split in ("train", "val"):
            write_crops(
                data / "annotations" / f"instances_{split}.json", data / split, crops / split, size=cfg["crop_size"]
            )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    index = work / "index.h5"
    if not index.exists():
        subprocess.run(
            ["orl", "index", "--images", str(data / "train"), "--annotations",
             str(data / "annotations" / "instances_train.json"), "--out", str(index)],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )
    out = work / "byol" / "model.pt"
    cmd = ["orl", "pretrain", "--method", "byol", "--index", str(index), "--out", str(out), "--arch", cfg["arch"],
           "--epochs", str(epochs), "--batch-size", str(cfg["batch_size"]), "--image-size", str(cfg["view_size"]),
           "--warmup-epochs", str(cfg["warmup_epochs"]), "--workers", "1", "--threads", str(threads),
           "--checkpoint-every", "1", "--keep-checkpoints", "0", "--seed", str(seed), "--device", "cpu",
           "--method-args", "proj_hidden=512", "proj_dim=128", "pred_hidden=512"]
    if cfg["lr"] is not None:
        cmd += ["--lr", str(cfg["lr"]), "--base-batch", str(cfg["batch_size"])]
    cmd += ["--knn-train-dir", str(crops / "train"), "--knn-val-dir", str(crops / "val"), "--knn-every", str(cfg["knn_every"]),
            "--knn-image-size", str(cfg["crop_size"])]
    t1 = time.time()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    train_s = time.time() - t1
    records = []
    with (out.parent / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            if row.get("knn_top1"):
                records.append({"variant": name, "seed": seed, "step": int(row["step"]), "epoch": float(row["epoch"]),
                                "knn_top1": float(row["knn_top1"]), "loss": float(row["loss"] or "nan")})
    for r in records:
        r.update(train_seconds=round(train_s, 1), setup_seconds=round(t1 - t0, 1), config=cfg, world=world.__dict__)
    return records


def plot_frontier(records: list[dict], out: Path) -> None:
    """Margin of the kNN top-1 over random init (the step-0 value) against training steps, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[dict]] = {}
    for r in records:
        label = f"{r['variant']} ({r['config']['view_size']} px views, lr {r['config']['lr']})"
        runs.setdefault(label, []).append(r)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, rs in runs.items():
        rs = sorted(rs, key=lambda r: r["step"])
        base = next(r["knn_top1"] for r in rs if r["step"] == 0)
        ax.plot([r["step"] for r in rs], [r["knn_top1"] - base for r in rs], marker=".", label=f"{label}: random {base:.0f}")
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(15, color="g", lw=0.8, ls="--", label="target: random init + 15")
    ax.set_xlabel("BYOL optimiser steps (batch 32)")
    ax.set_ylabel("kNN top-1 minus random init (points)")
    ax.set_title("Demo worlds: does BYOL beat random init? (online kNN monitor, 10 classes)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    """Parse flags, run each variant, print and save the records."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path("/tmp/orl-frontier"))
    parser.add_argument("--set", nargs="*", default=[], help="run overrides KEY=VALUE (json values)")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines (appended); with --plot: the PNG")
    parser.add_argument("--plot", type=Path, nargs="+", help="only draw the frontier figure from these JSON-lines files")
    args = parser.parse_args()
    if args.plot:
        plot_frontier([json.loads(line) for path in args.plot for line in path.read_text().splitlines() if line], args.out)
        return
    torch.set_num_threads(args.threads)
    extra = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    for name in args.variants:
        for rec in run_variant(name, args.root, args.epochs, args.seed, args.threads, extra):
            line = json.dumps(rec)
            print(json.dumps({k: rec[k] for k in ("variant", "epoch", "step", "knn_top1", "loss", "train_seconds")}),
                  flush=True)
            with args.out.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
