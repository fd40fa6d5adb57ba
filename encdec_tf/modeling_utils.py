"""Variables, loading and saving of the Keras models, through the core tables and ``encdec_core.formats.mapping``.

**Names.** A variable's table name (``Param.tf``: HF's TF name without model scope and ``:0``)
is made by construction, by one rule (:func:`walk`): the chain of layer names (or a layer's
``tf_path``) from its model down to the layer that declares it, then the variable's name. A
model splices its sub-models in as the core tables do: a base model adds its scope ("bert",
"roberta", "transformer"), an LM adds nothing before its base, the encoder-decoder puts its
parts under "encoder" and "decoder". The names are checked against the table when the
variables are made, so a layer named wrongly fails at once, not at load time.

**No double initialisation.** Layers only declare their variables (``param_specs``). A model
creates them once (:meth:`PreTrainedModel.build_variables`), each from the checkpoint's array
when loading, or HF's initialiser for what the checkpoint lacks (cross-attention, projection).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from encdec_core import checkpoint as ckpt_io
from encdec_core import driver
from encdec_core.configs import PretrainedConfig
from encdec_core.errors import ConfigError, InputError
from encdec_core.formats.canonical import open_source
from encdec_core.formats.fit import check_config_fits
from encdec_core.formats.mapping import from_framework, to_framework
from encdec_core.loading import plan_load
from encdec_core.report import LoadingReport
from encdec_core.tables import Param, Tie, apply_op, model_table, model_ties, with_tied_copies

logger = logging.getLogger("encdec")
_DEFERRED = contextvars.ContextVar("encdec_tf_deferred", default=False)


def check_ids(config: PretrainedConfig, ids, name: str) -> None:
    """Token ids must be in [0, vocab_size): checked eagerly (a traced graph cannot raise our error)."""
    if ids is None or not tf.executing_eagerly():
        return
    ids = tf.convert_to_tensor(ids)
    if ids.dtype.is_floating:
        raise InputError(f"{name} must hold integer token ids, got dtype {ids.dtype.name}")
    if tf.size(ids) and (int(tf.reduce_min(ids)) < 0 or int(tf.reduce_max(ids)) >= config.vocab_size):
        bad = int(tf.reduce_min(ids)) if int(tf.reduce_min(ids)) < 0 else int(tf.reduce_max(ids))
        raise InputError(f"{name} holds token id {bad}, expected ids in [0, {config.vocab_size}) (vocab_size)")


@contextlib.contextmanager
def defer_variables() -> Iterator[None]:
    """Models constructed inside make no variables: their parent (or the loader) makes them all at once."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


class Slot(NamedTuple):
    """One declared variable: its table name, the layer that owns it, and how to initialise it."""

    name: str  # Param.tf
    layer: keras.layers.Layer
    leaf: str  # attribute and variable name
    shape: tuple[int, ...]
    init: str  # normal | zeros | ones
    std: float  # the owning model's initializer_range


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix and name else prefix or name


def walk(layer: keras.layers.Layer, prefix: str, std: float) -> Iterator[Slot]:
    """The naming rule: ``prefix / layer names (or tf_path) ... / variable name``; sub-models are skipped."""
    for leaf, shape, init in getattr(layer, "param_specs", ()):
        yield Slot(_join(prefix, leaf), layer, leaf, tuple(shape), init, std)
    for child in layer._flatten_layers(include_self=False, recursive=False):
        if not isinstance(child, PreTrainedModel):  # a model lists its own (param_slots)
            yield from walk(child, _join(prefix, getattr(child, "tf_path", None) or child.name), std)


def prefix_slots(slots: Iterator[Slot], prefix: str) -> Iterator[Slot]:
    return (s._replace(name=_join(prefix, s.name)) for s in slots)


def _initializer(slot: Slot):
    if slot.init == "zeros":
        return keras.initializers.Zeros()
    if slot.init == "ones":
        return keras.initializers.Ones()
    normal = keras.initializers.RandomNormal(0.0, slot.std)
    pad = getattr(slot.layer, "padding_idx", None)
    if pad is None:
        return normal
    # PyTorch's nn.Embedding(padding_idx=...) starts the padding row at zero; so do we.
    return lambda shape, dtype=None: tf.tensor_scatter_nd_update(normal(shape, dtype), [[pad]], tf.zeros((1, shape[1])))


class PreTrainedModel(keras.Model):
    """Base of every encdec Keras model: config, weight table, variables, load and save."""

    config_class: type[PretrainedConfig] = PretrainedConfig
    role = "encoder"  # encoder | decoder: which table describes the stored weights
    base_model_prefix = ""

    def __init__(self, config: PretrainedConfig, name: str | None = None):
        super().__init__(name=name)
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} expected a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config

    def _finish_init(self) -> None:
        """End of a concrete ``__init__``: make the variables now, unless a parent or loader will."""
        if not _DEFERRED.get():
            self.build_variables()

    # ------------------------------------------------------------------ tables and names
    def weight_table(self) -> list[Param]:
        """The stored weights of this model (canonical names), from the core tables."""
        return model_table(self.config, self.role, add_pooling_layer=getattr(self, "pooler", None) is not None)

    def weight_ties(self) -> list[Tie]:
        return model_ties(self.config, self.role)

    def tf_params(self) -> list[Param]:
        """Every TF variable's param, tied ones included (TF and HF's h5 keep both sides of a tie)."""
        return self.weight_table()

    def tf_ties(self) -> dict[str, str]:
        """Tied variable -> the variable it is (table names); ties without a TF variable are dropped."""
        to_tf = {p.pt: p.tf for p in self.tf_params()}
        return {to_tf[t.pt]: to_tf[t.source] for t in self.weight_ties() if t.pt in to_tf and t.source in to_tf}

    def init_std(self) -> float:
        return self.config.initializer_range

    def param_slots(self) -> Iterator[Slot]:
        """Every declared variable, named by :func:`walk`; sub-models override to splice theirs in."""
        return walk(self, getattr(self, "scope", ""), self.init_std())

    def named_variables(self) -> dict[str, Any]:
        """``{table name: variable}`` (tied names map to their shared variable)."""
        return {s.name: getattr(s.layer, s.leaf) for s in self.param_slots()}

    # ------------------------------------------------------------------ variables
    def build_variables(self, values: Mapping[str, np.ndarray] | None = None) -> None:
        """Create every variable not made yet: from ``values`` (table name -> TF-layout array) or its initialiser."""
        slots = list(self.param_slots())
        expected = {p.tf: p for p in self.tf_params()}
        if {s.name for s in slots} != set(expected):  # a naming bug in a layer, never a user error
            raise RuntimeError(
                f"{type(self).__name__}: variable names differ from the table: "
                f"{sorted({s.name for s in slots} ^ set(expected))[:10]}"
            )
        ties = self.tf_ties()
        for s in slots:
            if s.name in ties or isinstance(getattr(s.layer, s.leaf, None), keras.Variable):
                continue
            if values is not None and s.name in values:
                init = lambda shape, dtype=None, a=values[s.name]: a  # noqa: E731  (the checkpoint's array)
            else:
                init = _initializer(s)
            setattr(s.layer, s.leaf, s.layer.add_weight(name=s.leaf, shape=s.shape, initializer=init, dtype="float32"))
        self.tie_weights()
        for layer in self._flatten_layers(include_self=True, recursive=True):
            layer.built = True

    def tie_weights(self) -> None:
        """Make each tied variable the very variable it is tied to (one variable, two names)."""
        slots = {s.name: s for s in self.param_slots()}
        for tied, source in self.tf_ties().items():
            s, var = slots[tied], getattr(slots[source].layer, slots[source].leaf)
            old = getattr(s.layer, s.leaf, None)
            if old is not var:
                if old is not None:  # what Keras' __delattr__ does, minus its gc.collect() per variable
                    s.layer._untrack_variable(old)
                setattr(s.layer, s.leaf, var)

    def _canonical_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical (PT-layout) shape of every stored weight, before any variable exists."""
        tf_shapes = {s.name: s.shape for s in self.param_slots()}
        views = {p.tf: np.broadcast_to(np.float32(0), tf_shapes[p.tf]) for p in self.weight_table()}  # no memory
        return {k: tuple(v.shape) for k, v in from_framework(views, self.weight_table(), "tf").items()}

    # ------------------------------------------------------------------ Keras training
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Without a loss in ``compile()``, ``fit``/``evaluate`` use the model's own loss (from ``labels``)."""
        if self._compile_loss is None and getattr(y_pred, "loss", None) is not None:
            loss = y_pred.loss + tf.add_n(self.losses) if self.losses else y_pred.loss
            # under tf.distribute Keras sums the replicas' gradients, and scales its own losses by
            # 1 / replicas to get the mean; the model's loss must be scaled the same way
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            return loss / replicas if replicas > 1 else loss
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)

    def train_step(self, data):
        return super().train_step(_labels_into_inputs(data, self._compile_loss))

    def test_step(self, data):
        return super().test_step(_labels_into_inputs(data, self._compile_loss))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *model_args,
        config: PretrainedConfig | None = None,
        from_pt: bool = False,
        strict: bool = False,
        output_loading_info: bool = False,
        log_report: bool = True,
        **kwargs,
    ):
        """Load from a local folder or a Hub repo id (``revision``, ``cache_dir``, ``local_files_only``, ``token``).

        Reads the canonical checkpoint (``model.safetensors``, PyTorch names; what every encdec
        backend writes), Transformers' ``tf_model.h5`` (single or sharded), TF-format
        safetensors and ``pytorch_model.bin``. ``from_pt=True`` (HF's flag, accepted for
        compatibility) insists on PyTorch weights; Transformers' other loading flags
        (:data:`encdec_core.driver.LOAD_FLAGS`) are accepted. Other keyword arguments set config fields;
        ``strict=True`` raises one error listing every missing or unexpected key.
        """
        folder, config, flags = driver.prepare_load(cls, name_or_path, config, kwargs)
        # from_pt insists on PyTorch weights; otherwise every format is read (from_flax: Flax's first)
        every = driver.weight_formats(("pt", "tf", "h5", "bin"), flags)
        formats = ("pt", "bin") if from_pt else every
        check_config_fits(config, folder, role=cls.role, accept=every)  # before building anything
        with defer_variables():
            model = cls(config, *model_args)
        report = load_weights(model, folder, formats=formats)
        report.raise_if(strict)
        if log_report:
            report.log(logger)
        model.checkpoint_folder = folder  # where it was read from (generation_config.json lives beside)
        return (model, report) if output_loading_info else model

    # ------------------------------------------------------------------ saving
    def config_to_save(self) -> dict:
        cfg = self.config.to_dict()
        cfg["architectures"] = [self.pt_class_name()]
        return cfg

    def pt_class_name(self) -> str:
        """The class name the checkpoint records: the PyTorch one, as Transformers' TF models write."""
        return type(self).__name__.removeprefix("TF")

    def generation_config_to_save(self) -> dict | None:
        return None

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        max_shard_size: int | str | None = None,
        save_format: str | None = None,
        safe_serialization: bool | None = None,
    ) -> Path:
        """Write config.json, generation_config.json (if any) and the weights, atomically.

        ``save_format="safetensors"`` (default) writes the canonical ``model.safetensors``:
        PyTorch names and layouts, metadata ``{"format": "pt"}``, which every encdec backend and
        Transformers' PyTorch classes load with no flag. ``save_format="h5"`` writes
        Transformers' ``tf_model.h5`` instead, as does Transformers' ``safe_serialization=False``.
        ``max_shard_size`` ("200MB", bytes) shards either.
        """
        save_format = driver.save_format(save_format, safe_serialization, ("safetensors", "h5"))
        named = self.named_variables()
        folder = Path(save_directory)
        with ckpt_io.atomic_write_dir(folder) as tmp:
            cfg = self.config_to_save()
            cfg["dtype"] = "float32"
            ckpt_io.write_json(tmp / ckpt_io.CONFIG_NAME, cfg)
            gen = self.generation_config_to_save()
            if gen:
                ckpt_io.write_json(tmp / ckpt_io.GENERATION_CONFIG_NAME, gen)
            if save_format == "safetensors":
                params = self.weight_table()
                arrays = from_framework({p.tf: named[p.tf].numpy() for p in params}, params, "tf")
                arrays = with_tied_copies(self.config, arrays)  # tie_encoder_decoder: both copies (Transformers 5)
                ckpt_io.save_safetensors(arrays, tmp, max_shard_size=max_shard_size, metadata={"format": "pt"})
            else:
                from encdec_core.formats.tf_h5 import write_tf_h5

                arrays = {p.tf: named[p.tf].numpy() for p in self.tf_params()}
                write_tf_h5(
                    arrays, tmp, scope=self.name, keras_version=keras.__version__, max_shard_size=max_shard_size
                )
        return folder


def _labels_into_inputs(data, compiled_loss):
    """``fit(x_dict, y)`` with no loss compiled: ``y`` are the labels, passed to the model as Transformers' TF models do."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if compiled_loss is None and y is not None and isinstance(x, Mapping) and "labels" not in x:
        return keras.utils.pack_x_y_sample_weight({**x, "labels": y}, None, sample_weight)
    return data


# ---------------------------------------------------------------------------------- reading
class State(NamedTuple):
    """A checkpoint seen through canonical names: shapes, and a getter of float32 PT-layout arrays."""

    shapes: dict[str, tuple[int, ...]]
    get: Any  # canonical key -> np.ndarray


def _float32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 else a.astype(np.float32)  # the Keras models compute in float32


@contextlib.contextmanager
def open_state(
    folder: Path, params: list[Param], *, from_pt: bool = False, formats: tuple[str, ...] | None = None
) -> Iterator[State]:
    """The weights in ``folder`` under canonical names, whatever their format.

    The reading is :func:`encdec_core.formats.canonical.open_source`'s, shared by the three backends:
    canonical ``model.safetensors``, TF-format safetensors, ``tf_model.h5`` (single or
    sharded) or ``pytorch_model.bin``; with ``from_pt`` only the PyTorch ones. TF names go
    through ``params`` (both sides of ``tie_encoder_decoder``); names it does not know keep
    their stored names, so the loading report lists them.
    """
    accept = formats or (("pt", "bin") if from_pt else ("pt", "tf", "h5", "bin"))
    what = "PyTorch " if set(accept) <= {"pt", "bin"} else ""
    with open_source(folder, params, accept=accept, what=what) as source:
        yield State(source.shapes, lambda k: _float32(source.get(k)))


def load_weights(
    model: PreTrainedModel, folder: Path, *, from_pt: bool = False, formats: tuple[str, ...] | None = None
) -> LoadingReport:
    """Make ``model``'s variables from the checkpoint in ``folder``; initialise what it lacks."""
    params = model.weight_table()
    with open_state(folder, model.tf_params(), from_pt=from_pt, formats=formats) as state:
        plan = plan_load(
            params,
            state.shapes,
            model._canonical_shapes(),
            ties=model.weight_ties(),
            base_prefix=model.base_model_prefix,
            source=str(folder),
        )
        if plan.report.mismatched:
            plan.report.raise_if(True)
        arrays = {name: state.get(key) for name, key in plan.sources.items()}
    model.build_variables(to_framework(arrays, params, "tf", missing="ignore", op=_tf_op))
    return plan.report


def _tf_op(name: str, a: np.ndarray) -> tf.Tensor:
    """The table's op as a TF tensor. Transposes run in TF: ``tf.transpose`` is blocked and about 10x faster than
    the strided copy of a transposed numpy view (measured: 0.44 against 5.0 ms for a 3072 x 768 kernel)."""
    a = np.asarray(a)
    return tf.transpose(_adopt(a)) if name == "transpose" else _adopt(apply_op(name, a))


_ALIGN = 64  # bytes: TF's oneDNN kernels abort the process on a tensor whose data is not 64-byte aligned


def _adopt(a: np.ndarray) -> tf.Tensor:
    """``a`` copied once into fresh 64-byte-aligned memory that TF takes over (DLPack, no second copy).

    ``tf.constant`` copies a numpy array twice (``ndarray.copy``, then into TF's buffer); a (mapped,
    read-only) checkpoint view cannot be handed over as it is (measured: the 96 MB of BERT-base
    weights that are not transposed, 0.22-0.25 s by ``tf.constant``, 0.08-0.13 s this way).
    """
    if a.size == 0:
        return tf.constant(a)
    buf = np.empty(a.nbytes + _ALIGN, np.uint8)
    start = -buf.ctypes.data % _ALIGN
    out = buf[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    np.copyto(out, a)
    return tf.experimental.dlpack.from_dlpack(out.__dlpack__())
