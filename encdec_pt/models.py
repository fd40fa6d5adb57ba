"""BERT, RoBERTa and GPT-2 in PyTorch: encoders and causal LMs with optional cross-attention.

RoBERTa is BERT with another config class and its position-id rule; the causal LMs are a
base model plus an LM head whose output matrix is tied to the input embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from encdec_core import driver
from encdec_core.configs import BertConfig, GPT2Config, RobertaConfig
from encdec_core.decoding import DecoderCache
from encdec_core.outputs import BaseModelOutput
from encdec_core.registry import register_model
from encdec_pt.kernels import Linear
from encdec_pt.layers import (
    Block,
    activation,
    cross_attention_mask,
    is_static,
    run_blocks,
    self_attention_mask,
)
from encdec_pt.modeling_utils import PreTrainedModel, check_ids


def roberta_position_ids(input_ids: torch.Tensor, padding_idx: int, past: int = 0) -> torch.Tensor:
    """RoBERTa's positions: count real tokens from ``padding_idx + 1``; padding keeps ``padding_idx``."""
    keep = input_ids.ne(padding_idx).long()
    return (torch.cumsum(keep, dim=1) + past) * keep + padding_idx


class Embeddings(nn.Module):
    """BERT/RoBERTa input embeddings: word + position + token type, then LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.roberta = isinstance(config, RobertaConfig)
        pad = config.pad_token_id
        self.padding_idx = pad
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=pad)
        self.position_embeddings = nn.Embedding(
            config.num_positions, config.hidden_size, padding_idx=pad if self.roberta else None
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.embed_dropout)

    def forward(self, input_ids=None, position_ids=None, token_type_ids=None, inputs_embeds=None, past: int = 0):
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B,T,D)
        b, t = x.shape[:2]
        if position_ids is None:
            if self.roberta and input_ids is not None:
                position_ids = roberta_position_ids(input_ids, self.padding_idx, past)
            else:  # RoBERTa from embeddings: sequential after padding_idx, as HF
                start = past + (self.padding_idx + 1 if self.roberta else 0)
                position_ids = (start + torch.arange(t, device=x.device))[None]
        if token_type_ids is None:
            token_type_ids = torch.zeros((b, t), dtype=torch.long, device=x.device)
        x = x + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


class Encoder(nn.Module):
    """BERT's layer stack (``encoder.layer.{i}``)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(Block(config, i, gpt2=False) for i in range(config.num_hidden_layers))


class Pooler(nn.Module):
    """tanh(dense(first token)): BERT's sentence vector; unused by seq2seq but kept lossless."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


def _past_length(past_key_values):
    """Tokens already cached: an int, or a tensor for a static :class:`DecoderCache` (compiled steps share a graph)."""
    if past_key_values is None:
        return 0
    if isinstance(past_key_values, DecoderCache):
        return past_key_values.index
    return past_key_values[0][0].shape[2]


def _key_length(past_key_values) -> int | None:
    """A static cache attends to all its slots (masked); otherwise keys are past + new tokens."""
    return (
        past_key_values.max_length if isinstance(past_key_values, DecoderCache) and is_static(past_key_values) else None
    )


def _base_outputs(x, extra, pooled=None) -> BaseModelOutput:
    hidden = tuple(extra["hidden_states"]) if extra["hidden_states"] else None
    return BaseModelOutput(
        last_hidden_state=x,
        pooler_output=pooled,
        hidden_states=hidden,
        past_key_values=extra["past_key_values"],
        attentions=extra["attentions"],
        cross_attentions=extra["cross_attentions"],
    )


@register_model("pt", "bert", "encoder")
class BertModel(PreTrainedModel):
    """BERT encoder, or a decoder's base when ``is_decoder`` (causal) / ``add_cross_attention``."""

    config_class = BertConfig
    role = "encoder"

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config) if add_pooling_layer else None

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(
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
    ):
        check_ids(self.config, input_ids, "input_ids")
        output_attentions, output_hidden_states, return_dict = driver.output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        causal = self.config.is_decoder
        use_cache = bool(use_cache if use_cache is not None else self.config.use_cache) and causal
        past = _past_length(past_key_values)
        x = self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds, past)
        b, t = x.shape[:2]
        mask = self_attention_mask(
            attention_mask,
            b,
            t,
            past,
            causal=causal,
            dtype=x.dtype,
            device=x.device,
            key_length=_key_length(past_key_values),
        )
        if encoder_hidden_states is not None and encoder_attention_mask is None:
            encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], device=x.device)
        x, extra = run_blocks(
            self.encoder.layer,
            x,
            mask=mask,
            enc=encoder_hidden_states,
            enc_mask=cross_attention_mask(encoder_attention_mask, x.dtype),
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            checkpointing=self.gradient_checkpointing and self.training,
        )
        if output_hidden_states:
            extra["hidden_states"].append(x)
        out = _base_outputs(x, extra, self.pooler(x) if self.pooler is not None else None)
        return out if return_dict else out.to_tuple()


@register_model("pt", "roberta", "encoder")
class RobertaModel(BertModel):
    """RoBERTa: BERT with positions counted over real tokens (see :func:`roberta_position_ids`)."""

    config_class = RobertaConfig


class LMHead(nn.Module):
    """dense -> activation -> LayerNorm -> vocabulary projection (tied to the embeddings).

    BERT nests it as ``cls.predictions.{transform.dense, transform.LayerNorm, decoder, bias}``,
    RoBERTa flat as ``lm_head.{dense, layer_norm, decoder, bias}``: same math, HF's names.
    """

    def __init__(self, config: BertConfig, *, bert_names: bool):
        super().__init__()
        d, eps = config.hidden_size, config.norm_eps
        self.bert_names = bert_names
        if bert_names:
            self.transform = nn.Module()
            self.transform.dense = Linear(d, d)
            self.transform.LayerNorm = nn.LayerNorm(d, eps=eps)
            self.act = activation(config.act_name)
        else:
            self.dense = Linear(d, d)
            self.layer_norm = nn.LayerNorm(d, eps=eps)
            self.act = activation("gelu")  # RoBERTa's head always uses exact GELU
        self.decoder = Linear(d, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias  # one output bias, as HF

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bert_names:
            x = self.transform.LayerNorm(self.act(self.transform.dense(x)))
        else:
            x = self.layer_norm(self.act(self.dense(x)))
        return self.decoder(x)  # (B,T,V)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of a standalone LM: position t predicts label t+1; -100 ignored."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )


class CausalLM(PreTrainedModel):
    """A base model under ``base_model_prefix`` plus an LM head: the decoder of a seq2seq model."""

    role = "decoder"

    def _base(self) -> nn.Module:
        return getattr(self, self.base_model_prefix)

    def blocks(self) -> nn.ModuleList:
        base = self._base()
        return base.h if isinstance(base, GPT2Model) else base.encoder.layer

    def cross_keys_values(self, encoder_hidden_states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's cross-attention keys and values (B,H,S,K): computed once per generation."""
        return [
            (b.crossattention if b.gpt2 else b.crossattention.self).keys_values(encoder_hidden_states)
            for b in self.blocks()
        ]

    def get_input_embeddings(self) -> nn.Embedding:
        return self._base().get_input_embeddings()

    def forward(
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
    ):
        base = self._base()(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds,
            encoder_hidden_states,
            encoder_attention_mask,
            past_key_values,
            use_cache,
            output_attentions,
            output_hidden_states,
            return_dict=True,
        )
        logits = self.head_logits(base.last_hidden_state)  # (B,T,V)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        return driver.causal_lm_output(
            base, logits, loss, self.config.return_dict if return_dict is None else return_dict
        )

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The LM head: the base model's last states (B,T,D) -> logits (B,T,V); each architecture's own."""
        raise NotImplementedError(f"{type(self).__name__} must define head_logits (each causal LM class does)")


@register_model("pt", "bert", "decoder")
class BertLMHeadModel(CausalLM):
    config_class = BertConfig
    base_model_prefix = "bert"

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = nn.Module()
        self.cls.predictions = LMHead(config, bert_names=True)
        self.tie_weights()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls.predictions(x)


@register_model("pt", "roberta", "decoder")
class RobertaForCausalLM(CausalLM):
    config_class = RobertaConfig
    base_model_prefix = "roberta"

    def __init__(self, config: RobertaConfig):
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.lm_head = LMHead(config, bert_names=False)
        self.tie_weights()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x)


@register_model("pt", "gpt2", "encoder")
class GPT2Model(PreTrainedModel):
    """GPT-2's transformer: token + position embeddings, pre-LN blocks, final LayerNorm."""

    config_class = GPT2Config
    role = "encoder"

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.num_positions, config.hidden_size)
        self.drop = nn.Dropout(config.embed_dropout)
        self.h = nn.ModuleList(Block(config, i, gpt2=True) for i in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.pooler = None

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def forward(
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
    ):
        check_ids(self.config, input_ids, "input_ids")
        output_attentions, output_hidden_states, return_dict = driver.output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        use_cache = bool(use_cache if use_cache is not None else self.config.use_cache)
        past = _past_length(past_key_values)
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B,T,D)
        b, t = x.shape[:2]
        if position_ids is None:  # GPT-2 counts positions regardless of padding
            position_ids = (past + torch.arange(t, device=x.device))[None]
        x = x + self.wpe(position_ids)
        if token_type_ids is not None:
            x = x + self.wte(token_type_ids)
        x = self.drop(x)
        mask = self_attention_mask(
            attention_mask,
            b,
            t,
            past,
            causal=True,
            dtype=x.dtype,
            device=x.device,
            key_length=_key_length(past_key_values),
        )
        if encoder_hidden_states is not None and encoder_attention_mask is None:
            encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], device=x.device)
        x, extra = run_blocks(
            self.h,
            x,
            mask=mask,
            enc=encoder_hidden_states,
            enc_mask=cross_attention_mask(encoder_attention_mask, x.dtype),
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            checkpointing=self.gradient_checkpointing and self.training,
        )
        x = self.ln_f(x)
        if output_hidden_states:
            extra["hidden_states"].append(x)  # HF's last entry is after ln_f
        out = _base_outputs(x, extra)
        return out if return_dict else out.to_tuple()


@register_model("pt", "gpt2", "decoder")
class GPT2LMHeadModel(CausalLM):
    config_class = GPT2Config
    base_model_prefix = "transformer"

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x)


__all__ = ["BertModel", "BertLMHeadModel", "RobertaModel", "RobertaForCausalLM", "GPT2Model", "GPT2LMHeadModel"]
