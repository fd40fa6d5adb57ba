"""encdec's backend-agnostic core: configs, weight tables, checkpoint I/O, hub, errors.

Imports numpy, safetensors and huggingface_hub only; never a deep-learning framework.
"""

from encdec_core.configs import (
    BartConfig,
    BertConfig,
    BertGenerationConfig,
    CamembertConfig,
    DistilBertConfig,
    ElectraConfig,
    EncoderDecoderConfig,
    GPT2Config,
    MBartConfig,
    PretrainedConfig,
    RobertaConfig,
    XLMRobertaConfig,
    config_from_dict,
    load_config,
)
from encdec_core.errors import (
    CheckpointError,
    ConfigError,
    EncdecError,
    GenerationError,
    InputError,
    ShapeMismatchError,
)
from encdec_core.report import LoadingReport

__version__ = "0.1.0"

__all__ = [
    "BertConfig",
    "RobertaConfig",
    "GPT2Config",
    "XLMRobertaConfig",
    "CamembertConfig",
    "BertGenerationConfig",
    "ElectraConfig",
    "DistilBertConfig",
    "BartConfig",
    "MBartConfig",
    "EncoderDecoderConfig",
    "PretrainedConfig",
    "config_from_dict",
    "load_config",
    "EncdecError",
    "ConfigError",
    "CheckpointError",
    "ShapeMismatchError",
    "InputError",
    "GenerationError",
    "LoadingReport",
    "__version__",
]
