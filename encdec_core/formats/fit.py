"""Does a config fit a checkpoint? Compared from the weight tables, before any backend builds a model.

An absurd config against a small checkpoint (``vocab_size=10**11`` over a 99-row embedding)
must fail the same way in PyTorch, TensorFlow and Flax, and before a layer is built (Flax
would otherwise overflow inside a jitted initialiser, TF allocate the variables). Each
table row that declares its ``dims`` (:class:`encdec_core.tables.Row`) gives the shape the
config implies; :func:`check_config_fits` compares those with the checkpoint's shapes,
read from its headers, and raises one :class:`~encdec_core.errors.ShapeMismatchError` that
lists every weight that does not fit, with the config fields behind each expected shape.

>>> from encdec_core.configs import BertConfig
>>> from encdec_core.tables import model_table
>>> p = model_table(BertConfig(vocab_size=99, hidden_size=36, num_attention_heads=3), "encoder")[0]
>>> p.pt, expected_shape(p, BertConfig(vocab_size=99, hidden_size=36, num_attention_heads=3))
('embeddings.word_embeddings.weight', (99, 36))
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from encdec_core.configs import EncoderDecoderConfig, PretrainedConfig
from encdec_core.errors import ShapeMismatchError
from encdec_core.formats.canonical import open_source
from encdec_core.formats.flax_msgpack import drop_handoff, hand_over
from encdec_core.tables import Param, architecture, model_table, prefixed


def expected_shape(p: Param, config: PretrainedConfig) -> tuple[int, ...] | None:
    """The PT shape ``config`` gives weight ``p`` (None if its row declares no dims)."""
    if not p.dims:
        return None
    return tuple(int(getattr(config, d)) for d in p.dims)


def _sized(config: PretrainedConfig, role: str) -> list[tuple[Param, PretrainedConfig, str]]:
    """(param, the config sizing it, base prefix) for every param with declared dims."""
    if isinstance(config, EncoderDecoderConfig):
        out = []
        for side, sub, sub_role in (("encoder", config.encoder, "encoder"), ("decoder", config.decoder, "decoder")):
            out += [(p, sub, "") for p in prefixed(model_table(sub, sub_role), side, side, side) if p.dims]
        return out
    base = architecture(config.model_type).base_prefix[0] if role == "decoder" else ""
    return [(p, config, base) for p in model_table(config, role) if p.dims]


def _candidates(name: str, base: str) -> list[str]:
    """Checkpoint keys that fill ``name``: itself, or with the LM's base prefix dropped or added (as HF loads)."""
    if not base:
        return [name]
    p = base + "."
    return [name, name.removeprefix(p)] if name.startswith(p) else [name, p + name]


def misfits(
    config: PretrainedConfig, shapes: Mapping[str, Sequence[int]], *, role: str = "encoder"
) -> list[tuple[str, tuple[int, ...], tuple[int, ...], str]]:
    """(checkpoint key, shape the config gives, shape stored, the config fields) for every weight that does not fit."""
    out = []
    for p, sub, base in _sized(config, role):
        key = next((k for k in _candidates(p.pt, base) if k in shapes), None)
        if key is None:
            continue  # missing weights are the loading report's business
        want, got = expected_shape(p, sub), tuple(int(d) for d in shapes[key])
        if want != got:
            fields = ", ".join(f"{sub.key_of(d)}={getattr(sub, d)}" for d in dict.fromkeys(p.dims))
            out.append((key, want, got, fields))
    return out


def check_config_fits(
    config: PretrainedConfig,
    folder: str | os.PathLike[str],
    *,
    role: str = "encoder",
    accept: Sequence[str] | None = None,
) -> None:
    """Raise one ShapeMismatchError if ``config`` gives a weight a shape other than the checkpoint's.

    Called by the three backends' loaders after the config is resolved and before the model is
    built. Reads only shapes (headers for safetensors and h5; a msgpack file is parsed whole and
    handed over to the next read of it, the loader's, so a load parses it once). ``role`` is the model's
    ("encoder" for a base model, "decoder" for a causal LM; ignored for an encoder-decoder);
    ``accept`` the formats the loader reads, first present wins (default: every format).
    """
    folder = Path(folder)
    kwargs = {} if accept is None else {"accept": tuple(accept)}
    table = [p for p, _, _ in _sized(config, role)]
    # a msgpack file has no header: what this check parses is handed over to the load that follows
    with hand_over(), open_source(folder, table, **kwargs) as source:
        bad = misfits(config, source.shapes, role=role)
    if bad:
        drop_handoff()
        lines = [
            f"{folder}: the config does not fit the checkpoint's weights ({len(bad)} shape(s) differ; "
            "checked before building the model):"
        ]
        lines += [
            f"  {key}: the config gives {want} ({fields}), the checkpoint holds {got}" for key, want, got, fields in bad
        ]
        raise ShapeMismatchError("\n".join(lines))


__all__ = ["check_config_fits", "misfits", "expected_shape"]
