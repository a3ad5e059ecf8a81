"""Every relative link, image, anchor and script path in the README and the docs points to something that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
# Scripts and tests named in prose or commands: benchmarks/<group>/<name>.py|sh, tests/<name>.py.
SCRIPT = re.compile(r"(?<![\w/.])((?:benchmarks|tests)/[\w./-]+?\.(?:py|sh))\b")


def doc_pages() -> list[Path]:
    """README.md, docs/*.md and benchmarks/*/README.md."""
    docs = sorted((REPO / "docs").glob("*.md"))
    return [REPO / "README.md", *docs, *sorted((REPO / "benchmarks").glob("*/README.md"))]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Anchors of every heading of a markdown page (outside code blocks)."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def relative_links(page: Path) -> list[str]:
    """Targets of the markdown links and images of a page that are not web or mail addresses."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def broken_links(page: Path) -> list[str]:
    """Links of a page whose file or heading anchor does not exist, each with the reason."""
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    return broken


def missing_scripts(page: Path) -> list[str]:
    """benchmarks/... and tests/... script paths named anywhere in a page (code included) that do not exist."""
    return sorted({p for p in SCRIPT.findall(page.read_text(encoding="utf-8")) if not (REPO / p).is_file()})


def test_the_pages_are_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in doc_pages()}
    assert {"README.md", "docs/results.md", "docs/performance.md", "docs/reliability.md", "docs/fidelity.md"} <= names
    assert {f"benchmarks/{group}/README.md" for group in ("speed", "studies", "gpu")} <= names


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_and_images_resolve(page: Path) -> None:
    assert broken_links(page) == []


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_named_scripts_exist(page: Path) -> None:
    assert missing_scripts(page) == []


@pytest.mark.parametrize("group", ["speed", "studies", "gpu"])
def test_each_benchmark_readme_lists_exactly_its_folders_scripts(group: str) -> None:
    folder = REPO / "benchmarks" / group
    table = (folder / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(?:bash )?(?:benchmarks/\w+/)?([\w.-]+\.(?:py|sh))\b", table, re.M)
    assert sorted(set(rows)) == sorted(p.name for p in folder.iterdir() if p.suffix in (".py", ".sh"))


def test_checks_catch_a_broken_link_anchor_and_script(tmp_path: Path) -> None:
    page = REPO / "docs" / "_link_check_probe.md"
    page.write_text("# Probe\n[a](results.md#no-such-heading) ![b](figures/none.png) [c](#probe)\n"
                    "run `python benchmarks/speed/no_such_script.py`\n", encoding="utf-8")
    try:
        assert [b.split(":")[0] for b in broken_links(page)] == ["results.md#no-such-heading", "figures/none.png"]
        assert missing_scripts(page) == ["benchmarks/speed/no_such_script.py"]
    finally:
        page.unlink()
