"""BERT, RoBERTa and GPT-2 in Keras 3: encoders and causal LMs with optional cross-attention.

RoBERTa is BERT with another config class and its position-id rule; the causal LMs are a
base model plus an LM head whose output matrix is the input embedding table (tied), as in
``encdec_pt.models``. Every decoder takes HF's growing ``past_key_values`` tuples or a
preallocated :class:`~encdec_tf.cache.DecoderCache` made by ``init_cache``.
"""

from __future__ import annotations

import tensorflow as tf

from encdec_core import driver
from encdec_core.configs import BertConfig, GPT2Config, RobertaConfig
from encdec_core.errors import InputError
from encdec_core.outputs import BaseModelOutput
from encdec_core.registry import register_model
from encdec_core.tables import architecture
from encdec_tf.cache import DecoderCache, as_cache, check_room, empty_cache, past_state
from encdec_tf.layers import (
    Block,
    Dense,
    Embedding,
    LayerNorm,
    Module,
    activation,
    cross_attention_mask,
    dims,
    dropout,
    run_blocks,
    self_attention_mask,
)
from encdec_tf.modeling_utils import PreTrainedModel, check_ids, defer_variables, walk


def roberta_position_ids(input_ids, padding_idx: int, past=0):
    """RoBERTa's positions: count real tokens from ``padding_idx + 1``; padding keeps ``padding_idx``."""
    keep = tf.cast(tf.not_equal(input_ids, padding_idx), tf.int32)
    return (tf.cumsum(keep, axis=1) + tf.cast(past, tf.int32)) * keep + padding_idx


class Embeddings(Module):
    """BERT/RoBERTa input embeddings: word + position + token type, then LayerNorm."""

    def __init__(self, config: BertConfig, name: str = "embeddings"):
        super().__init__(name)
        self.roberta = isinstance(config, RobertaConfig)
        d, pad = config.hidden_size, config.pad_token_id
        self.padding_idx = pad
        self.word_embeddings = Embedding(config.vocab_size, d, "word_embeddings", leaf="weight", padding_idx=pad)
        self.position_embeddings = Embedding(
            config.num_positions, d, "position_embeddings", padding_idx=pad if self.roberta else None
        )
        self.token_type_embeddings = Embedding(config.type_vocab_size, d, "token_type_embeddings")
        self.LayerNorm = LayerNorm(d, config.norm_eps, "LayerNorm")
        self.rate = config.embed_dropout

    def call(self, input_ids=None, position_ids=None, token_type_ids=None, inputs_embeds=None, past=0, training=False):
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B,T,D)
        b, t = dims(x)[:2]
        if position_ids is None:
            if self.roberta and input_ids is not None:
                position_ids = roberta_position_ids(input_ids, self.padding_idx, past)
            else:  # RoBERTa from embeddings: sequential after padding_idx, as HF
                start = tf.cast(past, tf.int32) + (self.padding_idx + 1 if self.roberta else 0)
                position_ids = (start + tf.range(t))[None]
        if token_type_ids is None:
            token_type_ids = tf.zeros((b, t), tf.int32)
        x = x + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return dropout(self.LayerNorm(x), self.rate, training)


class Encoder(Module):
    """BERT's layer stack (``encoder/layer_._{i}``)."""

    def __init__(self, config: BertConfig, name: str = "encoder"):
        super().__init__(name)
        self.layer = [Block(config, i, gpt2=False, name=f"layer_._{i}") for i in range(config.num_hidden_layers)]


class Pooler(Module):
    """tanh(dense(first token)): BERT's sentence vector; unused by seq2seq but kept lossless."""

    def __init__(self, config: BertConfig, name: str = "pooler"):
        super().__init__(name)
        self.dense = Dense(config.hidden_size, config.hidden_size, "dense")

    def call(self, x):
        return tf.tanh(self.dense(x[:, 0]))


class BaseModel(PreTrainedModel):
    """What BERT and GPT-2 share: the layer stack run over embeddings, the cache, the outputs."""

    role = "encoder"

    def __init__(self, config, scope: str | None = None, name: str | None = None):
        super().__init__(config, name=name)
        # the one path segment this base model adds to its table names ("bert", "transformer")
        self.scope = architecture(config.model_type).encoder_prefix[1] if scope is None else scope

    def causal(self) -> bool:
        return True

    def final(self, x):
        """What follows the blocks (GPT-2's ln_f); HF's last hidden state is after it."""
        return x

    def pool(self, x):
        return None

    def call(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        past_key_values=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        training=False,
    ):
        """HF's base-model call; ``past_key_values`` is HF's tuples or a :class:`DecoderCache` (then updated)."""
        check_ids(self.config, input_ids, "input_ids")
        output_attentions, output_hidden_states, return_dict = driver.output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        use_cache = bool(use_cache if use_cache is not None else self.config.use_cache) and self.causal()
        past, cache_index, pasts, encoder_attention_mask = past_state(past_key_values, encoder_attention_mask)
        x = self.embed(input_ids, position_ids, token_type_ids, inputs_embeds, past, training)  # (B,T,D)
        t = dims(x)[1]
        check_room(past_key_values, t)
        key_len = past + t if cache_index is None else past_key_values.max_length
        mask = self_attention_mask(attention_mask, t, key_len, past, causal=self.causal())
        if encoder_hidden_states is not None and encoder_attention_mask is None:
            encoder_attention_mask = tf.ones(dims(encoder_hidden_states)[:2], tf.int32)
        x, extra = run_blocks(
            self.blocks(),
            x,
            mask=mask,
            enc=encoder_hidden_states,
            enc_mask=cross_attention_mask(encoder_attention_mask),
            past_key_values=pasts,
            cache_index=cache_index,
            use_cache=use_cache or cache_index is not None,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            training=training,
        )
        x = self.final(x)
        presents = extra["past_key_values"]
        if cache_index is not None:
            presents = as_cache(past + t, presents, past_key_values.encoder_attention_mask)
        out = BaseModelOutput(
            last_hidden_state=x,
            pooler_output=self.pool(x),
            hidden_states=tuple(extra["hidden_states"] + [x]) if output_hidden_states else None,
            past_key_values=presents,
            attentions=extra["attentions"],
            cross_attentions=extra["cross_attentions"],
        )
        return out if return_dict else out.to_tuple()

    def init_cache(
        self, batch_size: int, max_length: int, encoder_hidden_states=None, encoder_attention_mask=None
    ) -> DecoderCache:
        """An empty :class:`DecoderCache` of ``max_length`` positions; cross keys/values computed once here.

        ``encoder_hidden_states`` (B, S, D_cross) and ``encoder_attention_mask`` (B, S) are only
        needed by a decoder with cross-attention; they are not passed again at each step.
        """
        limit = self.config.position_limit  # RoBERTa's positions start after padding_idx
        if max_length > limit:
            raise InputError(f"init_cache: max_length={max_length} exceeds the {limit} positions this model embeds")
        return empty_cache(
            [b.attention_layers() for b in self.blocks()],
            batch_size,
            max_length,
            encoder_hidden_states,
            encoder_attention_mask,
        )


@register_model("tf", "bert", "encoder")
class BertModel(BaseModel):
    """BERT encoder, or a decoder's base when ``is_decoder`` (causal) / ``add_cross_attention``."""

    config_class = BertConfig

    def __init__(
        self, config: BertConfig, add_pooling_layer: bool = True, scope: str | None = None, name: str | None = None
    ):
        super().__init__(config, scope=scope, name=name)
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config) if add_pooling_layer else None
        self._finish_init()

    def blocks(self) -> list[Block]:
        return self.encoder.layer

    def causal(self) -> bool:
        return bool(self.config.is_decoder)

    def get_input_embeddings(self) -> Embedding:
        return self.embeddings.word_embeddings

    def embed(self, input_ids, position_ids, token_type_ids, inputs_embeds, past, training):
        return self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds, past, training=training)

    def pool(self, x):
        return self.pooler(x) if self.pooler is not None else None


@register_model("tf", "roberta", "encoder")
class RobertaModel(BertModel):
    """RoBERTa: BERT with positions counted over real tokens (see :func:`roberta_position_ids`)."""

    config_class = RobertaConfig


@register_model("tf", "gpt2", "encoder")
class GPT2Model(BaseModel):
    """GPT-2's transformer: token + position embeddings, pre-LN blocks, final LayerNorm."""

    config_class = GPT2Config

    def __init__(self, config: GPT2Config, scope: str | None = None, name: str | None = None):
        super().__init__(config, scope=scope, name=name)
        self.wte = Embedding(config.vocab_size, config.hidden_size, "wte")
        self.wpe = Embedding(config.num_positions, config.hidden_size, "wpe")
        self.h = [Block(config, i, gpt2=True, name=f"h_._{i}") for i in range(config.num_hidden_layers)]
        self.ln_f = LayerNorm(config.hidden_size, config.norm_eps, "ln_f")
        self.pooler = None
        self._finish_init()

    def blocks(self) -> list[Block]:
        return self.h

    def get_input_embeddings(self) -> Embedding:
        return self.wte

    def embed(self, input_ids, position_ids, token_type_ids, inputs_embeds, past, training):
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B,T,D)
        if position_ids is None:  # GPT-2 counts positions regardless of padding
            position_ids = (tf.cast(past, tf.int32) + tf.range(dims(x)[1]))[None]
        x = x + self.wpe(position_ids)
        if token_type_ids is not None:
            x = x + self.wte(token_type_ids)
        return dropout(x, self.config.embed_dropout, training)

    def final(self, x):
        return self.ln_f(x)


class LMHead(Module):
    """dense -> activation -> LayerNorm -> vocabulary projection (the word embeddings, transposed) + bias.

    BERT nests it as ``mlm___cls/predictions/{transform/dense, transform/LayerNorm, bias}``,
    RoBERTa flat as ``lm_head/{dense, layer_norm, bias}``: same math, HF's names.
    """

    def __init__(self, config: BertConfig, *, bert_names: bool, name: str):
        super().__init__(name)
        d, eps = config.hidden_size, config.norm_eps
        self.bert_names = bert_names
        if bert_names:
            self.transform = Module("transform")
            self.transform.dense = Dense(d, d, "dense")
            self.transform.LayerNorm = LayerNorm(d, eps, "LayerNorm")
            self.act = activation(config.act_name)
        else:
            self.dense = Dense(d, d, "dense")
            self.layer_norm = LayerNorm(d, eps, "layer_norm")
            self.act = activation("gelu")  # RoBERTa's head always uses exact GELU
        self.param_specs = (("bias", (config.vocab_size,), "zeros"),)

    def call(self, x, project):
        """x (B,T,D) -> logits (B,T,V); ``project`` is the LM's output matrix (tied or not)."""
        if self.bert_names:
            x = self.transform.LayerNorm(self.act(self.transform.dense(x)))
        else:
            x = self.layer_norm(self.act(self.dense(x)))
        return project(x) + self.bias


def causal_lm_loss(logits, labels):
    """Next-token cross-entropy of a standalone LM: position t predicts label t+1; -100 ignored."""
    return masked_cross_entropy(logits[:, :-1], labels[:, 1:])


def masked_cross_entropy(logits, labels):
    """Mean cross-entropy over the tokens whose label is not -100 (PyTorch's ``ignore_index``)."""
    labels = tf.convert_to_tensor(labels)
    keep = tf.not_equal(labels, -100)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(keep, labels, tf.zeros_like(labels)), logits=tf.cast(logits, tf.float32)
    )  # (B,T)
    keep = tf.cast(keep, tf.float32)
    return tf.reduce_sum(ce * keep) / tf.reduce_sum(keep)


class CausalLM(PreTrainedModel):
    """A base model under ``base_model_prefix`` plus an LM head: the decoder of a seq2seq model."""

    role = "decoder"

    def _base(self) -> BaseModel:
        return getattr(self, self.base_model_prefix)

    def _make_base(self, base_cls, config, **kw) -> BaseModel:
        with defer_variables():  # built once, with the LM, by _finish_init
            return base_cls(
                config, scope=architecture(config.model_type).base_prefix[1], name=self.base_model_prefix, **kw
            )

    def param_slots(self):
        yield from self._base().param_slots()  # under its scope ("bert"), the table's base prefix
        yield from walk(self, "", self.init_std())  # the head

    def get_input_embeddings(self) -> Embedding:
        return self._base().get_input_embeddings()

    def project(self, x):
        """x (B,T,D) -> (B,T,V) by the output matrix: the word embeddings when tied, else the LM's own."""
        if self.config.tie_word_embeddings:
            return tf.matmul(x, self.get_input_embeddings().table, transpose_b=True)
        return self.get_output_embeddings()(x)

    def init_cache(
        self, batch_size: int, max_length: int, encoder_hidden_states=None, encoder_attention_mask=None
    ) -> DecoderCache:
        """See :meth:`BaseModel.init_cache`."""
        return self._base().init_cache(batch_size, max_length, encoder_hidden_states, encoder_attention_mask)

    def call(
        self,
        input_ids=None,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        past_key_values=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        labels=None,
        return_dict=None,
        position_ids=None,
        inputs_embeds=None,
        token_type_ids=None,
        training=False,
    ):
        base = self._base()(  # by name: Keras takes only tensors positionally
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            training=training,
        )
        logits = self.head_logits(base.last_hidden_state)  # (B,T,V)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        return driver.causal_lm_output(
            base, logits, loss, self.config.return_dict if return_dict is None else return_dict
        )


@register_model("tf", "bert", "decoder")
class BertLMHeadModel(CausalLM):
    config_class = BertConfig
    base_model_prefix = "bert"

    def __init__(self, config: BertConfig, name: str | None = None):
        super().__init__(config, name=name)
        self.bert = self._make_base(BertModel, config, add_pooling_layer=False)
        self.cls = Module("mlm___cls")  # HF-TF's name of BERT's ``cls``
        self.cls.predictions = LMHead(config, bert_names=True, name="predictions")
        if not config.tie_word_embeddings:
            self.decoder = Dense(config.hidden_size, config.vocab_size, "decoder", use_bias=False)
            self.decoder.tf_path = "cls/predictions/decoder"  # the table's name of an untied BERT output matrix
        self._finish_init()

    def get_output_embeddings(self):
        return self.get_input_embeddings() if self.config.tie_word_embeddings else self.decoder

    def head_logits(self, x):
        return self.cls.predictions(x, self.project)


@register_model("tf", "roberta", "decoder")
class RobertaForCausalLM(CausalLM):
    config_class = RobertaConfig
    base_model_prefix = "roberta"

    def __init__(self, config: RobertaConfig, name: str | None = None):
        super().__init__(config, name=name)
        self.roberta = self._make_base(RobertaModel, config, add_pooling_layer=False)
        self.lm_head = LMHead(config, bert_names=False, name="lm_head")
        if not config.tie_word_embeddings:
            self.lm_head.decoder = Dense(config.hidden_size, config.vocab_size, "decoder", use_bias=False)
        self._finish_init()

    def get_output_embeddings(self):
        return self.get_input_embeddings() if self.config.tie_word_embeddings else self.lm_head.decoder

    def head_logits(self, x):
        return self.lm_head(x, self.project)


@register_model("tf", "gpt2", "decoder")
class GPT2LMHeadModel(CausalLM):
    config_class = GPT2Config
    base_model_prefix = "transformer"

    def __init__(self, config: GPT2Config, name: str | None = None):
        super().__init__(config, name=name)
        self.transformer = self._make_base(GPT2Model, config)
        if not config.tie_word_embeddings:
            self.lm_head = Dense(config.hidden_size, config.vocab_size, "lm_head", use_bias=False)
        self._finish_init()

    def get_output_embeddings(self):
        return self.get_input_embeddings() if self.config.tie_word_embeddings else self.lm_head

    def head_logits(self, x):
        return self.project(x)


__all__ = ["BertModel", "BertLMHeadModel", "RobertaModel", "RobertaForCausalLM", "GPT2Model", "GPT2LMHeadModel"]
