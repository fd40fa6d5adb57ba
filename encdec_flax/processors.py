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

from encdec_core.decoding import (
    ProcessorSpec,
    build_processors,
    processor_specs,
    processor_table,
    run_processors,
    search_settings,
)
from encdec_core.generation import GenerationPlan

Processor = Callable[..., jax.Array]  # (ids (N,L), cur, scores (N,V)) -> scores; ids[:, :cur] are real


@dataclass(frozen=True)
class Static:
    """What the compiled loop depends on besides the input shapes (the jit's static argument).

    Which processors run, and their structural arguments, are static; their values are not (see :func:`knobs`).
    """

    num_beams: int
    max_length: int  # L: cache slots and id buffer width
    prompt_length: int  # P
    num_eos: int  # number of EOS ids (0: no EOS stopping)
    sampling: bool
    vocab: int  # V
    num_return_sequences: int
    processors: tuple[tuple[str, tuple], ...]  # (name, args) of each processor spec, in order
    output_scores: bool  # keep each step's processed scores
    candidates: int = 0  # assisted decoding (encdec_core.assisted): K candidates per call, 0: off
    assistant: bool = False  # a draft model proposes (else prompt lookup)
    lookup_ngram: int = 2  # prompt lookup's longest n-gram

    @property
    def max_new_tokens(self) -> int:
        return self.max_length - self.prompt_length

    def search_settings(self) -> dict:
        """:func:`encdec_core.decoding.make_search`'s arguments."""
        return {
            k: getattr(self, k)
            for k in (
                "num_beams",
                "max_length",
                "prompt_length",
                "num_eos",
                "sampling",
                "vocab",
                "num_return_sequences",
            )
        }


def split_plan(plan: GenerationPlan, vocab: int, output_scores: bool = False) -> tuple[Static, dict]:
    """A call's plan -> (:class:`Static`, the traced values: :func:`knobs`)."""
    specs = processor_specs(plan)
    static = Static(
        **search_settings(plan, vocab),
        processors=tuple((s.name, s.args) for s in specs),
        output_scores=output_scores,
        candidates=plan.candidates,
        assistant=plan.assistant,
        lookup_ngram=plan.lookup_ngram,
    )
    return static, knobs(plan, specs)


def _values(spec) -> tuple:
    """A processor spec's values as the arrays the compiled loop takes."""
    f32, i32 = np.float32, np.int32
    if spec.name == "min_length":
        return i32(spec.values[0]), np.asarray(spec.values[1], i32)
    if spec.name == "force":
        return (np.asarray(spec.values[0], i32),)
    if spec.name == "top_k":
        return (i32(spec.values[0]),)
    if spec.name == "top_p":
        return (f32(1.0 - spec.values[0]),)  # 1 - p in float64 first, as torch compares with it
    return tuple(f32(v) for v in spec.values)  # repetition penalty, temperature


def knobs(plan: GenerationPlan, specs=None) -> dict:
    """The settings' values, as arrays the compiled loop takes as (traced) arguments."""
    gen, n_new = plan.config, plan.max_length - plan.prompt_length
    lp = gen.length_penalty
    specs = processor_specs(plan) if specs is None else specs
    return {
        "eos": np.asarray(plan.eos_ids, np.int32),
        "pad": np.int32(plan.pad_id if plan.pad_id is not None else 0),
        "processors": tuple(_values(s) for s in specs),
        # beam scores are divided by n_generated ** length_penalty: powers in float64 as Transformers (entry 0 unused)
        "length_norm": (np.maximum(np.arange(n_new + 1, dtype=np.float64), 1.0) ** lp).astype(np.float32),  # (L-P+1,)
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

    def apply(ids, length, scores):
        seen = _mark(scores.shape, ids, jnp.broadcast_to(jnp.arange(ids.shape[1]) < length, ids.shape))
        return jnp.where(seen, jnp.where(scores < 0, scores * penalty, scores / penalty), scores)

    return apply


def no_repeat_ngram(n: int) -> Processor:
    """Ban a token that would complete an n-gram already present in the row."""

    def apply(ids, length, scores):
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

    def apply(ids, length, scores):
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

    def apply(ids, length, scores):
        is_eos = jnp.zeros(scores.shape[-1], bool).at[eos].set(True)
        return _ban(scores, (length < length_min) & is_eos)

    return apply


def force(at_length: int, token_ids) -> Processor:
    """At row length ``at_length``, only ``token_ids`` are possible (score 0)."""

    def apply(ids, length, scores):
        only = jnp.full(scores.shape[-1], -jnp.inf, scores.dtype).at[token_ids].set(0.0)
        return jnp.where(length == at_length, only, scores)

    return apply


def top_k(keep: int, k) -> Processor:
    """Keep the k best scores (at least ``keep``)."""

    def apply(ids, length, scores):
        vocab = scores.shape[-1]
        kk = jnp.minimum(jnp.maximum(k, keep), vocab)
        kth = jnp.take(jnp.sort(scores, axis=-1), vocab - kk, axis=-1)  # (N,) the kk-th best
        return _ban(scores, scores < kth[:, None])

    return apply


def top_p(keep: int, rest) -> Processor:
    """Keep the smallest set of best tokens whose probability mass exceeds p (``rest`` = 1 - p; at least ``keep``)."""

    def apply(ids, length, scores):
        order = jnp.argsort(scores, axis=-1)  # ascending
        drop = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(scores, order, -1), -1), -1) <= rest
        drop = drop.at[:, -keep:].set(False)
        return _ban(scores, _mark(scores.shape, order, drop))

    return apply


PROCESSORS = processor_table(globals())  # name -> processor (encdec_core.decoding.PROCESSOR_NAMES)


def flax_processors(static: Static, values: dict) -> list[Processor]:
    """The call's processors: each static (name, args) with its traced values."""
    specs = [ProcessorSpec(name, args, v) for (name, args), v in zip(static.processors, values["processors"])]
    return build_processors(specs, PROCESSORS)


__all__ = ["Static", "split_plan", "knobs", "PROCESSORS", "flax_processors", "run_processors"]
