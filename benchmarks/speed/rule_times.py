"""Per-rule times of a finished run from Snakemake's benchmark files, as a markdown table sorted by time.

    usage: python benchmarks/speed/rule_times.py RESULTS/benchmarks [--wall SECONDS] [--cores N]

Every rule writes `benchmark:` <results>/benchmarks/<job>.tsv (Snakemake's columns: s, h:m:s, max_rss, max_vms,
max_uss, max_pss, io_in, io_out, mean_load, cpu_time); the job is the file's path below that folder without .tsv
(bench/orl/svm, proposals/part-0, ...). `s` is the job's wall time, `cpu_time` the CPU seconds of the job's
processes and max_rss their peak resident memory in MB.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "NA", "-") else None
    except ValueError:
        return None


def read_times(root: Path) -> list[dict]:
    """One row per benchmark file under `root`: job, seconds, cpu seconds, max RSS (MB); the last line of a file
    counts (a job that was rerun with `repeat` would have several)."""
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        with path.open(newline="") as f:
            records = list(csv.DictReader(f, delimiter="\t"))
        if not records:
            continue
        rec = records[-1]
        rows.append(
            {
                "job": path.relative_to(root).with_suffix("").as_posix(),
                "s": _float(rec.get("s")) or 0.0,
                "cpu": _float(rec.get("cpu_time")),
                "rss": _float(rec.get("max_rss")),
            }
        )
    return sorted(rows, key=lambda r: -r["s"])


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict], wall: float | None = None, cores: int | None = None) -> str:
    """The table, then the sums (and the wall time and its share of the sum, when given)."""
    lines = ["| rule (job) | seconds | CPU seconds | max RSS (MB) |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['job']} | {_fmt(r['s'])} | {_fmt(r['cpu'])} | {_fmt(r['rss'], 0)} |")
    total = sum(r["s"] for r in rows)
    cpu = sum(r["cpu"] or 0.0 for r in rows)
    lines.append(f"| **sum of {len(rows)} jobs** | **{total:.1f}** | **{cpu:.1f}** | |")
    out = "\n".join(lines) + "\n"
    if wall is not None:
        out += f"\nWall time of the whole run: {wall:.0f} s ({wall / 60:.1f} min)"
        if cores:
            out += f" on {cores} cores; the job seconds sum to {total / max(wall, 1e-9):.2f} x the wall time"
        out += ".\n"
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the table for a benchmarks folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the run's benchmarks folder (results/benchmarks)")
    parser.add_argument("--wall", type=float, default=None, help="wall time of the whole run, in seconds")
    parser.add_argument("--cores", type=int, default=None, help="cores the run was given")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"rule_times: {args.root} is not a folder", file=sys.stderr)
        return 1
    rows = read_times(args.root)
    if not rows:
        print(f"rule_times: no benchmark files under {args.root}", file=sys.stderr)
        return 1
    print(markdown(rows, args.wall, args.cores), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
