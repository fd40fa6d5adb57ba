"""Format names and the tables of a checkpoint kind: which key each format stores a weight under, and the op between layouts.

The rules here are mechanical and come from the core tables (:mod:`encdec_core.tables`): a
format stores a weight under ``Param.pt`` (pt, bin), ``Param.tf`` (h5; ``:0`` appended in TF
safetensors), or ``Param.flax`` ("/"-joined in msgpack, "."-joined in Flax safetensors, as HF
4.57 writes it), and the array in the layout the row's op gives.

>>> from encdec_core.tables import model_table
>>> from encdec_core.configs import BertConfig
>>> p = model_table(BertConfig(num_hidden_layers=1), "encoder")[5]
>>> [stored_name(p, f) for f in ("pt", "tf", "flax", "h5")]  # doctest: +NORMALIZE_WHITESPACE
['encoder.layer.0.attention.self.query.weight', 'bert/encoder/layer_._0/attention/self/query/kernel:0',
 'encoder.layer.0.attention.self.query.kernel', 'bert/encoder/layer_._0/attention/self/query/kernel']
"""

from __future__ import annotations

from dataclasses import dataclass

from encdec_core.configs import PretrainedConfig
from encdec_core.formats.shards import (
    FLAX_WEIGHTS_INDEX_NAME,
    FLAX_WEIGHTS_NAME,
    PT_WEIGHTS_INDEX_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    TF_WEIGHTS_INDEX_NAME,
    TF_WEIGHTS_NAME,
)
from encdec_core.tables import (
    Param,
    Tie,
    encoder_decoder_table,
    encoder_decoder_ties,
    model_table,
    model_ties,
)

FORMATS = ("pt", "tf", "flax", "bin", "h5", "msgpack")
SAFETENSORS_FORMATS = ("pt", "tf", "flax")
# format -> (single file, shard index) for the formats with files of their own
FILES = {
    "safetensors": (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME),
    "bin": (PT_WEIGHTS_NAME, PT_WEIGHTS_INDEX_NAME),
    "h5": (TF_WEIGHTS_NAME, TF_WEIGHTS_INDEX_NAME),
    "msgpack": (FLAX_WEIGHTS_NAME, FLAX_WEIGHTS_INDEX_NAME),
}
KINDS = ("encoder-decoder", "encoder", "decoder")
DECODER_ARCHS = ("LMHeadModel", "ForCausalLM", "ForMaskedLM", "GenerationDecoder")


def container(fmt: str) -> str:
    return "safetensors" if fmt in SAFETENSORS_FORMATS else fmt


def describe(fmt: str) -> str:
    """Human name of a format: ``model.safetensors (format "tf")``, ``tf_model.h5``."""
    single = FILES[container(fmt)][0]
    return f'{single} (format "{fmt}")' if fmt in SAFETENSORS_FORMATS else single


@dataclass(frozen=True)
class Tables:
    """The weights of one checkpoint kind: what the canonical file stores, what TF/Flax files hold, the ties."""

    stored: list[Param]  # canonical weights (tied copies left out, as HF's model.safetensors)
    full: list[Param]  # TF / Flax files: both sides of tie_encoder_decoder
    ties: list[Tie]


def tables_for(config: PretrainedConfig, kind: str, *, pooler: bool = True) -> Tables:
    """Tables of a ``kind`` checkpoint ("encoder-decoder", "encoder" or "decoder") with ``config``."""
    if kind == "encoder-decoder":
        stored, ties = encoder_decoder_table(config), encoder_decoder_ties(config)
        full = stored
        if config.tie_encoder_decoder:
            untied = config.copy()
            untied.tie_encoder_decoder = False
            full = encoder_decoder_table(untied)
        return Tables(stored, full, ties)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    stored = model_table(config, kind, add_pooling_layer=pooler)
    return Tables(stored, stored, model_ties(config, kind))


def stored_name(p: Param, fmt: str) -> str:
    """The key under which ``fmt`` stores the weight ``p``."""
    if fmt in ("pt", "bin"):
        return p.pt
    if fmt in ("tf", "h5"):
        return p.tf + (":0" if fmt == "tf" else "")
    if fmt in ("flax", "msgpack"):
        return p.flax.replace("/", ".") if fmt == "flax" else p.flax
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def framework_op(p: Param, fmt: str) -> str:
    return p.tf_op if fmt in ("tf", "h5") else p.flax_op if fmt in ("flax", "msgpack") else "identity"


__all__ = [
    "FORMATS",
    "SAFETENSORS_FORMATS",
    "FILES",
    "KINDS",
    "DECODER_ARCHS",
    "Tables",
    "container",
    "describe",
    "tables_for",
    "stored_name",
    "framework_op",
]
