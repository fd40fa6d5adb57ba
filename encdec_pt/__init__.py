"""encdec's PyTorch backend: ``EncoderDecoderModel`` and the encoder / decoder models (``encdec_pt.models``).

>>> from encdec_pt import EncoderDecoderModel, BertModel, GPT2LMHeadModel  # doctest: +SKIP
"""

from encdec_core import BertConfig, EncoderDecoderConfig, GPT2Config, RobertaConfig
from encdec_pt import models
from encdec_pt.encoder_decoder import EncoderDecoderModel
from encdec_pt.modeling_utils import PreTrainedModel
from encdec_pt.models import *  # noqa: F403  (the architectures, models.__all__: the same names in every backend)

__all__ = ["EncoderDecoderModel", "PreTrainedModel", *models.__all__]
__all__ += ["BertConfig", "RobertaConfig", "GPT2Config", "EncoderDecoderConfig"]
