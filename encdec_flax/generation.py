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

Shapes: B sources, g rows per source (beams or samples), N = B * g decoder rows, V vocabulary,
L max decoder length (cache slots), P decoder prompt length, S source length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from encdec_core.errors import InputError
from encdec_core.generation import GenerationConfig, GenerationPlan, config_for_call, derived_tokens, resolve
from encdec_core.outputs import GenerateOutput
from encdec_core.validation import max_positions
from encdec_flax.modeling_utils import check_ids, encoder_states
from encdec_flax.processors import Static, build_processors, run_processors, split_plan

NEG = -1.0e9  # HF's "impossible" beam score: finite so sums and comparisons stay ordered


# ------------------------------------------------------------------------------- strategies
Step = Callable[[jax.Array, Any], tuple[jax.Array, Any]]  # (ids (N,T), cache) -> (last logits (N,V) f32, cache)


def _set_column(x: jax.Array, values: jax.Array, column, axis: int) -> jax.Array:
    """x with ``values`` (x's shape without ``axis``) written at index ``column`` of ``axis``."""
    return lax.dynamic_update_index_in_dim(x, values, column, axis)


def greedy_or_sample(step: Step, prompt, cache, static: Static, values: dict, key) -> dict:
    """Greedy search (argmax) or multinomial sampling; finished rows get the pad id. prompt (N,P)."""
    (n, p), big_l = prompt.shape, static.max_length
    processors = build_processors(static, values)
    ids = jnp.full((n, big_l), values["pad"], jnp.int32).at[:, :p].set(prompt)  # (N,L)

    def body(s):
        logits, cache = step(lax.dynamic_slice_in_dim(s["ids"], s["cur"] - 1, 1, axis=1), s["cache"])
        scores = run_processors(processors, s["ids"], logits, s["cur"])  # (N,V)
        key = s["key"]
        if static.sampling:
            key, sub = jax.random.split(key)
            nxt = jax.random.categorical(sub, scores).astype(jnp.int32)
        else:
            nxt = jnp.argmax(scores, -1).astype(jnp.int32)
        unfinished = s["unfinished"]
        if static.n_eos:
            nxt = jnp.where(unfinished, nxt, values["pad"])
            unfinished = unfinished & ~(nxt[:, None] == values["eos"]).any(-1)
        out = {"ids": _set_column(s["ids"], nxt, s["cur"], 1), "cur": s["cur"] + 1, "unfinished": unfinished,
               "cache": cache, "key": key}
        if static.output_scores:
            out["scores"] = _set_column(s["scores"], scores, s["cur"] - p, 1)
        return out

    state = {"ids": ids, "cur": jnp.int32(p), "unfinished": jnp.ones(n, bool), "cache": cache, "key": key}
    if static.output_scores:
        state["scores"] = jnp.zeros((n, big_l - p, static.vocab), jnp.float32)  # (N,L-P,V)
    state = lax.while_loop(lambda s: (s["cur"] < big_l) & s["unfinished"].any(), body, state)
    return {k: state[k] for k in ("ids", "cur", "scores") if k in state}


def _gather(t: jax.Array, idx: jax.Array) -> jax.Array:
    """Pick beams along axis 1: t (B,K,...) by idx (B,K')."""
    return jnp.take_along_axis(t, idx.reshape(*idx.shape, *([1] * (t.ndim - 2))), axis=1)


def _reorder(cache: dict, rows: jax.Array) -> dict:
    """The self-attention cache follows the beams (rows (N,)); the shared cross keys/values stay."""
    return {**cache, "layers": tuple({**lay, "self_key": lay["self_key"][rows], "self_value": lay["self_value"][rows]}
                                     for lay in cache["layers"])}


def beam_search(step: Step, prompt, cache, static: Static, values: dict, key) -> dict:
    """Vectorised beam search with Transformers 4.57's bookkeeping (see encdec_core.generation)."""
    nb, big_l, p = static.num_beams, static.max_length, static.prompt_length
    n = prompt.shape[0]
    b, vocab = n // nb, static.vocab
    keep = max(2, 1 + static.n_eos) * nb  # enough candidates that nb can always run on
    processors = build_processors(static, values)
    first_n = jnp.arange(keep) < nb
    offsets = jnp.arange(b)[:, None] * nb
    running = jnp.full((b, nb, big_l), values["pad"], jnp.int32).at[:, :, :p].set(prompt.reshape(b, nb, p))
    no_idx = jnp.full((b, nb, big_l - p), -1, jnp.int32)

    def body(s):
        cur, running, run_idx = s["cur"], s["running"], s["run_idx"]
        logits, cache = step(lax.dynamic_slice_in_dim(running, cur - 1, 1, axis=2).reshape(n, 1), s["cache"])
        logp = run_processors(processors, running.reshape(n, big_l), jax.nn.log_softmax(logits, -1), cur)
        acc = (logp.reshape(b, nb, vocab) + s["run_scores"][:, :, None]).reshape(b, nb * vocab)
        key = s["key"]
        if static.sampling:  # keep candidates drawn without replacement (Gumbel top-k)
            key, sub = jax.random.split(key)
            top_i = lax.top_k(acc + jax.random.gumbel(sub, acc.shape), keep)[1]
            top_s = jnp.take_along_axis(acc, top_i, 1)
        else:
            top_s, top_i = lax.top_k(acc, keep)  # (B,keep)
        src = top_i // vocab  # the beam each candidate extends
        cand = _set_column(_gather(running, src), top_i % vocab, cur, 2)  # (B,keep,L)
        cand_idx = _set_column(_gather(run_idx, src), src + offsets, cur - p, 2)
        tokens = lax.dynamic_index_in_dim(cand, cur, 2, keepdims=False)
        hits = (tokens[..., None] == values["eos"]).any(-1) | (cur + 1 >= big_l)  # ends here: EOS or max length
        # the best nb candidates that did not end run on
        r_scores = top_s + hits.astype(jnp.float32) * NEG
        nxt = lax.top_k(r_scores, nb)[1]
        # candidates among the first nb that ended compete with the finished hypotheses
        just = hits & first_n
        full = s["fin_done"].all(-1, keepdims=True) & values["early"]
        sc = top_s / values["length_norm"][cur + 1 - p]
        sc = sc + (full | ~s["improvable"]).astype(jnp.float32) * NEG + (~just).astype(jnp.float32) * NEG
        pool = {"finished": cand, "fin_scores": sc, "fin_idx": cand_idx, "fin_done": just}
        pool = {k: jnp.concatenate([s[k], v], 1) for k, v in pool.items()}  # (B,nb+keep,...)
        best = lax.top_k(pool["fin_scores"], nb)[1]
        out = {k: _gather(v, best) for k, v in pool.items()}
        out.update(running=_gather(cand, nxt), run_scores=_gather(r_scores, nxt), run_idx=_gather(cand_idx, nxt),
                   cur=cur + 1, key=key)
        out["cache"] = _reorder(cache, lax.dynamic_index_in_dim(out["run_idx"], cur - p, 2, keepdims=False).reshape(n))
        # can a running beam still beat the worst finished one? (length-penalty heuristic, as HF)
        length = jnp.where(values["never"], big_l - p, cur + 1 - p)
        best_running = out["run_scores"][:, :1] / values["length_norm"][length]
        worst = jnp.where(out["fin_done"], out["fin_scores"].min(1, keepdims=True), NEG)
        out["improvable"] = s["improvable"] & (best_running > worst).any(-1, keepdims=True)
        out["go"] = out["improvable"].any() & ~(out["fin_done"].all() & values["early"]) & ~hits.all()
        if static.output_scores:
            out["scores"] = _set_column(s["scores"], logp, cur - p, 1)
        return out

    state = {"cur": jnp.int32(p), "go": jnp.bool_(True), "key": key, "cache": cache, "running": running,
             "run_scores": jnp.zeros((b, nb), jnp.float32).at[:, 1:].set(NEG),  # identical beams: only the first expands
             "run_idx": no_idx, "finished": running, "fin_scores": jnp.full((b, nb), NEG, jnp.float32),
             "fin_idx": no_idx, "fin_done": jnp.zeros((b, nb), bool), "improvable": jnp.ones((b, 1), bool)}
    if static.output_scores:
        state["scores"] = jnp.zeros((n, big_l - p, vocab), jnp.float32)  # (N,L-P,V)
    state = lax.while_loop(lambda s: s["go"], body, state)
    return {k: state[k] for k in ("finished", "fin_scores", "fin_idx", "cur", "scores") if k in state}


# ------------------------------------------------------------------------------- the mixin
class GenerationMixin:
    """``generate`` for :class:`~encdec_flax.FlaxEncoderDecoderModel`."""

    # extra jax.jit arguments of generation's compiled functions (e.g. XLA compiler_options), read at first use
    jit_options: dict = {}

    def set_generation_config(self, gen: GenerationConfig) -> None:
        """Use ``gen`` for generate(); if it came from the model config, later model.config tokens still apply."""
        self.generation_config = gen
        self._derived_tokens = derived_tokens(gen)

    def _generation_config(self, generation_config: GenerationConfig | None, kwargs: dict) -> GenerationConfig:
        gen = generation_config if generation_config is not None else self.generation_config
        return config_for_call(gen, self.config, getattr(self, "_derived_tokens", {}), kwargs)

    def _compiled(self, name: str) -> Callable:
        """Generation's jitted functions, built once per model; jax keeps one compile per static settings and shapes."""
        jits = self.__dict__.setdefault("_generation_jits", {})
        if name not in jits:
            fn, static = (self._encoder_states, ()) if name == "encode" else (self._decode, (0,))
            jits[name] = jax.jit(fn, static_argnums=static, **self.jit_options)
        return jits[name]

    def _encoder_states(self, params, input_ids, attention_mask):
        return self.apply(params, input_ids, attention_mask, method="encode").last_hidden_state  # (B,S,D_enc)

    def _decode(self, static: Static, params, enc, enc_mask, prompt, dec_mask, values, key) -> dict:
        """The whole decoding, traced once per (static, shapes): cache, prompt, the loop. prompt (N,P)."""
        cache = self.apply(params, enc, static.max_length, rows=prompt.shape[0], method="init_cache")

        def step(ids, cache):
            out = self.apply(params, ids, encoder_attention_mask=enc_mask, decoder_attention_mask=dec_mask,
                             cache=cache, method="decode")
            return out.logits[:, -1].astype(jnp.float32), out.past_key_values

        if static.prompt_length > 1:  # all prompt tokens but the last, which the loop's first step feeds
            cache = step(prompt[:, :-1], cache)[1]
        run = beam_search if static.num_beams > 1 else greedy_or_sample
        return run(step, prompt, cache, static, values, key)

    def _encode_for_generation(self, params, input_ids, attention_mask, encoder_outputs, pad_id, eos_ids):
        """(encoder states (B,S,D_enc), int32 mask (B,S)); a missing mask is ones (one compile with or without)."""
        if encoder_outputs is None:
            if input_ids is None:
                raise InputError("generate: give input_ids (the source tokens) or encoder_outputs")
            if jnp.ndim(input_ids) != 2:
                raise InputError(f"input_ids expected shape (batch, length), got {tuple(jnp.shape(input_ids))}")
            self._check_source(input_ids, attention_mask)
            ids = np.asarray(input_ids)
            if attention_mask is None and pad_id is not None and pad_id not in eos_ids and (ids == pad_id).any():
                attention_mask = ids != pad_id  # inferred from padding, as HF
            mask = jnp.asarray(np.ones(ids.shape) if attention_mask is None else attention_mask, jnp.int32)
            return self._compiled("encode")(params, jnp.asarray(ids, jnp.int32), mask), mask
        enc = encoder_states(encoder_outputs)
        if jnp.ndim(enc) != 3:
            raise InputError(f"encoder_outputs expected states of shape (batch, length, width), got {jnp.shape(enc)}")
        if attention_mask is not None and tuple(jnp.shape(attention_mask)) != tuple(enc.shape[:2]):
            raise InputError(f"attention_mask has shape {tuple(jnp.shape(attention_mask))}, expected {tuple(enc.shape[:2])}")
        return enc, jnp.asarray(np.ones(enc.shape[:2]) if attention_mask is None else attention_mask, jnp.int32)

    def _decoder_prompt(self, decoder_input_ids, decoder_attention_mask, b: int, start_id: int):
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
        if (prompt[:, 0] != start_id).all():  # prepended unless every row begins with it
            prompt = np.concatenate([start, prompt], 1)
            mask = None if mask is None else np.concatenate([np.ones((b, 1), np.int32), mask], 1)
        return prompt.astype(np.int32), mask

    def generate(self, input_ids=None, attention_mask=None, *, encoder_outputs=None, decoder_input_ids=None,
                 decoder_attention_mask=None, generation_config: GenerationConfig | None = None, params=None,
                 prng_key: jax.Array | None = None, seed: int | None = None, **kwargs):
        """Generate decoder token ids: greedy by default, beam search with ``num_beams``, sampling with ``do_sample``.

        Settings come from ``model.generation_config`` (from ``generation_config.json`` or the
        model config), overridden by ``generation_config=`` and by keyword arguments
        (``max_new_tokens=``, ``num_beams=``, ...). ``decoder_input_ids`` is a decoder prompt
        (the start token is prepended unless every row begins with it). Sampling draws from
        ``prng_key=`` or ``jax.random.PRNGKey(seed)`` (seed 0 by default, as HF's Flax
        generate). The decoding runs as one jitted ``lax.while_loop``, compiled once per
        input shapes and settings (see this module's docstring). Returns ids (rows, length) as
        a numpy array, or a :class:`GenerateOutput` with ``return_dict_in_generate=True``.
        """
        gen = self._generation_config(generation_config, kwargs)
        vocab = self.config.decoder.vocab_size
        probe = resolve(gen, prompt_length=1, vocab_size=vocab)  # tokens checked up front
        params = self.params if params is None else params
        enc, enc_mask = self._encode_for_generation(params, input_ids, attention_mask, encoder_outputs, probe.pad_id,
                                                    probe.eos_ids)
        b = enc.shape[0]
        prompt, prompt_mask = self._decoder_prompt(decoder_input_ids, decoder_attention_mask, b, probe.start_id)
        plan = resolve(gen, prompt_length=prompt.shape[1], vocab_size=vocab,
                       max_positions=max_positions(self.config.decoder))
        g = plan.num_beams if plan.num_beams > 1 else (plan.num_return_sequences if gen.do_sample else 1)
        dec_mask = None
        if prompt_mask is not None:  # with a cache the decoder mask covers the L slots
            ones = np.ones((b, plan.max_length - prompt_mask.shape[1]), np.int32)
            dec_mask = np.repeat(np.concatenate([prompt_mask, ones], 1), g, 0)  # (N,L)
        key = prng_key if prng_key is not None else jax.random.PRNGKey(0 if seed is None else seed)
        want_scores = gen.return_dict_in_generate and gen.output_scores
        static, values = split_plan(plan, vocab, want_scores)
        out = self._compiled("generate")(static, params, enc, enc_mask, np.repeat(prompt, g, 0), dec_mask, values, key)
        out = _outputs(jax.device_get(out), plan, want_scores)
        return out if gen.return_dict_in_generate else out.sequences


def _outputs(out: dict, plan: GenerationPlan, want_scores: bool) -> GenerateOutput:
    """The loop's buffers (numpy) trimmed to what was generated, as the PyTorch backend returns them."""
    p, cur = plan.prompt_length, int(out["cur"])
    scores = tuple(out["scores"][:, i] for i in range(cur - p)) if want_scores else None
    if plan.num_beams == 1:
        return GenerateOutput(sequences=out["ids"][:, :cur], scores=scores)
    nrs, big_l = plan.num_return_sequences, plan.max_length
    seqs = out["finished"][:, :nrs].reshape(-1, big_l)
    idx = out["fin_idx"][:, :nrs].reshape(-1, big_l - p)
    n_gen = int((idx != -1).sum(1).max())  # the longest returned hypothesis
    return GenerateOutput(sequences=seqs[:, :p + n_gen], scores=scores,
                          sequences_scores=out["fin_scores"][:, :nrs].reshape(-1), beam_indices=idx[:, :n_gen])


__all__ = ["GenerationMixin", "build_processors", "run_processors", "greedy_or_sample", "beam_search"]
