"""Generation settings of the compiled loop and the logits processors, in jnp over static shapes.

A call's :class:`~encdec_core.generation.GenerationPlan` splits (:func:`split_plan`) into
:class:`Static`, what the compiled loop depends on (strategy, lengths, which processors
run), and :func:`knobs`, the values it takes as traced arguments (special ids, penalties,
temperature, top-k, top-p, length penalty, early stopping), so changing a value does not
recompile. The processors are those of :mod:`encdec_pt.generation`, in the same order with
the same semantics (:mod:`encdec_core.generation`), written over a fixed-width id buffer
(N, L) whose first ``length`` columns are real: ``length`` may be traced.

Shapes: N decoder rows, L max decoder length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from encdec_core.generation import GenerationPlan, bad_words_for

Processor = Callable[..., jax.Array]  # (ids (N,L), scores (N,V), length) -> scores; ids[:, :length] are real


@dataclass(frozen=True)
class Static:
    """What the compiled loop depends on besides the input shapes (the jit's static argument).

    Which processors run is static; their values are not (see :func:`knobs`).
    """

    strategy: str  # "greedy" | "sample" | "beam" | "beam_sample"
    num_beams: int
    prompt_length: int  # P
    max_length: int  # L: cache slots and id buffer width
    vocab: int  # V
    n_eos: int  # number of EOS ids (0: no EOS stopping)
    repetition: bool  # repetition_penalty != 1
    ngram: int  # no_repeat_ngram_size (0: off)
    bad_words: tuple[tuple[int, ...], ...]  # the sequences to ban (EOS-only ones dropped)
    min_length: bool  # EOS banned below a minimum length
    forced_bos: bool
    forced_eos: int  # number of forced EOS ids (0: off)
    temperature: bool  # sampling warpers: temperature != 1, top_k > 0, top_p < 1
    top_k: bool
    top_p: bool
    output_scores: bool  # keep each step's processed scores

    @property
    def sampling(self) -> bool:
        return self.strategy in ("sample", "beam_sample")


def split_plan(plan: GenerationPlan, vocab: int, output_scores: bool = False) -> tuple[Static, dict[str, np.ndarray]]:
    """A call's plan -> (:class:`Static`, the traced values: :func:`knobs`)."""
    gen, sampling = plan.config, plan.config.do_sample
    forced = gen.forced_eos_token_id
    forced = () if forced is None else tuple(forced) if isinstance(forced, list) else (forced,)
    static = Static(
        strategy=plan.strategy, num_beams=plan.num_beams, prompt_length=plan.prompt_length,
        max_length=plan.max_length, vocab=vocab, n_eos=len(plan.eos_ids), repetition=gen.repetition_penalty != 1.0,
        ngram=gen.no_repeat_ngram_size, bad_words=tuple(bad_words_for(gen, plan.eos_ids)),
        min_length=plan.min_length > 0 and bool(plan.eos_ids), forced_bos=gen.forced_bos_token_id is not None,
        forced_eos=len(forced), temperature=sampling and gen.temperature != 1.0, top_k=sampling and gen.top_k > 0,
        top_p=sampling and gen.top_p < 1.0, output_scores=output_scores,
    )
    return static, knobs(plan, forced)


def knobs(plan: GenerationPlan, forced_eos: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """The settings' values, as arrays the compiled loop takes as (traced) arguments."""
    gen, n_new = plan.config, plan.max_length - plan.prompt_length
    lp = gen.length_penalty
    f32, i32 = np.float32, np.int32
    return {
        "eos": np.asarray(plan.eos_ids, i32), "pad": i32(plan.pad_id if plan.pad_id is not None else 0),
        "repetition_penalty": f32(gen.repetition_penalty), "min_length": i32(plan.min_length),
        "forced_bos": np.asarray([gen.forced_bos_token_id or 0], i32), "forced_eos": np.asarray(forced_eos, i32),
        "temperature": f32(gen.temperature), "top_k": i32(gen.top_k),
        "top_p_rest": f32(1.0 - gen.top_p),  # 1 - p in float64 first, as torch compares with it
        # beam scores are divided by n_generated ** length_penalty: powers in float64 as Transformers (entry 0 unused)
        "length_norm": (np.maximum(np.arange(n_new + 1, dtype=np.float64), 1.0) ** lp).astype(f32),  # (L-P+1,)
        "early": np.bool_(gen.early_stopping is True),
        "never": np.bool_(gen.early_stopping == "never" and lp > 0),  # bound the best running beam at length L - P
    }


# ------------------------------------------------------------------------------- processors
def _ban(scores: jax.Array, banned: jax.Array) -> jax.Array:
    return jnp.where(banned, -jnp.inf, scores)


def _mark(shape: tuple[int, int], tokens: jax.Array, on: jax.Array) -> jax.Array:
    """(N,V) bool: True at tokens[r, j] where on[r, j]; tokens (N,J)."""
    rows = jnp.arange(shape[0])[:, None]
    return jnp.zeros(shape, bool).at[rows, jnp.where(on, tokens, shape[1])].set(True, mode="drop")


def repetition_penalty(penalty) -> Processor:
    """A token already in the row: positive score / penalty, negative score * penalty."""
    def apply(ids, scores, length):
        seen = _mark(scores.shape, ids, jnp.broadcast_to(jnp.arange(ids.shape[1]) < length, ids.shape))
        return jnp.where(seen, jnp.where(scores < 0, scores * penalty, scores / penalty), scores)
    return apply


def no_repeat_ngram(n: int) -> Processor:
    """Ban a token that would complete an n-gram already present in the row."""
    def apply(ids, scores, length):
        if ids.shape[1] < n:
            return scores
        starts = jnp.arange(ids.shape[1] - n + 1)
        windows = ids[:, starts[:, None] + jnp.arange(n)]  # (N,W,n): every n-gram of the buffer
        prefix = lax.dynamic_slice_in_dim(ids, jnp.maximum(length - n + 1, 0), n - 1, axis=1)  # last n-1 tokens
        match = (windows[:, :, :-1] == prefix[:, None]).all(-1) & (starts + n <= length)  # (N,W), real n-grams only
        return _ban(scores, _mark(scores.shape, windows[:, :, -1], match))
    return apply


def bad_words(words: tuple[tuple[int, ...], ...]) -> Processor:
    """Ban a word's last token when the row ends with the word's other tokens."""
    by_prefix: dict[int, list[tuple[int, ...]]] = {}  # prefix length -> its words: one vectorised check each
    for w in words:
        by_prefix.setdefault(len(w) - 1, []).append(w)

    def apply(ids, scores, length):
        banned = jnp.zeros(scores.shape, bool)
        for k, group in by_prefix.items():
            if k > ids.shape[1]:
                continue
            ws = np.asarray(group)  # (W,k+1)
            tail = lax.dynamic_slice_in_dim(ids, jnp.maximum(length - k, 0), k, axis=1)  # (N,k) the row's last k
            hit = (tail[:, None] == ws[None, :, :-1]).all(-1) & (length >= k)  # (N,W)
            banned = banned | _mark(scores.shape, jnp.broadcast_to(ws[:, -1], hit.shape), hit)
        return _ban(scores, banned)
    return apply


def min_length(length_min, eos) -> Processor:
    """No EOS while the row is shorter than ``length_min``."""
    def apply(ids, scores, length):
        is_eos = jnp.zeros(scores.shape[-1], bool).at[eos].set(True)
        return _ban(scores, (length < length_min) & is_eos)
    return apply


def force(token_ids, at_length: int) -> Processor:
    """At row length ``at_length``, only ``token_ids`` are possible (score 0)."""
    def apply(ids, scores, length):
        only = jnp.full(scores.shape[-1], -jnp.inf, scores.dtype).at[token_ids].set(0.0)
        return jnp.where(length == at_length, only, scores)
    return apply


def temperature(t) -> Processor:
    return lambda ids, scores, length: scores / t


def top_k(k, keep: int) -> Processor:
    """Keep the k best scores (at least ``keep``)."""
    def apply(ids, scores, length):
        vocab = scores.shape[-1]
        kk = jnp.minimum(jnp.maximum(k, keep), vocab)
        kth = jnp.take(jnp.sort(scores, axis=-1), vocab - kk, axis=-1)  # (N,) the kk-th best
        return _ban(scores, scores < kth[:, None])
    return apply


def top_p(rest, keep: int) -> Processor:
    """Keep the smallest set of best tokens whose probability mass exceeds p (``rest`` = 1 - p; at least ``keep``)."""
    def apply(ids, scores, length):
        order = jnp.argsort(scores, axis=-1)  # ascending
        drop = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(scores, order, -1), -1), -1) <= rest
        drop = drop.at[:, -keep:].set(False)
        return _ban(scores, _mark(scores.shape, order, drop))
    return apply


def build_processors(static: Static, values: dict) -> list[Processor]:
    """The call's processors, in Transformers' order, then the sampling warpers."""
    out = []
    if static.repetition:
        out.append(repetition_penalty(values["repetition_penalty"]))
    if static.ngram > 0:
        out.append(no_repeat_ngram(static.ngram))
    if static.bad_words:
        out.append(bad_words(static.bad_words))
    if static.min_length:
        out.append(min_length(values["min_length"], values["eos"]))
    if static.forced_bos:
        out.append(force(values["forced_bos"], 1))
    if static.forced_eos:
        out.append(force(values["forced_eos"], static.max_length - 1))
    keep = 2 if static.num_beams > 1 else 1
    if static.temperature:
        out.append(temperature(values["temperature"]))
    if static.top_k:
        out.append(top_k(values["top_k"], keep))
    if static.top_p:
        out.append(top_p(values["top_p_rest"], keep))
    return out


def run_processors(processors: list[Processor], ids: jax.Array, scores: jax.Array, length=None) -> jax.Array:
    """Apply ``processors`` to scores (N,V); ``ids[:, :length]`` (default: all) are the rows so far."""
    length = ids.shape[1] if length is None else length
    for proc in processors:
        scores = proc(ids, scores, length)
    return scores


__all__ = ["Static", "split_plan", "knobs", "build_processors", "run_processors"]
