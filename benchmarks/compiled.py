"""TensorFlow and Flax rows: compiled greedy generation, its compile time, load from a PyTorch checkpoint.

``python -m benchmarks.compiled --frameworks tf,flax --pairs bert2gpt2 --repeat 1``

Our TF classes need Keras 3 and Transformers' TF classes need tf-keras
(``TF_USE_LEGACY_KERAS=1``), which cannot share one process; so every (framework, side, pair) runs
in its own fresh subprocess (``--probe``) that does, in order:

1. imports the class (not timed), then times ``from_encoder_decoder_pretrained(enc, dec,
   encoder_from_pt=True, decoder_from_pt=True)`` on the harness' PyTorch checkpoints (both sides
   the same call), with the RSS meter as in ``load_probe``;
2. sets ``decoder_start_token_id``, ``pad_token_id`` and ``eos_token_id=None`` on the config and
   the generation config (the PT rows' workload: batch 4, source 128, 32 new tokens, EOS off);
3. ``xla``: greedy generation compiled. TF ours: ``model.generate(ids, attention_mask=mask,
   max_new_tokens=32)`` (our default ``jit_compile=True``); TF theirs: ``tf.function(model.generate,
   jit_compile=True)`` called with the same arguments (Transformers' documented XLA recipe).
   Flax ours: ``model.generate(...)`` (one ``jax.jit`` + ``lax.while_loop`` inside); Flax theirs:
   ``jax.jit(lambda i, a: model.generate(i, attention_mask=a, ...).sequences)`` (Transformers'
   Flax ``generate`` runs a ``lax.while_loop`` but is not jitted as a whole: called plainly it
   traces and compiles again on every call). The first call is timed apart (``first_s``:
   tracing + XLA compilation + one run); ``compile_s = first_s - median(steady calls)``;
4. ``plain``: generation called the way a user calls it, with no ``tf.function`` / ``jax.jit`` of
   their own. Ours: the same call as ``xla`` (it compiles itself, so after the first call this is
   the ``xla`` figure, re-timed); theirs: ``model.generate(...)`` (TF: eager; Flax: re-traced).
   Transformers' Flax greedy search fails with ``eos_token_id=None`` on jax 0.10
   (``jnp.array(None)``): the probe records that error and, for theirs only, disables EOS with an
   id outside the vocabulary (never generated), so both sides still produce 32 new tokens.

The parent joins the two sides' numbers into the harness' table (``run.table``) with floors from
``measure`` (``load``: one copy of the checkpoint; ``greedy``: the generation cost model).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLASSES = {
    ("tf", "ours"): ("encdec_tf", "TFEncoderDecoderModel"),
    ("tf", "theirs"): ("transformers", "TFEncoderDecoderModel"),
    ("flax", "ours"): ("encdec_flax", "FlaxEncoderDecoderModel"),
    ("flax", "theirs"): ("transformers", "FlaxEncoderDecoderModel"),
}


def side_env(fw: str, side: str) -> dict:
    """Environment of one probe: tf-keras for Transformers' TF classes, Keras 3 (the default) for ours."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        TF_CPP_MIN_LOG_LEVEL="2",
        USE_TORCH="AUTO",
        USE_TF="AUTO" if fw == "tf" else "0",
        USE_FLAX="1" if fw == "flax" else "0",
    )  # USE_TORCH=1 with USE_TF=1 disables both in Transformers
    env.pop("TF_USE_LEGACY_KERAS", None)
    if fw == "tf" and side == "theirs":
        env["TF_USE_LEGACY_KERAS"] = "1"
    return env


# ---------------------------------------------------------------------- the probe (child process)
def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip().splitlines()[0][:300] if str(e) else type(e).__name__


def _time_calls(fn, repeat: int) -> dict:
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    shape = [int(d) for d in getattr(out, "shape", ())]
    med = statistics.median(times)
    return {"first_s": first, "times_s": times, "median_s": med, "compile_s": first - med, "out_shape": shape}


def probe(fw: str, side: str, enc: str, dec: str, repeat: int, plain: bool) -> dict:
    import importlib

    import numpy as np

    from benchmarks.checkpoints import read_config
    from benchmarks.impls import Workload
    from benchmarks.measure import RssMeter

    res: dict = {"errors": {}}
    module, attr = CLASSES[(fw, side)]
    try:
        mod = importlib.import_module(module)
        if module == "transformers":
            mod.logging.set_verbosity_error()
        cls = getattr(mod, attr)
        mem = RssMeter()
        mem.start()
        t0 = time.perf_counter()
        model = cls.from_encoder_decoder_pretrained(enc, dec, encoder_from_pt=True, decoder_from_pt=True)
        res["load_s"] = time.perf_counter() - t0
        res["load_peak_bytes"] = mem.peak()
    except Exception as e:
        res["errors"]["load"] = _err(e)
        return res
    work = Workload()
    for obj in (model.config, getattr(model, "generation_config", None)):
        if obj is not None:
            obj.decoder_start_token_id, obj.pad_token_id, obj.eos_token_id = (
                work.decoder_start_token_id,
                work.pad_token_id,
                None,
            )
    arrays = work.arrays(read_config(Path(enc))["vocab_size"], read_config(Path(dec))["vocab_size"])
    ids, mask = arrays["input_ids"].astype(np.int32), arrays["attention_mask"].astype(np.int32)
    kw = dict(max_new_tokens=work.new_tokens, eos_token_id=None, num_beams=1, do_sample=False)
    if fw == "tf":
        import tensorflow as tf

        ids_t, mask_t = tf.constant(ids), tf.constant(mask)
        if side == "ours":

            def xla():
                return model.generate(ids_t, attention_mask=mask_t, **kw).numpy()

            eager = xla  # our generate compiles itself: a plain call is the XLA call
        else:
            xla_gen = tf.function(model.generate, jit_compile=True)

            def xla():
                return xla_gen(ids_t, attention_mask=mask_t, **kw).numpy()

            def eager():
                return model.generate(ids_t, attention_mask=mask_t, **kw).numpy()
    else:
        import jax

        res["n_params"] = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(model.params)))

        def call():
            out = model.generate(ids, attention_mask=mask, **kw)
            return np.asarray(getattr(out, "sequences", out))

        xla = eager = call  # ours: one jax.jit inside generate
        if side == "theirs":  # Transformers' Flax greedy search does jnp.array(eos_token_id): None fails on jax 0.10
            try:
                call()
            except ValueError as e:
                res["eos_none_error"] = _err(e)
                kw["eos_token_id"] = read_config(Path(dec))["vocab_size"]  # an id never generated: EOS off
                res["eos_token_id_used"] = kw["eos_token_id"]
            jit_gen = jax.jit(lambda i, a: model.generate(i, attention_mask=a, **kw).sequences)

            def xla():  # Transformers' Flax generate is not jitted as a whole: wrapped as its docs show
                return np.asarray(jit_gen(ids, mask))

    for task, fn in (("xla", xla), ("plain", eager if plain else None)):
        if fn is None:
            continue
        try:
            res[task] = _time_calls(fn, repeat)
        except Exception as e:
            res["errors"][task] = _err(e)
    if fw == "tf":  # after the calls: Transformers' warm-started TF model has no weights before its first call
        try:
            res["n_params"] = int(sum(np.prod(v.shape) for v in model.trainable_weights))
        except Exception as e:
            res["errors"]["n_params"] = _err(e)
    return res


# ---------------------------------------------------------------------- the driver (parent process)
def run_probe(fw, side, enc, dec, repeat, python, timeout) -> dict:
    cmd = [python, "-m", "benchmarks.compiled", "--probe", fw, side, str(enc), str(dec), "--repeat", str(repeat)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=side_env(fw, side), cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"errors": {"load": f"probe timed out after {timeout:.0f} s"}}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"errors": {"load": f"probe exited {proc.returncode}: {tail[0][:300]}"}}
    out = json.loads(lines[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


def _cell(res: dict | None, task: str, key: str = "median_s") -> dict | None:
    if res is None:
        return None
    errs = res.get("errors", {})
    err = errs.get("load") or errs.get({"load": "load", "greedy": "xla", "compile": "xla"}.get(task, task))
    if err:
        return {"error": err, "median_s": None, "peak_bytes": None}
    if task == "load":
        return {"error": None, "median_s": res["load_s"], "peak_bytes": res.get("load_peak_bytes")}
    sub = res.get("plain" if task == "plain generate" else "xla")
    if not sub:
        return None
    return {
        "error": None,
        "median_s": sub["compile_s" if task == "compile" else key],
        "peak_bytes": None,
        "first_s": sub["first_s"],
        "times_s": sub["times_s"],
        "out_shape": sub["out_shape"],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compiled", description=__doc__.splitlines()[0])
    p.add_argument("--probe", nargs=4, metavar=("FW", "SIDE", "ENC", "DEC"), help=argparse.SUPPRESS)
    p.add_argument("--frameworks", default="tf,flax")
    p.add_argument("--pairs", default="bert2gpt2")
    p.add_argument("--sides", default="ours,theirs")
    p.add_argument("--repeat", type=int, default=3, help="steady calls after the first (compiling) call")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--cache", type=Path, default=None, help="checkpoint cache (benchmarks/.cache/)")
    p.add_argument(
        "--no-plain", action="store_true", help="skip the plain generate call (eager TF / un-jitted Flax for theirs)"
    )
    p.add_argument("--python", default=sys.executable, help="interpreter of the probes")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--md", type=Path)
    p.add_argument("--json", type=Path)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.probe:
        fw, side, enc, dec = args.probe
        print(json.dumps(probe(fw, side, enc, dec, args.repeat, plain=not args.no_plain)), flush=True)
        return {}

    from benchmarks import checkpoints as ck
    from benchmarks.impls import Workload
    from benchmarks.measure import floor_seconds, machine_limits, task_cost
    from benchmarks.run import _git_commit, _version, table

    work = Workload()
    limits = machine_limits("cpu", quick=args.tiny)
    rows, raw = [], []
    for fw in args.frameworks.split(","):
        for pair in args.pairs.split(","):
            enc, dec = ck.pair_dirs(pair, args.tiny, args.cache or ck.DEFAULT_CACHE)
            res = {}
            for side in args.sides.split(","):
                print(f"[{fw} {pair} {side}] ...", file=sys.stderr, flush=True)
                res[side] = run_probe(fw, side, enc, dec, args.repeat, args.python, args.timeout)
                print(f"[{fw} {pair} {side}] {json.dumps(res[side])}", file=sys.stderr, flush=True)
            raw.append({"framework": fw, "pair": pair, **res})
            n_params = next((r.get("n_params") for r in res.values() if r.get("n_params")), 0)
            ckpt = ck.weights_bytes(enc) + ck.weights_bytes(dec)
            tasks = ["greedy", "compile", "load"] + (["plain generate"] if not args.no_plain else [])
            for task in tasks:
                cost = (
                    task_cost(
                        "greedy" if task != "load" else "load",
                        ck.read_config(enc),
                        ck.read_config(dec),
                        work,
                        ckpt_bytes=ckpt,
                    )
                    if task != "compile"
                    else None
                )
                rows.append(
                    {
                        "framework": fw,
                        "pair": pair,
                        "task": {"greedy": "xla greedy" if fw == "tf" else "jit greedy"}.get(task, task),
                        "floor_s": floor_seconds(cost, limits) if cost else None,
                        "weights_bytes": 4 * n_params if task == "load" and n_params else None,
                        "ours": _cell(res.get("ours"), task),
                        "theirs": _cell(res.get("theirs"), task),
                    }
                )
    result = {"rows": rows, "raw": raw, "limits": limits}
    ver = {k: _version(k) for k in ("transformers", "tensorflow", "tf-keras", "keras", "jax", "flax", "torch")}
    text = "\n".join(
        [
            f"## TF/Flax benchmark {dt.datetime.now().astimezone().isoformat(timespec='seconds')} "
            f"(commit {_git_commit()})",
            "",
            "`python -m benchmarks.compiled " + " ".join(argv) + "`",
            "",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()),
            f"- limits: fp32 GEMM {limits['gemm_flops'] / 1e9:.1f} GFLOP/s, copy bandwidth {limits['bandwidth'] / 1e9:.1f} GB/s",
            f"- {'tiny' if args.tiny else 'base-size'} checkpoints; steady figure: median of {args.repeat} after the "
            "first call; compile = first call - steady median",
            "",
            table(result),
            "",
        ]
    )
    print(text, flush=True)
    if args.md:
        with open(args.md, "a") as f:
            f.write(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
