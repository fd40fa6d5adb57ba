"""What a checkpoint holds, in numbers: ``encdec inspect``.

Reads only headers and shapes where the format allows (safetensors, h5), through the same
reader as the converter, so every format is summarised alike.

>>> info = inspect_checkpoint("tests/fixtures/bert2gpt2_proj/pt")
>>> info["format"], info["architecture"], sorted(info["parameters"])
('pt', 'bert2gpt2', ['decoder', 'enc_to_dec_proj', 'encoder'])
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from conversion.formats import checkpoint_tables, detect, open_source
from conversion.naming import tables_for
from encdec_core.errors import CheckpointError
from encdec_core.formats.dtypes import itemsize
from encdec_core.hub import resolve_checkpoint
from encdec_core.loading import plan_load
from encdec_core.report import group_names


def _itemsize(code: str) -> int:
    try:
        return itemsize(code)  # the one dtype table
    except CheckpointError:  # an exotic code: one byte is the honest lower bound
        return 1


def _part(name: str, kind: str) -> str:
    return name.split(".", 1)[0] if kind == "encoder-decoder" else kind


def _expected_new(det, tables, shapes: dict[str, tuple[int, ...]]) -> tuple[list[str], list[str], list[str]]:
    """(expected new, missing, unexpected) for a model built from this checkpoint.

    A standalone decoder is judged as the decoder of a composed model (with cross-attention),
    which is what warm-starting makes of it.
    """
    if det.kind == "decoder" and not det.config.add_cross_attention:
        config = det.config.copy()
        config.is_decoder = config.add_cross_attention = True
        tables = tables_for(config, "decoder")
    model_shapes = {p.pt: shapes.get(p.pt, ()) for p in tables.stored}
    report = plan_load(tables.stored, shapes, model_shapes, ties=tables.ties, source=str(det.path)).report
    return report.expected_new, report.missing, report.unexpected


def inspect_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Format, kind, architecture, parameter counts per part, ties, expected-new weights, dtypes and sizes.

    ``parameters`` counts stored weights per part (``encoder``, ``decoder``,
    ``enc_to_dec_proj``; or the standalone model's kind); ``tied`` lists the weights that are
    another weight (not stored in the canonical file); ``expected_new`` the weights a model
    built from this checkpoint initialises on purpose (cross-attention, projection, pooler).
    """
    det = detect(resolve_checkpoint(path))
    parts: Counter = Counter()
    dtypes: Counter = Counter()
    size = 0
    with open_source(det.path, accept=[det.format]) as src:
        tables = checkpoint_tables(det, src.keys())
        stored = {p.pt for p in tables.stored}
        shapes = dict(src.shapes)
        for name in src.keys():
            if name not in stored:  # tied copies (TF, Flax, .bin) and buffers are not parameters of their own
                continue
            n = int(np.prod(src.shapes[name]))
            code = src.dtype(name)
            parts[_part(name, det.kind)] += n
            dtypes[code] += 1
            size += n * _itemsize(code)
    new, missing, unexpected = _expected_new(det, tables, shapes)
    files = [det.path / f for f in det.files]
    return {
        "path": str(det.path),
        "format": det.format,
        "sharded": det.sharded,
        "files": list(det.files),
        "other_formats": [f for f in det.available if f != det.format],
        "kind": det.kind,
        "architecture": det.architecture,
        "parameters": dict(parts),
        "total_parameters": int(sum(parts.values())),
        "tied": group_names(sorted(t.pt for t in tables.ties)),
        "expected_new": group_names(new),
        "missing": group_names(missing),
        "unexpected": group_names(unexpected),
        "dtypes": dict(dtypes),
        "bytes": size,
        "file_bytes": sum(f.stat().st_size for f in files if f.is_file()),
    }


def format_summary(info: dict[str, Any]) -> str:
    """A few readable lines of :func:`inspect_checkpoint`'s result."""

    def mb(n: int) -> str:
        return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"

    lines = [
        f"{info['path']}: {info['architecture']} {info['kind']}, format {info['format']}"
        + (" (sharded)" if info["sharded"] else "")
        + (f"; also {', '.join(info['other_formats'])}" if info["other_formats"] else ""),
        "parameters: "
        + ", ".join(f"{k} {v:,}" for k, v in info["parameters"].items())
        + f" (total {info['total_parameters']:,})",
        "dtypes: "
        + ", ".join(f"{k} x{v}" for k, v in info["dtypes"].items())
        + f"; {mb(info['bytes'])} of tensors, {mb(info['file_bytes'])} on disk",
    ]
    for key in ("tied", "expected_new", "missing", "unexpected"):
        if info[key]:
            lines.append(f"{key.replace('_', ' ')} ({len(info[key])}): " + ", ".join(info[key]))
    return "\n".join(lines)


__all__ = ["inspect_checkpoint", "format_summary"]
