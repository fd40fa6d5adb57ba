"""Measure one warm-start load in a fresh process: ``python -m benchmarks.load_probe FW SIDE ENC DEC``.

The framework and the model classes are imported first (not timed); then the RSS high-water
mark is reset and ``from_encoder_decoder_pretrained(ENC, DEC)`` is timed. Prints one JSON line:
``{"seconds", "peak_bytes", "n_params"}`` or ``{"error"}``. Loads always run on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.impls import REGISTRY, transformers_env
from benchmarks.measure import RssMeter

ROOT = Path(__file__).resolve().parent.parent


def probe(framework: str, side: str, enc_dir: str, dec_dir: str) -> dict:
    transformers_env([framework])
    impl = REGISTRY[framework][side]
    try:
        impl.model_class()
        mem = RssMeter()
        mem.start()
        t0 = time.perf_counter()
        model = impl.load(enc_dir, dec_dir)
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "peak_bytes": mem.peak(), "n_params": impl.num_params(model)}
    except Exception as e:  # reported in the table's cell
        return {"error": f"{type(e).__name__}: {e}"}


def run_probe(framework: str, side: str, enc_dir, dec_dir, timeout: float = 600) -> dict:
    """Run :func:`probe` in a fresh interpreter (same Python, repo on the path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "benchmarks.load_probe", framework, side, str(enc_dir), str(dec_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"load probe timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"load probe exited {proc.returncode}: {tail[0]}"}
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(probe(*sys.argv[1:5])), flush=True)
