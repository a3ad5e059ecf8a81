"""The short text printed at the end of a run: where the report and tables are, and the headline numbers.

Every input is optional and read defensively: a missing file is skipped, an unreadable one is named with the
reason, so the summary never fails a finished run.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The number a benchmark is known by, first match wins; otherwise the benchmark's first metric in file order.
PRIMARY_METRICS = ("mAP", "top1", "box_AP", "bbox_AP", "AP_bbox", "AP")
# Methods in the order of the paper's tables; any other method follows alphabetically, then the references.
METHOD_ORDER = ("byol", "orl", "moco_v2", "simclr")
# The reference rows of bench/summary.csv (orl.bench.summary): a random-init backbone and the chance level.
RANDOM_INIT = "random"
REFERENCES = (RANDOM_INIT, "chance")


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _fmt(value: Any, digits: int = 3) -> str:
    f = _float(value)
    return "n/a" if f is None else f"{f:.{digits}f}"


def _read_json(path: Path) -> tuple[Mapping[str, Any] | None, str | None]:
    """(document, None), or (None, why) when the file is unreadable or not a JSON object."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"unreadable ({e})"
    if not isinstance(doc, Mapping):
        return None, "unreadable (not a JSON object)"
    return doc, None


def method_order(methods: Sequence[str]) -> list[str]:
    """Methods sorted as the paper's tables (byol, orl, moco_v2, simclr), the rest alphabetically, then random, chance."""
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    last = {m: len(rank) + 1 + i for i, m in enumerate(REFERENCES)}
    return sorted(set(methods), key=lambda m: (last.get(m, rank.get(m, len(rank))), m))


def primary_metric(metrics: Sequence[str]) -> str:
    """The headline metric among a benchmark's metric names (in file order)."""
    for name in PRIMARY_METRICS:
        if name in metrics:
            return name
    return metrics[0]


def read_summary_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of bench/summary.csv (method, benchmark, metric, mean, std, n, settings); bad numbers become None."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"method", "benchmark", "metric", "mean"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: lacks column(s) {sorted(missing)}")
        return [
            {**row, "mean": _float(row.get("mean")), "std": _float(row.get("std"))}
            for row in reader
            if row.get("method") and row.get("benchmark") and row.get("metric")
        ]


def _align(table: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]


def is_fraction(rows: Sequence[Mapping[str, Any]], bench: str, metric: str) -> bool:
    """True when every value of one benchmark's metric is below 1 in magnitude (detection AP is a fraction)."""
    values = [abs(r["mean"]) for r in rows if r["benchmark"] == bench and r["metric"] == metric and r["mean"] is not None]
    return bool(values) and max(values) < 1


def _digits(rows: Sequence[Mapping[str, Any]], bench: str, metric: str) -> int:
    """Decimals for one benchmark's metric: 3 for fractions, else 2."""
    return 3 if is_fraction(rows, bench, metric) else 2


def benchmark_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """An aligned table: one line per benchmark (its primary metric), one column per method, mean ± std."""
    if not rows:
        return ["  (no benchmark rows)"]
    metrics: dict[str, list[str]] = {}
    for r in rows:
        names = metrics.setdefault(r["benchmark"], [])
        if r["metric"] not in names:
            names.append(r["metric"])
    methods = method_order([r["method"] for r in rows])
    cells = {(r["method"], r["benchmark"], r["metric"]): r for r in rows}
    table = [["benchmark", "metric", *methods]]
    for bench in sorted(metrics):
        metric = primary_metric(metrics[bench])
        digits = _digits(rows, bench, metric)
        line = [bench, metric]
        for method in methods:
            r = cells.get((method, bench, metric))
            if r is None or r["mean"] is None:
                line.append("-")
            else:
                line.append(_fmt(r["mean"], digits) + (f" ± {_fmt(r['std'], digits)}" if r["std"] is not None else ""))
        table.append(line)
    return _align(table)


def margin_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """An aligned table of every method's margin over random init (method - random) on each benchmark's primary metric."""
    metrics: dict[str, list[str]] = {}
    for r in rows:
        names = metrics.setdefault(r["benchmark"], [])
        if r["metric"] not in names:
            names.append(r["metric"])
    cells = {(r["method"], r["benchmark"], r["metric"]): r["mean"] for r in rows}
    methods = [m for m in method_order([r["method"] for r in rows]) if m not in REFERENCES]
    table = [["benchmark", "metric", *methods]]
    for bench in sorted(metrics):
        metric = primary_metric(metrics[bench])
        base = cells.get((RANDOM_INIT, bench, metric))
        if base is None:
            continue
        digits = _digits(rows, bench, metric)
        line = [bench, metric]
        for method in methods:
            value = cells.get((method, bench, metric))
            line.append("-" if value is None else f"{value - base:+.{digits}f}")
        table.append(line)
    if not methods or len(table) == 1:
        return ["  (no method with a random-init reference to compare against)"]
    return _align(table)


def proposal_lines(path: Path) -> list[str]:
    """Box counts and, with ground truth, recall at IoU 0.5 / 0.7 of raw and filtered proposals."""
    doc, err = _read_json(path)
    if doc is None:
        return [f"Proposals ({path}): {err}"]
    raw = doc.get("raw") if isinstance(doc.get("raw"), Mapping) else {}
    kept = doc.get("filtered") if isinstance(doc.get("filtered"), Mapping) else {}
    lines = [
        f"Proposals ({path}): {doc.get('num_images', '?')} images, "
        f"{_fmt(raw.get('mean_boxes_per_image'), 1)} raw / {_fmt(kept.get('mean_boxes_per_image'), 1)} kept boxes "
        "per image"
    ]
    if doc.get("ground_truth"):
        ious = [str(t) for t in doc.get("iou_thresholds", [0.5, 0.7])]
        table = [["", *(f"IoU {t}" for t in ious)]]
        for name, part in (("raw boxes", raw), ("kept boxes", kept)):
            table.append([name, *(_fmt(part.get(f"recall@{t}")) for t in ious)])
        lines.append(f"  recall of {doc.get('num_gt_boxes', '?')} ground-truth boxes:")
        lines += _align(table, indent="    ")
    else:
        lines.append("  no ground-truth boxes: recall not measured")
    return lines


def pair_lines(path: Path) -> list[str]:
    """How often mined pairs cover objects / share a category, against random pairs of the same image pairs."""
    doc, err = _read_json(path)
    if doc is None:
        return [f"Mined pairs ({path}): {err}"]
    mined = doc.get("mined") if isinstance(doc.get("mined"), Mapping) else {}
    # The exact expectation of the random draw is the steadier baseline; the seeded draw is the fallback.
    random = doc.get("random_expected") or doc.get("random")
    random = random if isinstance(random, Mapping) else {}
    lines = [f"Mined pairs ({path}): {doc.get('num_pairs', '?')} pairs over {doc.get('num_image_pairs', '?')} "
             "image pairs"]
    table = [["", "mined", "random", "lift"]]
    for key, label in (("both_cover_object", "both boxes on an object"), ("same_category", "same category")):
        m, r = _float(mined.get(key)), _float(random.get(key))
        lift = f"x{m / r:.2f}" if m is not None and r else "n/a"
        table.append([label, _fmt(m), _fmt(r), lift])
    return lines + _align(table, indent="    ")


def build_summary(results: str | os.PathLike, report: str | os.PathLike = "report.html") -> str:
    """The run summary text for the results folder `results` (trailing newline included)."""
    root = Path(results)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist")
    bench = root / "bench"
    report = Path(report)
    lines = [f"orl run summary ({root})", ""]
    table_md, table_csv = bench / "summary.md", bench / "summary.csv"
    lines.append(f"Results table: {table_md if table_md.is_file() else 'not made (no benchmark ran)'}"
                 + (f"  (CSV: {table_csv})" if table_csv.is_file() else ""))
    if report.is_file():
        lines.append(f"Report:        {report}")
    else:
        lines.append(f"Report:        not made yet; run `snakemake --report {report}`")
    models = sorted(p.parent.name for p in (root / "pretrain").glob("*/model.pt"))
    if models:
        lines.append(f"Pretrained:    {', '.join(method_order(models))} (in {root / 'pretrain'})")
    figures = sorted((root / "figures").glob("*.png"))
    if figures:
        lines.append(f"Figures:       {', '.join(p.name for p in figures)} (in {root / 'figures'})")

    if table_csv.is_file():
        lines += ["", f"Headline numbers (primary metric per benchmark, mean ± std; all metrics in {table_md.name}):"]
        try:
            rows = read_summary_rows(table_csv)
            lines += benchmark_lines(rows)
            lines += ["", "Margin over random init (method - random on the primary metric; > 0: better than random "
                      "init):", *margin_lines(rows)]
        except (OSError, UnicodeDecodeError, ValueError, csv.Error) as e:
            lines.append(f"  {table_csv}: unreadable ({e})")
    for name, render in (("proposals_quality.json", proposal_lines), ("pair_quality.json", pair_lines)):
        path = root / "mining" / name
        if path.is_file():
            lines += ["", *render(path)]
    return "\n".join(lines) + "\n"


def write_run_summary(
    results: str | os.PathLike, out: str | os.PathLike | None = None, report: str | os.PathLike = "report.html"
) -> str:
    """Build the summary and, when `out` is given, write it there atomically; returns the text."""
    text = build_summary(results, report)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    return text
