"""The wrapper driver: everything about loading and calling a model that touches no tensor.

The three backends' model classes differ only in tensor work; what they decide alike lives
here once:

* the routing of loading keywords (:func:`split_load_kwargs`): Hub options go to
  :func:`~encdec_core.hub.resolve_checkpoint`, Transformers' loading flags (``from_pt``,
  ``low_cpu_mem_usage``, ``attn_implementation``, ...) to the backend, which honours or
  accepts them, and only the rest are config overrides, so no flag ends up in ``config.json``;
* :func:`prepare_load`: the checkpoint folder and the config of a ``from_pretrained``;
* the lookup of the part classes by ``model_type`` (:func:`class_for`) and the routing of
  ``from_encoder_decoder_pretrained``'s arguments (:func:`split_warm_start_kwargs`,
  :func:`warm_start_parts`): ``encoder_`` / ``decoder_`` prefixes, the wrapper's special
  tokens and config overrides;
* :class:`EncoderDecoderDriver`, the framework-free half of each ``*EncoderDecoderModel``:
  tables, ties, accessors, the warm start and the generation-config reload after
  ``from_pretrained``.

>>> top, parts = split_warm_start_kwargs({"decoder_start_token_id": 2, "encoder_revision": "v1", "decoder_n_positions": 40})
>>> top, parts["encoder"], parts["decoder"]
({'decoder_start_token_id': 2}, {'revision': 'v1'}, {'n_positions': 40})
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

from encdec_core.configs import EncoderDecoderConfig, PretrainedConfig, load_config
from encdec_core.errors import ConfigError, InputError
from encdec_core.generation import GenerationConfig
from encdec_core.hub import resolve_checkpoint
from encdec_core.outputs import (  # re-exported: the wrappers reach them through the driver
    as_encoder_output,
    causal_lm_output,
    encoder_states,
    seq2seq_output,
)
from encdec_core.registry import model_class
from encdec_core.report import LoadingReport
from encdec_core.semantics import split_prefixed_kwargs
from encdec_core.tables import Param, Tie, encoder_decoder_table, encoder_decoder_ties, needs_projection

logger = logging.getLogger("encdec")

# Keywords of resolve_checkpoint: where a checkpoint comes from.
HUB_KWARGS = ("revision", "cache_dir", "local_files_only", "token", "subfolder")
# Transformers' loading flags: honoured by a backend where they mean something there, accepted
# elsewhere, never config fields (each would otherwise be written into config.json).
LOAD_FLAGS = (
    "from_pt",
    "from_tf",
    "from_flax",
    "torch_dtype",
    "dtype",
    "low_cpu_mem_usage",
    "attn_implementation",
    "device_map",
    "use_safetensors",
    "trust_remote_code",
    "force_download",
    "resume_download",
    "proxies",
    "ignore_mismatched_sizes",
    "_fast_init",
    "mirror",
    "offload_folder",
    "offload_state_dict",
    "max_memory",
    "weights_only",
    "variant",
    "_from_auto",
    "_commit_hash",
)
# The wrapper's own special tokens, taken before prefixes are split, so ``decoder_start_token_id``
# is not mistaken for a decoder field ``start_token_id``.
WRAPPER_TOKENS = ("decoder_start_token_id", "pad_token_id", "eos_token_id", "bos_token_id")
# The weights a warm start adds when the encoder's width differs from the decoder's.
PROJECTION_WEIGHTS = ("enc_to_dec_proj.weight", "enc_to_dec_proj.bias")
ROLES = ("encoder", "decoder")
# Config attributes Transformers takes as overrides on every config though we keep no field for
# them on each (an EncoderDecoderConfig has no use_cache field: it is kept as an extra key).
CONFIG_EXTRAS = ("use_cache",)


def config_names(config: PretrainedConfig) -> set[str]:
    """Every name a keyword argument may set on ``config``: fields, HF aliases, our vocabulary, kept extras."""
    cls = type(config)
    return (
        ({f.name for f in dataclasses.fields(cls)} - {"extra"})
        | set(cls.attribute_map)
        | set(cls.vocabulary)
        | set(config.extra)
        | set(CONFIG_EXTRAS)
    )


def check_overrides(config: PretrainedConfig, overrides: dict, what: str) -> None:
    """A keyword argument that is no config name, Hub option or loading flag is a typo: say which."""
    if unknown := sorted(set(overrides) - config_names(config)):
        raise InputError(
            f"{what}: unknown keyword argument(s) {unknown}: not fields of {type(config).__name__}, "
            f"Hub options {list(HUB_KWARGS)} or loading flags (encdec_core.driver.LOAD_FLAGS)"
        )


@dataclasses.dataclass
class LoadArgs:
    """``from_pretrained``'s keyword arguments, sorted by who takes them."""

    hub: dict  # resolve_checkpoint's
    flags: dict  # loading flags (LOAD_FLAGS) that were given
    overrides: dict  # config fields to set


def split_load_kwargs(kwargs: dict) -> LoadArgs:
    """Sort ``kwargs`` into Hub options, loading flags and config overrides.

    >>> split_load_kwargs({"revision": "main", "from_tf": True, "is_decoder": True})
    LoadArgs(hub={'revision': 'main'}, flags={'from_tf': True}, overrides={'is_decoder': True})
    """
    hub = {k: v for k, v in kwargs.items() if k in HUB_KWARGS}
    flags = {k: v for k, v in kwargs.items() if k in LOAD_FLAGS}
    overrides = {k: v for k, v in kwargs.items() if k not in hub and k not in flags}
    return LoadArgs(hub, flags, overrides)


def with_overrides(config: PretrainedConfig, overrides: dict[str, Any]) -> PretrainedConfig:
    """A copy of ``config`` with fields set from keyword arguments (``is_decoder=True``), validated again."""
    if not overrides:
        return config
    config = config.copy()
    for key, value in overrides.items():
        setattr(config, key, value)
    try:
        config.__post_init__()
    except ConfigError as e:
        raise ConfigError(f"{e} (after applying {sorted(overrides)})") from None
    return config


def prepare_load(
    cls: type, name_or_path: str | os.PathLike, config: PretrainedConfig | None, kwargs: dict
) -> tuple[Path, PretrainedConfig, dict]:
    """The folder, the config (read unless given, overrides applied) and the loading flags of a load.

    ``cls`` is the model class being loaded: its ``config_class`` must match the checkpoint's.
    """
    args = split_load_kwargs(kwargs)
    folder = resolve_checkpoint(name_or_path, **args.hub)
    config = config if config is not None else load_config(folder)
    check_overrides(config, args.overrides, f"{cls.__name__}.from_pretrained")
    config = with_overrides(config, args.overrides)
    if not isinstance(config, cls.config_class):
        raise ConfigError(
            f"{folder / 'config.json'}: model_type {config.model_type!r} cannot be loaded into "
            f"{cls.__name__} (expects {cls.config_class.model_type!r})"
        )
    return folder, config, args.flags


def weight_formats(native: tuple[str, ...], flags: dict) -> tuple[str, ...]:
    """The checkpoint formats a backend reads, in order: its ``native`` ones first, unless a
    Transformers flag (``from_pt``, ``from_tf``, ``from_flax``) asks for another framework's first.

    >>> weight_formats(("pt", "bin"), {"from_tf": True})
    ('h5', 'tf', 'pt', 'bin', 'msgpack', 'flax')
    """
    by_flag = {"from_pt": ("pt", "bin"), "from_tf": ("h5", "tf"), "from_flax": ("msgpack", "flax")}
    first = next((by_flag[f] for f in by_flag if flags.get(f)), native)
    every = ("pt", "bin", "h5", "tf", "msgpack", "flax")
    return tuple(dict.fromkeys((*first, *native, *every)))


def save_format(save_format: str | None, safe_serialization: bool | None, formats: tuple[str, str]) -> str:
    """The format a save writes: ``formats`` is (safetensors, the framework's legacy file: "h5", "msgpack").

    ``safe_serialization`` is Transformers' keyword (False: the legacy file); ``save_format`` ours.

    >>> save_format(None, False, ("safetensors", "h5"))
    'h5'
    """
    if save_format is not None and save_format not in formats:
        raise InputError(f"save_format expected one of {list(formats)}, got {save_format!r}")
    if safe_serialization is None:
        return save_format or formats[0]
    wanted = formats[0] if safe_serialization else formats[1]
    if save_format is not None and save_format != wanted:
        raise InputError(
            f"save_pretrained: save_format={save_format!r} contradicts "
            f"safe_serialization={safe_serialization!r}; give one of them"
        )
    return wanted


def class_for(backend: str, path: str | os.PathLike, role: str, kwargs: dict) -> type:
    """The backend's class for the checkpoint at ``path`` in ``role`` (the job of HF's Auto* classes).

    ``kwargs`` are the part's loading arguments: a ``config=`` there wins over the checkpoint's.
    """
    config = kwargs.get("config")
    if config is None:
        config = load_config(resolve_checkpoint(path, **{k: kwargs[k] for k in HUB_KWARGS if k in kwargs}))
    return model_class(backend, config, role)


def split_warm_start_kwargs(kwargs: dict) -> tuple[dict, dict[str, dict]]:
    """``from_encoder_decoder_pretrained``'s arguments: (wrapper config fields, {role: the part's kwargs}).

    As in HF, arguments without a prefix are fields of the :class:`EncoderDecoderConfig`
    (``tie_encoder_decoder=True``); an unknown one is an error naming it.
    """
    kwargs = dict(kwargs)
    top = {k: kwargs.pop(k) for k in WRAPPER_TOKENS if k in kwargs}
    top.update({k: kwargs.pop(k) for k in list(kwargs) if not k.startswith(("encoder_", "decoder_"))})
    known = {f.name for f in dataclasses.fields(EncoderDecoderConfig)} | set(CONFIG_EXTRAS)
    if unknown := sorted(set(top) - known - {"extra"}):
        raise InputError(
            f"from_encoder_decoder_pretrained: unknown argument(s) {unknown}; prefix encoder_/decoder_ "
            "to pass them to one part, or use fields of EncoderDecoderConfig"
        )
    enc, dec = split_prefixed_kwargs(kwargs, "decoder_", "encoder_")
    return top, {"encoder": enc, "decoder": dec}


def warm_start_parts(
    backend: str, paths: dict[str, Any], kwargs: dict, load: Any
) -> tuple[EncoderDecoderConfig, dict[str, Any], list[LoadingReport]]:
    """Load (or take) the encoder and the decoder of a warm start and combine their configs.

    ``paths``: {role: path or repo id or None}; ``load(part_class, path, part_kwargs)`` returns
    ``(model, report)``. ``encoder_model=`` / ``decoder_model=`` pass ready models. The decoder
    is loaded causal with cross-attention unless its kwargs say otherwise.
    """
    top, part_kwargs = split_warm_start_kwargs(kwargs)
    parts, reports = {}, []
    for role in ROLES:
        kw = part_kwargs[role]
        part = kw.pop("model", None)
        if part is None:
            if paths[role] is None:
                raise InputError(
                    f"from_encoder_decoder_pretrained: give {'an' if role == 'encoder' else 'a'} "
                    f"{role} path or repo id, or `{role}_model=`"
                )
            if role == "decoder":
                kw.setdefault("is_decoder", True)
                kw.setdefault("add_cross_attention", True)
            part, report = load(class_for(backend, paths[role], role, kw), paths[role], kw)
            reports.append(report.prefixed(f"{role}."))
        parts[role] = part
    config = EncoderDecoderConfig.from_encoder_decoder_configs(parts["encoder"].config, parts["decoder"].config)
    for key, value in top.items():  # unset, as in HF, unless given here
        setattr(config, key, value)
    return config, parts, reports


def wrapper_config(name: str, config: EncoderDecoderConfig | None, encoder: Any, decoder: Any) -> EncoderDecoderConfig:
    """A wrapper's config: the one given, or the two parts' configs combined."""
    if config is None:
        if encoder is None or decoder is None:
            raise ConfigError(f"{name} needs either `config` or both `encoder` and `decoder`")
        return EncoderDecoderConfig.from_encoder_decoder_configs(encoder.config, decoder.config)
    if not isinstance(config, EncoderDecoderConfig):
        raise ConfigError(f"{name}: `config` expected an EncoderDecoderConfig, got {type(config).__name__}")
    return config


def check_decoder(name: str, decoder: Any) -> None:
    """The decoder part must have cross-attention layers; it is made causal here if it is not (as Transformers).

    Causality is read at call time, so ``is_decoder`` can still be set; cross-attention layers
    exist only if the decoder was built with ``add_cross_attention=True``.
    """
    config = decoder.config
    if not config.add_cross_attention:
        raise ConfigError(
            f"{name}: the decoder ({type(decoder).__name__}) must be built with add_cross_attention=True "
            "(its cross-attention layers are made at construction)"
        )
    if not config.is_decoder:
        logger.warning(
            "%s: the decoder (%s) was built with is_decoder=False; set to True (causal self-attention), "
            "as Transformers does",
            name,
            type(decoder).__name__,
        )
        config.is_decoder = True


def output_flags(
    config: PretrainedConfig,
    output_attentions: bool | None,
    output_hidden_states: bool | None,
    return_dict: bool | None,
) -> tuple[bool, bool, bool]:
    """A call's output switches: each one the call leaves as None comes from ``config``, as in Transformers."""
    return (
        bool(config.output_attentions if output_attentions is None else output_attentions),
        bool(config.output_hidden_states if output_hidden_states is None else output_hidden_states),
        bool(config.return_dict if return_dict is None else return_dict),
    )


def saved_generation_config(folder: Path | None) -> GenerationConfig | None:
    """The ``generation_config.json`` saved beside a checkpoint, if there is one."""
    path = None if folder is None else Path(folder) / "generation_config.json"
    return GenerationConfig.from_json_file(path) if path is not None and path.exists() else None


def _untie_if_copies_differ(name_or_path: str | os.PathLike, kwargs: dict) -> list[str]:
    """If the checkpoint's tied copies differ, put an untied copy of its config in ``kwargs``; return those names."""
    import copy

    from encdec_core.loading import differing_tied_copies

    given = kwargs.get("config")
    if given is not None and not getattr(given, "tie_encoder_decoder", False):
        return []
    folder = resolve_checkpoint(name_or_path, **{k: kwargs[k] for k in HUB_KWARGS if k in kwargs})
    config = given if given is not None else load_config(folder)
    untied = differing_tied_copies(config, folder) if getattr(config, "tie_encoder_decoder", False) else []
    if untied:
        config = copy.deepcopy(config)
        config.tie_encoder_decoder = False
        kwargs["config"] = config
    return untied


class EncoderDecoderDriver:
    """The framework-free half of ``EncoderDecoderModel``, ``TFEncoderDecoderModel`` and ``FlaxEncoderDecoderModel``.

    A backend's wrapper inherits it before its framework base and supplies the tensor work:
    ``_assemble(config, parts, options)`` builds the wrapper around two loaded parts and
    initialises a projection; ``_load_part(part_class, path, kwargs, options)`` loads one part.
    ``warm_start_options`` names the unprefixed arguments that are the backend's own (Flax's
    ``dtype``, ``seed``), not config fields.
    """

    backend: ClassVar[str] = ""
    warm_start_options: ClassVar[tuple[str, ...]] = ()
    config: EncoderDecoderConfig

    # ------------------------------------------------------------------ tables, accessors
    def weight_table(self) -> list[Param]:
        return encoder_decoder_table(self.config)

    def weight_ties(self) -> list[Tie]:
        return encoder_decoder_ties(self.config)

    def init_std(self) -> float:
        return self.config.decoder.initializer_range  # new weights (cross-attention, projection) feed the decoder

    def get_encoder(self) -> Any:
        return self.encoder

    def get_decoder(self) -> Any:
        return self.decoder

    def get_input_embeddings(self) -> Any:
        return self.encoder.get_input_embeddings()

    def get_output_embeddings(self) -> Any:
        return self.decoder.get_output_embeddings()

    def part_class_names(self) -> dict[str, str]:
        """{role: the class name ``config.json`` records for the part} (Transformers' PyTorch names)."""
        names = {}
        for role in ROLES:  # the part itself where the wrapper holds one (it may be a user's subclass)
            part = getattr(self, role, None)
            cls = type(part) if part is not None else model_class(self.backend, getattr(self.config, role), role)
            names[role] = cls.__name__.removeprefix("TF").removeprefix("Flax")
        return names

    def config_to_save(self) -> dict:
        cfg = super().config_to_save()
        for role, name in self.part_class_names().items():
            cfg[role]["architectures"] = [name]
        return cfg

    def generation_config_to_save(self) -> dict | None:
        return self._generation_config(None, {}).to_dict()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *model_args: Any, output_loading_info: bool = False, **kwargs: Any
    ):
        """Load a fine-tuned checkpoint; its ``generation_config.json``, if any, is ``model.generation_config``.

        A ``tie_encoder_decoder`` checkpoint whose encoder and decoder copies differ (written by a
        library that ignores the tie: Transformers 5) loads untied, as its writer computes; the
        report lists those weights as ``untied``.
        """
        untied = _untie_if_copies_differ(name_or_path, kwargs)
        model, report = super().from_pretrained(name_or_path, *model_args, output_loading_info=True, **kwargs)
        if untied:
            report.untied = untied
            report.log(logger)
        if (gen := saved_generation_config(getattr(model, "checkpoint_folder", None))) is not None:
            model.set_generation_config(gen)
        return (model, report) if output_loading_info else model

    @classmethod
    def from_encoder_decoder_pretrained(
        cls,
        encoder_pretrained_model_name_or_path: str | os.PathLike | None = None,
        decoder_pretrained_model_name_or_path: str | os.PathLike | None = None,
        *model_args: Any,
        **kwargs: Any,
    ):
        """Warm-start: load a pretrained encoder and a pretrained decoder, add cross-attention.

        ``encoder_*`` / ``decoder_*`` keyword arguments go to the two loads (config fields such
        as ``decoder_add_cross_attention``, hub options such as ``encoder_revision``, loading
        flags such as ``encoder_from_pt``); ``encoder_model=`` / ``decoder_model=`` pass ready
        models; arguments without a prefix are fields of the :class:`EncoderDecoderConfig`
        (``tie_encoder_decoder=True``, ``decoder_start_token_id=``). The decoder is made causal
        with cross-attention; its cross-attention weights (and ``enc_to_dec_proj`` when widths
        differ) are new and listed as expected in ``model.loading_report``.
        """
        options = {k: kwargs.pop(k) for k in cls.warm_start_options if k in kwargs}
        paths = {"encoder": encoder_pretrained_model_name_or_path, "decoder": decoder_pretrained_model_name_or_path}
        config, parts, reports = warm_start_parts(
            cls.backend, paths, kwargs, lambda part_cls, path, kw: cls._load_part(part_cls, path, kw, options)
        )
        model = cls._assemble(config, parts, options)
        new = list(PROJECTION_WEIGHTS) if needs_projection(config) else []
        model.loading_report = LoadingReport.merge(reports, extra_new=new)
        model.loading_report.log(logger)
        return model

    @classmethod
    def _load_part(cls, part_cls: type, path: Any, kwargs: dict, options: dict) -> tuple[Any, LoadingReport]:
        return part_cls.from_pretrained(path, output_loading_info=True, log_report=False, **options, **kwargs)

    @classmethod
    def _assemble(cls, config: EncoderDecoderConfig, parts: dict[str, Any], options: dict) -> Any:
        """The backend's tensor half of a warm start: build the wrapper from the loaded parts."""
        raise NotImplementedError(f"{cls.__name__} must define _assemble (each backend wrapper does)")


__all__ = [
    "HUB_KWARGS",
    "LOAD_FLAGS",
    "WRAPPER_TOKENS",
    "PROJECTION_WEIGHTS",
    "LoadArgs",
    "split_load_kwargs",
    "with_overrides",
    "config_names",
    "check_overrides",
    "prepare_load",
    "weight_formats",
    "save_format",
    "class_for",
    "split_warm_start_kwargs",
    "warm_start_parts",
    "wrapper_config",
    "check_decoder",
    "output_flags",
    "saved_generation_config",
    "as_encoder_output",
    "encoder_states",
    "seq2seq_output",
    "causal_lm_output",
    "EncoderDecoderDriver",
]
