"""Stage `orl bench-svm`: VOC07 linear SVM classification (mAP) on frozen features of any backbone weights file."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from orl.bench.svm_data import add_common_arguments
from orl.stages.bench_lowshot import add_lowshot_arguments, run_and_write

BENCHMARK = "voc07_svm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl bench-svm`."""
    add_common_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help=f"result JSON (bench/<method>/{BENCHMARK}.json)")
    parser.add_argument("--folds", type=int, default=3, help="cross-validation folds for the cost choice (authors 3)")
    parser.add_argument(
        "--train-difficult",
        choices=("negative", "ignore"),
        default="negative",
        help="difficult images in SVM training: negatives (authors' train_svm_kfold.py) or left out",
    )
    parser.add_argument(
        "--lowshot-out",
        type=Path,
        default=None,
        help="also run the low-shot benchmark in this process and write its JSON here (saves a start-up)",
    )
    add_lowshot_arguments(parser)


def run(args: argparse.Namespace) -> None:
    """Extract (or reuse) the features, train and test the per-class SVMs, write the result JSON."""
    from orl.bench.results import average_precision_chance, metric, write_result
    from orl.bench.svm_data import load_features
    from orl.bench.voc07_svm import AUTHORS_COSTS, run_voc07_svm

    from orl.runtime import check_gpus

    check_gpus(device=args.device)  # before anything slow: a job on the wrong node fails at once
    start = time.perf_counter()
    sets, feats, info = load_features(args, args.out)
    t_features = time.perf_counter() - start
    costs = args.costs or list(AUTHORS_COSTS)
    train, test = sets["trainval"], sets["test"]
    result = run_voc07_svm(
        feats["trainval"],
        train.labels,
        feats["test"],
        test.labels,
        train.classes,
        costs=costs,
        folds=args.folds,
        train_difficult=args.train_difficult,
        n_jobs=args.threads,
    )
    settings = {
        "data": args.data,
        "arch": info["arch"],
        "image_size": args.image_size,
        "pool": "res5 avg k6 s1 (7x7) / adaptive 2x2, flattened, L2-normalised",
        "svm": "LinearSVC squared hinge L2 class_weight {1: 2, -1: 1} tol 1e-4 max_iter 2000",
        "costs": costs,
        "folds": args.folds,
        "train_difficult": args.train_difficult,
        "ap": "area under the monotone precision envelope (fair_self_supervised_benchmark calculate_ap)",
        "num_trainval": len(train),
        "num_test": len(test),
        "features": info["features"],
    }
    details = {
        "classes": train.classes,
        "ap": [100.0 * r.ap for r in result.per_class],
        "cost": [r.cost for r in result.per_class],
        "train_pos": [r.num_pos for r in result.per_class],
        "features_reused": info["features_reused"],
        "seconds": {"features": t_features, "total": time.perf_counter() - start},
    }
    write_result(
        args.out,
        method=args.method_name,
        benchmark=BENCHMARK,
        metrics={"mAP": metric(result.map)},
        settings=settings,
        weights=args.weights,
        weights_sha256=info["weights_sha256"],
        details=details,
        chance={"mAP": average_precision_chance(test.labels)},
        chance_rule="mean over classes of the test split's positive rate (a random scorer's expected AP)",
    )
    print(
        f"{args.method_name}: VOC07 SVM mAP {result.map:.2f} ({len(train.classes)} classes, "
        f"{len(train)} trainval / {len(test)} test) in {time.perf_counter() - start:.1f} s -> {args.out}"
    )
    if args.lowshot_out is not None:
        run_and_write(args, sets, feats, info, args.lowshot_out, time.perf_counter())
