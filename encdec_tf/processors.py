"""Logits processors and sampling warpers in TF ops, with static shapes for XLA.

The rules and their order are :mod:`encdec_core.generation`'s (the PyTorch backend writes the
same ones in torch). A processor here is ``(ids, cur, scores) -> scores``: ``ids`` (N, L) is
the preallocated decoder buffer, of which only the first ``cur`` positions (a traced int32
scalar) are the sequence so far; positions from ``cur`` on are ignored. So one compiled step
serves every length: nothing is sliced to a length known only at run time.

Shapes: N decoder rows, L buffer length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from encdec_core.decoding import build_processors, processor_specs, processor_table, run_processors
from encdec_core.generation import GenerationPlan

Processor = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]  # (ids (N,L), cur (), scores (N,V)) -> scores
INF = float("inf")


def _ban(scores: tf.Tensor, banned: tf.Tensor) -> tf.Tensor:
    return tf.where(banned, tf.constant(-INF, scores.dtype), scores)


def _token_mask(token_ids, vocab: int) -> tf.Tensor:
    """(V,) bool: True at ``token_ids`` (static ids), or ``token_ids`` itself if it is already such a mask."""
    if isinstance(token_ids, tf.Tensor):
        return token_ids
    return tf.constant(np.isin(np.arange(vocab), token_ids))


def _tail(ids: tf.Tensor, cur: tf.Tensor, n: int) -> tf.Tensor:
    """The last ``n`` tokens before ``cur``: (N, n); indices below 0 clamp (callers check cur >= n)."""
    return tf.gather(ids, tf.maximum(cur - n + tf.range(n), 0), axis=1)


def _seen(ids: tf.Tensor, cur: tf.Tensor, vocab: int, valid: tf.Tensor | None = None) -> tf.Tensor:
    """(N, V) bool: token t occurs at a position < cur of the row (where ``valid``, if given, (N, L'))."""
    n, length = tf.shape(ids)[0], tf.shape(ids)[1]
    if valid is None:
        valid = tf.broadcast_to(tf.range(length)[None] < cur, tf.shape(ids))
    rows = tf.broadcast_to(tf.range(n)[:, None], tf.shape(ids))
    where = tf.reshape(tf.stack([rows, tf.cast(ids, tf.int32)], -1), (-1, 2))  # (N*L', 2)
    # an add, not an update: a token seen at valid and at ignored positions must count once valid
    flags = tf.reshape(tf.cast(valid, tf.int32), (-1,))
    counts = tf.tensor_scatter_nd_add(tf.zeros((n, vocab), tf.int32), where, flags)
    return counts > 0


def repetition_penalty(penalty: float) -> Processor:
    """A token already in the row: positive score / penalty, negative score * penalty."""

    def apply(ids, cur, scores):
        penalised = tf.where(scores < 0, scores * penalty, scores / penalty)
        return tf.where(_seen(ids, cur, scores.shape[-1]), penalised, scores)

    return apply


def no_repeat_ngram(n: int) -> Processor:
    """Ban a token that would complete an n-gram already present in the row."""

    def apply(ids, cur, scores):
        length = ids.shape[1]
        if length < n:
            return scores
        w = length - n + 1
        windows = tf.stack([ids[:, i : i + w] for i in range(n)], -1)  # (N, W, n): every n-gram of the buffer
        prefix = _tail(ids, cur, n - 1)[:, None]  # (N, 1, n-1): the last n-1 tokens
        match = tf.reduce_all(tf.equal(windows[:, :, :-1], prefix), -1)  # (N, W)
        whole = tf.range(w)[None] <= cur - n  # windows that end before cur
        return _ban(scores, _seen(windows[:, :, -1], cur, scores.shape[-1], match & whole & (cur >= n)))

    return apply


def bad_words(words: list[tuple[int, ...]]) -> Processor:
    """Ban a word's last token when the row ends with the word's other tokens."""

    def apply(ids, cur, scores):
        vocab = scores.shape[-1]
        banned = tf.zeros_like(scores, tf.bool)
        for word in words:
            head = len(word) - 1
            if head == 0:
                hit = tf.ones_like(ids[:, 0], tf.bool)
            else:
                ends_with = tf.equal(_tail(ids, cur, head), tf.constant(word[:-1], ids.dtype))  # (N, head)
                hit = tf.reduce_all(ends_with, -1) & (cur >= head)
            banned |= hit[:, None] & _token_mask((word[-1],), vocab)[None]
        return _ban(scores, banned)

    return apply


def min_length(length: int, eos) -> Processor:
    """No EOS while the row is shorter than ``length``."""

    def apply(ids, cur, scores):
        return _ban(scores, (cur < length) & _token_mask(eos, scores.shape[-1])[None])

    return apply


def force(at_length: int, token_ids: tuple[int, ...]) -> Processor:
    """At row length ``at_length``, only ``token_ids`` are possible (score 0)."""

    def apply(ids, cur, scores):
        only = tf.where(_token_mask(token_ids, scores.shape[-1]), 0.0, -INF)[None]  # (1, V)
        return tf.where(tf.equal(cur, at_length), tf.broadcast_to(only, tf.shape(scores)), scores)

    return apply


def top_k(keep: int, k: int) -> Processor:
    """Keep the k best scores (at least ``keep``)."""

    def apply(ids, cur, scores):
        kk = min(max(k, keep), scores.shape[-1])
        return _ban(scores, scores < tf.math.top_k(scores, kk).values[:, -1:])

    return apply


def top_p(keep: int, p: float) -> Processor:
    """Keep the smallest set of best tokens whose probability mass exceeds p (at least ``keep``)."""

    def apply(ids, cur, scores):
        order = tf.argsort(scores, axis=-1, direction="ASCENDING", stable=True)  # (N, V)
        mass = tf.cumsum(tf.nn.softmax(tf.gather(scores, order, batch_dims=1)), axis=-1)
        vocab = scores.shape[-1]
        drop = (mass <= 1 - p) & (tf.range(vocab) < vocab - keep)[None]  # the best `keep` always stay
        return _ban(scores, tf.gather(drop, tf.argsort(order, axis=-1), batch_dims=1))  # back to vocab order

    return apply


PROCESSORS = processor_table(globals())  # name -> processor (encdec_core.decoding.PROCESSOR_NAMES)


def tf_processors(plan: GenerationPlan, eos: tf.Tensor | None = None) -> list[Processor]:
    """The call's processors (:func:`encdec_core.decoding.processor_specs`) in TF ops.

    ``eos``: the EOS ids as a (V,) bool tensor given at run time (the compiled decoding takes
    them as an input), used by ``min_length``; by default ``plan.eos_ids``.
    """
    specs = processor_specs(plan)
    if eos is not None:
        specs = [s._replace(values=(s.values[0], eos)) if s.name == "min_length" else s for s in specs]
    return build_processors(specs, PROCESSORS)


__all__ = ["Processor", "PROCESSORS", "tf_processors", "run_processors"]
