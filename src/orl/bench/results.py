"""The result file every benchmark writes: bench/<method>/<benchmark>.json.

Schema (detection and any other benchmark should write the same so bench/summary.* picks it up):
    {"method": str, "benchmark": str,
     "metrics": {name: {"mean": float, "std": float | null, "n": int}},
     "settings": {...}, "weights": str, "weights_sha256": str, "details": {...},
     "chance": {name: float}, "chance_rule": str}
`std` is null when the metric was measured once; `details` holds per-class / per-run numbers. `chance` is what a
random guesser scores on each metric (optional), `chance_rule` says how it was computed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from orl.artifacts import write_json_atomic


def metric(values: float | Sequence[float]) -> dict[str, Any]:
    """{"mean", "std", "n"} of one value (std null) or of repeated runs (population std, as the authors' np.std)."""
    if isinstance(values, (int, float, np.floating, np.integer)):
        return {"mean": float(values), "std": None, "n": 1}
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("a metric needs at least one value")
    return {"mean": float(arr.mean()), "std": float(arr.std()) if arr.size > 1 else None, "n": int(arr.size)}


def _plain(value: Any) -> Any:
    # JSON has no NaN: a class without test positives has no AP, written as null.
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_result(
    path: str | os.PathLike,
    *,
    method: str,
    benchmark: str,
    metrics: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any],
    weights: str | os.PathLike,
    weights_sha256: str,
    details: Mapping[str, Any] | None = None,
    chance: Mapping[str, float] | None = None,
    chance_rule: str | None = None,
) -> Path:
    """Write the result JSON atomically (temp file + rename) so a crash never leaves half a file."""
    doc = {
        "method": method,
        "benchmark": benchmark,
        "metrics": dict(metrics),
        "settings": dict(settings),
        "weights": str(weights),
        "weights_sha256": weights_sha256,
        "details": dict(details or {}),
    }
    if chance is not None:
        doc.update(chance=dict(chance), chance_rule=chance_rule or "")
    return write_json_atomic(path, _plain(doc))


def topk_chance(num_classes: int, k: int = 1) -> float:
    """Top-k accuracy (%) of a uniform random guess among `num_classes` classes."""
    if num_classes < 1:
        raise ValueError(f"chance level of {num_classes} classes")
    return 100.0 * min(k, num_classes) / num_classes


def average_precision_chance(labels: np.ndarray) -> float:
    """mAP (%) of a random scorer in expectation: mean over classes of the positive rate among the scored images.

    `labels` is (N, C) in VOC's convention (1 positive, -1 negative, 0 ignored/difficult); classes without a
    positive have no AP and are left out, as in the benchmark.
    """
    labels = np.asarray(labels)
    pos, scored = (labels == 1).sum(axis=0), (labels != 0).sum(axis=0)
    keep = pos > 0
    if not keep.any():
        return float("nan")
    return float(100.0 * np.mean(pos[keep] / scored[keep]))


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Load one result JSON; ValueError names the file when it lacks method / benchmark / metrics."""
    path = Path(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in ("method", "benchmark", "metrics") if k not in doc]
    if missing:
        raise ValueError(f"{path}: not a benchmark result (missing {missing})")
    return doc
