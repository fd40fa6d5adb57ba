"""The import rules of DESIGN.md: core framework-free, backends independent, layering one way, no transformers.

Layering: ``encdec_core`` (with its format readers in ``encdec_core/formats``), then the three
backends, then ``conversion`` (converter, parity checker, CLI), which may import backends.
"""

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


def _top_level_imports(path: Path) -> set[str]:
    """Top-level module names imported at module level (what importing the file loads)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


# The only framework the core may import, and only inside functions: torch, to read and write
# pytorch_model.bin (a torch pickle) and hand the PyTorch loader torch tensors.
LAZY_IN_CORE = {"encdec_core/formats/pt_bin.py": {"torch"}, "encdec_core/formats/sources.py": {"torch"}}


@pytest.mark.parametrize("path", _files("encdec_core"), ids=lambda p: str(p.relative_to(ROOT / "encdec_core")))
def test_core_imports_no_framework(path):
    assert not (_top_level_imports(path) & (FRAMEWORKS | BACKENDS | {"transformers", "conversion", "h5py", "msgpack"}))
    allowed = LAZY_IN_CORE.get(str(path.relative_to(ROOT)), set())
    assert not (_imports(path) & ((FRAMEWORKS - allowed) | BACKENDS | {"transformers", "conversion"})), path


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backends_do_not_import_conversion(backend):
    for path in _files(backend):  # not even inside a function: the format readers live in the core
        assert "conversion" not in _imports(path), path


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backends_do_not_import_each_other(backend):
    for path in _files(backend):
        assert not (_imports(path) & (BACKENDS - {backend})), path


# The one optional integration module: it imports transformers inside functions, when a user takes a class from it.
LAZY_TRANSFORMERS = {"encdec_pt/integrations.py"}


@pytest.mark.parametrize("package", ["encdec_core", "encdec_pt", "encdec_tf", "encdec_flax", "conversion"])
def test_no_library_module_imports_transformers(package):
    for path in _files(package):
        lazy = str(path.relative_to(ROOT)) in LAZY_TRANSFORMERS
        imported = _top_level_imports(path) if lazy else _imports(path)
        assert not imported & {"transformers", "peft"}, path


def test_the_integration_module_imports_transformers_only_when_used():
    code = (
        "import sys, encdec_pt, encdec_pt.integrations as i; a = 'transformers' in sys.modules; "
        "i.Seq2SeqTrainer; print(a, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if "ModuleNotFoundError: No module named 'transformers'" in out.stderr:
        pytest.importorskip("transformers")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]


def test_conversion_imports_frameworks_only_inside_functions():
    for path in _files("conversion"):
        top = ast.parse(path.read_text()).body
        for node in top:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = (
                    {a.name.split(".")[0] for a in node.names}
                    if isinstance(node, ast.Import)
                    else {(node.module or "").split(".")[0]}
                )
                assert not (names & FRAMEWORKS), f"{path.name}: module-level import of {names & FRAMEWORKS}"


def test_importing_core_loads_no_framework():
    code = (
        "import sys, encdec_core, encdec_core.tables, encdec_core.loading, encdec_core.checkpoint, encdec_core.hub, "
        "encdec_core.formats.canonical, encdec_core.formats.pt_bin, encdec_core.formats.tf_h5, "
        "encdec_core.formats.flax_msgpack; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS | {'h5py', 'msgpack'}!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
