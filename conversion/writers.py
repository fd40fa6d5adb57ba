"""Write canonical arrays in any format: the inverse of :mod:`encdec_core.formats.sources`, through the same tables.

``arrays`` are canonical (HF PyTorch names and layouts), the stored weights of a
checkpoint (tied copies left out, as :func:`conversion.formats.read_canonical` returns
them). Each format gets what Transformers 4.57 writes for it: ``.bin`` and the TF / Flax
files carry the tied copies too (HF's ``.bin`` is the whole ``state_dict``; its TF and Flax
classes do not tie ``tie_encoder_decoder`` weights), each weight under the format's name,
in its layout. A ``tie_encoder_decoder`` checkpoint holds both copies of the shared weights
in every format, the canonical ``model.safetensors`` included, exactly as the three models'
``save_pretrained`` write them (:func:`encdec_core.tables.with_tied_copies`): Transformers
5.x ignores the flag and loads each side, 4.57 loads both and ties them.

>>> import numpy as np, tempfile
>>> from encdec_core.configs import BertConfig
>>> from encdec_core.formats.naming import tables_for
>>> t = tables_for(BertConfig(hidden_size=4, num_hidden_layers=1, num_attention_heads=1, intermediate_size=5,
...                           vocab_size=7, max_position_embeddings=8), "encoder")
>>> arrays = {p.pt: np.zeros(1, np.float32) for p in t.stored}  # shapes are the caller's business
>>> [p.name for p in write_weights(arrays, tempfile.mkdtemp(), "tf", t, config=None)]
['model.safetensors']
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from encdec_core.checkpoint import save_safetensors
from encdec_core.configs import PretrainedConfig
from encdec_core.errors import InputError
from encdec_core.formats.naming import FORMATS, Tables, framework_op, stored_name
from encdec_core.formats.sources import from_numpy
from encdec_core.tables import apply_op, with_tied_copies

_H5_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")


def default_scope(architectures: list[str] | None) -> str:
    """The Keras model name Transformers' TF class would have: ``tf_encoder_decoder_model`` (Keras' snake case)."""
    name = "TF" + (architectures[0] if architectures else "Model")
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras_version() -> str:
    try:  # the version h5 files record; read from the metadata, without importing keras
        return importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:
        return "3.0.0"


def with_ties(arrays: Mapping[str, np.ndarray], tables: Tables, names: list[str]) -> dict[str, np.ndarray]:
    """``{name: array}`` for ``names``, a tied name taking the array of the weight it is tied to."""
    source = {t.pt: t.source for t in tables.ties}
    out = {}
    for name in names:
        key = name
        while key not in arrays and key in source:
            key = source[key]
        if key not in arrays:
            raise InputError(f"cannot write '{name}': the canonical arrays lack it (and any weight it is tied to)")
        out[name] = arrays[key]
    return out


def framework_arrays(arrays: Mapping[str, np.ndarray], tables: Tables, fmt: str) -> dict[str, np.ndarray]:
    """Canonical arrays -> ``{name stored by fmt: array in fmt's layout}`` over the untied table."""
    full = with_ties(arrays, tables, [p.pt for p in tables.full])
    return {stored_name(p, fmt): apply_op(framework_op(p, fmt), full[p.pt]) for p in tables.full}


def write_weights(
    arrays: Mapping[str, np.ndarray],
    folder: str | os.PathLike[str],
    fmt: str,
    tables: Tables,
    *,
    config: PretrainedConfig | None,
    max_shard_size: int | str | None = None,
    scope: str | None = None,
    keras_version: str | None = None,
    architectures: list[str] | None = None,
) -> list[Path]:
    """Write the weights (no configs) of a checkpoint in ``fmt`` into ``folder``; returns the files written.

    ``config`` is the checkpoint's (what its ``config.json`` says; ``None`` for weights without
    one): with ``tie_encoder_decoder`` the encoder's copies of the shared weights are written
    beside the decoder's, in every format. A checkpoint read untied because its copies differ
    (:func:`conversion.formats.read_canonical` then gives an untied config, and both copies in
    ``arrays``) is written as it is, each copy its own. ``scope`` and ``keras_version`` are recorded in
    ``tf_model.h5`` (defaults: the name Transformers' TF class would have, from
    ``architectures``, and the installed Keras).
    """
    folder = Path(folder)
    # tie_encoder_decoder: both copies, the encoder's from the decoder's (as the models' save_pretrained)
    arrays = with_tied_copies(config, dict(arrays))
    if fmt == "pt":
        return save_safetensors(arrays, folder, max_shard_size=max_shard_size, metadata={"format": "pt"})
    if fmt == "bin":
        from encdec_core.formats.pt_bin import write_pytorch_bin

        names = [p.pt for p in tables.stored] + [t.pt for t in tables.ties]
        state = {k: from_numpy(a, "pt") for k, a in with_ties(arrays, tables, names).items()}
        return write_pytorch_bin(state, folder, max_shard_size=max_shard_size)
    if fmt not in FORMATS:
        raise InputError(f"format expected one of {', '.join(FORMATS)}, got {fmt!r}")
    out = framework_arrays(arrays, tables, fmt)
    if fmt in ("tf", "flax"):
        return save_safetensors(out, folder, max_shard_size=max_shard_size, metadata={"format": fmt})
    if fmt == "h5":
        from encdec_core.formats.tf_h5 import write_tf_h5

        if odd := sorted({a.dtype.name for a in out.values() if a.dtype.name not in _H5_DTYPES}):
            raise InputError(
                f"tf_model.h5 (Keras' HDF5 weights) cannot hold {', '.join(odd)} tensors; write the "
                "tf, flax, msgpack or pt format instead (safetensors and msgpack keep bfloat16)"
            )

        return write_tf_h5(
            out,
            folder,
            scope=scope or default_scope(architectures),
            keras_version=keras_version or _keras_version(),
            max_shard_size=max_shard_size,
        )
    from encdec_core.formats.flax_msgpack import write_flax_msgpack

    return write_flax_msgpack(out, folder, max_shard_size=max_shard_size)


__all__ = ["write_weights", "framework_arrays", "with_ties", "default_scope"]
