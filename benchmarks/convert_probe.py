"""Measure one checkpoint conversion in a fresh process: ``python -m benchmarks.convert_probe SIDE TARGET SRC DST``.

SIDE ``ours``: ``conversion.convert(SRC, DST, to=TARGET)`` (numpy; h5py or flax's msgpack
writer). SIDE ``theirs``: Transformers 4.57's own path, ``TFEncoderDecoderModel`` (TARGET
``h5``) or ``FlaxEncoderDecoderModel`` (TARGET ``msgpack``) ``.from_pretrained(SRC,
from_pt=True).save_pretrained(DST)``, which builds the model (random init included),
converts through PyTorch and saves. Imports happen first (not timed); then the RSS
high-water mark is reset and the conversion is timed. Prints one JSON line:
``{"seconds", "peak_bytes", "out_bytes"}`` or ``{"error"}``. Runs on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.measure import RssMeter

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"h5": "tf", "msgpack": "flax"}  # target format -> framework of Transformers' class


def _theirs(target: str):
    """Transformers' class for the target; both torch and the target framework importable (USE_* left on AUTO)."""
    for var in ("USE_TF", "USE_TORCH", "USE_FLAX"):
        os.environ.pop(var, None)  # USE_TORCH=1 would disable TF inside Transformers: AUTO allows both
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Transformers 4.57's TF classes need Keras 2 (tf-keras)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import transformers

    transformers.logging.set_verbosity_error()
    import torch  # noqa: F401  (from_pt reads the PyTorch weights with torch)

    name = "TFEncoderDecoderModel" if TARGETS[target] == "tf" else "FlaxEncoderDecoderModel"
    cls = getattr(transformers, name)
    return lambda src, dst: cls.from_pretrained(src, from_pt=True).save_pretrained(dst)


def _ours(target: str):
    import conversion.formats as formats

    if target == "h5":
        import h5py  # noqa: F401  (imported before timing, as the other side's framework is)
    else:
        import flax.serialization  # noqa: F401
    return lambda src, dst: formats.convert(src, dst, to=target, progress=False, overwrite=True)


def probe(side: str, target: str, src: str, dst: str) -> dict:
    try:
        fn = _ours(target) if side == "ours" else _theirs(target)
        shutil.rmtree(dst, ignore_errors=True)
        mem = RssMeter()
        mem.start()
        t0 = time.perf_counter()
        fn(src, dst)
        seconds = time.perf_counter() - t0
        out = sum(p.stat().st_size for p in Path(dst).iterdir() if p.is_file())
        return {"seconds": seconds, "peak_bytes": mem.peak(), "out_bytes": out}
    except Exception as e:  # reported in the table's cell
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        shutil.rmtree(dst, ignore_errors=True)


def run_probe(side: str, target: str, src, dst, timeout: float = 1200) -> dict:
    """Run :func:`probe` in a fresh interpreter (same Python, repo on the path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "benchmarks.convert_probe", side, target, str(src), str(dst)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"convert probe timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"convert probe exited {proc.returncode}: {tail[0]}"}
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(probe(*sys.argv[1:5])), flush=True)
