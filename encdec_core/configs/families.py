"""The architectures' configs: each class's fields are exactly that model's HF keys, with HF's defaults.

Families share code by inheritance where Transformers' classes share arithmetic (RoBERTa,
XLM-RoBERTa and CamemBERT are BERT with another position rule; ELECTRA is BERT with an
embedding width of its own). What a backend builds is read from the class's structure flags
(:class:`~encdec_core.configs.base.PretrainedConfig`: ``layout``, ``pre_norm``, ``head``, ...)
and its vocabulary (``norm_eps``, ``num_layers``, ``embed_width``, ...), never from HF's keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from encdec_core.configs.base import ACTIVATIONS, PretrainedConfig, register_config
from encdec_core.errors import ConfigError

RELATIVE = ("relative_key", "relative_key_query")  # BERT's relative position attention types


def _check_activation(config: PretrainedConfig, key: str) -> None:
    if getattr(config, key) not in ACTIVATIONS:
        raise ConfigError(
            f"{config._owner()}: field '{key}' is {getattr(config, key)!r}, expected one of {sorted(ACTIVATIONS)}"
        )


def _encoder_only(config: PretrainedConfig, what: str) -> None:
    if config.is_decoder or config.add_cross_attention:
        raise ConfigError(f"{config._owner()}: {what} has no causal LM in Transformers: it can be the encoder only")


# ------------------------------------------------------------------------------- BERT and its relatives
@dataclass
class BertFamilyConfig(PretrainedConfig):
    """What BERT, RoBERTa, XLM-R, CamemBERT, BertGeneration and ELECTRA share: post-LN blocks, learned positions."""

    vocabulary: ClassVar[dict[str, str]] = {
        "norm_eps": "layer_norm_eps",
        "hidden_dropout": "hidden_dropout_prob",
        "attn_dropout": "attention_probs_dropout_prob",
        "embed_dropout": "hidden_dropout_prob",
        "act_name": "hidden_act",
        "num_positions": "max_position_embeddings",
    }
    head: ClassVar[str] = "bert"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072  # width of the feed-forward layer
    hidden_act: str = "gelu"  # exact (erf) GELU
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    position_embedding_type: str = "absolute"  # or relative_key / relative_key_query (self-attention)
    use_cache: bool = True
    pad_token_id: int | None = 0

    @property
    def relative_attention(self) -> str | None:
        return self.position_embedding_type if self.position_embedding_type in RELATIVE else None

    @property
    def relative_distances(self) -> int:
        """Rows of a relative attention's ``distance_embedding``: distances -(P-1) .. P-1."""
        return 2 * self.max_position_embeddings - 1

    def validate(self) -> None:
        self._check_heads()
        allowed = ("absolute", *RELATIVE)
        if self.position_embedding_type not in allowed:
            raise ConfigError(
                f"{self._owner()}: field 'position_embedding_type' is {self.position_embedding_type!r}; "
                f"expected one of {list(allowed)}"
            )
        _check_activation(self, "hidden_act")


@register_config
@dataclass
class BertConfig(BertFamilyConfig):
    """BERT (``model_type="bert"``), post-LayerNorm transformer with learned positions."""

    model_type: ClassVar[str] = "bert"

    type_vocab_size: int = 2
    classifier_dropout: float | None = None

    @property
    def token_types(self) -> int:
        return self.type_vocab_size


@register_config
@dataclass
class RobertaConfig(BertConfig):
    """RoBERTa: BERT with position ids counted from ``pad_token_id + 1`` over real tokens."""

    model_type: ClassVar[str] = "roberta"
    position_rule: ClassVar[str] = "roberta"
    head: ClassVar[str] = "roberta"

    vocab_size: int = 50265
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list | None = 2

    @property
    def position_limit(self) -> int:
        # positions count from padding_idx + 1, so the first pad + 1 rows are never a real token's
        pad = self.pad_token_id
        return self.max_position_embeddings - (pad + 1 if pad is not None else 0)


@register_config
@dataclass
class XLMRobertaConfig(RobertaConfig):
    """XLM-RoBERTa: RoBERTa's arithmetic and names under another model type."""

    model_type: ClassVar[str] = "xlm-roberta"
    vocab_size: int = 30522


@register_config
@dataclass
class CamembertConfig(RobertaConfig):
    """CamemBERT: RoBERTa's arithmetic and names under another model type."""

    model_type: ClassVar[str] = "camembert"
    vocab_size: int = 30522


@register_config
@dataclass
class BertGenerationConfig(BertFamilyConfig):
    """BertGeneration (Rothe et al.'s checkpoints): BERT without token types or pooler; its LM head is one linear."""

    model_type: ClassVar[str] = "bert-generation"
    head: ClassVar[str] = "bias"

    vocab_size: int = 50358
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    bos_token_id: int | None = 2
    eos_token_id: int | list | None = 1


@register_config
@dataclass
class ElectraConfig(BertConfig):
    """ELECTRA: BERT whose embeddings have a width of their own (``embedding_size``), projected to ``hidden_size``."""

    model_type: ClassVar[str] = "electra"
    head: ClassVar[str] = "electra"
    derived_keys: ClassVar[dict[str, str]] = {"embed_width": "embedding_size", "token_types": "type_vocab_size"}

    vocab_size: int = 30522
    embedding_size: int = 128
    hidden_size: int = 256
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    summary_type: str = "first"
    summary_use_proj: bool = True
    summary_activation: str | None = "gelu"
    summary_last_dropout: float = 0.1

    @property
    def embed_width(self) -> int:
        return self.embedding_size


# ------------------------------------------------------------------------------- GPT-2
@register_config
@dataclass
class GPT2Config(PretrainedConfig):
    """GPT-2: pre-LayerNorm transformer; HF names its widths ``n_embd``, ``n_head``, ..."""

    model_type: ClassVar[str] = "gpt2"
    layout: ClassVar[str] = "gpt2"
    pre_norm: ClassVar[bool] = True
    final_norm: ClassVar[bool] = True
    head: ClassVar[str] = "plain"
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }
    vocabulary: ClassVar[dict[str, str]] = {
        "norm_eps": "layer_norm_epsilon",
        "hidden_dropout": "resid_pdrop",
        "attn_dropout": "attn_pdrop",
        "embed_dropout": "embd_pdrop",
        "act_name": "activation_function",
        "num_positions": "n_positions",
    }

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # feed-forward width; None means 4 * n_embd
    activation_function: str = "gelu_new"  # tanh approximation of GELU
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    summary_type: str = "cls_index"
    summary_use_proj: bool = True
    summary_activation: str | None = None
    summary_proj_to_labels: bool = True
    summary_first_dropout: float = 0.1
    scale_attn_weights: bool = True  # divide scores by sqrt(head_dim)
    use_cache: bool = True
    scale_attn_by_inverse_layer_idx: bool = False  # also divide by (layer index + 1)
    reorder_and_upcast_attn: bool = False
    bos_token_id: int | None = 50256
    eos_token_id: int | list | None = 50256

    @property
    def intermediate_size(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def attention_scale(self, layer_idx: int) -> float:
        scale = super().attention_scale(layer_idx) if self.scale_attn_weights else 1.0
        if self.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        return scale

    def validate(self) -> None:
        self._check_heads()
        _check_activation(self, "activation_function")


# ------------------------------------------------------------------------------- DistilBERT
@register_config
@dataclass
class DistilBertConfig(PretrainedConfig):
    """DistilBERT (encoder only): post-LN blocks named ``transformer.layer.{i}``, no token types."""

    model_type: ClassVar[str] = "distilbert"
    layout: ClassVar[str] = "distilbert"
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "dim",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
    }
    vocabulary: ClassVar[dict[str, str]] = {
        "hidden_dropout": "dropout",
        "attn_dropout": "attention_dropout",
        "embed_dropout": "dropout",
        "act_name": "activation",
        "num_positions": "max_position_embeddings",
    }

    vocab_size: int = 30522
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False  # the position table is stored either way: loading reads it
    n_layers: int = 6
    n_heads: int = 12
    dim: int = 768
    hidden_dim: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    initializer_range: float = 0.02
    qa_dropout: float = 0.1
    seq_classif_dropout: float = 0.2
    pad_token_id: int | None = 0

    @property
    def intermediate_size(self) -> int:
        return self.hidden_dim

    @property
    def norm_eps(self) -> float:
        return 1e-12  # fixed in Transformers' DistilBERT, not a config key

    def validate(self) -> None:
        self._check_heads()
        _check_activation(self, "activation")
        _encoder_only(self, "DistilBERT")


# ------------------------------------------------------------------------------- BART / MBart decoders
@register_config
@dataclass
class BartConfig(PretrainedConfig):
    """BART, as the decoder of a composed model (``BartForCausalLM``): its ``decoder_*`` sizes are what is built.

    Learned positions with an offset of 2 rows, ``scale_embedding`` (sqrt(d_model) on the word
    embeddings), ``layernorm_embedding``, post-LN blocks; LayerNorm epsilon 1e-5 (fixed in Transformers).
    """

    model_type: ClassVar[str] = "bart"
    layout: ClassVar[str] = "bart"
    position_offset: ClassVar[int] = 2
    head: ClassVar[str] = "plain"
    generation_keys: ClassVar[tuple[str, ...]] = ("forced_eos_token_id",)
    derived_keys: ClassVar[dict[str, str]] = {"num_positions": "max_position_embeddings (+ 2)"}
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "d_model",
        "num_attention_heads": "decoder_attention_heads",
    }
    vocabulary: ClassVar[dict[str, str]] = {
        "hidden_dropout": "dropout",
        "attn_dropout": "attention_dropout",
        "embed_dropout": "dropout",
        "act_name": "activation_function",
        "act_dropout": "activation_dropout",
    }

    vocab_size: int = 50265
    max_position_embeddings: int = 1024
    d_model: int = 1024
    encoder_ffn_dim: int = 4096
    encoder_layers: int = 12
    encoder_attention_heads: int = 16
    decoder_ffn_dim: int = 4096
    decoder_layers: int = 12
    decoder_attention_heads: int = 16
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation_function: str = "gelu"
    init_std: float = 0.02
    encoder_layerdrop: float = 0.0
    decoder_layerdrop: float = 0.0
    classifier_dropout: float = 0.0
    use_cache: bool = True
    num_hidden_layers: int = 12  # Transformers writes the encoder's layer count here
    scale_embedding: bool = False
    is_encoder_decoder: bool = True
    bos_token_id: int | None = 0
    pad_token_id: int | None = 1
    eos_token_id: int | list | None = 2
    decoder_start_token_id: int | None = 2
    forced_eos_token_id: int | list | None = 2

    @property
    def num_layers(self) -> int:
        return self.decoder_layers

    @property
    def has_cross_attention(self) -> bool:
        return True  # BartForCausalLM's layers always have encoder_attn

    @property
    def intermediate_size(self) -> int:
        return self.decoder_ffn_dim

    @property
    def num_positions(self) -> int:
        return self.max_position_embeddings + self.position_offset  # the stored table's rows

    @property
    def position_limit(self) -> int:
        return self.max_position_embeddings

    @property
    def norm_eps(self) -> float:
        return 1e-5  # torch's LayerNorm default, which Transformers' BART keeps

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.d_model) if self.scale_embedding else 1.0

    @property
    def initializer_range(self) -> float:
        return self.init_std

    def _check_heads(self) -> None:
        for name in ("d_model", "decoder_attention_heads", "decoder_layers", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{self._owner()}: field '{name}' must be positive, got {getattr(self, name)}")
        if self.d_model % self.decoder_attention_heads:
            raise ConfigError(
                f"{self._owner()}: d_model {self.d_model} is not divisible by "
                f"decoder_attention_heads {self.decoder_attention_heads}"
            )

    def validate(self) -> None:
        self._check_heads()
        _check_activation(self, "activation_function")


@register_config
@dataclass
class MBartConfig(BartConfig):
    """MBart's decoder: BART's embeddings, pre-LN blocks, and a final ``layer_norm``."""

    model_type: ClassVar[str] = "mbart"
    pre_norm: ClassVar[bool] = True
    final_norm: ClassVar[bool] = True

    decoder_start_token_id: int | None = None


__all__ = [
    "BertFamilyConfig",
    "BertConfig",
    "RobertaConfig",
    "XLMRobertaConfig",
    "CamembertConfig",
    "BertGenerationConfig",
    "ElectraConfig",
    "GPT2Config",
    "DistilBertConfig",
    "BartConfig",
    "MBartConfig",
    "RELATIVE",
]
