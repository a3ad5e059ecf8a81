"""The run report: `snakemake --report` on a finished (tiny) demo run, opened in a headless Chromium.

The report is a single-page app: the test injects a small script into a copy of the page that clicks through every
category and result as a reader would, and records what the page then shows (the image, or the text of the embedded
HTML table, and the caption). Chromium is Debian's `chromium` (`apt-get install -y chromium`); the browser tests
skip where it is absent.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from demo_run import TINY_RUN, build_demo_run
from workflow_helpers import REPO, check, snakemake

# figure -> its category in the report
FIGURES = {
    "results/figures/attention.png": "Figures",
    "results/figures/curves_byol.png": "Figures",
    "results/figures/curves_orl.png": "Figures",
    "results/figures/correspondence.png": "Correspondence mining",
}
# HTML page -> (its category, words it must show)
PAGES = {
    "results/bench/summary.html": ("Results", ["Results table", "byol", "orl", "random", "voc07_svm", "linear_demo",
                                               "semi_10pct", "detection"]),
    "results/mining/proposals_quality.html": ("Correspondence mining", ["Proposal quality", "recall@0.5", "filtered"]),
    "results/mining/pair_quality.html": ("Correspondence mining", ["pair quality", "both_cover_object",
                                                                   "lift_over_random"]),
}
CAPTIONS = {  # result -> its caption file, whose first words the result's info panel must show
    "results/figures/attention.png": "attention.rst",
    "results/figures/curves_byol.png": "curves.rst",
    "results/figures/correspondence.png": "correspondence.rst",
    "results/bench/summary.html": "results_table.rst",
    "results/mining/proposals_quality.html": "proposals_quality.rst",
    "results/mining/pair_quality.html": "pair_quality.rst",
}

# Clicks through the report like a reader and writes what it saw into <pre id="orl-report-check"> (JSON).
# With window.ORL_SHOW set, it only opens that result (for a screenshot).
PROBE_JS = r"""
(function () {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const nav = () => document.querySelector("#app nav");
  const content = () => document.querySelector("#app > div").lastElementChild;
  async function until(test, tries = 200) {  // React renders asynchronously: wait for the state, not a fixed time
    for (let i = 0; i < tries; i++) { const v = test(); if (v) return v; await sleep(25); }
    return null;
  }
  // flushSync makes React render each click at once, so the probe never reads a half-updated page.
  const now = (f) => ReactDOM.flushSync(f);
  const rows = () => Array.from(nav().querySelectorAll("tbody tr"));
  function click(label) {  // a menu item, by its text
    const a = Array.from(nav().querySelectorAll("li > a")).find((el) => el.innerText.trim() === label);
    if (!a) throw new Error(`no menu item ${label} in: ${nav().innerText}`);
    now(() => a.click());
  }
  async function open(cat, sub) {  // home, the category, the subcategory: as a reader clicks
    now(() => app.setView({ navbarMode: "menu" }));
    click(isSingleCategory() ? "Results" : cat);
    if (Object.keys(categories[cat]).length > 1) click(sub);
    const want = categories[cat][sub];
    const listed = () => rows().length === want.length && rows().every((r) => want.includes(r.innerText.trim()));
    await until(listed);
    return rows();
  }
  async function show(row, seen) {
    const view = row.querySelector("a");
    if (view.getAttribute("download") !== null) {  // not displayable: a download link
      seen.kind = "download"; seen.mime = view.href.slice(0, view.href.indexOf(";"));
      return;
    }
    now(() => view.click());
    const uri = (results[seen.name] || {}).data_uri;
    const el = await until(() => content().querySelector(uri ? `[src="${CSS.escape(uri)}"]` : "img, iframe"));
    if (el && el.tagName === "IMG") {
      await until(() => el.complete && el.naturalWidth > 0);
      seen.kind = "img"; seen.width = el.naturalWidth; seen.height = el.naturalHeight;
    } else if (el && el.tagName === "IFRAME") {
      seen.kind = "iframe";
      seen.text = (await until(() => { try { return el.contentDocument.body.innerText; } catch (e) { return ""; } })) || "";
    } else {
      seen.kind = "none";
    }
  }
  async function main() {
    await until(nav);
    const log = { menu: nav().innerText, results: [] };
    for (const cat of Object.keys(categories)) {
      for (const sub of Object.keys(categories[cat])) {
        const n = (await open(cat, sub)).length;
        for (let k = 0; k < n; k++) {
          const row = (await open(cat, sub))[k];
          const seen = { name: row.innerText.trim(), category: cat };
          if (window.ORL_SHOW && seen.name !== window.ORL_SHOW) continue;
          await show(row, seen);
          if (window.ORL_SHOW) { now(() => app.setView({ hideNavbar: true })); return; }
          const links = row.querySelectorAll("a");
          now(() => links[links.length - 1].click());  // the info button: caption, rule, size
          seen.info = await until(() => /description/i.test(nav().innerText) && nav().innerText.includes(seen.name)
                                   ? nav().innerText : null) || nav().innerText;
          log.results.push(seen);
        }
      }
    }
    const out = document.createElement("pre");
    out.id = "orl-report-check";
    out.textContent = JSON.stringify(log);
    document.body.appendChild(out);
  }
  window.addEventListener("load", () => main().catch((e) => {
    const out = document.createElement("pre");
    out.id = "orl-report-check";
    out.textContent = JSON.stringify({ fatal: String(e) });
    document.body.appendChild(out);
  }));
})();
"""


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny demo run (every rule of the demo); its working directory."""
    workdir = tmp_path_factory.mktemp("report_demo_run")
    build_demo_run(workdir)
    return workdir


@pytest.fixture(scope="module")
def report(demo_run: Path) -> Path:
    """report.html of the demo run."""
    out = demo_run / "report.html"
    check(snakemake(demo_run, "--report", str(out), config=TINY_RUN))
    return out


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary; the test is skipped where there is none."""
    path = find_chromium()
    if path is None:
        pytest.skip("no chromium on PATH: the report's browser check needs it (Debian: apt-get install -y chromium)")
    return path


def run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium without sandbox, GPU, network services or first-run work (CI runs as root)."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def with_probe(report: Path, out: Path, show: str | None = None) -> Path:
    """A copy of the report with PROBE_JS injected before </body>."""
    text = report.read_text(encoding="utf-8")
    setting = f"window.ORL_SHOW = {json.dumps(show)};" if show else ""
    i = text.rfind("</body>")
    out.write_text(text[:i] + f"<script>{setting}{PROBE_JS}</script>" + text[i:], encoding="utf-8")
    return out


def report_results(report: Path) -> dict:
    """The report's embedded `results` object: path -> {mime_type, data_uri, caption, ...}."""
    text = report.read_text(encoding="utf-8")
    m = re.search(r'<script id="results">\s*var results = (\{.*?\});\s*</script>', text, re.S)
    assert m, "the report holds no results object"
    return json.loads(m.group(1))


def caption_start(name: str) -> str:
    """The first words of a caption file (plain text, no RST markup)."""
    first = (REPO / "workflow" / "report" / name).read_text(encoding="utf-8").split("\n\n")[0]
    return " ".join(re.sub(r"[`*]", "", first).split()[:8])


@pytest.mark.slow
def test_nothing_to_do_after_the_run(demo_run: Path) -> None:
    proc = check(snakemake(demo_run, "-n", config=TINY_RUN))
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]


@pytest.mark.slow
def test_report_is_one_file_with_every_figure_and_table(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    # Self-contained: no script, style or image is fetched from elsewhere.
    assert not re.search(r'<(script|img|iframe)[^>]*\ssrc="(?!data:)', text)
    assert not re.search(r'<link[^>]*\shref="(?!data:)', text)
    results = report_results(report)
    for path, category in FIGURES.items():
        assert path in results, f"{path} is not in the report"
        assert results[path]["mime_type"] == "image/png"
        data = base64.b64decode(results[path]["data_uri"].split("base64,", 1)[1])
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    for path, (category, words) in PAGES.items():
        assert path in results, f"{path} is not in the report"
        assert results[path]["mime_type"] == "text/html"
        page = base64.b64decode(results[path]["data_uri"].split("base64,", 1)[1]).decode("utf-8")
        for word in words:
            assert word in page, f"{path} lacks {word!r}"
    assert results["results/bench/summary.csv"]["mime_type"] == "text/csv"  # the table, also as a download


@pytest.mark.slow
def test_report_shows_figures_tables_and_captions_in_a_browser(report: Path, chromium: str, tmp_path: Path) -> None:
    probe = with_probe(report, tmp_path / "probe.html")
    # --disable-web-security lets the probe read the text of the HTML pages, which the report shows in iframes.
    proc = run_chromium(chromium, tmp_path / "profile", "--disable-web-security", "--virtual-time-budget=30000",
                        "--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="orl-report-check">(.*?)</pre>', proc.stdout, re.S)
    assert m, "the probe script did not finish:\n" + proc.stderr[-2000:]
    seen = json.loads(html.unescape(m.group(1)))
    assert "fatal" not in seen, seen
    for category in ("Figures", "Correspondence mining", "Results"):
        assert category in seen["menu"]
    shown = {r["name"]: r for r in seen["results"]}
    for path, category in FIGURES.items():
        r = shown.get(path)
        assert r is not None, f"{path} is not listed in the report (listed: {sorted(shown)})"
        assert r["category"] == category
        assert r["kind"] == "img" and r["width"] > 0 and r["height"] > 0, r
    for path, (category, words) in PAGES.items():
        r = shown.get(path)
        assert r is not None, f"{path} is not listed in the report (listed: {sorted(shown)})"
        assert r["category"] == category and r["kind"] == "iframe", r
        for word in words:
            assert word in r["text"], f"{path} as shown lacks {word!r}:\n{r['text'][:1500]}"
    assert shown["results/bench/summary.csv"]["kind"] == "download"
    for path, caption in CAPTIONS.items():
        start = caption_start(caption)
        assert start in " ".join(shown[path]["info"].split()), f"caption of {path} not shown (expected {start!r})"


@pytest.mark.slow
def test_report_screenshot_shows_a_figure(report: Path, chromium: str, tmp_path: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    figure = "results/figures/attention.png"
    probe = with_probe(report, tmp_path / "show.html", show=figure)
    shot = tmp_path / "shot.png"
    run_chromium(chromium, tmp_path / "profile", "--virtual-time-budget=10000", "--window-size=1280,1024",
                 f"--screenshot={shot}", probe.as_uri())

    def colours(image: Image.Image) -> set[int]:
        rgb = np.asarray(image.convert("RGB")).astype(np.uint32)
        return set(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]).tolist())

    screen = colours(Image.open(shot))
    assert len(screen) > 100, f"the screenshot is blank ({len(screen)} colours)"
    # The figure is drawn at its own size, so its pixels reappear unchanged on screen; another view (the rule graph,
    # a blank page) shares almost none of the heatmaps' colours.
    data = base64.b64decode(report_results(report)[figure]["data_uri"].split("base64,", 1)[1])
    expected = colours(Image.open(io.BytesIO(data)))
    shared = len(expected & screen) / len(expected)
    assert shared > 0.5, f"only {shared:.1%} of the colours of {figure} are on screen: the figure is not shown"


# The HTML pages themselves (orl.viz.tables), on small hand-made inputs.

SUMMARY_CSV = """method,benchmark,metric,mean,std,n,settings
byol,voc07_svm,mAP,43.97,,1,arch=resnet18
orl,voc07_svm,mAP,44.81,,1,arch=resnet18
byol,voc07_lowshot,mAP@k=1,42.91,0.68,5,samples=5
orl,voc07_lowshot,mAP@k=1,42.89,0.70,5,samples=5
random,voc07_svm,mAP,43.23,,1,arch=resnet18 <b>
"""


def test_results_page_has_one_column_per_method_and_the_best_in_bold(tmp_path: Path) -> None:
    from orl.viz.tables import results_page

    csv_path = tmp_path / "summary.csv"
    csv_path.write_text(SUMMARY_CSV)
    page = results_page(csv_path)
    header = re.search(r"<tr><th[^>]*>benchmark</th>.*?</tr>", page).group(0)
    assert [h for h in re.findall(r">([^<]+)</th>", header)] == ["benchmark", "metric", "byol", "orl", "random"]
    assert "<strong><span" in page and ">44.81</span></strong>" in page  # orl's SVM mAP is the best of its row
    assert "42.91 ± 0.68" in page and "43.23" in page
    assert "<b>" not in page and "&lt;b&gt;" in page  # settings are escaped
    assert "<script" not in page and "http" not in page  # self-contained


def test_quality_pages_with_and_without_ground_truth(tmp_path: Path) -> None:
    from orl.viz.tables import pairs_page, proposals_page

    with_gt = {"num_images": 4, "ground_truth": True, "num_gt_boxes": 10, "iou_thresholds": [0.5, 0.7],
               "raw": {"recall@0.5": 0.9, "recall@0.7": 0.8, "mean_boxes_per_image": 120.5,
                       "median_boxes_per_image": 118.0},
               "filtered": {"recall@0.5": 0.6, "recall@0.7": 0.4, "mean_boxes_per_image": 15.0,
                            "median_boxes_per_image": 15.0},
               "recall_by_gt_area": {"small": {"num_gt_boxes": 10, "raw": {"recall@0.5": 0.9, "recall@0.7": 0.8},
                                               "filtered": {"recall@0.5": 0.6, "recall@0.7": 0.4}}}}
    (tmp_path / "p.json").write_text(json.dumps(with_gt))
    page = proposals_page(tmp_path / "p.json")
    assert "recall@0.5" in page and "0.600" in page and "<svg" in page and "small" in page
    no_gt = {"num_images": 4, "ground_truth": False, "raw": {"mean_boxes_per_image": 120.5},
             "filtered": {"mean_boxes_per_image": 15.0}}
    (tmp_path / "q.json").write_text(json.dumps(no_gt))
    page = proposals_page(tmp_path / "q.json")
    assert "recall not measured" in page and "recall@" not in page.split("<details>")[0]
    pairs = {"num_pairs": 30, "num_image_pairs": 20, "mined": {"both_cover_object": 0.2, "same_category": 0.1},
             "random_expected": {"both_cover_object": 0.1, "same_category": 0.04}}
    (tmp_path / "r.json").write_text(json.dumps(pairs))
    page = pairs_page(tmp_path / "r.json")
    assert "x2.00" in page and "x2.50" in page  # lift computed when the file has none


def test_report_tables_cli_and_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orl.cli import main

    (tmp_path / "summary.csv").write_text(SUMMARY_CSV)
    out = tmp_path / "page" / "summary.html"
    assert main(["report-tables", "--kind", "results", "--input", str(tmp_path / "summary.csv"), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    missing = tmp_path / "missing.json"
    assert main(["report-tables", "--kind", "pairs", "--input", str(missing), "--out", str(out)]) == 1
    assert str(missing) in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["report-tables", "--kind", "proposals", "--input", str(tmp_path / "bad.json"), "--out", str(out)]) == 1
    assert "bad.json" in capsys.readouterr().err
