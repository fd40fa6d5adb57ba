"""``generate`` for the Flax backend: greedy, sampling and beam search in one ``jax.jit`` per setting.

The rules (lengths, special tokens, processor order, beam bookkeeping) are those of
:mod:`encdec_core.generation`; this module writes them in jnp over static shapes, with the
function names of :mod:`encdec_pt.generation`. The cache (``init_cache``: cross-attention
keys/values computed once, shared by a source's rows), the decoder prompt and the
``lax.while_loop`` over the steps, which stops when every row is finished, are one jitted
function of the parameters, the encoder states and the settings.

It compiles once per input shapes and :class:`~encdec_flax.processors.Static` (strategy,
beams, lengths, which processors run). The settings' values (special ids, penalties,
temperature, top-k, top-p, length penalty, early stopping) are traced arguments
(:func:`~encdec_flax.processors.knobs`): changing them does not recompile. The source length S is a shape: pad sources to a few bucket lengths (say multiples
of 16) with the pad id and pass the ``attention_mask`` to bound compiles to one per bucket;
masked positions do not change the ids.

Shapes as in :mod:`encdec_core.decoding` (B sources, N decoder rows, L max length, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from encdec_core.assisted import AssistedSearch, buffer_lengths, make_proposer
from encdec_core.decoding import DecoderCache, GenerateDriver, Ops, SearchOutput, make_search
from encdec_core.errors import InputError
from encdec_core.generation import mask_pad_id, prepend_start
from encdec_flax.modeling_utils import check_ids, check_length, encoder_states
from encdec_flax.processors import Static, flax_processors, split_plan

Step = Callable[[jax.Array, Any], tuple[jax.Array, Any]]  # (ids (N,T), cache) -> (last logits (N,V) f32, cache)


# ------------------------------------------------------------------------------- the search ops
class FlaxOps(Ops):
    """:class:`encdec_core.decoding.Ops` in jnp: ``cur`` is traced, the settings' values are traced ``values``."""

    def __init__(self, processors, values: dict):
        super().__init__(processors)
        self.values = values
        self.pad, self.early, self.never = values["pad"], values["early"], values["never"]

    def is_eos(self, tokens):
        return (tokens[..., None] == self.values["eos"]).any(-1)

    def length_norm(self, n):
        return self.values["length_norm"][n]  # n ** length_penalty, computed in float64 (knobs())

    def sample(self, scores, key, cur):
        key, sub = jax.random.split(key)
        return jax.random.categorical(sub, scores).astype(jnp.int32), key

    def sample_k(self, scores, k, key, cur):  # k draws without replacement (Gumbel top-k)
        key, sub = jax.random.split(key)
        return lax.top_k(scores + jax.random.gumbel(sub, scores.shape), k)[1], key

    def full(self, shape, value, kind):
        return jnp.full(shape, value, self.DTYPE_NAMES[kind])

    def arange(self, n):
        return jnp.arange(n)

    def concat(self, tensors, axis):
        return jnp.concatenate(tensors, axis)

    def where(self, cond, a, b):
        return jnp.where(cond, a, b)

    def to_float(self, x):
        return x.astype(jnp.float32)

    def to_int(self, x):
        return x.astype(jnp.int32)

    def log_softmax(self, x):
        return jax.nn.log_softmax(x, -1)

    def argmax(self, x):
        return jnp.argmax(x, -1).astype(jnp.int32)

    def topk(self, x, k):
        return lax.top_k(x, k)

    def gather(self, x, idx):
        return jnp.take_along_axis(x, idx.reshape(*idx.shape, *([1] * (x.ndim - 2))), axis=1)

    def put(self, buf, pos, values):
        return lax.dynamic_update_index_in_dim(buf, values, pos, buf.ndim - 1)

    def column(self, buf, pos):
        return lax.dynamic_index_in_dim(buf, pos, buf.ndim - 1, keepdims=False)

    def reduce(self, name, x, axis=None, keepdims=False):
        return getattr(jnp, name)(x, axis, keepdims=keepdims)  # jnp.all, ...

    def record(self, buf, step, scores):
        return None if buf is None else buf.at[step].set(scores)

    def loop(self, n, body, carry):
        return lax.fori_loop(0, n, body, carry)

    def reorder_cache(self, cache, rows):
        """The self-attention cache follows the beams (rows (N,)); the shared cross keys/values stay."""
        return cache._replace(
            layers=tuple(lay._replace(key=lay.key[rows], value=lay.value[rows]) for lay in cache.layers)
        )


def search_loop(step: Step, prompt, cache, static: Static, values: dict, key) -> SearchOutput:
    """``lax.while_loop(cond, body)`` of the search; prompt (N, P), its last token not in the cache yet."""
    search = make_search(FlaxOps(flax_processors(static, values), values), **static.search_settings())
    n, big_l, p = prompt.shape[0], static.max_length, static.prompt_length
    scores = jnp.zeros((big_l - p, n, static.vocab), jnp.float32) if static.output_scores else None  # (L-P,N,V)

    def body(s):
        logits, cache = step(search.last_tokens(s), s.cache)
        return search.body(s._replace(cache=cache), logits)

    state = lax.while_loop(search.cond, body, search.init(prompt, cache, key, scores, cur=jnp.int32(p)))
    return search.outputs(state)


# ------------------------------------------------------------------------------- the mixin
class GenerationMixin(GenerateDriver):
    """The decoding contract (with the HF API's ``encode`` / ``decode``) and ``generate`` for
    :class:`~encdec_flax.FlaxEncoderDecoderModel`.

    ``generate`` (:class:`~encdec_core.decoding.GenerateDriver`) returns, as Transformers' Flax
    generate does, an output whose ``.sequences`` are the ids (rows, length) as a numpy array,
    whether or not ``return_dict_in_generate`` is set. Its own keywords: ``params=`` (other
    weights than ``model.params``) and ``prng_key=`` for sampling (or ``seed=``; seed 0 by default,
    as Transformers' Flax). The decoding runs as one jitted ``lax.while_loop``, compiled once per
    input shapes and settings (see this module's docstring).
    """

    generate_options = {"params": None, "prng_key": None, "seed": None}
    generate_returns_output = True  # Transformers' Flax generate returns an output with .sequences

    # extra jax.jit arguments of generation's compiled functions (e.g. XLA compiler_options), read at first use
    jit_options: dict = {}

    def init_cache(
        self, batch_size: int, max_length: int, encoder_outputs, attention_mask=None, params=None
    ) -> DecoderCache:
        """A static cache for ``max_length`` decoder positions of ``batch_size`` rows (a multiple of the B sources).

        ``encoder_outputs``: :meth:`encode`'s output (or its (B,S,D_enc) array) and the source
        ``attention_mask`` (B, S); the encoder projection and every layer's cross-attention
        key/value projections run here, once, shared by a source's rows. Structure: see
        :mod:`encdec_flax.encoder_decoder`.
        """
        enc = encoder_states(encoder_outputs)
        if enc is None or jnp.ndim(enc) != 3:
            raise InputError("init_cache needs encoder_outputs: encode()'s output or a (batch, length, width) array")
        if batch_size % enc.shape[0]:
            raise InputError(
                f"init_cache: batch_size is {batch_size}, but encoder_outputs have batch {enc.shape[0]} "
                "(it must be a multiple of it)"
            )
        if not isinstance(max_length, int) or max_length <= 0:
            raise InputError(f"init_cache: max_length expected a positive int, got {max_length!r}")
        check_length(self.config.decoder, max_length, "max_length")
        return self.apply(
            self.params if params is None else params,
            enc,
            max_length,
            rows=batch_size,
            encoder_attention_mask=attention_mask,
            method="init_cache",
        )

    def decode_step(self, decoder_input_ids, cache: DecoderCache, decoder_attention_mask=None, params=None):
        """Decode ``decoder_input_ids`` (N, T) at the cache's index: -> (logits (N,T,V), the cache advanced by T).

        ``decoder_attention_mask`` (N, max_length), if the decoder inputs have padding, covers the
        whole cache. Shapes are fixed and the index is traced: ``jax.jit`` compiles once per shape.
        """
        out = self.decode(
            decoder_input_ids, None, decoder_attention_mask=decoder_attention_mask, past_key_values=cache, params=params
        )
        return out.logits, out.past_key_values

    def _compiled(self, name: str) -> Callable:
        """Generation's jitted functions, built once per model; jax keeps one compile per static settings and shapes."""
        jits = self.__dict__.setdefault("_generation_jits", {})
        if name not in jits:
            fn, static = {"encode": (self._encoder_states, ()), "generate": (self._decode, (0,))}.get(
                name, (self._assisted, (0, 1))
            )
            jits[name] = jax.jit(fn, static_argnums=static, **self.jit_options)
        return jits[name]

    def _assisted(
        self, static: Static, assistant, params, draft_params, enc, enc_mask, source, prompt, dec_mask, values
    ):
        """Assisted greedy search (:mod:`encdec_core.assisted`) in one ``lax.while_loop``: prompt lookup over
        ``source`` (B,S), or the draft model ``assistant`` (static) with ``draft_params`` on its own cache."""
        slots, rows = buffer_lengths(static)

        def calls(model, weights):
            def step(ids, cache):
                out = model.apply(weights, ids, decoder_attention_mask=dec_mask, cache=cache, method="decode")
                return out.logits.astype(jnp.float32), out.past_key_values

            return step

        def cache_of(model, weights, states):  # the prompt but its last token written
            cache = model.apply(
                weights, states, slots, rows=prompt.shape[0], encoder_attention_mask=enc_mask, method="init_cache"
            )
            return calls(model, weights)(prompt[:, :-1], cache)[1] if static.prompt_length > 1 else cache

        ops = FlaxOps(flax_processors(static, values), values)
        draft, draft_step = None, None
        if assistant is not None:
            states = assistant.apply(draft_params, source, enc_mask, method="encode").last_hidden_state
            draft, draft_step = cache_of(assistant, draft_params, states), calls(assistant, draft_params)
        proposer = make_proposer(ops, static, source=source, source_mask=enc_mask, draft_step=draft_step)
        search = AssistedSearch(
            ops, proposer, width=static.candidates, max_length=static.max_length, prompt_length=static.prompt_length
        )
        scores = jnp.zeros((rows, prompt.shape[0], static.vocab), jnp.float32) if static.output_scores else None
        state = search.init(prompt, cache_of(self, params, enc), draft, scores)
        state = lax.while_loop(search.cond, lambda s: search.iterate(s, calls(self, params)), state)
        return search.outputs(state)

    def _encoder_states(self, params, input_ids, attention_mask):
        return self.apply(params, input_ids, attention_mask, method="encode").last_hidden_state  # (B,S,D_enc)

    def _decode(self, static: Static, params, enc, enc_mask, prompt, dec_mask, values, key) -> SearchOutput:
        """The whole decoding, traced once per (static, shapes): cache, prompt, the loop. prompt (N,P)."""
        cache = self.apply(
            params, enc, static.max_length, rows=prompt.shape[0], encoder_attention_mask=enc_mask, method="init_cache"
        )

        def step(ids, cache):
            out = self.apply(params, ids, decoder_attention_mask=dec_mask, cache=cache, method="decode")
            return out.logits[:, -1].astype(jnp.float32), out.past_key_values

        if static.prompt_length > 1:  # all prompt tokens but the last, which the loop's first step feeds
            cache = step(prompt[:, :-1], cache)[1]
        return search_loop(step, prompt, cache, static, values, key)

    def _generation_source(self, input_ids, attention_mask, encoder_outputs, probe, options):
        """(encoder states (B,S,D_enc), int32 mask (B,S)); a missing mask is ones (one compile with or without)."""
        if encoder_outputs is None:
            if input_ids is None:
                raise InputError("generate: give input_ids (the source tokens) or encoder_outputs")
            if jnp.ndim(input_ids) != 2:
                raise InputError(f"input_ids expected shape (batch, length), got {tuple(jnp.shape(input_ids))}")
            self._check_source(input_ids, attention_mask)
            ids = np.asarray(input_ids)
            pad = mask_pad_id(probe)
            if attention_mask is None and pad is not None and (ids == pad).any():
                attention_mask = ids != pad  # inferred from padding, as HF
            mask = jnp.asarray(np.ones(ids.shape) if attention_mask is None else attention_mask, jnp.int32)
            params = self.params if options["params"] is None else options["params"]
            return self._compiled("encode")(params, jnp.asarray(ids, jnp.int32), mask), mask
        enc = encoder_states(encoder_outputs)
        if jnp.ndim(enc) != 3:
            raise InputError(f"encoder_outputs expected states of shape (batch, length, width), got {jnp.shape(enc)}")
        if attention_mask is not None and tuple(jnp.shape(attention_mask)) != tuple(enc.shape[:2]):
            raise InputError(
                f"attention_mask has shape {tuple(jnp.shape(attention_mask))}, expected {tuple(enc.shape[:2])}"
            )
        return enc, jnp.asarray(np.ones(enc.shape[:2]) if attention_mask is None else attention_mask, jnp.int32)

    def _decoder_prompt(self, b: int, start_id: int, decoder_input_ids, decoder_attention_mask):
        """(prompt (B,P) int32, its mask or None): the start token first."""
        start = np.full((b, 1), start_id, np.int32)
        if decoder_input_ids is None:
            return start, None
        prompt = np.asarray(decoder_input_ids)
        if prompt.ndim != 2 or prompt.shape[0] != b:
            raise InputError(f"decoder_input_ids expected shape ({b}, length), got {tuple(prompt.shape)}")
        check_ids(self.config.decoder, prompt, "decoder_input_ids")
        mask = None if decoder_attention_mask is None else np.asarray(decoder_attention_mask, np.int32)
        if mask is not None and mask.shape != prompt.shape:
            raise InputError(f"decoder_attention_mask has shape {mask.shape}, expected {prompt.shape}")
        if prepend_start(prompt[:, 0], start_id):
            prompt = np.concatenate([start, prompt], 1)
            mask = None if mask is None else np.concatenate([np.ones((b, 1), np.int32), mask], 1)
        return prompt.astype(np.int32), mask

    def _search(self, plan, states, mask, prompt, prompt_mask, want_scores, options):
        """The whole decoding in one jitted function (see :meth:`_decode`); sampling draws from ``prng_key``."""
        b, g = states.shape[0], plan.rows_per_source
        dec_mask = None
        if prompt_mask is not None:  # with a cache the decoder mask covers the cache's slots
            ones = np.ones((b, buffer_lengths(plan)[0] - prompt_mask.shape[1]), np.int32)
            dec_mask = np.repeat(np.concatenate([prompt_mask, ones], 1), g, 0)  # (N, slots)
        key, seed = options["prng_key"], options["seed"]
        key = key if key is not None else jax.random.PRNGKey(0 if seed is None else seed)
        static, values = split_plan(plan, self.config.decoder.vocab_size, want_scores)
        params = self.params if options["params"] is None else options["params"]
        if plan.candidates:
            assistant, source = options["assistant_model"], jnp.asarray(options["source"], jnp.int32)
            draft_params = None if assistant is None else assistant.params
            args = (static, assistant, params, draft_params, states, mask, source, prompt, dec_mask, values)
            return jax.device_get(self._compiled("assisted")(*args))
        out = self._compiled("generate")(static, params, states, mask, np.repeat(prompt, g, 0), dec_mask, values, key)
        return jax.device_get(out)


__all__ = ["GenerationMixin", "FlaxOps", "search_loop"]
