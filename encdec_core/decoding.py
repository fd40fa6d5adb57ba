"""The decoding contract shared by the three backends: cache fields, search states, processor specs, searches.

Every backend exposes ``encode(input_ids, attention_mask=None) -> BaseModelOutput``,
``init_cache(batch_size, max_length, encoder_outputs, attention_mask=None) -> DecoderCache`` and
``decode_step(decoder_input_ids, cache, decoder_attention_mask=None) -> (logits, cache)``.
Greedy search, sampling and beam search are written here once, as ``init`` / ``cond`` /
``body`` over a small ops adapter (:class:`Ops`) each backend supplies; its loop is then
``while cond(state): state = body(state, step(state))`` (PyTorch, eager), ``tf.while_loop``
(TensorFlow, under XLA) or ``lax.while_loop`` (Flax). The states are NamedTuples: JAX pytrees,
``tf.nest`` structures and plain tuples for torch.

Shapes: B sources, g rows per source (beams or samples), N = B * g decoder rows, nb beams,
C beam candidates kept per step, V vocabulary, L max decoder length (cache slots), P decoder
prompt length, S source length, H heads, K head width.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from encdec_core.errors import InputError
from encdec_core.generation import GenerationConfigMixin, GenerationPlan, resolve
from encdec_core.outputs import GenerateOutput
from encdec_core.processors import (  # re-exported: the decoding contract's processor specs
    PROCESSOR_NAMES,
    ProcessorSpec,
    build_processors,
    processor_specs,
    processor_table,
    run_processors,
    temperature,
)
from encdec_core.validation import max_positions

NEG = -1.0e9  # HF's "impossible" beam score: finite so sums and comparisons stay ordered
EARLY_STOPPING = {False: 0, True: 1, "never": 2}  # early_stopping as an int (a traced input in TF)


# ------------------------------------------------------------------------------- the cache
class LayerCache(NamedTuple):
    """One decoder layer's cache entry."""

    key: Any  # (N, H, L, K) self-attention keys, written at the cache index
    value: Any  # (N, H, L, K) self-attention values
    cross_key: Any = None  # (B, H, S, K) cross-attention keys of the sources, computed once (None: no cross)
    cross_value: Any = None  # (B, H, S, K); B divides N: a source's g rows share them, not tiled


class DecoderCache(NamedTuple):
    """A decoder's preallocated cache: fixed shapes written by index, so a compiled step serves every position."""

    index: Any  # () positions written so far (the next token's position); an int in PyTorch eager mode
    layers: tuple  # (LayerCache, ...) one per decoder layer
    encoder_attention_mask: Any = None  # (B, S) 1 = attend, or None (every source position)

    @property
    def max_length(self) -> int:
        return int(self.layers[0].key.shape[2])


# ------------------------------------------------------------------------------- the ops adapter
class Ops:
    """What a search needs from a backend: tensor operations, plus the call's settings as its tensors.

    Settings: ``pad`` (fill id), ``early`` (early_stopping is True), ``never`` (early_stopping
    is "never" and length_penalty > 0): Python values or tensors. A backend subclasses this and
    fills in the operations; the defaults here hold for arrays with numpy's methods (torch, jax).
    """

    pad: Any
    early: Any
    never: Any

    # the dtypes of full(..., kind), by name (each backend's dtype of that name)
    DTYPE_NAMES = {"id": "int32", "float": "float32", "bool": "bool"}

    def __init__(self, processors: list):
        self._processors = processors

    def processors(self, ids, cur, scores):
        return run_processors(self._processors, ids, cur, scores)

    def rows(self, x):
        return x.shape[0]  # x.shape[0] (static int or traced)

    def reshape(self, x, shape):
        return x.reshape(shape)

    def is_eos(self, tokens): ...  # bool, same shape
    def length_norm(self, n): ...  # n ** length_penalty as the backend's Transformers computes it
    def sample(self, scores, rng, cur): ...  # -> (ids (N,), rng): one draw from softmax(scores) per row
    def sample_k(self, scores, k, rng, cur): ...  # -> (indices (B,k), rng): k draws without replacement
    def full(self, shape, value, kind): ...  # kind: "id" | "float" | "bool"
    def arange(self, n): ...
    def concat(self, tensors, axis): ...
    def where(self, cond, a, b): ...
    def to_float(self, x): ...
    def to_int(self, x): ...
    def log_softmax(self, x): ...
    def argmax(self, x): ...  # last axis, id dtype
    def topk(self, x, k): ...  # last axis -> (values, indices)
    def gather(self, x, idx): ...  # x (B,K,...) by idx (B,K') along axis 1
    def put(self, buf, pos, values): ...  # buf[..., pos] = values (last axis)
    def column(self, buf, pos): ...  # buf[..., pos]
    def reduce(self, name, x, axis=None, keepdims=False): ...  # name: all | any | min | max | sum
    def record(self, buf, step, scores): ...  # buf[step] = scores (buf (L-P,N,V) or a placeholder)
    def reorder_cache(self, cache, rows): ...  # the cache of rows (N,): beams follow their parents

    def index(self, x):
        return x  # a position as the backend indexes with it (a Python int in PyTorch eager, else traced)

    def loop(self, n: int, body, carry):
        """``carry = body(j, carry)`` for j in range(n) (a compiled loop in TF and Flax)."""
        for j in range(n):
            carry = body(j, carry)
        return carry


class SearchOutput(NamedTuple):
    """A search's fixed-size buffers; :func:`trim` cuts them to what was generated."""

    sequences: Any  # (N', L) ids, start token first (N' = B * num_return_sequences for beams)
    length: Any  # () valid length of sequences
    steps: Any  # () decoding steps run: rows of ``scores``
    scores: Any  # (L-P, N, V) processed scores per step, or a placeholder / None
    sequences_scores: Any = None  # beams: (N',) final hypothesis scores
    beam_indices: Any = None  # beams: (N', L-P) row chosen at each step, -1 after the end
    assisted: Any = None  # assisted decoding: () counts (decoder calls, candidates, candidates kept)


# ------------------------------------------------------------------------------- greedy and sampling
class GreedyState(NamedTuple):
    cur: Any  # () next position to choose (ids[:, :cur] are the sequences so far)
    ids: Any  # (N, L) decoder ids; pad past cur
    unfinished: Any  # (N,) bool: no EOS emitted yet
    cache: Any  # DecoderCache
    rng: Any  # sampling state (a PRNG key, a seed, a torch.Generator), or None
    scores: Any  # (L-P, N, V) processed scores per step, or a placeholder / None


class GreedySearch:
    """Greedy search (argmax) or multinomial sampling; a finished row gets the pad id from then on."""

    def __init__(self, ops: Ops, *, max_length: int, prompt_length: int, sampling: bool):
        self.ops, self.max_length, self.prompt_length, self.sampling = ops, max_length, prompt_length, sampling

    def init(self, prompt, cache, rng, scores, cur=None) -> GreedyState:
        """prompt (N, P); ``cur`` defaults to P (the prompt but its last token already in the cache)."""
        ops = self.ops
        n = ops.rows(prompt)
        ids = ops.concat([prompt, ops.full((n, self.max_length - self.prompt_length), ops.pad, "id")], 1)  # (N, L)
        cur = self.prompt_length if cur is None else cur
        return GreedyState(cur, ids, ops.full((n,), True, "bool"), cache, rng, scores)

    def last_tokens(self, s: GreedyState):
        """(N, 1): the token the next decoder step reads."""
        return self.ops.reshape(self.ops.column(s.ids, s.cur - 1), (-1, 1))

    def cond(self, s: GreedyState):
        return (s.cur < self.max_length) & self.ops.reduce("any", s.unfinished)

    def body(self, s: GreedyState, logits) -> GreedyState:
        """Choose the token at ``cur`` from the logits (N, V) of position cur - 1."""
        ops = self.ops
        scores = ops.processors(s.ids, s.cur, logits)
        rng = s.rng
        if self.sampling:
            nxt, rng = ops.sample(scores, rng, s.cur)
        else:
            nxt = ops.argmax(scores)
        nxt = ops.where(s.unfinished, nxt, ops.pad)  # (N,)
        unfinished = s.unfinished & ~ops.is_eos(nxt)
        return GreedyState(
            s.cur + 1,
            ops.put(s.ids, s.cur, nxt),
            unfinished,
            s.cache,
            rng,
            ops.record(s.scores, s.cur - self.prompt_length, scores),
        )

    def outputs(self, s: GreedyState) -> SearchOutput:
        return SearchOutput(s.ids, s.cur, s.cur - self.prompt_length, s.scores)


# ------------------------------------------------------------------------------- beam search
class BeamState(NamedTuple):
    cur: Any  # () next position to fill
    running: Any  # (B, nb, L) ids of the running beams
    running_scores: Any  # (B, nb) their summed log-probabilities
    running_indices: Any  # (B, nb, L-P) decoder row each step extended, -1 after the end
    finished: Any  # (B, nb, L) ids of the best finished hypotheses
    finished_scores: Any  # (B, nb) their length-normalised scores (NEG: empty slot)
    finished_indices: Any  # (B, nb, L-P)
    finished_done: Any  # (B, nb) bool: slot holds a hypothesis
    improvable: Any  # (B, 1) bool: a running beam can still beat the worst finished one
    go: Any  # () bool: some source is still searching
    cache: Any  # DecoderCache of the N = B * nb running rows
    rng: Any  # sampling state, or None
    scores: Any  # (L-P, N, V) processed log-probabilities per step, or a placeholder / None


class BeamSearch:
    """Vectorised beam search with Transformers 4.57's bookkeeping (see :mod:`encdec_core.generation`).

    Each step keeps the C = max(2, 1 + #eos) * nb best continuations of each source; those that
    end (EOS or max length) among the first nb compete for the finished slots, the best nb
    others run on.
    """

    def __init__(
        self,
        ops: Ops,
        *,
        num_beams: int,
        max_length: int,
        prompt_length: int,
        num_eos: int,
        sampling: bool,
        vocab: int,
        num_return_sequences: int,
    ):
        self.ops, self.num_beams, self.max_length, self.prompt_length = ops, num_beams, max_length, prompt_length
        self.candidates = max(2, 1 + num_eos) * num_beams  # enough that nb can always run on
        self.sampling, self.vocab, self.num_return_sequences = sampling, vocab, num_return_sequences

    def init(self, prompt, cache, rng, scores, cur=None) -> BeamState:
        """prompt (N, P), the nb rows of a source consecutive."""
        ops, nb, L, P = self.ops, self.num_beams, self.max_length, self.prompt_length
        b = ops.rows(prompt) // nb
        running = ops.reshape(ops.concat([prompt, ops.full((ops.rows(prompt), L - P), ops.pad, "id")], 1), (-1, nb, L))
        first = ops.arange(nb) == 0  # all beams start identical: only the first may expand
        run_scores = ops.where(first, ops.full((b, nb), 0.0, "float"), ops.full((b, nb), NEG, "float"))
        no_indices = ops.full((b, nb, L - P), -1, "id")
        return BeamState(
            P if cur is None else cur,
            running,
            run_scores,
            no_indices,
            running,
            ops.full((b, nb), NEG, "float"),
            no_indices,
            ops.full((b, nb), False, "bool"),
            ops.full((b, 1), True, "bool"),
            ops.full((), True, "bool"),
            cache,
            rng,
            scores,
        )

    def last_tokens(self, s: BeamState):
        """(N, 1): the token the next decoder step reads."""
        return self.ops.reshape(self.ops.column(s.running, s.cur - 1), (-1, 1))

    def cond(self, s: BeamState):
        return s.go

    def body(self, s: BeamState, logits) -> BeamState:
        ops, nb, L, P, vocab = self.ops, self.num_beams, self.max_length, self.prompt_length, self.vocab
        cur, gather = s.cur, ops.gather
        logp = ops.processors(ops.reshape(s.running, (-1, L)), cur, ops.log_softmax(logits))  # (N, V)
        acc = ops.reshape(ops.reshape(logp, (-1, nb, vocab)) + s.running_scores[:, :, None], (-1, nb * vocab))
        rng = s.rng
        if self.sampling:  # candidates drawn without replacement from softmax(acc)
            top_i, rng = ops.sample_k(acc, self.candidates, rng, cur)
            top_s = gather(acc, top_i)
        else:
            top_s, top_i = ops.topk(acc, self.candidates)  # (B, C)
        src = top_i // vocab  # the beam each candidate extends
        offsets = ops.reshape(ops.arange(ops.rows(acc)) * nb, (-1, 1))  # (B, 1) row of a source's first beam
        cand = ops.put(gather(s.running, src), cur, top_i % vocab)  # (B, C, L)
        cand_indices = ops.put(gather(s.running_indices, src), cur - P, src + offsets)
        hits = ops.is_eos(ops.column(cand, cur)) | (cur + 1 >= L)  # ends here: EOS or max length
        # the best nb candidates that did not end run on
        run_scores = top_s + ops.to_float(hits) * NEG
        nxt = ops.topk(run_scores, nb)[1]
        running, run_scores, run_indices = gather(cand, nxt), gather(run_scores, nxt), gather(cand_indices, nxt)
        # candidates among the first nb that ended compete with the finished hypotheses
        ended = hits & (ops.arange(self.candidates) < nb)
        full = ops.reduce("all", s.finished_done, -1, keepdims=True) & ops.early
        fin = top_s / ops.length_norm(cur + 1 - P)
        fin = fin + ops.to_float(full | ~s.improvable) * NEG + ops.to_float(~ended) * NEG
        pool_scores = ops.concat([s.finished_scores, fin], 1)  # (B, nb + C)
        best = ops.topk(pool_scores, nb)[1]
        finished = gather(ops.concat([s.finished, cand], 1), best)
        finished_scores = gather(pool_scores, best)
        finished_indices = gather(ops.concat([s.finished_indices, cand_indices], 1), best)
        finished_done = gather(ops.concat([s.finished_done, ended], 1), best)
        # the cache follows the beams that run on (rows stay within their source: cross k/v stay shared)
        cache = ops.reorder_cache(s.cache, ops.reshape(ops.column(run_indices, cur - P), (-1,)))
        # can a running beam still beat the worst finished one? (length-penalty heuristic, as HF)
        bound = run_scores[:, :1] / ops.length_norm(ops.where(ops.never, L - P, cur + 1 - P))
        worst = ops.where(finished_done, ops.reduce("min", finished_scores, 1, keepdims=True), NEG)
        improvable = s.improvable & ops.reduce("any", bound > worst, -1, keepdims=True)
        go = ops.reduce("any", improvable) & ~(ops.reduce("all", finished_done) & ops.early) & ~ops.reduce("all", hits)
        return BeamState(
            cur + 1,
            running,
            run_scores,
            run_indices,
            finished,
            finished_scores,
            finished_indices,
            finished_done,
            improvable,
            go,
            cache,
            rng,
            ops.record(s.scores, cur - P, logp),
        )

    def outputs(self, s: BeamState) -> SearchOutput:
        """The num_return_sequences best finished hypotheses of each source."""
        ops, k, L, P = self.ops, self.num_return_sequences, self.max_length, self.prompt_length
        indices = ops.reshape(s.finished_indices[:, :k], (-1, L - P))  # (B*k, L-P)
        n_gen = ops.reduce("max", ops.reduce("sum", ops.to_int(indices != -1), 1))  # the longest hypothesis
        return SearchOutput(
            ops.reshape(s.finished[:, :k], (-1, L)),
            P + n_gen,
            s.cur - P,
            s.scores,
            ops.reshape(s.finished_scores[:, :k], (-1,)),
            indices,
        )


def search_settings(plan: GenerationPlan, vocab: int) -> dict:
    """What a search is built with (all static): :func:`make_search`'s keyword arguments."""
    return dict(
        num_beams=plan.num_beams,
        max_length=plan.max_length,
        prompt_length=plan.prompt_length,
        num_eos=len(plan.eos_ids),
        sampling=plan.config.do_sample,
        vocab=vocab,
        num_return_sequences=plan.num_return_sequences,
    )


def make_search(ops: Ops, **settings) -> GreedySearch | BeamSearch:
    """Beam search with num_beams > 1, else greedy search or sampling (``settings``: :func:`search_settings`)."""
    if settings["num_beams"] > 1:
        return BeamSearch(ops, **settings)
    return GreedySearch(ops, **{k: settings[k] for k in ("max_length", "prompt_length", "sampling")})


def trim(out: SearchOutput, prompt_length: int, want_scores: bool) -> GenerateOutput:
    """A search's buffers -> :class:`~encdec_core.outputs.GenerateOutput` cut to what was generated.

    Works on torch, TF (eager, or traced without scores) and numpy arrays alike.
    """
    scores = tuple(out.scores[i] for i in range(int(out.steps))) if want_scores else None
    beams = out.beam_indices is not None
    counts = (None,) * 3 if out.assisted is None else tuple(int(c) for c in out.assisted)
    return GenerateOutput(
        sequences=out.sequences[:, : out.length],
        scores=scores,
        sequences_scores=out.sequences_scores if beams else None,
        beam_indices=out.beam_indices[:, : out.length - prompt_length] if beams else None,
        decoder_calls=counts[0],
        candidate_tokens=counts[1],
        accepted_tokens=counts[2],
    )


class GenerateDriver(GenerationConfigMixin):
    """``generate`` once for the three wrappers; a backend supplies three tensor steps.

    * ``_generation_source(input_ids, attention_mask, encoder_outputs, probe, options)`` -> (encoder
      states (B,S,D_enc), source mask (B,S) or None): checks the source and encodes it;
    * ``_decoder_prompt(b, start_id, decoder_input_ids, decoder_attention_mask)`` -> (prompt (B,P), its
      mask or None): the start token, or it followed by the given ids;
    * ``_search(plan, states, mask, prompt, prompt_mask, want_scores, options)`` -> the search's
      :class:`SearchOutput` (greedy, sampling or beam search over the backend's :class:`Ops`).

    ``generate_options`` are the backend's own keywords with their defaults (PyTorch's ``generator``,
    ``compile``; TF's ``jit_compile``; Flax's ``params``, ``prng_key``); ``generate_returns_output``: the
    result is always a :class:`GenerateOutput` (Transformers' Flax), not only with ``return_dict_in_generate``.
    """

    generate_options: dict = {}
    generate_returns_output = False

    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        """Generate decoder token ids: greedy by default, beam search with ``num_beams``, sampling with ``do_sample``.

        Settings come from ``model.generation_config`` (from ``generation_config.json`` or the model
        config), overridden by ``generation_config=`` and by keyword arguments (``max_new_tokens=``,
        ``num_beams=``, ...). ``encoder_outputs=`` replaces the source; ``decoder_input_ids=`` (with
        ``decoder_attention_mask=``) is a decoder prompt (the start token is prepended unless every
        row begins with it). Sampling is reproducible with ``seed=``. Returns ids (rows, length), or a
        :class:`GenerateOutput` (``.sequences``, and ``.scores`` ... when asked) with
        ``return_dict_in_generate=True``. Each backend's module documents its own keywords.
        """
        options = {k: kwargs.pop(k, v) for k, v in self.generate_options.items()}
        assistant = options["assistant_model"] = kwargs.pop("assistant_model", None)
        encoder_outputs = kwargs.pop("encoder_outputs", None)
        prompt_ids, prompt_mask = kwargs.pop("decoder_input_ids", None), kwargs.pop("decoder_attention_mask", None)
        gen = self._generation_config(kwargs.pop("generation_config", None), kwargs)
        vocab = self.config.decoder.vocab_size
        probe = resolve(gen, prompt_length=1, vocab_size=vocab)  # tokens checked up front
        states, mask = self._generation_source(input_ids, attention_mask, encoder_outputs, probe, options)
        prompt, prompt_mask = self._decoder_prompt(int(states.shape[0]), probe.start_id, prompt_ids, prompt_mask)
        limit = max_positions(self.config.decoder)
        if assistant is not None:
            from encdec_core.assisted import check_assistant

            check_assistant(self, assistant)
        plan = resolve(
            gen,
            prompt_length=int(prompt.shape[1]),
            vocab_size=vocab,
            max_positions=limit,
            assistant=assistant is not None,
            assistant_positions=None if assistant is None else max_positions(assistant.config.decoder),
        )
        if plan.candidates and input_ids is None:
            raise InputError(
                "generate: assisted decoding needs input_ids (the source tokens), not only encoder_outputs"
            )
        options["source"] = input_ids
        want_scores = bool(gen.return_dict_in_generate and gen.output_scores)
        raw = self._search(plan, states, mask, prompt, prompt_mask, want_scores, options)
        out = trim(raw, plan.prompt_length, want_scores)
        return out if gen.return_dict_in_generate or self.generate_returns_output else out.sequences


__all__ = [
    "GenerateDriver",
    "LayerCache",
    "DecoderCache",
    "ProcessorSpec",
    "processor_specs",
    "temperature",
    "build_processors",
    "PROCESSOR_NAMES",
    "processor_table",
    "run_processors",
    "Ops",
    "SearchOutput",
    "GreedyState",
    "GreedySearch",
    "BeamState",
    "BeamSearch",
    "search_settings",
    "make_search",
    "trim",
    "NEG",
    "EARLY_STOPPING",
]
