"""Transformers' TensorFlow weight files, ``tf_model.h5`` (single or sharded), read and written with h5py.

The layout Transformers 4.57 writes (Keras 2 ``save_weights``), as read off the fixtures:

* one file ``tf_model.h5``. Root attributes ``layer_names`` (the model's top-level layers:
  ``encoder``, ``decoder``, ``enc_to_dec_proj``; ``bert`` and ``mlm___cls`` for a BERT LM),
  ``backend`` and ``keras_version``, all variable-length ASCII strings. One group per layer
  name, whose attribute ``weight_names`` lists full variable names ``<model scope>/<name>:0``
  (e.g. ``tf_encoder_decoder_model/encoder/bert/pooler/dense/bias:0``), each stored as the
  dataset ``<layer>/<weight name>``. A group ``top_level_model_weights`` with an empty
  ``weight_names`` (a float64 array of shape (0,)).
* shards ``tf_model-0000i-of-0000N.h5`` plus ``tf_model.h5.index.json``
  (``{"metadata": {"total_size"}, "weight_map": {"<scope>/<name>:0": shard}}``); each shard has
  one root attribute ``layer_names`` listing its datasets, named ``<name>:0`` (scope dropped).
* an attribute over 64 KiB (HDF5's header limit) is split by Keras into ``weight_names0``,
  ``weight_names1``, ...

Names here are the core tables' ``Param.tf``: no model scope, no ``:0``. The reader drops the
scope (the first path segment, whatever the model was called: Transformers' own rule) and the
suffix; the writer adds both. h5py is imported inside the functions that need it.

Files from the Hub are untrusted: the reader follows only hard links inside the file
(external and soft links are refused), reads only plain numeric datasets stored in the file
itself (no external or virtual storage, no filters), each holding at least the bytes its
shape declares, so a hostile file cannot make it read other files or allocate more than the
file's size.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from encdec_core.errors import CheckpointError
from encdec_core.formats.atomic import atomic_output
from encdec_core.formats.jsonio import write_json
from encdec_core.formats.shards import (
    TF_WEIGHTS_INDEX_NAME,
    TF_WEIGHTS_NAME,
    plan_shards,
    read_index,
    remove_stale_files,
)

# What h5py / HDF5 raise on a malformed file; turned into CheckpointError naming the file.
_H5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError, UnicodeDecodeError)
TOP_LEVEL_GROUP = "top_level_model_weights"
_ATTR_LIMIT = 64512  # bytes; Keras' split point, under HDF5's 64 KiB object header


def strip_name(name: str, *, scoped: bool) -> str:
    """``tf_encoder_decoder_model/encoder/x:0`` -> ``encoder/x`` (``scoped=False``: only the ``:0``)."""
    if name.endswith(":0"):
        name = name[:-2]
    if scoped and "/" in name:
        name = name.split("/", 1)[1]
    return name


def has_tf_h5(folder: str | os.PathLike[str]) -> bool:
    folder = Path(folder)
    return (folder / TF_WEIGHTS_NAME).is_file() or (folder / TF_WEIGHTS_INDEX_NAME).is_file()


def _decode(values: Any) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in np.ravel(np.atleast_1d(values))]


def read_names(group: Any, attr: str) -> list[str]:
    """A list attribute, joined again if Keras split it (``attr0``, ``attr1``, ...)."""
    if attr in group.attrs:
        return _decode(group.attrs[attr]) if len(group.attrs[attr]) else []
    names, i = [], 0
    while f"{attr}{i}" in group.attrs:
        names += _decode(group.attrs[f"{attr}{i}"])
        i += 1
    return names


def write_names(group: Any, attr: str, names: list[str]) -> None:
    """Write a list of names as Keras 2 does: variable-length ASCII, split over 64 KiB."""
    import h5py

    if not names:
        group.attrs[attr] = np.asarray([], dtype=np.float64)  # what Keras writes for an empty list
        return
    data = [n.encode("utf8") for n in names]
    chunks = max(1, -(-sum(len(d) for d in data) // _ATTR_LIMIT))
    parts = np.array_split(np.array(data, dtype=object), chunks)
    for i, part in enumerate(parts):
        key = attr if chunks == 1 else f"{attr}{i}"
        group.attrs.create(key, part, dtype=h5py.string_dtype("ascii"))


class TFH5Reader:
    """Lazy reader of ``tf_model.h5`` or its shards: table names -> numpy arrays.

    >>> with TFH5Reader("tests/fixtures/bert2gpt2/tf") as r:  # doctest: +SKIP
    ...     r.shape("encoder/bert/pooler/dense/kernel")
    (36, 36)
    """

    def __init__(self, folder: str | os.PathLike[str]):
        import h5py

        folder = Path(folder)
        self.source = folder
        self._files: list[Any] = []
        self._where: dict[str, tuple[Any, str]] = {}  # table name -> (h5 file, dataset path)
        try:
            if (folder / TF_WEIGHTS_NAME).is_file():
                with _h5_errors(folder / TF_WEIGHTS_NAME):
                    self._open_single(h5py, folder / TF_WEIGHTS_NAME)
            elif (folder / TF_WEIGHTS_INDEX_NAME).is_file():
                self._open_shards(h5py, folder / TF_WEIGHTS_INDEX_NAME)
            else:
                raise CheckpointError(f"{folder}: no {TF_WEIGHTS_NAME} or {TF_WEIGHTS_INDEX_NAME} in this folder")
        except BaseException:
            self.close()
            raise

    def _open(self, h5py: Any, path: Path) -> Any:
        check_heaps(path)
        try:
            f = h5py.File(path, "r")
        except _H5_ERRORS as e:
            raise CheckpointError(f"{path}: not a readable HDF5 file: {e}") from e
        self._files.append(f)
        return f

    def _add(self, name: str, f: Any, path: str) -> None:
        import h5py

        if name in self._where:
            raise CheckpointError(f"{f.filename}: weight '{name}' is stored twice; expected each name once")
        node = f
        for part in [p for p in path.split("/") if p]:  # hard links only: never leave the file
            link = node.get(part, getlink=True) if isinstance(node, h5py.Group) else None
            if link is None:
                raise CheckpointError(f"{f.filename}: attribute lists weight '{path}' but the file has no such dataset")
            if not isinstance(link, h5py.HardLink):
                raise CheckpointError(
                    f"{f.filename}: '{path}' goes through a {type(link).__name__} ('{part}'); "
                    "expected datasets stored in the file itself"
                )
            node = node[part]
        if not isinstance(node, h5py.Dataset):
            raise CheckpointError(f"{f.filename}: attribute lists weight '{path}' but the file has no such dataset")
        _check_dataset(f.filename, path, node)
        self._where[name] = (f, path)

    def _open_single(self, h5py: Any, path: Path) -> None:
        f = self._open(h5py, path)
        if "layer_names" not in f.attrs:
            raise CheckpointError(
                f"{path}: no 'layer_names' attribute; expected a Keras weights file from Transformers"
            )
        groups = read_names(f, "layer_names") + ([TOP_LEVEL_GROUP] if TOP_LEVEL_GROUP in f else [])
        for layer in groups:
            link = f.get(layer, getlink=True) if layer and "/" not in layer else None
            if not isinstance(link, h5py.HardLink) or not isinstance(f[layer], h5py.Group):
                raise CheckpointError(f"{path}: 'layer_names' lists '{layer}' but the file has no such group")
            for weight in read_names(f[layer], "weight_names"):
                self._add(strip_name(weight, scoped=True), f, f"{layer}/{weight}")

    def _open_shards(self, h5py: Any, index_path: Path) -> None:
        index = read_index(index_path)
        for shard_path in index.files.values():
            with _h5_errors(shard_path):
                f = self._open(h5py, shard_path)
                for weight in read_names(f, "layer_names"):
                    self._add(strip_name(weight, scoped=False), f, weight)
        claimed = {strip_name(k, scoped=True) for k in index.weight_map}
        if missing := sorted(claimed - set(self._where)):
            raise CheckpointError(
                f"{index_path}: {len(missing)} weight(s) in the index are in no shard: {missing[:10]}"
            )

    def keys(self) -> list[str]:
        return list(self._where)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        f, path = self._where[name]
        return tuple(int(d) for d in f[path].shape)

    def dtype(self, name: str) -> np.dtype:
        f, path = self._where[name]
        return f[path].dtype

    def get(self, name: str) -> np.ndarray:
        f, path = self._where[name]
        with _h5_errors(Path(f.filename)):
            return np.asarray(f[path][()])

    def close(self) -> None:
        for f in self._files:
            with contextlib.suppress(*_H5_ERRORS):
                f.close()
        self._files.clear()

    def __enter__(self) -> TFH5Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _h5_errors(path: Path) -> Iterator[None]:
    """HDF5's errors on a malformed file, as one CheckpointError naming it."""
    try:
        yield
    except CheckpointError:
        raise
    except _H5_ERRORS as e:
        raise CheckpointError(f"{path}: not a readable Keras weights file: {type(e).__name__}: {e}") from e


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HEAP_SIGNATURE = b"GCOL\x01\x00\x00\x00"  # a global heap collection: "GCOL", version 1, 3 reserved bytes


def check_heaps(path: Path) -> None:
    """Refuse a file whose global heap collections (where variable-length strings live) run past its end.

    HDF5 allocates a collection's declared size before it finds the size absurd, so one forged
    length in a name list would cost gigabytes of memory; this scan (a fast byte search over the
    mapped file) checks every collection first. Files with 4-byte lengths are read as declared
    by the superblock.
    """
    size = path.stat().st_size
    if size < len(_HDF5_SIGNATURE):
        return  # h5py refuses it
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        base = next((b for b in (0, 512, 1024, 2048, 4096) if m[b : b + 8] == _HDF5_SIGNATURE), None)
        if base is None:
            return  # not HDF5 (or a user block we do not know): h5py decides
        version = m[base + 8] if size > base + 8 else 0
        at = base + (14 if version < 2 else 10)  # "size of lengths" in superblock v0/1 and v2/3
        width = m[at] if size > at and m[at] in (2, 4, 8) else 8
        pos = m.find(_HEAP_SIGNATURE)
        while pos != -1:
            length = int.from_bytes(m[pos + 8 : pos + 8 + width], "little")
            if pos + length > size:
                raise CheckpointError(
                    f"{path}: a global heap at byte {pos} declares {length} bytes, past the end of "
                    f"the {size}-byte file; not a readable Keras weights file"
                )
            pos = m.find(_HEAP_SIGNATURE, pos + 8)


def _check_dataset(filename: str, path: str, d: Any) -> None:
    """A plain numeric array stored in this file, holding every byte its shape declares."""
    dtype = d.dtype
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise CheckpointError(f"{filename}: dataset '{path}' has dtype {dtype}; expected a numeric weight")
    if d.is_virtual or d.external or d.id.get_create_plist().get_nfilters():
        raise CheckpointError(
            f"{filename}: dataset '{path}' is virtual, external or filtered (compressed); "
            "expected a plain array stored in the file, as Keras writes"
        )
    nbytes = int(np.prod(d.shape, dtype=object)) * dtype.itemsize
    size = os.path.getsize(filename)
    if nbytes > size or (nbytes and d.id.get_storage_size() < nbytes):
        raise CheckpointError(
            f"{filename}: dataset '{path}' of shape {d.shape} declares {nbytes} bytes but the "
            f"file stores {d.id.get_storage_size()} of them ({size} bytes in all)"
        )


def write_tf_h5(
    arrays: Mapping[str, np.ndarray],
    folder: str | os.PathLike[str],
    *,
    scope: str,
    keras_version: str,
    max_shard_size: int | str | None = None,
) -> list[Path]:
    """Write table-named arrays as Transformers' ``tf_model.h5`` (or shards + index) in ``folder``.

    The top-level groups are the first segments of the names, in order of appearance (the
    model's top-level layers); ``scope`` is the model name placed before every weight name.
    """
    import h5py

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    full = {name: f"{scope}/{name}:0" for name in arrays}
    sizes = {name: int(np.asarray(a).nbytes) for name, a in arrays.items()}
    plan = plan_shards(sizes, max_shard_size, "tf_model{suffix}.h5")
    written = []
    for fname, names in plan.items():
        with atomic_output(folder / fname) as tmp, h5py.File(tmp, "w") as f:
            if len(plan) == 1:
                _write_keras_layout(f, {n: arrays[n] for n in names}, full, keras_version)
            else:  # Transformers' shard layout: datasets named without the scope, listed at the root
                for name in sorted(names):
                    f.create_dataset(f"{name}:0", data=np.asarray(arrays[name]))
                write_names(f, "layer_names", [f"{name}:0" for name in sorted(names)])
        written.append(folder / fname)
    if len(plan) > 1:
        weight_map = {full[name]: fname for fname, names in plan.items() for name in names}
        write_json(
            folder / TF_WEIGHTS_INDEX_NAME, {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        )
        written.append(folder / TF_WEIGHTS_INDEX_NAME)
    remove_stale_files(
        folder, {p.name for p in written}, (TF_WEIGHTS_NAME, "tf_model-*-of-*.h5", TF_WEIGHTS_INDEX_NAME)
    )
    return written


def _write_keras_layout(f: Any, arrays: Mapping[str, np.ndarray], full: Mapping[str, str], keras_version: str) -> None:
    """One file in Keras 2's ``save_weights`` layout (see the module docstring)."""
    import h5py

    groups: dict[str, list[str]] = {}
    for name in arrays:
        groups.setdefault(name.split("/", 1)[0], []).append(name)
    write_names(f, "layer_names", list(groups))
    ascii_str = h5py.string_dtype("ascii")
    f.attrs.create("backend", b"tensorflow", dtype=ascii_str)
    f.attrs.create("keras_version", keras_version.encode("utf8"), dtype=ascii_str)
    for layer, names in groups.items():
        g = f.create_group(layer)
        write_names(g, "weight_names", [full[n] for n in names])
        for n in names:
            g.create_dataset(full[n], data=np.asarray(arrays[n]))
    write_names(f.create_group(TOP_LEVEL_GROUP), "weight_names", [])


__all__ = ["TF_WEIGHTS_NAME", "TF_WEIGHTS_INDEX_NAME", "TFH5Reader", "write_tf_h5", "has_tf_h5", "strip_name"]
