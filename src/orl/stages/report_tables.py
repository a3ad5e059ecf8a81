"""Stage `orl report-tables`: the results table or a mining-quality JSON as a self-contained HTML page.

Snakemake's report shows HTML outputs inline but offers CSV and JSON only as downloads; these pages make the
numbers readable in the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

KINDS = ("results", "proposals", "pairs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl report-tables`."""
    parser.add_argument(
        "--kind",
        required=True,
        choices=KINDS,
        help="results = bench/summary.csv; proposals = mining/proposals_quality.json; pairs = mining/pair_quality.json",
    )
    parser.add_argument("--input", required=True, type=Path, help="the CSV or JSON file to render")
    parser.add_argument("--out", required=True, type=Path, help="HTML page to write")


def run(args: argparse.Namespace) -> None:
    """Render and write the page."""
    from orl.viz.tables import write_page

    path = write_page(args.kind, args.input, args.out)
    print(f"{args.kind} page of {args.input} -> {path}")
