"""A few optax steps of a fixture model, unsharded and sharded over a 2-device CPU mesh.

Run as a subprocess: JAX must see two host devices from the start
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``). Prints the largest parameter and
loss differences between the two runs, and whether greedy generation with sharded parameters
gives the unsharded ids, as JSON on the last line.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import optax


def main(fixture: str) -> None:
    from jax.sharding import Mesh

    from encdec_flax import FlaxEncoderDecoderModel
    from encdec_flax.sharding import partition_specs, shard_batch, shard_params
    from encdec_flax.training import make_train_step

    assert len(jax.devices()) == 2, jax.devices()
    model = FlaxEncoderDecoderModel.from_pretrained(fixture)
    rng = np.random.default_rng(1)
    batches = [
        {
            "input_ids": rng.integers(3, 99, (4, 9)).astype(np.int32),
            "labels": rng.integers(3, 99, (4, 5)).astype(np.int32),
        }
        for _ in range(3)
    ]
    optimizer = optax.adamw(1e-3, eps=1e-5)  # eps above rounding noise: see tests/distributed_worker.py
    step = make_train_step(model, optimizer)

    def train(params, shard=None):
        state = optimizer.init(params)
        losses = []
        for batch in batches:
            batch = shard(batch) if shard else batch
            params, state, loss = step(params, state, batch, None)
            losses.append(float(loss))
        return params, losses

    plain, plain_losses = train(model.params)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded_params = shard_params(model.params, mesh, axis="data")
    specs = jax.tree_util.tree_leaves(
        partition_specs(model.params, mesh, axis="data"), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    split = sum(1 for s in specs if any(a is not None for a in s))
    sharded, sharded_losses = train(sharded_params, lambda b: shard_batch(b, mesh, axis="data"))
    diffs = jax.tree_util.tree_map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), plain, sharded)
    result = {
        "param_diff": max(jax.tree_util.tree_leaves(diffs)),
        "loss_diff": max(abs(a - b) for a, b in zip(plain_losses, sharded_losses)),
        "moved": float(
            max(
                jax.tree_util.tree_leaves(
                    jax.tree_util.tree_map(
                        lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), plain, model.params
                    )
                )
            )
        ),
        "split_params": split,
        "total_params": len(specs),
        "out_sharded": str(jax.tree_util.tree_leaves(sharded)[0].sharding),
    }
    if hasattr(model, "generate"):
        src = batches[0]["input_ids"]
        ids = np.asarray(model.generate(src, max_new_tokens=5, params=model.params).sequences)
        ids_sharded = np.asarray(model.generate(src, max_new_tokens=5, params=sharded_params).sequences)
        result["generate_equal"] = bool(np.array_equal(ids, ids_sharded))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
