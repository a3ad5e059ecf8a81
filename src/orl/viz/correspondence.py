"""Figure of mined correspondences: for a set of (query, neighbour) image pairs, the top-ranked RoI pair(s) drawn
side by side, each pair's two boxes in the same colour (as in the ORL paper's supplementary Figure 1)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from orl.artifacts import open_artifact
from orl.data.image_index import load_index
from orl.data.images import load_rgb

# Distinct, saturated colours (matplotlib's tab10 without its grey), cycled over the drawn pairs.
PALETTE = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#e377c2", "#bcbd22", "#8c564b")


def draw_pairs(
    images: Sequence[tuple[np.ndarray, np.ndarray]],
    pairs: Sequence[np.ndarray],
    out: str | os.PathLike,
    titles: Sequence[str] | None = None,
    panel: int = 256,
    cols: int = 2,
    dpi: int = 100,
) -> Path:
    """Write a PNG of (query, neighbour) images side by side with their (P, 8) pair boxes; size
    (cols * 2 * panel) x (ceil(len / cols) * panel) pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if len(images) != len(pairs) or not images:
        raise ValueError(f"need one pair array per image pair, got {len(images)} image pairs and {len(pairs)}")
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    width, height = cols * 2 * panel, rows * panel
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)  # Agg: no display needed
    margin = 3  # pixels around each image, so neighbouring panels stay apart
    for p, ((img_q, img_k), boxes) in enumerate(zip(images, pairs)):
        r, c = divmod(p, cols)
        boxes = np.asarray(boxes).reshape(-1, 8)
        for side, img in enumerate((img_q, img_k)):
            left = (c * 2 + side) * panel + margin
            bottom = height - (r + 1) * panel + margin
            side_px = panel - 2 * margin
            ax = fig.add_axes((left / width, bottom / height, side_px / width, side_px / height))
            ax.imshow(img, interpolation="bilinear")
            ax.set_axis_off()
            for b, row in enumerate(boxes):
                x, y, w, h = (float(v) for v in row[4 * side : 4 * side + 4])
                colour = PALETTE[(p * len(boxes) + b) % len(PALETTE)] if len(boxes) > 1 else PALETTE[p % len(PALETTE)]
                ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=colour, linewidth=2.5))
            if side == 0 and titles is not None:
                ax.text(2, 2, titles[p], fontsize=7, color="white", va="top",
                        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png", facecolor="white")
    return out


def plot_correspondence(
    correspondence: str | os.PathLike,
    index_path: str | os.PathLike,
    out: str | os.PathLike,
    num: int = 8,
    seed: int = 0,
    neighbor: int | None = None,
    top: int = 1,
    panel: int = 256,
    cols: int = 2,
) -> Path:
    """Draw the top `top` pair(s) of `num` seeded random queries with their `neighbor`-th (default random) neighbour."""
    index = load_index(index_path)
    with open_artifact(correspondence, stage="correspondence", like=index_path) as art:
        neighbors = art.array("neighbors")
        n, k = neighbors.shape
        if neighbor is not None and not 0 <= neighbor < k:
            raise ValueError(f"neighbor must be in [0, {k}), got {neighbor}")
        rng = np.random.default_rng(seed)
        queries = rng.choice(n, size=min(num, n), replace=False)
        js = [int(neighbor) if neighbor is not None else int(rng.integers(k)) for _ in queries]
        images, pairs, titles = [], [], []
        for q, j in zip(queries.tolist(), js):
            nb = int(neighbors[q, j])
            rows = art.csr_row("pairs", q * k + j)[: max(1, top)]
            scores = art.csr_row("pair_scores", q * k + j)[: max(1, top)]
            images.append((load_rgb(index.path(q)), load_rgb(index.path(nb))))
            pairs.append(rows)
            titles.append(f"{q} / {nb} (#{j + 1})  cos {scores[0]:.3f}" if len(scores) else f"{q} / {nb}")
    return draw_pairs(images, pairs, out, titles=titles, panel=panel, cols=cols)
