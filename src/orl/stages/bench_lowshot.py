"""Stage `orl bench-lowshot`: low-shot VOC07 SVMs (mAP per k over independent samples) on the cached features."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from orl.bench.svm_data import add_common_arguments, parse_ints

BENCHMARK = "voc07_lowshot"


def add_lowshot_arguments(parser: argparse.ArgumentParser) -> None:
    """The low-shot flags (shared with `orl bench-svm --lowshot-out`)."""
    parser.add_argument(
        "--k-values", type=parse_ints, default=[1, 2, 4, 8, 16, 32, 64, 96], help="images per class, comma-separated"
    )
    parser.add_argument("--samples", type=int, default=5, help="independent samples per k (authors 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (sample s, k: rng([seed, s, k]))")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl bench-lowshot`."""
    add_common_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help=f"result JSON (bench/<method>/{BENCHMARK}.json)")
    add_lowshot_arguments(parser)


def run(args: argparse.Namespace) -> None:
    """Reuse (or extract) the features, run every (k, sample, cost), write mean / std per k."""
    from orl.bench.svm_data import load_features

    start = time.perf_counter()
    sets, feats, info = load_features(args, args.out)
    run_and_write(args, sets, feats, info, args.out, start)


def run_and_write(
    args: argparse.Namespace, sets: dict[str, Any], feats: dict[str, Any], info: dict[str, Any], out: Path, start: float
) -> None:
    """The low-shot runs on already loaded features, and their result JSON at `out`."""
    from orl.bench.lowshot import run_lowshot
    from orl.bench.results import average_precision_chance, write_result
    from orl.bench.voc07_svm import AUTHORS_COSTS

    costs = args.costs or list(AUTHORS_COSTS)
    train, test = sets["trainval"], sets["test"]
    result = run_lowshot(
        feats["trainval"],
        train.labels,
        feats["test"],
        test.labels,
        k_values=args.k_values,
        num_samples=args.samples,
        costs=costs,
        seed=args.seed,
        n_jobs=args.threads,
    )
    summary = result.summary()
    metrics = {
        f"mAP@k={k}": {"mean": s["mean"], "std": s["std"] if args.samples > 1 else None, "n": args.samples}
        for k, s in summary.items()
    }
    settings = {
        "data": args.data,
        "arch": info["arch"],
        "image_size": args.image_size,
        "k_values": args.k_values,
        "samples": args.samples,
        "seed": args.seed,
        "costs": costs,
        "sampling": "per class: k positives + (C-1)k negatives from trainval, capped by the data",
        "cost_choice": "per k, best mean test mAP over samples (authors' aggregate_low_shot_svm_stats.py)",
        "features": info["features"],
    }
    details = {
        "per_k": {str(k): s for k, s in summary.items()},
        "positives_per_class_min_max": {str(k): v for k, v in result.pos_per_class.items()},
        "negatives_per_class_min_max": {str(k): v for k, v in result.neg_per_class.items()},
        "map_by_k_sample_cost": result.maps,
        "features_reused": info["features_reused"],
        "seconds": time.perf_counter() - start,
    }
    write_result(
        out,
        method=args.method_name,
        benchmark=BENCHMARK,
        metrics=metrics,
        settings=settings,
        weights=args.weights,
        weights_sha256=info["weights_sha256"],
        details=details,
        chance=dict.fromkeys(metrics, average_precision_chance(test.labels)),
        chance_rule="mean over classes of the test split's positive rate (a random scorer's expected AP)",
    )
    line = " / ".join(f"{s['mean']:.1f}" for s in summary.values())
    print(f"{args.method_name}: low-shot mAP (k={args.k_values}) {line} in {time.perf_counter() - start:.1f} s")
