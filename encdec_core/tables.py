"""Weight tables: the one declaration of every weight name in the three frameworks.

A table is a list of :class:`Row`. A row names a *module* by its PyTorch path (the HF
``state_dict`` name without the parameter leaf, ``{i}`` standing for a layer index) and its
kind; the kind lists the module's parameters and, for each, the leaf name in PT, TF and Flax
and the array operation that turns the PT array into the TF / Flax one (each with its
inverse). The TF and Flax module paths are written in the row when they differ from the
default spelling, which is mechanical and documented here rather than guessed:

* TF: ``.`` becomes ``/`` and a layer index ``x.{i}`` becomes ``x_._{i}`` (HF's Keras names);
* Flax: ``.`` becomes ``/``.

Expanding a table for a config (:func:`model_table`) gives one :class:`Param` per weight with
concrete names: ``Param.pt`` is the canonical name used in ``model.safetensors``.

Glossary of layouts: PT ``nn.Linear`` stores ``(out, in)``; TF/Flax ``Dense`` kernels store
``(in, out)``. GPT-2's ``Conv1D`` stores ``(in, out)`` in PT and TF, ``(out, in)`` in Flax,
and its TF bias is ``(1, out)``.

>>> [p.pt for p in model_table(BertConfig(num_hidden_layers=1), "encoder")][:2]
['embeddings.word_embeddings.weight', 'embeddings.position_embeddings.weight']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from encdec_core.configs import BertConfig, GPT2Config, PretrainedConfig, RobertaConfig  # noqa: F401
from encdec_core.errors import ConfigError


class Op(NamedTuple):
    """An array operation with its inverse (by name), applied PT -> other framework."""

    name: str
    apply: Callable[[np.ndarray], np.ndarray]
    inverse: str


OPS: dict[str, Op] = {
    "identity": Op("identity", lambda a: a, "identity"),
    "transpose": Op("transpose", lambda a: a.T, "transpose"),  # (out, in) <-> (in, out)
    "add_axis0": Op("add_axis0", lambda a: a.reshape((1, *a.shape)), "squeeze_axis0"),  # (n,) -> (1, n)
    "squeeze_axis0": Op("squeeze_axis0", lambda a: a.reshape(a.shape[1:]), "add_axis0"),
}


def apply_op(name: str, array: np.ndarray, *, inverse: bool = False) -> np.ndarray:
    """Apply the op ``name`` (or its inverse) to a numpy array."""
    op = OPS[name]
    return OPS[op.inverse].apply(array) if inverse else op.apply(array)


# kind -> [(pt leaf, tf leaf, flax leaf, op PT->TF, op PT->Flax)]
KINDS: dict[str, list[tuple[str, str, str, str, str]]] = {
    "linear": [
        ("weight", "kernel", "kernel", "transpose", "transpose"),
        ("bias", "bias", "bias", "identity", "identity"),
    ],
    "conv1d": [
        ("weight", "weight", "kernel", "identity", "transpose"),
        ("bias", "bias", "bias", "add_axis0", "identity"),
    ],
    "layernorm": [
        ("weight", "gamma", "scale", "identity", "identity"),
        ("bias", "beta", "bias", "identity", "identity"),
    ],
    "embedding": [("weight", "embeddings", "embedding", "identity", "identity")],
    # BERT's TF word embedding is a bare variable named "weight"
    "embedding_w": [("weight", "weight", "embedding", "identity", "identity")],
    # a lone parameter whose name is the row's path (e.g. the LM head's output bias)
    "param": [("", "", "", "identity", "identity")],
    # an LM output projection kept apart from the embeddings (tie_word_embeddings=false)
    "linear_nobias": [("weight", "kernel", "kernel", "transpose", "transpose")],
}
# Which of a row's ``dims`` size each leaf of its kind, in PT layout (as KINDS lists the leaves):
# a linear weight is (out, in), its bias (out,); a GPT-2 Conv1D weight is (in, out).
LEAF_DIMS: dict[str, list[tuple[int, ...]]] = {
    "linear": [(0, 1), (0,)],
    "conv1d": [(0, 1), (1,)],
    "layernorm": [(0,), (0,)],
    "embedding": [(0, 1)],
    "embedding_w": [(0, 1)],
    "param": [(0,)],
    "linear_nobias": [(0, 1)],
}


@dataclass(frozen=True)
class Row:
    """One module: PT path, kind, optional TF/Flax paths, group, and whether per layer."""

    pt: str
    kind: str
    tf: str | None = None
    flax: str | None = None
    group: str = "base"  # base | cross | pooler | head | proj: decides what is expected new
    # config sizes giving the row's PT shape, by the configs' vocabulary ("vocab_size", "hidden_size"):
    # (out, in) for linear, (in, out) for conv1d, (rows, width) for embeddings, (n,) for norms and params.
    # Rows without them (attention projections, whose widths depend on the pairing) are not pre-checked.
    dims: tuple[str, ...] = ()

    def tf_path(self) -> str:
        if self.tf is not None:
            return self.tf
        return "/".join(self.pt.split(".")).replace("/{i}", "_._{i}")

    def flax_path(self) -> str:
        return self.flax if self.flax is not None else self.pt.replace(".", "/")


@dataclass(frozen=True)
class Param:
    """One weight, with its name in each framework and the ops between them."""

    pt: str  # canonical name (HF PyTorch state_dict)
    tf: str  # HF TF variable name, without the model scope and ":0"
    flax: str  # HF Flax parameter path, "/"-joined
    tf_op: str  # op turning the PT array into the TF one
    flax_op: str  # op turning the PT array into the Flax one
    group: str
    dims: tuple[str, ...] = ()  # config sizes giving the PT shape (see Row.dims); () if not declared


@dataclass(frozen=True)
class Tie:
    """A PT weight that is the same tensor as another (not stored in the checkpoint)."""

    pt: str
    source: str
    flag: str  # the config flag that enables the tie


def _join(prefix: str, path: str, sep: str) -> str:
    return f"{prefix}{sep}{path}" if prefix and path else prefix or path


def expand(rows: list[Row], n_layers: int, prefixes: tuple[str, str, str] = ("", "", "")) -> list[Param]:
    """Rows -> concrete params; ``{i}`` rows repeat for each layer; prefixes (pt, tf, flax)."""
    out: list[Param] = []
    for row in rows:
        layers = range(n_layers) if "{i}" in row.pt else [None]
        for i in layers:

            def fmt(s: str, i=i) -> str:
                return s if i is None else s.replace("{i}", str(i))

            for leaf, (pt_leaf, tf_leaf, fx_leaf, tf_op, fx_op) in enumerate(KINDS[row.kind]):
                out.append(
                    Param(
                        pt=_join(_join(prefixes[0], fmt(row.pt), "."), pt_leaf, "."),
                        tf=_join(_join(prefixes[1], fmt(row.tf_path()), "/"), tf_leaf, "/"),
                        flax=_join(_join(prefixes[2], fmt(row.flax_path()), "/"), fx_leaf, "/"),
                        tf_op=tf_op,
                        flax_op=fx_op,
                        group=row.group,
                        dims=tuple(row.dims[j] for j in LEAF_DIMS[row.kind][leaf]) if row.dims else (),
                    )
                )
    return out


# ---------------------------------------------------------------------------- BERT / RoBERTa
BERT_EMBEDDINGS = [
    Row("embeddings.word_embeddings", "embedding_w", dims=("vocab_size", "hidden_size")),
    Row("embeddings.position_embeddings", "embedding", dims=("num_positions", "hidden_size")),
    Row("embeddings.token_type_embeddings", "embedding", dims=("type_vocab_size", "hidden_size")),
    Row("embeddings.LayerNorm", "layernorm", dims=("hidden_size",)),
]


def _bert_attention(name: str, group: str) -> list[Row]:
    base = f"encoder.layer.{{i}}.{name}"
    return [
        Row(f"{base}.self.query", "linear", group=group),
        Row(f"{base}.self.key", "linear", group=group),
        Row(f"{base}.self.value", "linear", group=group),
        Row(f"{base}.output.dense", "linear", group=group),
        Row(f"{base}.output.LayerNorm", "layernorm", group=group, dims=("hidden_size",)),
    ]


BERT_LAYER = _bert_attention("attention", "base") + [
    Row("encoder.layer.{i}.intermediate.dense", "linear", dims=("intermediate_size", "hidden_size")),
    Row("encoder.layer.{i}.output.dense", "linear", dims=("hidden_size", "intermediate_size")),
    Row("encoder.layer.{i}.output.LayerNorm", "layernorm", dims=("hidden_size",)),
]
BERT_CROSS = _bert_attention("crossattention", "cross")
BERT_POOLER = [Row("pooler.dense", "linear", group="pooler", dims=("hidden_size", "hidden_size"))]
BERT_LM_HEAD = [
    Row("cls.predictions.transform.dense", "linear", tf="mlm___cls/predictions/transform/dense", group="head"),
    Row(
        "cls.predictions.transform.LayerNorm", "layernorm", tf="mlm___cls/predictions/transform/LayerNorm", group="head"
    ),
    Row("cls.predictions.bias", "param", tf="mlm___cls/predictions/bias", group="head", dims=("vocab_size",)),
]
ROBERTA_LM_HEAD = [
    Row("lm_head.dense", "linear", group="head"),
    Row("lm_head.layer_norm", "layernorm", group="head"),
    Row("lm_head.bias", "param", group="head", dims=("vocab_size",)),
]

# -------------------------------------------------------------------------------------- GPT-2
GPT2_EMBEDDINGS = [
    Row("wte", "embedding", dims=("vocab_size", "hidden_size")),
    Row("wpe", "embedding", dims=("num_positions", "hidden_size")),
]
GPT2_LAYER = [
    Row("h.{i}.ln_1", "layernorm", dims=("hidden_size",)),
    Row("h.{i}.attn.c_attn", "conv1d"),
    Row("h.{i}.attn.c_proj", "conv1d", dims=("hidden_size", "hidden_size")),
    Row("h.{i}.ln_2", "layernorm", dims=("hidden_size",)),
    Row("h.{i}.mlp.c_fc", "conv1d", dims=("hidden_size", "intermediate_size")),
    Row("h.{i}.mlp.c_proj", "conv1d", dims=("intermediate_size", "hidden_size")),
]
GPT2_FINAL = [Row("ln_f", "layernorm", dims=("hidden_size",))]
GPT2_CROSS = [
    Row("h.{i}.ln_cross_attn", "layernorm", group="cross", dims=("hidden_size",)),
    Row("h.{i}.crossattention.q_attn", "conv1d", group="cross"),
    Row("h.{i}.crossattention.c_attn", "conv1d", group="cross"),
    Row("h.{i}.crossattention.c_proj", "conv1d", group="cross"),
]

ENC_TO_DEC_PROJ = [Row("enc_to_dec_proj", "linear", group="proj")]


@dataclass(frozen=True)
class Architecture:
    """How one model_type is laid out as an encoder and as a causal LM (decoder).

    ``base_prefix`` is where the base model sits inside the LM (``bert.``): a checkpoint of
    the base model alone loads into the LM by adding it, as HF does.
    """

    model_type: str
    embeddings: list[Row]
    layer: list[Row]
    cross: list[Row]
    pooler: list[Row]
    head: list[Row]
    base_prefix: tuple[str, str, str]  # base model inside the LM: (pt, tf, flax)
    encoder_prefix: tuple[str, str, str]  # base model standalone: (pt, tf, flax)
    output_weight: tuple[str, str]  # (LM output matrix, the embedding it is tied to)
    output_bias: tuple[str, str] | None  # (LM output bias, the head bias it always is)
    final: tuple[Row, ...] = ()  # rows after the layers (GPT-2's ln_f)


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(
        "bert",
        BERT_EMBEDDINGS,
        BERT_LAYER,
        BERT_CROSS,
        BERT_POOLER,
        BERT_LM_HEAD,
        base_prefix=("bert", "bert", "bert"),
        encoder_prefix=("", "bert", ""),
        output_weight=("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
        output_bias=("cls.predictions.decoder.bias", "cls.predictions.bias"),
    ),
    "roberta": Architecture(
        "roberta",
        BERT_EMBEDDINGS,
        BERT_LAYER,
        BERT_CROSS,
        BERT_POOLER,
        ROBERTA_LM_HEAD,
        base_prefix=("roberta", "roberta", "roberta"),
        encoder_prefix=("", "roberta", ""),
        output_weight=("lm_head.decoder.weight", "roberta.embeddings.word_embeddings.weight"),
        output_bias=("lm_head.decoder.bias", "lm_head.bias"),
    ),
    "gpt2": Architecture(
        "gpt2",
        GPT2_EMBEDDINGS,
        GPT2_LAYER,
        GPT2_CROSS,
        [],
        [],
        base_prefix=("transformer", "transformer", "transformer"),
        encoder_prefix=("", "transformer", ""),
        output_weight=("lm_head.weight", "transformer.wte.weight"),
        output_bias=None,
        final=tuple(GPT2_FINAL),
    ),
}


def architecture(model_type: str) -> Architecture:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ConfigError(
            f"model_type {model_type!r} has no weight table; expected one of {sorted(ARCHITECTURES)}"
        ) from None


def model_table(config: PretrainedConfig, role: str, *, add_pooling_layer: bool = True) -> list[Param]:
    """Every stored weight of a standalone model: ``role`` is "encoder" (base model) or "decoder" (causal LM).

    Cross-attention rows appear when ``config.add_cross_attention``; the pooler only in the
    encoder role (HF's causal LMs drop it); the head only in the decoder role.
    """
    arch = architecture(config.model_type)
    rows = list(arch.embeddings) + list(arch.layer) + (list(arch.cross) if config.add_cross_attention else [])
    rows += list(arch.final)
    if role == "encoder":
        rows += arch.pooler if add_pooling_layer else []
        return expand(rows, config.num_hidden_layers, arch.encoder_prefix)
    if role != "decoder":
        raise ValueError(f"role must be 'encoder' or 'decoder', got {role!r}")
    return (
        expand(rows, config.num_hidden_layers, arch.base_prefix) + expand(list(arch.head), 0) + untied_head_rows(config)
    )


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
    return expand([Row(name, "linear_nobias", group="head", dims=("vocab_size", "hidden_size"))], 0)


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
