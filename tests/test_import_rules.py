"""The import rules of DESIGN.md: core framework-free, backends independent, no transformers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = {"torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "optax"}
BACKENDS = {"encdec_pt", "encdec_tf", "encdec_flax"}


def _imports(path: Path) -> set[str]:
    """Top-level module names imported anywhere in a file (function bodies included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _files("encdec_core"), ids=lambda p: p.name)
def test_core_imports_no_framework(path):
    assert not (_imports(path) & (FRAMEWORKS | BACKENDS | {"transformers", "conversion"}))


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backends_do_not_import_each_other(backend):
    for path in _files(backend):
        assert not (_imports(path) & (BACKENDS - {backend})), path


@pytest.mark.parametrize("package", ["encdec_core", "encdec_pt", "encdec_tf", "encdec_flax", "conversion"])
def test_no_library_module_imports_transformers(package):
    for path in _files(package):
        assert "transformers" not in _imports(path), path


def test_conversion_imports_frameworks_only_inside_functions():
    for path in _files("conversion"):
        top = ast.parse(path.read_text()).body
        for node in top:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = {a.name.split(".")[0] for a in node.names} if isinstance(node, ast.Import) else {(node.module or "").split(".")[0]}
                assert not (names & FRAMEWORKS), f"{path.name}: module-level import of {names & FRAMEWORKS}"


def test_importing_core_loads_no_framework():
    code = (
        "import sys, encdec_core, encdec_core.tables, encdec_core.loading, encdec_core.checkpoint, encdec_core.hub; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
