"""Parameters, loading, saving and initialisation of Flax models through the core tables.

A model class (``BertModel``, ``FlaxEncoderDecoderModel``, ...) holds a ``flax.linen``
module and its parameters ``.params``: a nested dict laid out as HF's ``flax_model.msgpack``,
so every ``Param.flax`` path of the core tables addresses one leaf. Weights shared by a tie
(``tie_encoder_decoder``) are stored once, as in the canonical checkpoint, and put back in
the module's tree on each call (:meth:`FlaxPreTrainedModel.materialize`), so gradients of
both uses add up in the stored leaf, as with PyTorch's shared parameters.

Loading never random-initialises a weight that the checkpoint then overwrites: the module's
tree is built shape-only (``jax.eval_shape``), filled with the checkpoint's arrays (mapped
by :mod:`encdec_core.formats.mapping`), and only what the loading report calls new or missing
(cross-attention, ``enc_to_dec_proj``) is initialised, with HF's rule (see :func:`init_param`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from encdec_core import checkpoint as ckpt_io
from encdec_core import driver, outputs
from encdec_core.configs import PretrainedConfig
from encdec_core.driver import encoder_states  # noqa: F401  (re-exported: the Flax decoding methods use it)
from encdec_core.errors import ConfigError, InputError
from encdec_core.formats.canonical import open_source
from encdec_core.formats.fit import check_config_fits
from encdec_core.formats.flax_msgpack import flatten_tree, unflatten_tree, write_flax_msgpack
from encdec_core.formats.mapping import from_framework, to_framework
from encdec_core.loading import plan_load
from encdec_core.report import LoadingReport
from encdec_core.semantics import IGNORE_INDEX
from encdec_core.tables import Param, Tie, apply_op, model_table, model_ties, with_tied_copies

logger = logging.getLogger("encdec")
SAVE_FORMATS = ("safetensors", "msgpack")

# The core's output dataclasses become pytrees, so jitted functions can return them.
for _cls in (outputs.BaseModelOutput, outputs.CausalLMOutput, outputs.Seq2SeqLMOutput):
    with contextlib.suppress(ValueError):  # already registered
        jax.tree_util.register_dataclass(_cls, data_fields=[f.name for f in dataclasses.fields(_cls)], meta_fields=[])


def is_traced(x: Any) -> bool:
    """True inside ``jax.jit`` / ``grad``: values are unknown there, only shapes can be checked."""
    return isinstance(x, jax.core.Tracer)


def check_ids(config: PretrainedConfig, ids: Any, name: str, *, allow_ignore: bool = False) -> None:
    """Token ids must be integers in [0, vocab_size) (labels may also be -100); JAX would clamp silently."""
    if ids is None:
        return
    dtype = ids.dtype if hasattr(ids, "dtype") else np.asarray(ids).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise InputError(f"{name} must hold integer token ids, got dtype {dtype}")
    if jnp.ndim(ids) != 2:
        raise InputError(f"{name} must have shape (batch, length), got shape {tuple(jnp.shape(ids))}")
    if is_traced(ids) or not np.size(ids):
        return
    a = np.asarray(ids)
    if allow_ignore:
        a = a[a != IGNORE_INDEX]
    if a.size and (a.min() < 0 or a.max() >= config.vocab_size):
        bad = int(a.min()) if a.min() < 0 else int(a.max())
        raise InputError(f"{name} holds token id {bad}, expected ids in [0, {config.vocab_size}) (vocab_size)")


def check_mask(mask: Any, shape: tuple[int, ...], name: str, of: str) -> None:
    if mask is not None and tuple(jnp.shape(mask)) != tuple(shape):
        raise InputError(f"{name} has shape {tuple(jnp.shape(mask))}, expected {tuple(shape)} (the shape of {of})")


def check_length(config: PretrainedConfig, length: int, name: str) -> None:
    """Positions beyond the embedding table would be clamped silently by JAX: refuse them."""
    limit = config.position_limit
    if length > limit:
        raise InputError(
            f"{name} has length {length}, but this {config.model_type} model takes at most {limit} positions"
        )


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy (float32) over the positions whose label is not -100, as torch's ``ignore_index``."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # (B,T,V)
    keep = labels != IGNORE_INDEX
    nll = -jnp.take_along_axis(logp, jnp.where(keep, labels, 0)[..., None], axis=-1)[..., 0]  # (B,T)
    return jnp.sum(jnp.where(keep, nll, 0.0)) / jnp.sum(keep)


def init_param(path: str, shape: tuple[int, ...], rng: np.random.Generator, std: float) -> np.ndarray:
    """HF's init by leaf name: LayerNorm ``scale`` ones, biases zeros, kernels and embeddings normal(0, std).

    Drawn with numpy on the host: one jax.random call per leaf shape would compile a kernel each.
    """
    leaf = path.rsplit("/", 1)[-1]
    if leaf == "scale":
        return np.ones(shape, np.float32)
    if leaf == "bias" or len(shape) == 1:
        return np.zeros(shape, np.float32)
    out = rng.standard_normal(shape, dtype=np.float32)  # float32 draws: a third of float64's time
    out *= np.float32(std)
    return out


def canonical_shape(shape: tuple[int, ...], op: str) -> tuple[int, ...]:
    """The PT-layout shape of a Flax array of ``shape``, by the table op (on a zero-stride view, no data)."""
    return tuple(apply_op(op, np.broadcast_to(np.zeros((), np.int8), shape), inverse=True).shape)


class FlaxPreTrainedModel:
    """Base of every encdec Flax model: config, module, parameters, weight table, load and save.

    ``model(...)`` runs ``module.apply`` with ``model.params`` (or ``params=``); ``train=True``
    turns dropout on and needs ``dropout_rng``. Like HF's Flax classes nothing is jitted
    here: wrap the calls in ``jax.jit`` (they only check shapes when traced).
    """

    config_class: type[PretrainedConfig] = PretrainedConfig
    module_class: type = None  # the flax.linen module
    role = "encoder"  # encoder | decoder: which table describes the stored weights
    base_model_prefix = ""

    def __init__(
        self,
        config: PretrainedConfig,
        input_shape: Any = (1, 1),
        seed: int = 0,
        dtype: Any = jnp.float32,
        _do_init: bool = True,
        _shapes: dict[str, tuple[int, ...]] | None = None,
    ):
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} expected a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config, self.dtype, self.input_shape = config, dtype, input_shape
        self.module = self.make_module()
        self.key = jax.random.PRNGKey(seed)
        if _shapes is None:  # the module's whole tree, shapes only: nothing is computed or allocated here
            tree = jax.eval_shape(
                lambda r: self.module.init({"params": r}, **self.dummy_inputs(input_shape))["params"], self.key
            )
            _shapes = {k: tuple(v.shape) for k, v in flatten_tree(tree).items()}
        self.shapes = _shapes  # given by a caller that already knows them (a composite's parts): still checked
        self._check_tables()
        self._params = self.init_weights(self.key) if _do_init else None

    def make_module(self):
        return self.module_class(config=self.config, dtype=self.dtype)

    def dummy_inputs(self, input_shape) -> dict:
        """Keyword inputs that reach every parameter of the module (cross-attention included)."""
        inputs = {"input_ids": jnp.ones(input_shape, jnp.int32)}
        if self.config.has_cross_attention:
            width = self.config.cross_attention_hidden_size or self.config.hidden_size
            inputs["encoder_hidden_states"] = jnp.zeros((*input_shape, width), self.dtype)
        return inputs

    # ------------------------------------------------------------------ tables and ties
    def weight_table(self) -> list[Param]:
        """The stored weights (canonical names and Flax paths), from the core tables."""
        return model_table(self.config, self.role)

    def full_table(self) -> list[Param]:
        """Every leaf of the module's tree, tied copies included."""
        return self.weight_table()

    def weight_ties(self) -> list[Tie]:
        return model_ties(self.config, self.role)

    def init_std(self) -> float:
        return self.config.initializer_range

    def _check_tables(self) -> None:
        by_pt = {p.pt: p.flax for p in self.full_table()}
        stored = {p.flax for p in self.weight_table()}
        # a tie whose both sides are leaves of the tree: the copy is not stored, the source is
        self.tied_paths = [
            (by_pt[t.pt], by_pt[t.source])
            for t in self.weight_ties()
            if t.pt in by_pt and t.source in by_pt and by_pt[t.pt] not in stored
        ]
        if set(by_pt.values()) != set(self.shapes):  # our modules and the core tables must agree exactly
            only_t, only_m = (
                sorted(set(by_pt.values()) - set(self.shapes)),
                sorted(set(self.shapes) - set(by_pt.values())),
            )
            raise ConfigError(
                f"{type(self).__name__}: module tree and weight table differ: table only {only_t}, module only {only_m}"
            )

    # ------------------------------------------------------------------ parameters
    @property
    def params(self) -> dict:
        if self._params is None:
            raise InputError(f"{type(self).__name__} was built with _do_init=False: set `model.params` first")
        return self._params

    @params.setter
    def params(self, params: dict) -> None:
        self._params = self.check_params(params)

    def check_params(self, params: dict) -> dict:
        """``params`` must hold exactly the stored leaves with the module's shapes."""
        flat = flatten_tree(params)
        want = {p.flax for p in self.weight_table()}
        problems = [f"missing {k}" for k in sorted(want - set(flat))] + [
            f"unexpected {k}" for k in sorted(set(flat) - want)
        ]
        problems += [
            f"{k}: expected shape {self.shapes[k]}, got {tuple(jnp.shape(v))}"
            for k, v in flat.items()
            if k in want and tuple(jnp.shape(v)) != self.shapes[k]
        ]
        if problems:
            raise InputError(f"params of {type(self).__name__}: " + "; ".join(problems[:20]))
        return params

    def materialize(self, params: dict) -> dict:
        """The module's full tree: stored params plus the tied copies (the same arrays)."""
        if not self.tied_paths:
            return params
        flat = flatten_tree(params)
        for tied, source in self.tied_paths:
            flat[tied] = flat[source]
        return unflatten_tree(flat)

    def init_weights(self, rng: jax.Array, names: list[str] | None = None) -> dict:
        """HF's init of the stored leaves ``names`` (Flax paths; all by default), as a nested dict."""
        names = sorted(p.flax for p in self.weight_table()) if names is None else sorted(names)
        gen = np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel().tolist())  # seeded by the key
        return unflatten_tree({n: jax.device_put(init_param(n, self.shapes[n], gen, self.init_std())) for n in names})

    def num_parameters(self) -> int:
        return sum(int(np.prod(self.shapes[p.flax])) for p in self.weight_table())

    # ------------------------------------------------------------------ calls
    def apply(
        self,
        params: dict | None,
        *args,
        method: Callable | str | None = None,
        train: bool = False,
        dropout_rng: jax.Array | None = None,
        **kwargs,
    ):
        """``module.apply`` with the stored params (ties materialised) and dropout when ``train``."""
        if train and dropout_rng is None:
            raise InputError("train=True turns dropout on and needs dropout_rng= (a jax.random key)")
        rngs = {"dropout": dropout_rng} if train else {}
        params = self.params if params is None else params
        return self.module.apply(
            {"params": self.materialize(params)}, *args, method=method, rngs=rngs, deterministic=not train, **kwargs
        )

    def __call__(
        self, input_ids, attention_mask=None, *, params=None, dropout_rng=None, train=False, return_dict=True, **kwargs
    ):
        """Run the model alone: the module's arguments by name (``encoder_hidden_states=``, ``labels=``, ...)."""
        check_ids(self.config, input_ids, "input_ids")
        check_mask(attention_mask, jnp.shape(input_ids), "attention_mask", "input_ids")
        check_length(self.config, jnp.shape(input_ids)[1], "input_ids")
        out = self.apply(params, input_ids, attention_mask, train=train, dropout_rng=dropout_rng, **kwargs)
        return out if return_dict else out.to_tuple()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        config: PretrainedConfig | None = None,
        dtype: Any = jnp.float32,
        param_dtype: Any = None,
        from_pt: bool = False,
        strict: bool = False,
        output_loading_info: bool = False,
        log_report: bool = True,
        seed: int = 0,
        **kwargs,
    ):
        """Load from a folder or Hub repo id: canonical ``model.safetensors`` (``from_pt=True`` accepted,
        it is PyTorch's layout), HF's ``flax_model.msgpack`` (single or sharded) or ``pytorch_model.bin``.

        ``dtype`` is the compute dtype; parameters are float32 unless ``param_dtype`` says
        otherwise ("auto": as stored). Transformers' other loading flags
        (:data:`encdec_core.driver.LOAD_FLAGS`) are accepted. Other keyword arguments set config fields;
        ``strict=True`` raises one error listing every missing or unexpected key.
        """
        folder, config, flags = driver.prepare_load(cls, name_or_path, config, kwargs)
        # every format is read: canonical first, then Flax's own (PyTorch's .bin first with from_pt, TF's with from_tf)
        native = ("pt", "flax", "bin", "msgpack") if from_pt else ("pt", "flax", "msgpack", "bin")
        formats = driver.weight_formats(native, flags)
        check_config_fits(config, folder, role=cls.role, accept=formats)  # before building
        model = cls(config, seed=seed, dtype=dtype, _do_init=False)
        model.checkpoint_folder = folder  # where it was read from (generation_config.json lives beside)
        report = model.load_weights(folder, formats=formats, param_dtype=param_dtype)
        report.raise_if(strict)
        if log_report:
            report.log(logger)
        return (model, report) if output_loading_info else model

    def load_weights(
        self, folder: Path, *, prefer_pt: bool = False, param_dtype: Any = None, formats: tuple[str, ...] | None = None
    ) -> LoadingReport:
        """Fill ``self.params`` from ``folder``; initialise only what the checkpoint lacks."""
        params = self.weight_table()
        model_shapes = {p.pt: canonical_shape(self.shapes[p.flax], p.flax_op) for p in params}
        with open_weights(folder, self.full_table(), prefer_pt=prefer_pt, formats=formats) as (shapes, get):
            plan = plan_load(
                params,
                shapes,
                model_shapes,
                ties=self.weight_ties(),
                base_prefix=self.base_model_prefix,
                source=str(folder),
            )
            if plan.report.mismatched:
                plan.report.raise_if(True)
            canonical = {name: get(key) for name, key in plan.sources.items()}
            arrays = to_framework(canonical, [p for p in params if p.pt in canonical], "flax")
            # Transformers' Flax and TF classes save both sides of tie_encoder_decoder and may have trained them apart
            differ = [
                t.pt
                for t in self.weight_ties()
                if t.pt in shapes and t.source in canonical and not np.array_equal(get(t.pt), canonical[t.source])
            ]
        if differ:
            logger.warning(
                "%s: %d tied weight(s) differ in the checkpoint from the weight they are tied to (%s); "
                "the tie keeps the latter",
                folder,
                len(differ),
                ", ".join(differ[:3]),
            )
        flat = {k: _as_param(v, param_dtype) for k, v in arrays.items()}
        by_pt = {p.pt: p.flax for p in params}
        flat.update(flatten_tree(self.init_weights(self.key, [by_pt[n] for n in plan.init])))
        self._params = self.check_params(unflatten_tree(flat))
        return plan.report

    # ------------------------------------------------------------------ saving
    def config_to_save(self) -> dict:
        cfg = self.config.to_dict()
        cfg["architectures"] = [type(self).__name__.removeprefix("Flax")]  # Transformers' rule
        return cfg

    def generation_config_to_save(self) -> dict | None:
        return None

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        params: dict | None = None,
        *,
        max_shard_size: int | str | None = None,
        save_format: str | None = None,
        param_dtype: Any = None,
        safe_serialization: bool | None = None,
    ) -> Path:
        """Write config.json, generation_config.json (if any) and the weights, atomically.

        ``save_format="safetensors"`` (default): the canonical checkpoint, ``model.safetensors``
        with PyTorch names and layouts, metadata ``{"format": "pt"}``, loadable by every
        backend and Transformers. ``"msgpack"``: HF Flax's ``flax_model.msgpack`` (tied copies
        written out, as Transformers' Flax classes keep them). ``max_shard_size`` ("200MB",
        bytes) writes shards plus an index; ``param_dtype`` casts floating weights on the way out.
        Transformers' ``safe_serialization=False`` means ``"msgpack"``.
        """
        save_format = driver.save_format(save_format, safe_serialization, SAVE_FORMATS)
        params = self.params if params is None else self.check_params(params)
        tree = self.materialize(params) if save_format == "msgpack" else params
        flat = {k: _to_numpy(v, param_dtype) for k, v in flatten_tree(tree).items()}
        cfg = self.config_to_save()
        cfg["dtype"] = next(iter(flat.values())).dtype.name
        folder = Path(save_directory)
        with ckpt_io.atomic_write_dir(folder) as tmp:
            ckpt_io.write_json(tmp / ckpt_io.CONFIG_NAME, cfg)
            if gen := self.generation_config_to_save():
                ckpt_io.write_json(tmp / ckpt_io.GENERATION_CONFIG_NAME, gen)
            if save_format == "msgpack":
                write_flax_msgpack(flat, tmp, max_shard_size=max_shard_size)
            else:
                canonical = with_tied_copies(self.config, from_framework(flat, self.weight_table(), "flax"))
                ckpt_io.save_safetensors(canonical, tmp, max_shard_size=max_shard_size, metadata={"format": "pt"})
        return folder


def _as_param(array: np.ndarray, param_dtype: Any) -> jax.Array:
    want = jnp.float32 if param_dtype is None else param_dtype
    if param_dtype == "auto" or not jnp.issubdtype(array.dtype, jnp.floating) or array.dtype == jnp.dtype(want):
        return jax.device_put(array)  # a transfer: jnp.asarray would dispatch (and compile) a convert per shape
    return jnp.asarray(array).astype(want)


def _to_numpy(array: jax.Array, param_dtype: Any) -> np.ndarray:
    if param_dtype is not None and jnp.issubdtype(array.dtype, jnp.floating):
        array = jnp.asarray(array, param_dtype)
    return np.asarray(array)


@contextlib.contextmanager
def open_weights(
    folder: Path, full_table: list[Param], *, prefer_pt: bool = False, formats: tuple[str, ...] | None = None
) -> Iterator[tuple[dict, Callable]]:
    """Yield (canonical shapes, get) over the weights in ``folder``; ``get`` returns numpy arrays.

    The reading is :func:`encdec_core.formats.canonical.open_source`'s, shared by the three backends, in
    this order: canonical ``model.safetensors`` (or shards), Flax-format safetensors (HF's
    "."-joined paths), then HF's ``flax_model.msgpack`` and ``pytorch_model.bin`` (the .bin
    first with ``prefer_pt``). Flax paths go through ``full_table`` (tied copies included);
    keys it does not map keep the checkpoint's names, so the report can list them as unexpected.
    """
    accept = formats or (("pt", "flax", "bin", "msgpack") if prefer_pt else ("pt", "flax", "msgpack", "bin"))
    with open_source(folder, full_table, accept=accept) as source:
        yield source.shapes, source.get
