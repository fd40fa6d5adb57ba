"""The PyTorch models: BERT and its family (RoBERTa, XLM-R, CamemBERT, BertGeneration, ELECTRA), DistilBERT,
GPT-2 and the BART / MBart decoders; encoders and causal LMs with optional cross-attention.

One :class:`BaseModel` (the layer stack, cache and outputs; each architecture's embeddings and
final norm) and one :class:`CausalLM` (a base model plus the LM head ``config.head``, tied to the
input embeddings); a family is a few class attributes on them, read from the config's flags.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from encdec_core import calls, driver
from encdec_core.configs import BartConfig, BertConfig, DistilBertConfig, GPT2Config, PretrainedConfig
from encdec_core.decoding import DecoderCache
from encdec_core.errors import InputError
from encdec_core.outputs import BaseModelOutput
from encdec_core.registry import register_model, register_variant
from encdec_core.tables import architecture
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
    """BERT-family input embeddings: word + position [+ token type], then LayerNorm (BERT, RoBERTa, ELECTRA, ...).

    The tables have width ``config.embed_width`` (ELECTRA's ``embedding_size``); positions follow
    ``config.position_rule`` and are not added under relative attention (HF keeps the table but
    ignores it); the token-type table exists when ``config.token_types`` (not in BertGeneration,
    DistilBERT).
    """

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.roberta = config.position_rule == "roberta"
        self.absolute = config.relative_attention is None
        pad, w = config.pad_token_id, config.embed_width
        self.padding_idx = pad
        self.word_embeddings = nn.Embedding(config.vocab_size, w, padding_idx=pad)
        self.position_embeddings = nn.Embedding(config.num_positions, w, padding_idx=pad if self.roberta else None)
        self.token_type_embeddings = nn.Embedding(config.token_types, w) if config.token_types else None
        self.LayerNorm = nn.LayerNorm(w, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.embed_dropout)
        self.model_type = config.model_type

    def forward(self, input_ids=None, position_ids=None, token_type_ids=None, inputs_embeds=None, past: int = 0):
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B,T,W)
        b, t = x.shape[:2]
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros((b, t), dtype=torch.long, device=x.device)
            x = x + self.token_type_embeddings(token_type_ids)
        else:
            _no_token_types(self.model_type, token_type_ids)
        if self.absolute:
            if position_ids is None:
                if self.roberta and input_ids is not None:
                    position_ids = roberta_position_ids(input_ids, self.padding_idx, past)
                else:  # RoBERTa from embeddings: sequential after padding_idx, as HF
                    start = past + (self.padding_idx + 1 if self.roberta else 0)
                    position_ids = (start + torch.arange(t, device=x.device))[None]
            x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


def _no_token_types(model_type: str, token_type_ids) -> None:
    if token_type_ids is not None:
        raise InputError(f"token_type_ids: a {model_type!r} model has no token-type embeddings; pass None")


def layer_stack(config: PretrainedConfig) -> nn.ModuleList:
    return nn.ModuleList(Block(config, i) for i in range(config.num_layers))


class Encoder(nn.Module):
    """BERT's layer stack (``encoder.layer.{i}``; DistilBERT's ``transformer.layer.{i}``)."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.layer = layer_stack(config)


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


class BaseModel(PreTrainedModel):
    """What BERT and GPT-2 share: the layer stack run over embeddings, the cache, the outputs.

    An architecture supplies ``blocks()``, ``embed(...)`` and, where it has them, ``final`` (GPT-2's
    ``ln_f``), ``pool`` (BERT's pooler) and ``causal`` (a BERT is causal as a decoder only).
    """

    role = "encoder"

    def causal(self) -> bool:
        return True

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """What follows the blocks (GPT-2's ln_f); HF's last hidden state is after it."""
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor | None:
        return None

    @calls.signature("base")
    def forward(self, a):
        """HF's base-model forward; ``past_key_values`` is HF's tuples or a :class:`DecoderCache` (written in place)."""
        check_ids(self.config, a.input_ids, "input_ids")
        output_attentions, output_hidden_states, return_dict = driver.output_flags(
            self.config, a.output_attentions, a.output_hidden_states, a.return_dict
        )
        causal = self.causal()
        use_cache = causal and bool(a.use_cache if a.use_cache is not None else self.config.use_cache)
        past = _past_length(a.past_key_values)
        x = self.embed(a.input_ids, a.position_ids, a.token_type_ids, a.inputs_embeds, past)  # (B,T,D)
        b, t = x.shape[:2]
        key_length = _key_length(a.past_key_values)
        mask = self_attention_mask(
            a.attention_mask, b, t, past, causal=causal, dtype=x.dtype, device=x.device, key_length=key_length
        )
        enc, enc_mask = a.encoder_hidden_states, a.encoder_attention_mask
        if enc is not None and enc_mask is None:
            enc_mask = torch.ones(enc.shape[:2], device=x.device)
        flags = (use_cache, output_attentions, output_hidden_states)
        checkpointing = self.gradient_checkpointing and self.training
        enc_mask = cross_attention_mask(enc_mask, x.dtype)
        x, extra = run_blocks(self.blocks(), x, mask, enc, enc_mask, a.past_key_values, flags, checkpointing)
        x = self.final(x)
        if output_hidden_states:
            extra["hidden_states"].append(x)  # HF's last entry is after the final norm
        out = _base_outputs(x, extra, self.pool(x))
        return out if return_dict else out.to_tuple()


@register_model("pt", "bert", "encoder")
class BertModel(BaseModel):
    """BERT encoder, or a decoder's base when ``is_decoder`` (causal) / ``add_cross_attention``.

    The BERT family's base: ELECTRA adds ``embeddings_project`` (``config.projects_embeddings``);
    BertGeneration and ELECTRA have no pooler (``has_pooler``).
    """

    config_class = BertConfig
    has_pooler = True

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        if config.projects_embeddings:
            self.embeddings_project = Linear(config.embed_width, config.hidden_size)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config) if add_pooling_layer and self.has_pooler else None

    def blocks(self) -> nn.ModuleList:
        return self.encoder.layer

    def causal(self) -> bool:
        return bool(self.config.is_decoder)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def embed(self, input_ids, position_ids, token_type_ids, inputs_embeds, past):
        x = self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds, past)
        return self.embeddings_project(x) if self.config.projects_embeddings else x

    def pool(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.pooler(x) if self.pooler is not None else None


variant = functools.partial(register_variant, "pt", __name__)  # a family read through another's classes
RobertaModel = variant(
    "RobertaModel",
    BertModel,
    "roberta",
    "RoBERTa: BERT with positions over real tokens (:func:`roberta_position_ids`).",
)
XLMRobertaModel = variant("XLMRobertaModel", RobertaModel, "xlm-roberta", "XLM-RoBERTa: RoBERTa.")
CamembertModel = variant("CamembertModel", RobertaModel, "camembert", "CamemBERT: RoBERTa.")
BertGenerationEncoder = variant(
    "BertGenerationEncoder",
    BertModel,
    "bert-generation",
    "BertGeneration: no token types, no pooler.",
    has_pooler=False,
)
ElectraModel = variant(
    "ElectraModel", BertModel, "electra", "ELECTRA: embeddings of width embedding_size, projected.", has_pooler=False
)


@register_model("pt", "distilbert", "encoder")
class DistilBertModel(BaseModel):
    """DistilBERT: BERT-style embeddings without token types, post-LN blocks ``transformer.layer.{i}``."""

    config_class = DistilBertConfig

    def __init__(self, config: DistilBertConfig):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.transformer = Encoder(config)

    def blocks(self) -> nn.ModuleList:
        return self.transformer.layer

    def causal(self) -> bool:
        return False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def embed(self, input_ids, position_ids, token_type_ids, inputs_embeds, past):
        return self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds, past)


class BartDecoder(BaseModel):
    """BART / MBart's decoder: scaled word embeddings + offset positions, ``layernorm_embedding``, the layers
    (post-LN in BART, pre-LN in MBart) and MBart's final ``layer_norm`` (``config.final_norm``)."""

    config_class = BartConfig

    def __init__(self, config: BartConfig):
        super().__init__(config)
        d = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.num_positions, d)
        self.layernorm_embedding = nn.LayerNorm(d, eps=config.norm_eps)
        self.layers = layer_stack(config)
        self.layer_norm = nn.LayerNorm(d, eps=config.norm_eps) if config.final_norm else None
        self.dropout = nn.Dropout(config.embed_dropout)

    def blocks(self) -> nn.ModuleList:
        return self.layers

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def embed(self, input_ids, position_ids, token_type_ids, inputs_embeds, past):
        _no_token_types(self.config.model_type, token_type_ids)
        x = self.embed_tokens(input_ids) * self.config.embed_scale if inputs_embeds is None else inputs_embeds
        if position_ids is None:  # BART counts positions regardless of padding
            position_ids = (past + torch.arange(x.shape[1], device=x.device))[None]
        x = x + self.embed_positions(position_ids + self.config.position_offset)
        return self.dropout(self.layernorm_embedding(x))

    def final(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x) if self.layer_norm is not None else x


class LMHead(nn.Module):
    """The BERT family's LM heads (``config.head``), with HF's names.

    "bert": ``transform.{dense, LayerNorm}`` (config activation) + ``decoder`` / ``bias`` (BERT's
    ``cls.predictions``); "roberta": ``dense``, exact GELU, ``layer_norm``, ``decoder`` / ``bias``;
    "bias": ``decoder`` / ``bias`` only (BertGeneration); "electra": ``dense`` (to ``embed_width``), exact
    GELU, ``LayerNorm``: ELECTRA's ``generator_predictions``, whose vocabulary projection is a module
    of its own. The ``decoder`` matrix is tied to the input embeddings; its bias is ``bias``.
    """

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        d, e, eps, self.kind = config.hidden_size, config.embed_width, config.norm_eps, config.head
        if self.kind == "bert":
            self.transform = nn.Module()
            self.transform.dense = Linear(d, d)
            self.transform.LayerNorm = nn.LayerNorm(d, eps=eps)
            self.act = activation(config.act_name)
        elif self.kind == "roberta":
            self.dense = Linear(d, d)
            self.layer_norm = nn.LayerNorm(d, eps=eps)
        elif self.kind == "electra":
            self.dense = Linear(d, e)
            self.LayerNorm = nn.LayerNorm(e, eps=eps)
        if self.kind != "bert":
            self.act = activation("gelu")  # RoBERTa's and ELECTRA's heads always use exact GELU
        if self.kind != "electra":
            self.decoder = Linear(d, config.vocab_size)
            self.bias = nn.Parameter(torch.zeros(config.vocab_size))
            self.decoder.bias = self.bias  # one output bias, as HF

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "bert":
            x = self.transform.LayerNorm(self.act(self.transform.dense(x)))
        elif self.kind == "roberta":
            x = self.layer_norm(self.act(self.dense(x)))
        elif self.kind == "electra":
            return self.LayerNorm(self.act(self.dense(x)))  # (B,T,E): generator_lm_head follows
        return self.decoder(x)  # (B,T,V)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of a standalone LM: position t predicts label t+1; -100 ignored."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )


# the LM head's modules per ``config.head``, applied in order to the base model's last states
HEAD_MODULES = {
    "bert": ("cls.predictions",),
    "roberta": ("lm_head",),
    "bias": ("lm_head",),
    "electra": ("generator_predictions", "generator_lm_head"),
    "plain": ("lm_head",),
}


def _attach(root: nn.Module, path: str, module: nn.Module) -> None:
    """Set ``module`` at the dotted ``path`` under ``root``, making empty parents (``model.decoder``, ``cls``)."""
    *parents, leaf = path.split(".")
    for name in parents:
        if not hasattr(root, name):
            setattr(root, name, nn.Module())
        root = getattr(root, name)
    setattr(root, leaf, module)


class CausalLM(PreTrainedModel):
    """A base model (``base_class``) under ``base_model_prefix`` plus the LM head ``config.head``: a decoder.

    The head's output matrix is tied to the input embeddings unless ``tie_word_embeddings`` is false.
    """

    role = "decoder"
    base_class: type[BaseModel]
    base_kwargs: dict = {"add_pooling_layer": False}

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        _attach(self, self.base_model_prefix, self.base_class(config, **self.base_kwargs))
        d, v = config.hidden_size, config.vocab_size
        head = config.head
        if head == "electra":
            self.generator_predictions = LMHead(config)
            self.generator_lm_head = Linear(config.embed_width, v)
        elif head == "plain":
            self.lm_head = Linear(d, v, bias=False)
        else:
            _attach(self, HEAD_MODULES[head][0], LMHead(config))
        self.tie_weights()

    def _base(self) -> nn.Module:
        return self.get_submodule(self.base_model_prefix)

    def blocks(self) -> nn.ModuleList:
        return self._base().blocks()

    def cross_keys_values(self, encoder_hidden_states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's cross-attention keys and values (B,H,S,K): computed once per generation."""
        return [b.cross_attention().keys_values(encoder_hidden_states) for b in self.blocks()]

    def get_input_embeddings(self) -> nn.Embedding:
        return self._base().get_input_embeddings()

    def get_output_embeddings(self) -> nn.Linear:
        return self.get_submodule(architecture(self.config.model_type).output_weight[0].removesuffix(".weight"))

    @calls.signature("causal_lm")
    def forward(self, a):
        base = self._base()(**{n: getattr(a, n) for n in calls.TO_BASE}, return_dict=True)
        logits = self.head_logits(base.last_hidden_state)  # (B,T,V)
        loss = None if a.labels is None else causal_lm_loss(logits, a.labels)
        return driver.causal_lm_output(
            base, logits, loss, self.config.return_dict if a.return_dict is None else a.return_dict
        )

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The LM head: the base model's last states (B,T,D) -> logits (B,T,V)."""
        for name in HEAD_MODULES[self.config.head]:
            x = self.get_submodule(name)(x)
        return x


BertLMHeadModel = variant("BertLMHeadModel", CausalLM, "bert", base_model_prefix="bert", base_class=BertModel)
RobertaForCausalLM = variant(
    "RobertaForCausalLM", CausalLM, "roberta", base_model_prefix="roberta", base_class=RobertaModel
)
XLMRobertaForCausalLM = variant(
    "XLMRobertaForCausalLM", CausalLM, "xlm-roberta", base_model_prefix="roberta", base_class=XLMRobertaModel
)
CamembertForCausalLM = variant(
    "CamembertForCausalLM", CausalLM, "camembert", base_model_prefix="roberta", base_class=CamembertModel
)
BertGenerationDecoder = variant(
    "BertGenerationDecoder", CausalLM, "bert-generation", base_model_prefix="bert", base_class=BertGenerationEncoder
)
ElectraForCausalLM = variant(
    "ElectraForCausalLM", CausalLM, "electra", base_model_prefix="electra", base_class=ElectraModel
)


@register_model("pt", "gpt2", "encoder")
class GPT2Model(BaseModel):
    """GPT-2's transformer: token + position embeddings, pre-LN blocks, final LayerNorm."""

    config_class = GPT2Config

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.num_positions, config.hidden_size)
        self.drop = nn.Dropout(config.embed_dropout)
        self.h = layer_stack(config)
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.pooler = None

    def blocks(self) -> nn.ModuleList:
        return self.h

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def embed(self, input_ids, position_ids, token_type_ids, inputs_embeds, past):
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B,T,D)
        if position_ids is None:  # GPT-2 counts positions regardless of padding
            position_ids = (past + torch.arange(x.shape[1], device=x.device))[None]
        x = x + self.wpe(position_ids)
        if token_type_ids is not None:
            x = x + self.wte(token_type_ids)
        return self.drop(x)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_f(x)


GPT2LMHeadModel = variant(
    "GPT2LMHeadModel", CausalLM, "gpt2", base_model_prefix="transformer", base_class=GPT2Model, base_kwargs={}
)
BartForCausalLM = variant(
    "BartForCausalLM",
    CausalLM,
    "bart",
    "BART's causal LM: the decoder under ``model.decoder``, ``lm_head`` tied.",
    base_model_prefix="model.decoder",
    base_class=BartDecoder,
    base_kwargs={},
)
MBartForCausalLM = variant("MBartForCausalLM", BartForCausalLM, "mbart", "MBart's LM: pre-LN, final ``layer_norm``.")

# the model classes with Transformers' names (BertModel, BertLMHeadModel, ..., MBartForCausalLM)
__all__ = [
    n
    for n, c in list(globals().items())
    if isinstance(c, type) and issubclass(c, (BaseModel, CausalLM)) and c not in (BaseModel, CausalLM, BartDecoder)
]
