"""The seeded small-scale study: random init, byol, orl and ORL without its inter- or intra-RoI term, over seeds.

Each seed is one Snakemake run of the demo (config.yaml) with configs/study.yaml on top (the two ablations), its
training seed set to the seed, into <root>/seed<k>/. The demo world itself (demo.seed) stays the same, so seeds
vary the training only. Then orl.viz.study gathers every benchmark, the pair quality and the kNN-monitor curves
into <root>/study.{csv,md,png}. From the repository root, with the venv active:

    python benchmarks/studies/study.py                      # 3 seeds, about 75 minutes on 2 cores
    python benchmarks/studies/study.py --dry-run            # what would run
    python benchmarks/studies/study.py --gather-only        # rebuild the table and figure from finished seeds
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def config_layer(path: Path, results: Path, seed: int) -> Path:
    """A config layer that sets the results folder and the training seed (the last --configfile wins)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"results: {str(results)!r}\npretrain: {{seed: {seed}}}\n", encoding="utf-8")
    return path


def demo_snakemake(layers: list[Path], cores: int, targets: list[str] = (), dry_run: bool = False) -> list[str]:
    """Snakemake on the demo config with `layers` on top (the last wins), for `targets` (default: everything)."""
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", str(cores), "--configfile",
           str(REPO / "config.yaml"), *map(str, layers)]
    return cmd + (["-n"] if dry_run else [])


def snakemake_command(layer: Path, cores: int, targets: list[str] = (), dry_run: bool = False) -> list[str]:
    """Snakemake on the demo config, the study's ablations and `layer`, for `targets` (default: everything)."""
    return demo_snakemake([REPO / "configs" / "study.yaml", layer], cores, targets, dry_run)


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
            layer = config_layer(root / f"seed{seed}.yaml", root / f"seed{seed}", seed)
            subprocess.run(snakemake_command(layer, args.cores, dry_run=args.dry_run), check=True, cwd=REPO)
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
