"""Run encdec and Transformers side by side and print ours/theirs ratios: ``python -m benchmarks.run --help``.

For every framework, pair and task: the median of ``--repeat`` timed calls after ``--warmup``
untimed ones, the two sides alternating call by call in this process (``load`` instead runs
each call in a fresh subprocess, see :mod:`benchmarks.load_probe`), the peak memory each call
adds, and the task's floor on this machine (:mod:`benchmarks.measure`). A failing cell holds its
error text; a side whose package is missing is left blank.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from benchmarks import checkpoints as ck
from benchmarks.convert_probe import run_probe as run_convert_probe
from benchmarks.impls import REGISTRY, TASKS, Workload, out_shape, transformers_env
from benchmarks.load_probe import run_probe
from benchmarks.measure import floor_seconds, machine_limits, meter, task_cost, timed, trim

logger = logging.getLogger("benchmarks")
SIDES = ("ours", "theirs")


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}, got {text!r}")
        return [c for c in choices if c in items]  # canonical order: train_step runs last

    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--tasks", type=_csv(TASKS), default=list(TASKS))
    p.add_argument("--pairs", type=_csv(tuple(ck.PAIRS)), default=list(ck.PAIRS))
    p.add_argument("--frameworks", type=_csv(tuple(REGISTRY)), default=["pt"])
    p.add_argument("--sides", type=_csv(SIDES), default=list(SIDES), help="ours only skips Transformers")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per cell (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before them")
    p.add_argument("--batch", type=int, default=Workload.batch, help="sources per call (default %(default)s)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--tiny", action="store_true", help="tiny configs (hidden 36, 2 layers) for a smoke run")
    p.add_argument("--cache", type=Path, default=ck.DEFAULT_CACHE, help="where the random checkpoints are written")
    p.add_argument("--md", type=Path, help="append the report (command, commit, versions, table) to this file")
    p.add_argument("--json", type=Path, help="write the raw numbers to this file")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or args.batch < 1:
        p.error("--repeat and --batch must be >= 1 and --warmup >= 0")
    return args


# ---------------------------------------------------------------------- measuring
def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()


def _finish(cell: dict) -> dict:
    cell["median_s"] = statistics.median(cell["times_s"]) if cell["times_s"] and not cell["error"] else None
    return cell


def bench_load(impls: dict, enc, dec, args) -> dict:
    cells = {side: {"times_s": [], "peak_bytes": None, "n_params": None, "error": None} for side in impls}
    schedule = [(False, s) for _ in range(args.warmup) for s in impls] + [
        (True, s) for _ in range(args.repeat) for s in impls
    ]
    for timed_call, side in tqdm(schedule, desc="load", leave=False, disable=None):
        cell = cells[side]
        if cell["error"]:
            continue
        res = run_probe(impls[side].framework, side, enc, dec)
        if "error" in res:
            cell["error"] = res["error"]
        elif timed_call:
            cell["times_s"].append(res["seconds"])
            cell["n_params"] = res["n_params"]
            if res["peak_bytes"] is not None:
                cell["peak_bytes"] = max(cell["peak_bytes"] or 0, res["peak_bytes"])
    return {side: _finish(c) for side, c in cells.items()}


def bench_convert(sides: list[str], src: Path, target: str, args) -> dict:
    """side -> cell for converting ``src`` to ``target``; each call a fresh subprocess, sides alternating."""
    cells = {side: {"times_s": [], "peak_bytes": None, "out_bytes": None, "error": None} for side in sides}
    schedule = [(False, s) for _ in range(args.warmup) for s in sides]
    schedule += [(True, s) for r in range(args.repeat) for s in (sides if r % 2 == 0 else sides[::-1])]
    for timed_call, side in tqdm(schedule, desc=f"convert {target}", leave=False, disable=None):
        cell = cells[side]
        if cell["error"]:
            continue
        res = run_convert_probe(side, target, src, Path(args.cache) / f".convert-{side}-{target}")
        if "error" in res:
            cell["error"] = res["error"]
            logger.warning("convert %s (%s): %s", target, side, res["error"])
        elif timed_call:
            cell["times_s"].append(res["seconds"])
            cell["out_bytes"] = res["out_bytes"]
            if res["peak_bytes"] is not None:
                cell["peak_bytes"] = max(cell["peak_bytes"] or 0, res["peak_bytes"])
    return {side: _finish(c) for side, c in cells.items()}


def convert_rows(args, limits: dict) -> list[dict]:
    """The ``convert`` task: each pair's composed PT checkpoint to tf_model.h5 (TF) and flax_model.msgpack (Flax)."""
    rows = []
    for pair in args.pairs:
        src = ck.composite_dir(pair, args.tiny, args.cache)
        ckpt_bytes = ck.weights_bytes(src)
        for fw, target in (("tf", "h5"), ("flax", "msgpack")):
            cells = bench_convert(args.sides, src, target, args)
            cost = {"flops": 0.0, "bytes": 2.0 * ckpt_bytes}  # read the checkpoint once, write it once
            rows.append(
                {
                    "framework": fw,
                    "pair": pair,
                    "task": "convert",
                    "target": target,
                    **cost,
                    "floor_s": floor_seconds(cost, limits),
                    "weights_bytes": ckpt_bytes,
                    **{side: cells.get(side) for side in SIDES},
                }
            )
    return rows


def bench_tasks(impls: dict, tasks: list[str], enc, dec, work: Workload, args) -> dict:
    """task -> side -> cell, for the in-process tasks. Both models stay loaded; calls alternate."""
    enc_cfg, dec_cfg = ck.read_config(enc), ck.read_config(dec)
    arrays = work.arrays(enc_cfg["vocab_size"], dec_cfg["vocab_size"])
    states, failed = {}, {}
    for side, impl in impls.items():
        try:
            states[side] = impl.prepare(impl.load(enc, dec), work, arrays, args.device)
        except Exception as e:
            failed[side] = _error(e)
            logger.warning("%s: load failed: %s", impl.name, failed[side])
    out = {}
    for task in tasks:
        cells = {
            side: {
                "times_s": [],
                "peak_bytes": None,
                "warmup_peak_bytes": None,
                "n_params": None,
                "error": failed.get(side),
                "out_shape": None,
            }
            for side in impls
        }
        fns = {}
        for side, state in states.items():
            try:
                fns[side] = impls[side].task(task, state, work)
                cells[side]["n_params"] = impls[side].num_params(state.model)
            except Exception as e:
                cells[side]["error"] = _error(e)
        sides = list(impls)
        schedule = [(False, s) for _ in range(args.warmup) for s in sides]
        schedule += [(True, s) for r in range(args.repeat) for s in (sides if r % 2 == 0 else sides[::-1])]
        for timed_call, side in tqdm(schedule, desc=task, leave=False, disable=None):
            cell, impl = cells[side], impls[side]
            if cell["error"]:
                continue
            mem = meter(args.device)
            mem.start()
            try:
                seconds, result = timed(fns[side], functools.partial(impl.sync, args.device))
            except Exception as e:
                cell["error"] = _error(e)
                logger.warning("%s %s: %s", impl.name, task, cell["error"])
                continue
            peak, key = mem.peak(), ("peak_bytes" if timed_call else "warmup_peak_bytes")
            if peak is not None:
                cell[key] = max(cell[key] or 0, peak)
            if timed_call:
                cell["times_s"].append(seconds)
            cell["out_shape"] = out_shape(result)
            del result
        out[task] = {side: _finish(c) for side, c in cells.items()}
        expect = [work.batch, work.new_tokens + 1]  # decoder start token + new tokens
        for side, c in out[task].items():
            if task in ("greedy", "beam4", "sample") and c["out_shape"] not in (None, expect):
                logger.warning("%s %s: generated shape %s, expected %s", impls[side].name, task, c["out_shape"], expect)
    del states
    trim()
    return out


def run(args) -> dict:
    import torch

    threads, environ = torch.get_num_threads(), dict(os.environ)
    transformers_env(args.frameworks)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the load probes inherit it
    try:
        return _run(args)
    finally:  # leave a calling process (the test suite) as it was
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(environ)


def _run(args) -> dict:
    work = Workload(batch=args.batch)
    limits = machine_limits(args.device, quick=args.tiny)
    logger.info(
        "machine: GEMM %.1f GFLOP/s, copy bandwidth %.1f GB/s", limits["gemm_flops"] / 1e9, limits["bandwidth"] / 1e9
    )
    rows = []
    for fw in args.frameworks:
        impls, skipped = {}, {}
        for side in args.sides:
            impl = REGISTRY[fw][side]
            reason = impl.unavailable()
            if reason:
                skipped[side] = reason
                logger.warning("%s skipped: %s", impl.name, reason)
            else:
                impls[side] = impl
        for pair in args.pairs:
            enc, dec = ck.pair_dirs(pair, args.tiny, args.cache)
            ckpt_bytes = ck.weights_bytes(enc) + ck.weights_bytes(dec)
            logger.info("%s %s: %s + %s", fw, pair, enc.name, dec.name)
            cells = {}
            if "load" in args.tasks:
                cells["load"] = bench_load(impls, enc, dec, args)
            in_proc = [t for t in args.tasks if t not in ("load", "convert")]
            if in_proc:
                cells.update(bench_tasks(impls, in_proc, enc, dec, work, args))
            for task in (t for t in args.tasks if t != "convert"):  # convert rows: convert_rows
                n_params = next((c["n_params"] for c in cells[task].values() if c.get("n_params")), 0)
                cost = task_cost(
                    task, ck.read_config(enc), ck.read_config(dec), work, n_params=n_params, ckpt_bytes=ckpt_bytes
                )
                row = {
                    "framework": fw,
                    "pair": pair,
                    "task": task,
                    **cost,
                    "floor_s": floor_seconds(cost, limits),
                    "weights_bytes": 4 * n_params or None,
                }
                row.update({side: cells[task].get(side) for side in SIDES})
                rows.append(row)
    if "convert" in args.tasks:
        rows += convert_rows(args, limits)
    return {"meta": metadata(args), "limits": limits, "workload": vars(work), "rows": rows}


# ---------------------------------------------------------------------- reporting
def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"],  # "-dirty": the tree had uncommitted changes
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def metadata(args) -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" and torch.cuda.is_available() else None
    return {
        "command": "python -m benchmarks.run " + shlex.join(args.argv),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "tensorflow": _version("tensorflow"),
            "flax": _version("flax"),
        },
        "machine": {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu": cpu, "gpu": gpu},
        "other_frameworks_loaded": [m for m in ("tensorflow", "jax") if m in sys.modules],
        "device": args.device,
        "tiny": args.tiny,
        "repeat": args.repeat,
        "warmup": args.warmup,
    }


def _ms(cell) -> str:
    if not cell:
        return ""
    if cell["error"]:
        return "error: " + cell["error"].replace("|", "/").replace("\n", " ")[:70]
    ms = cell["median_s"] * 1e3
    return f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def _mb(cell, weights) -> str:
    if not cell or cell["error"] or cell["peak_bytes"] is None:
        return ""
    text = f"{cell['peak_bytes'] / 2**20:.0f}"
    return f"{text} ({cell['peak_bytes'] / weights:.2f}x w)" if weights else text


def _ratio(a, b) -> str:
    ok = a and b and not a["error"] and not b["error"] and b["median_s"]
    return f"{a['median_s'] / b['median_s']:.2f}" if ok else ""


def table(result: dict) -> str:
    head = [
        "fw",
        "task",
        "pair",
        "ours ms",
        "theirs ms",
        "ours/theirs",
        "ours peak MB",
        "theirs peak MB",
        "floor ms",
        "ours/floor",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        ours, theirs = r["ours"], r["theirs"]
        w = r["weights_bytes"] if r["task"] in ("load", "convert") else None
        floor = "" if not r["floor_s"] else f"{r['floor_s'] * 1e3:.1f}"
        over = f"{ours['median_s'] / r['floor_s']:.1f}" if ours and ours["median_s"] and r["floor_s"] else ""
        task = f"convert to {r['target']}" if r["task"] == "convert" else r["task"]
        cells = [
            r["framework"],
            task,
            r["pair"],
            _ms(ours),
            _ms(theirs),
            _ratio(ours, theirs),
            _mb(ours, w),
            _mb(theirs, w),
            floor,
            over,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(result: dict) -> str:
    m, lim = result["meta"], result["limits"]
    mach, ver = m["machine"], m["versions"]
    wl = result["workload"]
    return "\n".join(
        [
            f"## Benchmark {m['date']} (commit {m['commit']})",
            "",
            f"`{m['command']}`",
            "",
            f"- versions: python {ver['python']}, torch {ver['torch']}, transformers {ver['transformers']}"
            + "".join(f", {k} {ver[k]}" for k in ("tensorflow", "flax") if ver.get(k)),
            f"- machine: {mach['cores']} cores ({mach['torch_threads']} torch threads), {mach['cpu']}"
            + (f", GPU {mach['gpu']}" if mach["gpu"] else "")
            + f"; device {m['device']}",
            f"- limits: fp32 GEMM {lim['gemm_flops'] / 1e9:.1f} GFLOP/s (n={lim['gemm_n']}), "
            f"copy bandwidth {lim['bandwidth'] / 1e9:.1f} GB/s",
            f"- workload: batch {wl['batch']}, source {wl['source_len']}, {wl['new_tokens']} new tokens (EOS off); "
            f"{'tiny' if m['tiny'] else 'base-size'} random checkpoints; median of {m['repeat']} after {m['warmup']} warmup",
            "",
            table(result),
            "",
        ]
    )


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    warnings.filterwarnings("ignore", module=r"transformers\.")  # its deprecation notes on every forward
    result = run(args)
    text = report(result)
    print(text, flush=True)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        with open(args.md, "a") as f:
            f.write(text + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
