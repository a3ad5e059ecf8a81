"""bench/summary.csv and bench/summary.md: one row per method x benchmark x metric from every result JSON.

Rows are grouped by benchmark. Each group ends with its two references: the random-init backbone (method
`random`, benchmarked like every other method) and the chance level (method `chance`: what a random guesser
scores, as the result files state it; its settings cell says how it was computed).
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

COLUMNS = ("method", "benchmark", "metric", "mean", "std", "n", "settings")
# Settings that are the same for every row of a benchmark and would only bloat the table.
_SKIP_SETTINGS = ("features", "costs", "svm", "ap", "pool", "sampling", "cost_choice", "classes")
# Top-level entries of a result file that are never metric groups (for files without a "metrics" entry).
_NOT_METRICS = (
    "method",
    "benchmark",
    "settings",
    "weights",
    "weights_sha256",
    "details",
    "data",
    "seconds",
    "all_metrics",
    "ap_scale",
    "chance",
    "chance_rule",
)
RANDOM_INIT = "random"
CHANCE = "chance"
# Reference rows close every benchmark's group, in this order.
REFERENCES = (RANDOM_INIT, CHANCE)
MD_SETTINGS_CHARS = 200


def _metric_fields(value: Any) -> tuple[float | None, float | None, int | None]:
    # A bare number is one measurement; a mapping may lack std (single run) or n.
    if isinstance(value, Mapping):
        mean, std, n = value.get("mean"), value.get("std"), value.get("n")
        return (
            None if mean is None else float(mean),
            None if std is None else float(std),
            None if n is None else int(n),
        )
    if value is None:
        return None, None, None
    return float(value), None, 1


def settings_text(settings: Mapping[str, Any]) -> str:
    """Compact "key=value; ..." text of the settings worth showing in a table cell."""
    parts = []
    for key, value in settings.items():
        if key in _SKIP_SETTINGS:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, Mapping):
            value = json.dumps(value, sort_keys=True, separators=(",", ":"))
        parts.append(f"{key}={value}")
    return "; ".join(parts)


class NotAResult(ValueError):
    """A JSON file that holds no benchmark metrics (e.g. a data manifest that sits in the bench folder)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def normalise_result(doc: Mapping[str, Any], path: Path) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(method, benchmark, metrics, settings) of a result file.

    Files in orl.bench.results' schema have them all. Others (e.g. the detection benchmark's
    {"bbox": {"AP": ..}, "segm": {..}, ...}) fall back to: method = "method" entry or the parent folder name,
    benchmark = file stem, metrics = every top-level number and every mapping of numbers ("bbox/AP", ...).
    """
    if not isinstance(doc, Mapping) or not ("metrics" in doc or "method" in doc):
        raise NotAResult(f"{path}: not a benchmark result (no 'metrics' or 'method' entry)")
    method = doc.get("method") or path.parent.name
    benchmark = doc.get("benchmark") or path.stem
    settings = dict(doc.get("settings") or {})
    if isinstance(doc.get("metrics"), Mapping):
        return str(method), str(benchmark), dict(doc["metrics"]), settings
    metrics: dict[str, Any] = {}
    for key, value in doc.items():
        if key in _NOT_METRICS:
            continue
        if _is_number(value):
            metrics[key] = value
        elif isinstance(value, Mapping) and value and all(_is_number(v) for v in value.values()):
            metrics.update({f"{key}/{name}": v for name, v in value.items()})
    if "ap_scale" in doc:
        settings = {"ap_scale": doc["ap_scale"], **settings}
    if not metrics:
        raise NotAResult(f"{path}: no metrics found (expected a 'metrics' mapping)")
    return str(method), str(benchmark), metrics, settings


def chance_levels(doc: Mapping[str, Any]) -> tuple[dict[str, float], str]:
    """({metric: chance level}, how it was computed) of a result file; nested groups flatten as "bbox/AP"."""
    found = doc.get("chance") if isinstance(doc, Mapping) else None
    if not isinstance(found, Mapping):
        return {}, ""
    levels: dict[str, float] = {}
    for key, value in found.items():
        if _is_number(value):
            levels[key] = float(value)
        elif isinstance(value, Mapping):
            levels.update({f"{key}/{name}": float(v) for name, v in value.items() if _is_number(v)})
    return levels, str(doc.get("chance_rule") or "")


def row_order(row: Mapping[str, Any]) -> tuple[str, int, str]:
    """Sort key: benchmark, then the methods alphabetically, then random init and chance."""
    method = row["method"]
    rank = REFERENCES.index(method) + 1 if method in REFERENCES else 0
    return row["benchmark"], rank, method


def collect_rows(paths: Iterable[str | os.PathLike], skip_non_results: bool = False) -> list[dict[str, Any]]:
    """Rows (see COLUMNS) of every result file and a chance row per benchmark metric whose files state one.

    Sorted by benchmark, methods alphabetically, then random init and chance (metric order as in the files). A JSON
    file without metrics raises NotAResult, or is skipped with a warning when `skip_non_results`.
    """
    rows = []
    chance: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(Path(p) for p in paths):
        doc = json.loads(path.read_text(encoding="utf-8"))
        try:
            method, benchmark, metrics, settings = normalise_result(doc, path)
        except NotAResult as e:
            if not skip_non_results:
                raise
            warnings.warn(f"skipped {e}", stacklevel=2)
            continue
        text = settings_text(settings)
        levels, rule = chance_levels(doc)
        for name, value in metrics.items():
            if name in levels and (benchmark, name) not in chance:
                chance[(benchmark, name)] = {"method": CHANCE, "benchmark": benchmark, "metric": name,
                                             "mean": levels[name], "std": None, "n": None,
                                             "settings": f"chance: {rule}" if rule else "chance"}
            mean, std, n = _metric_fields(value)
            rows.append(
                {
                    "method": method,
                    "benchmark": benchmark,
                    "metric": name,
                    "mean": mean,
                    "std": std,
                    "n": n,
                    "settings": text,
                }
            )
    rows += chance.values()
    return sorted(rows, key=row_order)  # stable: keeps the metric order of a file


def find_results(root: str | os.PathLike) -> list[Path]:
    """Every <root>/<method>/<benchmark>.json."""
    return sorted(p for p in Path(root).glob("*/*.json") if p.is_file())


def _fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text with a header; a missing std or n is an empty cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in COLUMNS})
    return buf.getvalue()


def to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table: mean ± std (std omitted when missing)."""
    lines = ["| method | benchmark | metric | value | n | settings |", "|---|---|---|---|---|---|"]
    for r in rows:
        value = _fmt(r["mean"]) if r["std"] is None else f"{_fmt(r['mean'])} ± {_fmt(r['std'])}"
        settings = str(r["settings"])
        if len(settings) > MD_SETTINGS_CHARS:  # the CSV keeps the full text
            settings = settings[: MD_SETTINGS_CHARS - 1] + "…"
        settings = settings.replace("|", "\\|")
        lines.append(f"| {r['method']} | {r['benchmark']} | {r['metric']} | {value} | {_fmt(r['n'])} | {settings} |")
    return "\n".join(lines) + "\n"


def write_summary(
    paths: Iterable[str | os.PathLike],
    out_csv: str | os.PathLike,
    out_md: str | os.PathLike,
    skip_non_results: bool = False,
) -> int:
    """Write both tables; returns the number of rows."""
    rows = collect_rows(paths, skip_non_results)
    for out, text in ((Path(out_csv), to_csv(rows)), (Path(out_md), to_markdown(rows))):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    return len(rows)
