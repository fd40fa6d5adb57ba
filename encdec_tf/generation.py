"""``generate`` for the TensorFlow backend: greedy, sampling and beam search compiled with XLA.

The rules (lengths, special tokens, processor order, beam bookkeeping) are those of
:mod:`encdec_core.generation`; ``encdec_pt.generation`` writes them in torch. Here the
decoding (cross-attention keys/values computed once by ``init_cache``, then a
``tf.while_loop`` of one-token decoder steps writing into the preallocated cache, see
:mod:`encdec_tf.search`) is one ``tf.function(jit_compile=True)`` that stops as soon as every
row (or every beam search) is finished; the encoder is another, shared by every setting.
Both are kept on the model, traced once per input shape and static settings.

Shapes as in :mod:`encdec_core.decoding` (B sources, N decoder rows, L max length, ...).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from encdec_core.assisted import buffer_lengths
from encdec_core.decoding import EARLY_STOPPING, DecoderCache, GenerateDriver, processor_specs
from encdec_core.driver import encoder_states
from encdec_core.errors import InputError
from encdec_core.generation import GenerationPlan, mask_pad_id, prepend_start
from encdec_core.outputs import BaseModelOutput
from encdec_core.validation import check_batch
from encdec_tf.modeling_utils import check_ids
from encdec_tf.processors import tf_processors
from encdec_tf.search import assisted_loop, search_loop


# ------------------------------------------------------------------------------- compiled decoding
def static_key(plan: GenerationPlan, **flags) -> tuple:
    """Everything a compiled decoding depends on besides its input shapes: one XLA program per key and shape."""
    # EOS and pad ids, length_penalty, early_stopping, seed: inputs (knobs()), so min_length's EOS ids are left out
    specs = tuple(s._replace(values=s.values[:1]) if s.name == "min_length" else s for s in processor_specs(plan))
    n_eos = len(plan.eos_ids) if plan.num_beams > 1 else None  # beams keep (1 + n_eos) * num_beams candidates
    return (
        plan.strategy,
        n_eos,
        plan.prompt_length,
        plan.max_length,
        plan.num_beams,
        plan.num_return_sequences,
        (plan.candidates, plan.assistant, plan.lookup_ngram),
        specs,
        *sorted(flags.items()),
    )


def knobs(plan: GenerationPlan, vocab: int, seed: int | None = None) -> dict[str, tf.Tensor]:
    """The settings a compiled decoding takes as tensors, so that changing them does not recompile."""
    seed = tf.random.uniform((), 0, 2**31 - 1, tf.int32) if seed is None else tf.constant(int(seed) % 2**31)
    return {
        "seed": seed,
        "eos": tf.constant(np.isin(np.arange(vocab), plan.eos_ids)),  # (V,) bool
        "pad": tf.constant(plan.pad_id if plan.pad_id is not None else 0),
        "length_penalty": tf.constant(float(plan.config.length_penalty), tf.float64),
        "early_stopping": tf.constant(EARLY_STOPPING[plan.config.early_stopping]),
    }


class CompiledGenerate:
    """A model's compiled decodings, one ``tf.function`` per :func:`static_key`; ``traces`` counts Python traces."""

    def __init__(self):
        self.fns: dict[tuple, Callable] = {}
        self.traces = 0


def _compiled(model) -> CompiledGenerate:
    # set in __dict__, past Keras' __setattr__: a cache of functions, not state to track or save
    return model.__dict__.setdefault("_compiled_generate", CompiledGenerate())


def encoder_function(model, jit_compile: bool) -> Callable:
    """``fn(ids (B,S), mask (B,S)) -> encoder states (B,S,D_enc)``, compiled apart: every decoding setting reuses it."""
    compiled = _compiled(model)
    key = ("encoder", jit_compile)
    if key not in compiled.fns:
        compiled.fns[key] = tf.function(
            lambda ids, mask: model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state,
            jit_compile=jit_compile,
            autograph=False,
        )
    return compiled.fns[key]


def decoding_function(model, plan: GenerationPlan, *, want_scores: bool, jit_compile: bool, assistant=None) -> Callable:
    """``fn(states, source_mask, source, prompt, prompt_mask, knobs) -> raw outputs``, cached on the model.

    ``states`` (B, S, D_enc) encoder states; ``source_mask`` (B, S) int32; ``source`` (B, S) int32 ids
    (read by assisted decoding only); ``prompt`` and ``prompt_mask`` (B, P) int32; ``knobs``: see
    :func:`knobs`. Traced once per input shape; an ``assistant`` model (assisted decoding) is part of the key.
    """
    compiled = _compiled(model)
    key = static_key(plan, want_scores=want_scores, jit_compile=jit_compile, assistant=id(assistant))
    if key in compiled.fns:
        return compiled.fns[key]
    g, vocab = plan.rows_per_source, model.config.decoder.vocab_size

    def decode(states, source_mask, source, prompt, prompt_mask, knobs):
        compiled.traces += 1  # runs only while tracing
        processors = tf_processors(plan, eos=knobs["eos"])
        prompt = tf.repeat(prompt, g, axis=0)  # (N, P)
        slots = buffer_lengths(plan)[0]
        ones = tf.ones((tf.shape(prompt_mask)[0], slots - plan.prompt_length), tf.int32)
        dec_mask = tf.repeat(tf.concat([prompt_mask, ones], 1), g, axis=0)  # (N, slots)
        if plan.candidates:
            sources = (states, source_mask, source)
            return assisted_loop(model, assistant, plan, processors, knobs, want_scores, sources, prompt, dec_mask)
        # cross k/v computed once here, (B,H,S,K): the g rows of a source share them
        cache = model.init_cache(tf.shape(prompt)[0], plan.max_length, states, source_mask)

        def step(ids, cache):
            logits, cache = model.decode_step(ids, cache, dec_mask)
            return tf.cast(logits[:, -1], tf.float32), cache  # (N, V); float32 under a mixed policy too, as PT's

        return search_loop(step, cache, prompt, plan, processors, knobs, want_scores, vocab)

    compiled.fns[key] = tf.function(decode, jit_compile=jit_compile, autograph=False)
    return compiled.fns[key]


# ------------------------------------------------------------------------------- the mixin
class GenerationMixin(GenerateDriver):
    """The decoding contract, ``generate`` and ``export_generate`` for :class:`~encdec_tf.TFEncoderDecoderModel`.

    ``generate`` (:class:`~encdec_core.decoding.GenerateDriver`) returns int32 ids; sampling draws
    stateless random numbers from ``seed=`` (reproducible; a random seed when None). The decoding is
    one ``tf.function(jit_compile=True)`` (``jit_compile=False``: the same graph without XLA, for
    debugging), kept on the model per static settings and compiled once per input shape: (batch,
    source length, decoder prompt length); the encoder is compiled apart, once per source shape, for
    every setting. EOS and pad ids, the length penalty, early stopping and the seed are inputs of the
    compiled program: changing them does not recompile; other settings do (once each). To bound the
    number of compilations, pad sources to a few bucket lengths with an ``attention_mask`` and keep
    the batch size fixed (pad the last batch with rows of padding); padded positions are masked out::

        s = -(-ids.shape[1] // 32) * 32                      # next multiple of 32
        ids = tf.pad(ids, [[0, 0], [0, s - ids.shape[1]]], constant_values=pad_token_id)
        mask = tf.pad(mask, [[0, 0], [0, s - mask.shape[1]]])
        model.generate(ids, attention_mask=mask, max_new_tokens=32, num_beams=4)
    """

    generate_options = {"seed": None, "jit_compile": True}

    def encode(self, input_ids, attention_mask=None, training=False, **kwargs) -> BaseModelOutput:
        """The encoder's outputs for ``input_ids`` (B, S): ``last_hidden_state`` (B, S, D_enc), ..."""
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask, training=training, **kwargs)

    def init_cache(self, batch_size: int, max_length: int, encoder_outputs, attention_mask=None) -> DecoderCache:
        """An empty decoder cache of ``max_length`` positions for ``batch_size`` rows.

        ``encoder_outputs`` (a ``BaseModelOutput``, HF tuple, or the (B, S, D_enc) states) and the
        source ``attention_mask`` (B, S): the projection and every layer's cross-attention keys
        and values are computed here, once per generation, and shared by a source's rows.
        """
        states = tf.convert_to_tensor(encoder_states(encoder_outputs))  # (B,S,D_enc)
        if self.enc_to_dec_proj is not None:
            states = self.enc_to_dec_proj(states)
        return self.decoder.init_cache(batch_size, max_length, states, attention_mask)

    def decode_step(self, decoder_input_ids, cache: DecoderCache, decoder_attention_mask=None, training=False):
        """Decode ``decoder_input_ids`` (N, T) at the cache's index: -> (logits (N,T,V), the cache advanced by T).

        ``decoder_attention_mask`` (N, max_length), if the decoder inputs have padding, covers the
        whole cache. Shapes are fixed and the index is a tensor, so
        ``tf.function(model.decode_step, jit_compile=True)`` compiles once per input shape.
        """
        out = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            past_key_values=cache,
            use_cache=True,
            training=training,
        )
        return out.logits, out.past_key_values

    def _generation_source(self, input_ids, attention_mask, encoder_outputs, probe: GenerationPlan, options):
        """(encoder states (B,S,D_enc), source mask (B,S) int32); the encoder compiled once per source shape."""
        attention_mask = None if attention_mask is None else tf.convert_to_tensor(attention_mask)
        if encoder_outputs is None:
            if input_ids is None:
                raise InputError("generate: give input_ids (the source tokens) or encoder_outputs")
            source = tf.convert_to_tensor(input_ids)
            check_batch(
                self.config.encoder,
                None,
                input_ids=tuple(source.shape),
                attention_mask=None if attention_mask is None else tuple(attention_mask.shape),
            )
            check_ids(self.config.encoder, source, "input_ids")
            source = tf.cast(source, tf.int32)
            if attention_mask is None and (pad := mask_pad_id(probe)) is not None:
                attention_mask = tf.not_equal(source, pad)  # inferred from padding, as HF
        else:
            source = tf.convert_to_tensor(encoder_states(encoder_outputs), tf.float32)
        want = tuple(source.shape[:2])
        if attention_mask is None:  # all ones: the same numbers as no mask, and one compiled signature
            mask = tf.ones(want, tf.int32)
        else:
            mask = tf.cast(tf.convert_to_tensor(attention_mask), tf.int32)
            if tuple(mask.shape) != want:
                raise InputError(f"attention_mask has shape {tuple(mask.shape)}, expected {want}")
        encode = encoder_outputs is None
        return (encoder_function(self, options["jit_compile"])(source, mask) if encode else source), mask

    def _decoder_prompt(self, b: int, start: int, decoder_input_ids, decoder_attention_mask):
        """(prompt (B,P) int32, its mask (B,P) int32): the start token, or it followed by the given ids."""
        first = tf.fill((b, 1), start)
        if decoder_input_ids is None:
            return first, tf.ones((b, 1), tf.int32)
        ids = tf.convert_to_tensor(decoder_input_ids)
        if ids.shape.rank != 2 or ids.shape[0] != b:
            raise InputError(f"decoder_input_ids expected shape ({b}, length), got {tuple(ids.shape)}")
        check_ids(self.config.decoder, ids, "decoder_input_ids")
        ids = tf.cast(ids, tf.int32)
        mask = tf.ones_like(ids) if decoder_attention_mask is None else tf.cast(decoder_attention_mask, tf.int32)
        if prepend_start(ids[:, 0].numpy(), start):
            return tf.concat([first, ids], 1), tf.concat([tf.ones_like(first), mask], 1)
        return ids, mask

    def _search(self, plan, states, mask, prompt, prompt_mask, want_scores, options):
        """The whole decoding as one compiled function (see :func:`decoding_function`)."""
        fn = decoding_function(
            self,
            plan,
            want_scores=want_scores,
            jit_compile=options["jit_compile"],
            assistant=options["assistant_model"],
        )
        source = tf.zeros_like(mask) if options["source"] is None else tf.cast(options["source"], tf.int32)
        return fn(
            states, mask, source, prompt, prompt_mask, knobs(plan, self.config.decoder.vocab_size, options["seed"])
        )

    def export_generate(self, path, **settings):
        """Save a SavedModel whose serving signature generates; see :func:`encdec_tf.export.export_generate`."""
        from encdec_tf.export import export_generate

        return export_generate(self, path, **settings)


__all__ = ["GenerationMixin", "decoding_function", "encoder_function", "static_key", "knobs"]
