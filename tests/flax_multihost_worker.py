"""A few jitted optax steps of a fixture model: one process, or a mesh spanning several processes.

Usage: ``python tests/flax_multihost_worker.py FIXTURE_DIR OUT_DIR``, alone or as one of several
processes: with ``JAX_COORDINATOR_ADDRESS`` (host:port, read by JAX), ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID`` set, it joins ``jax.distributed.initialize`` (process 0 runs the coordinator),
each process brings its one CPU device, and the
parameters and batches are sharded over a ``("data",)`` mesh of all of them (FSDP-style: the
rules of encdec_flax.sharding split the parameters, the batch is split by rows). Every process
feeds the same global batch; each keeps only the rows of its own device. Process 0 writes the
final parameters (gathered whole) to ``OUT_DIR/params.safetensors`` and, to
``OUT_DIR/result.json``, the losses, the number of processes, how many parameters were split and how far training moved them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax
import numpy as np
import optax

STEPS, BATCH = 3, 4
TIMEOUT = 120  # seconds to wait for the other processes at start-up and at shutdown


def main(fixture: str, out: str) -> None:
    coordinator = "JAX_COORDINATOR_ADDRESS" in os.environ
    if coordinator:  # one process of several (the address comes from the environment: JAX reads it)
        jax.distributed.initialize(
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
            initialization_timeout=TIMEOUT,
            shutdown_timeout_seconds=TIMEOUT,
        )
    from flax.traverse_util import flatten_dict
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh
    from safetensors.numpy import save_file

    from encdec_flax import FlaxEncoderDecoderModel
    from encdec_flax.sharding import shard_batch, shard_params
    from encdec_flax.training import make_train_step

    model = FlaxEncoderDecoderModel.from_pretrained(fixture)
    rng = np.random.default_rng(1)
    batches = [
        {
            "input_ids": rng.integers(3, 99, (BATCH, 9)).astype(np.int32),
            "labels": rng.integers(3, 99, (BATCH, 5)).astype(np.int32),
        }
        for _ in range(STEPS)
    ]
    optimizer = optax.adamw(1e-3, eps=1e-5)  # eps above rounding noise: see tests/distributed_worker.py
    step = make_train_step(model, optimizer)
    params, split = model.params, 0
    if coordinator:
        assert jax.process_count() == int(os.environ["JAX_NUM_PROCESSES"]), jax.devices()
        assert len(jax.local_devices()) == 1, jax.local_devices()
        mesh = Mesh(np.array(jax.devices()), ("data",))  # one device per process: the mesh spans them all
        params = shard_params(params, mesh, axis="data")
        split = sum(not leaf.sharding.is_fully_replicated for leaf in jax.tree_util.tree_leaves(params))
    state, losses = optimizer.init(params), []
    for batch in batches:
        if coordinator:
            batch = shard_batch(batch, mesh, axis="data")
        params, state, loss = step(params, state, batch, None)
        losses.append(float(loss))  # the loss is replicated: every process holds it whole
    if coordinator:
        params = multihost_utils.process_allgather(params, tiled=True)  # each process holds only its shards
    if jax.process_index() == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        save_file({k: np.asarray(v) for k, v in flatten_dict(params, sep="/").items()}, f"{out}/params.safetensors")
        moved = max(
            jax.tree_util.tree_leaves(
                jax.tree_util.tree_map(
                    lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), params, model.params
                )
            )
        )
        Path(out, "result.json").write_text(
            json.dumps({"losses": losses, "processes": jax.process_count(), "split_params": split, "moved": moved})
        )
    if coordinator:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
