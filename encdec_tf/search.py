"""The searches of :mod:`encdec_core.decoding` in TF ops with static shapes, run by one ``tf.while_loop``.

``step(ids (N,1), cache) -> (logits (N,V), cache)`` is the model's cached decoder step; the
loop never changes a tensor's shape, so it compiles under XLA: ids live in an (N, L) buffer of
which ``cur`` (traced) positions are filled, and processors read only those (see
:mod:`encdec_tf.processors`). Settings that may change between calls without recompiling (EOS
and pad ids, length penalty, early stopping, seed) come as tensors in ``knobs``.

Shapes as in :mod:`encdec_core.decoding` (B sources, N decoder rows, L max length, ...).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from encdec_core.assisted import AssistedSearch, buffer_lengths, make_proposer
from encdec_core.decoding import (
    EARLY_STOPPING,
    NEG,
    DecoderCache,
    Ops,
    SearchOutput,
    make_search,
    search_settings,
)
from encdec_core.generation import GenerationPlan
from encdec_tf.cache import reorder_cache

# (ids (N,T), cache) -> (logits (N,V), cache): the model's cached decoder step
Step = Callable[[tf.Tensor, DecoderCache], tuple[tf.Tensor, DecoderCache]]


class TFOps(Ops):
    """:class:`encdec_core.decoding.Ops` in TF: ``cur`` is a traced int32, the settings' values are ``knobs``."""

    def __init__(self, processors, knobs: dict):
        super().__init__(processors)
        self.knobs = knobs
        self.pad, self.lp = knobs["pad"], knobs["length_penalty"]  # (), () float64 like PyTorch's Python float
        self.early = tf.equal(knobs["early_stopping"], EARLY_STOPPING[True])
        self.never = tf.equal(knobs["early_stopping"], EARLY_STOPPING["never"]) & (self.lp > 0)

    def is_eos(self, tokens):
        return tf.gather(self.knobs["eos"], tokens)  # the (V,) mask: an input, so eos ids do not recompile

    def length_norm(self, n):
        """n ** length_penalty in float64, then float32: what torch computes for a Python scalar denominator."""
        return tf.cast(tf.cast(n, tf.float64) ** self.lp, tf.float32)

    def _gumbel(self, cur, shape):
        """Noise for step ``cur``: argmax(scores + noise) samples softmax(scores), its top-k draws k without
        replacement; stateless, so a seed gives the same draws, compiled or not."""
        u = tf.random.stateless_uniform(shape, seed=tf.stack([self.knobs["seed"], cur]), minval=1e-20, maxval=1.0)
        return -tf.math.log(-tf.math.log(u))

    def sample(self, scores, rng, cur):
        return tf.argmax(scores + self._gumbel(cur, tf.shape(scores)), -1, output_type=tf.int32), rng

    def sample_k(self, scores, k, rng, cur):
        return tf.math.top_k(scores + self._gumbel(cur, tf.shape(scores)), k).indices, rng

    def full(self, shape, value, kind):
        value = tf.cast(value, self.DTYPE_NAMES[kind])
        return tf.fill(shape, value) if shape else value

    def arange(self, n):
        return tf.range(n)

    def rows(self, x):
        return x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]  # unknown in an exported signature

    def reshape(self, x, shape):
        return tf.reshape(x, shape)

    def concat(self, tensors, axis):
        return tf.concat(tensors, axis)

    def where(self, cond, a, b):
        return tf.where(cond, a, b)

    def to_float(self, x):
        return tf.cast(x, tf.float32)

    def to_int(self, x):
        return tf.cast(x, tf.int32)

    def log_softmax(self, x):
        return tf.nn.log_softmax(x)

    def argmax(self, x):
        return tf.argmax(x, -1, output_type=tf.int32)

    def topk(self, x, k):
        top = tf.math.top_k(x, k)
        return top.values, top.indices

    def gather(self, x, idx):
        return tf.gather(x, idx, batch_dims=1)

    def put(self, buf, pos, values):
        return tf.where(tf.range(buf.shape[-1]) == pos, values[..., None], buf)  # no shape changes

    def column(self, buf, pos):
        return tf.gather(buf, pos, axis=buf.shape.rank - 1)

    def reduce(self, name, x, axis=None, keepdims=False):
        return getattr(tf, f"reduce_{name}")(x, axis, keepdims=keepdims)  # tf.reduce_all, ...

    def record(self, buf, step, scores):
        if buf.shape.rank != 3:  # a (0,) placeholder: scores not wanted
            return buf
        return tf.tensor_scatter_nd_update(buf, [[step]], scores[None])

    def reorder_cache(self, cache, rows):
        return reorder_cache(cache, rows, shared_cross=True)

    def loop(self, n, body, carry):
        return tf.while_loop(lambda j, c: j < n, lambda j, c: (j + 1, body(j, c)), (tf.constant(0), carry))[1]


def search_loop(
    step: Step,
    cache: DecoderCache,
    prompt,
    plan: GenerationPlan,
    processors,
    knobs: dict,
    want_scores: bool,
    vocab: int,
) -> SearchOutput:
    """``tf.while_loop(cond, body)`` of the plan's search; prompt (N, P).

    The decoder appears once in the compiled program: a decoder prompt (P > 1) is fed token by
    token through the same step, choosing nothing until its last token (``cur`` starts at 1).
    """
    search = make_search(TFOps(processors, knobs), **search_settings(plan, vocab))
    n, p = tf.shape(prompt)[0], plan.prompt_length
    scores = tf.zeros((plan.max_new_tokens, n, vocab)) if want_scores else tf.zeros((0,))
    state = search.init(prompt, cache, knobs["seed"], scores, cur=tf.constant(1))

    def body(s):
        logits, cache = step(search.last_tokens(s), s.cache)
        s = s._replace(cache=cache)
        if p == 1:
            return (search.body(s, logits),)
        return (tf.cond(s.cur < p, lambda: s._replace(cur=s.cur + 1), lambda: search.body(s, logits)),)

    (state,) = tf.while_loop(search.cond, body, (state,))
    return search.outputs(state)


def assisted_loop(model, assistant, plan, processors, knobs, want_scores, sources, prompt, dec_mask):
    """Assisted greedy search (:mod:`encdec_core.assisted`) as one ``tf.while_loop``.

    ``sources``: (encoder states (B,S,D_enc), source mask (B,S), source ids (B,S)); ``dec_mask`` (N, slots).
    The draft model (``assistant``, or None: prompt lookup) encodes the source and decodes on its own cache.
    """
    states, mask, source = sources
    slots, rows = buffer_lengths(plan)
    ops = TFOps(processors, knobs)

    def calls(m):
        def step(ids, cache):
            logits, cache = m.decode_step(ids, cache, dec_mask)
            return tf.cast(logits, tf.float32), cache

        return step

    def cache_of(m, enc):  # the prompt but its last token written
        cache = m.init_cache(tf.shape(prompt)[0], slots, enc, mask)
        return calls(m)(prompt[:, :-1], cache)[1] if plan.prompt_length > 1 else cache

    draft = tf.zeros((0,))  # a placeholder: prompt lookup has no draft cache
    if assistant is not None:
        draft = cache_of(assistant, assistant.encoder(input_ids=source, attention_mask=mask).last_hidden_state)
    proposer = make_proposer(
        ops, plan, source=source, source_mask=mask, draft_step=calls(assistant) if assistant else None
    )
    search = AssistedSearch(
        ops, proposer, width=plan.candidates, max_length=plan.max_length, prompt_length=plan.prompt_length
    )
    scores = tf.zeros((rows, tf.shape(prompt)[0], model.config.decoder.vocab_size)) if want_scores else tf.zeros((0,))
    state = search.init(prompt, cache_of(model, states), draft, scores)
    (state,) = tf.while_loop(search.cond, lambda s: (search.iterate(s, calls(model)),), (state,))
    return search.outputs(state)


__all__ = ["TFOps", "search_loop", "assisted_loop", "Step", "EARLY_STOPPING", "NEG"]
