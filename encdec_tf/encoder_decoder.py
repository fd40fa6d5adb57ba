"""``TFEncoderDecoderModel``: any encoder + any causal decoder with cross-attention, in Keras 3.

>>> from encdec_core import BertConfig, GPT2Config, EncoderDecoderConfig
>>> from encdec_tf import TFEncoderDecoderModel
>>> enc = BertConfig(vocab_size=99, hidden_size=36, num_hidden_layers=1, num_attention_heads=3, intermediate_size=37)
>>> dec = GPT2Config(vocab_size=99, n_embd=36, n_layer=1, n_head=3)
>>> model = TFEncoderDecoderModel(config=EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec))
>>> type(model.decoder).__name__
'GPT2LMHeadModel'

Generation (built on top by the decoding loop) uses the cached step::

    enc = model.get_encoder()(input_ids=ids, attention_mask=mask)
    cache = model.init_cache(batch_size, max_length, enc, mask)     # cross keys/values computed once
    logits, cache = model.decode_step(next_ids, cache)              # (B,1,V); jit_compile-friendly
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from encdec_core.configs import EncoderDecoderConfig, PretrainedConfig, load_config
from encdec_core.errors import ConfigError, InputError
from encdec_core.generation import GenerationConfig
from encdec_core.hub import resolve_checkpoint
from encdec_core.outputs import BaseModelOutput, Seq2SeqLMOutput
from encdec_core.registry import model_class
from encdec_core.report import LoadingReport
from encdec_core.semantics import (
    IGNORE_INDEX,
    default_decoder_attention_mask,
    shift_tokens_right,
    split_prefixed_kwargs,
)
from encdec_core.tables import Param, Tie, encoder_decoder_table, encoder_decoder_ties, needs_projection
from encdec_core.validation import check_batch, check_label_values
from encdec_tf import models as _models  # noqa: F401  (registers the architectures)
from encdec_tf.adopt import adopt_config
from encdec_tf.cache import DecoderCache
from encdec_tf.generation import GenerationMixin
from encdec_tf.layers import Dense
from encdec_tf.modeling_utils import (
    HUB_KWARGS,
    PreTrainedModel,
    defer_variables,
    prefix_slots,
    walk,
)
from encdec_tf.models import masked_cross_entropy

logger = logging.getLogger("encdec")
WRAPPER_TOKENS = ("decoder_start_token_id", "pad_token_id", "eos_token_id", "bos_token_id")


class TFEncoderDecoderModel(GenerationMixin, PreTrainedModel):
    """A sequence-to-sequence model made of an encoder and a causal decoder, in Keras 3.

    Build it from a config (random weights), from two models, or warm-start it from two
    pretrained checkpoints with :meth:`from_encoder_decoder_pretrained`; load a fine-tuned one
    with :meth:`from_pretrained` (any format: canonical safetensors, HF's ``tf_model.h5``).
    ``call`` takes HF's arguments and returns HF's fields; ``model.fit`` on dict batches with
    ``labels`` trains on the internal loss. :meth:`generate` decodes (greedy, beam search,
    sampling) compiled with XLA, on the cached step :meth:`init_cache` / :meth:`decode_step`;
    :meth:`export_generate` saves it as a SavedModel.

    Assigning ``model.config = pt_model.config`` (the workaround of HF's documentation) adopts
    the config's special tokens and, for a warm-started model whose ``enc_to_dec_proj`` is
    still new, loads that projection from the checkpoint the config was read from, after
    checking that this checkpoint holds exactly this model's encoder and decoder weights (the
    per-part saves of PyTorch cannot hold the projection; see :mod:`encdec_tf.adopt`).
    Loading the PyTorch checkpoint directly with :meth:`from_pretrained` is simpler and is
    the recommended path.
    """

    config_class = EncoderDecoderConfig
    role = "encoder-decoder"

    def __init__(self, config: EncoderDecoderConfig | None = None, encoder: PreTrainedModel | None = None,
                 decoder: PreTrainedModel | None = None, name: str | None = None):
        if config is None:
            if encoder is None or decoder is None:
                raise ConfigError("TFEncoderDecoderModel needs either `config` or both `encoder` and `decoder`")
            config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder.config, decoder.config)
        elif not isinstance(config, EncoderDecoderConfig):
            raise ConfigError(f"TFEncoderDecoderModel: `config` expected an EncoderDecoderConfig, got {type(config).__name__}")
        super().__init__(config, name=name)
        with defer_variables():
            if encoder is None:
                encoder = model_class("tf", config.encoder, "encoder")(config.encoder, name="encoder")
            if decoder is None:
                decoder = model_class("tf", config.decoder, "decoder")(config.decoder, name="decoder")
        self.encoder, self.decoder = encoder, decoder
        if not (self.decoder.config.is_decoder and self.decoder.config.add_cross_attention):
            raise ConfigError(
                f"TFEncoderDecoderModel: the decoder ({type(self.decoder).__name__}) must be built with "
                "is_decoder=True and add_cross_attention=True"
            )
        # the sub-models' configs are the wrapper's, so an edit of one is seen by the other
        config.encoder, config.decoder = self.encoder.config, self.decoder.config
        config.validate()
        self.enc_to_dec_proj = (
            Dense(config.encoder.hidden_size, config.decoder.hidden_size, "enc_to_dec_proj")
            if needs_projection(config) else None
        )
        self._warm_started_projection = False  # set by from_encoder_decoder_pretrained
        if getattr(self.encoder, "pooler", None) is not None:
            # unused by seq2seq, so it never gets a gradient: kept (and saved) but frozen, which
            # spares fit() and optimizers a warning about variables without gradients at every step
            self.encoder.pooler.trainable = False
        self._finish_init()
        self.set_generation_config(GenerationConfig.from_model_config(config))

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> EncoderDecoderConfig:
        return self._config

    @config.setter
    def config(self, config: EncoderDecoderConfig) -> None:
        if "_config" not in self.__dict__:  # set by __init__
            self._config = config
            return
        adopt_config(self, config)

    # ------------------------------------------------------------------ tables, accessors
    def weight_table(self) -> list[Param]:
        return encoder_decoder_table(self.config)

    def weight_ties(self) -> list[Tie]:
        return encoder_decoder_ties(self.config)

    def tf_params(self) -> list[Param]:
        if not self.config.tie_encoder_decoder:
            return self.weight_table()
        untied = self.config.copy()
        untied.tie_encoder_decoder = False  # TF names of both sides; tie_weights shares the variables
        return encoder_decoder_table(untied)

    def param_slots(self):
        yield from prefix_slots(self.encoder.param_slots(), "encoder")
        yield from prefix_slots(self.decoder.param_slots(), "decoder")
        yield from walk(self, "", self.init_std())  # enc_to_dec_proj (the sub-models list their own)

    def init_std(self) -> float:
        return self.config.decoder.initializer_range  # new weights (cross-attention, projection) feed the decoder

    def get_encoder(self) -> PreTrainedModel:
        return self.encoder

    def get_decoder(self) -> PreTrainedModel:
        return self.decoder

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def get_output_embeddings(self):
        return self.decoder.get_output_embeddings()

    def config_to_save(self) -> dict:
        cfg = super().config_to_save()
        cfg["encoder"]["architectures"] = [self.encoder.pt_class_name()]
        cfg["decoder"]["architectures"] = [self.decoder.pt_class_name()]
        return cfg

    def generation_config_to_save(self) -> dict | None:
        return self._generation_config(None, {}).to_dict()

    def prepare_decoder_input_ids_from_labels(self, labels) -> tf.Tensor:
        return shift_tokens_right(tf.convert_to_tensor(labels), self.config.pad_token_id,
                                  self.config.decoder_start_token_id, xp=tnp)

    # ------------------------------------------------------------------ call
    def call(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
             encoder_outputs=None, past_key_values=None, inputs_embeds=None, decoder_inputs_embeds=None, labels=None,
             use_cache=None, output_attentions=False, output_hidden_states=False, return_dict=True, training=False,
             **kwargs):
        """Encode (unless ``encoder_outputs`` is given), decode, and with ``labels`` compute the loss.

        ``labels`` (B, T) with -100 on ignored positions give ``decoder_input_ids`` by a shift
        right (``decoder_start_token_id`` first, -100 -> ``pad_token_id``) and, without a
        ``decoder_attention_mask``, the mask ``decoder_input_ids != pad_token_id``; the loss is
        the mean cross-entropy over the tokens whose label is not -100. A dict as first
        argument (Keras' ``fit``) is unpacked. ``past_key_values`` takes HF's tuples or a
        :class:`DecoderCache` (then the encoder is skipped unless inputs are given). Keyword
        arguments prefixed ``decoder_`` go to the decoder, the others to the encoder.
        """
        if isinstance(input_ids, Mapping):  # Keras' fit/evaluate/predict hand over the whole batch
            named = dict(attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                         decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds,
                         decoder_inputs_embeds=decoder_inputs_embeds, labels=labels)
            batch = {**dict(input_ids), **{k: v for k, v in named.items() if v is not None}}
            return self.call(**batch, use_cache=use_cache, output_attentions=output_attentions,
                             output_hidden_states=output_hidden_states, return_dict=return_dict, training=training,
                             **kwargs)
        enc_kw, dec_kw = split_prefixed_kwargs(kwargs, "decoder_", default="encoder")
        cached = isinstance(past_key_values, DecoderCache)
        if not cached:  # with a cache, the decoder mask also covers the cached positions
            _check_inputs(self.config, input_ids, attention_mask, encoder_outputs, decoder_input_ids,
                          None if past_key_values is not None else decoder_attention_mask, labels)
        if encoder_outputs is None and not (cached and input_ids is None and inputs_embeds is None):
            if input_ids is None and inputs_embeds is None:
                raise InputError("TFEncoderDecoderModel: give input_ids, inputs_embeds or encoder_outputs")
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states, training=training,
                **enc_kw,
            )
        elif isinstance(encoder_outputs, (tuple, list)):  # HF order: (last_hidden_state, hidden_states, attentions)
            t = list(encoder_outputs) + [None, None]
            encoder_outputs = BaseModelOutput(last_hidden_state=t[0], hidden_states=t[1], attentions=t[2])
        enc_states = None if encoder_outputs is None else encoder_outputs.last_hidden_state
        if enc_states is not None and self.enc_to_dec_proj is not None:
            enc_states = self.enc_to_dec_proj(enc_states)

        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            if decoder_attention_mask is None:
                decoder_attention_mask = default_decoder_attention_mask(decoder_input_ids, self.config.pad_token_id)
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise InputError("TFEncoderDecoderModel: give decoder_input_ids, decoder_inputs_embeds or labels")
        dec = self.decoder(
            input_ids=decoder_input_ids, attention_mask=decoder_attention_mask, encoder_hidden_states=enc_states,
            encoder_attention_mask=attention_mask, inputs_embeds=decoder_inputs_embeds,
            past_key_values=past_key_values, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, training=training, **dec_kw,
        )
        loss = None
        if labels is not None:
            labels = tf.convert_to_tensor(labels)
            want = dec.logits.shape[:2]
            if want.is_fully_defined() and labels.shape.is_fully_defined() and labels.shape != want:
                raise InputError(f"labels have shape {tuple(labels.shape)}, expected {tuple(want)} (batch, decoder length)")
            loss = masked_cross_entropy(dec.logits, labels)
        enc = encoder_outputs if encoder_outputs is not None else BaseModelOutput()
        out = Seq2SeqLMOutput(
            loss=loss,
            logits=dec.logits,
            past_key_values=dec.past_key_values,
            decoder_hidden_states=dec.hidden_states,
            decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=enc.last_hidden_state,
            encoder_hidden_states=enc.hidden_states,
            encoder_attentions=enc.attentions,
        )
        return out if return_dict else out.to_tuple()

    # ------------------------------------------------------------------ cached decoding
    def init_cache(self, batch_size: int, max_length: int, encoder_outputs, attention_mask=None) -> DecoderCache:
        """An empty decoder cache of ``max_length`` positions for ``batch_size`` rows.

        ``encoder_outputs`` (a ``BaseModelOutput``, HF tuple, or the (B, S, D_enc) states) and the
        source ``attention_mask`` (B, S): the projection and every layer's cross-attention keys
        and values are computed here, once per generation.
        """
        if isinstance(encoder_outputs, BaseModelOutput):
            states = encoder_outputs.last_hidden_state
        elif isinstance(encoder_outputs, (tuple, list)):
            states = encoder_outputs[0]
        else:
            states = encoder_outputs
        states = tf.convert_to_tensor(states)  # (B,S,D_enc)
        if self.enc_to_dec_proj is not None:
            states = self.enc_to_dec_proj(states)
        return self.decoder.init_cache(batch_size, max_length, states, attention_mask)

    def decode_step(self, decoder_input_ids, cache: DecoderCache, decoder_attention_mask=None, training=False):
        """Decode ``decoder_input_ids`` (B, T) at the cache's position: -> (logits (B,T,V), updated cache).

        ``decoder_attention_mask`` (B, max_length), if the decoder inputs have padding, covers the
        whole cache. Shapes are fixed and the position is a tensor, so
        ``tf.function(model.decode_step, jit_compile=True)`` compiles once per input shape.
        """
        out = self.decoder(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask, past_key_values=cache,
                           use_cache=True, training=training)
        return out.logits, out.past_key_values

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_encoder_decoder_pretrained(
        cls, encoder_pretrained_model_name_or_path: str | os.PathLike | None = None,
        decoder_pretrained_model_name_or_path: str | os.PathLike | None = None, *model_args, **kwargs: Any,
    ) -> TFEncoderDecoderModel:
        """Warm-start: load a pretrained encoder and a pretrained decoder, add cross-attention.

        ``encoder_*`` / ``decoder_*`` keyword arguments go to the two loads: config fields
        (``decoder_add_cross_attention``), hub options (``encoder_revision``), and
        ``encoder_from_pt`` / ``decoder_from_pt`` (HF's flags; PyTorch checkpoints are read
        anyway). ``encoder_model=`` / ``decoder_model=`` pass ready models. The new weights
        (cross-attention, ``enc_to_dec_proj``) are listed as expected in ``model.loading_report``.
        """
        top = {k: kwargs.pop(k) for k in WRAPPER_TOKENS if k in kwargs}
        # as in HF, arguments without a prefix are fields of the EncoderDecoderConfig (tie_encoder_decoder=True)
        top.update({k: kwargs.pop(k) for k in list(kwargs) if not k.startswith(("encoder_", "decoder_"))})
        if unknown := sorted(set(top) - {f.name for f in dataclasses.fields(EncoderDecoderConfig)}):
            raise InputError(f"from_encoder_decoder_pretrained: unknown argument(s) {unknown}; prefix encoder_/decoder_ "
                             "to pass them to one part, or use fields of EncoderDecoderConfig")
        enc_kw, dec_kw = split_prefixed_kwargs(kwargs, "decoder_", "encoder_")
        reports = []
        parts = {}
        for role, path, kw in (("encoder", encoder_pretrained_model_name_or_path, enc_kw),
                               ("decoder", decoder_pretrained_model_name_or_path, dec_kw)):
            part = kw.pop("model", None)
            if part is None:
                if path is None:
                    raise InputError(f"from_encoder_decoder_pretrained: give {'an' if role == 'encoder' else 'a'} "
                                     f"{role} path or repo id, or `{role}_model=`")
                if role == "decoder":
                    kw.setdefault("is_decoder", True)
                    kw.setdefault("add_cross_attention", True)
                part_cls = _class_for(path, role, kw)
                part, rep = part_cls.from_pretrained(path, output_loading_info=True, log_report=False, **kw)
                reports.append(rep.prefixed(f"{role}."))
            parts[role] = part
        config = EncoderDecoderConfig.from_encoder_decoder_configs(parts["encoder"].config, parts["decoder"].config)
        for key, value in top.items():  # unset, as in HF, unless given here
            setattr(config, key, value)
        model = cls(config=config, encoder=parts["encoder"], decoder=parts["decoder"])
        new = []
        if model.enc_to_dec_proj is not None:
            new = ["enc_to_dec_proj.weight", "enc_to_dec_proj.bias"]
            model._warm_started_projection = True
        model.loading_report = LoadingReport.merge(reports, extra_new=new)
        model.loading_report.log(logger)
        return model

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *model_args, config: EncoderDecoderConfig | None = None,
                        from_pt: bool = False, strict: bool = False, output_loading_info: bool = False, **kwargs):
        """Load a fine-tuned checkpoint (a local folder or a Hub repo id), any format; its
        ``generation_config.json``, if any, is ``model.generation_config``."""
        model, report = super().from_pretrained(name_or_path, *model_args, config=config, from_pt=from_pt,
                                                strict=strict, output_loading_info=True, **kwargs)
        gen_file = model.checkpoint_folder / "generation_config.json"
        if gen_file.exists():
            model.set_generation_config(GenerationConfig.from_json_file(gen_file))
        return (model, report) if output_loading_info else model


def _class_for(path, role: str, kw: dict) -> type:
    """The Keras class for the checkpoint at ``path`` in ``role`` (HF's TFAuto* classes)."""
    hub = {k: kw[k] for k in HUB_KWARGS if k in kw}
    config: PretrainedConfig = kw.get("config") or load_config(resolve_checkpoint(path, **hub))
    return model_class("tf", config, role)


def _static_shape(x) -> tuple[int, ...] | None:
    """A fully known shape, or None (absent input, or a dimension unknown while Keras traces)."""
    if x is None:
        return None
    shape = tuple(x.shape)
    return None if any(d is None for d in shape) else tuple(int(d) for d in shape)


def _check_inputs(config, input_ids, attention_mask, encoder_outputs, decoder_input_ids, decoder_attention_mask,
                  labels) -> None:
    """The shared shape and label checks (encdec_core.validation): PyTorch's errors, word for word."""
    enc = encoder_outputs[0] if isinstance(encoder_outputs, (tuple, list)) else (
        encoder_outputs.last_hidden_state if encoder_outputs is not None else None)
    check_batch(config.encoder, config.decoder, input_ids=_static_shape(input_ids),
                attention_mask=_static_shape(attention_mask), encoder_states=_static_shape(enc),
                decoder_input_ids=_static_shape(decoder_input_ids),
                decoder_attention_mask=_static_shape(decoder_attention_mask), labels=_static_shape(labels))
    if labels is not None and tf.executing_eagerly():
        values = np.asarray(labels)
        if not np.issubdtype(values.dtype, np.integer):
            raise InputError(f"labels must hold integer token ids, got dtype {values.dtype}")
        kept = values[values != IGNORE_INDEX]
        if kept.size:
            check_label_values(int(kept.min()), int(kept.max()), config.decoder.vocab_size)


__all__ = ["TFEncoderDecoderModel"]
