"""Training curves of one pretraining run from its metrics.csv: loss terms and learning rate against iterations.

metrics.csv (written by orl.train.trainer.MetricsLog) has the columns step, epoch, lr, loss (the total), one
column per loss term of the method (loss_12 / loss_21 for BYOL, loss_infonce, loss_ntxent, ...) and images_per_s;
each row averages `log_every` optimiser steps and `step` is the number of steps done. With the online kNN monitor
on, `knn_top1` holds its top-1 (%) at step 0 and at the end of every N epochs; the figure then gets a panel for it.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOTAL = "loss"
KNN = "knn_top1"


class MetricsError(ValueError):
    """metrics.csv is missing, empty or lacks the columns a figure needs."""


@dataclass
class Metrics:
    """The columns of one metrics.csv as float arrays (unparseable or empty cells are NaN)."""

    path: Path
    columns: dict[str, np.ndarray]

    @property
    def steps(self) -> np.ndarray:
        """Optimiser steps done at each row (the x axis)."""
        return self.columns["step"]

    @property
    def loss_names(self) -> list[str]:
        """The total loss first, then the loss terms in file order."""
        names = [c for c in self.columns if c == TOTAL or c.startswith("loss")]
        return sorted(names, key=lambda c: c != TOTAL)


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_metrics(path: str | os.PathLike) -> Metrics:
    """Read metrics.csv; MetricsError names the file when it is missing, empty, or has no step or loss column."""
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"{path}: metrics file does not exist (has the pretraining run started?)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or []) if h is not None]
        rows = list(reader)
    if not header:
        raise MetricsError(f"{path}: empty file, no header row")
    if "step" not in header:
        raise MetricsError(f"{path}: no 'step' column (columns: {', '.join(header)})")
    if not any(h == TOTAL or h.startswith("loss") for h in header):
        raise MetricsError(f"{path}: no loss column ('loss' or 'loss_*'; columns: {', '.join(header)})")
    if not rows:
        raise MetricsError(f"{path}: header only, no logged rows yet")
    columns = {h: np.array([_number(r.get(h)) for r in rows], dtype=np.float64) for h in header}
    if not np.isfinite(columns["step"]).any():
        raise MetricsError(f"{path}: no numeric 'step' values")
    return Metrics(path=path, columns=columns)


def _plot_series(ax, x: np.ndarray, y: np.ndarray, **style) -> bool:  # noqa: ANN001 - a matplotlib Axes
    """Plot the finite points of y against x; markers when there are few points, so one row still shows."""
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return False
    order = np.argsort(x[ok], kind="stable")
    marker = "o" if ok.sum() <= 20 else None
    ax.plot(x[ok][order], y[ok][order], marker=marker, markersize=3, **style)
    return True


def plot_curves(
    metrics: str | os.PathLike,
    out: str | os.PathLike,
    title: str | None = None,
    width: int = 800,
    height: int = 600,
    dpi: int = 100,
) -> Path:
    """Write a width x height PNG: loss (total + terms) on top, [kNN monitor top-1,] learning rate below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    m = read_metrics(metrics)
    x = m.steps
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    knn = m.columns.get(KNN)
    has_knn = knn is not None and bool(np.isfinite(knn).any())
    if has_knn:
        ax_loss, ax_knn, ax_lr = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1.2, 1]})
        _plot_series(ax_knn, x, knn, color="tab:green", linewidth=1.4)
        ax_knn.set_ylabel("kNN top-1 (%)")
        ax_knn.grid(alpha=0.3)
    else:
        ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    drawn = 0
    for name in m.loss_names:
        style = {"color": "black", "linewidth": 1.8} if name == TOTAL else {"linewidth": 1.0, "alpha": 0.85}
        label = f"{name} (total)" if name == TOTAL and len(m.loss_names) > 1 else name
        drawn += _plot_series(ax_loss, x, m.columns[name], label=label, **style)
    if drawn:
        ax_loss.legend(loc="upper right", fontsize=8, frameon=False)
    else:
        ax_loss.text(0.5, 0.5, "no finite loss values", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    if "lr" not in m.columns or not _plot_series(ax_lr, x, m.columns["lr"], color="tab:blue", linewidth=1.2):
        ax_lr.text(0.5, 0.5, "no learning-rate column", ha="center", va="center", transform=ax_lr.transAxes)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole numbers, even with one row
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax_lr.grid(alpha=0.3)
    fig.suptitle(_heading(m, title), fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png", facecolor="white")
    return out


def _heading(m: Metrics, title: str | None) -> str:
    """Title plus the run's extent: last iteration, epochs and median throughput when logged."""
    steps = m.steps[np.isfinite(m.steps)]
    facts = [f"{int(steps.max())} iterations"]
    if "epoch" in m.columns and np.isfinite(m.columns["epoch"]).any():
        facts.append(f"{np.nanmax(m.columns['epoch']):g} epochs")
    ips = m.columns.get("images_per_s")
    if ips is not None and np.isfinite(ips).any():
        facts.append(f"median {np.nanmedian(ips):.0f} images/s")
    return f"{title or m.path.parent.name}: " + ", ".join(facts)
