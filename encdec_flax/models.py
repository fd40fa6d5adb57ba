"""BERT, RoBERTa and GPT-2 in Flax: encoders and causal LMs with optional cross-attention.

Each architecture is a ``flax.linen`` module (``BertModule``, ``GPT2LMHeadModule``, ...)
whose parameter tree is HF's ``flax_model.msgpack`` tree, and a model class with PyTorch's
name (``BertModel``, ``GPT2LMHeadModel``, ...) that holds the parameters, loads and saves
them (:class:`~encdec_flax.modeling_utils.FlaxPreTrainedModel`). RoBERTa is BERT with
another config class and its position-id rule; the causal LMs are a base model plus an LM
head whose output matrix is the input embedding matrix unless ``tie_word_embeddings`` is off.

``cache`` arguments are the static decoder cache described in
:meth:`encdec_flax.encoder_decoder.FlaxEncoderDecoderModel.init_cache`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from encdec_core.configs import BertConfig, GPT2Config, PretrainedConfig, RobertaConfig
from encdec_core.outputs import BaseModelOutput, CausalLMOutput
from encdec_core.registry import register_model
from encdec_flax.layers import Dtype, LayerNorm, Layers, activation, run_stack
from encdec_flax.modeling_utils import FlaxPreTrainedModel, cross_entropy


def roberta_position_ids(input_ids: jax.Array, padding_idx: int, past=0) -> jax.Array:
    """RoBERTa's positions: count real tokens from ``padding_idx + 1``; padding keeps ``padding_idx``.

    With a cache, ``past`` (the cache index) is added, assuming the cached tokens were real, as PyTorch does.
    """
    keep = (input_ids != padding_idx).astype(jnp.int32)
    return (jnp.cumsum(keep, axis=1) + past) * keep + padding_idx  # (B,T)


class Embeddings(nn.Module):
    """BERT/RoBERTa input embeddings: word + token type + position, then LayerNorm."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        c, d = self.config, self.config.hidden_size
        self.word_embeddings = nn.Embed(c.vocab_size, d, dtype=self.dtype)
        self.position_embeddings = nn.Embed(c.num_positions, d, dtype=self.dtype)
        self.token_type_embeddings = nn.Embed(c.type_vocab_size, d, dtype=self.dtype)
        self.LayerNorm = LayerNorm(c, self.dtype)
        self.dropout = nn.Dropout(c.embed_dropout)

    def __call__(self, input_ids, position_ids=None, token_type_ids=None, past=0, deterministic=True):
        pad = self.config.pad_token_id
        if position_ids is None:
            if isinstance(self.config, RobertaConfig):  # the rule Transformers' Flax wrapper skipped
                position_ids = roberta_position_ids(input_ids, pad, past)
            else:
                position_ids = past + jnp.arange(input_ids.shape[1])[None]  # (1,T)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.word_embeddings(input_ids)  # (B,T,D)
        x = x + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x), deterministic=deterministic)


class Encoder(nn.Module):
    """BERT's ``encoder``, holding the layer stack ``layer``."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        self.layer = Layers(self.config, gpt2=False, dtype=self.dtype)


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


class BertModule(nn.Module):
    """BERT or RoBERTa: an encoder, or a decoder's base when ``is_decoder`` (causal) / ``add_cross_attention``."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    add_pooling_layer: bool = True

    def setup(self):
        self.embeddings = Embeddings(self.config, self.dtype)
        self.encoder = Encoder(self.config, self.dtype)
        if self.add_pooling_layer:
            self.pooler = Pooler(self.config, self.dtype)

    def word_embedding(self) -> jax.Array:
        return self.embeddings.word_embeddings.embedding  # (V,D)

    def cross_kv(self, enc):
        return self.encoder.layer.cross_kv(enc)

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
        x = self.embeddings(input_ids, position_ids, token_type_ids, past, deterministic)
        x, extra = run_stack(
            self.encoder.layer,
            x,
            attention_mask=attention_mask,
            causal=self.config.is_decoder,
            enc=encoder_hidden_states,
            enc_mask=encoder_attention_mask,
            cache=cache,
            deterministic=deterministic,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        if output_hidden_states:
            extra["hidden_states"].append(x)
        return _base_outputs(x, extra, self.pooler(x) if self.add_pooling_layer else None)


class GPT2Module(nn.Module):
    """GPT-2's transformer: token + position embeddings, pre-LN blocks ``h``, final LayerNorm ``ln_f``."""

    config: GPT2Config
    dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        self.wte = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype)
        self.wpe = nn.Embed(c.num_positions, c.hidden_size, dtype=self.dtype)
        self.drop = nn.Dropout(c.embed_dropout)
        self.h = Layers(c, gpt2=True, dtype=self.dtype)
        self.ln_f = LayerNorm(c, self.dtype)

    def word_embedding(self) -> jax.Array:
        return self.wte.embedding  # (V,D)

    def cross_kv(self, enc):
        return self.h.cross_kv(enc)

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
        if position_ids is None:  # GPT-2 counts positions regardless of padding
            position_ids = past + jnp.arange(input_ids.shape[1])[None]  # (1,T)
        x = self.wte(input_ids) + self.wpe(position_ids)  # (B,T,D)
        if token_type_ids is not None:
            x = x + self.wte(token_type_ids)
        x = self.drop(x, deterministic=deterministic)
        x, extra = run_stack(
            self.h,
            x,
            attention_mask=attention_mask,
            causal=True,
            enc=encoder_hidden_states,
            enc_mask=encoder_attention_mask,
            cache=cache,
            deterministic=deterministic,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        x = self.ln_f(x)
        if output_hidden_states:
            extra["hidden_states"].append(x)  # HF's last entry is after ln_f
        return _base_outputs(x, extra)


class LMHead(nn.Module):
    """dense -> activation -> LayerNorm -> vocabulary projection (the embeddings, when tied) + ``bias``.

    BERT nests it as ``cls/predictions/{transform/dense, transform/LayerNorm, decoder, bias}``,
    RoBERTa flat as ``lm_head/{dense, layer_norm, decoder, bias}``: same math, HF's names.
    """

    config: BertConfig
    bert_names: bool
    dtype: Dtype = jnp.float32

    def setup(self):
        c, d = self.config, self.config.hidden_size
        if self.bert_names:
            self.transform = Transform(c, self.dtype)
        else:
            self.dense = nn.Dense(d, dtype=self.dtype)
            self.layer_norm = LayerNorm(c, self.dtype)
        if not c.tie_word_embeddings:
            self.decoder = nn.Dense(c.vocab_size, use_bias=False, dtype=self.dtype)
        self.bias = self.param("bias", nn.initializers.zeros, (c.vocab_size,), jnp.float32)

    def __call__(self, x, embedding):
        if self.bert_names:
            x = self.transform(x)
        else:  # RoBERTa's head always uses exact GELU
            x = self.layer_norm(activation("gelu")(self.dense(x)))
        return project(x, embedding, getattr(self, "decoder", None), self.dtype) + self.bias.astype(self.dtype)


class Transform(nn.Module):
    """BERT's ``cls/predictions/transform``: dense -> activation -> LayerNorm."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        self.dense = nn.Dense(self.config.hidden_size, dtype=self.dtype)
        self.LayerNorm = LayerNorm(self.config, self.dtype)

    def __call__(self, x):
        return self.LayerNorm(activation(self.config.act_name)(self.dense(x)))


class MLMHead(nn.Module):
    """BERT's ``cls``: holds ``predictions`` (HF's tree level)."""

    config: BertConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        self.predictions = LMHead(self.config, bert_names=True, dtype=self.dtype)


def project(x, embedding, decoder, dtype) -> jax.Array:
    """Hidden states (B,T,D) -> logits (B,T,V): x @ embedding.T when tied, else the untied ``decoder``."""
    if decoder is not None:
        return decoder(x)
    return x.astype(dtype) @ embedding.astype(dtype).T


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


class BertLMHeadModule(CausalLMModule):
    base_model_prefix = "bert"

    def setup(self):
        self.bert = BertModule(self.config, self.dtype, add_pooling_layer=False)
        self.cls = MLMHead(self.config, self.dtype)

    def head_logits(self, x):
        return self.cls.predictions(x, self.bert.word_embedding())


class RobertaForCausalLMModule(CausalLMModule):
    base_model_prefix = "roberta"

    def setup(self):
        self.roberta = BertModule(self.config, self.dtype, add_pooling_layer=False)
        self.lm_head = LMHead(self.config, bert_names=False, dtype=self.dtype)

    def head_logits(self, x):
        return self.lm_head(x, self.roberta.word_embedding())


class GPT2LMHeadModule(CausalLMModule):
    base_model_prefix = "transformer"

    def setup(self):
        self.transformer = GPT2Module(self.config, self.dtype)
        if not self.config.tie_word_embeddings:
            self.lm_head = nn.Dense(self.config.vocab_size, use_bias=False, dtype=self.dtype)

    def head_logits(self, x):
        return project(x, self.transformer.word_embedding(), getattr(self, "lm_head", None), self.dtype)


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

    config_class = RobertaConfig
    module_class = BertModule  # the module reads RoBERTa's position rule from the config


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


__all__ = ["BertModel", "BertLMHeadModel", "RobertaModel", "RobertaForCausalLM", "GPT2Model", "GPT2LMHeadModel"]
