"""``FlaxEncoderDecoderModel``: any encoder + any causal decoder with cross-attention, in Flax.

>>> from encdec_core import BertConfig, GPT2Config, EncoderDecoderConfig
>>> from encdec_flax import FlaxEncoderDecoderModel
>>> enc = BertConfig(vocab_size=99, hidden_size=36, num_hidden_layers=1, num_attention_heads=3, intermediate_size=37)
>>> dec = GPT2Config(vocab_size=99, n_embd=36, n_layer=1, n_head=3)
>>> model = FlaxEncoderDecoderModel(EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec))
>>> sorted(model.params)
['decoder', 'encoder']

The cache (:meth:`FlaxEncoderDecoderModel.init_cache`) is a plain pytree::

    cache = {
        "index": int32 scalar,         # slots 0 .. index-1 of the self-attention cache are written
        "layers": (                    # one dict per decoder layer, in layer order
            {
                "self_key":    (B, H, L, K),  # L = max_length slots, written at "index" by
                "self_value":  (B, H, L, K),  #   lax.dynamic_update_slice on each decode step
                "cross_key":   (B, H, S, K),  # the encoder states' keys/values, computed once
                "cross_value": (B, H, S, K),  #   by init_cache and never recomputed
            },
            ...
        ),
    }

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

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from conversion.flax_msgpack import flatten_tree, unflatten_tree
from encdec_core.configs import EncoderDecoderConfig, load_config
from encdec_core.errors import InputError
from encdec_core.generation import GenerationConfig
from encdec_core.hub import resolve_checkpoint
from encdec_core.outputs import BaseModelOutput, CausalLMOutput, Seq2SeqLMOutput
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
from encdec_flax import models as _models  # noqa: F401  (registers the architectures)
from encdec_flax.generation import GenerationMixin
from encdec_flax.layers import Dtype
from encdec_flax.modeling_utils import (
    HUB_KWARGS,
    FlaxPreTrainedModel,
    check_ids,
    check_length,
    check_mask,
    cross_entropy,
    encoder_states,
    is_traced,
    logger,
)

WRAPPER_TOKENS = ("decoder_start_token_id", "pad_token_id", "eos_token_id", "bos_token_id")


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

    def encode(self, input_ids, attention_mask=None, position_ids=None, deterministic=True, output_attentions=False,
               output_hidden_states=False) -> BaseModelOutput:
        # by name: Transformers' Flax wrapper passed position ids into the token-type slot
        return self.encoder(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            deterministic=deterministic, output_attentions=output_attentions,
                            output_hidden_states=output_hidden_states)

    def decode(self, decoder_input_ids, encoder_hidden_states=None, encoder_attention_mask=None,
               decoder_attention_mask=None, decoder_position_ids=None, cache=None, deterministic=True,
               output_attentions=False, output_hidden_states=False) -> CausalLMOutput:
        # with a cache, cross-attention reads the keys/values stored in it: the encoder states are not needed
        enc = None if cache is not None or encoder_hidden_states is None else self.project(encoder_hidden_states)
        return self.decoder(decoder_input_ids, attention_mask=decoder_attention_mask, encoder_hidden_states=enc,
                            encoder_attention_mask=encoder_attention_mask, cache=cache,
                            position_ids=decoder_position_ids, deterministic=deterministic,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states)

    def init_cache(self, encoder_hidden_states, max_length: int, rows: int | None = None,
                   deterministic: bool = True) -> dict:
        """The empty static cache with the cross-attention keys/values of ``encoder_hidden_states`` (B,S,D_enc).

        ``rows``: decoder rows, a multiple g of B (default B): the g rows of a source (generation's
        beams) share its cross-attention keys/values, which stay (B,H,S,K).
        """
        dec = self.config.decoder
        h = dec.num_attention_heads
        n = encoder_hidden_states.shape[0] if rows is None else rows
        empty = jnp.zeros((n, h, max_length, dec.hidden_size // h), self.dtype)  # (N,H,L,K)
        cross = self.decoder.cross_kv(self.project(encoder_hidden_states))
        return {"index": jnp.zeros((), jnp.int32),
                "layers": tuple({"self_key": empty, "self_value": empty, **kv} for kv in cross)}

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 position_ids=None, decoder_position_ids=None, labels=None, deterministic=True,
                 output_attentions=False, output_hidden_states=False) -> Seq2SeqLMOutput:
        flags = dict(deterministic=deterministic, output_attentions=output_attentions,
                     output_hidden_states=output_hidden_states)
        enc = self.encode(input_ids, attention_mask, position_ids, **flags)
        if labels is not None and decoder_input_ids is None:  # the shared rule: shift right, mask the pads
            pad = self.config.pad_token_id
            decoder_input_ids = shift_tokens_right(labels, pad, self.config.decoder_start_token_id, xp=jnp)
            if decoder_attention_mask is None:
                decoder_attention_mask = default_decoder_attention_mask(decoder_input_ids, pad)
        dec = self.decode(decoder_input_ids, enc.last_hidden_state, attention_mask, decoder_attention_mask,
                          decoder_position_ids, **flags)
        return Seq2SeqLMOutput(
            loss=None if labels is None else cross_entropy(dec.logits, labels),
            logits=dec.logits,
            past_key_values=None,
            decoder_hidden_states=dec.hidden_states,
            decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=enc.last_hidden_state,
            encoder_hidden_states=enc.hidden_states,
            encoder_attentions=enc.attentions,
        )


def _shape(x: Any) -> tuple[int, ...] | None:
    return None if x is None else tuple(jnp.shape(x))


def check_labels(labels: Any, vocab_size: int) -> None:
    """Integer labels in [0, vocab) or -100, with the message every backend gives (encdec_core.validation)."""
    if labels is None:
        return
    dtype = labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise InputError(f"labels must hold integer token ids, got dtype {dtype}")
    if is_traced(labels):
        return
    kept = np.asarray(labels)[np.asarray(labels) != IGNORE_INDEX]
    if kept.size:
        check_label_values(int(kept.min()), int(kept.max()), vocab_size)


def _flag(value: Any) -> bool:
    return bool(value) if value is not None else False


class FlaxEncoderDecoderModel(GenerationMixin, FlaxPreTrainedModel):
    """A sequence-to-sequence model made of an encoder and a causal decoder, with HF's Flax API.

    Build it from a config (random weights), warm-start it from two pretrained checkpoints
    with :meth:`from_encoder_decoder_pretrained`, or load a fine-tuned one with
    :meth:`from_pretrained`. ``model(...)`` takes HF's arguments plus ``labels``;
    :meth:`encode`, :meth:`decode` and :meth:`init_cache` are the pieces :meth:`generate` uses.
    """

    config_class = EncoderDecoderConfig
    module_class = EncoderDecoderModule
    role = "encoder-decoder"

    def __init__(self, config: EncoderDecoderConfig, input_shape: Any = None, seed: int = 0, dtype: Any = jnp.float32,
                 _do_init: bool = True):
        super().__init__(config, input_shape or ((1, 1), (1, 1)), seed, dtype, _do_init)
        self.set_generation_config(GenerationConfig.from_model_config(config))

    def dummy_inputs(self, input_shape) -> dict:
        return {"input_ids": jnp.ones(input_shape[0], jnp.int32), "decoder_input_ids": jnp.ones(input_shape[1], jnp.int32)}

    # ------------------------------------------------------------------ tables
    def weight_table(self) -> list[Param]:
        return encoder_decoder_table(self.config)

    def full_table(self) -> list[Param]:
        untied = self.config.copy()
        untied.tie_encoder_decoder = False  # the module keeps both copies; the tie is materialize()'s
        return encoder_decoder_table(untied)

    def weight_ties(self) -> list[Tie]:
        return encoder_decoder_ties(self.config)

    def init_std(self) -> float:
        return self.config.decoder.initializer_range  # new weights (cross-attention, projection) feed the decoder

    def config_to_save(self) -> dict:
        cfg = super().config_to_save()
        for side in ("encoder", "decoder"):
            cfg[side]["architectures"] = [model_class("flax", getattr(self.config, side), side).__name__]
        return cfg

    def generation_config_to_save(self) -> dict | None:
        return self._generation_config(None, {}).to_dict()

    # ------------------------------------------------------------------ calls
    def _check_source(self, input_ids, attention_mask):
        check_ids(self.config.encoder, input_ids, "input_ids")
        check_mask(attention_mask, jnp.shape(input_ids), "attention_mask", "input_ids")
        check_length(self.config.encoder, jnp.shape(input_ids)[1], "input_ids")

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 position_ids=None, decoder_position_ids=None, output_attentions=None, output_hidden_states=None,
                 return_dict=None, train=False, params=None, dropout_rng=None, labels=None):
        """Encode, decode, and with ``labels`` (B,T) compute the loss (mean cross-entropy over labels != -100).

        Without ``decoder_input_ids``, labels give them by a shift right (``decoder_start_token_id``
        first, -100 -> ``pad_token_id``) and the decoder mask is ``decoder_input_ids != pad_token_id``.
        """
        dec_cfg = self.config.decoder
        if decoder_input_ids is None and labels is None:
            raise InputError("give decoder_input_ids, or labels to derive them from")
        check_batch(self.config.encoder, dec_cfg, input_ids=_shape(input_ids), attention_mask=_shape(attention_mask),
                    decoder_input_ids=_shape(decoder_input_ids),
                    decoder_attention_mask=_shape(decoder_attention_mask), labels=_shape(labels))
        self._check_source(input_ids, attention_mask)
        check_labels(labels, dec_cfg.vocab_size)
        check_ids(dec_cfg, decoder_input_ids, "decoder_input_ids")
        out = self.apply(params, input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                         decoder_attention_mask=decoder_attention_mask, position_ids=position_ids,
                         decoder_position_ids=decoder_position_ids, labels=labels, train=train,
                         dropout_rng=dropout_rng, output_attentions=_flag(output_attentions),
                         output_hidden_states=_flag(output_hidden_states))
        return out if return_dict is None or return_dict else out.to_tuple()

    def encode(self, input_ids, attention_mask=None, position_ids=None, output_attentions=None,
               output_hidden_states=None, return_dict=None, train=False, params=None, dropout_rng=None):
        """Run the encoder alone: ``BaseModelOutput`` (last_hidden_state (B,S,D_enc), ...)."""
        self._check_source(input_ids, attention_mask)
        out = self.apply(params, input_ids, attention_mask, position_ids, method="encode", train=train,
                         dropout_rng=dropout_rng, output_attentions=_flag(output_attentions),
                         output_hidden_states=_flag(output_hidden_states))
        return out if return_dict is None or return_dict else out.to_tuple()

    def decode(self, decoder_input_ids, encoder_outputs=None, encoder_attention_mask=None, decoder_attention_mask=None,
               decoder_position_ids=None, past_key_values=None, output_attentions=None, output_hidden_states=None,
               return_dict=None, train=False, params=None, dropout_rng=None):
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
            slots = past_key_values["layers"][0]["self_key"].shape
            check_mask(decoder_attention_mask, (b, slots[2]), "decoder_attention_mask", "the cache slots (batch, max_length)")
            if slots[0] != b:
                raise InputError(f"decoder_input_ids have batch {b}, but the cache was made for batch {slots[0]}")
            index = past_key_values["index"]
            if not is_traced(index) and int(index) + t > slots[2]:
                raise InputError(f"the cache holds {slots[2]} positions; {int(index)} are used and {t} more do not fit")
        out = self.apply(params, decoder_input_ids, enc, encoder_attention_mask, decoder_attention_mask,
                         decoder_position_ids, past_key_values, method="decode", train=train, dropout_rng=dropout_rng,
                         output_attentions=_flag(output_attentions), output_hidden_states=_flag(output_hidden_states))
        return out if return_dict is None or return_dict else out.to_tuple()

    def init_cache(self, batch_size: int, max_length: int, encoder_outputs, params=None) -> dict:
        """A static cache for ``max_length`` decoder positions, cross-attention keys/values filled.

        ``encoder_outputs``: :meth:`encode`'s output (or its (B,S,D_enc) array); the encoder
        projection and every layer's cross-attention key/value projections run here, once.
        Structure: see this module's docstring.
        """
        enc = encoder_states(encoder_outputs)
        if enc is None or jnp.ndim(enc) != 3:
            raise InputError("init_cache needs encoder_outputs: encode()'s output or a (batch, length, width) array")
        if enc.shape[0] != batch_size:
            raise InputError(f"init_cache: batch_size is {batch_size}, but encoder_outputs have batch {enc.shape[0]}")
        if not isinstance(max_length, int) or max_length <= 0:
            raise InputError(f"init_cache: max_length expected a positive int, got {max_length!r}")
        check_length(self.config.decoder, max_length, "max_length")
        return self.apply(params, enc, max_length, method="init_cache")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any):
        """Load a fine-tuned checkpoint; its ``generation_config.json``, if any, is ``model.generation_config``."""
        loaded = super().from_pretrained(name_or_path, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        gen_file = model.checkpoint_folder / "generation_config.json"
        if gen_file.exists():
            model.set_generation_config(GenerationConfig.from_json_file(gen_file))
        return loaded

    @classmethod
    def from_encoder_decoder_pretrained(
        cls, encoder_pretrained_model_name_or_path: str | os.PathLike | None = None,
        decoder_pretrained_model_name_or_path: str | os.PathLike | None = None, *, dtype: Any = jnp.float32,
        seed: int = 0, **kwargs: Any,
    ) -> FlaxEncoderDecoderModel:
        """Warm-start: load a pretrained encoder and a pretrained decoder, add cross-attention.

        ``encoder_*`` / ``decoder_*`` keyword arguments go to the two loads (config fields such
        as ``decoder_n_positions``, ``encoder_from_pt``, hub options such as
        ``encoder_revision``); ``encoder_model=`` / ``decoder_model=`` pass ready models. The
        decoder's cross-attention (and ``enc_to_dec_proj`` when widths differ) is new and
        listed as expected in ``model.loading_report``.
        """
        top = {k: kwargs.pop(k) for k in WRAPPER_TOKENS if k in kwargs}
        # as in HF, arguments without a prefix are fields of the EncoderDecoderConfig (tie_encoder_decoder=True)
        top.update({k: kwargs.pop(k) for k in list(kwargs) if not k.startswith(("encoder_", "decoder_"))})
        if unknown := sorted(set(top) - {f.name for f in dataclasses.fields(EncoderDecoderConfig)}):
            raise InputError(f"from_encoder_decoder_pretrained: unknown argument(s) {unknown}; prefix encoder_/decoder_ "
                             "to pass them to one part, or use fields of EncoderDecoderConfig")
        enc_kw, dec_kw = split_prefixed_kwargs(kwargs, "decoder_", "encoder_")
        parts, reports = {}, []
        for side, path, kw in (("encoder", encoder_pretrained_model_name_or_path, enc_kw),
                               ("decoder", decoder_pretrained_model_name_or_path, dec_kw)):
            part = kw.pop("model", None)
            if part is None:
                if path is None:
                    raise InputError(f"from_encoder_decoder_pretrained: give a {side} path or repo id, or `{side}_model=`")
                if side == "decoder":
                    kw.setdefault("is_decoder", True)
                    kw.setdefault("add_cross_attention", True)
                part, rep = _class_for(path, side, kw).from_pretrained(
                    path, output_loading_info=True, log_report=False, dtype=dtype, seed=seed, **kw)
                reports.append(rep.prefixed(f"{side}."))
            parts[side] = part
        config = EncoderDecoderConfig.from_encoder_decoder_configs(parts["encoder"].config, parts["decoder"].config)
        for key, value in top.items():  # unset, as in HF, unless given here
            setattr(config, key, value)
        model = cls(config, seed=seed, dtype=dtype, _do_init=False)
        flat = {f"{side}/{k}": v for side, part in parts.items() for k, v in flatten_tree(part.params).items()}
        new = []
        if needs_projection(config):
            flat.update(flatten_tree(model.init_weights(model.key, ["enc_to_dec_proj/kernel", "enc_to_dec_proj/bias"])))
            new = ["enc_to_dec_proj.weight", "enc_to_dec_proj.bias"]
        stored = {p.flax for p in model.weight_table()}  # with tie_encoder_decoder the decoder's copy is kept
        model.params = unflatten_tree({k: v for k, v in flat.items() if k in stored})
        model.loading_report = LoadingReport.merge(reports, extra_new=new)
        model.loading_report.log(logger)
        return model


def _class_for(path, role: str, kw: dict) -> type:
    """The Flax class for the checkpoint at ``path`` in ``role`` (HF's Auto* classes)."""
    hub = {k: kw[k] for k in HUB_KWARGS if k in kw}
    config = kw.get("config") or load_config(resolve_checkpoint(path, **hub))
    return model_class("flax", config, role)


__all__ = ["FlaxEncoderDecoderModel", "EncoderDecoderModule"]
