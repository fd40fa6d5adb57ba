"""encdec's Flax/JAX backend: ``FlaxEncoderDecoderModel`` and the BERT, RoBERTa, GPT-2 models.

>>> from encdec_flax import FlaxEncoderDecoderModel, BertModel, GPT2LMHeadModel  # doctest: +SKIP
"""

from encdec_core import BertConfig, EncoderDecoderConfig, GPT2Config, RobertaConfig
from encdec_flax.encoder_decoder import FlaxEncoderDecoderModel
from encdec_flax.modeling_utils import FlaxPreTrainedModel
from encdec_flax.models import (
    BertLMHeadModel,
    BertModel,
    GPT2LMHeadModel,
    GPT2Model,
    RobertaForCausalLM,
    RobertaModel,
)
from encdec_flax.training import make_train_step

__all__ = [
    "FlaxEncoderDecoderModel",
    "FlaxPreTrainedModel",
    "BertModel",
    "BertLMHeadModel",
    "RobertaModel",
    "RobertaForCausalLM",
    "GPT2Model",
    "GPT2LMHeadModel",
    "make_train_step",
    "BertConfig",
    "RobertaConfig",
    "GPT2Config",
    "EncoderDecoderConfig",
]
