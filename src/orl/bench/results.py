"""The result file every benchmark writes: bench/<method>/<benchmark>.json.

Schema (detection and any other benchmark should write the same so bench/summary.* picks it up):
    {"method": str, "benchmark": str,
     "metrics": {name: {"mean": float, "std": float | null, "n": int}},
     "settings": {...}, "weights": str, "weights_sha256": str, "details": {...}}
`std` is null when the metric was measured once; `details` holds per-class / per-run numbers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from orl.fileio import atomic_write


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
) -> Path:
    """Write the result JSON atomically (temp file + rename) so a crash never leaves half a file."""
    doc = _plain(
        {
            "method": method,
            "benchmark": benchmark,
            "metrics": dict(metrics),
            "settings": dict(settings),
            "weights": str(weights),
            "weights_sha256": weights_sha256,
            "details": dict(details or {}),
        }
    )
    return atomic_write(path, lambda f: f.write(json.dumps(doc, indent=2, sort_keys=False) + "\n"), mode="w")


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Load one result JSON; ValueError names the file when it lacks method / benchmark / metrics."""
    path = Path(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in ("method", "benchmark", "metrics") if k not in doc]
    if missing:
        raise ValueError(f"{path}: not a benchmark result (missing {missing})")
    return doc
