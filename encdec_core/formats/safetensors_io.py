"""The safetensors reader and writer: one file or shards, lazy and memory-mapped, framework-free.

Writers take numpy arrays or :class:`RawTensor` (bytes + safetensors dtype code, for dtypes
numpy cannot hold such as bf16); the reader hands tensors to whichever framework asks,
letting safetensors do that import, or as numpy views into the mapped file. Each file's
header is validated by safetensors and parsed once, here, for every caller (the backends'
loaders and the converter).

>>> import numpy as np, tempfile
>>> folder = tempfile.mkdtemp()
>>> _ = save_safetensors({"w": np.ones((2, 3), np.float32)}, folder)
>>> with CheckpointReader(folder) as ckpt:
...     ckpt.shape("w"), ckpt.dtype("w"), float(ckpt.view("w").sum())
((2, 3), 'F32', 6.0)
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from safetensors import SafetensorError, TensorSpec, safe_open, serialize_file

from encdec_core.errors import CheckpointError, InputError
from encdec_core.formats.atomic import atomic_output, check_interrupted
from encdec_core.formats.dtypes import DTYPES, NAME_TO_CODE, numpy_dtype
from encdec_core.formats.shards import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    ShardIndex,
    plan_shards,
    read_index,
    remove_stale_files,
    write_index,
)


class RawTensor(NamedTuple):
    """A tensor as bytes, for dtypes numpy cannot hold (bf16, fp8) without a framework import.

    >>> RawTensor("BF16", (2,), b"\\x80\\x3f\\x00\\x40")  # bf16 [1.0, 2.0], little-endian
    RawTensor(dtype='BF16', shape=(2,), data=b'\\x80?\\x00@')
    """

    dtype: str  # safetensors dtype code: "F32", "F16", "BF16", "I64", ...
    shape: tuple[int, ...]
    data: bytes | memoryview  # little-endian, C order, exactly prod(shape) * itemsize bytes


Tensor = np.ndarray | RawTensor


class _Mapped(NamedTuple):
    data: np.memmap  # the whole file, read-only
    start: int  # first byte of the data section
    header: dict[str, Any]  # the header JSON (validated by safetensors first)


class CheckpointReader:
    """Lazy, memory-mapped reader of a safetensors checkpoint (folder, shards or one file).

    Shards are opened on first use, one ``safe_open`` handle per shard and framework;
    nothing is read until a tensor is asked for. ``get(key, framework)`` returns it as a
    numpy array ("np"), torch ("pt"), TensorFlow ("tf") or JAX ("flax") tensor; ``view(key)``
    a read-only numpy view into the mapped file (bf16 / fp8 through ``ml_dtypes``);
    ``get_raw(key)`` its bytes. Reading never changes the filesystem.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path).expanduser()
        self.source = path
        self._index: ShardIndex | None = None
        self._handles: dict[tuple[str, str], Any] = {}
        self._maps: dict[str, _Mapped] = {}
        if path.is_file():
            self._files = {path.name: path}
        elif (path / SAFE_WEIGHTS_NAME).is_file():  # Transformers prefers the single file too
            self._files = {SAFE_WEIGHTS_NAME: path / SAFE_WEIGHTS_NAME}
        elif (path / SAFE_WEIGHTS_INDEX_NAME).is_file():
            self._index = read_index(path / SAFE_WEIGHTS_INDEX_NAME)
            self._files = self._index.files
        elif path.is_dir():
            found = sorted(p.name for p in path.iterdir())
            raise CheckpointError(
                f"{path}: no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} in this folder "
                f"(it holds: {', '.join(found) or 'nothing'})"
            )
        else:
            check_interrupted(path)  # says so if a killed save left the checkpoint aside
            raise CheckpointError(f"{path}: no such checkpoint file or folder")
        self._weight_map: dict[str, str] | None = self._index.weight_map if self._index else None

    # -- handles
    def _handle(self, shard: str, framework: str) -> Any:
        handle = self._handles.get((shard, framework))
        if handle is not None:
            return handle
        path = self._files[shard]
        if framework != "np":
            self._handle(shard, "np")  # validate the file first, so errors below are the framework's
        try:
            handle = safe_open(str(path), framework=framework)
        except (SafetensorError, OSError, ValueError) as e:
            what = "not a readable safetensors file" if framework == "np" else f"cannot open it for {framework=}"
            raise CheckpointError(f"{path}: {what}: {e}") from e
        self._handles[(shard, framework)] = handle
        if framework == "np" and self._index is not None:
            self._index.check_shard(shard, set(handle.keys()))
        return handle

    def _mapped(self, shard: str) -> _Mapped:
        """The shard mapped read-only with its header: the one parse of a header, after safetensors validated it."""
        if shard not in self._maps:
            self._handle(shard, "np")
            path = self._files[shard]
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            self._maps[shard] = _Mapped(np.memmap(path, dtype=np.uint8, mode="r"), 8 + n, header)
        return self._maps[shard]

    def _map(self) -> dict[str, str]:
        if self._weight_map is None:  # one file: its header is the map
            (name,) = self._files
            self._weight_map = {k: name for k in self._handle(name, "np").keys()}
        return self._weight_map

    def _shard_of(self, key: str) -> str:
        try:
            return self._map()[key]
        except KeyError:
            raise CheckpointError(f"{self.source}: no tensor named '{key}' in this checkpoint") from None

    # -- mapping-like API
    def keys(self) -> list[str]:
        """Tensor names, in index (or header) order."""
        return list(self._map())

    def __contains__(self, key: object) -> bool:
        return key in self._map()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._map())

    @property
    def files(self) -> dict[str, Path]:
        """Shard (or single file) name -> path."""
        return dict(self._files)

    def file_of(self, key: str) -> Path:
        """The file holding ``key``."""
        return self._files[self._shard_of(key)]

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of ``key`` from the header, without reading the tensor."""
        return tuple(self._handle(self._shard_of(key), "np").get_slice(key).get_shape())

    def dtype(self, key: str) -> str:
        """safetensors dtype code of ``key`` ("F32", "BF16", ...)."""
        return str(self._handle(self._shard_of(key), "np").get_slice(key).get_dtype())

    @property
    def metadata(self) -> dict[str, str]:
        """Header metadata of the first shard (``{"format": "pt"}`` for ours and HF's)."""
        return dict(self._handle(min(self._files), "np").metadata() or {})

    def get(self, key: str, framework: str = "np") -> Any:
        """Tensor ``key`` in ``framework`` ("np", "pt", "tf", "flax"), memory-mapped where it can."""
        shard = self._shard_of(key)
        handle = self._handle(shard, framework)
        try:
            return handle.get_tensor(key)
        except (TypeError, SafetensorError) as e:  # numpy has no bf16 / fp8
            raise CheckpointError(
                f"{self._files[shard]}: tensor '{key}' ({self.dtype(key)}) cannot be read as "
                f"framework={framework!r}: {e}; read it with get_raw() or another framework"
            ) from e

    def _span(self, key: str) -> tuple[_Mapped, dict[str, Any], int, int]:
        mapped = self._mapped(self._shard_of(key))
        info = mapped.header[key]
        begin, end = info["data_offsets"]
        return mapped, info, mapped.start + begin, mapped.start + end

    def view(self, key: str) -> np.ndarray:
        """A read-only numpy view of ``key`` into the mapped file: no copy (bf16 / fp8 through ml_dtypes)."""
        mapped, info, begin, end = self._span(key)
        dtype = numpy_dtype(info["dtype"]).newbyteorder("<")  # safetensors is little-endian
        return mapped.data[begin:end].view(dtype).reshape(info["shape"])

    def get_raw(self, key: str) -> RawTensor:
        """Tensor ``key`` as bytes + dtype code, for any dtype and no framework."""
        mapped, info, begin, end = self._span(key)
        return RawTensor(info["dtype"], tuple(info["shape"]), mapped.data[begin:end].tobytes())

    def items(self, framework: str = "np") -> Iterator[tuple[str, Any]]:
        """(key, tensor) pairs, lazily."""
        for key in self.keys():
            yield key, self.get(key, framework)

    # -- lifetime
    def close(self) -> None:
        """Release every handle (arrays handed out keep their own mapping alive)."""
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles.clear()
        self._maps.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CheckpointReader({str(self.source)!r}, files={len(self._files)})"


def _spec(key: str, value: Any) -> tuple[TensorSpec, np.ndarray, int]:
    """(TensorSpec, buffer to keep alive during serialisation, element count) of one tensor."""
    if isinstance(value, RawTensor):
        if value.dtype not in DTYPES:
            raise InputError(
                f"tensor '{key}': unknown safetensors dtype {value.dtype!r}, expected one of {', '.join(DTYPES)}"
            )
        name, itemsize = DTYPES[value.dtype]
        shape = tuple(int(d) for d in value.shape)
        buf = np.frombuffer(value.data, dtype=np.uint8)
        if buf.size != math.prod(shape) * itemsize:
            raise InputError(
                f"tensor '{key}': {value.dtype} of shape {shape} needs "
                f"{math.prod(shape) * itemsize} bytes, got {buf.size}"
            )
    elif isinstance(value, np.ndarray):
        name, shape = value.dtype.name, value.shape
        if name not in NAME_TO_CODE:
            raise InputError(f"tensor '{key}': numpy dtype {value.dtype} has no safetensors code")
        buf = np.ascontiguousarray(value)
        if buf.dtype.byteorder == ">" or (buf.dtype.byteorder == "=" and sys.byteorder == "big"):
            buf = buf.astype(buf.dtype.newbyteorder("<"))  # safetensors is little-endian
    else:
        raise InputError(
            f"tensor '{key}': expected a numpy array or RawTensor, got {type(value).__module__}.{type(value).__name__}"
        )
    spec = TensorSpec(dtype=name, shape=list(shape), data_ptr=buf.ctypes.data, data_len=buf.nbytes)
    return spec, buf, math.prod(shape)


def _serialize(specs: Mapping[str, TensorSpec], path: Path, meta: Mapping[str, str], target: Path) -> None:
    try:
        serialize_file(dict(specs), str(path), metadata=dict(meta))
    except SafetensorError as e:
        if "No space left on device" in str(e) or "StorageFull" in str(e):  # let the folder writer say so
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from e
        raise CheckpointError(f"{target}: cannot write safetensors: {e}") from e


def save_safetensors(
    tensors: Mapping[str, Tensor],
    folder: str | os.PathLike[str],
    *,
    max_shard_size: int | str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write ``tensors`` into ``folder`` as ``model.safetensors`` or shards + index.

    Each file is written atomically; wrap the call in :func:`atomic_write_dir` to make the
    whole folder (weights + configs) switch at once. ``max_shard_size=None`` writes one file.
    Tied or shared tensors are the caller's business: pass only the names to store.
    Returns the paths written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt"} if metadata is None else dict(metadata)
    if bad := [k for k, v in meta.items() if not (isinstance(k, str) and isinstance(v, str))]:
        raise InputError(f"metadata: safetensors metadata maps str to str, not for {bad}")
    specs = {key: _spec(key, value) for key, value in tensors.items()}
    sizes = {key: s[0].data_len for key, s in specs.items()}
    plan = plan_shards(sizes, max_shard_size, "model{suffix}.safetensors")
    written = []
    for fname, keys in plan.items():
        with atomic_output(folder / fname) as tmp:
            _serialize({k: specs[k][0] for k in keys}, tmp, meta, folder / fname)
        written.append(folder / fname)
    if len(plan) > 1:
        write_index(folder / SAFE_WEIGHTS_INDEX_NAME, plan, sizes, {k: s[2] for k, s in specs.items()})
        written.append(folder / SAFE_WEIGHTS_INDEX_NAME)
    remove_stale_files(
        folder, {p.name for p in written}, ("model.safetensors", "model-*-of-*.safetensors", SAFE_WEIGHTS_INDEX_NAME)
    )
    return written


__all__ = ["RawTensor", "Tensor", "CheckpointReader", "save_safetensors"]
