"""Every checkpoint format, detected, read as canonical arrays, and converted: the one place that reads formats.

Formats (the names ``encdec convert --to`` takes):

======== ============================================ ============================================
name     files                                        keys and layouts
======== ============================================ ============================================
pt       ``model.safetensors`` (or shards), meta "pt" canonical: HF PyTorch names and layouts
tf       ``model.safetensors`` (or shards), meta "tf" HF TF names + ``:0``, no model scope
flax     ``model.safetensors``, meta "flax"           HF Flax paths joined by "." (what HF 4.57's
                                                      ``save_pretrained(safe_serialization=True)`` writes)
bin      ``pytorch_model.bin`` (or shards)            canonical, a pickle (read with ``weights_only``)
h5       ``tf_model.h5`` (or shards)                  Keras 2 ``save_weights`` layout, HF TF names
msgpack  ``flax_model.msgpack`` (or shards)           HF Flax parameter tree
======== ============================================ ============================================

A folder holds a composite encoder-decoder, a standalone encoder (base model) or a
standalone decoder (causal LM): ``config.json``'s ``model_type`` and ``architectures`` say
which, else the keys do. Names are translated only through the core tables
(:mod:`encdec_core.tables`), each row's op applied or inverted; TF and Flax files keep both
copies of ``tie_encoder_decoder`` weights, so they are read and written through the untied
table. :func:`open_source` is what the three backends' loaders call; :func:`read_canonical`
is the strict reader behind :func:`convert`, which raises ONE :class:`CheckpointError` listing
every source key not consumed and every target weight not filled.

>>> detect("tests/fixtures/bert2gpt2/tf_sharded")  # doctest: +ELLIPSIS
Detected(path=..., format='h5', sharded=True, ..., kind='encoder-decoder', ..., architecture='bert2gpt2', ...)
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from conversion.sources import h5_scope
from conversion.writers import write_weights
from encdec_core.checkpoint import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    WEIGHT_FILE_PATTERNS,
    atomic_write_dir,
    check_interrupted,
    read_json,
    write_json,
)
from encdec_core.configs import PretrainedConfig, load_config
from encdec_core.errors import CheckpointError, InputError
from encdec_core.formats.canonical import (
    checkpoint_kind,
    has_pooler,
    nothing_found,
    open_source,
    present_formats,
    raw_source,
)
from encdec_core.formats.naming import (
    FORMATS,
    KINDS,
    SAFETENSORS_FORMATS,
    Tables,
    describe,
    stored_name,
    tables_for,
)
from encdec_core.formats.sources import Source
from encdec_core.loading import IGNORED_SUFFIXES, differing_copies

logger = logging.getLogger("encdec")
PROGRESS_BYTES = 1 << 28  # a progress bar by default from 256 MB of tensors
# the formats whose differing tie_encoder_decoder copies the loaders load untied
# (encdec_core.loading.differing_tied_copies); TF and Flax files are loaded tied
UNTIE_FORMATS = ("pt", "bin")


# ----------------------------------------------------------------------------- detection
@dataclass(frozen=True)
class Detected:
    """What a checkpoint folder holds."""

    path: Path
    format: str  # pt | tf | flax | bin | h5 | msgpack (the one read by default)
    sharded: bool
    files: tuple[str, ...]  # weight files of that format (shards and index)
    kind: str  # encoder-decoder | encoder | decoder
    model_type: str  # "encoder-decoder", "bert", "gpt2", ...
    architecture: str  # "bert2gpt2", or the model_type of a standalone model
    available: tuple[str, ...]  # every format present, in the default order
    config: PretrainedConfig = field(repr=False, compare=False)


def _weight_files(folder: Path, fmt: str) -> tuple[bool, tuple[str, ...]]:
    from encdec_core.formats.naming import FILES, container
    from encdec_core.formats.shards import read_index

    single, index = FILES[container(fmt)]
    if (folder / single).is_file():
        return False, (single,)
    return True, (index, *sorted(read_index(folder / index).files))


def detect(path: str | os.PathLike[str], *, formats: Sequence[str] | None = None) -> Detected:
    """Detect the format (the first of ``formats`` present, by default the first present) and the kind of a folder.

    Raises :class:`CheckpointError` naming what the folder holds when nothing fits; only
    reads (leftovers of an interrupted save get one warning).
    """
    folder = Path(path).expanduser()
    check_interrupted(folder)
    if not folder.is_dir():
        what = "is a file; expected a checkpoint folder" if folder.exists() else "no such checkpoint folder"
        raise CheckpointError(f"{folder}: {what} (config.json + weights)")
    available = present_formats(folder)
    wanted = [f for f in (formats or available) if f in available]
    if not wanted:
        raise CheckpointError(nothing_found(folder, formats or FORMATS, available, ""))
    fmt = wanted[0]
    config = load_config(folder)
    with raw_source(folder, fmt) as raw:
        keys = raw.keys()
    sharded, files = _weight_files(folder, fmt)
    kind = checkpoint_kind(config, keys, fmt)
    arch = (
        f"{config.encoder.model_type}2{config.decoder.model_type}" if kind == "encoder-decoder" else config.model_type
    )
    return Detected(folder, fmt, sharded, files, kind, config.model_type, arch, tuple(available), config)


# ----------------------------------------------------------------------------- strict read and convert
def checkpoint_tables(det: Detected, keys: Sequence[str]) -> Tables:
    """The tables of a detected checkpoint; a standalone encoder without a pooler gets a table without one."""
    return tables_for(det.config, det.kind, pooler=has_pooler(keys))


def _mismatch_error(det: Detected, unconsumed: list[str], unfilled: list[str]) -> CheckpointError:
    lines = [
        f"{det.path}: {describe(det.format)} of a {det.architecture} {det.kind} does not match the weight "
        "tables (config.json):"
    ]
    if unconsumed:
        lines.append(f"  {len(unconsumed)} source key(s) not consumed (no table row reads them):")
        lines += [f"    {k}" for k in unconsumed]
    if unfilled:
        lines.append(f"  {len(unfilled)} target weight(s) not filled (the file lacks them):")
        lines += [f"    {k}" for k in unfilled]
    return CheckpointError("\n".join(lines))


def _progress(total_bytes: int, progress: bool | None) -> bool | None:
    """tqdm's ``disable``: on when asked, off when refused, else only for big checkpoints on a terminal."""
    if progress is not None:
        return not progress
    return True if total_bytes < PROGRESS_BYTES else None


def _names(pairs: Sequence[tuple[str, str]]) -> str:
    """The first three ``a vs b`` pairs, then how many more."""
    shown = ", ".join(f"{a} vs {b}" for a, b in pairs[:3])
    return shown + (f", +{len(pairs) - 3} more" if len(pairs) > 3 else "")


def warn_differing_copies(
    path: Path, tables: Tables, differ: Sequence[str], *, untied: bool = False, action: str = "read"
) -> None:
    """One warning per tie flag whose copies differ in ``path`` (``differ``: names from :func:`differing_copies`).

    ``untied``: the ``tie_encoder_decoder`` copies differ in PyTorch weights, so the model is
    ``action`` ("read", "converted") untied, both copies kept, as the loaders load it. Otherwise
    the weight they are tied to (the decoder's copy) is kept for both, as the loaders do.
    """
    flags = {t.pt: (t.flag, t.source) for t in tables.ties}
    by_flag: dict[str, list[tuple[str, str]]] = {}
    for name in differ:
        by_flag.setdefault(flags[name][0], []).append((name, flags[name][1]))
    for flag, pairs in by_flag.items():
        if flag == "tie_encoder_decoder" and untied:
            logger.warning(
                "%s: tie_encoder_decoder cannot be honoured: the encoder's and the decoder's copies of %d shared "
                "weight(s) differ (%s); both copies are kept and the %s model is untied (tie_encoder_decoder: "
                "false), so that it computes what the source computes in Transformers 5.x and in encdec "
                "(each side from its own copy)",
                path,
                len(pairs),
                _names(pairs),
                action,
            )
            continue
        kept = "the decoder's copy" if flag == "tie_encoder_decoder" else "the weight they are tied to"
        logger.warning(
            "%s: %s could not be honoured because the copies differ: %d tied weight(s) differ from the weight "
            "they are tied to (%s); %s is kept for both, as encdec's loaders keep it for %s",
            path,
            flag,
            len(pairs),
            _names(pairs),
            kept,
            "TF and Flax files" if flag == "tie_encoder_decoder" else "every format",
        )


def read_canonical(
    path: str | os.PathLike[str], *, fmt: str | None = None, progress: bool | None = None
) -> tuple[Detected, Tables, dict[str, np.ndarray]]:
    """Every stored weight of the checkpoint in ``path`` as canonical numpy arrays (dtypes kept), strictly.

    Raises ONE :class:`CheckpointError` listing every source key not consumed and every
    target weight not filled. Tied copies that TF / Flax files, ``.bin`` and a two-copy
    ``tie_encoder_decoder`` ``model.safetensors`` carry are consumed; buffers that are
    recomputed (``position_ids``, GPT-2's ``attn.bias``) are dropped, as Transformers does.

    Copies that differ from the weight they are tied to are found by
    :func:`encdec_core.loading.differing_copies` and read as encdec's loaders load them:
    ``tie_encoder_decoder`` copies that differ in PyTorch weights (``pt``, ``bin``: what
    Transformers 5.x saves after training a tied model, as it ignores the tie) are read
    untied, both copies kept: the returned ``Detected.config`` is then a copy of config.json
    with ``tie_encoder_decoder=False`` and the tables are its tables. In every other case the
    weight they are tied to (the decoder's copy) is kept for both. :func:`warn_differing_copies`
    says which.
    """
    return _read_canonical(path, fmt=fmt, progress=progress, action="read")[:3]


def _untied_config(config: PretrainedConfig) -> PretrainedConfig:
    untied = config.copy()
    untied.tie_encoder_decoder = False
    return untied


def _read_canonical(
    path: str | os.PathLike[str], *, fmt: str | None, progress: bool | None, action: str
) -> tuple[Detected, Tables, dict[str, np.ndarray], bool]:
    """:func:`read_canonical`, and whether the differing copies made it read the model untied."""
    det = detect(path, formats=[fmt] if fmt else None)
    with raw_source(det.path, det.format) as raw:
        pooler = has_pooler(raw.keys())
        tables = checkpoint_tables(det, raw.keys())
        src = Source(det.path, det.format, raw, [tables.full])
        differ = differing_copies(tables.ties, src)  # the loaders' rule, on the file's own copies
        warned = tables
        untied = det.format in UNTIE_FORMATS and any(
            t.flag == "tie_encoder_decoder" for t in tables.ties if t.pt in differ
        )
        if untied:  # as the loaders (encdec_core.loading.differing_tied_copies): each side from its own copy
            det = replace(det, config=_untied_config(det.config))
            tables = tables_for(det.config, det.kind, pooler=pooler)
            src = Source(det.path, det.format, raw, [tables.full])
        stored = {p.pt for p in tables.stored}
        tied = {t.pt: t.source for t in tables.ties}
        unconsumed = [
            src.stored_key(n)
            for n in src.keys()
            if n not in stored and n not in tied and not n.endswith(IGNORED_SUFFIXES)
        ]
        # a file that stored only the other side of a tie fills its source (as plan_load does); one that
        # stored both is read from the source's own copy (the decoder's, for tie_encoder_decoder)
        fill = {
            p.pt: p.pt if p.pt in src else next((t for t, s in tied.items() if s == p.pt and t in src), p.pt)
            for p in tables.stored
        }
        unfilled = [name for name, key in fill.items() if key not in src]
        if unconsumed or unfilled:
            raise _mismatch_error(det, unconsumed, unfilled)
        total = sum(int(np.prod(src.shapes[k])) * 4 for k in fill.values())
        arrays = {
            name: src.get(key)
            for name, key in tqdm(
                fill.items(), desc=f"read {det.format}", unit="tensor", disable=_progress(total, progress)
            )
        }
    warn_differing_copies(det.path, warned, differ, untied=untied, action=action)
    return det, tables, arrays, untied


def _check_paths(src: Path, dst: Path) -> None:
    a, b = src.resolve(), dst.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise InputError(f"convert: destination {dst} overlaps the source {src}; write the conversion elsewhere")


def _copy_side_files(src: Path, dst: Path) -> list[str]:
    """config.json, generation_config.json and the user's files (tokenizer, README): everything but weights."""
    import fnmatch

    copied = []
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        weight = any(
            fnmatch.fnmatchcase(entry.name, p)
            for p in WEIGHT_FILE_PATTERNS
            if p not in (CONFIG_NAME, GENERATION_CONFIG_NAME)
        )
        if entry.is_file() and not weight and not entry.name.startswith("."):
            shutil.copy2(entry.path, dst / entry.name)
            copied.append(entry.name)
    return copied


def _write_untied_config(src: Path, dst: Path) -> None:
    """``dst``'s config.json: the source's, ``tie_encoder_decoder`` false at the top level (sub-configs unchanged)."""
    data = read_json(src / CONFIG_NAME, "config")
    data["tie_encoder_decoder"] = False
    write_json(dst / CONFIG_NAME, data)


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    to: str = "pt",
    *,
    max_shard_size: int | str | None = None,
    source_format: str | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert the checkpoint folder ``src`` into ``dst`` in format ``to`` (see the module table).

    Reads strictly (:func:`read_canonical`), copies config.json, generation_config.json and
    the other non-weight files, and writes atomically: ``dst`` switches from its old content
    (if any) to the complete new checkpoint at once, and ``src`` is only read. An existing
    ``dst`` holding weights is replaced only with ``overwrite=True``. ``max_shard_size``
    ("200MB", bytes) writes shards plus an index; a progress bar shows over large checkpoints.
    A ``tie_encoder_decoder`` checkpoint is written with both copies of the shared weights;
    one whose PyTorch weights hold differing copies (a Transformers 5.x save after training)
    is converted untied, as encdec's loaders and 5.x load it: both copies as they are, and
    ``tie_encoder_decoder: false`` in the converted config.json (one warning says so).
    Returns ``dst``.
    """
    if to not in FORMATS:
        raise InputError(f"convert: to= expected one of {', '.join(FORMATS)}, got {to!r}")
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    _check_paths(src, dst)
    if dst.is_dir() and present_formats(dst) and not overwrite:
        raise CheckpointError(
            f"{dst}: already holds a checkpoint ({', '.join(present_formats(dst))}); "
            "pass overwrite=True (--overwrite) to replace it"
        )
    det, tables, arrays, untied = _read_canonical(src, fmt=source_format, progress=progress, action="converted")
    scope = version = None
    if det.format == "h5" and to == "h5":  # keep the model name and Keras version the file records
        scope, version = h5_scope(det.path)
    with atomic_write_dir(dst) as tmp:
        _copy_side_files(det.path, tmp)
        if untied:  # the copies differ: the converted model is untied, as the loaders load the source
            _write_untied_config(det.path, tmp)
        written = write_weights(
            arrays,
            tmp,
            to,
            tables,
            config=det.config,
            max_shard_size=max_shard_size,
            scope=scope,
            keras_version=version,
            architectures=det.config.architectures,
        )
    logger.info("%s (%s) -> %s (%s): %d tensors in %d file(s)", src, det.format, dst, to, len(arrays), len(written))
    return dst


__all__ = [
    "FORMATS",
    "SAFETENSORS_FORMATS",
    "KINDS",
    "Detected",
    "Tables",
    "Source",
    "describe",
    "detect",
    "present_formats",
    "open_source",
    "read_canonical",
    "warn_differing_copies",
    "checkpoint_tables",
    "convert",
    "stored_name",
    "tables_for",
]
