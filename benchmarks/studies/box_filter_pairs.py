"""Pair quality of the demo's mined correspondences for box-filter sizes and demo worlds.

Each variant is the demo pipeline (demo config, one config layer) up to `mining/pair_quality.json`: demo scenes,
BYOL stage 1, features and kNN, selective search and the box filter, RoI embeddings and the mined pairs. The script
prints, per variant, the share of kept boxes that cover an object and, for mined and random pairs of the same boxes,
how often both boxes cover an object and how often they cover the same category, with the lifts of mined over
random. It is the script behind the box-filter figures of docs/results.md. From the repository root, venv active:

    python benchmarks/studies/box_filter_pairs.py --work /tmp/box-filter --variants filter20 filter40 filter40_plain
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from study import REPO, demo_snakemake  # benchmarks/studies/study.py: the demo's Snakemake command

# name -> config layer (YAML flow text) on top of config.yaml; the demo's own filter is 40 px
VARIANTS: dict[str, str] = {
    "filter20": "box_filter: {min_size: 20}",
    "filter40": "box_filter: {min_size: 40}",
    "filter40_plain": "box_filter: {min_size: 40}\n"
    "demo: {world: {background_grain: [2, 3], background_stripes: 0, clutter: [0, 0], background_contrast: 10}}",
}
STATS = ("both_cover_object", "same_category")


def run_variant(work: Path, name: str, cores: int) -> dict:
    """The demo pipeline up to pair quality under `name`'s layer; the row of its pair-quality JSON."""
    results = work / name
    results.mkdir(parents=True, exist_ok=True)
    layer = results / "layer.yaml"
    layer.write_text(f"results: {str(results)!r}\n{VARIANTS[name]}\n", encoding="utf-8")
    target = results / "mining" / "pair_quality.json"
    start = time.perf_counter()
    subprocess.run(demo_snakemake([layer], cores, [str(target)]), check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    quality = json.loads(target.read_text(encoding="utf-8"))
    row = {"variant": name, "seconds": round(time.perf_counter() - start, 1),
           "mean_kept_boxes": quality["mean_kept_boxes"],
           "kept_boxes_covering_object": quality["kept_boxes_covering_object"]}
    for stat in STATS:
        row[f"mined_{stat}"] = quality["mined"][stat]
        row[f"random_{stat}"] = quality["random_expected"][stat]
        row[f"lift_{stat}"] = quality["lift_over_random"][stat]
    return row


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> int:
    """Run each variant (reusing what its folder holds), print JSON lines and a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for one results folder per variant")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for name in args.variants:
        rows.append(run_variant(args.work.resolve(), name, args.cores))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| variant | kept boxes / image | covering an object | both on objects: mined / random (lift) "
          "| same category: mined / random (lift) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        cells = [f"{_pct(r[f'mined_{s}'])} / {_pct(r[f'random_{s}'])} ({_x(r[f'lift_{s}'])})" for s in STATS]
        print(f"| {r['variant']} | {r['mean_kept_boxes']:.1f} | {_pct(r['kept_boxes_covering_object'])} | "
              + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
