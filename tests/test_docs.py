"""Level 6: every code block of the docs and the README runs, offline (DESIGN.md, "Test levels").

The ```python blocks of each page run in order in a fresh namespace inside a temporary
working directory, and the ``encdec`` lines of its ```bash blocks through the CLI; examples
write the tiny checkpoints they need (hidden 36, 3 heads, intermediate 37, vocab 99), so
nothing is downloaded (``HF_HUB_OFFLINE=1``). A block that cannot run offline is marked
``<!-- no-test: reason -->`` on the line before it; such blocks must stay few.

All pages run in one subprocess (``tests/docs_runner.py``): TensorFlow, JAX and torch are
imported once, the pages' global settings cannot leak into the other tests, XLA compiles
with its cheap optimisation level (compile time dominates tiny models; the numbers the pages
compare are unaffected) and JAX sees two CPU devices (the sharding example shards).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from docs_runner import blocks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_SKIPPED = 8  # blocks marked no-test over all pages (the seed's Hub examples)
# cheap XLA compiles; two host devices so the JAX sharding example really shards
XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_force_host_platform_device_count=2"
)


@pytest.fixture(scope="module")
def results(request, tmp_path_factory) -> dict:
    """Run the selected pages once, in one subprocess."""
    selected = [
        item.callspec.params["page"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec") and "page" in item.callspec.params
    ]
    pages = [p for p in PAGES if p.name in selected] or PAGES
    out = tmp_path_factory.mktemp("docs") / "results.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MPLBACKEND": "Agg",
        "TQDM_DISABLE": "1",
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {XLA_FLAGS}".strip(),
        "OMP_NUM_THREADS": "1",
    }  # one thread each: tiny models, and OpenMP barriers stall on a shared machine
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "docs_runner.py"), str(out), *map(str, pages)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if not out.exists():
        pytest.fail(f"docs runner crashed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    data = json.loads(out.read_text())
    data["_log"] = proc.stderr[-4000:]
    return data


def test_blocks_parse_and_few_are_marked():
    skipped = []
    for page in PAGES:
        for b in blocks(page):
            if b.lang == "python":
                ast.parse(b.code, f"{page.name}:{b.line}")  # even the blocks that do not run must be valid Python
            if b.skip is not None:
                assert b.skip, f"{page.name}:{b.line}: a no-test mark needs a reason"
                skipped.append(f"{page.name}:{b.line}")
    assert len(skipped) <= MAX_SKIPPED, f"too many blocks not run: {skipped}"


def test_every_page_has_code_that_runs():
    assert {p.name for p in PAGES} >= {"README.md", "index.md", "encoder-decoder.md", "generation.md"}
    for page in PAGES:
        if page.name not in ("index.md", "api.md"):
            assert any(b.skip is None and b.lang == "python" for b in blocks(page)), f"{page.name}: no runnable example"


@pytest.mark.parametrize("page", [p.name for p in PAGES])
def test_page_runs(page, results):
    r = results.get(page)
    assert r is not None, f"{page} was not run:\n{results['_log']}"
    assert r["ok"], f"{page}: a block failed after {r['blocks']} ran:\n{r['error']}\n--- output ---\n{results['_log']}"
