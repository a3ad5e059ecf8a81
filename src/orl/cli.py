"""The `orl` command: one sub-command per pipeline stage, each usable outside Snakemake."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import sys
import warnings
from collections.abc import Sequence

from orl import __version__
from orl.data.loader_workers import worker_error_line

# Sub-command -> (stage module, one-line help). Modules are imported only when their command runs,
# so `orl --help` does not pay for importing torch.
STAGES: dict[str, tuple[str, str]] = {
    "demo-data": ("orl.stages.demo_data", "generate the built-in demo scene dataset (COCO format)"),
    "index": ("orl.stages.index_images", "build the ordered image list every artifact indexes"),
    "pretrain": ("orl.stages.pretrain", "stage 1 / 3: pretrain with a self-supervised method (BYOL, MoCo v2, SimCLR, ORL)"),
    "features": ("orl.stages.feature_bank", "stage 2a: the feature bank of the stage-1 model"),
    "knn": ("orl.stages.knn", "stage 2b: exact cosine kNN image retrieval over the feature bank"),
    "proposals": ("orl.stages.proposals", "stage 2c: selective-search proposals for one shard of the images"),
    "gather-proposals": ("orl.stages.gather_proposals", "stage 2c: gather proposal shards in image order"),
    "roi-embed": ("orl.stages.roi_embed", "stage 2d: filter one shard's boxes and embed them once (crop or roi_align)"),
    "mine-pairs": ("orl.stages.mine_pairs", "stage 2d: top RoI pairs of one shard's images with their neighbours"),
    "gather-correspondence": ("orl.stages.gather_correspondence", "stage 2d: gather boxes and pairs in image order"),
    "plot-correspondence": ("orl.stages.plot_correspondence", "figure: top-ranked correspondence pairs"),
    "export": ("orl.stages.export", "stage 4: export the online backbone for torchvision and Detectron2"),
    "bench-svm": ("orl.stages.bench_svm", "benchmark: VOC07 linear SVM (and low-shot) on frozen features"),
    "bench-lowshot": ("orl.stages.bench_lowshot", "benchmark: low-shot SVM from cached VOC07 features"),
    "bench-crops": ("orl.stages.bench_crops", "benchmark data: an ImageFolder of annotated object crops"),
    "bench-linear": ("orl.stages.bench_linear", "benchmark: linear classification on a frozen backbone"),
    "bench-frozen": ("orl.stages.bench_frozen", "benchmark: linear_demo and knn_demo on cached frozen features"),
    "bench-semi": ("orl.stages.bench_semi", "benchmark: semi-supervised fine-tuning on 1%% and 10%% of the labels"),
    "bench-detection": ("orl.stages.bench_detection", "benchmark: Mask R-CNN ResNet-FPN fine-tuning, COCO box / mask AP"),
    "bench-summary": ("orl.stages.bench_summary", "gather benchmark results into one table"),
    "plot-attention": ("orl.stages.plot_attention", "figure: attention maps of pretrained backbones, side by side"),
    "plot-curves": ("orl.stages.plot_curves", "figure: loss terms and learning rate of a pretraining run"),
    "report-tables": ("orl.stages.report_tables", "report: render the results table and quality figures as HTML"),
    "run-summary": ("orl.stages.run_summary", "print and save where the report is and the headline numbers"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; stage flags are added only for the chosen stage."""
    parser = argparse.ArgumentParser(prog="orl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"orl {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>")
    for name, (_module, help_text) in STAGES.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


# Stages whose --out is a folder; every other --out names a file.
FOLDER_OUTPUTS = ("demo-data", "bench-crops")


def _warning_printer(name: str):
    """Print warnings as 'orl <stage>: warning: ...' (no Python file:line prefix, which means nothing to users)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - warnings' API
        print(f"orl {name}: warning: {message}", file=file or sys.stderr)

    return show


def check_arguments(name: str, args: argparse.Namespace) -> None:
    """Refuse, before any work, an --out that is a folder and counts that cannot be right (threads 0, memory -1)."""
    from orl.locks import output_paths

    if name not in FOLDER_OUTPUTS:
        for path in output_paths(getattr(args, "out", None)):
            if path.is_dir():
                raise ValueError(f"--out {path} is a folder; give the path of the file to write")
    for flag in ("threads", "memory_gb", "cache_gb"):
        value = getattr(args, flag, None)
        if value is not None and value <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive, got {value}")
        if value is not None and not math.isfinite(value):
            raise ValueError(f"--{flag.replace('_', '-')} must be a finite number, got {value}")
    if name == "pretrain" and args.batch_size < 2:
        raise ValueError(f"--batch-size must be at least 2 (BatchNorm needs more than one image), got {args.batch_size}")


def _output_lock(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The lock on the stage's output, held for the whole stage; torchrun ranks other than 0 leave it to rank 0."""
    from orl.locks import output_lock, stage_output

    out = stage_output(args)
    if out is None or os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    return output_lock(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `orl` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv or ["--help"])
        return 0
    name = argv[0]
    if name not in STAGES:
        parser.error(f"unknown stage {name!r}; choose from: {', '.join(STAGES)}")
    module_name, help_text = STAGES[name]
    module = importlib.import_module(module_name)
    stage_parser = argparse.ArgumentParser(prog=f"orl {name}", description=help_text)
    module.add_arguments(stage_parser)
    args = stage_parser.parse_args(argv[1:])
    try:
        check_arguments(name, args)
        with _output_lock(args), warnings.catch_warnings():
            warnings.showwarning = _warning_printer(name)
            module.run(args)
    except Exception as e:  # noqa: BLE001 - one clean line for users, full traceback with ORL_DEBUG=1
        if os.environ.get("ORL_DEBUG"):
            raise
        # A DataLoader worker's error arrives as its whole traceback: show the worker's own last line.
        print(f"orl {name}: error: {worker_error_line(e) or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
