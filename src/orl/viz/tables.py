"""Self-contained HTML pages of the run's tables for the Snakemake report.

Snakemake's report only displays images, PDF and HTML; a CSV or JSON output is a download link. These pages turn
bench/summary.csv (the results table) and the two mining-quality JSONs into readable tables with a small inline
SVG bar chart each: no script, no external resource, so the report stays one file.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orl.viz.summary import REFERENCES, method_order, read_summary_rows

KINDS = ("results", "proposals", "pairs")
# Bar colours of the chart series (colour-blind safe, Okabe-Ito).
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 14px; color: #1e293b;
       margin: 1.5em; max-width: 72em; }
h1 { font-size: 1.4em; margin: 0 0 0.3em 0; }
h2 { font-size: 1.1em; margin: 1.4em 0 0.4em 0; }
p.note { color: #475569; margin: 0.2em 0 0.8em 0; }
table { border-collapse: collapse; margin: 0.4em 0 1em 0; }
th, td { border: 1px solid #cbd5e1; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f1f5f9; }
td.label, th.label { text-align: left; }
td.settings { text-align: left; white-space: normal; font-size: 0.85em; color: #475569; max-width: 60em; }
td.best { font-weight: bold; }
details { margin: 0.8em 0; }
pre { background: #f8fafc; border: 1px solid #e2e8f0; padding: 0.6em; font-size: 0.85em; overflow-x: auto; }
"""


class TableInputError(ValueError):
    """The input of a page is missing, unreadable or not what the page expects."""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_value(value: Any, digits: int = 4) -> str:
    """A number with `digits` significant digits (no exponent for ordinary sizes); '-' when missing."""
    f = _number(value)
    if f is None:
        return "-"
    if isinstance(value, int) or f == 0:
        return str(int(f))
    if 1e-6 <= abs(f) < 1e6:
        decimals = max(0, digits - 1 - math.floor(math.log10(abs(f))))
        return f"{f:.{decimals}f}"
    return f"{f:.{digits - 1}e}"


def fmt_fraction(value: Any) -> str:
    """A fraction in [0, 1] to 3 decimals; '-' when missing."""
    f = _number(value)
    return "-" if f is None else f"{f:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], label_cols: int = 1, raw: bool = False) -> str:
    """An HTML table; the first `label_cols` columns are left-aligned labels. Cells are escaped unless `raw`."""
    cell = (lambda s: s) if raw else _esc
    out = ["<table>", "<tr>" + "".join(
        f'<th class="label">{_esc(h)}</th>' if i < label_cols else f"<th>{_esc(h)}</th>" for i, h in enumerate(header)
    ) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td class="label">{cell(c)}</td>' if i < label_cols else f"<td>{cell(c)}</td>" for i, c in enumerate(row)
        ) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def bar_chart_svg(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    title: str,
    max_value: float | None = 1.0,
    width: int = 640,
) -> str:
    """A horizontal grouped bar chart as inline SVG: one group of bars per label, one bar per series."""
    names = list(series)
    values = [v for vals in series.values() for v in vals if _number(v) is not None]
    top = max_value if max_value is not None else (max(values) if values else 1.0)
    top = top if top and top > 0 else 1.0
    bar, gap, label_w, right = 14, 10, 190, 60
    plot_w = width - label_w - right
    legend_h = 22
    height = 30 + legend_h + len(groups) * (len(names) * bar + gap) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_esc(title)}" font-family="sans-serif" font-size="12">',
        f'<text x="0" y="16" font-weight="bold" font-size="13">{_esc(title)}</text>',
    ]
    x = label_w
    for i, name in enumerate(names):  # legend
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f'<rect x="{x}" y="26" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 16}" y="36">{_esc(name)}</text>')
        x += 24 + 7 * len(name)
    y = 30 + legend_h
    parts.append(f'<line x1="{label_w}" y1="{y - 4}" x2="{label_w}" y2="{height - 8}" stroke="#64748b"/>')
    for g, group in enumerate(groups):
        parts.append(f'<text x="{label_w - 8}" y="{y + len(names) * bar / 2 + 4}" text-anchor="end">{_esc(group)}</text>')
        for i, name in enumerate(names):
            v = _number(series[name][g])
            colour = COLOURS[i % len(COLOURS)]
            if v is None:
                parts.append(f'<text x="{label_w + 4}" y="{y + bar - 3}" fill="#94a3b8">n/a</text>')
            else:
                w = max(0.0, min(1.0, v / top)) * plot_w
                parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar - 2}" fill="{colour}">'
                             f"<title>{_esc(name)}: {_esc(fmt_value(v, 3))}</title></rect>")
                parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar - 3}">{_esc(fmt_value(v, 3))}</text>')
            y += bar
        y += gap
    parts.append("</svg>")
    return "\n".join(parts)


def page(title: str, body: str, source: str | os.PathLike | None = None) -> str:
    """A complete HTML document around `body`."""
    src = f'<p class="note">From <code>{_esc(source)}</code>.</p>' if source is not None else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_esc(title)}</h1>\n{src}\n{body}\n</body>\n</html>\n"
    )


def _read_json(path: Path) -> Mapping[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TableInputError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TableInputError(f"{path}: unreadable ({e})") from None
    if not isinstance(doc, Mapping):
        raise TableInputError(f"{path}: not a JSON object")
    return doc


def _raw_json(doc: Mapping[str, Any]) -> str:
    return f"<details><summary>Every number (the JSON file)</summary><pre>{_esc(json.dumps(doc, indent=2))}</pre></details>"


def results_page(csv_path: str | os.PathLike) -> str:
    """The results table: one row per benchmark and metric, one column per method (best in bold), then settings."""
    path = Path(csv_path)
    if not path.is_file():
        raise TableInputError(f"{path} does not exist")
    try:
        rows = read_summary_rows(path)
    except (UnicodeDecodeError, ValueError) as e:
        raise TableInputError(f"{path}: unreadable ({e})") from None
    methods = method_order([r["method"] for r in rows])
    metrics: dict[str, list[str]] = {}
    cells: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    settings: dict[str, dict[str, str]] = {}
    for r in rows:
        names = metrics.setdefault(r["benchmark"], [])
        if r["metric"] not in names:
            names.append(r["metric"])
        cells[(r["method"], r["benchmark"], r["metric"])] = r
        # The method's own name is no setting: without it, methods run alike share one line of the settings table.
        text = "; ".join(p for p in (r.get("settings") or "").split("; ") if not p.startswith("method_name="))
        settings.setdefault(r["benchmark"], {}).setdefault(r["method"], text)
    body = []
    if not rows:
        body.append("<p>No benchmark results.</p>")
    else:
        table = []
        for bench in sorted(metrics):
            for metric in metrics[bench]:
                found = [cells.get((m, bench, metric)) for m in methods]
                means = [None if r is None else r["mean"] for r in found]
                # The references (random init, chance) are never "the best method".
                known = [v for v, m in zip(means, methods) if v is not None and m not in REFERENCES]
                best = max(known) if len(known) > 1 else None
                line = [_esc(bench), _esc(metric)]
                for r, mean, method in zip(found, means, methods):
                    if mean is None:
                        line.append("-")
                        continue
                    text = fmt_value(mean) + (f" ± {fmt_value(r['std'], 2)}" if r["std"] is not None else "")
                    n = r.get("n")
                    title = f' title="n = {_esc(n)}"' if n not in (None, "") else ""
                    text = f"<span{title}>{_esc(text)}</span>"
                    bold = best is not None and mean == best and method not in REFERENCES
                    line.append(f"<strong>{text}</strong>" if bold else text)
                table.append(line)
        body.append(
            f'<p class="note">{len(rows)} rows: {len(metrics)} benchmarks x {len(methods)} methods '
            f"({_esc(', '.join(methods))}). Mean ± standard deviation over repeated runs; the best method of each "
            "row is in bold; random (random init) and chance are the references.</p>"
        )
        body.append(_table(["benchmark", "metric", *methods], table, label_cols=2, raw=True))
        body.append("<h2>Settings</h2>")
        srows = []
        for bench in sorted(settings):
            distinct = sorted(set(settings[bench].values()))
            for text in distinct:
                who = [m for m in methods if settings[bench].get(m) == text]
                label = bench if len(distinct) == 1 else f"{bench} ({', '.join(who)})"
                srows.append(f'<tr><td class="label">{_esc(label)}</td><td class="settings">{_esc(text)}</td></tr>')
        body.append('<table><tr><th class="label">benchmark</th><th class="label">settings</th></tr>\n'
                    + "\n".join(srows) + "</table>")
    return page("Results table", "\n".join(body), path)


def proposals_page(json_path: str | os.PathLike) -> str:
    """Box counts and recall of raw and filtered selective-search proposals (mining/proposals_quality.json)."""
    path = Path(json_path)
    doc = _read_json(path)
    raw = doc.get("raw") if isinstance(doc.get("raw"), Mapping) else {}
    kept = doc.get("filtered") if isinstance(doc.get("filtered"), Mapping) else {}
    if not raw and not kept:
        raise TableInputError(f"{path}: no 'raw' or 'filtered' entry (not a proposals quality file?)")
    ious = [str(t) for t in doc.get("iou_thresholds") or [0.5, 0.7]]
    filt = doc.get("filter") if isinstance(doc.get("filter"), Mapping) else {}
    body = [
        f'<p class="note">{_esc(doc.get("num_images", "?"))} images'
        + (f', {_esc(doc.get("num_gt_boxes", "?"))} ground-truth boxes' if doc.get("ground_truth") else "")
        + (f"; box filter: {_esc(', '.join(f'{k}={v}' for k, v in filt.items()))}" if filt else "")
        + ".</p>"
    ]
    gt = bool(doc.get("ground_truth"))
    header = ["boxes", "mean per image", "median per image"] + ([f"recall@{t}" for t in ious] if gt else [])
    rows = []
    for name, part in (("raw", raw), ("filtered", kept)):
        line = [name, fmt_value(part.get("mean_boxes_per_image")), fmt_value(part.get("median_boxes_per_image"), 3)]
        if gt:
            line += [fmt_fraction(part.get(f"recall@{t}")) for t in ious]
        rows.append(line)
    body += ["<h2>All boxes</h2>", _table(header, rows)]
    if gt:
        by_area = doc.get("recall_by_gt_area") if isinstance(doc.get("recall_by_gt_area"), Mapping) else {}
        area_rows = []
        for area, entry in by_area.items():
            if not isinstance(entry, Mapping):
                continue
            line = [area, fmt_value(entry.get("num_gt_boxes"))]
            for name in ("raw", "filtered"):
                part = entry.get(name) if isinstance(entry.get(name), Mapping) else {}
                line += [fmt_fraction(part.get(f"recall@{t}")) for t in ious]
            area_rows.append(line)
        if area_rows:
            header = ["ground-truth size", "boxes"] + [f"{n} recall@{t}" for n in ("raw", "filtered") for t in ious]
            body += ["<h2>Recall by object size (recall_by_gt_area)</h2>", _table(header, area_rows)]
        groups = ["all"] + [a for a, e in by_area.items() if isinstance(e, Mapping) and e.get("num_gt_boxes")]

        def recall(name: str, area: str, t: str) -> float | None:
            part = (doc if area == "all" else by_area[area]).get(name)
            return _number(part.get(f"recall@{t}")) if isinstance(part, Mapping) else None

        series = {f"{n} @{t}": [recall(n, g, t) for g in groups] for n in ("raw", "filtered") for t in ious}
        body.append(bar_chart_svg(groups, series, "Recall of ground-truth boxes"))
    else:
        body.append("<p>No ground-truth boxes: recall not measured.</p>")
    body.append(_raw_json(doc))
    return page("Proposal quality", "\n".join(body), path)


# (key in the JSON, row label, chart label)
PAIR_METRICS = (
    ("both_cover_object", "both boxes cover an object", "both on an object"),
    ("same_category", "both cover objects of the same category", "same category"),
    ("same_category_given_both", "same category, given both cover an object", "same category | both"),
)


def pairs_page(json_path: str | os.PathLike) -> str:
    """Mined correspondence pairs against random pairs of the same boxes (mining/pair_quality.json)."""
    path = Path(json_path)
    doc = _read_json(path)
    mined = doc.get("mined")
    if not isinstance(mined, Mapping):
        raise TableInputError(f"{path}: no 'mined' entry (not a pair quality file?)")

    def part(name: str) -> Mapping[str, Any]:
        value = doc.get(name)
        return value if isinstance(value, Mapping) else {}

    random, expected, lift = part("random"), part("random_expected"), part("lift_over_random")
    body = [
        f'<p class="note">{_esc(doc.get("num_pairs", "?"))} mined pairs over {_esc(doc.get("num_image_pairs", "?"))}'
        f' image pairs ({_esc(doc.get("num_images", "?"))} images, k = {_esc(doc.get("k", "?"))}); '
        f'{fmt_value(doc.get("mean_kept_boxes"))} kept boxes per image, of which '
        f'{fmt_fraction(doc.get("kept_boxes_covering_object"))} cover an object '
        f'(IoU ≥ {_esc(doc.get("iou_threshold", 0.5))}).</p>'
    ]
    rows = []
    for key, label, _ in PAIR_METRICS:
        m, e = _number(mined.get(key)), _number(expected.get(key))
        lf = _number(lift.get(key))
        if lf is None and m is not None and e:
            lf = m / e
        rows.append([f"{label} ({key})", fmt_fraction(m), fmt_fraction(random.get(key)), fmt_fraction(e),
                     "-" if lf is None else f"x{lf:.2f}"])
    body.append(_table(["fraction of pairs", "mined", "random", "random_expected", "lift_over_random"], rows))
    shown = PAIR_METRICS[:2]
    groups = [short for _, _, short in shown]
    baseline = expected or random  # the exact expectation is the steadier baseline; the seeded draw is the fallback
    series = {
        "mined": [_number(mined.get(k)) for k, _, _ in shown],
        "random (expected)": [_number(baseline.get(k)) for k, _, _ in shown],
    }
    top = max([v for vals in series.values() for v in vals if v is not None] or [1.0])
    body.append(bar_chart_svg(groups, series, "Mined pairs against random pairs", max_value=min(1.0, top * 1.15) or 1.0))
    body.append(_raw_json(doc))
    return page("Correspondence pair quality", "\n".join(body), path)


RENDERERS = {"results": results_page, "proposals": proposals_page, "pairs": pairs_page}


def write_page(kind: str, source: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Render `source` as the `kind` page and write it to `out` atomically; returns `out`."""
    if kind not in RENDERERS:
        raise ValueError(f"unknown page kind {kind!r}; choose from {', '.join(KINDS)}")
    text = RENDERERS[kind](source)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out
