"""What a checkpoint folder holds, and :func:`open_source`: its weights under canonical names, for every loader.

The three backends' loaders and the converter open checkpoints here, in whatever format
(see :mod:`encdec_core.formats.naming` for the names), through the core tables. Opening only
reads: leftovers of an interrupted save are reported by :func:`check_interrupted` (one
warning), never cleaned up on a read path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from encdec_core.configs import EncoderDecoderConfig, PretrainedConfig, load_config
from encdec_core.errors import CheckpointError, EncdecError
from encdec_core.formats.atomic import check_interrupted
from encdec_core.formats.naming import (
    DECODER_ARCHS,
    FILES,
    FORMATS,
    SAFETENSORS_FORMATS,
    container,
    describe,
    stored_name,
    tables_for,
)
from encdec_core.formats.safetensors_io import CheckpointReader
from encdec_core.formats.shards import read_index
from encdec_core.formats.sources import BinSource, H5Source, MsgpackSource, SafetensorsSource, Source
from encdec_core.tables import Param


def safetensors_format(folder: Path) -> str:
    """Metadata "format" of the folder's safetensors (the first file); a file without one is "pt"."""
    single, index = FILES["safetensors"]
    first = folder / single
    if not first.is_file():
        first = min(read_index(folder / index).files.values(), key=lambda p: p.name, default=None)
        if first is None:
            raise CheckpointError(f"{folder / index}: the shard index lists no shard")
    with CheckpointReader(first) as reader:
        fmt = reader.metadata.get("format", "pt")
    if fmt not in SAFETENSORS_FORMATS:
        raise CheckpointError(f"{first}: metadata format {fmt!r}; expected one of {SAFETENSORS_FORMATS}")
    return fmt


def present_formats(folder: str | os.PathLike[str]) -> list[str]:
    """Formats whose weight files are in ``folder``, in the default reading order (safetensors first)."""
    folder = Path(folder)
    found = []
    for box in ("safetensors", "bin", "h5", "msgpack"):
        if any((folder / name).is_file() for name in FILES[box]):
            found.append(safetensors_format(folder) if box == "safetensors" else box)
    return found


def checkpoint_kind(config: PretrainedConfig, keys: Sequence[str], fmt: str) -> str:
    """Composite / encoder / decoder: by config, else by which table the keys fit best."""
    if isinstance(config, EncoderDecoderConfig):
        return "encoder-decoder"
    for arch in config.architectures or []:
        if arch.endswith(DECODER_ARCHS):
            return "decoder"
        if arch.endswith(("Model", "GenerationEncoder")):
            return "encoder"
    keys = set(keys)
    score = {
        kind: sum(stored_name(p, fmt) in keys for p in tables_for(config, kind).stored)
        for kind in ("decoder", "encoder")
    }
    return max(score, key=score.get)  # a tie (GPT-2 in TF names) goes to the decoder: listed first


def nothing_found(folder: Path, accept: Sequence[str], available: Sequence[str], what: str) -> str:
    """The message of a folder without weights in any accepted format."""
    names = list(dict.fromkeys(FILES[container(f)][0] for f in accept))
    expected = f"{', '.join(names[:-1])}{' or ' if len(names) > 1 else ''}{names[-1]}"
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    msg = f"{folder}: no {what}weights found; expected {expected} (or a sharded index); the folder holds {present}"
    if available:
        msg += (
            f"; its {', '.join(describe(f) for f in available)} can be converted with "
            f"`encdec convert {folder} OUT --to {accept[0]}`"
        )
    return msg


@contextlib.contextmanager
def raw_source(folder: Path, fmt: str) -> Iterator[Any]:
    """The raw reader of format ``fmt`` in ``folder`` (stored names), closed on exit."""
    if fmt in SAFETENSORS_FORMATS:
        single, index = FILES["safetensors"]
        src = SafetensorsSource(folder, folder / single if (folder / single).is_file() else None, folder / index)
    else:
        src = {"bin": BinSource, "h5": H5Source, "msgpack": MsgpackSource}[fmt](folder)
    try:
        yield src
    finally:
        src.close()


def has_pooler(keys: Sequence[str]) -> bool:
    """Whether a standalone encoder's file has its pooler (a base model saved without one has none)."""
    return any("pooler" in k for k in keys)


def _own_table(folder: Path, fmt: str, keys: Sequence[str]) -> list[Param]:
    """The checkpoint's own (untied) table from its config.json, or nothing if it has no usable config."""
    try:
        config = load_config(folder)
        kind = checkpoint_kind(config, keys, fmt)
        return tables_for(config, kind, pooler=has_pooler(keys)).full
    except EncdecError:
        return []


@contextlib.contextmanager
def open_source(
    path: str | os.PathLike[str],
    table: Sequence[Param] | None = None,
    *,
    accept: Sequence[str] = FORMATS,
    what: str = "",
) -> Iterator[Source]:
    """Open the weights in ``path`` as a canonical :class:`Source` (the backends' loaders call this).

    ``accept`` lists the formats the caller reads, in order of preference: the first present
    is read. ``table`` (the caller's model table, untied) translates TF / Flax names; keys it
    does not know are translated by the checkpoint's own table (its config.json), so a base
    model's Flax file loads into a causal LM as its PyTorch file does. ``what`` names the
    caller in the error raised when no accepted format is present ("PyTorch ").
    """
    folder = Path(path).expanduser()
    check_interrupted(folder)
    available = present_formats(folder) if folder.is_dir() else []
    fmt = next((f for f in accept if f in available), None)
    if fmt is None:
        raise CheckpointError(nothing_found(folder, accept, available, what))
    with raw_source(folder, fmt) as raw:
        tables = [list(table or [])]
        if fmt not in ("pt", "bin"):
            tables.append(_own_table(folder, fmt, raw.keys()))
        yield Source(folder, fmt, raw, tables)


__all__ = [
    "open_source",
    "present_formats",
    "safetensors_format",
    "checkpoint_kind",
    "raw_source",
    "has_pooler",
    "nothing_found",
]
