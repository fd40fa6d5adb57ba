"""File names of a checkpoint folder, shard planning, and shard indexes (written and validated).

Shared by every format: safetensors, ``pytorch_model.bin``, ``tf_model.h5`` and
``flax_model.msgpack`` shards are planned, indexed and validated alike, with Transformers'
names and rules.

>>> plan_shards({"a": 4, "b": 4, "c": 4}, 8, "model{suffix}.safetensors")
{'model-00001-of-00002.safetensors': ['a', 'b'], 'model-00002-of-00002.safetensors': ['c']}
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from encdec_core.errors import CheckpointError, InputError
from encdec_core.formats.jsonio import read_json, write_json

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PT_WEIGHTS_NAME = "pytorch_model.bin"
PT_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
TF_WEIGHTS_NAME = "tf_model.h5"
TF_WEIGHTS_INDEX_NAME = "tf_model.h5.index.json"
FLAX_WEIGHTS_NAME = "flax_model.msgpack"
FLAX_WEIGHTS_INDEX_NAME = "flax_model.msgpack.index.json"

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

_UNITS = {
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
        if not m or m.group(2).upper() not in _UNITS:
            raise InputError(f"max_shard_size: expected a size like '5GB', '100KB' or '10MiB', got {size!r}")
        unit = m.group(2)
        value = int(float(m.group(1)) * _UNITS[unit.upper()])
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

    Only ever called on a save's own temporary folder or on a folder the caller writes into.
    Without this, a stale ``model.safetensors`` would shadow new shards (loaders prefer the
    single file), and stale shards would linger beside a new single file.
    """
    for entry in os.scandir(folder):
        if entry.name not in keep and any(fnmatch.fnmatchcase(entry.name, p) for p in patterns):
            os.unlink(entry.path)


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
    """Read and validate a shard index (``model.safetensors.index.json`` or the .bin / .h5 / .msgpack one)."""
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


__all__ = [
    "CONFIG_NAME",
    "GENERATION_CONFIG_NAME",
    "SAFE_WEIGHTS_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
    "PT_WEIGHTS_NAME",
    "PT_WEIGHTS_INDEX_NAME",
    "TF_WEIGHTS_NAME",
    "TF_WEIGHTS_INDEX_NAME",
    "FLAX_WEIGHTS_NAME",
    "FLAX_WEIGHTS_INDEX_NAME",
    "WEIGHT_FILE_PATTERNS",
    "ShardIndex",
    "parse_size",
    "plan_shards",
    "write_index",
    "read_index",
    "remove_stale_files",
]
