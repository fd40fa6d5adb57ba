"""Every architecture's weight rows, declared once: BERT and its family, GPT-2, DistilBERT, BART / MBart.

A row names a module by its PyTorch path; :func:`encdec_core.tables.model_table` expands the rows of an
:class:`Architecture` for a config (``{i}`` per layer, rows with ``when=`` only where the config says so).
"""

from __future__ import annotations

from dataclasses import dataclass

from encdec_core.errors import ConfigError
from encdec_core.rows import Row

# ---------------------------------------------------------------------------- BERT / RoBERTa
BERT_EMBEDDINGS = [
    Row("embeddings.word_embeddings", "embedding_w", dims=("vocab_size", "embed_width")),
    Row("embeddings.position_embeddings", "embedding", dims=("num_positions", "embed_width")),
    Row("embeddings.token_type_embeddings", "embedding", when="token_types", dims=("token_types", "embed_width")),
    Row("embeddings.LayerNorm", "layernorm", dims=("embed_width",)),
    # ELECTRA: the embeddings' width to the blocks'
    Row("embeddings_project", "linear", when="projects_embeddings", dims=("hidden_size", "embed_width")),
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
    Row(
        "encoder.layer.{i}.attention.self.distance_embedding",
        "embedding",
        when="relative_attention",
        dims=("relative_distances", "head_dim"),
    ),
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
BERTGEN_LM_HEAD = [Row("lm_head.bias", "param", group="head", dims=("vocab_size",))]
ELECTRA_LM_HEAD = [
    Row("generator_predictions.dense", "linear", group="head", dims=("embed_width", "hidden_size")),
    Row("generator_predictions.LayerNorm", "layernorm", group="head", dims=("embed_width",)),
    Row("generator_lm_head.bias", "param", group="head", dims=("vocab_size",)),
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

# ---------------------------------------------------------------------------------- DistilBERT
DISTILBERT_EMBEDDINGS = BERT_EMBEDDINGS[:2] + [BERT_EMBEDDINGS[3]]
DISTILBERT_LAYER = [
    *(Row(f"transformer.layer.{{i}}.attention.{n}", "linear") for n in ("q_lin", "k_lin", "v_lin")),
    Row("transformer.layer.{i}.attention.out_lin", "linear", dims=("hidden_size", "hidden_size")),
    Row("transformer.layer.{i}.sa_layer_norm", "layernorm", dims=("hidden_size",)),
    Row("transformer.layer.{i}.ffn.lin1", "linear", dims=("intermediate_size", "hidden_size")),
    Row("transformer.layer.{i}.ffn.lin2", "linear", dims=("hidden_size", "intermediate_size")),
    Row("transformer.layer.{i}.output_layer_norm", "layernorm", dims=("hidden_size",)),
]

# ------------------------------------------------------------------------------- BART / MBart
BART_EMBEDDINGS = [
    Row("embed_tokens", "embedding", dims=("vocab_size", "hidden_size")),
    Row("embed_positions", "embedding", dims=("num_positions", "hidden_size")),  # offset: 2 rows more
    Row("layernorm_embedding", "layernorm", dims=("hidden_size",)),
]


def _bart_attention(name: str, group: str) -> list[Row]:
    base = f"layers.{{i}}.{name}"
    rows = [Row(f"{base}.{n}", "linear", group=group) for n in ("k_proj", "v_proj", "q_proj", "out_proj")]
    return rows + [Row(f"{base}_layer_norm", "layernorm", group=group, dims=("hidden_size",))]


BART_LAYER = _bart_attention("self_attn", "base") + [
    Row("layers.{i}.fc1", "linear", dims=("intermediate_size", "hidden_size")),
    Row("layers.{i}.fc2", "linear", dims=("hidden_size", "intermediate_size")),
    Row("layers.{i}.final_layer_norm", "layernorm", dims=("hidden_size",)),
]
BART_CROSS = _bart_attention("encoder_attn", "cross")

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
    output_weight: tuple[str, str] | None  # (LM output matrix, the embedding it is tied to); None: no causal LM
    output_bias: tuple[str, str] | None  # (LM output bias, the head bias it always is)
    final: tuple[Row, ...] = ()  # rows after the layers (GPT-2's ln_f)


def _roberta(model_type: str) -> Architecture:
    return Architecture(
        model_type,
        BERT_EMBEDDINGS,
        BERT_LAYER,
        BERT_CROSS,
        BERT_POOLER,
        ROBERTA_LM_HEAD,
        base_prefix=("roberta", "roberta", "roberta"),
        encoder_prefix=("", "roberta", ""),  # Transformers' TF main layer is "roberta" for XLM-R and CamemBERT too
        output_weight=("lm_head.decoder.weight", "roberta.embeddings.word_embeddings.weight"),
        output_bias=("lm_head.decoder.bias", "lm_head.bias"),
    )


def _bart(model_type: str, final: tuple[Row, ...]) -> Architecture:
    return Architecture(
        model_type,
        BART_EMBEDDINGS,
        BART_LAYER,
        BART_CROSS,
        [],
        [],
        base_prefix=("model.decoder", "model/decoder", "model/decoder"),  # BartForCausalLM's decoder
        encoder_prefix=("", "model/decoder", ""),
        output_weight=("lm_head.weight", "model.decoder.embed_tokens.weight"),
        output_bias=None,
        final=final,
    )


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
    "roberta": _roberta("roberta"),
    "xlm-roberta": _roberta("xlm-roberta"),
    "camembert": _roberta("camembert"),
    "bert-generation": Architecture(
        "bert-generation",
        BERT_EMBEDDINGS,
        BERT_LAYER,
        BERT_CROSS,
        [],  # no pooler
        BERTGEN_LM_HEAD,
        base_prefix=("bert", "bert", "bert"),
        encoder_prefix=("", "bert", ""),
        output_weight=("lm_head.decoder.weight", "bert.embeddings.word_embeddings.weight"),
        output_bias=("lm_head.decoder.bias", "lm_head.bias"),
    ),
    "electra": Architecture(
        "electra",
        BERT_EMBEDDINGS,
        BERT_LAYER,
        BERT_CROSS,
        [],  # no pooler
        ELECTRA_LM_HEAD,
        base_prefix=("electra", "electra", "electra"),
        encoder_prefix=("", "electra", ""),
        output_weight=("generator_lm_head.weight", "electra.embeddings.word_embeddings.weight"),
        output_bias=None,  # generator_lm_head.bias is a weight of its own
    ),
    "distilbert": Architecture(
        "distilbert",
        DISTILBERT_EMBEDDINGS,
        DISTILBERT_LAYER,
        [],
        [],
        [],
        base_prefix=("distilbert", "distilbert", "distilbert"),
        encoder_prefix=("", "distilbert", ""),
        output_weight=None,  # encoder only
        output_bias=None,
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
    "bart": _bart("bart", ()),
    "mbart": _bart("mbart", (Row("layer_norm", "layernorm", dims=("hidden_size",)),)),
}


def architecture(model_type: str) -> Architecture:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ConfigError(
            f"model_type {model_type!r} has no weight table; expected one of {sorted(ARCHITECTURES)}"
        ) from None


__all__ = ["Architecture", "ARCHITECTURES", "architecture", "ENC_TO_DEC_PROJ"]
