"""The seeded small-scale study: random init, byol, orl and ORL without its inter- or intra-RoI term, over seeds.

Each seed is one Snakemake run of the demo (config.yaml) with configs/study.yaml on top (the two ablations), its
training seed set to the seed, into <root>/seed<k>/. The demo world itself (demo.seed) stays the same, so seeds
vary the training only. Then orl.viz.study gathers every benchmark, the pair quality and the kNN-monitor curves
into <root>/study.{csv,md,png}. From the repository root, with the venv active:

    python benchmarks/study.py                      # 3 seeds, about 75 minutes on 2 cores
    python benchmarks/study.py --dry-run            # what would run
    python benchmarks/study.py --gather-only        # rebuild the table and figure from finished seeds
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def seed_config(root: Path, seed: int) -> Path:
    """The per-seed config layer: its results folder and training seed."""
    path = root / f"seed{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"results: {str(root / f'seed{seed}')!r}\npretrain: {{seed: {seed}}}\n", encoding="utf-8")
    return path


def snakemake_command(root: Path, seed: int, cores: int, dry_run: bool) -> list[str]:
    """The Snakemake call of one seed."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile", str(REPO / "config.yaml"),
           str(REPO / "configs" / "study.yaml"), str(seed_config(root, seed))]
    return cmd + (["-n"] if dry_run else [])


def main() -> int:
    """Run every seed (or print what would run), then gather."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=REPO / "results" / "study")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--dry-run", action="store_true", help="Snakemake -n for every seed; gathers nothing")
    parser.add_argument("--gather-only", action="store_true", help="only rebuild study.{csv,md,png}")
    args = parser.parse_args()
    root = args.root.resolve()
    if not args.gather_only:
        for seed in args.seeds:
            start = time.perf_counter()
            subprocess.run(snakemake_command(root, seed, args.cores, args.dry_run), check=True, cwd=REPO)
            print(f"seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    if args.dry_run:
        return 0
    from orl.viz.study import write_study

    for name, path in write_study(root).items():
        print(f"{name}: {path}")
    print((root / "study.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
