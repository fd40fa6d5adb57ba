"""Loading, saving and initialising PyTorch models through the core tables.

Loading never random-initialises a weight that the checkpoint then overwrites: the model is
built on the ``meta`` device (shapes only), filled with the checkpoint's tensors read from
the memory-mapped safetensors file, and only the weights the checkpoint lacks (new
cross-attention, a projection) are materialised and initialised.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encdec_core import checkpoint as ckpt_io
from encdec_core import driver
from encdec_core.configs import PretrainedConfig
from encdec_core.errors import ConfigError, InputError
from encdec_core.formats.canonical import open_source
from encdec_core.formats.dtypes import dtype_code
from encdec_core.formats.fit import check_config_fits
from encdec_core.loading import plan_load
from encdec_core.report import LoadingReport
from encdec_core.tables import Param, Tie, encoder_decoder_table, model_table, model_ties, with_tied_copies

logger = logging.getLogger("encdec")

# True while a model's constructor runs: parts built inside it leave the init to the outermost model
_BUILDING = contextvars.ContextVar("encdec_pt_building", default=False)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def check_ids(config: PretrainedConfig, ids: torch.Tensor | None, name: str) -> None:
    """Token ids must be in [0, vocab_size): an out-of-range id would index garbage or crash deep inside."""
    if ids is None or torch.compiler.is_compiling():  # the check reads values: not inside a compiled graph
        return
    if not isinstance(ids, torch.Tensor):
        raise InputError(f"{name} expected a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype.is_floating_point:
        raise InputError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= config.vocab_size):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise InputError(f"{name} holds token id {bad}, expected ids in [0, {config.vocab_size}) (vocab_size)")


def resolve_dtype(dtype: Any) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str) and dtype.replace("torch.", "") in _DTYPES:
        return _DTYPES[dtype.replace("torch.", "")]
    raise InputError(f"torch_dtype expected one of {sorted(_DTYPES)}, 'auto' or a torch.dtype, got {dtype!r}")


def to_raw(t: torch.Tensor) -> ckpt_io.RawTensor:
    """A CPU tensor as a safetensors record, bf16 included (numpy cannot hold bf16)."""
    t = t.detach().to("cpu").contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
    return ckpt_io.RawTensor(dtype_code(t.dtype), tuple(t.shape), memoryview(data) if len(data) else b"")


def _init_after_build(init):
    """Wrap a model constructor: the outermost model built gets HF's init (Transformers' ``post_init``)."""

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        if _BUILDING.get():
            return init(self, *args, **kwargs)
        token = _BUILDING.set(True)
        try:
            init(self, *args, **kwargs)
        finally:
            _BUILDING.reset(token)
        self.post_init()

    return wrapped


class PreTrainedModel(nn.Module):
    """Base of every encdec PyTorch model: config, weight table, ties, load and save.

    A model built directly (``BertModel(config)``) is initialised as Transformers does it, with
    normal(0, ``initializer_range``) weights, once, by the outermost constructor; a model built
    by ``from_pretrained`` (on the meta device) is filled from its checkpoint instead.
    """

    init_on_build = True  # the encoder-decoder wrapper initialises only the parts it builds

    config_class: type[PretrainedConfig] = PretrainedConfig
    role = "encoder"  # encoder | decoder: which table describes the stored weights
    base_model_prefix = ""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} expected a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self.gradient_checkpointing = False
        self.register_load_state_dict_post_hook(_tied_are_not_missing)

    def state_dict(self, *args, **kwargs):
        """The module's tensors without the tied duplicates (the names a checkpoint stores).

        safetensors refuses tensors that share memory, and Transformers' Trainer saves this
        dict as it is for a model that is not its own; ``load_state_dict`` (strict too) fills
        the ties from their sources.
        """
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for tie in self.weight_ties():
            state.pop(prefix + tie.pt, None)
        return state

    # ------------------------------------------------------------------ tables and ties
    def weight_table(self) -> list[Param]:
        """The stored weights of this model (canonical names), from the core tables."""
        return model_table(self.config, self.role, add_pooling_layer=getattr(self, "pooler", None) is not None)

    def weight_ties(self) -> list[Tie]:
        return model_ties(self.config, self.role)

    def tie_weights(self) -> None:
        """Make each tied weight the same Parameter as its source."""
        for tie in self.weight_ties():
            owner, leaf = _owner(self, tie.pt)
            setattr(owner, leaf, self.get_parameter(tie.source))

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_weights(self, names: list[str] | None = None) -> None:
        """HF's init: normal(0, initializer_range) matrices and embeddings, zero biases, unit LayerNorm."""
        std = self.init_std()
        params = dict(self.named_parameters(remove_duplicate=False))
        for name in names if names is not None else list(params):
            p = params[name]
            owner, leaf = _owner(self, name)
            if isinstance(owner, nn.LayerNorm):
                p.fill_(1.0 if leaf == "weight" else 0.0)
            elif leaf == "bias" or p.ndim == 1:
                p.zero_()
            else:
                p.normal_(0.0, std)
                if isinstance(owner, nn.Embedding) and owner.padding_idx is not None:
                    p[owner.padding_idx].zero_()

    def init_std(self) -> float:
        return self.config.initializer_range

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _init_after_build(cls.__init__)

    def post_init(self) -> None:
        """HF's init of every weight, then the ties; nothing for shapes-only (meta) models."""
        if not self.init_on_build:
            return
        first = next(self.parameters(), None)
        if first is not None and not first.is_meta:
            self.init_weights()
            self.tie_weights()

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs):
        return cls(config, **kwargs)  # initialised by the constructor (post_init)

    # ------------------------------------------------------------------ gradient checkpointing
    def gradient_checkpointing_enable(self) -> None:
        for m in self.modules():
            if isinstance(m, PreTrainedModel):
                m.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for m in self.modules():
            if isinstance(m, PreTrainedModel):
                m.gradient_checkpointing = False

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (a tie counts once), as HF's (Transformers' Trainer asks it for FLOP counts)."""
        skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        return sum(
            p.numel() for p in self.parameters() if id(p) not in skip and (p.requires_grad or not only_trainable)
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *model_args,
        config: PretrainedConfig | None = None,
        torch_dtype: Any = None,
        strict: bool = False,
        output_loading_info: bool = False,
        log_report: bool = True,
        **kwargs,
    ):
        """Load from a local folder or a Hub repo id (``revision``, ``cache_dir``, ``local_files_only``, ``token``).

        Other keyword arguments set config fields (``is_decoder=True``, ``add_cross_attention=True``);
        Transformers' loading flags (:data:`encdec_core.driver.LOAD_FLAGS`: ``low_cpu_mem_usage``,
        ``attn_implementation``, ...) are accepted and never stored in the config (``dtype`` is
        ``torch_dtype``'s newer name). ``strict=True`` raises one error listing every missing or
        unexpected key; the loading report is logged as one line unless ``log_report=False``.
        """
        folder, config, flags = driver.prepare_load(cls, name_or_path, config, kwargs)
        formats = driver.weight_formats(("pt", "bin"), flags)  # a TF or Flax checkpoint is read too
        check_config_fits(config, folder, role=cls.role, accept=formats)  # before building anything
        with torch.device("meta"), skip_init():
            model = cls(config, *model_args)
        dtype = torch_dtype if torch_dtype is not None else flags.get("dtype")
        report = load_weights(model, folder, dtype=resolve_dtype(dtype), formats=formats)
        report.raise_if(strict)
        if log_report:
            report.log(logger)
        model.eval()
        model.checkpoint_folder = folder  # where it was read from (generation_config.json lives beside)
        return (model, report) if output_loading_info else model

    # ------------------------------------------------------------------ saving
    def state_dict_to_save(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The stored weights (tied duplicates left out), by canonical name."""
        params = dict(self.named_parameters(remove_duplicate=False)) if state_dict is None else state_dict
        missing = [p.pt for p in self.weight_table() if p.pt not in params]
        if missing:
            raise InputError(f"save_pretrained: state_dict lacks {len(missing)} stored weight(s), e.g. {missing[:5]}")
        return {p.pt: params[p.pt] for p in self.weight_table()}

    def config_to_save(self) -> dict:
        cfg = self.config.to_dict()
        cfg["architectures"] = [type(self).__name__]
        return cfg

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        max_shard_size: int | str | None = None,
        torch_dtype: Any = None,
        safe_serialization: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write config.json, generation_config.json (if any) and model.safetensors atomically.

        ``torch_dtype`` casts floating weights on the way out (e.g. ``torch.bfloat16``);
        ``max_shard_size`` ("200MB", bytes) writes shards plus ``model.safetensors.index.json``.
        ``state_dict`` saves those tensors instead of the module's (e.g. a full state dict
        gathered from a sharded model); it must hold every stored weight.
        """
        dtype = resolve_dtype(torch_dtype)
        tensors = {}
        for name, t in self.state_dict_to_save(state_dict).items():
            if isinstance(dtype, torch.dtype) and t.is_floating_point():
                t = t.to(dtype)
            tensors[name] = t
        tensors = with_tied_copies(self.config, tensors)  # tie_encoder_decoder: both copies, as Transformers 5 needs
        cfg = self.config_to_save()
        some = next(iter(tensors.values()))
        cfg["dtype"] = str(some.dtype).replace("torch.", "")
        folder = Path(save_directory)
        with ckpt_io.atomic_write_dir(folder) as tmp:
            ckpt_io.write_json(tmp / ckpt_io.CONFIG_NAME, cfg)
            gen = self.generation_config_to_save()
            if gen:
                ckpt_io.write_json(tmp / ckpt_io.GENERATION_CONFIG_NAME, gen)
            if safe_serialization:
                ckpt_io.save_safetensors(
                    {k: to_raw(v) for k, v in tensors.items()},
                    tmp,
                    max_shard_size=max_shard_size,
                    metadata={"format": "pt"},
                )
            else:
                from encdec_core.formats.pt_bin import write_pytorch_bin

                write_pytorch_bin({k: v.detach().cpu() for k, v in tensors.items()}, tmp, max_shard_size=max_shard_size)
        return folder

    def generation_config_to_save(self) -> dict | None:
        return None


_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
)


@contextlib.contextmanager
def skip_init():
    """Module constructors skip ``torch.nn.init``: shapes only (used with the meta device).

    Initialising meta tensors is pointless, and in torch 2.13 ``normal_`` on a meta tensor
    imports torch._dynamo (about a second on the first load of a process).
    """
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def _tied_are_not_missing(module: PreTrainedModel, incompatible_keys) -> None:
    """``load_state_dict`` post-hook: a tied weight absent from the state dict is filled by its source."""
    tied = {t.pt for t in module.weight_ties()}
    incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if k not in tied]


def _owner(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (root.get_submodule(path) if path else root), leaf


@contextlib.contextmanager
def open_state(folder: Path, table: list[Param] | None = None, formats: tuple[str, ...] = ("pt", "bin")):
    """Yield (shapes, get) over the weights in ``folder``: by default canonical safetensors (lazy, mmap) or
    pytorch_model.bin; ``formats`` may add TF and Flax ones, whose names ``table`` translates.

    The reading is :func:`encdec_core.formats.canonical.open_source`'s, shared by the three backends;
    ``get`` returns torch tensors (memory-mapped from safetensors, dtypes as stored).
    """
    what = "PyTorch " if set(formats) <= {"pt", "bin"} else ""
    with open_source(folder, table, accept=formats, what=what) as source:
        yield source.shapes, (lambda k: source.get_tensor(k, "pt"))


@torch.no_grad()
def load_weights(
    model: PreTrainedModel,
    folder: Path,
    *,
    dtype=None,
    params: list[Param] | None = None,
    ties: list[Tie] | None = None,
    base_prefix: str | None = None,
    formats: tuple[str, ...] = ("pt", "bin"),
) -> LoadingReport:
    """Fill a (meta-device) model from ``folder`` (in the first of ``formats`` it holds); initialise what it lacks."""
    params = model.weight_table() if params is None else params
    ties = model.weight_ties() if ties is None else ties
    prefix = model.base_model_prefix if base_prefix is None else base_prefix
    model_params = dict(model.named_parameters(remove_duplicate=False))
    with open_state(folder, _untied_table(model, params), formats) as (shapes, get):
        plan = plan_load(
            params,
            shapes,
            {p.pt: tuple(model_params[p.pt].shape) for p in params},
            ties=ties,
            base_prefix=prefix,
            source=str(folder),
        )
        if plan.report.mismatched:
            plan.report.raise_if(True)
        casts = set()
        state = {}
        for name, key in plan.sources.items():
            t = get(key)
            target = dtype if isinstance(dtype, torch.dtype) else (t.dtype if dtype == "auto" else torch.float32)
            if t.is_floating_point() and t.dtype != target:
                casts.add(f"{t.dtype}->{target}")
                t = t.to(target)
            state[name] = t
    if casts:
        logger.info("%s: weights cast %s on load", folder, ", ".join(sorted(casts)))
    fill_dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    for name in plan.init:
        state[name] = torch.empty(model_params[name].shape, dtype=fill_dtype)
    _assign(model, state)
    model.init_weights(plan.init)
    _tie_all(model, ties)
    return plan.report


def _untied_table(model: PreTrainedModel, params: list[Param]) -> list[Param]:
    """``params`` and, with ``tie_encoder_decoder``, the encoder side too: TF and Flax files store both copies."""
    config = model.config
    if not getattr(config, "tie_encoder_decoder", False) or getattr(config, "encoder", None) is None:
        return params
    untied = config.copy()
    untied.tie_encoder_decoder = False
    return encoder_decoder_table(untied)


def _assign(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        owner, leaf = _owner(model, name)
        old = getattr(owner, leaf)
        setattr(owner, leaf, nn.Parameter(tensor, requires_grad=old.requires_grad))


def _tie_all(model: nn.Module, ties: list[Tie]) -> None:
    for tie in ties:
        owner, leaf = _owner(model, tie.pt)
        setattr(owner, leaf, model.get_parameter(tie.source))
