"""Frozen-backbone features for the SVM benchmarks, and their per-method cache (bench/<method>/voc07_features.h5).

As the authors (OpenSelfSup's extract config + MultiPooling "feat5"): each image is resized to S x S ignoring
its aspect ratio (S = 224), res5 is average-pooled with kernel 6, stride 1 on its 7 x 7 map -> 2 x 2 x C
(8192-d for ResNet-50), flattened in (C, 2, 2) order. When the map is not 7 x 7 (S != 224, e.g. the demo) we
pool adaptively to 2 x 2 instead: the same output size; on a 3 x 3 map it is exactly kernel 2, stride 1.
Features are stored raw; the SVM code L2-normalises them (x / (|x| + 1e-5)), as the authors' svm_helper does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from orl.artifacts import ArtifactError, digest_params, open_artifact, write_artifact
from orl.bench.common import PathImages, make_loader, squash_transform
from orl.bench.multilabel import MultiLabelSet

STAGE = "bench_svm_features"
SPLITS = ("trainval", "test")
POOL_DESCRIPTION = "avg kernel 6 stride 1 on a 7x7 res5 map (authors), adaptive avg to 2x2 on any other map size"


def svm_pool(fmap: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) res5 map -> (N, 4C): the authors' 6x6/stride-1 pool on 7x7, adaptive 2x2 pool otherwise."""
    if fmap.shape[-2:] == (7, 7):
        pooled = F.avg_pool2d(fmap, kernel_size=6, stride=1)
    else:
        pooled = F.adaptive_avg_pool2d(fmap, 2)
    return torch.flatten(pooled, 1)


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows divided by (norm + 1e-5), float64, exactly as the authors' svm_helper.normalize_features."""
    features = np.asarray(features, dtype=np.float64)
    return features / (np.linalg.norm(features, axis=1) + 1e-5)[:, None]


@torch.inference_mode()
def extract_features(
    backbone: nn.Module,
    paths: list[Path],
    *,
    image_size: int,
    batch_size: int = 64,
    workers: int = 0,
    device: torch.device | str = "cpu",
    pool: Callable[[torch.Tensor], torch.Tensor] = svm_pool,
) -> np.ndarray:
    """(N, D) float32 pooled res5 features (svm_pool: 4C) of the images, backbone in eval mode (BN running stats)."""
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    loader = make_loader(PathImages(paths, squash_transform(image_size)), batch_size, workers, device=device)
    out = []
    for x in loader:
        out.append(pool(backbone(x.to(device, non_blocking=True)).float()).cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def image_list_digest(sets: Mapping[str, MultiLabelSet]) -> str:
    """Digest of the split names, image names and labels the features are indexed by."""
    h = hashlib.sha256()
    for split in sorted(sets):
        s = sets[split]
        h.update(f"{split}\t{len(s)}\t{','.join(s.classes)}\n".encode())
        for name in s.names:
            h.update(f"{name}\n".encode())
        h.update(np.ascontiguousarray(s.labels).tobytes())
    return h.hexdigest()[:16]


def feature_params(weights_sha256: str, arch: str, image_size: int) -> dict[str, Any]:
    """What determines the cached numbers (batch size, workers and device do not, up to float rounding)."""
    return {"weights_sha256": weights_sha256, "arch": arch, "image_size": image_size, "pool": POOL_DESCRIPTION}


def load_cached(
    path: str | os.PathLike, sets: Mapping[str, MultiLabelSet], params: Mapping[str, Any], stage: str = STAGE
) -> dict[str, np.ndarray] | None:
    """The cached features when `path` was made from the same images, labels, weights and settings; else None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open_artifact(path, stage=stage) as art:
            if art.image_list_digest != image_list_digest(sets) or art.attrs.get("params_digest") != digest_params(
                params
            ):
                return None
            return {f"{s}_features": art.array(f"{s}_features") for s in sets}
    except ArtifactError:
        return None


def compute_or_load(
    path: str | os.PathLike,
    make_backbone: Callable[[], nn.Module] | None,
    sets: Mapping[str, MultiLabelSet],
    params: Mapping[str, Any],
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: torch.device | str = "cpu",
    attrs: Mapping[str, Any] | None = None,
    pool: Callable[[torch.Tensor], torch.Tensor] = svm_pool,
    stage: str = STAGE,
) -> tuple[dict[str, np.ndarray], bool]:
    """Features per split from the cache at `path`, or extracted (and written there); returns (features, reused).

    `make_backbone` is called only on a cache miss, so a hit never loads the weights. `pool` turns the res5 map
    into the feature vector (the SVMs' 2 x 2 pool by default) and `stage` names the artifact's stage.
    """
    cached = load_cached(path, sets, params, stage)
    if cached is not None:
        return {s: cached[f"{s}_features"] for s in sets}, True
    if make_backbone is None:
        raise ArtifactError(f"{path}: no usable cached features and no backbone to extract them with")
    backbone = make_backbone()
    size = int(params["image_size"])
    feats = {
        s: extract_features(
            backbone, sets[s].paths, image_size=size, batch_size=batch_size, workers=workers, device=device, pool=pool
        )
        for s in sets
    }
    arrays: dict[str, np.ndarray] = {}
    for s, data in sets.items():
        arrays[f"{s}_features"] = feats[s]
        arrays[f"{s}_labels"] = data.labels
        arrays[f"{s}_names"] = np.array(data.names, dtype=object).astype(str)
    first = next(iter(sets.values()))
    arrays["classes"] = np.array(first.classes).astype(str)
    write_artifact(
        path,
        stage=stage,
        image_list_digest=image_list_digest(sets),
        params=dict(params),
        arrays=arrays,
        attrs={**dict(attrs or {}), "dim": int(next(iter(feats.values())).shape[1])},
    )
    return feats, False
