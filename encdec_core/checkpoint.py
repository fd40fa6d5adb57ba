"""Canonical checkpoint I/O: safetensors files and folders, shards, atomic writes, JSON.

The canonical checkpoint is a folder in Transformers' layout: ``config.json``,
``generation_config.json`` and ``model.safetensors`` (or ``model-0000i-of-0000N.safetensors``
shards plus ``model.safetensors.index.json``), tensors under HF PyTorch names and layouts,
header metadata ``{"format": "pt"}``. Every backend reads and writes it through this module,
which imports no deep-learning framework: writers take numpy arrays or :class:`RawTensor`
(bytes + safetensors dtype code, for dtypes numpy cannot hold such as bf16), and the reader
hands tensors to whichever framework asks, letting safetensors do that import.

>>> import numpy as np, tempfile
>>> folder = tempfile.mkdtemp()
>>> with atomic_write_dir(folder) as tmp:
...     _ = save_safetensors({"w": np.ones((2, 3), np.float32)}, tmp)
>>> with CheckpointReader(folder) as ckpt:
...     ckpt.shape("w"), ckpt.dtype("w"), float(ckpt.get("w").sum())
((2, 3), 'F32', 6.0)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import json
import math
import os
import re
import shutil
import socket
import stat
import struct
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NamedTuple

import numpy as np
from safetensors import SafetensorError, TensorSpec, safe_open, serialize_file

from encdec_core.errors import CheckpointError, EncdecError, InputError

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PT_WEIGHTS_NAME = "pytorch_model.bin"
PT_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"

# Files a save of ours owns: stale copies in the old folder are dropped, not carried over.
WEIGHT_FILE_PATTERNS = (
    "model*.safetensors",
    SAFE_WEIGHTS_INDEX_NAME,
    "pytorch_model*.bin*",
    "tf_model*.h5*",
    "flax_model*.msgpack*",
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
)

# safetensors header code -> (name safetensors' TensorSpec takes, bytes per element).
# The names are also numpy's / ml_dtypes' dtype names, which gives the numpy mapping for free.
_DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", 1),
    "F8_E8M0": ("float8_e8m0fnu", 1),
    "U16": ("uint16", 2),
    "I16": ("int16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "U32": ("uint32", 4),
    "I32": ("int32", 4),
    "F32": ("float32", 4),
    "U64": ("uint64", 8),
    "I64": ("int64", 8),
    "F64": ("float64", 8),
    "C64": ("complex64", 8),
}
_NP_NAME_TO_CODE = {name: code for code, (name, _) in _DTYPES.items()}

# Aside name of the old folder during a non-Linux swap; fixed so recover_interrupted finds it.
_ASIDE_SUFFIX = ".encdec-old"


class RawTensor(NamedTuple):
    """A tensor as bytes, for dtypes numpy cannot hold (bf16, fp8) without a framework import.

    >>> RawTensor("BF16", (2,), b"\\x80\\x3f\\x00\\x40")  # bf16 [1.0, 2.0], little-endian
    RawTensor(dtype='BF16', shape=(2,), data=b'\\x80?\\x00@')
    """

    dtype: str  # safetensors dtype code: "F32", "F16", "BF16", "I64", ...
    shape: tuple[int, ...]
    data: bytes | memoryview  # little-endian, C order, exactly prod(shape) * itemsize bytes


Tensor = np.ndarray | RawTensor


# ----------------------------------------------------------------------------- sizes, shards


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string like ``"5GB"``, ``"100KB"``, ``"10MiB"``.

    Parsed like Transformers' ``max_shard_size``: KB/MB/GB/TB are powers of 1000, KiB/MiB/
    GiB/TiB powers of 1024, and a decimal unit written with a lowercase ``b`` counts bits
    (``"8Mb"`` is 1 MB).

    >>> parse_size("5GB"), parse_size("10MiB"), parse_size("8kb"), parse_size(7)
    (5000000000, 10485760, 1000, 7)
    """
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise InputError(f"max_shard_size: expected an int or a string like '5GB', got {size!r}")
    if isinstance(size, int):
        value = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*", size)
        units = {
            "": 1,
            "B": 1,
            "KB": 10**3,
            "MB": 10**6,
            "GB": 10**9,
            "TB": 10**12,
            "KIB": 2**10,
            "MIB": 2**20,
            "GIB": 2**30,
            "TIB": 2**40,
        }
        if not m or m.group(2).upper() not in units:
            raise InputError(f"max_shard_size: expected a size like '5GB', '100KB' or '10MiB', got {size!r}")
        unit = m.group(2)
        value = int(float(m.group(1)) * units[unit.upper()])
        if len(unit) == 2 and unit.endswith("b"):  # Transformers' rule: "Mb" is megabits
            value //= 8
    if value <= 0:
        raise InputError(f"max_shard_size: expected a positive size, got {size!r}")
    return value


def plan_shards(
    sizes: Mapping[str, int], max_shard_size: int | str | None, filename_pattern: str
) -> dict[str, list[str]]:
    """Split keys (in order) into files: ``{filename: [keys]}``, named as Transformers does.

    Greedy like ``huggingface_hub.split_state_dict_into_shards_factory``: a tensor that does
    not fit in the current shard closes it; a tensor larger than the limit gets a shard of
    its own (placed where it was met). ``filename_pattern`` has a ``{suffix}`` slot, filled
    with ``""`` for one file and ``"-00001-of-00003"`` for shards.

    >>> plan_shards({"a": 4, "b": 4, "c": 4}, 8, "model{suffix}.safetensors")
    {'model-00001-of-00002.safetensors': ['a', 'b'], 'model-00002-of-00002.safetensors': ['c']}
    """
    limit = math.inf if max_shard_size is None else parse_size(max_shard_size)
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    for key, size in sizes.items():
        if size > limit:
            shards.append([key])
            continue
        if current and current_size + size > limit:
            shards.append(current)
            current, current_size = [], 0
        current.append(key)
        current_size += size
    if current or not shards:
        shards.append(current)
    if len(shards) == 1:
        return {filename_pattern.format(suffix=""): shards[0]}
    n = len(shards)
    return {filename_pattern.format(suffix=f"-{i + 1:05d}-of-{n:05d}"): keys for i, keys in enumerate(shards)}


def write_index(
    path: str | os.PathLike[str],
    plan: Mapping[str, list[str]],
    sizes: Mapping[str, int],
    numels: Mapping[str, int],
) -> None:
    """Write a Transformers shard index: ``{"metadata": {...}, "weight_map": {key: file}}``."""
    write_json(
        path,
        {
            "metadata": {"total_parameters": int(sum(numels.values())), "total_size": int(sum(sizes.values()))},
            "weight_map": {key: fname for fname, keys in plan.items() for key in keys},
        },
    )


def remove_stale_files(folder: Path, keep: set[str], patterns: tuple[str, ...]) -> None:
    """Delete files in ``folder`` matching ``patterns`` that the save just done did not write.

    Without this, a stale ``model.safetensors`` would shadow new shards (loaders prefer the
    single file), and stale shards would linger beside a new single file.
    """
    for entry in os.scandir(folder):
        if entry.name not in keep and any(fnmatch.fnmatchcase(entry.name, p) for p in patterns):
            os.unlink(entry.path)


# ----------------------------------------------------------------------------- index reading


@dataclass(frozen=True)
class ShardIndex:
    """A validated shard index: every shard named exists inside the folder."""

    path: Path  # the index file
    weight_map: dict[str, str]  # key -> shard file name
    files: dict[str, Path]  # shard file name -> path (checked: inside the folder, exists)
    metadata: dict[str, Any]

    def check_shard(self, name: str, keys: set[str]) -> None:
        """Check that shard ``name`` holds what the index says, and no key of another shard."""
        claimed = {k for k, s in self.weight_map.items() if s == name}
        if missing := sorted(claimed - keys):
            raise CheckpointError(
                f"{self.files[name]}: index {self.path.name} places {len(missing)} tensor(s) in "
                f"this shard but it does not hold them: {', '.join(missing)}"
            )
        if stolen := sorted(k for k in keys - claimed if k in self.weight_map):
            where = ", ".join(f"'{k}' (index: {self.weight_map[k]})" for k in stolen)
            raise CheckpointError(
                f"{self.files[name]}: tensors stored in two shards, expected each key in exactly one: {where}"
            )


def _shard_path(folder: Path, name: Any, index_path: Path) -> Path:
    """Path of shard ``name`` inside ``folder``; refuses any name that leads outside it."""
    why = ""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        why = "not a plain relative file name"
    elif PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        why = "an absolute path"
    elif ".." in PurePosixPath(name).parts:
        why = "a path with '..'"
    else:
        base = Path(os.path.realpath(folder))
        real = Path(os.path.realpath(folder / name))
        # A Hub cache snapshot holds symlinks into its repo's blobs/ folder: allowed, nothing else.
        roots = [base] + ([base.parent.parent / "blobs"] if base.parent.name == "snapshots" else [])
        if not any(real == r or r in real.parents for r in roots):
            why = f"a link resolving outside the folder (to {real})"
    if why:
        raise CheckpointError(
            f"{index_path}: shard name {name!r} refused: it is {why}; shard files must lie inside {folder}"
        )
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{index_path}: shard {name!r} is missing (expected {path})")
    return path


def read_index(index_path: str | os.PathLike[str]) -> ShardIndex:
    """Read and validate a shard index (``model.safetensors.index.json`` or the .bin one)."""
    index_path = Path(index_path)
    data = read_json(index_path, "checkpoint index", unique_keys=True)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            f"checkpoint index {index_path}: expected a JSON object with a 'weight_map' object, "
            f"got {type(weight_map if isinstance(data, dict) else data).__name__}"
        )
    if bad := [k for k, v in weight_map.items() if not isinstance(v, str)]:
        raise CheckpointError(
            f"checkpoint index {index_path}: 'weight_map' values must be file names, not for "
            f"{', '.join(map(repr, bad))}"
        )
    folder = index_path.parent
    files = {name: _shard_path(folder, name, index_path) for name in dict.fromkeys(weight_map.values())}
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(
            f"checkpoint index {index_path}: 'metadata' must be an object, got {type(metadata).__name__}"
        )
    return ShardIndex(index_path, dict(weight_map), files, metadata)


# ----------------------------------------------------------------------------- reader


def _read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(start of the data section, header JSON) of a safetensors file already validated."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


class CheckpointReader:
    """Lazy, memory-mapped reader of a safetensors checkpoint (folder, shards or one file).

    Shards are opened on first use, one ``safe_open`` handle per shard and framework;
    nothing is read until a tensor is asked for. ``get(key, framework)`` returns it as a
    numpy array ("np"), torch ("pt"), TensorFlow ("tf") or JAX ("flax") tensor.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path).expanduser()
        recover_interrupted(path)
        self.source = path
        self._index: ShardIndex | None = None
        self._handles: dict[tuple[str, str], Any] = {}
        self._headers: dict[str, tuple[int, dict[str, Any]]] = {}  # for get_raw
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

    def get_raw(self, key: str) -> RawTensor:
        """Tensor ``key`` as bytes + dtype code, for any dtype and no framework."""
        shard = self._shard_of(key)
        if shard not in self._headers:
            self._handle(shard, "np")  # lets safetensors validate the file first
            self._headers[shard] = _read_header(self._files[shard])
        start, header = self._headers[shard]
        info = header[key]
        begin, end = info["data_offsets"]
        with open(self._files[shard], "rb") as f:
            f.seek(start + begin)
            return RawTensor(info["dtype"], tuple(info["shape"]), f.read(end - begin))

    def items(self, framework: str = "np") -> Iterator[tuple[str, Any]]:
        """(key, tensor) pairs, lazily."""
        for key in self.keys():
            yield key, self.get(key, framework)

    # -- lifetime
    def close(self) -> None:
        """Release every handle (and its memory map)."""
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles.clear()
        self._headers.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CheckpointReader({str(self.source)!r}, files={len(self._files)})"


# ----------------------------------------------------------------------------- writer


def _spec(key: str, value: Any) -> tuple[TensorSpec, np.ndarray, int]:
    """(TensorSpec, buffer to keep alive during serialisation, element count) of one tensor."""
    if isinstance(value, RawTensor):
        if value.dtype not in _DTYPES:
            raise InputError(
                f"tensor '{key}': unknown safetensors dtype {value.dtype!r}, expected one of {', '.join(_DTYPES)}"
            )
        name, itemsize = _DTYPES[value.dtype]
        shape = tuple(int(d) for d in value.shape)
        buf = np.frombuffer(value.data, dtype=np.uint8)
        if buf.size != math.prod(shape) * itemsize:
            raise InputError(
                f"tensor '{key}': {value.dtype} of shape {shape} needs "
                f"{math.prod(shape) * itemsize} bytes, got {buf.size}"
            )
    elif isinstance(value, np.ndarray):
        name, shape = value.dtype.name, value.shape
        if name not in _NP_NAME_TO_CODE:
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
            try:
                serialize_file({k: specs[k][0] for k in keys}, str(tmp), metadata=meta)
            except SafetensorError as e:
                raise CheckpointError(f"{folder / fname}: cannot write safetensors: {e}") from e
        written.append(folder / fname)
    if len(plan) > 1:
        write_index(folder / SAFE_WEIGHTS_INDEX_NAME, plan, sizes, {k: s[2] for k, s in specs.items()})
        written.append(folder / SAFE_WEIGHTS_INDEX_NAME)
    remove_stale_files(
        folder, {p.name for p in written}, ("model.safetensors", "model-*-of-*.safetensors", SAFE_WEIGHTS_INDEX_NAME)
    )
    return written


# ----------------------------------------------------------------------------- atomic writes


def _fsync(path: str | os.PathLike[str]) -> None:
    """Flush a file or folder to disk (folders cannot be opened on Windows: skipped there)."""
    if os.name == "nt" and os.path.isdir(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    For writers that want a file name (``torch.save``, ``serialize_file``).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync(path.parent)


def atomic_write_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new file, never half of one."""
    with atomic_output(path) as tmp:
        # os.open with 0o666 honours the umask (mkstemp's 0o600 would leak into the result).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def _aside(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}{_ASIDE_SUFFIX}")


def recover_interrupted(folder: str | os.PathLike[str]) -> bool:
    """Undo a save killed between its two renames (non-Linux fallback); True if it did.

    If ``folder`` is missing but its aside copy exists, the aside copy is the complete old
    checkpoint: rename it back. If both exist the swap finished: the aside copy is garbage.
    """
    folder = Path(folder)
    aside = _aside(folder)
    if not os.path.lexists(aside):
        return False
    if not os.path.lexists(folder):
        os.rename(aside, folder)
        _fsync(folder.parent)
        return True
    shutil.rmtree(aside, ignore_errors=True)
    return False


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE); False if unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):  # kernel or fs lacks it
        return False
    raise OSError(err, os.strerror(err), str(b))


def _is_weight_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in WEIGHT_FILE_PATTERNS)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # no data copied; the old folder is deleted right after
    except OSError:
        shutil.copy2(src, dst)


_STALE_TEMP = re.compile(r"\..+\.tmp-[0-9a-f]{8}")  # left by a killed atomic_output


def _carry_over(old: Path, new: Path) -> None:
    """Bring the user's files (tokenizer, README, ...) from ``old`` into ``new``."""
    for entry in os.scandir(old):
        dst = new / entry.name
        if os.path.lexists(dst) or _is_weight_file(entry.name) or _STALE_TEMP.fullmatch(entry.name):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir():
            shutil.copytree(entry.path, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, str(dst))


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                _fsync(path)
        _fsync(dirpath)


def _swap_in(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by ``tmp`` so that ``folder`` is always a complete checkpoint."""
    if not os.path.lexists(folder):
        os.rename(tmp, folder)
        old = None
    elif _rename_exchange(tmp, folder):
        old = tmp  # the exchange left the old checkpoint at the temporary name
    else:
        old = _aside(folder)
        os.rename(folder, old)  # a kill here: recover_interrupted renames it back
        try:
            os.rename(tmp, folder)
        except BaseException:
            os.rename(old, folder)
            raise
    _fsync(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# Temporary folders carry host and pid, so a later save can tell a killed save's leftovers
# (possibly a whole old checkpoint, left by a kill just after the exchange) from a live one.
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _remove_dead_temps(folder: Path) -> None:
    """Delete temporary folders of saves into ``folder`` whose process died on this host."""
    if os.name == "nt":  # os.kill(pid, 0) is not a liveness probe on Windows
        return
    pattern = re.compile(rf"\.{re.escape(folder.name)}\.tmp-{re.escape(_HOST)}-(\d+)-[0-9a-f]{{8}}")
    for entry in os.scandir(folder.parent):
        m = pattern.fullmatch(entry.name)
        if not m or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            pass  # alive under another user, or unknowable: leave it


@contextlib.contextmanager
def atomic_write_dir(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh folder to write a checkpoint into; on success it replaces ``folder``.

    A kill at any moment leaves ``folder`` holding the complete old or the complete new
    checkpoint (Linux: one ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, undone by
    :func:`recover_interrupted`). Files of ``folder`` the save does not write are carried
    over (hard links), except stale weights and configs (:data:`WEIGHT_FILE_PATTERNS`). On an
    exception the temporary folder is deleted and ``folder`` is untouched. Concurrent saves
    into the same folder are not supported.
    """
    folder = Path(os.path.abspath(Path(folder).expanduser()))
    if folder.is_symlink():  # swap the real folder, not the link
        folder = Path(os.path.realpath(folder))
    if os.path.lexists(folder) and not folder.is_dir():
        raise CheckpointError(f"{folder}: exists and is not a folder; cannot save a checkpoint there")
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(folder)
    _remove_dead_temps(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(tmp, 0o777)  # honours the umask, unlike mkdtemp's 0o700
    try:
        if folder.is_dir():
            os.chmod(tmp, stat.S_IMODE(folder.stat().st_mode))
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if folder.is_dir():
            _carry_over(folder, tmp)
        _fsync_tree(tmp)
        _swap_in(tmp, folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, CheckpointError):
            raise CheckpointError(f"{folder}: saving failed, the previous checkpoint is kept: {e}") from e
        raise


# ----------------------------------------------------------------------------- JSON


class _DuplicateKey(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as Transformers does (sorted keys, indent 2, trailing newline), atomically."""
    atomic_write_file(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(
    path: str | os.PathLike[str],
    what: str,
    *,
    error: type[EncdecError] = CheckpointError,
    unique_keys: bool = False,
) -> Any:
    """Parse the JSON file ``path`` (a ``what``: "config", "checkpoint index", ...).

    Raises ``error`` naming the file and, for a syntax error, its line and column;
    ``unique_keys`` refuses an object holding the same key twice (JSON would keep the last).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{what} {path}: cannot be read as UTF-8 text: {e}") from e
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs if unique_keys else None)
    except json.JSONDecodeError as e:
        raise error(f"{what} {path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except _DuplicateKey as e:
        raise error(
            f"{what} {path}: key '{e}' appears twice in one JSON object; "
            "expected each key once (a tensor belongs to one shard)"
        ) from e


__all__ = [
    "CONFIG_NAME",
    "GENERATION_CONFIG_NAME",
    "SAFE_WEIGHTS_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
    "PT_WEIGHTS_NAME",
    "PT_WEIGHTS_INDEX_NAME",
    "WEIGHT_FILE_PATTERNS",
    "RawTensor",
    "CheckpointReader",
    "ShardIndex",
    "save_safetensors",
    "parse_size",
    "plan_shards",
    "write_index",
    "read_index",
    "remove_stale_files",
    "atomic_write_dir",
    "atomic_write_file",
    "atomic_output",
    "recover_interrupted",
    "write_json",
    "read_json",
]
