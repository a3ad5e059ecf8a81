"""Stage `orl bench-detection`: fine-tune Mask R-CNN ResNet-FPN from a backbone, report COCO box / mask AP (ORL_SPEC 5).

One process (`orl bench-detection ...`, CPU or GPU) or torchrun (`torchrun --nproc_per_node=8 -m orl.cli
bench-detection ...`); --batch-size is the GLOBAL batch (paper: 16 = 2 per GPU x 8). Checkpoints go to
<out stem>-checkpoints/ beside --out; SIGTERM / SIGINT save one and exit 143 / 130; rerunning resumes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `orl bench-detection` (defaults: the paper's COCO 1x schedule)."""
    from orl.bench.detection_model import ARCHS  # light: no torch work at import

    p = parser
    p.add_argument("--weights", required=True,
                   help="backbone state_dict (export/<method>/backbone.pth, a torchvision ResNet checkpoint or an orl "
                        "model.pt), or 'none' for random init")
    p.add_argument("--arch", choices=ARCHS, default=None, help="ResNet (default: inferred from the weights)")
    p.add_argument("--method-name", required=True, help="name recorded in the report (e.g. orl, byol, random)")
    p.add_argument("--train-images", required=True, type=Path, help="folder of the training images")
    p.add_argument("--train-annotations", required=True, type=Path, help="COCO instances JSON of the training split")
    p.add_argument("--val-images", required=True, type=Path, help="folder of the evaluation images")
    p.add_argument("--val-annotations", required=True, type=Path, help="COCO instances JSON of the evaluation split")
    p.add_argument("--out", required=True, type=Path, help="report to write (bench/<method>/detection.json)")
    p.add_argument("--iterations", type=int, default=90_000, help="optimiser steps (paper: 90k, the 1x schedule)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step over ALL processes (paper: 16)")
    p.add_argument("--lr", type=float, default=0.02, help="base lr for --batch-size (paper: 0.02 at 16)")
    p.add_argument("--warmup-iters", type=int, default=1000, help="linear warmup steps (paper: 1000)")
    p.add_argument("--warmup-factor", type=float, default=0.001, help="lr factor at step 0 of the warmup")
    p.add_argument("--milestones", type=int, nargs="*", default=[60_000, 80_000], help="steps where lr x= --gamma")
    p.add_argument("--gamma", type=float, default=0.1, help="lr decay factor at each milestone")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (0 on BN parameters, as Detectron2)")
    p.add_argument("--train-min-sizes", type=int, nargs="+", default=[640, 800],
                   help="short side in training: LOW HIGH = every --train-size-step px from LOW to HIGH; "
                        "one or 3+ values = those choices (paper: 640 800)")
    p.add_argument("--train-size-step", type=int, default=32, help="step of the LOW..HIGH range (0: only the ends)")
    p.add_argument("--train-max-size", type=int, default=1333, help="long-side cap in training")
    p.add_argument("--test-min-size", type=int, default=800, help="short side at test time (paper: 800)")
    p.add_argument("--test-max-size", type=int, default=1333, help="long-side cap at test time")
    p.add_argument("--fpn-channels", type=int, default=256, help="FPN / RPN / mask-head width (paper: 256)")
    p.add_argument("--box-head-dim", type=int, default=1024, help="box-head fc width (paper: 1024)")
    p.add_argument("--roi-batch-size", type=int, default=512, help="sampled RoIs per training image (paper: 512)")
    p.add_argument("--test-proposals", type=int, default=1000, help="RPN proposals kept at test time (paper: 1000)")
    p.add_argument("--detections-per-image", type=int, default=100, help="detections kept per image (COCO: 100)")
    p.add_argument("--freeze-at", type=int, default=0, choices=range(6),
                   help="freeze ResNet stages 1..k (1 = stem, 5 = all; frozen BN too); paper: 0 = fine-tune all")
    p.add_argument("--workers", type=int, default=4, help="DataLoader worker processes per training process")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default: torch's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16 autocast for training on GPU (the paper trained in fp32); CPU always fp32")
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false", help="GPU DDP: per-GPU BatchNorm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=5000, help="steps between resume checkpoints (0: never)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the last checkpoint after success")
    p.add_argument("--log-every", type=int, default=20, help="steps between progress lines (stderr)")


def run(args: argparse.Namespace) -> None:
    """Fine-tune, evaluate on the val split, write the JSON report (rank 0)."""
    from orl.bench.detection import DetectionConfig, DetectionData, Interrupted, parse_sizes, run_benchmark
    from orl.bench.detection_model import HeadSizes
    from orl.runtime import check_gpus, init_distributed, set_threads, shutdown_distributed

    weights = None if str(args.weights).lower() == "none" else args.weights
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights}: no such file")
    cfg = DetectionConfig(
        iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, warmup_iters=args.warmup_iters,
        warmup_factor=args.warmup_factor, milestones=tuple(args.milestones), gamma=args.gamma,
        momentum=args.momentum, weight_decay=args.weight_decay,
        train_min_sizes=parse_sizes(args.train_min_sizes, args.train_size_step), train_max_size=args.train_max_size,
        test_min_size=args.test_min_size, test_max_size=args.test_max_size,
        heads=HeadSizes(fpn_channels=args.fpn_channels, box_head_dim=args.box_head_dim,
                        roi_batch_size=args.roi_batch_size, test_proposals=args.test_proposals,
                        detections_per_image=args.detections_per_image),
        freeze_at=args.freeze_at, seed=args.seed, precision=args.precision, sync_bn=args.sync_bn,
        extra={"method_name": args.method_name},
    )
    data = DetectionData(args.train_images, args.train_annotations, args.val_images, args.val_annotations)
    check_gpus(device=args.device)
    rt = init_distributed(args.device)
    try:
        set_threads(args.threads)
        report = run_benchmark(weights, data, args.out, cfg, rt, arch=args.arch, workers=args.workers,
                               checkpoint_every=args.checkpoint_every, keep_checkpoints_after=args.keep_checkpoints,
                               log_every=args.log_every)
    except Interrupted as stop:
        if rt.is_main:
            print(f"interrupted at iteration {stop.step}; checkpoint {stop.path}; rerun the same command to resume",
                  file=sys.stderr)
        raise
    finally:
        shutdown_distributed()
    if report is not None:
        box, mask = (" ".join(f"{k} {100 * v:.1f}" for k, v in report[t].items()) for t in ("bbox", "segm"))
        print(f"{args.method_name}: box {box} | mask {mask} (COCO, %) -> {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stage without the `orl` dispatcher (python -m orl.stages.bench_detection ...)."""
    parser = argparse.ArgumentParser(prog="orl bench-detection", description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
