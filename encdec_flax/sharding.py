"""Sharding the encoder-decoder's parameters over a JAX device mesh: a rules table.

Each rule maps a parameter-path pattern (the "/"-joined paths of HF's Flax layout, see the
core tables) to the dimension of that parameter to split over the ``model`` mesh axis:

* attention query/key/value, GPT-2 ``c_attn``/``q_attn`` and the first feed-forward layer are
  split along their output features (each device computes some heads / hidden units);
* attention output projections and the second feed-forward layer along their input features;
* embeddings along the vocabulary (or position) rows;
* everything else (LayerNorms, biases of row-split layers, the projection) is replicated.

A dimension that the axis size does not divide stays whole (replicated), so any model shards
on any mesh. With a one-axis mesh used for the batch too, the same rules give FSDP-style
sharding (parameters split, batch split, XLA inserts the gathers).

>>> import jax, numpy as np                                                    # doctest: +SKIP
>>> mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))              # doctest: +SKIP
>>> params = shard_params(model.params, mesh, axis="data")                     # doctest: +SKIP
"""

from __future__ import annotations

import re
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from encdec_core.formats.flax_msgpack import flatten_tree, unflatten_tree

# (path pattern, which dimension of the kernel/embedding to split); Flax Dense kernels are (in, out),
# HF Flax GPT-2 Conv1D kernels are stored (out, in)
RULES: list[tuple[str, int | None]] = [
    (r"/(query|key|value)/kernel$", 1),
    (r"/intermediate/dense/kernel$", 1),
    (r"/(attention|crossattention)/output/dense/kernel$", 0),
    (r"/layer/\d+/output/dense/kernel$", 0),
    (r"/(c_attn|q_attn|c_fc)/kernel$", 0),
    (r"/c_proj/kernel$", 1),
    (r"/(word_embeddings|position_embeddings|wte|wpe)/embedding$", 0),
    (r".", None),  # the rest: replicated
]


def partition_spec(
    path: str, shape: tuple[int, ...], axis: str, size: int, rules: list[tuple[str, int | None]] = RULES
) -> PartitionSpec:
    """The spec of one parameter: split the rule's dimension over ``axis`` if ``size`` divides it."""
    for pattern, dim in rules:
        if re.search(pattern, "/" + path):
            if dim is None or dim >= len(shape) or shape[dim] % size:
                return PartitionSpec()
            return PartitionSpec(*[axis if d == dim else None for d in range(len(shape))])
    return PartitionSpec()


def partition_specs(
    params: Any, mesh: Mesh, *, axis: str = "model", rules: list[tuple[str, int | None]] = RULES
) -> Any:
    """A tree of PartitionSpecs shaped like ``params``."""
    size = mesh.shape[axis]
    flat = flatten_tree(params)
    return unflatten_tree({k: partition_spec(k, tuple(v.shape), axis, size, rules) for k, v in flat.items()})


def shard_params(params: Any, mesh: Mesh, *, axis: str = "model", rules: list[tuple[str, int | None]] = RULES) -> Any:
    """Place ``params`` on ``mesh`` following the rules (a jitted step then runs sharded)."""
    specs = partition_specs(params, mesh, axis=axis, rules=rules)
    return jax.tree_util.tree_map(
        lambda p, s: jax.device_put(p, NamedSharding(mesh, s)),
        params,
        specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def shard_batch(batch: dict[str, Any], mesh: Mesh, *, axis: str = "data") -> dict[str, Any]:
    """Split every array of a batch along its first (batch) dimension over ``axis``."""
    return {k: jax.device_put(v, NamedSharding(mesh, PartitionSpec(axis))) for k, v in batch.items()}


__all__ = ["RULES", "partition_spec", "partition_specs", "shard_params", "shard_batch"]
