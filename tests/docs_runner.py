"""Run the code blocks of documentation pages, page by page; used by ``tests/test_docs.py``.

Usage: ``python tests/docs_runner.py OUT.json PAGE.md [PAGE.md ...]``

Each page gets a fresh namespace and a fresh temporary working directory; its ```python
blocks run there in order (so a block may use what an earlier block of the same page
defined or wrote), and the ``encdec ...`` lines of its ```bash blocks run through the CLI's
``main`` (exit code 0 expected). A block right after ``<!-- no-test: reason -->`` is not run.
One process runs every page, so TensorFlow, JAX and torch are imported once; the pages
must leave global settings (Keras' dtype policy, process groups) as they found them.
Writes ``{page: {"ok": bool, "blocks": n_run, "skipped": n_skipped, "seconds": t, "cpu_seconds": t,
"error": str, "block_seconds": {line: t}}}``.
"""

from __future__ import annotations

import ast
import contextlib
import json
import linecache
import os
import re
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

NO_TEST = re.compile(r"<!--\s*no-test:\s*(?P<reason>.*?)\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)")


@dataclass
class Block:
    lang: str  # "python" or "bash"
    code: str
    line: int  # 1-based line of the opening fence
    skip: str | None  # the no-test reason, if marked


def blocks(path: Path) -> list[Block]:
    """The fenced python and bash blocks of a Markdown page, in order, with their no-test marks."""
    lines = path.read_text().splitlines()
    out, i, last_text = [], 0, ""
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                last_text = lines[i]
            i += 1
            continue
        indent, lang, start = m.group("indent"), m.group("lang"), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1  # the closing fence
        mark = NO_TEST.search(last_text)
        if lang in ("python", "bash"):
            out.append(Block(lang, "\n".join(body) + "\n", start + 1, mark.group("reason") if mark else None))
        last_text = ""
    return out


def _run_cli(code: str, where: str) -> None:
    """The block's ``encdec ...`` lines, in process (``> file`` redirects stdout); each must exit 0."""
    from conversion.cli import main

    for line in code.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line.startswith("encdec "):
            continue
        command, _, target = line.partition(" > ")
        with open(target.strip(), "w") if target else contextlib.nullcontext(sys.stdout) as out:
            with contextlib.redirect_stdout(out):
                rc = main(shlex.split(command)[1:])
        if rc != 0:
            raise AssertionError(f"{where}: `{line}` exited with {rc}")


def run_page(path: Path) -> dict:
    """Run one page's blocks in a fresh namespace and temporary directory."""
    found = blocks(path)
    result = {
        "ok": True,
        "blocks": 0,
        "skipped": sum(b.skip is not None for b in found),
        "seconds": 0.0,
        "error": "",
        "block_seconds": {},
    }
    t0, cpu0, cwd = time.perf_counter(), time.process_time(), os.getcwd()
    namespace: dict = {"__name__": "__main__"}
    with tempfile.TemporaryDirectory(prefix="encdec-docs-") as tmp:
        os.chdir(tmp)
        try:
            for block in found:
                if block.skip is not None:
                    continue
                where, t1 = f"{path.name}:{block.line}", time.perf_counter()
                if block.lang == "python":
                    # registered as a source file: tracebacks show the line, and tools that read a
                    # function's source (tf.data / autograph) find it
                    linecache.cache[where] = (len(block.code), None, block.code.splitlines(True), where)
                    exec(compile(ast.parse(block.code, where), where, "exec"), namespace)
                else:
                    _run_cli(block.code, where)
                result["blocks"] += 1
                result["block_seconds"][block.line] = round(time.perf_counter() - t1, 2)
        except BaseException:  # noqa: B036  (SystemExit from a CLI call is a failure too)
            result["ok"] = False
            result["error"] = traceback.format_exc(limit=-8)
        finally:
            os.chdir(cwd)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["cpu_seconds"] = round(time.process_time() - cpu0, 2)  # comparable on a busy machine
    return result


def main(argv: list[str]) -> int:
    out, pages = Path(argv[0]), [Path(p).resolve() for p in argv[1:]]
    results = {}
    for page in pages:
        print(f"== {page.name}", flush=True)
        with contextlib.redirect_stdout(sys.stderr):  # the blocks' prints, kept apart from ours
            results[page.name] = run_page(page)
        r = results[page.name]
        print(f"   {r['seconds']:.1f}s ({r['cpu_seconds']:.1f}s CPU) ok={r['ok']}", flush=True)
        out.write_text(json.dumps(results, indent=1))  # after every page: a crash still leaves the others
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
