"""One table from several ``benchmarks.run --json`` results: a column group per Transformers version.

Transformers 4.57 (with TF and Flax) and 5.x (PyTorch only) cannot share one interpreter, so each
version is benchmarked in its own environment, ours against theirs in the same run (the sides
alternate call by call there), and this joins the runs row by row::

    PYTHONPATH=. /work/venv-ref/bin/python -m benchmarks.run --frameworks pt --json /tmp/v4.json
    .venv/bin/python -m benchmarks.run --frameworks pt --json /tmp/v5.json
    python -m benchmarks.merge /tmp/v4.json /tmp/v5.json --md benchmarks/RESULTS.md

Every ratio is ours / theirs *within one run*; ours' times of two runs are not compared with
each other. The floor comes from the first run's measured limits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.run import _ms, _ratio


def _key(row: dict) -> tuple:
    return row["framework"], row["task"], row["pair"], row.get("target")


def label(result: dict) -> str:
    """The name of a run's column group: the Transformers version its "theirs" side ran."""
    return "HF " + result["meta"]["versions"]["transformers"]


def table(results: list[dict]) -> str:
    """Markdown: per row (framework, task, pair) ours ms, theirs ms and the ratio of each run, then the floor."""
    head = ["fw", "task", "pair"]
    for res in results:
        head += [f"ours ms ({label(res)} run)", f"{label(res)} ms", f"ours/{label(res)}"]
    head += ["floor ms", "best ours/floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_run = [{_key(r): r for r in res["rows"]} for res in results]
    for key in dict.fromkeys(k for run in by_run for k in run):  # first-seen order over the runs
        rows = [run.get(key) for run in by_run]
        fw, task, pair, target = key
        cells = [fw, f"convert to {target}" if task == "convert" else task, pair]
        for row in rows:
            ours, theirs = (row["ours"], row["theirs"]) if row else (None, None)
            cells += [_ms(ours), _ms(theirs), _ratio(ours, theirs)]
        floor = next((r["floor_s"] for r in rows if r and r.get("floor_s")), None)
        ours_s = [r["ours"]["median_s"] for r in rows if r and r["ours"] and not r["ours"]["error"]]
        cells += [f"{floor * 1e3:.1f}" if floor else "", f"{min(ours_s) / floor:.1f}" if floor and ours_s else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: list[dict]) -> str:
    out = [f"## Benchmark, {' and '.join(label(r) for r in results)} (merged runs)", ""]
    for res in results:
        m, lim = res["meta"], res["limits"]
        out.append(
            f"- {label(res)} run: `{m['command']}` at {m['date']}, commit {m['commit']}, "
            f"torch {m['versions']['torch']}, {m['machine']['torch_threads']} torch threads; limits "
            f"{lim['gemm_flops'] / 1e9:.1f} GFLOP/s, {lim['bandwidth'] / 1e9:.1f} GB/s"
        )
    return "\n".join([*out, "", table(results), ""])


def main(argv=None) -> str:
    p = argparse.ArgumentParser(prog="python -m benchmarks.merge", description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+", help="JSON files written by benchmarks.run --json")
    p.add_argument("--md", type=Path, help="append the report to this Markdown file")
    args = p.parse_args(argv)
    results = []
    for path in args.results:
        try:
            res = json.loads(path.read_text())
            if not isinstance(res.get("rows"), list) or "transformers" not in res["meta"]["versions"]:
                raise KeyError("rows, meta.versions.transformers")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            p.error(f"{path}: expected the JSON of `python -m benchmarks.run --json`, got {type(e).__name__}: {e}")
        results.append(res)
    text = report(results)
    print(text, flush=True)
    if args.md:
        with open(args.md, "a") as f:
            f.write(text + "\n")
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
