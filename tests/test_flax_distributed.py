"""JAX: a jitted optax step with parameters and batch sharded over a 2-device CPU mesh equals the unsharded one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURES
from tolerances import ATOL, DIST_PARAM_ATOL

from encdec_flax.sharding import partition_spec

ROOT = Path(__file__).resolve().parents[1]


def test_sharded_training_and_generation_equal_unsharded():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "flax_sharded_worker.py"),
                           str(FIXTURES / "bert2gpt2" / "pt")], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["param_diff"] <= DIST_PARAM_ATOL, result
    assert result["loss_diff"] <= ATOL["float32"], result
    assert result["moved"] > 1e-3, result  # the steps trained
    assert result["split_params"] >= 20, result  # kernels and embeddings really were split
    assert result["generate_equal"], result


def test_rules_split_the_right_dimension_or_replicate():
    from jax.sharding import PartitionSpec as P

    assert partition_spec("encoder/encoder/layer/0/attention/self/query/kernel", (36, 36), "m", 2) == P(None, "m")
    assert partition_spec("encoder/encoder/layer/0/attention/output/dense/kernel", (36, 36), "m", 2) == P("m", None)
    assert partition_spec("decoder/transformer/h/0/attn/c_attn/kernel", (108, 36), "m", 2) == P("m", None)
    assert partition_spec("decoder/transformer/wte/embedding", (99, 36), "m", 3) == P("m", None)
    assert partition_spec("decoder/transformer/wte/embedding", (99, 36), "m", 2) == P()  # 2 does not divide 99
    assert partition_spec("encoder/encoder/layer/0/output/LayerNorm/scale", (36,), "m", 2) == P()
