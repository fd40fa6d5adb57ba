"""Assigning a config to a built ``TFEncoderDecoderModel`` (``model.config = pt_model.config``).

Transformers' documented workaround for PyTorch checkpoints saves the encoder and the decoder
of a PyTorch model apart, warm-starts the TF model from the two parts, then assigns the
PyTorch model's config. Neither part can hold ``enc_to_dec_proj``, so Transformers silently
kept a random projection. Here the assignment also:

* checks that the config fits the variables (same sizes; untying shared variables refused);
* ties encoder and decoder when the config says so and the parts hold equal copies;
* for a warm-started projection, loads ``enc_to_dec_proj`` from the checkpoint the config was
  read from (``config._name_or_path``, recorded by ``load_config``), but only after checking
  that this checkpoint holds exactly the model's other weights: a PyTorch model changed after
  loading would otherwise get a projection that is not its own. When that fails the
  projection stays new and a warning says why.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from encdec_core.configs import EncoderDecoderConfig
from encdec_core.errors import ConfigError
from encdec_core.formats.mapping import from_framework, to_framework
from encdec_tf.modeling_utils import open_state

logger = logging.getLogger("encdec")

# config fields that fix variable shapes: an assigned config must agree on them
_SHAPE_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "num_positions",
    "type_vocab_size",
    "add_cross_attention",
    "cross_attention_hidden_size",
    "tie_word_embeddings",
)


def adopt_config(model, config: EncoderDecoderConfig) -> None:
    """Take ``config`` (e.g. a PyTorch model's): same shapes required; sub-model configs follow it."""
    if not isinstance(config, EncoderDecoderConfig):
        raise ConfigError(f"TFEncoderDecoderModel.config expected an EncoderDecoderConfig, got {type(config).__name__}")
    if model._config.tie_encoder_decoder and not config.tie_encoder_decoder:
        raise ConfigError(
            "TFEncoderDecoderModel.config: the assigned config unties encoder and decoder, whose "
            "variables are shared here; build a new model from it instead"
        )
    for side in ("encoder", "decoder"):
        ours, theirs = getattr(model, side).config, getattr(config, side)
        diff = [f for f in _SHAPE_FIELDS if getattr(ours, f, None) != getattr(theirs, f, None)]
        if type(ours) is not type(theirs) or diff:
            raise ConfigError(
                f"TFEncoderDecoderModel.config: the assigned {side} config does not fit this model's weights "
                f"({type(theirs).__name__} vs {type(ours).__name__}; differing fields: {diff})"
            )
    tie = config.tie_encoder_decoder and not model._config.tie_encoder_decoder
    model._config = config
    model.encoder.config, model.decoder.config = config.encoder, config.decoder
    if tie:
        _tie_equal_copies(model)
    if model.enc_to_dec_proj is not None and model._warm_started_projection:
        _recover_projection(model, getattr(config, "_name_or_path", None))


def _tie_equal_copies(model) -> None:
    """A tying config on separate variables (warm-started from a tied model's parts): share them if equal."""
    named = model.named_variables()
    if differ := [t for t, src in model.tf_ties().items() if not np.array_equal(named[t].numpy(), named[src].numpy())]:
        raise ConfigError(
            f"TFEncoderDecoderModel.config: tie_encoder_decoder is set, but the encoder weights "
            f"differ from the decoder's they would be tied to (first: {differ[0]})"
        )
    model.tie_weights()


def _recover_projection(model, source: str | None) -> None:
    """Load ``enc_to_dec_proj`` from ``source`` if that checkpoint holds this very encoder and decoder."""
    why = _projection_from(model, Path(source)) if source else "the config records no checkpoint folder"
    if why:
        logger.warning(
            "enc_to_dec_proj stays newly initialised: %s; load the seq2seq checkpoint with "
            "TFEncoderDecoderModel.from_pretrained(...) instead",
            why,
        )
        return
    model._warm_started_projection = False
    report = getattr(model, "loading_report", None)
    if report is not None:
        new = [k for k in report.expected_new if not k.startswith("enc_to_dec_proj.")]
        model.loading_report = dataclasses.replace(report, expected_new=new)
    logger.info("enc_to_dec_proj loaded from %s, the checkpoint the assigned config was read from", source)


def _projection_from(model, folder: Path) -> str | None:
    """Assign the projection from ``folder``; return why not, or None when done."""
    params = model.weight_table()
    proj = [p for p in params if p.group == "proj"]
    named = model.named_variables()
    with open_state(folder, model.tf_params()) as state:
        if absent := [p.pt for p in params if p.pt not in state.shapes]:
            return f"{folder} lacks {absent[0]}"
        for p in params:  # the projection belongs to the weights it was trained with
            if p.group != "proj":
                ours = from_framework({p.tf: named[p.tf].numpy()}, [p], "tf")[p.pt]
                if not np.array_equal(ours, state.get(p.pt)):
                    return f"{folder} holds other weights than this model's (first: {p.pt})"
        values = to_framework({p.pt: state.get(p.pt) for p in proj}, proj, "tf")
    for p in proj:
        named[p.tf].assign(values[p.tf])
    return None
