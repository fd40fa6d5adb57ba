"""Keras fit() under MirroredStrategy over two logical CPU devices equals one device on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import FIXTURES
from safetensors.numpy import load_file
from tolerances import DIST_PARAM_ATOL

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "tf_mirrored_worker.py"


def _run(mode: str, out: Path) -> dict[str, np.ndarray]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(WORKER), mode, str(FIXTURES / "bert2gpt2" / "pt"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(out / "model.safetensors")


def test_mirrored_strategy_equals_one_device(tmp_path):
    single = _run("single", tmp_path / "single")
    mirrored = _run("mirrored", tmp_path / "mirrored")
    start = load_file(FIXTURES / "bert2gpt2" / "pt" / "model.safetensors")
    worst = max(float(np.abs(single[k] - mirrored[k]).max()) for k in single)
    moved = max(float(np.abs(single[k] - start[k]).max()) for k in single)
    assert worst <= DIST_PARAM_ATOL, f"max parameter difference {worst:.2e}"
    assert moved > 1e-3  # three SGD steps did train (a 2x gradient sum would differ by about this much)
