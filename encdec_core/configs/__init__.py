"""Model configurations with Hugging Face ``config.json`` keys and defaults.

Each config is a dataclass whose fields are exactly the HF keys of that architecture, with
HF's defaults. Reading keeps every key: the ones we do not model are stored in ``extra`` and
written back unchanged, so a ``config.json`` survives a round trip through encdec.
HF key names appear in this package (:mod:`.base`, :mod:`.families`) and nowhere else in the library.

>>> from encdec_core import BertConfig, GPT2Config, EncoderDecoderConfig
>>> enc = BertConfig(hidden_size=36, num_attention_heads=3)
>>> cfg = EncoderDecoderConfig.from_encoder_decoder_configs(enc, GPT2Config(n_embd=36, n_head=3))
>>> cfg.decoder.is_decoder, cfg.decoder.add_cross_attention
(True, True)
"""

from encdec_core.configs.base import *  # noqa: F403
from encdec_core.configs.base import __all__ as _base_all
from encdec_core.configs.base import _check_type, _read_json  # noqa: F401  (GenerationConfig, tests)
from encdec_core.configs.families import *  # noqa: F403
from encdec_core.configs.families import __all__ as _families_all

__all__ = [*_base_all, *_families_all]
