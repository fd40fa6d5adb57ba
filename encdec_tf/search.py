"""Greedy/sampling and beam search as pure functions over a decoder step, in TF ops with static shapes.

``step(ids (N,T), cache) -> (logits (N,V), cache)`` is the model's cached decoder step; the
strategies run it in one ``tf.while_loop`` and never change a tensor's shape, so the whole
loop compiles under XLA: ids live in an (N, L) buffer of which ``cur`` (traced) positions are
filled, and processors read only those (see :mod:`encdec_tf.processors`). The rules are
:mod:`encdec_core.generation`'s; ``encdec_pt.generation`` writes the same loops in torch.
Settings that may change between calls without recompiling (EOS and pad ids, length penalty,
early stopping, seed) come as tensors in ``knobs``; the others are Python values of ``plan``.

Shapes: B sources, g rows per source (beams or samples), N = B * g decoder rows, V vocabulary,
L max decoder length, P decoder prompt length.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from encdec_core.generation import GenerationPlan
from encdec_tf.cache import DecoderCache
from encdec_tf.processors import run_processors

EARLY_STOPPING = {False: 0, True: 1, "never": 2}  # early_stopping as the int32 knob
NEG = -1.0e9  # HF's "impossible" beam score: finite so sums and comparisons stay ordered
# (ids (N,T), cache) -> (logits (N,V), cache): the model's cached decoder step
Step = Callable[[tf.Tensor, DecoderCache], tuple[tf.Tensor, DecoderCache]]


def _put(buf: tf.Tensor, pos, values: tf.Tensor) -> tf.Tensor:
    """``buf[..., pos] = values``: buf (..., L), values (...), pos traced; no shape changes."""
    return tf.where(tf.range(buf.shape[-1]) == pos, values[..., None], buf)


def _gumbel(seed: tf.Tensor, cur: tf.Tensor, shape) -> tf.Tensor:
    """Gumbel noise for step ``cur``: argmax(scores + noise) samples softmax(scores), its top-k draws k without
    replacement; stateless, so a seed gives the same draws, compiled or not."""
    u = tf.random.stateless_uniform(shape, seed=tf.stack([seed, cur]), minval=1e-20, maxval=1.0)
    return -tf.math.log(-tf.math.log(u))


def _length_norm(n, power: tf.Tensor) -> tf.Tensor:
    """n ** power in float64, then float32: what torch computes for a Python scalar denominator."""
    return tf.cast(tf.cast(n, tf.float64) ** power, tf.float32)


def _record(buf: tf.Tensor, step, scores: tf.Tensor) -> tf.Tensor:
    """Scores of step ``step`` into the (L-P, N, V) buffer (a (0,) placeholder when not wanted)."""
    if buf.shape.rank != 3:
        return buf
    return tf.tensor_scatter_nd_update(buf, [[step]], scores[None])


def _scores_buffer(plan: GenerationPlan, n, vocab: int, want: bool) -> tf.Tensor:
    return tf.zeros((plan.max_new_tokens, n, vocab)) if want else tf.zeros((0,))


# ------------------------------------------------------------------------------- strategies
def decode_loop(step: Step, state: dict, last_tokens, advance, keep_going, prompt_length: int) -> dict:
    """``while keep_going(state)``: feed the token before ``state["cur"]``, then ``advance(state, logits)``.

    The decoder appears once in the compiled program: a decoder prompt (P > 1) is fed token by
    token through the same step, choosing nothing until its last token (``cur`` starts at 1).
    """
    def body(s):
        logits, cache = step(last_tokens(s), s["cache"])
        s = {**s, "cache": cache}
        if prompt_length == 1:
            return (advance(s, logits),)
        return (tf.cond(s["cur"] < prompt_length, lambda: {**s, "cur": s["cur"] + 1}, lambda: advance(s, logits)),)

    (state,) = tf.while_loop(keep_going, body, (state,))
    return state


def greedy_or_sample(step: Step, cache: DecoderCache, prompt, plan: GenerationPlan, processors, knobs: dict,
                     want_scores: bool, vocab: int) -> dict:
    """Greedy search (argmax) or multinomial sampling; finished rows get the pad id."""
    L, P = plan.max_length, plan.prompt_length
    n = tf.shape(prompt)[0]
    eos, fill = knobs["eos"], knobs["pad"]  # (V,) bool, (): inputs, so that changing them does not recompile

    def advance(s, logits):
        """Choose the token at ``cur`` from the logits of position cur - 1."""
        cur, unfinished = s["cur"], s["unfinished"]
        scores = run_processors(processors, s["ids"], cur, logits)
        if plan.config.do_sample:
            nxt = tf.argmax(scores + _gumbel(knobs["seed"], cur, tf.shape(scores)), -1, output_type=tf.int32)  # (N,)
        else:
            nxt = tf.argmax(scores, -1, output_type=tf.int32)
        nxt = tf.where(unfinished, nxt, fill)  # no EOS ids: every row stays unfinished
        unfinished &= ~tf.gather(eos, nxt)
        return {**s, "cur": cur + 1, "ids": _put(s["ids"], cur, nxt), "unfinished": unfinished,
                "scores": _record(s["scores"], cur - P, scores)}

    state = {"cur": tf.constant(1), "ids": tf.concat([prompt, tf.fill((n, L - P), fill)], 1),  # (N, L)
             "cache": cache, "unfinished": tf.ones((n,), tf.bool),
             "scores": _scores_buffer(plan, n, vocab, want_scores)}
    s = decode_loop(step, state, lambda s: tf.gather(s["ids"], [s["cur"] - 1], axis=1), advance,  # (N, 1)
                    lambda s: (s["cur"] < L) & tf.reduce_any(s["unfinished"]), P)
    return {"sequences": s["ids"], "length": s["cur"], "steps": s["cur"] - P, "scores": s["scores"]}


def beam_search(step: Step, cache: DecoderCache, prompt, plan: GenerationPlan, processors, knobs: dict,
                want_scores: bool, vocab: int) -> dict:
    """Vectorised beam search with Transformers 4.57's bookkeeping (see encdec_core.generation)."""
    gen, nb, L, P = plan.config, plan.num_beams, plan.max_length, plan.prompt_length
    b = tf.shape(prompt)[0] // nb
    keep = max(2, 1 + len(plan.eos_ids)) * nb  # enough candidates that nb can always run on
    eos, fill = knobs["eos"], knobs["pad"]
    running = tf.reshape(tf.concat([prompt, tf.fill((b * nb, L - P), fill)], 1), (b, nb, L))  # (B, nb, L)
    first_n = tf.range(keep) < nb  # (keep,)
    offsets = tf.range(b)[:, None] * nb  # (B, 1): row of a source's first beam
    gather = lambda t, idx: tf.gather(t, idx, batch_dims=1)  # noqa: E731  (B, K, ...) by (B, K') -> (B, K', ...)
    lp = knobs["length_penalty"]  # () float64, like the Python float PyTorch divides by
    stop_when_full = tf.equal(knobs["early_stopping"], EARLY_STOPPING[True])
    never = tf.equal(knobs["early_stopping"], EARLY_STOPPING["never"])
    state = {
        "cur": tf.constant(1), "running": running, "finished": running, "cache": cache,
        "run_scores": tf.tile(tf.constant([[0.0] + [NEG] * (nb - 1)]), (b, 1)),  # only the first beam may expand
        "fin_scores": tf.fill((b, nb), NEG), "fin_done": tf.zeros((b, nb), tf.bool),
        "improvable": tf.ones((b, 1), tf.bool), "go": tf.constant(True),
        "run_idx": tf.fill((b, nb, L - P), -1), "fin_idx": tf.fill((b, nb, L - P), -1),
        "scores": _scores_buffer(plan, b * nb, vocab, want_scores),
    }

    def advance(s: dict, logits) -> dict:
        cur = s["cur"]
        logp = run_processors(processors, tf.reshape(s["running"], (-1, L)), cur, tf.nn.log_softmax(logits))
        acc = tf.reshape(tf.reshape(logp, (b, nb, vocab)) + s["run_scores"][:, :, None], (b, nb * vocab))
        if gen.do_sample:  # keep candidates drawn without replacement from softmax(acc)
            top_i = tf.math.top_k(acc + _gumbel(knobs["seed"], cur, tf.shape(acc)), keep).indices
            top_s = gather(acc, top_i)
        else:
            top_s, top_i = tf.math.top_k(acc, keep)  # (B, keep)
        src = top_i // vocab  # beam each candidate extends
        tok = top_i % vocab
        cand = _put(gather(s["running"], src), cur, tok)  # (B, keep, L)
        cand_idx = _put(gather(s["run_idx"], src), cur - P, src + offsets)
        hits = tf.gather(eos, tok) | (cur + 1 >= L)  # ends here: EOS or max length
        # the best nb candidates that did not end run on
        r_scores = top_s + tf.cast(hits, tf.float32) * NEG
        nxt = tf.math.top_k(r_scores, nb).indices
        # candidates among the first nb that ended compete with the finished hypotheses
        just = hits & first_n
        new = top_s / _length_norm(cur + 1 - P, lp)
        full = tf.reduce_all(s["fin_done"], -1, keepdims=True) & stop_when_full
        new += tf.cast(full | ~s["improvable"], tf.float32) * NEG + tf.cast(~just, tf.float32) * NEG
        pool = tf.concat([s["fin_scores"], new], 1)
        best = tf.math.top_k(pool, nb).indices
        out = {
            "running": gather(cand, nxt), "run_scores": gather(r_scores, nxt), "run_idx": gather(cand_idx, nxt),
            "finished": gather(tf.concat([s["finished"], cand], 1), best), "fin_scores": gather(pool, best),
            "fin_idx": gather(tf.concat([s["fin_idx"], cand_idx], 1), best),
            "fin_done": gather(tf.concat([s["fin_done"], just], 1), best),
            "scores": _record(s["scores"], cur - P, logp), "cur": cur + 1,
        }
        # the cache follows the beams that run on (rows stay within their source: cross k/v stay shared)
        rows = tf.reshape(tf.gather(out["run_idx"], cur - P, axis=2), (-1,))  # (N,) row each running beam came from
        out["cache"] = s["cache"].reorder(rows, shared_cross=True)
        # can a running beam still beat the worst finished one? (length-penalty heuristic, as HF)
        length = tf.where(never & (lp > 0), L - P, cur + 1 - P)
        best_running = out["run_scores"][:, :1] / _length_norm(length, lp)
        worst = tf.where(out["fin_done"], tf.reduce_min(out["fin_scores"], 1, keepdims=True), NEG)
        out["improvable"] = s["improvable"] & tf.reduce_any(best_running > worst, -1, keepdims=True)
        done_all = tf.reduce_all(out["fin_done"]) & stop_when_full
        out["go"] = tf.reduce_any(out["improvable"]) & ~done_all & ~tf.reduce_all(hits)
        return out

    last = lambda s: tf.reshape(tf.gather(s["running"], s["cur"] - 1, axis=2), (-1, 1))  # noqa: E731  (N, 1)
    s = decode_loop(step, state, last, advance, lambda s: s["go"], P)
    nrs = plan.num_return_sequences
    idx = tf.reshape(s["fin_idx"][:, :nrs], (-1, L - P))  # (B*nrs, L-P)
    n_gen = tf.reduce_max(tf.reduce_sum(tf.cast(idx != -1, tf.int32), 1))
    return {"sequences": tf.reshape(s["finished"][:, :nrs], (-1, L)), "length": P + n_gen, "steps": s["cur"] - P,
            "scores": s["scores"], "sequences_scores": tf.reshape(s["fin_scores"][:, :nrs], (-1,)), "beam_indices": idx}


__all__ = ["decode_loop", "greedy_or_sample", "beam_search", "EARLY_STOPPING", "NEG", "Step"]
