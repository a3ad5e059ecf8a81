"""Stage `orl bench-summary`: gather every bench/<method>/<benchmark>.json into summary.csv and summary.md."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl bench-summary`."""
    parser.add_argument(
        "--inputs", nargs="*", type=Path, default=None, help="result JSON files (default: --root/*/*.json)"
    )
    parser.add_argument("--root", type=Path, default=None, help="bench folder to search when --inputs is not given")
    parser.add_argument("--out-csv", required=True, type=Path, help="CSV table to write (bench/summary.csv)")
    parser.add_argument("--out-md", required=True, type=Path, help="Markdown table to write (bench/summary.md)")


def run(args: argparse.Namespace) -> None:
    """Collect the rows and write both tables."""
    from orl.bench.summary import find_results, write_summary

    if args.inputs:
        paths, searched = list(args.inputs), False
    elif args.root is not None:
        paths, searched = find_results(args.root), True
    else:
        raise ValueError("give --inputs or --root")
    if not paths:
        raise ValueError("no result files to summarise")
    # Files found by searching may include other JSON (data manifests): skip those; listed files must be results.
    n = write_summary(paths, args.out_csv, args.out_md, skip_non_results=searched)
    print(f"{n} rows from {len(paths)} result files -> {args.out_csv}, {args.out_md}")
