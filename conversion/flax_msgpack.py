"""HF Flax checkpoints: ``flax_model.msgpack`` (single or sharded) read and written as flat arrays.

Transformers' Flax models store their parameter tree with ``flax.serialization.to_bytes``:
a msgpack map of nested maps whose leaves are numpy arrays (flax's ndarray extension type).
Sharded checkpoints split the "/"-joined parameter paths greedily into
``flax_model-0000i-of-0000N.msgpack`` files, each holding a nested map of its own paths, plus
``flax_model.msgpack.index.json`` (``weight_map``: path -> file). Here a checkpoint is a flat
``{"a/b/kernel": ndarray}`` dict, the same "/"-joined paths as ``Param.flax`` in the core
tables. msgpack and flax are imported only inside the functions that need them.

>>> flatten_tree({"a": {"b": 1, "c": {"d": 2}}})
{'a/b': 1, 'a/c/d': 2}
>>> unflatten_tree({"a/b": 1, "a/c/d": 2})
{'a': {'b': 1, 'c': {'d': 2}}}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from encdec_core.checkpoint import (
    atomic_output,
    plan_shards,
    read_index,
    recover_interrupted,
    remove_stale_files,
    write_index,
)
from encdec_core.errors import CheckpointError, InputError

FLAX_WEIGHTS_NAME = "flax_model.msgpack"
FLAX_WEIGHTS_INDEX_NAME = "flax_model.msgpack.index.json"


def flatten_tree(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Nested dicts -> ``{"a/b/c": leaf}`` (leaves in the tree's order)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            for sub, leaf in flatten_tree(value, sep).items():
                flat[f"{key}{sep}{sub}"] = leaf
        else:
            flat[str(key)] = value
    return flat


def unflatten_tree(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """``{"a/b/c": leaf}`` -> nested dicts; refuses a path that is both a leaf and a folder."""
    tree: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = tree
        *parents, name = path.split(sep)
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"parameter path '{path}': '{part}' is both a parameter and a module")
        if name in node:
            raise InputError(f"parameter path '{path}' appears twice or is also a module")
        node[name] = leaf
    return tree


def _sorted_tree(tree: dict[str, Any]) -> dict[str, Any]:
    """Keys sorted at every level, as the trees Transformers writes (jax orders dict keys)."""
    return {k: _sorted_tree(v) if isinstance(v, dict) else v for k, v in sorted(tree.items())}


def _read_file(path: Path) -> dict[str, np.ndarray]:
    from flax import serialization

    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise CheckpointError(f"{path}: not a readable Flax msgpack checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: expected a map of parameters, got {type(tree).__name__}")
    flat = flatten_tree(tree)
    if bad := sorted(k for k, v in flat.items() if not isinstance(v, np.ndarray)):
        raise CheckpointError(f"{path}: entries that are not arrays: {', '.join(bad[:10])}")
    return flat


def read_flax_msgpack(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Flat ``{"/"-joined path: array}`` of a msgpack file, or of a folder with one or its shards."""
    path = Path(path).expanduser()
    recover_interrupted(path)
    if path.is_file():
        return _read_file(path)
    if (path / FLAX_WEIGHTS_NAME).is_file():
        return _read_file(path / FLAX_WEIGHTS_NAME)
    if not (path / FLAX_WEIGHTS_INDEX_NAME).is_file():
        what = "in this folder" if path.is_dir() else "(no such file or folder)"
        raise CheckpointError(f"{path}: no {FLAX_WEIGHTS_NAME} or {FLAX_WEIGHTS_INDEX_NAME} {what}")
    index = read_index(path / FLAX_WEIGHTS_INDEX_NAME)
    flat: dict[str, np.ndarray] = {}
    for name, file in index.files.items():
        shard = _read_file(file)
        index.check_shard(name, set(shard))  # every key in the shard the index names, none twice
        flat.update(shard)
    return flat


# flax.serialization's encoding of an array leaf: msgpack ExtType 1 holding packb((shape, dtype name, C bytes));
# arrays over 1 GiB (its MAX_CHUNK_SIZE) are split into chunks, which only flax itself writes here.
_NDARRAY_EXT = 1
_MAX_CHUNK_SIZE = 2**30


def _stream_tree(f: Any, packer: Any, tree: Mapping[str, Any]) -> None:
    """Write a nested dict of arrays as ``flax.serialization.msgpack_serialize`` would, one array at a time."""
    import msgpack

    f.write(packer.pack_map_header(len(tree)))
    for key, value in tree.items():
        f.write(packer.pack(key))
        if isinstance(value, Mapping):
            _stream_tree(f, packer, value)
        else:
            payload = msgpack.packb((value.shape, value.dtype.name, value.tobytes("C")), use_bin_type=True)
            f.write(packer.pack(msgpack.ExtType(_NDARRAY_EXT, payload)))


def _write_file(path: Path, tree: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Stream the file (peak memory: one array) unless an array needs flax's chunked form."""
    if any(a.nbytes > _MAX_CHUNK_SIZE for a in arrays.values()):
        from flax import serialization

        data = serialization.msgpack_serialize(tree)
        with atomic_output(path) as tmp:
            tmp.write_bytes(data)
        return
    import msgpack

    packer = msgpack.Packer(use_bin_type=True, strict_types=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        _stream_tree(f, packer, tree)


def write_flax_msgpack(
    arrays: Mapping[str, np.ndarray], folder: str | os.PathLike[str], max_shard_size: int | str | None = None
) -> list[Path]:
    """Write ``flax_model.msgpack`` (or shards + ``flax_model.msgpack.index.json``) as Transformers does.

    ``arrays`` is flat ("/"-joined paths); paths are taken in sorted order (the order of the
    trees Transformers writes) and split greedily by ``max_shard_size``; each file holds the
    nested tree of its paths, byte for byte what ``flax.serialization.msgpack_serialize``
    gives, streamed one array at a time, and is written atomically. Returns the paths written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in sorted(arrays.items())}  # shards split in sorted path order, as HF
    sizes = {k: int(v.nbytes) for k, v in arrays.items()}
    plan = plan_shards(sizes, max_shard_size, "flax_model{suffix}.msgpack")
    written = []
    for fname, keys in plan.items():
        part = {k: arrays[k] for k in keys}
        _write_file(folder / fname, _sorted_tree(unflatten_tree(part)), part)
        written.append(folder / fname)
    if len(plan) > 1:
        write_index(folder / FLAX_WEIGHTS_INDEX_NAME, plan, sizes, {k: v.size for k, v in arrays.items()})
        written.append(folder / FLAX_WEIGHTS_INDEX_NAME)
    remove_stale_files(
        folder, {p.name for p in written}, (FLAX_WEIGHTS_NAME, "flax_model-*-of-*.msgpack", FLAX_WEIGHTS_INDEX_NAME)
    )
    return written


__all__ = [
    "FLAX_WEIGHTS_NAME",
    "FLAX_WEIGHTS_INDEX_NAME",
    "flatten_tree",
    "unflatten_tree",
    "read_flax_msgpack",
    "write_flax_msgpack",
]
