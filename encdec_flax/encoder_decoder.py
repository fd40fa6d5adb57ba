"""``FlaxEncoderDecoderModel``: any encoder + any causal decoder with cross-attention, in Flax.

>>> from encdec_core import BertConfig, GPT2Config, EncoderDecoderConfig
>>> from encdec_flax import FlaxEncoderDecoderModel
>>> enc = BertConfig(vocab_size=99, hidden_size=36, num_hidden_layers=1, num_attention_heads=3, intermediate_size=37)
>>> dec = GPT2Config(vocab_size=99, n_embd=36, n_layer=1, n_head=3)
>>> model = FlaxEncoderDecoderModel(EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec))
>>> sorted(model.params)
['decoder', 'encoder']

The cache (:meth:`FlaxEncoderDecoderModel.init_cache`) is the core's
:class:`~encdec_core.decoding.DecoderCache`, a pytree::

    DecoderCache(
        index,                         # int32 scalar: slots 0 .. index-1 of the self-attention cache are written
        layers=(LayerCache(            # one per decoder layer, in layer order
            key=(B, H, L, K),          # L = max_length slots, written at index by
            value=(B, H, L, K),        #   lax.dynamic_update_slice on each decode step
            cross_key=(B, H, S, K),    # the encoder states' keys/values, computed once
            cross_value=(B, H, S, K),  #   by init_cache and never recomputed
        ), ...),
        encoder_attention_mask,        # (B, S) int32, or None
    )

B batch, H decoder heads, K head width, S encoder length; arrays in the compute ``dtype``.
Generation makes N = g * B rows (g beams or samples per source): the self-attention entries
are then (N, H, L, K) and the cross ones stay (B, H, S, K), shared by a source's g rows.
Every decode step feeds T new tokens (T = 1 in generation), attends over all L slots (a slot
j is seen by the query at position index + t iff j <= index + t and
``decoder_attention_mask[:, j]``) and returns the cache with ``index + T``. Shapes never
change, so one compiled step serves a whole ``lax.while_loop``; reordering beams is a
``jax.tree_util.tree_map`` over axis 0 of every array but ``index``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from encdec_core import driver
from encdec_core.configs import EncoderDecoderConfig
from encdec_core.decoding import DecoderCache, LayerCache
from encdec_core.errors import InputError
from encdec_core.formats.flax_msgpack import flatten_tree, unflatten_tree
from encdec_core.generation import GenerationConfig
from encdec_core.outputs import BaseModelOutput, CausalLMOutput, Seq2SeqLMOutput
from encdec_core.registry import model_class
from encdec_core.semantics import check_label_array, decoder_inputs_from_labels
from encdec_core.tables import Param, encoder_decoder_table, needs_projection
from encdec_core.validation import check_batch
from encdec_flax import models as _models  # noqa: F401  (registers the architectures)
from encdec_flax.generation import GenerationMixin
from encdec_flax.layers import Dtype
from encdec_flax.modeling_utils import (
    FlaxPreTrainedModel,
    check_ids,
    check_length,
    check_mask,
    cross_entropy,
    encoder_states,
    is_traced,
)


class EncoderDecoderModule(nn.Module):
    """The linen module: ``encoder``, ``decoder`` and, when widths differ, ``enc_to_dec_proj``."""

    config: EncoderDecoderConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        self.encoder = model_class("flax", c.encoder, "encoder").module_class(config=c.encoder, dtype=self.dtype)
        self.decoder = model_class("flax", c.decoder, "decoder").module_class(config=c.decoder, dtype=self.dtype)
        if needs_projection(c):
            self.enc_to_dec_proj = nn.Dense(c.decoder.hidden_size, dtype=self.dtype)

    def project(self, h):
        """Encoder states (B,S,D_enc) -> what cross-attention reads (B,S,D_dec)."""
        return self.enc_to_dec_proj(h) if needs_projection(self.config) else h

    def encode(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        deterministic=True,
        output_attentions=False,
        output_hidden_states=False,
    ) -> BaseModelOutput:
        # by name: Transformers' Flax wrapper passed position ids into the token-type slot
        return self.encoder(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            deterministic=deterministic,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )

    def decode(
        self,
        decoder_input_ids,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        decoder_attention_mask=None,
        decoder_position_ids=None,
        cache=None,
        deterministic=True,
        output_attentions=False,
        output_hidden_states=False,
    ) -> CausalLMOutput:
        # with a cache, cross-attention reads the keys/values stored in it: the encoder states are not needed
        enc = None if cache is not None or encoder_hidden_states is None else self.project(encoder_hidden_states)
        if cache is not None and encoder_attention_mask is None:
            encoder_attention_mask = cache.encoder_attention_mask
        return self.decoder(
            decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=enc,
            encoder_attention_mask=encoder_attention_mask,
            cache=cache,
            position_ids=decoder_position_ids,
            deterministic=deterministic,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )

    def init_cache(
        self,
        encoder_hidden_states,
        max_length: int,
        rows: int | None = None,
        encoder_attention_mask=None,
        deterministic: bool = True,
    ) -> DecoderCache:
        """The empty static cache with the cross-attention keys/values of ``encoder_hidden_states`` (B,S,D_enc).

        ``rows``: decoder rows, a multiple g of B (default B): the g rows of a source (generation's
        beams) share its cross-attention keys/values, which stay (B,H,S,K).
        """
        dec = self.config.decoder
        h = dec.num_attention_heads
        n = encoder_hidden_states.shape[0] if rows is None else rows
        empty = jnp.zeros((n, h, max_length, dec.hidden_size // h), self.dtype)  # (N,H,L,K)
        cross = self.decoder.cross_kv(self.project(encoder_hidden_states))
        mask = None if encoder_attention_mask is None else jnp.asarray(encoder_attention_mask, jnp.int32)
        return DecoderCache(jnp.zeros((), jnp.int32), tuple(LayerCache(empty, empty, *kv) for kv in cross), mask)

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        position_ids=None,
        decoder_position_ids=None,
        labels=None,
        deterministic=True,
        output_attentions=False,
        output_hidden_states=False,
    ) -> Seq2SeqLMOutput:
        flags = dict(
            deterministic=deterministic, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )
        enc = self.encode(input_ids, attention_mask, position_ids, **flags)
        decoder_input_ids, decoder_attention_mask = decoder_inputs_from_labels(  # the shared rule
            labels,
            decoder_input_ids,
            decoder_attention_mask,
            self.config.pad_token_id,
            self.config.decoder_start_token_id,
            xp=jnp,
        )
        dec = self.decode(
            decoder_input_ids,
            enc.last_hidden_state,
            attention_mask,
            decoder_attention_mask,
            decoder_position_ids,
            **flags,
        )
        return driver.seq2seq_output(None if labels is None else cross_entropy(dec.logits, labels), dec, enc)


def _shape(x: Any) -> tuple[int, ...] | None:
    return None if x is None else tuple(jnp.shape(x))


def check_labels(labels: Any, vocab_size: int) -> None:
    """Integer labels in [0, vocab) or -100, with the message every backend gives (encdec_core.validation)."""
    if labels is None:
        return
    dtype = labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise InputError(f"labels must hold integer token ids, got dtype {dtype}")
    if not is_traced(labels):
        check_label_array(np.asarray(labels), vocab_size)


def _flag(value: Any) -> bool:
    return bool(value) if value is not None else False


class FlaxEncoderDecoderModel(driver.EncoderDecoderDriver, GenerationMixin, FlaxPreTrainedModel):
    """A sequence-to-sequence model made of an encoder and a causal decoder, with HF's Flax API.

    Build it from a config (random weights), warm-start it from two pretrained checkpoints
    with :meth:`from_encoder_decoder_pretrained`, or load a fine-tuned one with
    :meth:`from_pretrained`. ``model(...)`` takes HF's arguments plus ``labels``;
    :meth:`encode`, :meth:`decode` and :meth:`init_cache` are the pieces :meth:`generate` uses.
    """

    config_class = EncoderDecoderConfig
    module_class = EncoderDecoderModule
    role = "encoder-decoder"
    backend = "flax"
    warm_start_options = ("dtype", "seed")  # the wrapper's and both parts' (not config fields)

    def __init__(
        self,
        config: EncoderDecoderConfig,
        input_shape: Any = None,
        seed: int = 0,
        dtype: Any = jnp.float32,
        _do_init: bool = True,
        _shapes: dict[str, tuple[int, ...]] | None = None,
    ):
        super().__init__(config, input_shape or ((1, 1), (1, 1)), seed, dtype, _do_init, _shapes)
        self.set_generation_config(GenerationConfig.from_model_config(config))

    def dummy_inputs(self, input_shape) -> dict:
        return {
            "input_ids": jnp.ones(input_shape[0], jnp.int32),
            "decoder_input_ids": jnp.ones(input_shape[1], jnp.int32),
        }

    # ------------------------------------------------------------------ tables (the rest: driver)
    def full_table(self) -> list[Param]:
        untied = self.config.copy()
        untied.tie_encoder_decoder = False  # the module keeps both copies; the tie is materialize()'s
        return encoder_decoder_table(untied)

    # ------------------------------------------------------------------ calls
    def _check_source(self, input_ids, attention_mask):
        check_ids(self.config.encoder, input_ids, "input_ids")
        check_mask(attention_mask, jnp.shape(input_ids), "attention_mask", "input_ids")
        check_length(self.config.encoder, jnp.shape(input_ids)[1], "input_ids")

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        position_ids=None,
        decoder_position_ids=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        train=False,
        params=None,
        dropout_rng=None,
        labels=None,
    ):
        """Encode, decode, and with ``labels`` (B,T) compute the loss (mean cross-entropy over labels != -100).

        Without ``decoder_input_ids``, labels give them by a shift right (``decoder_start_token_id``
        first, -100 -> ``pad_token_id``) and the decoder mask is ``decoder_input_ids != pad_token_id``.
        """
        dec_cfg = self.config.decoder
        # switches left None come from the wrapper's config, as Transformers' Flax class
        output_attentions, output_hidden_states, return_dict = driver.output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        if decoder_input_ids is None and labels is None:
            raise InputError("give decoder_input_ids, or labels to derive them from")
        check_batch(
            self.config.encoder,
            dec_cfg,
            input_ids=_shape(input_ids),
            attention_mask=_shape(attention_mask),
            decoder_input_ids=_shape(decoder_input_ids),
            decoder_attention_mask=_shape(decoder_attention_mask),
            labels=_shape(labels),
        )
        self._check_source(input_ids, attention_mask)
        check_labels(labels, dec_cfg.vocab_size)
        check_ids(dec_cfg, decoder_input_ids, "decoder_input_ids")
        out = self.apply(
            params,
            input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            position_ids=position_ids,
            decoder_position_ids=decoder_position_ids,
            labels=labels,
            train=train,
            dropout_rng=dropout_rng,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return out if return_dict else out.to_tuple()

    def encode(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        train=False,
        params=None,
        dropout_rng=None,
    ):
        """Run the encoder alone: ``BaseModelOutput`` (last_hidden_state (B,S,D_enc), ...)."""
        self._check_source(input_ids, attention_mask)
        out = self.apply(
            params,
            input_ids,
            attention_mask,
            position_ids,
            method="encode",
            train=train,
            dropout_rng=dropout_rng,
            output_attentions=_flag(output_attentions),
            output_hidden_states=_flag(output_hidden_states),
        )
        return out if return_dict is None or return_dict else out.to_tuple()

    def decode(
        self,
        decoder_input_ids,
        encoder_outputs=None,
        encoder_attention_mask=None,
        decoder_attention_mask=None,
        decoder_position_ids=None,
        past_key_values=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        train=False,
        params=None,
        dropout_rng=None,
    ):
        """Run the decoder on the encoder's outputs: ``CausalLMOutput`` (logits (B,T,V), ...).

        With ``past_key_values`` (a cache from :meth:`init_cache` or a previous step) the T
        tokens are written at the cache index, cross-attention uses the cached encoder
        keys/values (``encoder_outputs`` may then be None), ``decoder_attention_mask`` if given
        covers all L cache slots (B,L), positions default to index + t, self-attention
        probabilities (``output_attentions``) span the L slots (B,H,T,L), and
        ``out.past_key_values`` is the cache advanced by T.
        """
        dec_cfg = self.config.decoder
        check_ids(dec_cfg, decoder_input_ids, "decoder_input_ids")
        enc = encoder_states(encoder_outputs)
        b, t = jnp.shape(decoder_input_ids)
        if past_key_values is None:
            if enc is None:
                raise InputError("decode needs encoder_outputs (or past_key_values from init_cache)")
            check_mask(decoder_attention_mask, (b, t), "decoder_attention_mask", "decoder_input_ids")
            check_length(dec_cfg, t, "decoder_input_ids")
        else:
            slots = past_key_values.layers[0].key.shape
            check_mask(
                decoder_attention_mask, (b, slots[2]), "decoder_attention_mask", "the cache slots (batch, max_length)"
            )
            if slots[0] != b:
                raise InputError(f"decoder_input_ids have batch {b}, but the cache was made for batch {slots[0]}")
            index = past_key_values.index
            if not is_traced(index) and int(index) + t > slots[2]:
                raise InputError(f"the cache holds {slots[2]} positions; {int(index)} are used and {t} more do not fit")
        out = self.apply(
            params,
            decoder_input_ids,
            enc,
            encoder_attention_mask,
            decoder_attention_mask,
            decoder_position_ids,
            past_key_values,
            method="decode",
            train=train,
            dropout_rng=dropout_rng,
            output_attentions=_flag(output_attentions),
            output_hidden_states=_flag(output_hidden_states),
        )
        return out if return_dict is None or return_dict else out.to_tuple()

    # ------------------------------------------------------------------ construction (the rest: driver)
    @classmethod
    def _assemble(cls, config: EncoderDecoderConfig, parts: dict, options: dict) -> FlaxEncoderDecoderModel:
        # the parts' trees under "encoder/" and "decoder/": no second trace of the whole model (~0.4 s at base size)
        shapes = {f"{side}/{k}": v for side, part in parts.items() for k, v in part.shapes.items()}
        if needs_projection(config):  # nn.Dense(D_dec) on the encoder's states
            d_enc, d_dec = config.encoder.hidden_size, config.decoder.hidden_size
            shapes.update({"enc_to_dec_proj/kernel": (d_enc, d_dec), "enc_to_dec_proj/bias": (d_dec,)})
        options = {"seed": options.get("seed", 0), "dtype": options.get("dtype", jnp.float32)}
        model = cls(config, **options, _do_init=False, _shapes=shapes)
        flat = {f"{side}/{k}": v for side, part in parts.items() for k, v in flatten_tree(part.params).items()}
        if needs_projection(config):
            flat.update(flatten_tree(model.init_weights(model.key, ["enc_to_dec_proj/kernel", "enc_to_dec_proj/bias"])))
        stored = {p.flax for p in model.weight_table()}  # with tie_encoder_decoder the decoder's copy is kept
        model.params = unflatten_tree({k: v for k, v in flat.items() if k in stored})
        return model


__all__ = ["FlaxEncoderDecoderModel", "EncoderDecoderModule"]
