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

Files from the Hub are untrusted: only hard links inside the file, only plain numeric datasets
stored in it (no external or virtual storage, no filters). Before HDF5 reads any data, declared
sizes are checked against the file's size: each dataset's shape x itemsize (and all together),
each name-list attribute's shape, type and storage size (``attrs.get_id``), and the lengths of
its variable-length strings read from the file's bytes (HDF5 allocates a declared length first).
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import re
import struct
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
_MAX_NAMES = 10**6  # names in one list attribute; the largest models have thousands of weights
_MAX_SPLITS = 10**4  # parts of one split list attribute (attr0, attr1, ...)


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
    """A list attribute, joined again if Keras split it (``attr0``, ``attr1``, ...).

    Each attribute is checked (:func:`check_name_attr`) before a byte of it is read.
    """
    if attr in group.attrs:
        return _decode(_read_attr(group, attr))
    names, i = [], 0
    while f"{attr}{i}" in group.attrs:
        names += _decode(_read_attr(group, f"{attr}{i}"))
        i += 1
        if i > _MAX_SPLITS:
            raise CheckpointError(f"{group.file.filename}: attribute '{attr}' split in over {_MAX_SPLITS} parts")
    return names


def _read_attr(group: Any, key: str) -> Any:
    count = check_name_attr(group, key)
    return group.attrs[key] if count else []


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
        self._declared: dict[str, int] = {}  # h5 file name -> bytes its listed datasets declare
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
        _scanned(str(path))  # the name lists' declared sizes, before HDF5 decodes any of them
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
        total = self._declared.get(f.filename, 0) + _check_dataset(f.filename, path, node)
        if total > os.path.getsize(f.filename):  # datasets sharing their bytes: each read would copy them again
            raise CheckpointError(
                f"{f.filename}: the datasets listed up to '{path}' declare {total} bytes in all, more "
                "than the file's size; expected each weight stored once"
            )
        self._declared[f.filename] = total
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


def check_name_attr(group: Any, key: str) -> int:
    """Check a name-list attribute from its declared shape, type and bytes; return its number of names.

    Nothing of the attribute's data is read by HDF5 before this returns: its dataspace and type
    come from ``attrs.get_id``, and the lengths of its variable-length strings (which HDF5
    allocates before it reads a string, so one forged length costs 4 GiB) from the file's bytes
    (:func:`_scan_name_attrs`). A list attribute holds strings, or nothing (Keras writes an
    empty list as a float64 array of shape (0,)).
    """
    import h5py

    filename = group.file.filename
    size = os.path.getsize(filename)
    where = f"{filename}: attribute '{key}' of '{group.name}'"
    with _h5_errors(Path(filename)):
        aid = group.attrs.get_id(key)
        shape, ftype = aid.shape, aid.get_type()
        count = 0 if shape is None else int(np.prod(shape, dtype=object))
        storage = aid.get_storage_size() if 0 < count <= _MAX_NAMES else 0  # HDF5 calls 0 bytes an error
    if count > _MAX_NAMES or storage > size:
        raise CheckpointError(
            f"{where} declares shape {shape} ({storage} bytes) in a {size}-byte file; "
            f"expected a list of at most {_MAX_NAMES} names stored in the file"
        )
    if count == 0:
        return 0
    if not isinstance(ftype, h5py.h5t.TypeStringID):
        raise CheckpointError(f"{where} has type {aid.dtype}; expected a list of strings")
    if not ftype.is_variable_str():
        if count * ftype.get_size() > size:
            raise CheckpointError(f"{where}: {count} strings of {ftype.get_size()} bytes exceed the {size}-byte file")
        return count
    if count not in _scanned(filename).get(key.encode(), ()):
        raise CheckpointError(
            f"{where} ({count} variable-length strings) is stored where the reader cannot check the "
            "strings' declared lengths before reading them (expected a plain attribute message, as Keras writes)"
        )
    return count


_NAME_ATTR = re.compile(rb"(?:layer|weight)_names\d{0,5}\x00")


def _pad8(n: int) -> int:
    return -(-n // 8) * 8


def _scanned(path: str) -> dict[bytes, set[int]]:
    st = os.stat(path)
    return _scan_name_attrs(path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@functools.lru_cache(maxsize=8)
def _scan_name_attrs(path: str, size: int, mtime_ns: int, ino: int, ctime_ns: int) -> dict[bytes, set[int]]:
    """Every attribute message of a name list in the file's bytes: name -> the names' counts seen.

    Each variable-length string is stored as a descriptor (4-byte length, global heap address
    and index); HDF5 allocates the declared length before it finds the heap object shorter.
    Raises if a message declares more descriptors than the file holds, or lengths that add up
    to more than the file's size. Keyed by the file's size, modification and change times and
    inode (:func:`_scanned`), so a changed file is scanned again.
    """
    found: dict[bytes, set[int]] = {}
    if size < len(_HDF5_SIGNATURE):
        return found
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        base = next((b for b in (0, 512, 1024, 2048, 4096) if m[b : b + 8] == _HDF5_SIGNATURE), None)
        if base is None or size < base + 16:
            return found
        version = m[base + 8]
        offsets, lengths = (m[base + 13], m[base + 14]) if version < 2 else (m[base + 9], m[base + 10])
        if offsets not in (2, 4, 8) or lengths not in (2, 4, 8):
            return found  # h5py refuses the file
        for hit in _NAME_ATTR.finditer(m):
            name = hit.group()[:-1]
            count = _check_vlen_message(m, hit.start(), len(name) + 1, offsets, lengths, path, name.decode())
            if count is not None:
                found.setdefault(name, set()).add(count)
    return found


def _check_vlen_message(
    m: Any, pos: int, name_size: int, offsets: int, lengths: int, path: str, name: str
) -> int | None:
    """The number of strings of the attribute message whose name starts at ``pos`` (None: not one, or not vlen)."""
    size = len(m)
    for start, version in ((pos - 8, 1), (pos - 8, 2), (pos - 9, 3)):
        if start >= 0 and m[start] == version and struct.unpack_from("<H", m, start + 2)[0] == name_size:
            break
    else:
        return None
    dt_size, ds_size = struct.unpack_from("<HH", m, start + 4)
    pad = _pad8 if version == 1 else (lambda n: n)
    dt = pos + pad(name_size)
    ds = dt + pad(dt_size)
    data = ds + pad(ds_size)
    if ds + 8 > size or m[dt] & 0x0F != 9:  # datatype class 9: variable-length
        return None
    ds_version, ndims = m[ds], m[ds + 1]
    if ds_version == 1:
        dims_at, kind = ds + 8, 1
    elif ds_version == 2:
        dims_at, kind = ds + 4, m[ds + 3]  # 0 scalar, 1 simple, 2 null
    else:
        return None
    where = f"{path}: attribute '{name}' (message at byte {start})"
    if ndims > 32 or dims_at + ndims * lengths > size:
        raise CheckpointError(f"{where} declares {ndims} dimensions past the end of the file")
    dims = [int.from_bytes(m[dims_at + i * lengths : dims_at + (i + 1) * lengths], "little") for i in range(ndims)]
    count = 0 if kind == 2 else int(np.prod(dims, dtype=object))
    step = 4 + offsets + 4  # length, heap address, index
    if count > _MAX_NAMES or data + count * step > size:
        raise CheckpointError(
            f"{where} declares {count} strings (shape {tuple(dims)}) but the {size}-byte file holds "
            f"at most {max(0, (size - data) // step)} of their descriptors there"
        )
    total = 0
    for (length,) in struct.iter_unpack("<I" + "x" * (offsets + 4), m[data : data + count * step]):
        total += length
        if total > size:
            raise CheckpointError(
                f"{where}: its strings declare {total}+ bytes in all, more than the {size}-byte file; "
                "a forged length (HDF5 would allocate it before reading)"
            )
    return count


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


def _check_dataset(filename: str, path: str, d: Any) -> int:
    """A plain numeric array stored in this file, holding every byte its shape declares; returns those bytes.

    Only metadata is read (shape, type, storage layout): nothing of the data.
    """
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
    return nbytes


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
