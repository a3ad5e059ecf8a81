"""Stage `orl bench-frozen`: linear_demo and knn_demo top-1 on cached frozen GAP features of ImageFolder crops."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from orl.bench.classification_cli import add_input_arguments, add_runtime_arguments


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl bench-frozen`."""
    add_input_arguments(parser)
    parser.add_argument("--features", required=True, type=Path, help="feature cache (bench/<method>/frozen_features.h5)")
    parser.add_argument("--linear-out", required=True, type=Path, help="result JSON of the linear probe")
    parser.add_argument("--knn-out", required=True, type=Path, help="result JSON of the kNN classifier")
    parser.add_argument("--linear-name", default="linear_demo", help="benchmark name of the linear probe")
    parser.add_argument("--knn-name", default="knn_demo", help="benchmark name of the kNN classifier")
    parser.add_argument("--image-size", type=int, default=64, help="crops are resized to this square")
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    parser.add_argument("--k", type=int, default=20, help="kNN: neighbours that vote")
    parser.add_argument("--temperature", type=float, default=0.07, help="kNN: vote weight exp(cos / T)")
    parser.add_argument("--weight-decays", type=_floats, default=None,
                        help="comma-separated L2 strengths the train-split cross-validation picks from")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds on the train split")
    add_runtime_arguments(parser, seed_help="unused: every step is deterministic (kept for a uniform interface)")


def run(args: argparse.Namespace) -> None:
    """Extract (or reuse) the features, run both protocols, write both result JSONs."""
    import torch

    from orl.bench import feature_classifiers as fc
    from orl.bench.common import resolve_device, set_threads
    from orl.bench.frozen import evaluate_frozen, frozen_features, frozen_params, labelled_sets
    from orl.bench.results import metric, topk_chance, write_result
    from orl.bench.weights import infer_arch, load_backbone, read_backbone_state, sha256_file

    start = time.perf_counter()
    set_threads(args.threads)
    sets = labelled_sets(args.train_dir, args.val_dir)
    sha = sha256_file(args.weights)
    arch = infer_arch(read_backbone_state(args.weights))
    if args.arch is not None and args.arch != arch:
        raise ValueError(f"--arch {args.arch} given but {args.weights} holds a {arch}")
    feats, reused = frozen_features(
        args.features,
        lambda: load_backbone(args.weights, arch)[0],
        sets,
        frozen_params(sha, arch, args.image_size),
        batch_size=args.batch_size,
        workers=args.workers,
        device=resolve_device(args.device),
        attrs={"weights": str(args.weights), "method": args.method_name},
    )
    classes = sets["train"].classes
    weight_decays = args.weight_decays or list(fc.WEIGHT_DECAYS)
    result = evaluate_frozen(
        (torch.from_numpy(feats["train"]), sets["train"].labels),
        (torch.from_numpy(feats["val"]), sets["val"].labels),
        len(classes),
        k=args.k,
        temperature=args.temperature,
        weight_decays=weight_decays,
        folds=args.folds,
    )
    common = {
        "arch": arch,
        "image_size": args.image_size,
        "features": "GAP res5, L2-normalised, no augmentation",
        "num_train": len(sets["train"]),
        "num_val": len(sets["val"]),
        "num_classes": len(classes),
    }
    shared = dict(
        method=args.method_name,
        weights=args.weights,
        weights_sha256=sha,
        chance={"top1": topk_chance(len(classes))},
        chance_rule="a uniform random guess: 100 / number of classes",
    )
    details = {"features_cache": str(args.features), "features_reused": reused,
               "seconds": time.perf_counter() - start}
    write_result(
        args.linear_out,
        benchmark=args.linear_name,
        metrics={"top1": metric(result.linear_top1)},
        settings={**common, "classifier": "logistic regression, full-batch L-BFGS to convergence",
                  "weight_decay": result.weight_decay, "weight_decays": weight_decays, "cv_folds": args.folds},
        details={**details, "cv_top1": {f"{wd:g}": v for wd, v in result.cv_top1.items()}},
        **shared,
    )
    write_result(
        args.knn_out,
        benchmark=args.knn_name,
        metrics={"top1": metric(result.knn_top1)},
        settings={**common, "classifier": "weighted kNN, cosine, votes exp(cos / T)", "k": args.k,
                  "temperature": args.temperature},
        details=details,
        **shared,
    )
    print(
        f"{args.method_name}: {args.linear_name} top-1 {result.linear_top1:.2f} (weight decay {result.weight_decay:g} "
        f"by {args.folds}-fold CV on train), {args.knn_name} top-1 {result.knn_top1:.2f} ({len(classes)} classes, "
        f"{len(sets['train'])} train / {len(sets['val'])} val, features {'reused' if reused else 'extracted'}) in "
        f"{time.perf_counter() - start:.1f} s -> {args.linear_out}, {args.knn_out}"
    )
