"""Diagnostic: mine the correspondences with a random-init stage-1 model instead of the trained BYOL, then retrain ORL.

At demo scale the 8-epoch BYOL is worse than random init on the crop probes, and its mined pairs land on objects
less often than random pairs. This script asks whether better pairs would make ORL better. It copies a finished
results folder (e.g. results/study/seed0 of benchmarks/studies/study.py), replaces pretrain/byol/model.pt there with a
random-init BYOL (same architecture and heads, torch seed --seed), and lets Snakemake redo what depends on it:
features, kNN, RoI embeddings, pairs and pair quality, then ORL (and its ablations with --ablations) and their
crop probes and SVM. It prints the pair quality and the benchmark numbers. From the repository root, venv active:

    python benchmarks/studies/random_init_mining.py --source results/study/seed0 --work /tmp/random-mining
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from study import REPO, config_layer, snakemake_command  # benchmarks/studies/study.py: the same config layers

BENCHES = ("knn_demo", "linear_demo", "voc07_svm")


def random_byol(path: Path, seed: int, method_args: dict) -> None:
    """Write a random-init BYOL model.pt (what stage 2 reads) at path."""
    from orl.methods import build_method
    from orl.checkpoint import save_final

    torch.manual_seed(seed)
    save_final(path, build_method("byol", **method_args), {"note": f"random init, torch seed {seed}"})


def main() -> int:
    """Copy, swap the stage-1 model, rerun mining and ORL, print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a finished results folder (seed<k> of the study)")
    parser.add_argument("--work", type=Path, required=True, help="new folder for the copy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", nargs="+", default=["orl", "orl_no_intra"], help="stage-3 runs to retrain")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    if args.work.exists():
        parser.error(f"{args.work} exists; give a new folder")
    shutil.copytree(args.source, args.work, symlinks=True)
    work = args.work.resolve()
    model = work / "pretrain" / "byol" / "model.pt"
    hparams = torch.load(model, map_location="cpu", weights_only=False)["hparams"]
    random_byol(model, args.seed, hparams)
    layer = config_layer(work / "random_init_mining.yaml", work, args.seed)
    targets = [str(work / "mining" / "pair_quality.json")]
    targets += [str(work / "bench" / run / f"{b}.json") for run in args.runs for b in BENCHES]
    subprocess.run(snakemake_command(layer, args.cores, targets), check=True, cwd=REPO)
    quality = json.loads((work / "mining" / "pair_quality.json").read_text(encoding="utf-8"))
    print(json.dumps({k: quality[k] for k in ("mined", "random", "lift_over_random")}, indent=1))
    for run in args.runs:
        for bench in BENCHES:
            doc = json.loads((work / "bench" / run / f"{bench}.json").read_text(encoding="utf-8"))
            metric, value = next(iter(doc["metrics"].items()))
            print(f"{run:14s} {bench:12s} {metric} {value['mean'] if isinstance(value, dict) else value:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
