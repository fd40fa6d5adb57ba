"""encdec's PyTorch backend: ``EncoderDecoderModel`` and the BERT, RoBERTa, GPT-2 models.

>>> from encdec_pt import EncoderDecoderModel, BertModel, GPT2LMHeadModel  # doctest: +SKIP
"""

from encdec_core import BertConfig, EncoderDecoderConfig, GPT2Config, RobertaConfig
from encdec_pt.encoder_decoder import EncoderDecoderModel
from encdec_pt.modeling_utils import PreTrainedModel
from encdec_pt.models import (
    BertLMHeadModel,
    BertModel,
    GPT2LMHeadModel,
    GPT2Model,
    RobertaForCausalLM,
    RobertaModel,
)

__all__ = [
    "EncoderDecoderModel",
    "PreTrainedModel",
    "BertModel",
    "BertLMHeadModel",
    "RobertaModel",
    "RobertaForCausalLM",
    "GPT2Model",
    "GPT2LMHeadModel",
    "BertConfig",
    "RobertaConfig",
    "GPT2Config",
    "EncoderDecoderConfig",
]
