"""Assisted decoding: the ids of greedy search from fewer decoder calls, written once for the three backends.

A proposer guesses the next K tokens of every row:

* :class:`PromptLookup` (``prompt_lookup_num_tokens=K``): the K source tokens that follow the
  first place in the source where the row's last n tokens occur (n = ``max_matching_ngram_size``
  down to 1), as Transformers' prompt lookup does over a decoder-only prompt; without a match,
  the source's first K tokens (where a copy begins);
* :class:`DraftModel` (``assistant_model=``, ``num_assistant_tokens=K``): K greedy steps of
  another composed model of the same vocabulary, on its own cache.

One decoder call over ``[last token, c_0 .. c_{K-2}]`` scores the K positions at once. Position j's
choice ``t_j`` is the argmax of the processed scores given the row so far followed by
``c_0 .. c_{j-1}``, so wherever every earlier candidate was right it is exactly what greedy search
would choose. The call keeps ``t_0 .. t_a`` where ``a`` is the number of leading positions whose
candidates every unfinished row got right (at most K tokens per call; a finished row only pads):
the ids are greedy search's, and the numbers differ from it only in the order the decoder's
matrix products sum.

Shapes are static, so TF and Flax compile the loop: the caches have L + K - 2 slots and the id
buffer L + K - 1 columns; rejecting candidates only moves the cache index back (slots past the
index are masked, and rewritten by the next call). Shapes as in :mod:`encdec_core.decoding`,
plus K candidates per call and S source length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from encdec_core.decoding import Ops, SearchOutput
from encdec_core.errors import GenerationError

# (ids (N,T), cache) -> (logits (N,T,V) float32, the cache advanced by T): a backend's cached decoder call
Step = Callable[[Any, Any], tuple[Any, Any]]


def check_assistant(model, assistant) -> None:
    """An assistant must be a composed model of the same backend with the decoder's vocabulary."""
    if not (isinstance(assistant, type(model)) or isinstance(model, type(assistant))):
        raise GenerationError(
            f"assistant_model expected a composed model like the one generating ({type(model).__name__}), "
            f"got {type(assistant).__name__}"
        )
    vocab, other = model.config.decoder.vocab_size, assistant.config.decoder.vocab_size
    if vocab != other:
        raise GenerationError(
            f"assistant_model's decoder has vocab_size={other}, the model's has {vocab}: "
            "the assistant must share the model's tokenizer"
        )


class AssistedState(NamedTuple):
    cur: Any  # () next position to choose (ids[:, :cur] are the rows so far)
    ids: Any  # (N, L + K - 1) ids; pad past cur (candidates while a call is verified)
    unfinished: Any  # (N,) bool: no EOS emitted yet
    cache: Any  # the decoder's DecoderCache at index cur - 1: the token at cur - 1 is the next call's first
    draft: Any  # the draft model's DecoderCache at the same index, or None (prompt lookup)
    calls: Any  # () verifying decoder calls so far
    proposed: Any  # () candidate tokens that could have been kept (min(K, L - cur) per call)
    accepted: Any  # () candidates kept (the same for every row of a call)
    scores: Any  # (L - P + K - 1, N, V) processed scores per position, or a placeholder / None


class PromptLookup:
    """Candidates copied from the source (N, S) after the first match of the row's last n tokens."""

    def __init__(self, ops: Ops, source, source_mask, width: int, max_ngram: int):
        self.ops, self.width, self.max_ngram, self.length = ops, width, max_ngram, int(source.shape[1])
        src = ops.to_int(source)
        if source_mask is not None:  # padding never matches
            src = ops.where(source_mask != 0, src, ops.full(tuple(src.shape), -1, "id"))
        # -1 past the end: a window or a continuation there never matches
        self.source = ops.concat([src, ops.full((ops.rows(src), max_ngram + width), -1, "id")], 1)

    def propose(self, s: AssistedState):
        ops, s_len = self.ops, self.length
        start = ops.full((ops.rows(s.ids),), -1, "id")  # (N,) where the continuation begins, -1: no match yet
        for n in range(self.max_ngram, 0, -1):
            match = self.source[:, n : n + s_len] >= 0  # (N, S) a token follows the window
            for j in range(n):
                pos = s.cur - n + j
                tok = ops.column(s.ids, ops.where(pos >= 0, pos, 0))
                match = match & (self.source[:, j : j + s_len] == ops.reshape(tok, (-1, 1)))
            match = match & (s.cur >= n)
            found = ops.reduce("any", match, 1)
            start = ops.where((start < 0) & found, ops.argmax(ops.to_float(match)) + n, start)  # first match
        at = ops.reshape(ops.where(start < 0, 0, start), (-1, 1)) + ops.reshape(ops.arange(self.width), (1, -1))
        cands = ops.gather(self.source, at)  # (N, K)
        return ops.where(cands >= 0, cands, ops.pad), s.draft

    def rewind(self, draft, index):
        return draft  # no draft model (a placeholder)


class DraftModel:
    """Candidates from K greedy steps of a draft model: ``step`` is its cached decoder call."""

    def __init__(self, ops: Ops, step: Step, width: int):
        self.ops, self.step, self.width = ops, step, width

    def propose(self, s: AssistedState):
        ops, cur = self.ops, s.cur

        def body(j, carry):
            ids, tok, cache, cands = carry
            logits, cache = self.step(ops.reshape(tok, (-1, 1)), cache)
            nxt = ops.argmax(ops.processors(ids, cur + j, logits[:, -1]))
            return ops.put(ids, cur + j, nxt), nxt, cache, ops.put(cands, j, nxt)

        first = ops.column(s.ids, cur - 1)
        carry = (s.ids, first, s.draft, ops.full((ops.rows(s.ids), self.width), ops.pad, "id"))
        _, _, draft, cands = ops.loop(self.width, body, carry)
        return cands, draft

    def rewind(self, draft, index):
        return draft._replace(index=index)  # slots past the index are masked, and rewritten later


class AssistedSearch:
    """Greedy search, K candidate tokens verified per decoder call (see the module's docstring)."""

    def __init__(self, ops: Ops, proposer, *, width: int, max_length: int, prompt_length: int):
        self.ops, self.proposer, self.width = ops, proposer, width
        self.max_length, self.prompt_length = max_length, prompt_length

    def init(self, prompt, cache, draft, scores) -> AssistedState:
        """prompt (N, P); both caches hold the prompt but its last token (index P - 1); ``draft``: the draft
        model's cache, or a placeholder."""
        ops, p = self.ops, self.prompt_length
        n = ops.rows(prompt)
        ids = ops.concat([prompt, ops.full((n, self.max_length + self.width - 1 - p), ops.pad, "id")], 1)
        zero = ops.full((), 0, "id")
        return AssistedState(
            ops.index(ops.full((), p, "id")), ids, ops.full((n,), True, "bool"), cache, draft, zero, zero, zero, scores
        )

    def cond(self, s: AssistedState):
        return (s.cur < self.max_length) & self.ops.reduce("any", s.unfinished)

    def iterate(self, s: AssistedState, step: Step) -> AssistedState:
        """Propose K tokens, score them in one decoder ``step``, keep what greedy search would choose."""
        ops, k, cur = self.ops, self.width, s.cur
        cands, draft = self.proposer.propose(s)  # (N, K)
        cands = ops.where(ops.reshape(s.unfinished, (-1, 1)), cands, ops.pad)  # an ended row reads pads, as in greedy
        ids = s.ids
        for j in range(k):
            ids = ops.put(ids, cur + j, ops.column(cands, j))
        at = ops.reshape(ops.arange(k), (1, -1)) + cur - 1 + ops.full((ops.rows(ids), 1), 0, "id")
        logits, cache = step(ops.gather(ids, at), s.cache)  # (N, K, V): positions cur .. cur + K - 1
        unfinished, right, chosen, kept, live = s.unfinished, ops.full((ops.rows(ids),), True, "bool"), [], 0, 0
        scores = s.scores
        for j in range(k):
            scored = ops.processors(ids, cur + j, logits[:, j])  # the row so far, then c_0 .. c_{j-1}
            scores = ops.record(scores, cur - self.prompt_length + j, scored)
            token = ops.where(unfinished, ops.argmax(scored), ops.pad)  # (N,)
            chosen.append((token, unfinished))
            right = right & ((token == ops.column(cands, j)) | ~unfinished)
            kept = kept + ops.to_int(ops.reduce("all", right))  # leading positions every row got right
            live = live + ops.to_int(ops.reduce("any", unfinished))  # positions before every row has ended
            unfinished = unfinished & ~ops.is_eos(token)
        room = self.max_length - cur
        n_new = ops.where(kept + 1 < k, kept + 1, k)
        n_new = ops.where(n_new < room, n_new, room)
        n_new = ops.index(ops.where(n_new < live, n_new, live))  # greedy stops once every row has ended
        unfinished = s.unfinished
        for j, (token, before) in enumerate(chosen):
            keep = j < n_new
            ids = ops.put(ids, cur + j, ops.where(keep, token, ops.pad))
            unfinished = ops.where(keep, before & ~ops.is_eos(token), unfinished)
        index = cur + n_new - 1
        room_k = ops.where(room < k, room, k)
        return AssistedState(
            cur + n_new,
            ids,
            unfinished,
            cache._replace(index=index),
            self.proposer.rewind(draft, index),
            s.calls + 1,
            s.proposed + room_k,
            s.accepted + ops.where(kept < room_k, kept, room_k),
            scores,
        )

    def outputs(self, s: AssistedState) -> SearchOutput:
        return SearchOutput(
            s.ids, s.cur, s.cur - self.prompt_length, s.scores, assisted=(s.calls, s.proposed, s.accepted)
        )


def buffer_lengths(plan) -> tuple[int, int]:
    """(cache slots, rows of the scores buffer) of a call's search: L and L - P, plus K - 2 and K - 1 when assisted
    (the last verification writes positions up to L + K - 3)."""
    extra = max(plan.candidates - 1, 0)
    return plan.max_length + max(extra - 1, 0), plan.max_new_tokens + extra


def make_proposer(ops: Ops, plan, *, source=None, source_mask=None, draft_step: Step | None = None):
    """The plan's proposer: a draft model's ``draft_step``, else prompt lookup over ``source`` (N, S)."""
    if plan.assistant:
        return DraftModel(ops, draft_step, plan.candidates)
    return PromptLookup(ops, source, source_mask, plan.candidates, plan.lookup_ngram)


__all__ = [
    "AssistedSearch",
    "AssistedState",
    "PromptLookup",
    "DraftModel",
    "make_proposer",
    "buffer_lengths",
    "check_assistant",
]
