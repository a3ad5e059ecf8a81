"""Flags and the result file shared by `orl bench-linear` and `orl bench-semi` (ImageFolder classification).

Kept free of torch at import time: stage modules import it to build their parsers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch-heavy: for the annotation only
    from orl.bench.classification import ClassificationResult


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """--weights, --method-name, --arch and the ImageFolder --train-dir / --val-dir."""
    parser.add_argument(
        "--weights", required=True, type=Path, help="backbone.pth, a torchvision checkpoint or model.pt"
    )
    parser.add_argument("--method-name", required=True, help="name of the method in the result file")
    parser.add_argument("--arch", default=None, help="resnet18/34/50/101/152 (default: inferred from the weights)")
    parser.add_argument("--train-dir", required=True, type=Path, help="ImageFolder train split (<class>/<image>)")
    parser.add_argument("--val-dir", required=True, type=Path, help="ImageFolder validation split")


def add_runtime_arguments(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """--seed (what it seeds differs per benchmark, hence `seed_help`), --workers, --threads, --device."""
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:N")


def write_classification_result(
    out: Path,
    args: argparse.Namespace,
    benchmark: str,
    result: ClassificationResult,
    settings: dict[str, Any],
    weights_sha256: str,
    start: float,
    device: Any,
) -> None:
    """The result JSON of one run: top-1 (and top-5 when measured), `settings`, the per-epoch history and timing."""
    from orl.bench.results import metric, topk_chance, write_result

    metrics = {"top1": metric(result.top1)}
    if result.top5 is not None:
        metrics["top5"] = metric(result.top5)
    write_result(
        out,
        method=args.method_name,
        benchmark=benchmark,
        metrics=metrics,
        settings=settings,
        weights=args.weights,
        weights_sha256=weights_sha256,
        details={"history": result.history, "seconds": time.perf_counter() - start, "device": str(device)},
        chance={name: topk_chance(settings["num_classes"], int(name[3:])) for name in metrics},
        chance_rule="a uniform random guess: 100 k / number of classes",
    )
