"""Model configurations with Hugging Face ``config.json`` keys and defaults.

Each config is a dataclass whose fields are exactly the HF keys of that architecture, with
HF's defaults. Reading keeps every key: the ones we do not model are stored in ``extra`` and
written back unchanged, so a ``config.json`` survives a round trip through encdec.
HF key names appear here and nowhere else in the library.

>>> from encdec_core import BertConfig, GPT2Config, EncoderDecoderConfig
>>> enc = BertConfig(hidden_size=36, num_attention_heads=3)
>>> cfg = EncoderDecoderConfig.from_encoder_decoder_configs(enc, GPT2Config(n_embd=36, n_head=3))
>>> cfg.decoder.is_decoder, cfg.decoder.add_cross_attention
(True, True)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from encdec_core.errors import ConfigError

# Keys HF writes that carry no meaning for a model (bookkeeping of the writer).
_IGNORED_ON_COMPARE = {"transformers_version", "encdec_version"}


def _check_type(owner: str, name: str, value: Any, hint: Any) -> Any:
    """Validate ``value`` against a field's type hint; ints are accepted where floats go."""
    if value is None:
        if hint is Any or type(None) in typing.get_args(hint):
            return value
        raise ConfigError(f"{owner}: field '{name}' must not be null (expected {_hint_name(hint)})")
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for t in allowed:
        if t is Any or t is type(None):
            continue
        origin = typing.get_origin(t) or t
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is bool and isinstance(value, bool):
            return value
        if origin in (str, list, dict) and isinstance(value, origin):
            return value
    if Any in allowed:
        return value
    raise ConfigError(f"{owner}: field '{name}' expected {_hint_name(hint)}, got {type(value).__name__} {value!r}")


def _hint_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_hint_name(a) for a in args)
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


@dataclass
class PretrainedConfig:
    """Fields every HF config has; subclasses add the architecture's own.

    Unknown keys of a ``config.json`` are kept in ``extra`` and written back as they came.
    """

    model_type: ClassVar[str] = ""
    # HF renames: attribute name -> key in config.json (GPT-2 calls hidden_size n_embd, ...)
    attribute_map: ClassVar[dict[str, str]] = {}
    # What the backends read, one name per meaning whatever HF's key: norm_eps (LayerNorm epsilon),
    # hidden_dropout (residual branches), attn_dropout (attention probabilities), embed_dropout,
    # act_name (feed-forward activation), num_positions (rows of the position table).
    vocabulary: ClassVar[dict[str, str]] = {}

    is_decoder: bool = False  # causal self-attention (a decoder)
    add_cross_attention: bool = False  # decoder layers attend to encoder states
    cross_attention_hidden_size: int | None = None  # encoder width seen by cross-attention
    tie_word_embeddings: bool = True  # LM head shares the input embedding matrix
    tie_encoder_decoder: bool = False  # decoder base shares the encoder's weights
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    decoder_start_token_id: int | None = None
    architectures: list | None = None  # class names HF writes (informative only)
    # Transformers' output switches, the defaults of a call that leaves them None
    return_dict: bool = True
    output_attentions: bool = False
    output_hidden_states: bool = False
    extra: dict = field(default_factory=dict, repr=False)  # unknown keys, round-tripped

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if f.name != "extra":
                setattr(self, f.name, _check_type(self._owner(), f.name, getattr(self, f.name), hints[f.name]))
        self.validate()

    def _owner(self) -> str:
        return f"{type(self).__name__}"

    def validate(self) -> None:
        """Check combinations of fields; subclasses extend."""

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: resolve HF aliases, then unknown keys.
        amap = type(self).attribute_map
        if name in amap:
            return getattr(self, amap[name])
        if name in type(self).vocabulary:
            return getattr(self, type(self).vocabulary[name])
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        name = type(self).attribute_map.get(name, name)
        name = type(self).vocabulary.get(name, name)
        if name in {f.name for f in dataclasses.fields(self)} or name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self.__dict__.setdefault("extra", {})[name] = value

    # ----------------------------------------------------------------- dict / json
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> PretrainedConfig:
        """Build from a ``config.json`` dict; unknown keys go to ``extra``."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        mt = data.get("model_type", cls.model_type)
        if cls.model_type and mt != cls.model_type:
            raise ConfigError(f"{source}: model_type is {mt!r}, expected {cls.model_type!r} for {cls.__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known, extra = {}, {}
        for key, value in data.items():
            if key == "model_type":
                continue
            (known if key in names else extra)[key] = copy.deepcopy(value)
        try:
            cfg = cls(**known, extra=extra)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        cfg._source_keys = set(data)
        return cfg

    def to_dict(self, *, nested: bool = False) -> dict[str, Any]:
        """The ``config.json`` dict as HF writes it, then the unknown keys.

        Like HF, an architecture's own fields are always written, while a field every config
        shares is written only when it differs from the shared default (standalone) or from
        the class's default (nested in an encoder-decoder config), or when the file we read
        had it; so a file read and written again comes out key for key the same.
        """
        out: dict[str, Any] = {}
        read = self.__dict__.get("_source_keys", set())
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            shared = f.name in _SHARED_DEFAULTS
            default = f.default if nested else _SHARED_DEFAULTS.get(f.name)
            if not shared or f.name in read or value != default:
                out[f.name] = copy.deepcopy(value)
        out.update(copy.deepcopy(self.extra))
        out["model_type"] = self.model_type
        return out

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> PretrainedConfig:
        return cls.from_dict(_read_json(Path(path)), source=str(path))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def copy(self) -> PretrainedConfig:
        return copy.deepcopy(self)

    def equivalent(self, other: PretrainedConfig) -> bool:
        """Same meaning, ignoring writer bookkeeping such as ``transformers_version``."""
        strip = lambda d: {k: v for k, v in d.items() if k not in _IGNORED_ON_COMPARE}  # noqa: E731
        return type(self) is type(other) and strip(self.to_dict()) == strip(other.to_dict())

    @property
    def num_heads(self) -> int:
        return self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def cross_width(self) -> int:
        """The width of the states cross-attention reads (the encoder's)."""
        return self.cross_attention_hidden_size or self.hidden_size

    @property
    def position_limit(self) -> int:
        """The longest input the position table covers."""
        return self.num_positions

    def attention_scale(self, layer_idx: int) -> float:
        """The factor on attention scores in layer ``layer_idx``: 1 / sqrt(head width)."""
        return 1.0 / math.sqrt(self.head_dim)

    def _check_heads(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"{self._owner()}: hidden size {self.hidden_size} is not divisible by "
                f"the number of attention heads {self.num_attention_heads}"
            )
        for name in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{self._owner()}: field '{name}' must be positive, got {getattr(self, name)}")


# Defaults of the fields every config shares (HF's PretrainedConfig); see to_dict.
_SHARED_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PretrainedConfig) if f.name != "extra"}
_SHARED_DEFAULTS["vocab_size"] = None  # only EncoderDecoderConfig has it as a shared-style field


@dataclass
class BertConfig(PretrainedConfig):
    """BERT (``model_type="bert"``), post-LayerNorm transformer with learned positions."""

    model_type: ClassVar[str] = "bert"
    vocabulary: ClassVar[dict[str, str]] = {
        "norm_eps": "layer_norm_eps",
        "hidden_dropout": "hidden_dropout_prob",
        "attn_dropout": "attention_probs_dropout_prob",
        "embed_dropout": "hidden_dropout_prob",
        "act_name": "hidden_act",
        "num_positions": "max_position_embeddings",
    }

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072  # width of the feed-forward layer
    hidden_act: str = "gelu"  # exact (erf) GELU
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    position_embedding_type: str = "absolute"
    use_cache: bool = True
    classifier_dropout: float | None = None
    pad_token_id: int | None = 0

    def validate(self) -> None:
        self._check_heads()
        if self.position_embedding_type != "absolute":
            raise ConfigError(
                f"{self._owner()}: field 'position_embedding_type' is {self.position_embedding_type!r}; "
                "only 'absolute' is supported"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"{self._owner()}: field 'hidden_act' is {self.hidden_act!r}, expected one of {sorted(ACTIVATIONS)}"
            )


@dataclass
class RobertaConfig(BertConfig):
    """RoBERTa: BERT with position ids counted from ``pad_token_id + 1`` over real tokens."""

    model_type: ClassVar[str] = "roberta"

    vocab_size: int = 50265
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list | None = 2

    @property
    def position_limit(self) -> int:
        # positions count from padding_idx + 1, so the first pad + 1 rows are never a real token's
        pad = self.pad_token_id
        return self.max_position_embeddings - (pad + 1 if pad is not None else 0)


@dataclass
class GPT2Config(PretrainedConfig):
    """GPT-2: pre-LayerNorm transformer; HF names its widths ``n_embd``, ``n_head``, ..."""

    model_type: ClassVar[str] = "gpt2"
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }
    vocabulary: ClassVar[dict[str, str]] = {
        "norm_eps": "layer_norm_epsilon",
        "hidden_dropout": "resid_pdrop",
        "attn_dropout": "attn_pdrop",
        "embed_dropout": "embd_pdrop",
        "act_name": "activation_function",
        "num_positions": "n_positions",
    }

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # feed-forward width; None means 4 * n_embd
    activation_function: str = "gelu_new"  # tanh approximation of GELU
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    summary_type: str = "cls_index"
    summary_use_proj: bool = True
    summary_activation: str | None = None
    summary_proj_to_labels: bool = True
    summary_first_dropout: float = 0.1
    scale_attn_weights: bool = True  # divide scores by sqrt(head_dim)
    use_cache: bool = True
    scale_attn_by_inverse_layer_idx: bool = False  # also divide by (layer index + 1)
    reorder_and_upcast_attn: bool = False
    bos_token_id: int | None = 50256
    eos_token_id: int | list | None = 50256

    @property
    def intermediate_size(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def attention_scale(self, layer_idx: int) -> float:
        scale = super().attention_scale(layer_idx) if self.scale_attn_weights else 1.0
        if self.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        return scale

    def validate(self) -> None:
        self._check_heads()
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(
                f"{self._owner()}: field 'activation_function' is {self.activation_function!r}, "
                f"expected one of {sorted(ACTIVATIONS)}"
            )


# Activation names HF uses -> meaning; each backend implements these two, nothing else.
ACTIVATIONS = {"gelu": "erf", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}

CONFIG_CLASSES: dict[str, type[PretrainedConfig]] = {c.model_type: c for c in (BertConfig, RobertaConfig, GPT2Config)}


def config_from_dict(data: dict[str, Any], *, source: str = "config") -> PretrainedConfig:
    """Pick the config class by ``model_type`` and build it."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
    mt = data.get("model_type")
    if mt == EncoderDecoderConfig.model_type:
        return EncoderDecoderConfig.from_dict(data, source=source)
    if not isinstance(mt, str) or mt not in CONFIG_CLASSES:
        raise ConfigError(
            f"{source}: unknown model_type {mt!r}; expected one of "
            f"{sorted(CONFIG_CLASSES) + [EncoderDecoderConfig.model_type]}"
        )
    return CONFIG_CLASSES[mt].from_dict(data, source=source)


@dataclass
class EncoderDecoderConfig(PretrainedConfig):
    """An encoder config and a decoder config, nested under ``encoder`` / ``decoder``.

    The top level carries the special tokens the wrapper needs (``decoder_start_token_id``,
    ``pad_token_id``) as in HF's ``config.json`` of ``model_type="encoder-decoder"``.
    """

    model_type: ClassVar[str] = "encoder-decoder"

    encoder: Any = None  # PretrainedConfig of the encoder
    decoder: Any = None  # PretrainedConfig of the decoder (is_decoder, add_cross_attention)
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = True
    # HF keeps the decoder's vocabulary size at the top level when asked; unset by default.
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        for side in ("encoder", "decoder"):
            sub = getattr(self, side)
            if isinstance(sub, dict):
                object.__setattr__(self, side, config_from_dict(sub, source=f"EncoderDecoderConfig.{side}"))
            elif not isinstance(sub, PretrainedConfig) or isinstance(sub, EncoderDecoderConfig):
                raise ConfigError(
                    f"EncoderDecoderConfig: field '{side}' expected a config (dict or BertConfig/"
                    f"RobertaConfig/GPT2Config), got {type(sub).__name__}"
                )
        super().__post_init__()

    def validate(self) -> None:
        dec, enc = self.decoder, self.encoder
        if not dec.is_decoder:
            raise ConfigError("EncoderDecoderConfig.decoder: field 'is_decoder' must be true")
        if not dec.add_cross_attention:
            raise ConfigError(
                "EncoderDecoderConfig.decoder: field 'add_cross_attention' must be true "
                "(the decoder must attend to the encoder)"
            )
        cross = dec.cross_attention_hidden_size
        if cross is not None and cross != enc.hidden_size:
            raise ConfigError(
                f"EncoderDecoderConfig.decoder: field 'cross_attention_hidden_size' is {cross}, "
                f"but the encoder's hidden_size is {enc.hidden_size}; they must agree"
            )

    @classmethod
    def from_encoder_decoder_configs(
        cls, encoder_config: PretrainedConfig, decoder_config: PretrainedConfig, **kwargs: Any
    ) -> EncoderDecoderConfig:
        """Combine two configs; the decoder is made causal with cross-attention."""
        dec = copy.deepcopy(decoder_config)
        dec.is_decoder = True
        dec.add_cross_attention = True
        return cls(encoder=copy.deepcopy(encoder_config), decoder=dec, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> EncoderDecoderConfig:
        for side in ("encoder", "decoder"):
            if side not in data:
                raise ConfigError(f"{source}: missing field '{side}' of an encoder-decoder config")
            if not isinstance(data[side], dict):
                raise ConfigError(f"{source}: field '{side}' expected an object, got {type(data[side]).__name__}")
        data = dict(data)
        enc = config_from_dict(data.pop("encoder"), source=f"{source} [encoder]")
        dec = config_from_dict(data.pop("decoder"), source=f"{source} [decoder]")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "encoder", "decoder"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: copy.deepcopy(v) for k, v in data.items() if k not in names and k != "model_type"}
        try:
            cfg = cls(encoder=enc, decoder=dec, **known, extra=extra)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        cfg._source_keys = set(data) | {"encoder", "decoder"}
        return cfg

    def to_dict(self, *, nested: bool = False) -> dict[str, Any]:
        out = super().to_dict()
        out["encoder"] = self.encoder.to_dict(nested=True)
        out["decoder"] = self.decoder.to_dict(nested=True)
        return out


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def load_config(folder_or_file: str | os.PathLike) -> PretrainedConfig:
    """Read ``config.json`` from a folder (or the file itself) into the right config class."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / "config.json"
    config = config_from_dict(_read_json(path), source=str(path))
    config._name_or_path = str(path.parent)  # where it came from (not written back; see encdec_tf's config setter)
    return config


__all__ = [
    "PretrainedConfig",
    "BertConfig",
    "RobertaConfig",
    "GPT2Config",
    "EncoderDecoderConfig",
    "CONFIG_CLASSES",
    "ACTIVATIONS",
    "config_from_dict",
    "load_config",
]
