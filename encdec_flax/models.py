"""Every family in Flax: encoders and causal LMs with optional cross-attention.

Each architecture is a ``flax.linen`` module (``BertModule``, ``GPT2LMHeadModule``, ...)
whose parameter tree is HF's ``flax_model.msgpack`` tree, and a model class with PyTorch's
name (``BertModel``, ``GPT2LMHeadModel``, ...) that holds the parameters, loads and saves
them (:class:`~encdec_flax.modeling_utils.FlaxPreTrainedModel`). The BERT family (BERT,
RoBERTa, XLM-RoBERTa, CamemBERT, BertGeneration, ELECTRA, DistilBERT) is one module read
through the config's structure flags (``position_rule``, ``token_types``, ``embed_width``,
``projects_embeddings``, ``layout``, ``relative_attention``); GPT-2 and the BART / MBart
decoders are the other bases. A causal LM is a base model plus the LM head ``config.head``
whose output matrix is the input embedding matrix unless ``tie_word_embeddings`` is off.

``cache`` arguments are the static decoder cache described in
:meth:`encdec_flax.encoder_decoder.FlaxEncoderDecoderModel.init_cache`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from encdec_core.architectures import architecture
from encdec_core.configs import BartConfig, BertConfig, GPT2Config, PretrainedConfig, RobertaConfig
from encdec_core.outputs import BaseModelOutput, CausalLMOutput
from encdec_core.registry import register_model, register_variant
from encdec_flax.layers import Dtype, LayerNorm, Layers, activation, dot_last, run_stack
from encdec_flax.modeling_utils import FlaxPreTrainedModel, cross_entropy


def roberta_position_ids(input_ids: jax.Array, padding_idx: int, past=0) -> jax.Array:
    """RoBERTa's positions: count real tokens from ``padding_idx + 1``; padding keeps ``padding_idx``.

    With a cache, ``past`` (the cache index) is added, assuming the cached tokens were real, as PyTorch does.
    """
    keep = (input_ids != padding_idx).astype(jnp.int32)
    return (jnp.cumsum(keep, axis=1) + past) * keep + padding_idx  # (B,T)


class Embeddings(nn.Module):
    """BERT-family input embeddings: word + token type (``config.token_types`` rows; none when 0) + position,
    then LayerNorm, all of width ``config.embed_width``. The position table is always stored but not added
    with ``config.relative_attention`` (Transformers' rule); ``config.position_rule`` "roberta" counts
    positions over real tokens (:func:`roberta_position_ids`)."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        c, w = self.config, self.config.embed_width
        self.word_embeddings = nn.Embed(c.vocab_size, w, dtype=self.dtype)
        self.position_embeddings = nn.Embed(c.num_positions, w, dtype=self.dtype)
        if c.token_types:
            self.token_type_embeddings = nn.Embed(c.token_types, w, dtype=self.dtype)
        self.LayerNorm = LayerNorm(c, self.dtype)
        self.dropout = nn.Dropout(c.embed_dropout)

    def __call__(self, input_ids, position_ids=None, token_type_ids=None, past=0, deterministic=True):
        c = self.config
        x = self.word_embeddings(input_ids)  # (B,T,W)
        if c.token_types:
            x = x + self.token_type_embeddings(jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        if position_ids is None:
            if c.position_rule == "roberta":  # the rule Transformers' Flax wrapper skipped
                position_ids = roberta_position_ids(input_ids, c.pad_token_id, past)
            else:
                position_ids = past + jnp.arange(input_ids.shape[1])[None]  # (1,T)
        positions = self.position_embeddings(position_ids)  # looked up either way: the table is a parameter
        if not c.relative_attention:
            x = x + positions
        return self.dropout(self.LayerNorm(x), deterministic=deterministic)


class Encoder(nn.Module):
    """BERT's ``encoder`` (DistilBERT's ``transformer``), holding the layer stack ``layer``."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        self.layer = Layers(self.config, dtype=self.dtype)


class Pooler(nn.Module):
    """tanh(dense(first token)): BERT's sentence vector; unused by seq2seq but kept lossless."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(nn.Dense(self.config.hidden_size, dtype=self.dtype, name="dense")(x[:, 0]))


def _base_outputs(x, extra, pooled=None) -> BaseModelOutput:
    return BaseModelOutput(
        last_hidden_state=x,
        pooler_output=pooled,
        hidden_states=tuple(extra["hidden_states"]) if extra["hidden_states"] else None,
        past_key_values=extra["cache"],
        attentions=extra["attentions"],
        cross_attentions=extra["cross_attentions"],
    )


class BaseModule(nn.Module):
    """A base model: embeddings (:meth:`embed`), the layer stack (:meth:`layers_module`), an optional final
    LayerNorm (:meth:`final`) and pooler (:meth:`pool`); the one ``__call__`` of BERT, GPT-2 and BART."""

    config: PretrainedConfig
    dtype: Dtype = jnp.float32

    causal = True  # a decoder's self-attention (BERT's follows config.is_decoder)

    def cross_kv(self, enc):
        return self.layers_module().cross_kv(enc)

    def final(self, x):
        return x

    def pool(self, x):
        return None

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        cache=None,
        deterministic=True,
        output_attentions=False,
        output_hidden_states=False,
    ) -> BaseModelOutput:
        past = 0 if cache is None else cache.index
        x = self.embed(input_ids, position_ids, token_type_ids, past, deterministic)  # (B,T,D)
        x, extra = run_stack(
            self.layers_module(),
            x,
            attention_mask=attention_mask,
            causal=self.causal or self.config.is_decoder,
            enc=encoder_hidden_states,
            enc_mask=encoder_attention_mask,
            cache=cache,
            deterministic=deterministic,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        x = self.final(x)
        if output_hidden_states:
            extra["hidden_states"].append(x)  # HF's last entry is after the final norm (GPT-2 ln_f, MBart)
        return _base_outputs(x, extra, self.pool(x))


def _arange_positions(input_ids, position_ids, past):
    """GPT-2's and BART's positions count regardless of padding: past .. past + T - 1 unless given."""
    return past + jnp.arange(input_ids.shape[1])[None] if position_ids is None else position_ids  # (1,T)


class BertModule(BaseModule):
    """The BERT family: an encoder, or a decoder's base when ``is_decoder`` (causal) / ``add_cross_attention``.

    ``add_pooling_layer`` None: a pooler where the family's table has one (not BertGeneration,
    ELECTRA, DistilBERT). ELECTRA projects its embeddings (``embeddings_project``) to the blocks' width.
    """

    add_pooling_layer: bool | None = None
    causal = False

    def setup(self):
        c = self.config
        self.embeddings = Embeddings(c, self.dtype)
        if c.projects_embeddings:
            self.embeddings_project = nn.Dense(c.hidden_size, dtype=self.dtype)
        setattr(self, self._stack_name(), Encoder(c, self.dtype))
        if self._pooled():
            self.pooler = Pooler(c, self.dtype)

    def _stack_name(self) -> str:
        return "transformer" if self.config.layout == "distilbert" else "encoder"

    def _pooled(self) -> bool:
        pooled = self.add_pooling_layer
        return bool(architecture(self.config.model_type).pooler) if pooled is None else pooled

    def layers_module(self) -> Layers:
        return getattr(self, self._stack_name()).layer

    def word_embedding(self) -> jax.Array:
        return self.embeddings.word_embeddings.embedding  # (V,W)

    def embed(self, input_ids, position_ids, token_type_ids, past, deterministic):
        x = self.embeddings(input_ids, position_ids, token_type_ids, past, deterministic)
        return self.embeddings_project(x) if self.config.projects_embeddings else x

    def pool(self, x):
        return self.pooler(x) if self._pooled() else None


class GPT2Module(BaseModule):
    """GPT-2's transformer: token + position embeddings, pre-LN blocks ``h``, final LayerNorm ``ln_f``."""

    def setup(self):
        c = self.config
        self.wte = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype)
        self.wpe = nn.Embed(c.num_positions, c.hidden_size, dtype=self.dtype)
        self.drop = nn.Dropout(c.embed_dropout)
        self.h = Layers(c, dtype=self.dtype)
        self.ln_f = LayerNorm(c, self.dtype)

    def word_embedding(self) -> jax.Array:
        return self.wte.embedding  # (V,D)

    def layers_module(self) -> Layers:
        return self.h

    def embed(self, input_ids, position_ids, token_type_ids, past, deterministic):
        x = self.wte(input_ids) + self.wpe(_arange_positions(input_ids, position_ids, past))  # (B,T,D)
        if token_type_ids is not None:
            x = x + self.wte(token_type_ids)
        return self.drop(x, deterministic=deterministic)

    def final(self, x):
        return self.ln_f(x)


class BartDecoder(BaseModule):
    """BART's / MBart's ``model/decoder``: scaled word + offset position embeddings, ``layernorm_embedding``,
    the blocks ``layers`` (post-LN BART, pre-LN MBart) and MBart's final ``layer_norm``."""

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype)
        self.embed_positions = nn.Embed(c.num_positions, c.hidden_size, dtype=self.dtype)
        self.layernorm_embedding = LayerNorm(c, self.dtype)
        self.dropout = nn.Dropout(c.embed_dropout)
        self.layers = Layers(c, dtype=self.dtype)
        if c.final_norm:
            self.layer_norm = LayerNorm(c, self.dtype)

    def word_embedding(self) -> jax.Array:
        return self.embed_tokens.embedding  # (V,D)

    def layers_module(self) -> Layers:
        return self.layers

    def embed(self, input_ids, position_ids, token_type_ids, past, deterministic):
        c, positions = self.config, _arange_positions(input_ids, position_ids, past) + self.config.position_offset
        x = self.embed_tokens(input_ids) * c.embed_scale + self.embed_positions(positions)
        return self.dropout(self.layernorm_embedding(x), deterministic=deterministic)

    def final(self, x):
        return self.layer_norm(x) if self.config.final_norm else x


class BartDecoderWrapper(nn.Module):
    """BartForCausalLM's ``model``: holds ``decoder`` (HF's tree level)."""

    config: BartConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        self.decoder = BartDecoder(self.config, self.dtype)


class LMHead(nn.Module):
    """The LM head ``config.head`` of the BERT family: [transform] -> vocabulary projection (the embeddings,
    when tied) + ``bias``.

    BERT nests it as ``cls/predictions/{transform/dense, transform/LayerNorm, decoder, bias}``,
    RoBERTa flat as ``lm_head/{dense, layer_norm, decoder, bias}``, BertGeneration ("bias") as
    ``lm_head/{decoder, bias}`` with no transform: same math, HF's names.
    """

    config: BertConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        c, d = self.config, self.config.hidden_size
        if c.head == "bert":
            self.transform = Transform(c, self.dtype)
        elif c.head == "roberta":
            self.dense = nn.Dense(d, dtype=self.dtype)
            self.layer_norm = LayerNorm(c, self.dtype)
        if not c.tie_word_embeddings:
            self.decoder = nn.Dense(c.vocab_size, use_bias=False, dtype=self.dtype)
        self.bias = self.param("bias", nn.initializers.zeros, (c.vocab_size,), jnp.float32)

    def __call__(self, x, embedding):
        if self.config.head == "bert":
            x = self.transform(x)
        elif self.config.head == "roberta":  # RoBERTa's head always uses exact GELU
            x = self.layer_norm(activation("gelu")(self.dense(x)))
        return project(x, embedding, getattr(self, "decoder", None), self.dtype) + self.bias.astype(self.dtype)


class Transform(nn.Module):
    """dense -> activation -> LayerNorm: BERT's ``cls/predictions/transform`` (``config.act_name``, hidden width)
    or ELECTRA's ``generator_predictions`` (exact GELU, to ``embed_width``)."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        self.dense = nn.Dense(c.embed_width if c.head == "electra" else c.hidden_size, dtype=self.dtype)
        self.LayerNorm = LayerNorm(c, self.dtype)

    def __call__(self, x):
        act = "gelu" if self.config.head == "electra" else self.config.act_name  # hard-coded in ELECTRA
        return self.LayerNorm(activation(act)(self.dense(x)))


class OutputLayer(nn.Module):
    """ELECTRA's ``generator_lm_head``: ``bias`` always, its own ``kernel`` (W,V) only when untied."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, embedding):
        c = self.config
        bias = self.param("bias", nn.initializers.zeros, (c.vocab_size,), jnp.float32)
        if not c.tie_word_embeddings:  # the untied (V,W) matrix, stored as Flax's (W,V) kernel
            embedding = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], c.vocab_size), jnp.float32).T
        return project(x, embedding, None, self.dtype) + bias.astype(self.dtype)


class MLMHead(nn.Module):
    """BERT's ``cls``: holds ``predictions`` (HF's tree level)."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        self.predictions = LMHead(self.config, dtype=self.dtype)


def project(x, embedding, decoder, dtype) -> jax.Array:
    """Hidden states (B,T,D) -> logits (B,T,V): x @ embedding.T when tied, else the untied ``decoder``."""
    if decoder is not None:
        return decoder(x)
    return dot_last(x.astype(dtype), embedding.astype(dtype))


class CausalLMModule(nn.Module):
    """A base model under ``base_model_prefix`` plus an LM head: the decoder of a seq2seq model."""

    config: PretrainedConfig
    dtype: Dtype = jnp.float32

    def _base(self) -> nn.Module:
        return getattr(self, type(self).base_model_prefix)

    def cross_kv(self, enc):
        return self._base().cross_kv(enc)

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        cache=None,
        position_ids=None,
        token_type_ids=None,
        deterministic=True,
        output_attentions=False,
        output_hidden_states=False,
        labels=None,
    ) -> CausalLMOutput:
        """Logits (B,T,V); with ``labels`` the next-token loss of a standalone LM (position t predicts t+1)."""
        base = self._base()(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            cache=cache,
            deterministic=deterministic,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.head_logits(base.last_hidden_state)
        return CausalLMOutput(
            loss=None if labels is None else cross_entropy(logits[:, :-1], labels[:, 1:]),
            logits=logits,
            past_key_values=base.past_key_values,
            hidden_states=base.hidden_states,
            attentions=base.attentions,
            cross_attentions=base.cross_attentions,
        )


class BertFamilyCausalLMModule(CausalLMModule):
    """A BERT-family base under ``base_model_prefix`` plus the head ``config.head``."""

    base_model_prefix = "bert"

    def setup(self):
        c = self.config
        setattr(self, self.base_model_prefix, BertModule(c, self.dtype, add_pooling_layer=False))
        if c.head == "bert":
            self.cls = MLMHead(c, self.dtype)
        elif c.head == "electra":
            self.generator_predictions = Transform(c, self.dtype)
            self.generator_lm_head = OutputLayer(c, self.dtype)
        else:  # roberta | bias
            self.lm_head = LMHead(c, self.dtype)

    def head_logits(self, x):
        embedding, head = self._base().word_embedding(), self.config.head
        if head == "bert":
            return self.cls.predictions(x, embedding)
        if head == "electra":
            return self.generator_lm_head(self.generator_predictions(x), embedding)
        return self.lm_head(x, embedding)


class BertLMHeadModule(BertFamilyCausalLMModule):
    base_model_prefix = "bert"


class RobertaForCausalLMModule(BertFamilyCausalLMModule):
    base_model_prefix = "roberta"


class ElectraForCausalLMModule(BertFamilyCausalLMModule):
    base_model_prefix = "electra"


class GPT2LMHeadModule(CausalLMModule):
    base_model_prefix = "transformer"

    def setup(self):
        self.transformer = GPT2Module(self.config, self.dtype)
        if not self.config.tie_word_embeddings:
            self.lm_head = nn.Dense(self.config.vocab_size, use_bias=False, dtype=self.dtype)

    def head_logits(self, x):
        return project(x, self.transformer.word_embedding(), getattr(self, "lm_head", None), self.dtype)


class BartForCausalLMModule(CausalLMModule):
    """BART / MBart's causal LM: ``model/decoder`` and the plain ``lm_head`` (tied to ``embed_tokens`` by default)."""

    base_model_prefix = "model"

    def setup(self):
        self.model = BartDecoderWrapper(self.config, self.dtype)
        if not self.config.tie_word_embeddings:
            self.lm_head = nn.Dense(self.config.vocab_size, use_bias=False, dtype=self.dtype)

    def _base(self) -> nn.Module:
        return self.model.decoder

    def head_logits(self, x):
        return project(x, self.model.decoder.word_embedding(), getattr(self, "lm_head", None), self.dtype)


# ---------------------------------------------------------------------------- model classes
@register_model("flax", "bert", "encoder")
class BertModel(FlaxPreTrainedModel):
    """BERT encoder (``BertModule``) with its parameters; ``from_pretrained`` / ``save_pretrained``."""

    config_class = BertConfig
    module_class = BertModule


@register_model("flax", "bert", "decoder")
class BertLMHeadModel(FlaxPreTrainedModel):
    config_class = BertConfig
    module_class = BertLMHeadModule
    role = "decoder"
    base_model_prefix = "bert"


@register_model("flax", "roberta", "encoder")
class RobertaModel(BertModel):
    """RoBERTa encoder: BERT with positions counted over real tokens (see :func:`roberta_position_ids`)."""

    config_class = RobertaConfig  # the module reads RoBERTa's position rule from the config


@register_model("flax", "roberta", "decoder")
class RobertaForCausalLM(FlaxPreTrainedModel):
    config_class = RobertaConfig
    module_class = RobertaForCausalLMModule
    role = "decoder"
    base_model_prefix = "roberta"


@register_model("flax", "gpt2", "encoder")
class GPT2Model(FlaxPreTrainedModel):
    config_class = GPT2Config
    module_class = GPT2Module


@register_model("flax", "gpt2", "decoder")
class GPT2LMHeadModel(FlaxPreTrainedModel):
    config_class = GPT2Config
    module_class = GPT2LMHeadModule
    role = "decoder"
    base_model_prefix = "transformer"


@register_model("flax", "bart", "decoder")
class BartForCausalLM(FlaxPreTrainedModel):
    config_class = BartConfig
    module_class = BartForCausalLMModule
    role = "decoder"
    base_model_prefix = "model"


variant = functools.partial(register_variant, "flax", __name__)  # a family read through another's classes


# family -> classes: Transformers' class names, the same modules read through the config's flags
XLMRobertaModel = variant("XLMRobertaModel", RobertaModel, "xlm-roberta", "XLM-RoBERTa: RoBERTa's arithmetic.")
XLMRobertaForCausalLM = variant("XLMRobertaForCausalLM", RobertaForCausalLM, "xlm-roberta")
CamembertModel = variant("CamembertModel", RobertaModel, "camembert", "CamemBERT: RoBERTa's arithmetic.")
CamembertForCausalLM = variant("CamembertForCausalLM", RobertaForCausalLM, "camembert")
BertGenerationEncoder = variant(
    "BertGenerationEncoder", BertModel, "bert-generation", "BertGeneration: BERT without token types or pooler."
)
BertGenerationDecoder = variant(
    "BertGenerationDecoder", BertLMHeadModel, "bert-generation", "BertGeneration's LM: one linear ``lm_head``."
)
ElectraModel = variant(
    "ElectraModel", BertModel, "electra", "ELECTRA: embeddings of width embedding_size, ``embeddings_project``."
)
ElectraForCausalLM = variant(
    "ElectraForCausalLM",
    BertLMHeadModel,
    "electra",
    "ELECTRA's LM: ``generator_predictions`` and ``generator_lm_head``.",
    module_class=ElectraForCausalLMModule,
    base_model_prefix="electra",
)
DistilBertModel = variant(
    "DistilBertModel", BertModel, "distilbert", "DistilBERT (encoder only): blocks ``transformer/layer/{i}``."
)
MBartForCausalLM = variant("MBartForCausalLM", BartForCausalLM, "mbart", "MBart: pre-LN, final ``layer_norm``.")


# the model classes (BertModel, ..., MBartForCausalLM)
__all__ = [
    n for n, v in list(globals().items()) if isinstance(v, type) and v.__module__ == __name__ and hasattr(v, "role")
]
