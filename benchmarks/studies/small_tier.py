"""The small tier's study: crossover curves (kNN top-1 minus random init against images seen) and the seeded table.

Each seed is one Snakemake run of the demo config with configs/small.yaml on top, ORL's no-inter-RoI ablation and
the seed as training seed, into <root>/seed<k>/ (the world, demo.seed, stays the same: seeds vary the training).
Every pretraining run logs the online kNN monitor (object crops, k = 20, T = 0.07; its step-0 value is the run's
own random init) each epoch. Then this script writes, into --figures:
- small_tier_crossover.{png,json}: per method, top-1 minus its step-0 value against images seen (step x batch),
  mean over seeds, with where it first crosses zero and its best margin;
- small_tier_study.{csv,md,png}: orl.viz.study's table (linear_demo, knn_demo, pair quality; mean ± std).
The measurements and what they say: docs/study_tier.md.
From the repository root, with the venv active:

    python benchmarks/studies/small_tier.py --seeds 0            # one seed: 48 min on 2 cores shared with other work
    python benchmarks/studies/small_tier.py --seeds 0 --dry-run  # what would run
    python benchmarks/studies/small_tier.py --gather-only        # redraw from finished runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from study import REPO, config_layer, demo_snakemake  # benchmarks/studies/study.py: the demo's Snakemake command

SMALL = REPO / "configs" / "small.yaml"
ABLATIONS = "orl_ablations: {orl_no_inter: {w_inter: 0}}\n"  # ORL without its inter-RoI term
CURVE_ORDER = ("byol", "simclr", "moco_v2", "orl", "orl_no_inter")


def run_layers(root: Path, seed: int, extra: list[Path] = ()) -> list[Path]:
    """The config layers of one seed on top of the demo config: small.yaml, the ablation, `extra`, results and seed."""
    ablation = root / "ablations.yaml"
    ablation.parent.mkdir(parents=True, exist_ok=True)
    ablation.write_text(ABLATIONS, encoding="utf-8")
    return [SMALL, ablation, *extra, config_layer(root / f"seed{seed}.yaml", root / f"seed{seed}", seed)]


def knn_curve(metrics_csv: Path, images_per_step: int) -> dict[str, list[float]]:
    """{images, top1, margin} of one run's kNN-monitor rows; margin = top-1 minus the step-0 (random init) value."""
    from orl.viz.curves import KNN, MetricsError, read_metrics

    m = read_metrics(metrics_csv)
    if KNN not in m.columns:
        raise MetricsError(f"{metrics_csv}: no {KNN} column (was the kNN monitor on?)")
    keep = np.isfinite(m.columns[KNN])
    steps, top1 = m.steps[keep], m.columns[KNN][keep]
    if not len(steps) or steps[0] != 0:
        raise MetricsError(f"{metrics_csv}: no step-0 kNN value (the random-init reference)")
    return {"images": [float(s * images_per_step) for s in steps], "top1": top1.tolist(),
            "margin": (top1 - top1[0]).tolist()}


def crossing(images: list[float], margin: list[float]) -> dict[str, float | None]:
    """Where a margin curve first rises above zero after step 0 (None if never), its best value and where."""
    best = int(np.argmax(margin[1:])) + 1 if len(margin) > 1 else 0
    first = next((x for x, m in zip(images[1:], margin[1:]) if m > 0), None)
    return {"crosses_at_images": first, "best_margin": float(margin[best]), "best_at_images": float(images[best]),
            "final_margin": float(margin[-1]), "lowest_margin": float(min(margin[1:] or margin))}


def gather_curves(folders: Mapping[int, Path], images_per_step: int) -> dict[str, dict]:
    """Per run: the seeds' curves, their mean margin at the shared evaluation points and where it crosses zero."""
    out: dict[str, dict] = {}
    for run in CURVE_ORDER:
        per_seed = {s: knn_curve(f / "pretrain" / run / "metrics.csv", images_per_step)
                    for s, f in folders.items() if (f / "pretrain" / run / "metrics.csv").is_file()}
        if not per_seed:
            continue
        n = min(len(c["images"]) for c in per_seed.values())  # a seed still training has fewer points
        images = next(iter(per_seed.values()))["images"][:n]
        margins = np.asarray([c["margin"][:n] for c in per_seed.values()])
        mean = margins.mean(axis=0)
        out[run] = {"seeds": per_seed, "images": images, "mean_margin": mean.tolist(),
                    "std_margin": (margins.std(axis=0, ddof=1) if len(margins) > 1 else 0 * mean).tolist(),
                    "random_init_top1": [c["top1"][0] for c in per_seed.values()],
                    **crossing(images, mean.tolist())}
    return out


def plot_crossover(curves: Mapping[str, dict], out: Path, batch: int) -> Path:
    """small_tier_crossover.png: mean margin over random init (± std over seeds) against images seen, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run, c in curves.items():
        x, y, e = (np.asarray(c[k]) for k in ("images", "mean_margin", "std_margin"))
        base = np.mean(c["random_init_top1"])
        ax.plot(x / 1000, y, marker=".", label=f"{run} (random init {base:.1f} %, {len(c['seeds'])} seed(s))")
        ax.fill_between(x / 1000, y - e, y + e, alpha=0.15)
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(5, color="g", lw=0.8, ls="--", label="target: random init + 5")
    ax.set_xlabel(f"scenes seen (thousands; batch {batch})")
    ax.set_ylabel("kNN top-1 minus random init (points)")
    ax.set_title("Small tier: object-crop kNN probe during pretraining (online monitor)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def images_per_step() -> int:
    """Scenes per optimiser step of the small tier (pretrain.batch_size x accum_steps in configs/small.yaml)."""
    import yaml

    pre = yaml.safe_load(SMALL.read_text(encoding="utf-8"))["pretrain"]
    return int(pre["batch_size"]) * int(pre.get("accum_steps", 1))


def gather(root: Path, figures: Path) -> dict[str, Path]:
    """Write the crossover figure/JSON and (when bench tables exist) the study table into `figures`."""
    from orl.viz.study import seed_folders, write_study

    folders = {int(p.name[4:]): p for p in sorted(root.glob("seed*")) if p.is_dir() and p.name[4:].isdigit()}
    if not folders:
        raise FileNotFoundError(f"{root}: no seed<k>/ folders to gather")
    batch = images_per_step()
    curves = gather_curves(folders, batch)
    figures.mkdir(parents=True, exist_ok=True)
    paths = {"crossover_json": figures / "small_tier_crossover.json"}
    paths["crossover_json"].write_text(json.dumps(curves, indent=1) + "\n", encoding="utf-8")
    paths["crossover_png"] = plot_crossover(curves, figures / "small_tier_crossover.png", batch)
    if seed_folders(root):
        for kind, path in write_study(root).items():
            paths[f"study_{kind}"] = Path(shutil.copyfile(path, figures / f"small_tier_study.{kind}"))
    return paths


def main() -> int:
    """Run every seed through Snakemake (or print what would run), then gather."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=REPO / "results" / "small_tier")
    parser.add_argument("--figures", type=Path, default=REPO / "docs" / "figures")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--targets", nargs="*", default=[], help="Snakemake targets relative to a seed's folder")
    parser.add_argument("--layer", type=Path, nargs="*", default=[], help="extra config layers (e.g. more epochs)")
    parser.add_argument("--dry-run", action="store_true", help="Snakemake -n for every seed; gathers nothing")
    parser.add_argument("--gather-only", action="store_true", help="only redraw from the finished runs")
    args = parser.parse_args()
    root = args.root.resolve()
    if not args.gather_only:
        for seed in args.seeds:
            start = time.perf_counter()
            targets = [str(root / f"seed{seed}" / t) for t in args.targets]
            cmd = demo_snakemake(run_layers(root, seed, args.layer), args.cores, targets, args.dry_run)
            subprocess.run(cmd, check=True, cwd=REPO)
            print(f"seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    if args.dry_run:
        return 0
    for name, path in gather(root, args.figures.resolve()).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
