"""BERT, RoBERTa and GPT-2 in Keras 3: encoders and causal LMs with optional cross-attention.

RoBERTa is BERT with another config class and its position-id rule; the causal LMs are a
base model plus an LM head whose output matrix is the input embedding table (tied), as in
``encdec_pt.models``. Every decoder takes HF's growing ``past_key_values`` tuples or a
preallocated :class:`~encdec_tf.cache.DecoderCache` made by ``init_cache``.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from encdec_core import calls, driver
from encdec_core.configs import (
    BartConfig,
    BertConfig,
    BertGenerationConfig,
    ElectraConfig,
    GPT2Config,
    RobertaConfig,
)
from encdec_core.errors import InputError
from encdec_core.outputs import BaseModelOutput
from encdec_core.registry import register_model, register_variant
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
    """BERT-family input embeddings: word + position [+ token type], then LayerNorm, of width ``embed_width``.

    Positions: RoBERTa's rule (``position_rule``) or 0, 1, ...; BERT's relative attention does not
    add the (still stored) absolute table. No token-type table when ``config.token_types`` is 0
    (BertGeneration, DistilBERT): such a model takes no ``token_type_ids``.
    """

    def __init__(self, config, name: str = "embeddings"):
        super().__init__(name)
        self.roberta = config.position_rule == "roberta"
        self.absolute = not config.relative_attention
        d, pad = config.embed_width, config.pad_token_id
        self.padding_idx, self.model_type = pad, config.model_type
        self.word_embeddings = Embedding(config.vocab_size, d, "word_embeddings", leaf="weight", padding_idx=pad)
        self.position_embeddings = Embedding(
            config.num_positions, d, "position_embeddings", padding_idx=pad if self.roberta else None
        )
        self.token_type_embeddings = (
            Embedding(config.token_types, d, "token_type_embeddings") if config.token_types else None
        )
        self.LayerNorm = LayerNorm(d, config.norm_eps, "LayerNorm")
        self.rate = config.embed_dropout

    def call(self, input_ids=None, position_ids=None, token_type_ids=None, inputs_embeds=None, past=0, training=False):
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B,T,W)
        b, t = dims(x)[:2]
        if position_ids is None:
            if self.roberta and input_ids is not None:
                position_ids = roberta_position_ids(input_ids, self.padding_idx, past)
            else:  # RoBERTa from embeddings: sequential after padding_idx, as HF
                start = tf.cast(past, tf.int32) + (self.padding_idx + 1 if self.roberta else 0)
                position_ids = (start + tf.range(t))[None]
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = tf.zeros((b, t), tf.int32)
            x = x + self.token_type_embeddings(token_type_ids)
        elif token_type_ids is not None:
            raise InputError(f"token_type_ids: a {self.model_type!r} model has no token types; pass none")
        if self.absolute:
            x = x + self.position_embeddings(position_ids)
        return dropout(self.LayerNorm(x), self.rate, training)


class Encoder(Module):
    """The BERT-family layer stack (``encoder/layer_._{i}``; DistilBERT's ``transformer/layer_._{i}``)."""

    def __init__(self, config, name: str = "encoder"):
        super().__init__(name)
        self.layer = [Block(config, i, name=f"layer_._{i}") for i in range(config.num_layers)]


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

    @calls.signature("base", training=False)
    def call(self, a):
        """HF's base-model call; ``past_key_values`` is HF's tuples or a :class:`DecoderCache` (then updated)."""
        check_ids(self.config, a.input_ids, "input_ids")
        output_attentions, output_hidden_states, return_dict = driver.output_flags(
            self.config, a.output_attentions, a.output_hidden_states, a.return_dict
        )
        # an encoder-only config (DistilBERT) has no use_cache
        use_cache = self.causal() and bool(a.use_cache if a.use_cache is not None else self.config.use_cache)
        past_key_values, training = a.past_key_values, a.training
        past, cache_index, pasts, encoder_attention_mask = past_state(past_key_values, a.encoder_attention_mask)
        x = self.embed(a.input_ids, a.position_ids, a.token_type_ids, a.inputs_embeds, past, training)  # (B,T,D)
        t = dims(x)[1]
        check_room(past_key_values, t)
        key_len = past + t if cache_index is None else past_key_values.max_length
        mask = self_attention_mask(a.attention_mask, t, key_len, past, causal=self.causal())
        encoder_hidden_states = a.encoder_hidden_states
        if encoder_hidden_states is not None and encoder_attention_mask is None:
            encoder_attention_mask = tf.ones(dims(encoder_hidden_states)[:2], tf.int32)
        flags = (use_cache or cache_index is not None, output_attentions, output_hidden_states)
        enc_mask = cross_attention_mask(encoder_attention_mask)
        x, extra = run_blocks(
            self.blocks(), x, mask, encoder_hidden_states, enc_mask, pasts, cache_index, flags, training
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
        if config.projects_embeddings:  # ELECTRA: embedding width -> hidden size
            self.embeddings_project = Dense(config.embed_width, config.hidden_size, "embeddings_project")
        # the layer stack: "encoder", DistilBERT's "transformer"
        self.encoder = Encoder(config, name="transformer" if config.layout == "distilbert" else "encoder")
        has_pooler = add_pooling_layer and bool(architecture(config.model_type).pooler)
        self.pooler = Pooler(config) if has_pooler else None
        self._finish_init()

    def blocks(self) -> list[Block]:
        return self.encoder.layer

    def causal(self) -> bool:
        return bool(self.config.is_decoder)

    def get_input_embeddings(self) -> Embedding:
        return self.embeddings.word_embeddings

    def embed(self, input_ids, position_ids, token_type_ids, inputs_embeds, past, training):
        x = self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds, past, training=training)
        return self.embeddings_project(x) if self.config.projects_embeddings else x

    def pool(self, x):
        return self.pooler(x) if self.pooler is not None else None


@register_model("tf", "roberta", "encoder")
class RobertaModel(BertModel):
    """RoBERTa: BERT with positions counted over real tokens (see :func:`roberta_position_ids`)."""

    config_class = RobertaConfig


variant = functools.partial(register_variant, "tf", __name__)  # a family read through another's classes
XLMRobertaModel = variant("XLMRobertaModel", RobertaModel, "xlm-roberta", "XLM-RoBERTa: RoBERTa.")
CamembertModel = variant("CamembertModel", RobertaModel, "camembert", "CamemBERT: RoBERTa.")
BertGenerationEncoder = variant(
    "BertGenerationEncoder", BertModel, "bert-generation", "BertGeneration: no token types, no pooler."
)
DistilBertModel = variant(
    "DistilBertModel", BertModel, "distilbert", "DistilBERT: no token types, transformer/layer_._{i}."
)
ElectraModel = variant("ElectraModel", BertModel, "electra", "ELECTRA: embeddings of width embedding_size, projected.")


@register_model("tf", "gpt2", "encoder")
class GPT2Model(BaseModel):
    """GPT-2's transformer: token + position embeddings, pre-LN blocks, final LayerNorm."""

    config_class = GPT2Config

    def __init__(self, config: GPT2Config, scope: str | None = None, name: str | None = None):
        super().__init__(config, scope=scope, name=name)
        self.wte = Embedding(config.vocab_size, config.hidden_size, "wte")
        self.wpe = Embedding(config.num_positions, config.hidden_size, "wpe")
        self.h = [Block(config, i, name=f"h_._{i}") for i in range(config.num_layers)]
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


class BartDecoder(BaseModel):
    """BART / MBart's decoder (``model/decoder``): scaled token + offset position embeddings, layernorm_embedding,
    post-LN (BART) or pre-LN (MBart, then a final ``layer_norm``) blocks with cross-attention.

    Positions are ``past + arange(T)`` whatever the padding, read ``position_offset`` rows into the table.
    """

    config_class = BartConfig

    def __init__(self, config: BartConfig, scope: str | None = None, name: str | None = None):
        super().__init__(config, scope=scope, name=name)
        d = config.hidden_size
        self.embed_tokens = Embedding(config.vocab_size, d, "embed_tokens", padding_idx=config.pad_token_id)
        self.embed_positions = Embedding(config.num_positions, d, "embed_positions")
        self.layernorm_embedding = LayerNorm(d, config.norm_eps, "layernorm_embedding")
        self.blocks_ = [Block(config, i, name=f"layers_._{i}") for i in range(config.num_layers)]
        self.layer_norm = LayerNorm(d, config.norm_eps, "layer_norm") if config.final_norm else None
        self.pooler = None
        self._finish_init()

    def blocks(self) -> list[Block]:
        return self.blocks_

    def get_input_embeddings(self) -> Embedding:
        return self.embed_tokens

    def embed(self, input_ids, position_ids, token_type_ids, inputs_embeds, past, training):
        if token_type_ids is not None:
            raise InputError(f"token_type_ids: a {self.config.model_type!r} decoder has no token types; pass none")
        # the scale is the token embedding's (HF's BartScaledWordEmbedding): inputs_embeds are taken as given
        x = self.embed_tokens(input_ids) * self.config.embed_scale if inputs_embeds is None else inputs_embeds
        if position_ids is None:
            position_ids = (tf.cast(past, tf.int32) + tf.range(dims(x)[1]))[None]
        x = x + self.embed_positions(position_ids + self.config.position_offset)
        return dropout(self.layernorm_embedding(x), self.config.embed_dropout, training)

    def final(self, x):
        return self.layer_norm(x) if self.layer_norm is not None else x


class LMHead(Module):
    """[dense -> activation -> LayerNorm] -> [vocabulary projection + bias]: the heads of the BERT family.

    ``transform``: the dense (to ``width``) / activation / LayerNorm (named ``norm``) part;
    ``bias``: the vocabulary bias, added after the projection. BERT nests them as
    ``mlm___cls/predictions/{transform/..., bias}``, RoBERTa flat as ``lm_head/{dense, layer_norm,
    bias}``, BertGeneration has ``lm_head/bias`` only, ELECTRA ``generator_predictions`` (transform)
    and ``generator_lm_head`` (bias, and its own matrix ``kernel`` when untied).
    """

    def __init__(self, config, name: str, *, transform=False, norm="LayerNorm", act="gelu", width=None, bias=True):
        super().__init__(name)
        d, eps, width = config.hidden_size, config.norm_eps, width or config.hidden_size
        self.transform_, self.norm = transform, norm
        if transform:
            self.dense = Dense(d, width, "dense")
            setattr(self, norm, LayerNorm(width, eps, norm))
            self.act = activation(act)
        self.param_specs = (("bias", (config.vocab_size,), "zeros"),) if bias else ()

    def call(self, x, project=None):
        """x (B,T,D) -> the transformed states, or the logits (B,T,V) by ``project`` (the LM's output matrix)."""
        if self.transform_:
            x = getattr(self, self.norm)(self.act(self.dense(x)))
        return x if project is None else project(x) + self.bias


def causal_lm_loss(logits, labels):
    """Next-token cross-entropy of a standalone LM: position t predicts label t+1; -100 ignored."""
    return masked_cross_entropy(logits[:, :-1], labels[:, 1:])


def masked_cross_entropy(logits, labels, num_items_in_batch=None):
    """Mean cross-entropy over the tokens whose label is not -100 (PyTorch's ``ignore_index``).

    With ``num_items_in_batch`` (the label tokens of a whole accumulated batch), their sum divided by it.
    """
    labels = tf.convert_to_tensor(labels)
    keep = tf.not_equal(labels, -100)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(keep, labels, tf.zeros_like(labels)), logits=tf.cast(logits, tf.float32)
    )  # (B,T)
    keep = tf.cast(keep, tf.float32)
    total = tf.reduce_sum(keep) if num_items_in_batch is None else tf.cast(num_items_in_batch, tf.float32)
    return tf.reduce_sum(ce * keep) / total


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
            # a 2-D product: the batched one made XLA:CPU copy the transposed (V, D) table at every one-token
            # decode step (measured: a MiniLM step 37 ms, 8 ms this way)
            table = self.get_input_embeddings().table
            flat = tf.matmul(tf.reshape(x, (-1, x.shape[-1])), table, transpose_b=True)
            dims = [d if d is not None else tf.shape(x)[i] for i, d in enumerate(x.shape[:-1])]
            return tf.reshape(flat, [*dims, table.shape[0]])
        return self.get_output_embeddings()(x)

    def init_cache(
        self, batch_size: int, max_length: int, encoder_hidden_states=None, encoder_attention_mask=None
    ) -> DecoderCache:
        """See :meth:`BaseModel.init_cache`."""
        return self._base().init_cache(batch_size, max_length, encoder_hidden_states, encoder_attention_mask)

    @calls.signature("causal_lm", training=False)
    def call(self, a):
        # by name: Keras takes only tensors positionally
        base = self._base()(**{n: getattr(a, n) for n in calls.TO_BASE}, return_dict=True, training=a.training)
        logits = self.head_logits(base.last_hidden_state)  # (B,T,V)
        loss = None if a.labels is None else causal_lm_loss(logits, a.labels)
        return driver.causal_lm_output(
            base, logits, loss, self.config.return_dict if a.return_dict is None else a.return_dict
        )


@register_model("tf", "bert", "decoder")
class BertLMHeadModel(CausalLM):
    config_class = BertConfig
    base_model_prefix = "bert"

    def __init__(self, config: BertConfig, name: str | None = None):
        super().__init__(config, name=name)
        self.bert = self._make_base(BertModel, config, add_pooling_layer=False)
        self.cls = Module("mlm___cls")  # HF-TF's name of BERT's ``cls``
        self.cls.predictions = LMHead(config, "predictions")
        self.cls.predictions.transform = LMHead(config, "transform", transform=True, act=config.act_name, bias=False)
        if not config.tie_word_embeddings:
            self.decoder = Dense(config.hidden_size, config.vocab_size, "decoder", use_bias=False)
            self.decoder.tf_path = "cls/predictions/decoder"  # the table's name of an untied BERT output matrix
        self._finish_init()

    def get_output_embeddings(self):
        return self.get_input_embeddings() if self.config.tie_word_embeddings else self.decoder

    def head_logits(self, x):
        return self.cls.predictions(self.cls.predictions.transform(x), self.project)


@register_model("tf", "roberta", "decoder")
class RobertaForCausalLM(CausalLM):
    config_class = RobertaConfig
    base_model_prefix = "roberta"
    base_class = RobertaModel

    def __init__(self, config: RobertaConfig, name: str | None = None):
        super().__init__(config, name=name)
        self.roberta = self._make_base(self.base_class, config, add_pooling_layer=False)
        # RoBERTa's head always uses exact GELU
        self.lm_head = LMHead(config, "lm_head", transform=True, norm="layer_norm")
        if not config.tie_word_embeddings:
            self.lm_head.decoder = Dense(config.hidden_size, config.vocab_size, "decoder", use_bias=False)
        self._finish_init()

    def get_output_embeddings(self):
        return self.get_input_embeddings() if self.config.tie_word_embeddings else self.lm_head.decoder

    def head_logits(self, x):
        return self.lm_head(x, self.project)


XLMRobertaForCausalLM = variant(
    "XLMRobertaForCausalLM", RobertaForCausalLM, "xlm-roberta", "XLM-R's LM.", base_class=XLMRobertaModel
)
CamembertForCausalLM = variant(
    "CamembertForCausalLM", RobertaForCausalLM, "camembert", "CamemBERT's LM.", base_class=CamembertModel
)


@register_model("tf", "bert-generation", "decoder")
class BertGenerationDecoder(CausalLM):
    """BertGeneration's LM: the base under ``bert`` and ``lm_head`` = the output matrix + ``lm_head/bias``."""

    config_class = BertGenerationConfig
    base_model_prefix = "bert"

    def __init__(self, config: BertGenerationConfig, name: str | None = None):
        super().__init__(config, name=name)
        self.bert = self._make_base(BertGenerationEncoder, config)
        self.lm_head = LMHead(config, "lm_head")
        if not config.tie_word_embeddings:
            self.lm_head.decoder = Dense(config.hidden_size, config.vocab_size, "decoder", use_bias=False)
        self._finish_init()

    def get_output_embeddings(self):
        return self.get_input_embeddings() if self.config.tie_word_embeddings else self.lm_head.decoder

    def head_logits(self, x):
        return self.lm_head(x, self.project)


@register_model("tf", "electra", "decoder")
class ElectraForCausalLM(CausalLM):
    """ELECTRA's generator: ``generator_predictions`` (dense to embed_width, GELU, LayerNorm), then
    ``generator_lm_head``: the (V, embed_width) word embeddings when tied, else its own ``kernel``, plus its bias.
    """

    config_class = ElectraConfig
    base_model_prefix = "electra"

    def __init__(self, config: ElectraConfig, name: str | None = None):
        super().__init__(config, name=name)
        self.electra = self._make_base(ElectraModel, config)
        w = config.embed_width
        self.generator_predictions = LMHead(config, "generator_predictions", transform=True, width=w, bias=False)
        self.generator_lm_head = LMHead(config, "generator_lm_head")
        if not config.tie_word_embeddings:  # generator_lm_head/kernel: its own (embed_width, V) matrix
            self.generator_lm_head.param_specs += (("kernel", (w, config.vocab_size), "normal"),)
        self._finish_init()

    def get_output_embeddings(self):
        return self.get_input_embeddings() if self.config.tie_word_embeddings else self.generator_lm_head

    def project(self, x):
        if self.config.tie_word_embeddings:
            return super().project(x)
        return tf.matmul(x, self.generator_lm_head.kernel)

    def head_logits(self, x):
        return self.generator_lm_head(self.generator_predictions(x), self.project)


@register_model("tf", "gpt2", "decoder")
class GPT2LMHeadModel(CausalLM):
    config_class = GPT2Config
    base_model_prefix = "transformer"
    base_class = GPT2Model

    def __init__(self, config: GPT2Config, name: str | None = None):
        super().__init__(config, name=name)
        setattr(self, self.base_model_prefix, self._make_base(self.base_class, config))
        if not config.tie_word_embeddings:
            self.lm_head = Dense(config.hidden_size, config.vocab_size, "lm_head", use_bias=False)
        self._finish_init()

    def get_output_embeddings(self):
        return self.get_input_embeddings() if self.config.tie_word_embeddings else self.lm_head

    def head_logits(self, x):
        return self.project(x)


@register_model("tf", "bart", "decoder")
class BartForCausalLM(GPT2LMHeadModel):
    """BART's causal LM: the decoder under ``model/decoder``, ``lm_head`` (no bias) tied to ``embed_tokens``."""

    config_class = BartConfig
    base_model_prefix = "model"
    base_class = BartDecoder


MBartForCausalLM = variant("MBartForCausalLM", BartForCausalLM, "mbart", "MBart's LM: pre-LN, layer_norm.")


# the model classes with Transformers' names (BertModel, BertLMHeadModel, ..., MBartForCausalLM)
__all__ = [
    n
    for n, c in list(globals().items())
    if isinstance(c, type) and issubclass(c, (BaseModel, CausalLM)) and c not in (BaseModel, CausalLM, BartDecoder)
]
