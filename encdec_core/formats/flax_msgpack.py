"""HF Flax checkpoints: ``flax_model.msgpack`` (single or sharded) read and written as flat arrays.

Transformers' Flax models store their parameter tree with ``flax.serialization.to_bytes``:
a msgpack map of nested maps whose leaves are numpy arrays (msgpack ExtType 1 holding
``packb((shape, dtype name, C-order bytes))``; an array over 1 GiB becomes a map
``{"__msgpack_chunked_array__": True, "shape": {...}, "chunks": {...}}``). Sharded checkpoints
split the "/"-joined parameter paths greedily into ``flax_model-0000i-of-0000N.msgpack``
files, each holding a nested map of its own paths, plus ``flax_model.msgpack.index.json``
(``weight_map``: path -> file). Here a checkpoint is a flat ``{"a/b/kernel": ndarray}`` dict,
the same "/"-joined paths as ``Param.flax`` in the core tables.

The format is decoded here with ``msgpack`` alone (imported inside the functions), byte for
byte as flax does, so no framework is needed and an untrusted file is checked on the way:
only the dtypes of :mod:`encdec_core.formats.dtypes`, each array's bytes exactly what its
shape declares (no allocation beyond the file's size), nesting bounded by msgpack's limit.

>>> flatten_tree({"a": {"b": 1, "c": {"d": 2}}})
{'a/b': 1, 'a/c/d': 2}
>>> unflatten_tree({"a/b": 1, "a/c/d": 2})
{'a': {'b': 1, 'c': {'d': 2}}}
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from encdec_core.errors import CheckpointError, InputError
from encdec_core.formats.atomic import atomic_output
from encdec_core.formats.dtypes import NAME_TO_CODE, numpy_dtype
from encdec_core.formats.shards import (
    FLAX_WEIGHTS_INDEX_NAME,
    FLAX_WEIGHTS_NAME,
    plan_shards,
    read_index,
    remove_stale_files,
    write_index,
)

# flax.serialization's encoding: ExtType 1 is an ndarray; arrays over MAX_CHUNK_SIZE bytes are chunked.
_NDARRAY_EXT = 1
_MAX_CHUNK_SIZE = 2**30
_CHUNKED = "__msgpack_chunked_array__"


def flatten_tree(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Nested dicts -> ``{"a/b/c": leaf}`` (leaves in the tree's order; no recursion, so any depth)."""
    flat: dict[str, Any] = {}
    stack = [("", iter(tree.items()))]
    while stack:
        prefix, items = stack[-1]
        for key, value in items:
            path = f"{prefix}{key}"
            if isinstance(value, Mapping):
                stack.append((f"{path}{sep}", iter(value.items())))
                break
            flat[path] = value
        else:
            stack.pop()
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


class _Bad(Exception):
    """A malformed array record, raised from inside msgpack's ext hook."""


def _array(code: int, data: bytes) -> Any:
    """flax's ndarray record -> a read-only numpy view of its bytes, checked against its shape."""
    import msgpack

    if code != _NDARRAY_EXT:
        raise _Bad(f"msgpack extension type {code}; expected arrays only (type {_NDARRAY_EXT})")
    try:
        record = msgpack.unpackb(data, raw=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise _Bad(f"array record is not msgpack: {type(e).__name__}: {e}") from None
    if not (isinstance(record, (list, tuple)) and len(record) == 3):
        raise _Bad("array record is not (shape, dtype, bytes)")
    shape, name, buffer = record
    name = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    ok_shape = isinstance(shape, (list, tuple)) and all(type(d) is int and d >= 0 for d in shape)
    if not ok_shape or len(shape) > 64 or name not in NAME_TO_CODE or not isinstance(buffer, bytes):
        raise _Bad(
            f"array record with shape {str(shape)[:80]}, dtype {str(name)[:40]}: expected a shape of "
            f"non-negative ints, a dtype among {', '.join(NAME_TO_CODE)} and bytes"
        )
    dtype = numpy_dtype(NAME_TO_CODE[name])
    if math.prod(shape) * dtype.itemsize != len(buffer):
        raise _Bad(
            f"array of shape {tuple(shape)} and dtype {name} needs {math.prod(shape) * dtype.itemsize} "
            f"bytes, the record holds {len(buffer)}"
        )
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _unchunk(node: dict[str, Any]) -> np.ndarray:
    """flax's chunked form of a big array, joined again (checked: integer shape, arrays as chunks)."""
    shape, chunks = node.get("shape"), node.get("chunks")
    if not isinstance(shape, dict) or not isinstance(chunks, dict):
        raise _Bad("chunked array without 'shape' and 'chunks' maps")
    try:
        dims = [shape[str(i)] for i in range(len(shape))]
        parts = [chunks[str(i)] for i in range(len(chunks))]
    except KeyError as e:
        raise _Bad(f"chunked array with a gap at index {e}") from None
    if not all(type(d) is int and d >= 0 for d in dims) or not all(isinstance(p, np.ndarray) for p in parts):
        raise _Bad("chunked array: expected integer dimensions and array chunks")
    if not parts or len({p.dtype for p in parts}) != 1 or sum(p.size for p in parts) != math.prod(dims):
        raise _Bad(f"chunked array of shape {tuple(dims)}: its chunks do not hold exactly that many elements")
    return np.concatenate([p.reshape(-1) for p in parts]).reshape(dims)


# One load reads a msgpack file twice over: the config-fit check (encdec_core.formats.fit) wants its
# shapes, then the loader its arrays, and msgpack has no header to read shapes from. The fit check
# parses the file with ``hand_over()`` active, and what it parsed waits here for the next read of the
# same file version (path, size, inode, modification and change times), which takes it. One check's
# parse at a time; a file changed meanwhile is parsed again.
_handoff: dict[tuple, dict[str, np.ndarray]] = {}
_handoff_lock = threading.Lock()
_recording = threading.local()


def _version(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


@contextlib.contextmanager
def hand_over() -> Iterator[None]:
    """Files parsed inside are kept for the next read of each (then dropped); on an error, nothing is kept."""
    _recording.on = True
    with _handoff_lock:
        _handoff.clear()  # only the latest check's files wait
    try:
        yield
    except BaseException:
        drop_handoff()
        raise
    finally:
        _recording.on = False


def drop_handoff() -> None:
    """Forget every parse waiting for its next read."""
    with _handoff_lock:
        _handoff.clear()


def _read_file(path: Path) -> dict[str, np.ndarray]:
    """One file's flat arrays: handed over by the fit check when it parsed this very version, else parsed."""
    key = _version(path)
    with _handoff_lock:
        flat = _handoff.pop(key, None)
    if flat is None:
        flat = _parse_file(path)
    if getattr(_recording, "on", False):
        with _handoff_lock:
            _handoff[key] = flat
    return dict(flat)  # the caller's own dict over the shared read-only arrays


def _parse_file(path: Path) -> dict[str, np.ndarray]:
    import msgpack

    try:
        tree = msgpack.unpackb(path.read_bytes(), ext_hook=_array, raw=False, strict_map_key=False)
    except _Bad as e:
        raise CheckpointError(f"{path}: not a readable Flax msgpack checkpoint: {e}") from None
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise CheckpointError(f"{path}: not a readable Flax msgpack checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: expected a map of parameters, got {type(tree).__name__}")
    try:
        _unchunk_tree(tree)
    except _Bad as e:
        raise CheckpointError(f"{path}: not a readable Flax msgpack checkpoint: {e}") from None
    flat = flatten_tree(tree)
    if bad := sorted(str(k) for k, v in flat.items() if not isinstance(v, np.ndarray)):
        raise CheckpointError(f"{path}: entries that are not arrays: {', '.join(bad[:10])}")
    return flat


def _unchunk_tree(tree: dict[str, Any]) -> None:
    """Replace, in place, every chunked-array map of the tree by its array (no recursion: any depth)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for key, value in node.items():
            if isinstance(value, dict):
                if _CHUNKED in value:
                    node[key] = _unchunk(value)
                else:
                    stack.append(value)


def read_flax_msgpack(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Flat ``{"/"-joined path: array}`` of a msgpack file, or of a folder with one or its shards."""
    path = Path(path).expanduser()
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


def _pack_array(f: Any, packer: Any, a: np.ndarray) -> None:
    import msgpack

    payload = msgpack.packb((a.shape, a.dtype.name, a.tobytes("C")), use_bin_type=True)
    f.write(packer.pack(msgpack.ExtType(_NDARRAY_EXT, payload)))


def _pack_chunked(f: Any, packer: Any, a: np.ndarray) -> None:
    """flax's chunked form: the flat array cut every MAX_CHUNK_SIZE bytes, keys "0", "1", ..."""
    step = max(1, int(_MAX_CHUNK_SIZE / a.dtype.itemsize))
    flat = a.reshape(-1)
    chunks = [flat[i : i + step] for i in range(0, flat.size, step)]
    f.write(packer.pack_map_header(3))
    f.write(packer.pack(_CHUNKED) + packer.pack(True) + packer.pack("shape"))
    f.write(packer.pack({str(i): int(d) for i, d in enumerate(a.shape)}))
    f.write(packer.pack("chunks") + packer.pack_map_header(len(chunks)))
    for i, chunk in enumerate(chunks):
        f.write(packer.pack(str(i)))
        _pack_array(f, packer, chunk)


def _stream_tree(f: Any, packer: Any, tree: Mapping[str, Any]) -> None:
    """Write a nested dict of arrays as ``flax.serialization.msgpack_serialize`` would, one array at a time."""
    f.write(packer.pack_map_header(len(tree)))
    for key, value in tree.items():
        f.write(packer.pack(key))
        if isinstance(value, Mapping):
            _stream_tree(f, packer, value)
        elif value.nbytes > _MAX_CHUNK_SIZE:
            _pack_chunked(f, packer, value)
        else:
            _pack_array(f, packer, value)


def _write_file(path: Path, tree: dict[str, Any]) -> None:
    """Stream the file: peak memory is one array (one chunk's copy for arrays over 1 GiB)."""
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
        _write_file(folder / fname, _sorted_tree(unflatten_tree({k: arrays[k] for k in keys})))
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
