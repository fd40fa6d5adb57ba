"""The README's first command, `make demo`: examples/demo.py runs to the end and writes its report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_trains_continues_in_tf_and_flax_and_writes_the_report(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "MPLBACKEND": "Agg", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "greedy  exact match 1.000" in out, out
    assert out.count("ids identical to PyTorch's") == 2, out  # TensorFlow and Flax
    assert "verdict PASS" in out, out
    report = tmp_path / "report"
    assert {p.name for p in report.iterdir()} == {"README.md", "loss_curve.png", "cross_attention.png", "parity.png",
                                                  "parity.md"}
    assert "verdict: **PASS**" in (report / "parity.md").read_text()
