"""Registry: ``model_type`` -> config class, weight table, and each backend's model classes.

The core knows which architectures exist; each backend registers the class that builds an
encoder (base model) or a causal-LM decoder for a model type, the job of HF's ``AutoModel`` /
``AutoModelForCausalLM``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from encdec_core.configs import CONFIG_CLASSES, PretrainedConfig
from encdec_core.errors import ConfigError

ROLES = ("encoder", "decoder")
_MODELS: dict[tuple[str, str, str], type] = {}
T = TypeVar("T", bound=type)


def register_model(backend: str, model_type: str, role: str) -> Callable[[T], T]:
    """Class decorator: ``@register_model("pt", "bert", "decoder")`` on ``BertLMHeadModel``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")

    def deco(cls: T) -> T:
        _MODELS[(backend, model_type, role)] = cls
        return cls

    return deco


def register_variant(backend: str, module: str, name: str, base: type, model_type: str, doc: str = "", **attrs) -> type:
    """The class ``name`` of ``module``: ``base`` with ``model_type``'s config class (and ``attrs``: another base
    model, prefix or module), registered for that model type in ``base.role``. A family whose arithmetic and
    parameter names are another's, read through its config's flags, is one such line in each backend."""
    body = {"config_class": config_class(model_type), "__module__": module, "__qualname__": name, **attrs}
    cls = type(name, (base,), {**body, "__doc__": doc or f"{name}: {base.__name__} for {model_type!r} configs."})
    return register_model(backend, model_type, base.role)(cls)


def model_class(backend: str, config: PretrainedConfig, role: str) -> type:
    """The class a backend uses for ``config.model_type`` in ``role``."""
    key = (backend, config.model_type, role)
    if key not in _MODELS:
        usable = sorted(mt for (b, mt, r) in _MODELS if b == backend and r == role)
        what = "an encoder" if role == "encoder" else "a decoder with cross-attention"
        raise ConfigError(
            f"model_type {config.model_type!r} cannot be used as {what} in backend {backend!r}; supported: {usable}"
        )
    return _MODELS[key]


def config_class(model_type: str) -> type[PretrainedConfig]:
    try:
        return CONFIG_CLASSES[model_type]
    except KeyError:
        raise ConfigError(f"unknown model_type {model_type!r}; expected one of {sorted(CONFIG_CLASSES)}") from None


__all__ = ["register_model", "register_variant", "model_class", "config_class", "ROLES"]
