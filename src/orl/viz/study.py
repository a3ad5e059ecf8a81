"""The seeded study's table and figure: every demo benchmark, pair quality and kNN curves, mean and std over seeds.

Input: one results folder per seed (results/study/seed<k>/, each a full demo run with ORL's ablations). Output:
study.csv (one row per method x benchmark x metric, with the per-seed values), study.md (the primary metric of each
benchmark, mean ± std, plus the pair quality per seed) and study.png (bars with error bars, and the online kNN
monitor's top-1 against epochs, mean ± std over seeds).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from orl.viz.curves import KNN, read_metrics
from orl.viz.summary import is_fraction, method_order, primary_metric, read_summary_rows

PAIR_KEYS = ("both_cover_object", "same_category")


def seed_folders(root: str | os.PathLike) -> dict[int, Path]:
    """{seed: folder} of root/seed<k>/ folders that hold a finished results table."""
    out = {}
    for path in sorted(Path(root).glob("seed*")):
        if path.is_dir() and path.name[4:].isdigit() and (path / "bench" / "summary.csv").is_file():
            out[int(path.name[4:])] = path
    return dict(sorted(out.items()))


def gather_benchmarks(folders: Mapping[int, Path]) -> list[dict[str, Any]]:
    """Rows (method, benchmark, metric, mean, std, n, values) over seeds from each folder's bench/summary.csv."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for folder in folders.values():
        for row in read_summary_rows(folder / "bench" / "summary.csv"):
            if row["mean"] is not None:
                values[(row["method"], row["benchmark"], row["metric"])].append(float(row["mean"]))
    rows = []
    for (method, bench, metric), vals in values.items():
        arr = np.asarray(vals, dtype=np.float64)
        rows.append({"method": method, "benchmark": bench, "metric": metric, "mean": float(arr.mean()),
                     "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr), "values": vals})
    return rows


def gather_pair_quality(folders: Mapping[int, Path]) -> dict[int, dict[str, float | None]]:
    """Per seed: mined and random fractions of pairs on objects / on the same category, and the lifts."""
    out = {}
    for seed, folder in folders.items():
        path = folder / "mining" / "pair_quality.json"
        if not path.is_file():
            continue
        doc = json.loads(path.read_text(encoding="utf-8"))
        entry: dict[str, float | None] = {}
        for key in PAIR_KEYS:
            entry[f"mined_{key}"] = doc.get("mined", {}).get(key)
            entry[f"random_{key}"] = doc.get("random", {}).get(key)
            entry[f"lift_{key}"] = doc.get("lift_over_random", {}).get(key)
        out[seed] = entry
    return out


def gather_knn_curves(folders: Mapping[int, Path]) -> dict[str, dict[float, list[float]]]:
    """{run: {epoch: [knn_top1 per seed]}} from each pretraining run's metrics.csv (runs without the monitor skip)."""
    curves: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for folder in folders.values():
        for metrics_csv in sorted((folder / "pretrain").glob("*/metrics.csv")):
            m = read_metrics(metrics_csv)
            if KNN not in m.columns:
                continue
            epochs, knn = m.columns["epoch"], m.columns[KNN]
            for epoch, value in zip(epochs, knn):
                if np.isfinite(value):
                    curves[metrics_csv.parent.name][float(epoch)].append(float(value))
    return {run: dict(sorted(points.items())) for run, points in curves.items()}


def headline(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, str], list[str], dict[tuple[str, str], Mapping]]:
    """({benchmark: its primary metric} sorted by name, methods, {(benchmark, method): row of that metric})."""
    metrics: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r["metric"] not in metrics[r["benchmark"]]:
            metrics[r["benchmark"]].append(r["metric"])
    benches = {b: primary_metric(metrics[b]) for b in sorted(metrics)}
    cells = {(r["benchmark"], r["method"]): r for r in rows if r["metric"] == benches[r["benchmark"]]}
    return benches, method_order([r["method"] for r in rows]), cells


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """study.csv text: method, benchmark, metric, mean, std, n, values (';'-joined per-seed values)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "benchmark", "metric", "mean", "std", "n", "values"])
    for r in sorted(rows, key=lambda r: (r["benchmark"], r["metric"], r["method"])):
        w.writerow([r["method"], r["benchmark"], r["metric"], f"{r['mean']:.3f}", f"{r['std']:.3f}", r["n"],
                    ";".join(f"{v:.3f}" for v in r["values"])])
    return buf.getvalue()


def to_markdown(rows: Sequence[Mapping[str, Any]], pairs: Mapping[int, Mapping[str, float | None]]) -> str:
    """study.md text: the primary metric per benchmark (mean ± std over seeds), then the pair quality per seed."""
    benches, methods, cells = headline(rows)
    lines = ["| benchmark (metric) | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for bench, metric in benches.items():
        digits = 3 if is_fraction(rows, bench, metric) else 1  # detection AP is a fraction
        out = []
        for m in methods:
            c = cells.get((bench, m))
            text = "" if c is None else f"{c['mean']:.{digits}f}"
            out.append(text + (f" ± {c['std']:.{digits}f}" if c is not None and c["n"] > 1 else ""))
        lines.append(f"| {bench} ({metric}) | " + " | ".join(out) + " |")
    if pairs:
        lines += ["", "| seed | pairs on objects: mined / random | same category: mined / random | lift (same category) |",
                  "|---|---:|---:|---:|"]

        def f(v: float | None, digits: int = 3) -> str:
            return "-" if v is None else f"{v:.{digits}f}"

        for seed, p in pairs.items():
            lines.append(
                f"| {seed} | {f(p['mined_both_cover_object'])} / {f(p['random_both_cover_object'])} | "
                f"{f(p['mined_same_category'])} / {f(p['random_same_category'])} | {f(p['lift_same_category'], 2)} |"
            )
    return "\n".join(lines) + "\n"


def plot_study(
    rows: Sequence[Mapping[str, Any]], curves: Mapping[str, Mapping[float, Sequence[float]]], out: str | os.PathLike
) -> Path:
    """study.png: one bar group per benchmark (mean ± std over seeds) and the kNN-monitor curves per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches, methods, cells = headline(rows)
    # Detection AP is a fraction: drawn x100 so its bars are visible next to the percentages.
    scale = {b: 100.0 if is_fraction(rows, b, m) else 1.0 for b, m in benches.items()}
    fig, (ax_bar, ax_knn) = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [2.2, 1]})
    width = 0.8 / max(1, len(methods))
    for j, method in enumerate(methods):
        xs, ys, es = [], [], []
        for i, bench in enumerate(benches):
            c = cells.get((bench, method))
            if c is not None:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(c["mean"] * scale[bench])
                es.append(c["std"] * scale[bench])
        hatch = "//" if method == "chance" else None
        ax_bar.bar(xs, ys, width, yerr=es, capsize=2, label=method, hatch=hatch, alpha=0.9)
    ax_bar.set_xticks(range(len(benches)))
    ax_bar.set_xticklabels(
        [f"{b}\n({m}{' x100' if scale[b] != 1 else ''})" for b, m in benches.items()], fontsize=8)
    ax_bar.set_ylabel("score (mean ± std over seeds)")
    ax_bar.legend(fontsize=8, ncol=2)
    ax_bar.set_title("Demo benchmarks")
    for run in method_order(list(curves)):
        points = curves[run]
        x = np.asarray(list(points))
        vals = [np.asarray(v) for v in points.values()]
        mean = np.asarray([v.mean() for v in vals])
        std = np.asarray([v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals])
        ax_knn.plot(x, mean, marker=".", label=run)
        ax_knn.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax_knn.set_xlabel("epoch")
    ax_knn.set_ylabel("online kNN top-1 (%)")
    ax_knn.set_title("kNN monitor (epoch 0 = random init)")
    if curves:
        ax_knn.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_study(root: str | os.PathLike) -> dict[str, Path]:
    """Gather every seed folder under root into study.csv, study.md and study.png there; returns their paths."""
    root = Path(root)
    folders = seed_folders(root)
    if not folders:
        raise FileNotFoundError(f"{root}: no seed<k>/bench/summary.csv folders to gather")
    rows = gather_benchmarks(folders)
    pairs = gather_pair_quality(folders)
    curves = gather_knn_curves(folders)
    paths = {"csv": root / "study.csv", "md": root / "study.md", "png": root / "study.png"}
    paths["csv"].write_text(to_csv(rows), encoding="utf-8")
    header = f"Seeds: {', '.join(str(s) for s in folders)} ({len(folders)} runs of the demo with ORL's ablations).\n\n"
    paths["md"].write_text(header + to_markdown(rows, pairs), encoding="utf-8")
    plot_study(rows, curves, paths["png"])
    return paths
