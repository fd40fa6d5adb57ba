"""encdec's Flax/JAX backend: ``FlaxEncoderDecoderModel`` and the BERT, RoBERTa, GPT-2 models.

>>> from encdec_flax import FlaxEncoderDecoderModel, BertModel, GPT2LMHeadModel  # doctest: +SKIP
"""

from encdec_core import BertConfig, EncoderDecoderConfig, GPT2Config, RobertaConfig
from encdec_flax import models
from encdec_flax.encoder_decoder import FlaxEncoderDecoderModel
from encdec_flax.modeling_utils import FlaxPreTrainedModel
from encdec_flax.models import *  # noqa: F403  (the architectures, models.__all__)
from encdec_flax.training import make_train_step

__all__ = ["FlaxEncoderDecoderModel", "FlaxPreTrainedModel", *models.__all__, "make_train_step"]
__all__ += ["BertConfig", "RobertaConfig", "GPT2Config", "EncoderDecoderConfig"]
