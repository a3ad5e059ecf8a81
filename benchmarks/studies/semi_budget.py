"""Semi-supervised fine-tuning at a larger budget than the demo's: does it leave chance, and does it separate methods?

At the demo's settings (`bench.semi`: 1 % and 10 % of the labels, 5 epochs) every model stays at chance. This script
builds, through Snakemake on the demo config, the exported backbones of --methods and the demo's object crops in
--results (reusing what is there), then fine-tunes each backbone with `orl bench-semi` at --percent and --epochs,
timing each run, once per --seeds (the labelled subset, head init and data order). Runs whose result JSON is
already in --results/semi_budget are read, not redone. It prints one JSON line per run and a table with chance. It
is the script behind the semi-supervised budget figures of docs/results.md. From the repository root, venv active:

    python benchmarks/studies/semi_budget.py --results /tmp/semi-budget --methods random byol orl --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from study import REPO, config_layer, demo_snakemake  # benchmarks/studies/study.py: the demo's Snakemake command


def build_inputs(results: Path, methods: list[str], cores: int) -> None:
    """Snakemake on the demo config (pretraining seed 0), for the exported backbones and the demo crops in `results`."""
    layer = config_layer(results / "semi_budget.yaml", results, seed=0)
    targets = [str(results / "export" / m / "backbone.pth") for m in methods] + [str(results / "data" / "demo_crops")]
    subprocess.run(demo_snakemake([layer], cores, targets), check=True, cwd=REPO)


def fine_tune(results: Path, method: str, seed: int, args: argparse.Namespace) -> dict:
    """One `orl bench-semi` run (skipped when its result JSON exists); its top-1, chance and fine-tuning time."""
    crops = results / "data" / "demo_crops"
    out = results / "semi_budget" / f"{method}_{args.percent:g}pct_{args.epochs}ep_seed{seed}.json"
    if not out.exists():
        weights = results / "export" / method / "backbone.pth"
        cmd = [str(Path(sys.executable).with_name("orl")), "bench-semi", "--weights", str(weights),
               "--method-name", method, "--train-dir", str(crops / "train"), "--val-dir", str(crops / "val"),
               "--percent", f"{args.percent:g}", "--out", str(out), "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--crop-size", str(args.crop_size),
               "--backbone-lr", str(args.backbone_lr), "--head-lr", str(args.head_lr), "--seed", str(seed),
               "--workers", "0", "--threads", str(args.threads), "--device", "cpu"]
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    doc = json.loads(out.read_text(encoding="utf-8"))
    return {"method": method, "percent": args.percent, "epochs": args.epochs, "seed": seed,
            "top1": doc["metrics"]["top1"]["mean"], "chance": doc["chance"]["top1"],
            "seconds": round(doc["details"]["seconds"], 1)}


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0  # sample std, as the study's tables
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def main() -> int:
    """Build the inputs, fine-tune each method, print the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="a results folder (created or reused)")
    parser.add_argument("--methods", nargs="+", default=["random", "byol", "orl"])
    parser.add_argument("--percent", type=float, default=50.0, help="labelled percentage")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--backbone-lr", type=float, default=0.05)
    parser.add_argument("--head-lr", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the labelled subset, head init and "
                        "data order (one run each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2, help="Snakemake cores for building the inputs")
    args = parser.parse_args()
    results = args.results.resolve()
    build_inputs(results, args.methods, args.cores)
    rows = []
    for seed in args.seeds:
        for method in args.methods:
            rows.append(fine_tune(results, method, seed, args))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n| method | top-1 at {args.percent:g} % labels, {args.epochs} epochs (mean ± std over seeds "
          f"{', '.join(map(str, args.seeds))}) | per seed | chance | seconds per run |")
    print("|---|---:|---:|---:|---:|")
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        per_seed = " / ".join(f"{r['top1']:.1f}" for r in mine)
        seconds = sum(r["seconds"] for r in mine) / len(mine)
        print(f"| {method} | {_mean_std([r['top1'] for r in mine])} | {per_seed} | {mine[0]['chance']:.1f} "
              f"| {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
