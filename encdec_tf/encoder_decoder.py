"""``TFEncoderDecoderModel``: any encoder + any causal decoder with cross-attention, in Keras 3.

>>> from encdec_core import BertConfig, EncoderDecoderConfig
>>> from encdec_tf import TFEncoderDecoderModel
>>> bert = BertConfig(vocab_size=99, hidden_size=36, num_hidden_layers=1, num_attention_heads=3, intermediate_size=37)
>>> model = TFEncoderDecoderModel(config=EncoderDecoderConfig.from_encoder_decoder_configs(bert, bert))
>>> type(model.decoder).__name__, model.decoder.config.is_decoder
('BertLMHeadModel', True)

Generation (built on top by the decoding loop) uses the cached step::

    enc = model.get_encoder()(input_ids=ids, attention_mask=mask)
    cache = model.init_cache(batch_size, max_length, enc, mask)     # cross keys/values computed once
    logits, cache = model.decode_step(next_ids, cache)              # (B,1,V); jit_compile-friendly
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from encdec_core import driver, semantics
from encdec_core.configs import EncoderDecoderConfig
from encdec_core.errors import InputError
from encdec_core.generation import GenerationConfig
from encdec_core.registry import model_class
from encdec_core.tables import Param, encoder_decoder_table, needs_projection
from encdec_core.validation import check_batch
from encdec_tf import models as _models  # noqa: F401  (registers the architectures)
from encdec_tf.adopt import adopt_config
from encdec_tf.cache import DecoderCache
from encdec_tf.generation import GenerationMixin
from encdec_tf.layers import Dense
from encdec_tf.modeling_utils import PreTrainedModel, defer_variables, prefix_slots, walk
from encdec_tf.models import masked_cross_entropy


class TFEncoderDecoderModel(driver.EncoderDecoderDriver, GenerationMixin, PreTrainedModel):
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
    backend = "tf"

    def __init__(
        self,
        config: EncoderDecoderConfig | None = None,
        encoder: PreTrainedModel | None = None,
        decoder: PreTrainedModel | None = None,
        name: str | None = None,
    ):
        config = driver.wrapper_config("TFEncoderDecoderModel", config, encoder, decoder)
        super().__init__(config, name=name)
        with defer_variables():
            if encoder is None:
                encoder = model_class("tf", config.encoder, "encoder")(config.encoder, name="encoder")
            if decoder is None:
                decoder = model_class("tf", config.decoder, "decoder")(config.decoder, name="decoder")
        self.encoder, self.decoder = encoder, decoder
        driver.check_decoder("TFEncoderDecoderModel", self.decoder)
        # the sub-models' configs are the wrapper's, so an edit of one is seen by the other
        config.encoder, config.decoder = self.encoder.config, self.decoder.config
        config.validate()
        self.enc_to_dec_proj = (
            Dense(config.encoder.hidden_size, config.decoder.hidden_size, "enc_to_dec_proj")
            if needs_projection(config)
            else None
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

    # ------------------------------------------------------------------ tables (the rest: driver)
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

    def prepare_decoder_input_ids_from_labels(self, labels) -> tf.Tensor:
        return semantics.shift_tokens_right(
            tf.convert_to_tensor(labels), self.config.pad_token_id, self.config.decoder_start_token_id, xp=tnp
        )

    # ------------------------------------------------------------------ call
    def call(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        past_key_values=None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        training=False,
        **kwargs,
    ):
        """Encode (unless ``encoder_outputs`` is given), decode, and with ``labels`` compute the loss.

        ``labels`` (B, T) with -100 on ignored positions give ``decoder_input_ids`` by a shift
        right (``decoder_start_token_id`` first, -100 -> ``pad_token_id``) and, without a
        ``decoder_attention_mask``, the mask ``decoder_input_ids != pad_token_id``; the loss is
        the mean cross-entropy over the tokens whose label is not -100. A dict as first
        argument (Keras' ``fit``) is unpacked. ``past_key_values`` takes HF's tuples or a
        :class:`DecoderCache` (then the encoder is skipped unless inputs are given). Keyword
        arguments prefixed ``decoder_`` go to the decoder, the others to the encoder. Output switches
        left None come from ``config`` (the wrapper's, as Transformers' TF class).
        """
        if isinstance(input_ids, Mapping):  # Keras' fit/evaluate/predict hand over the whole batch
            named = dict(
                attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask,
                encoder_outputs=encoder_outputs,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                decoder_inputs_embeds=decoder_inputs_embeds,
                labels=labels,
            )
            batch = {**dict(input_ids), **{k: v for k, v in named.items() if v is not None}}
            return self.call(
                **batch,
                use_cache=use_cache,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=return_dict,
                training=training,
                **kwargs,
            )
        output_attentions, output_hidden_states, return_dict = driver.output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        enc_kw, dec_kw = semantics.split_prefixed_kwargs(kwargs, "decoder_", default="encoder")
        cached = isinstance(past_key_values, DecoderCache)
        if not cached:  # with a cache, the decoder mask also covers the cached positions
            _check_inputs(
                self.config,
                input_ids,
                attention_mask,
                encoder_outputs,
                decoder_input_ids,
                None if past_key_values is not None else decoder_attention_mask,
                labels,
            )
        if encoder_outputs is None and not (cached and input_ids is None and inputs_embeds is None):
            if input_ids is None and inputs_embeds is None:
                raise InputError("TFEncoderDecoderModel: give input_ids, inputs_embeds or encoder_outputs")
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
                training=training,
                **enc_kw,
            )
        encoder_outputs = driver.as_encoder_output(encoder_outputs)
        enc_states = None if encoder_outputs is None else encoder_outputs.last_hidden_state
        if enc_states is not None and self.enc_to_dec_proj is not None:
            enc_states = self.enc_to_dec_proj(enc_states)

        decoder_input_ids, decoder_attention_mask = semantics.decoder_inputs_from_labels(
            None if labels is None else tf.convert_to_tensor(labels),
            decoder_input_ids,
            decoder_attention_mask,
            self.config.pad_token_id,
            self.config.decoder_start_token_id,
            xp=tnp,
            has_embeds=decoder_inputs_embeds is not None,
        )
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise InputError("TFEncoderDecoderModel: give decoder_input_ids, decoder_inputs_embeds or labels")
        dec = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=enc_states,
            encoder_attention_mask=attention_mask,
            inputs_embeds=decoder_inputs_embeds,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            training=training,
            **dec_kw,
        )
        loss = None
        if labels is not None:
            labels = tf.convert_to_tensor(labels)
            want = dec.logits.shape[:2]
            if want.is_fully_defined() and labels.shape.is_fully_defined() and labels.shape != want:
                raise InputError(
                    f"labels have shape {tuple(labels.shape)}, expected {tuple(want)} (batch, decoder length)"
                )
            loss = masked_cross_entropy(dec.logits, labels)
        out = driver.seq2seq_output(loss, dec, encoder_outputs)
        return out if return_dict else out.to_tuple()

    # cached decoding: encode / init_cache / decode_step are the decoding contract (encdec_tf.generation)

    # ------------------------------------------------------------------ construction (the rest: driver)
    @classmethod
    def _assemble(cls, config: EncoderDecoderConfig, parts: dict, options: dict) -> TFEncoderDecoderModel:
        model = cls(config=config, encoder=parts["encoder"], decoder=parts["decoder"])
        model._warm_started_projection = model.enc_to_dec_proj is not None  # see encdec_tf.adopt
        return model


def _static_shape(x) -> tuple[int, ...] | None:
    """A fully known shape, or None (absent input, or a dimension unknown while Keras traces)."""
    if x is None:
        return None
    shape = tuple(x.shape)
    return None if any(d is None for d in shape) else tuple(int(d) for d in shape)


def _check_inputs(
    config, input_ids, attention_mask, encoder_outputs, decoder_input_ids, decoder_attention_mask, labels
) -> None:
    """The shared shape and label checks (encdec_core.validation): PyTorch's errors, word for word."""
    enc = driver.encoder_states(encoder_outputs)
    check_batch(
        config.encoder,
        config.decoder,
        input_ids=_static_shape(input_ids),
        attention_mask=_static_shape(attention_mask),
        encoder_states=_static_shape(enc),
        decoder_input_ids=_static_shape(decoder_input_ids),
        decoder_attention_mask=_static_shape(decoder_attention_mask),
        labels=_static_shape(labels),
    )
    if labels is not None and tf.executing_eagerly():
        semantics.check_label_array(np.asarray(labels), config.decoder.vocab_size)


__all__ = ["TFEncoderDecoderModel"]
