"""Weight tables: the one declaration of every weight name in the three frameworks.

A table is a list of :class:`Row`. A row names a *module* by its PyTorch path (the HF
``state_dict`` name without the parameter leaf, ``{i}`` standing for a layer index) and its
kind; the kind lists the module's parameters and, for each, the leaf name in PT, TF and Flax
and the array operation that turns the PT array into the TF / Flax one (each with its
inverse). The TF and Flax module paths are written in the row when they differ from the
default spelling, which is mechanical and documented here rather than guessed:

* TF: ``.`` becomes ``/`` and a layer index ``x.{i}`` becomes ``x_._{i}`` (HF's Keras names);
* Flax: ``.`` becomes ``/``.

The machinery (kinds, rows, ops) is :mod:`encdec_core.rows`; every architecture's rows are
declared in :mod:`encdec_core.architectures`. Expanding a table for a config (:func:`model_table`) gives one :class:`Param` per weight with
concrete names: ``Param.pt`` is the canonical name used in ``model.safetensors``.

Glossary of layouts: PT ``nn.Linear`` stores ``(out, in)``; TF/Flax ``Dense`` kernels store
``(in, out)``. GPT-2's ``Conv1D`` stores ``(in, out)`` in PT and TF, ``(out, in)`` in Flax,
and its TF bias is ``(1, out)``.

>>> [p.pt for p in model_table(BertConfig(num_hidden_layers=1), "encoder")][:2]
['embeddings.word_embeddings.weight', 'embeddings.position_embeddings.weight']
"""

from __future__ import annotations

from encdec_core.architectures import ARCHITECTURES, ENC_TO_DEC_PROJ, Architecture, architecture
from encdec_core.configs import BertConfig, PretrainedConfig  # noqa: F401  (BertConfig: the doctest)
from encdec_core.errors import ConfigError
from encdec_core.rows import KINDS, LEAF_DIMS, OPS, Op, Param, Row, Tie, _join, apply_op, expand  # noqa: F401


def model_table(config: PretrainedConfig, role: str, *, add_pooling_layer: bool = True) -> list[Param]:
    """Every stored weight of a standalone model: ``role`` is "encoder" (base model) or "decoder" (causal LM).

    Cross-attention rows appear when ``config.has_cross_attention``; the pooler only in the
    encoder role (HF's causal LMs drop it); the head only in the decoder role.
    """
    arch = architecture(config.model_type)
    rows = list(arch.embeddings) + list(arch.layer) + (list(arch.cross) if config.has_cross_attention else [])
    rows = [r for r in rows + list(arch.final) if not r.when or getattr(config, r.when)]
    if role == "encoder":
        rows += arch.pooler if add_pooling_layer else []
        return expand(rows, config.num_layers, arch.encoder_prefix)
    if role != "decoder":
        raise ValueError(f"role must be 'encoder' or 'decoder', got {role!r}")
    if arch.output_weight is None:
        raise ConfigError(f"model_type {config.model_type!r} has no causal LM: it can be the encoder only")
    return expand(rows, config.num_layers, arch.base_prefix) + expand(list(arch.head), 0) + untied_head_rows(config)


def model_ties(config: PretrainedConfig, role: str) -> list[Tie]:
    """Weights of the PT causal LM that share another's storage and are not saved."""
    if role != "decoder":
        return []
    arch = architecture(config.model_type)
    ties = [Tie(*arch.output_bias, "always")] if arch.output_bias else []
    if config.tie_word_embeddings:
        ties.append(Tie(*arch.output_weight, "tie_word_embeddings"))
    return ties


def untied_head_rows(config: PretrainedConfig) -> list[Param]:
    """The LM output matrix as a stored weight of its own when ``tie_word_embeddings`` is false."""
    if config.tie_word_embeddings:
        return []
    name = architecture(config.model_type).output_weight[0].removesuffix(".weight")
    return expand([Row(name, "linear_nobias", group="head", dims=("vocab_size", "embed_width"))], 0)


def prefixed(params: list[Param], pt: str, tf: str, flax: str) -> list[Param]:
    """Place a sub-model's params under a parent (``encoder.`` / ``encoder/`` / ``encoder/``)."""
    return [
        Param(_join(pt, p.pt, "."), _join(tf, p.tf, "/"), _join(flax, p.flax, "/"), p.tf_op, p.flax_op, p.group, p.dims)
        for p in params
    ]


def encoder_decoder_table(config) -> list[Param]:
    """Every stored weight of an encoder-decoder model (``EncoderDecoderConfig``).

    With ``tie_encoder_decoder`` the encoder's weights are the decoder base's, and only the
    decoder's names are stored (as HF 4.57 saves them).
    """
    enc = prefixed(model_table(config.encoder, "encoder"), "encoder", "encoder", "encoder")
    dec = prefixed(model_table(config.decoder, "decoder"), "decoder", "decoder", "decoder")
    proj = expand(ENC_TO_DEC_PROJ, 0) if needs_projection(config) else []
    tied = {t.pt for t in encoder_decoder_ties(config)}
    return [p for p in enc + dec + proj if p.pt not in tied]


def encoder_decoder_ties(config) -> list[Tie]:
    """The decoder's LM ties, and with ``tie_encoder_decoder`` its base tied to the encoder.

    BERTShare/RoBERTaShare (Rothe et al.): every decoder base weight whose name also exists in
    the encoder is the encoder's; cross-attention (decoder only) stays the decoder's own.
    """
    ties = [Tie(f"decoder.{t.pt}", f"decoder.{t.source}", t.flag) for t in model_ties(config.decoder, "decoder")]
    if not config.tie_encoder_decoder:
        return ties
    base = architecture(config.decoder.model_type).base_prefix[0] + "."
    enc_names = {p.pt for p in model_table(config.encoder, "encoder")}
    shared = [
        p.pt for p in model_table(config.decoder, "decoder") if p.pt.startswith(base) and p.pt[len(base) :] in enc_names
    ]
    # HF stores the decoder's names and drops the encoder's, so the encoder side is the tie
    ties += [Tie(f"encoder.{n[len(base) :]}", f"decoder.{n}", "tie_encoder_decoder") for n in shared]
    # the LM output matrix follows the decoder embeddings, which are now the encoder's
    return [Tie(t.pt, _resolve(t.source, ties), t.flag) for t in ties]


def tied_copies(config) -> list[Tie]:
    """The ``tie_encoder_decoder`` ties whose encoder side a checkpoint stores as well (both copies).

    Transformers 4.57 writes the decoder's copy only; 5.x ignores the flag, so from a one-copy
    checkpoint it builds a random encoder. Writing both copies serves both: 4.57 loads them and
    ties the encoder to the decoder's, 5.x loads each into its own module (the same numbers).
    """
    if not getattr(config, "tie_encoder_decoder", False) or getattr(config, "decoder", None) is None:
        return []
    return [t for t in encoder_decoder_ties(config) if t.flag == "tie_encoder_decoder"]


def with_tied_copies(config, arrays: dict) -> dict:
    """``arrays`` (canonical name -> array of the stored weights) plus the encoder copies of :func:`tied_copies`."""
    copies = {t.pt: arrays[t.source] for t in tied_copies(config) if t.source in arrays}
    return {**arrays, **copies} if copies else arrays


def _resolve(name: str, ties: list[Tie]) -> str:
    """Follow a chain of ties to the stored weight."""
    by_name = {t.pt: t.source for t in ties}
    while name in by_name:
        name = by_name[name]
    return name


def needs_projection(config) -> bool:
    """``enc_to_dec_proj`` exists when widths differ and the decoder does not declare the encoder's."""
    return (
        config.encoder.hidden_size != config.decoder.hidden_size and config.decoder.cross_attention_hidden_size is None
    )


__all__ = [
    "OPS",
    "Op",
    "LEAF_DIMS",
    "KINDS",
    "Row",
    "Param",
    "Tie",
    "Architecture",
    "ARCHITECTURES",
    "apply_op",
    "expand",
    "architecture",
    "model_table",
    "model_ties",
    "untied_head_rows",
    "prefixed",
    "encoder_decoder_table",
    "encoder_decoder_ties",
    "needs_projection",
    "tied_copies",
    "with_tied_copies",
]
