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

from encdec_core import calls, driver, semantics
from encdec_core.configs import EncoderDecoderConfig
from encdec_core.generation import GenerationConfig
from encdec_core.registry import model_class
from encdec_core.seq2seq import Seq2SeqForward
from encdec_core.tables import Param, encoder_decoder_table, needs_projection
from encdec_tf import models as _models  # noqa: F401  (registers the architectures)
from encdec_tf.adopt import adopt_config
from encdec_tf.cache import DecoderCache
from encdec_tf.generation import GenerationMixin
from encdec_tf.layers import Dense
from encdec_tf.modeling_utils import PreTrainedModel, defer_variables, prefix_slots, walk
from encdec_tf.models import masked_cross_entropy


class TFEncoderDecoderModel(driver.EncoderDecoderDriver, Seq2SeqForward, GenerationMixin, PreTrainedModel):
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
    array_namespace = tnp
    resolve_flags = True  # output switches left None come from the wrapper's config, as Transformers' TF class

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

    # ------------------------------------------------------------------ call (the flow: encdec_core.seq2seq)
    @calls.signature("seq2seq", var_keyword=True, training=False)
    def call(self, a, **kwargs):
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
        if isinstance(a.input_ids, Mapping):  # Keras' fit/evaluate/predict hand over the whole batch
            given = {k: v for k, v in a._asdict().items() if v is not None and k != "input_ids"}
            return self.call(**{**dict(a.input_ids), **given}, **kwargs)
        if a.labels is not None:
            a = a._replace(labels=tf.convert_to_tensor(a.labels))
        return self.seq2seq_forward(a, kwargs)

    def part_options(self, a) -> dict:
        return {"training": a.training}

    def skip_encoder(self, a) -> bool:
        return isinstance(a.past_key_values, DecoderCache) and a.input_ids is None and a.inputs_embeds is None

    def _loss(self, logits, labels, num_items_in_batch):
        return masked_cross_entropy(logits, labels, num_items_in_batch)

    def _check_inputs(self, a) -> None:
        if not isinstance(a.past_key_values, DecoderCache):  # a cache's steps were checked by decode_step
            super()._check_inputs(a)

    def static_shape(self, x) -> tuple | None:
        """A fully known shape, or None (absent input, or a dimension unknown while Keras traces)."""
        shape = None if x is None else tuple(x.shape)
        return None if shape is None or None in shape else tuple(int(d) for d in shape)

    def _check_labels(self, labels) -> None:
        if tf.executing_eagerly():
            semantics.check_label_array(np.asarray(labels), self.config.decoder.vocab_size)

    # cached decoding: encode / init_cache / decode_step are the decoding contract (encdec_tf.generation)

    # ------------------------------------------------------------------ construction (the rest: driver)
    @classmethod
    def _assemble(cls, config: EncoderDecoderConfig, parts: dict, options: dict) -> TFEncoderDecoderModel:
        model = cls(config=config, encoder=parts["encoder"], decoder=parts["decoder"])
        model._warm_started_projection = model.enc_to_dec_proj is not None  # see encdec_tf.adopt
        return model


__all__ = ["TFEncoderDecoderModel"]
