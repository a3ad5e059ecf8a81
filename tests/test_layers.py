"""Imports in src/orl point down: every module imports only from its own package or from a lower layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "orl"

# Lowest first. Top-level modules are process and file plumbing that every layer may use; `stages` wires the
# building blocks into one artifact each and `cli` parses arguments for the stages.
LAYERS: list[set[str]] = [
    {"__init__", "fileio"},
    {"locks", "artifacts", "dist", "precision", "runtime", "checkpoint", "gpu_lease", "config_check"},
    {"data"},
    {"models"},
    {"mining"},
    {"methods"},
    {"bench"},
    {"train"},
    {"viz"},
    {"stages"},
    {"cli"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _unit(module: str) -> str:
    """The layer unit of a dotted module below orl: its package, or the top-level module's own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, orl module) of every import of an orl module in `path`, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "orl":  # `from orl import fileio` names modules; `from orl import __version__` not
                found += [(node.lineno, f"orl.{a.name}" if (SRC / f"{a.name}.py").exists() else "orl")
                          for a in node.names]
            elif node.module.startswith("orl."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("orl.")]
    return found


def _unit_of_file(path: Path, root: Path) -> str:
    """The layer unit a source file belongs to: its package below orl, or its own name at the top."""
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def upward_imports(root: Path = SRC) -> list[str]:
    """Every import in the package that points to a higher layer, as 'file:line imports module'."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        me = _unit_of_file(path, root)
        for line, module in _imports(path):
            target = _unit(module)
            if target != me and RANK[target] > RANK[me]:
                bad.append(f"{path.relative_to(root.parent)}:{line} imports {module} (layer {target} is above {me})")
    return bad


def test_every_package_and_top_level_module_has_a_layer() -> None:
    units = {p.stem for p in SRC.glob("*.py")} | {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    assert units == set(RANK), f"give these a layer in LAYERS: {sorted(units ^ set(RANK))}"


def test_imports_point_down() -> None:
    assert upward_imports() == []


def test_an_upward_import_is_reported(tmp_path: Path) -> None:
    pkg = tmp_path / "orl"
    (pkg / "bench").mkdir(parents=True)
    (pkg / "bench" / "x.py").write_text("def f():\n    from orl.train.trainer import Trainer\n")
    (pkg / "train").mkdir()
    (pkg / "train" / "y.py").write_text("from orl.bench import x\n")
    assert upward_imports(pkg) == ["orl/bench/x.py:2 imports orl.train.trainer (layer train is above bench)"]


@pytest.mark.parametrize("module", ["orl.bench.detection", "orl.bench.weights"])
def test_benchmarks_need_no_training_package(module: str) -> None:
    path = SRC.parent / (module.replace(".", "/") + ".py")
    assert not [m for _, m in _imports(path) if m.startswith("orl.train")]
