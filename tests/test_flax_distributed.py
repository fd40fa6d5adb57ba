"""JAX: a jitted optax step with parameters and batch sharded over a CPU mesh equals the unsharded one.

The mesh has 2 devices of one process, or spans 2 processes joined by ``jax.distributed.initialize``
with the coordinator on 127.0.0.1 (as two hosts would; the launch docs/scaling.md shows).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import FIXTURES
from multinode import PYTHON, env, jax_env, run_on_ports, run_together, shell
from safetensors.numpy import load_file
from tolerances import ATOL, DIST_PARAM_ATOL

from encdec_flax.sharding import partition_spec

ROOT = Path(__file__).resolve().parents[1]
MULTIHOST = Path(__file__).parent / "flax_multihost_worker.py"
TIMEOUT = 240  # seconds for one job; it takes ~15 s, ~50 s with both cores busy
DOC_PORT = 1234  # the coordinator port docs/scaling.md shows
# cheap XLA compiles (compile time dominates a tiny model; both runs compile alike)
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def test_sharded_training_and_generation_equal_unsharded():
    variables = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {FAST_XLA}",
    }
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "flax_sharded_worker.py"), str(FIXTURES / "bert2gpt2" / "pt")],
        env=variables,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["param_diff"] <= DIST_PARAM_ATOL, result
    assert result["loss_diff"] <= ATOL["float32"], result
    assert result["moved"] > 1e-3, result  # the steps trained
    assert result["split_params"] >= 20, result  # kernels and embeddings really were split
    assert result["generate_equal"], result


def test_mesh_over_two_processes_equals_one_process(tmp_path):
    script = [PYTHON, str(MULTIHOST), str(FIXTURES / "bert2gpt2" / "pt")]
    run_together([[*script, str(tmp_path / "single")]], [env(XLA_FLAGS=FAST_XLA)], tmp_path / "logs1", timeout=TIMEOUT)

    def launch(ports):  # the coordinator's port is known to both before either starts: launched again if taken
        return [[*script, str(tmp_path / "multi")]] * 2, [
            env(XLA_FLAGS=FAST_XLA, **jax_env(ports[0], 2, i)) for i in range(2)
        ]

    run_on_ports(launch, 1, tmp_path / "logs2", timeout=TIMEOUT)
    single, multi = (load_file(tmp_path / run / "params.safetensors") for run in ("single", "multi"))
    one, two = (json.loads((tmp_path / run / "result.json").read_text()) for run in ("single", "multi"))
    assert multi.keys() == single.keys() and two["processes"] == 2
    worst = max(float(np.abs(single[k] - multi[k]).max()) for k in single)
    loss_diff = max(abs(a - b) for a, b in zip(one["losses"], two["losses"]))
    assert worst <= DIST_PARAM_ATOL, f"max parameter difference {worst:.2e}"
    assert loss_diff <= ATOL["float32"], (one, two)
    assert two["split_params"] >= 20, two  # kernels and embeddings really were split across the processes
    assert one["moved"] > 1e-3, one  # the steps trained


def test_docs_show_the_tested_processes():
    """docs/scaling.md gives the launch of these processes (its port and script in place of ours)."""
    page = (ROOT / "docs" / "scaling.md").read_text()
    for i in range(2):
        line = shell(jax_env(DOC_PORT, 2, i), ["python", "train_jax.py"])
        assert line in page, f"docs/scaling.md does not show `{line}`"


def test_rules_split_the_right_dimension_or_replicate():
    from jax.sharding import PartitionSpec as P

    assert partition_spec("encoder/encoder/layer/0/attention/self/query/kernel", (36, 36), "m", 2) == P(None, "m")
    assert partition_spec("encoder/encoder/layer/0/attention/output/dense/kernel", (36, 36), "m", 2) == P("m", None)
    assert partition_spec("decoder/transformer/h/0/attn/c_attn/kernel", (108, 36), "m", 2) == P("m", None)
    assert partition_spec("decoder/transformer/wte/embedding", (99, 36), "m", 3) == P("m", None)
    assert partition_spec("decoder/transformer/wte/embedding", (99, 36), "m", 2) == P()  # 2 does not divide 99
    assert partition_spec("encoder/encoder/layer/0/output/LayerNorm/scale", (36,), "m", 2) == P()
