"""Stage `orl run-summary`: print where the report and results table are, and the headline numbers; save the text."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl run-summary`."""
    parser.add_argument("--results", type=Path, default=Path("results"), help="the run's results folder")
    parser.add_argument("--out", type=Path, default=None, help="also write the text here (results/summary.txt)")
    parser.add_argument("--report", type=Path, default=Path("report.html"),
                        help="where `snakemake --report` writes the HTML report (named in the text)")


def run(args: argparse.Namespace) -> None:
    """Build, print and save the summary."""
    from orl.viz.summary import write_run_summary

    print(write_run_summary(args.results, args.out, args.report), end="")
