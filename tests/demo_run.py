"""A finished demo run as small as the rules allow, for the tests that need one (the report, reruns).

Every rule of the demo runs, on 16 + 8 images of 96 px, with one epoch of a 32 px ResNet-18 and benchmarks of a
few steps: the numbers are meaningless, the artifacts, figures and report are complete.
"""

from __future__ import annotations

import time
from pathlib import Path

from workflow_helpers import TINY_DEMO, check, deep_merge, snakemake

# TINY_DEMO (config.yaml shrunk) with one job per stage where the demo shards, one thread per job and fewer
# benchmark samples: the DAG keeps every rule, only the sizes change.
TINY_RUN: dict = deep_merge(
    TINY_DEMO,
    {
        "index": {"threads": 1},
        "pretrain": {"threads": 1, "warmup_epochs": 0, "roi_size": 32,
                     "methods": {"byol": {"method_args": {"proj_hidden": 64, "proj_dim": 32, "pred_hidden": 64}}}},
        "features": {"batch_size": 16, "threads": 1},
        "knn": {"threads": 1},
        "proposals": {"shards": 1},
        "correspondence": {"embed_shards": 1, "batch_size": 32, "threads": 1, "figure_pairs": 2},
        "bench": {
            "crops": {"size": 16, "max_train_per_class": 8, "max_val_per_class": 4},
            "svm": {"batch_size": 32, "costs": [1.0], "folds": 2, "k_values": [1]},
            "frozen": {"image_size": 16, "weight_decays": [1e-4, 1e-2]},
            "semi": {"percents": [10], "batch_size": 32, "crop_size": 16},
            "detection": {"train_min_sizes": [64], "train_max_size": 96, "test_min_size": 64, "test_max_size": 96,
                          "fpn_channels": 16, "box_head_dim": 32, "roi_batch_size": 16, "test_proposals": 20,
                          "detections_per_image": 10},
        },
    },
)


def build_demo_run(workdir: Path, cores: int = 2, config: dict | None = None) -> float:
    """Run the whole workflow (TINY_RUN unless `config`) in `workdir`; returns the wall time in seconds."""
    start = time.monotonic()
    check(snakemake(workdir, "--cores", str(cores), config=config or TINY_RUN))
    return time.monotonic() - start
