"""PyTorch ``pytorch_model.bin`` checkpoints (single or sharded), read safely and written as HF does.

A ``.bin`` is a pickle, and a pickle can run code. We load with ``weights_only=True``, so
only tensors and plain containers come back; anything else is refused with a
:class:`~encdec_core.errors.CheckpointError`, before any of its code runs. A zip-format file
is checked first (records stored uncompressed, sizes within the file), so a hostile archive
cannot make the loader inflate more than the file holds. Shard indexes get the same
validation (path traversal included) as safetensors ones. torch is imported inside the
functions that need it.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from encdec_core.errors import CheckpointError, InputError
from encdec_core.formats.atomic import atomic_output
from encdec_core.formats.shards import (
    PT_WEIGHTS_INDEX_NAME,
    PT_WEIGHTS_NAME,
    ShardIndex,
    plan_shards,
    read_index,
    remove_stale_files,
    write_index,
)

if TYPE_CHECKING:
    import torch

MAX_RECORDS = 1_000_000  # zip members: far more than any checkpoint's tensors
# Bytes per element of the storage classes a legacy (pre-zip) file names; an unknown one counts 16, the most.
_STORAGE_SIZES = {
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "ComplexFloatStorage": 8,
    "ComplexDoubleStorage": 16,
}


class _Stub:
    """Stands for every class a pickle names while :func:`_legacy_claims` reads it: nothing real is built or run."""

    storage_name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


class _ClaimsUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, claims: dict[Any, int]) -> None:
        super().__init__(file)
        self._claims = claims

    def find_class(self, module: str, name: str) -> type:
        return type(name, (_Stub,), {"storage_name": name})  # never the real global

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage"):
            storage, key, numel = pid[1], pid[2], pid[4]
            size = _STORAGE_SIZES.get(getattr(storage, "storage_name", ""), 16)
            if isinstance(numel, int):
                self._claims[key] = max(self._claims.get(key, 0), numel * size)
        return _Stub()


def _legacy_claims(path: Path) -> int | None:
    """Bytes the storages of a legacy torch.save file declare (None if it is not one we can read so).

    torch allocates each declared storage before reading it, so a forged size is refused here,
    without building any object the pickle names.
    """
    claims: dict[Any, int] = {}
    try:
        with open(path, "rb") as f:
            for _ in range(4):  # magic number, protocol version, system info, then the object with its storages
                _ClaimsUnpickler(f, claims).load()
    except Exception:  # not a legacy pickle (or a broken one): torch.load decides and says why
        return None
    return sum(claims.values())


def _check_zip(path: Path) -> None:
    """Refuse a zip whose records are compressed or claim more bytes than the file has (a zip bomb)."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: broken zip archive: {e}") from e
    if len(infos) > MAX_RECORDS:
        raise CheckpointError(f"{path}: {len(infos)} zip records, expected at most {MAX_RECORDS}")
    size = path.stat().st_size
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:  # torch.save never compresses; mmap needs stored records
            raise CheckpointError(
                f"{path}: zip record {info.filename!r} is compressed; torch.save stores records "
                "uncompressed, so this is not a PyTorch checkpoint"
            )
        if info.file_size > size or info.header_offset + info.file_size > size:
            raise CheckpointError(
                f"{path}: zip record {info.filename!r} claims {info.file_size} bytes at offset "
                f"{info.header_offset}, past the end of the {size}-byte file"
            )


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    """One .bin file as a state dict; refuses pickles that hold anything but tensors."""
    import torch

    # mmap needs the zip format (torch >= 1.6); old pickles are read whole.
    mmap = zipfile.is_zipfile(path)
    if mmap:
        _check_zip(path)
    elif (claimed := _legacy_claims(path)) is not None and claimed > path.stat().st_size:
        raise CheckpointError(
            f"{path}: its tensors declare {claimed} bytes of storage but the file has "
            f"{path.stat().st_size}; not a readable PyTorch checkpoint"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # torch's message buries the reason ("Unsupported global: GLOBAL io.open ...") mid-text.
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n\n|$)", str(e), re.S)
        detail = found.group(1).strip() if found else type(e).__name__
        raise CheckpointError(
            f"{path}: refused: the pickle holds objects other than tensors "
            f"({detail}); pickles that would run code "
            "are never loaded. Convert a trusted file to safetensors first."
        ) from e
    except (
        RuntimeError,
        EOFError,
        ValueError,
        OSError,
        MemoryError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        AssertionError,
        OverflowError,
        RecursionError,
        struct.error,
        UnicodeDecodeError,
    ) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {type(e).__name__}: {first[:300]}") from e
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"{path}: expected a state dict (str -> tensor), got {type(obj).__name__}")
    return dict(obj)


def _files(path: Path) -> tuple[dict[str, Path], ShardIndex | None]:
    """The .bin file(s) to read at ``path`` and the shard index, if any."""
    if path.is_file():
        return {path.name: path}, None
    if (path / PT_WEIGHTS_NAME).is_file():
        return {PT_WEIGHTS_NAME: path / PT_WEIGHTS_NAME}, None
    if (path / PT_WEIGHTS_INDEX_NAME).is_file():
        index = read_index(path / PT_WEIGHTS_INDEX_NAME)
        return index.files, index
    if path.is_dir():
        raise CheckpointError(f"{path}: no {PT_WEIGHTS_NAME} or {PT_WEIGHTS_INDEX_NAME} in this folder")
    raise CheckpointError(f"{path}: no such checkpoint file or folder")


def read_pytorch_bin(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """State dict of a ``.bin`` file, or of a folder with ``pytorch_model.bin`` or its shards.

    Tensors are memory-mapped (zip-format files) and on CPU.
    """
    path = Path(path).expanduser()
    files, index = _files(path)
    state: dict[str, torch.Tensor] = {}
    owner: dict[str, Path] = {}
    for name, file in files.items():
        shard = _load_file(file)
        if index is not None:
            index.check_shard(name, set(shard))
        if twice := sorted(set(shard) & set(owner)):
            where = ", ".join(f"'{k}' (also in {owner[k].name})" for k in twice)
            raise CheckpointError(f"{file}: tensors stored in two shards: {where}")
        owner.update(dict.fromkeys(shard, file))
        state.update(shard)
    return state


def _compact(torch: Any, key: str, t: Any) -> torch.Tensor:
    """A tensor that owns exactly its bytes: torch.save writes a view's whole storage."""
    if not isinstance(t, torch.Tensor):
        raise InputError(f"state_dict['{key}']: expected a torch.Tensor, got {type(t).__name__}")
    t = t.detach().contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


def write_pytorch_bin(
    state_dict: Mapping[str, torch.Tensor],
    folder: str | os.PathLike[str],
    max_shard_size: int | str | None = None,
) -> list[Path]:
    """Write ``pytorch_model.bin`` (or shards + ``pytorch_model.bin.index.json``) as HF does.

    Each file is written atomically; returns the paths written.
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: _compact(torch, k, v) for k, v in state_dict.items()}
    sizes = {k: t.numel() * t.element_size() for k, t in tensors.items()}
    plan = plan_shards(sizes, max_shard_size, "pytorch_model{suffix}.bin")
    written = []
    for fname, keys in plan.items():
        with atomic_output(folder / fname) as tmp:
            torch.save({k: tensors[k] for k in keys}, tmp)
        written.append(folder / fname)
    if len(plan) > 1:
        write_index(folder / PT_WEIGHTS_INDEX_NAME, plan, sizes, {k: t.numel() for k, t in tensors.items()})
        written.append(folder / PT_WEIGHTS_INDEX_NAME)
    remove_stale_files(
        folder, {p.name for p in written}, (PT_WEIGHTS_NAME, "pytorch_model-*-of-*.bin", PT_WEIGHTS_INDEX_NAME)
    )
    return written


__all__ = ["read_pytorch_bin", "write_pytorch_bin"]
