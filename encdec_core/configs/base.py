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

    # How the backends build this architecture (one set of layers, flags not copies):
    layout: ClassVar[str] = "bert"  # parameter names of a block: bert | gpt2 | bart | distilbert
    pre_norm: ClassVar[bool] = False  # LayerNorm before each sublayer (GPT-2, MBart) or after the residual sum
    final_norm: ClassVar[bool] = False  # a LayerNorm after the last block (GPT-2's ln_f, MBart's layer_norm)
    position_rule: ClassVar[str] = "absolute"  # absolute (0, 1, ...) | roberta (counted over real tokens)
    position_offset: ClassVar[int] = 0  # rows of the position table before position 0 (BART: 2)
    # the HF key behind a derived size the tables name (for messages): ELECTRA's embed_width is embedding_size
    derived_keys: ClassVar[dict[str, str]] = {"embed_width": "hidden_size", "token_types": "type_vocab_size"}
    # generation settings an architecture's config carries (BART's forced_eos_token_id): written as the shared fields
    generation_keys: ClassVar[tuple[str, ...]] = ()
    head: ClassVar[str] = ""  # the LM head: bert | roberta | bias (BertGeneration) | electra | plain (GPT-2, BART)

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
            shared = f.name in _SHARED_DEFAULTS or f.name in type(self).generation_keys
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

    def key_of(self, name: str) -> str:
        """The ``config.json`` key a size the tables name comes from (``embed_width`` -> ``embedding_size``)."""
        return type(self).derived_keys.get(name, name)

    @property
    def num_heads(self) -> int:
        return self.num_attention_heads

    @property
    def num_layers(self) -> int:
        """The blocks this model stacks (a BART decoder's ``decoder_layers``)."""
        return self.num_hidden_layers

    @property
    def embed_width(self) -> int:
        """The width of the embedding tables (ELECTRA's ``embedding_size``; projected to ``hidden_size``)."""
        return self.hidden_size

    @property
    def has_cross_attention(self) -> bool:
        """Whether the blocks have cross-attention (BART's causal LM always builds it)."""
        return bool(self.add_cross_attention)

    @property
    def projects_embeddings(self) -> bool:
        """Whether ``embeddings_project`` maps the embeddings' width to the blocks' (ELECTRA)."""
        return self.embed_width != self.hidden_size

    @property
    def token_types(self) -> int:
        """Rows of the token-type table (0: none, as BertGeneration, DistilBERT, GPT-2, BART)."""
        return 0

    @property
    def embed_scale(self) -> float:
        """The factor on word embeddings (BART's ``scale_embedding``: sqrt(d_model))."""
        return 1.0

    @property
    def relative_attention(self) -> str | None:
        """BERT's ``relative_key`` / ``relative_key_query`` self-attention, or None (absolute positions)."""
        return None

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


# Activation names HF uses -> meaning; each backend implements these two, nothing else.
ACTIVATIONS = {"gelu": "erf", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}

# model_type -> config class, filled by register_config (encdec_core.configs.families)
CONFIG_CLASSES: dict[str, type[PretrainedConfig]] = {}


def register_config(cls: type[PretrainedConfig]) -> type[PretrainedConfig]:
    """Class decorator: ``config_from_dict`` builds ``cls`` for its ``model_type``."""
    CONFIG_CLASSES[cls.model_type] = cls
    return cls


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
                    f"EncoderDecoderConfig: field '{side}' expected a config (a dict or one of "
                    f"{sorted(c.__name__ for c in CONFIG_CLASSES.values())}), got {type(sub).__name__}"
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
    "EncoderDecoderConfig",
    "register_config",
    "CONFIG_CLASSES",
    "ACTIVATIONS",
    "config_from_dict",
    "load_config",
]
