"""The decoding contract and ``generate`` for the PyTorch backend, on a preallocated cache.

``encode`` / ``init_cache`` / ``decode_step`` are the contract of :mod:`encdec_core.decoding`;
greedy, sampling and beam search are that module's searches, run here as an eager
``while cond(state): state = body(state, step(state))`` over :class:`TorchOps`. The encoder runs
once; every decoder layer's cross-attention keys/values are computed once for the B sources
and shared by their beams; each step feeds only the new token. ``compile=True`` runs the step
through ``torch.compile`` on a static cache, one graph per (rows, max_length, source length).

Shapes as in :mod:`encdec_core.decoding` (B sources, N decoder rows, L max length, ...).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from encdec_core.assisted import AssistedSearch, buffer_lengths, make_proposer
from encdec_core.decoding import (
    DecoderCache,
    GenerateDriver,
    Ops,
    build_processors,
    make_search,
    processor_specs,
    processor_table,
    search_settings,
)
from encdec_core.driver import encoder_states
from encdec_core.errors import InputError
from encdec_core.generation import mask_pad_id, prepend_start
from encdec_core.outputs import BaseModelOutput
from encdec_core.validation import check_batch, max_positions
from encdec_pt.kernels import packed_after
from encdec_pt.layers import allocate_cache, is_static, reorder_cache

# (ids (N,L) buffer, cur, scores (N,V)) -> scores; ids[:, :cur] are the rows so far
Processor = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------- processors
def _ban(scores: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(banned, -float("inf"))


def repetition_penalty(penalty: float) -> Processor:
    """A token already in the row: positive score / penalty, negative score * penalty."""

    def apply(ids, cur, scores):
        seen = scores.gather(1, ids[:, :cur])
        return scores.scatter(1, ids[:, :cur], torch.where(seen < 0, seen * penalty, seen / penalty))

    return apply


def no_repeat_ngram(n: int) -> Processor:
    """Ban a token that would complete an n-gram already present in the row."""

    def apply(ids, cur, scores):
        if cur < n:
            return scores
        ids = ids[:, :cur]
        windows = ids.unfold(1, n, 1)  # (N, W, n): every n-gram so far
        match = (windows[:, :, :-1] == ids[:, None, cur - n + 1 :]).all(-1)  # prefix = last n-1 tokens
        hits = torch.zeros_like(scores).scatter_add_(1, windows[:, :, -1], match.to(scores.dtype))
        return _ban(scores, hits > 0)

    return apply


def bad_words(words: tuple[tuple[int, ...], ...]) -> Processor:
    """Ban a word's last token when the row ends with the word's other tokens."""

    def apply(ids, cur, scores):
        banned = torch.zeros_like(scores, dtype=torch.bool)
        for w in words:
            if len(w) - 1 > cur:
                continue
            hit = (
                torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
                if len(w) == 1
                else (ids[:, cur - len(w) + 1 : cur] == torch.tensor(w[:-1], device=ids.device)).all(-1)
            )
            banned[:, w[-1]] |= hit
        return _ban(scores, banned)

    return apply


def min_length(length: int, eos: tuple[int, ...]) -> Processor:
    """No EOS while the row is shorter than ``length``."""

    def apply(ids, cur, scores):
        if cur >= length:
            return scores
        scores = scores.clone()
        scores[:, list(eos)] = -float("inf")
        return scores

    return apply


def force(at_length: int, token_ids: tuple[int, ...]) -> Processor:
    """At row length ``at_length``, only ``token_ids`` are possible (score 0)."""

    def apply(ids, cur, scores):
        if cur != at_length:
            return scores
        out = torch.full_like(scores, -float("inf"))
        out[:, list(token_ids)] = 0.0
        return out

    return apply


def top_k(keep: int, k: int) -> Processor:
    """Keep the k best scores (at least ``keep``)."""

    def apply(ids, cur, scores):
        kk = min(max(k, keep), scores.shape[-1])
        return _ban(scores, scores < scores.topk(kk).values[:, -1:])

    return apply


def top_p(keep: int, p: float) -> Processor:
    """Keep the smallest set of best tokens whose probability mass exceeds p (at least ``keep``)."""

    def apply(ids, cur, scores):
        sorted_scores, order = scores.sort(dim=-1)  # ascending
        drop = sorted_scores.softmax(-1).cumsum(-1) <= 1 - p
        drop[:, -keep:] = False
        return _ban(scores, drop.scatter(1, order, drop))

    return apply


PROCESSORS = processor_table(globals())  # name -> processor (encdec_core.decoding.PROCESSOR_NAMES)


# ------------------------------------------------------------------------------- the search ops
class TorchOps(Ops):
    """:class:`encdec_core.decoding.Ops` in torch, eager: ``cur`` is a Python int, settings Python values."""

    def __init__(self, plan, processors, device):
        gen = plan.config
        self.pad = plan.pad_id if plan.pad_id is not None else 0
        self.early = gen.early_stopping is True
        self.never = gen.early_stopping == "never" and gen.length_penalty > 0
        super().__init__(processors)
        self.length_penalty, self.device = gen.length_penalty, device
        self.eos = torch.tensor(plan.eos_ids, dtype=torch.long, device=device)

    def is_eos(self, tokens):
        return torch.isin(tokens, self.eos)

    def length_norm(self, n):
        return n**self.length_penalty  # a Python float, as Transformers divides by

    def sample(self, scores, rng, cur):  # torch.multinomial with the user's generator: Transformers' draws
        return torch.multinomial(scores.softmax(-1), 1, generator=rng).squeeze(1), rng

    def sample_k(self, scores, k, rng, cur):
        return torch.multinomial(scores.softmax(-1), k, generator=rng), rng

    def full(self, shape, value, kind):
        dtype = torch.long if kind == "id" else getattr(torch, self.DTYPE_NAMES[kind])  # torch's ids are int64
        return torch.full(shape, value, dtype=dtype, device=self.device)

    def arange(self, n):
        return torch.arange(n, device=self.device)

    def concat(self, tensors, axis):
        return torch.cat(tensors, axis)

    def where(self, cond, a, b):
        return (a if cond else b) if isinstance(cond, bool) else torch.where(cond, a, b)

    def to_float(self, x):
        return x.float()

    def to_int(self, x):
        return x.long()

    def log_softmax(self, x):
        return F.log_softmax(x, dim=-1)

    def argmax(self, x):
        return x.argmax(-1)

    def topk(self, x, k):
        return x.topk(k)

    def gather(self, x, idx):
        return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:]))

    def put(self, buf, pos, values):
        buf[..., pos] = values  # in place: buf is always this step's own tensor
        return buf

    def column(self, buf, pos):
        return buf[..., pos]

    def reduce(self, name, x, axis=None, keepdims=False):
        fn = {"all": torch.all, "any": torch.any, "min": torch.amin, "max": torch.amax, "sum": torch.sum}[name]
        return fn(x) if axis is None else fn(x, axis, keepdim=keepdims)

    def record(self, buf, step, scores):
        if buf is not None:
            buf[step] = scores
        return buf

    def reorder_cache(self, cache, rows):
        return reorder_cache(cache, rows)

    def index(self, x):
        return int(x)  # an eager cache index and cur are Python ints


# ------------------------------------------------------------------------------- decoder steps
def _step(decoder, ids, cache: DecoderCache, dec_mask):
    """One decoder call on the cache: ids (N,T) -> logits (N,T,V); the cache's slots are written in place."""
    if dec_mask is not None and not is_static(cache):
        dec_mask = dec_mask[:, : cache.index + ids.shape[1]]
    out = decoder(
        input_ids=ids,
        attention_mask=dec_mask,
        encoder_attention_mask=cache.encoder_attention_mask,
        past_key_values=cache,
        use_cache=True,
    )
    return out.logits


_COMPILED: dict[str, Callable] = {}


def _compiled_step(option) -> Callable:
    """torch.compile of :func:`_step` (shared across calls, so a shape compiles once)."""
    kwargs = dict(option) if isinstance(option, dict) else ({"backend": option} if isinstance(option, str) else {})
    key = repr(sorted(kwargs.items()))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_step, dynamic=False, **kwargs)
    return _COMPILED[key]


# ------------------------------------------------------------------------------- the mixin
class GenerationMixin(GenerateDriver):
    """The decoding contract and ``generate`` for :class:`~encdec_pt.EncoderDecoderModel`.

    ``generate``'s own keywords: ``generator=`` (a ``torch.Generator`` for sampling; or ``seed=``) and
    ``compile=True`` (or a torch.compile backend name or kwargs dict): decode with a static cache under
    ``torch.compile``.
    """

    generate_options = {"generator": None, "seed": None, "compile": False}

    def encode(self, input_ids, attention_mask=None, **kwargs) -> BaseModelOutput:
        """The encoder's outputs for ``input_ids`` (B, S): ``last_hidden_state`` (B, S, D_enc), ..."""
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def init_cache(self, batch_size: int, max_length: int, encoder_outputs, attention_mask=None) -> DecoderCache:
        """An empty cache of ``max_length`` decoder positions for ``batch_size`` rows (a multiple of the B sources).

        ``encoder_outputs`` (a ``BaseModelOutput``, HF tuple, or the (B, S, D_enc) states) and the
        source ``attention_mask`` (B, S): the projection and every layer's cross-attention keys
        and values are computed here, once per generation, and shared by a source's rows.
        """
        states = encoder_states(encoder_outputs)
        if states is None or states.dim() != 3 or batch_size % states.shape[0]:
            raise InputError(
                f"init_cache: batch_size={batch_size} must be a multiple of the encoder_outputs' batch "
                f"(states of shape (batch, length, width), got {None if states is None else tuple(states.shape)})"
            )
        limit = max_positions(self.config.decoder)
        if limit is not None and max_length > limit:
            raise InputError(f"init_cache: max_length={max_length} exceeds the {limit} positions the decoder embeds")
        if self.enc_to_dec_proj is not None:
            states = self.enc_to_dec_proj(states)
        return allocate_cache(self.decoder.cross_keys_values(states), batch_size, max_length, attention_mask)

    def decode_step(self, decoder_input_ids, cache: DecoderCache, decoder_attention_mask=None):
        """Decode ``decoder_input_ids`` (N, T) at the cache's index: -> (logits (N,T,V), the cache advanced by T).

        ``decoder_attention_mask`` (N, max_length), if the decoder inputs have padding, covers the
        whole cache. The cache's buffers are written in place.
        """
        t = decoder_input_ids.shape[1]
        if not is_static(cache) and cache.index + t > cache.max_length:
            raise InputError(
                f"decode_step: positions up to {cache.index + t} do not fit a cache of "
                f"max_length={cache.max_length}; build it with a larger init_cache(max_length=...)"
            )
        return _step(self.decoder, decoder_input_ids, cache, decoder_attention_mask), cache._replace(
            index=cache.index + t
        )

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        return super().generate(input_ids, attention_mask, **kwargs)

    generate.__doc__ = GenerateDriver.generate.__doc__

    def _generation_source(self, input_ids, attention_mask, encoder_outputs, probe, options):
        """(encoder states (B,S,D_enc), source mask or None) for generate."""
        if encoder_outputs is None:
            if input_ids is None:
                raise InputError("generate: give input_ids (the source tokens) or encoder_outputs")
            check_batch(
                self.config.encoder,
                None,
                input_ids=tuple(input_ids.shape),
                attention_mask=None if attention_mask is None else tuple(attention_mask.shape),
            )
            pad = mask_pad_id(probe)
            if attention_mask is None and pad is not None and bool((input_ids == pad).any()):
                attention_mask = (input_ids != pad).long()  # inferred from padding, as HF
            encoder_outputs = self.encode(input_ids, attention_mask)
        states = encoder_states(encoder_outputs)
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(states.shape[:2]):
            raise InputError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(states.shape[:2])}"
            )
        return states, attention_mask

    def _decoder_prompt(self, b: int, start_id: int, decoder_input_ids, decoder_attention_mask):
        """(prompt (B,P), its mask (B,P) or None): the start token, or it followed by the given ids."""
        device = next(self.parameters()).device
        start = torch.full((b, 1), start_id, dtype=torch.long, device=device)
        if decoder_input_ids is None:
            return start, None
        if decoder_input_ids.dim() != 2 or decoder_input_ids.shape[0] != b:
            raise InputError(f"decoder_input_ids expected shape ({b}, length), got {tuple(decoder_input_ids.shape)}")
        prompt, mask = decoder_input_ids.to(device), decoder_attention_mask
        if prepend_start(prompt[:, 0].tolist(), start_id):
            prompt = torch.cat([start, prompt], 1)
            mask = None if mask is None else torch.cat([torch.ones_like(mask[:, :1]), mask], 1)
        return prompt, mask

    def _search(self, plan, states, mask, prompt, prompt_mask, want_scores, options):
        """The search on a preallocated cache: ``compile`` runs each step through ``torch.compile`` (static cache)."""
        compile, generator = options["compile"], options["generator"]
        if compile and plan.candidates:
            raise InputError("generate: compile=True does not run assisted decoding; leave compile off with it")
        b, dev, vocab = states.shape[0], states.device, self.config.decoder.vocab_size
        g, p = plan.rows_per_source, plan.prompt_length
        slots, rows = buffer_lengths(plan)
        dec_mask = None
        if prompt_mask is not None:  # with a cache the decoder mask covers the cache's slots
            dec_mask = torch.cat([prompt_mask, prompt_mask.new_ones(b, slots - p)], 1).repeat_interleave(g, 0)
        if generator is None and options["seed"] is not None:
            generator = torch.Generator(device=dev).manual_seed(options["seed"])
        step = _compiled_step(compile) if compile else _step
        prompt = prompt.repeat_interleave(g, 0)  # (N, P)
        cache = _prefill(step, self.decoder, self.init_cache(b * g, slots, states, mask), prompt, dec_mask, compile)
        ops = TorchOps(plan, build_processors(processor_specs(plan), PROCESSORS), dev)
        scores = torch.zeros((rows, b * g, vocab), device=dev) if want_scores else None
        if plan.candidates:
            return self._assisted(plan, ops, prompt, cache, dec_mask, mask, options, scores)
        search = make_search(ops, **search_settings(plan, vocab))
        state = search.init(prompt, cache, generator, scores)
        # decode steps of a few rows stream prepacked weights (encdec_pt.kernels)
        with packed_after(sure=plan.sure_new_tokens) as tick:
            while bool(search.cond(state)):
                tick()
                logits = step(self.decoder, search.last_tokens(state), state.cache, dec_mask)[:, -1].float()  # (N, V)
                state = search.body(state._replace(cache=state.cache._replace(index=state.cache.index + 1)), logits)
        return search.outputs(state)

    def _assisted(self, plan, ops, prompt, cache, dec_mask, mask, options, scores):
        """Assisted greedy search (:mod:`encdec_core.assisted`): prompt lookup, or a draft model's own cache."""
        source, assistant = torch.as_tensor(options["source"], device=prompt.device), options["assistant_model"]

        def calls(decoder):
            return lambda ids, c: (_step(decoder, ids, c, dec_mask).float(), c._replace(index=c.index + ids.shape[1]))

        draft = None
        if assistant is not None:
            states = encoder_states(assistant.encode(source, mask))
            draft = assistant.init_cache(prompt.shape[0], cache.max_length, states, mask)
            draft = _prefill(_step, assistant.decoder, draft, prompt, dec_mask, False)
        proposer = make_proposer(
            ops, plan, source=source, source_mask=mask, draft_step=calls(assistant.decoder) if draft else None
        )
        search = AssistedSearch(
            ops, proposer, width=plan.candidates, max_length=plan.max_length, prompt_length=plan.prompt_length
        )
        state = search.init(prompt, cache, draft, scores)
        with packed_after() as tick:
            while bool(search.cond(state)):
                tick()
                state = search.iterate(state, calls(self.decoder))
        return search.outputs(state)


def _prefill(step, decoder, cache: DecoderCache, prompt, dec_mask, static: bool) -> DecoderCache:
    """The cache with the prompt but its last token (which the search feeds) written; a static cache (``compile``)
    takes one token per call: one graph."""
    p = prompt.shape[1]
    if static:  # a tensor index: every step has the same shapes (see encdec_pt.layers.allocate_cache)
        cache = cache._replace(index=torch.zeros((), dtype=torch.long, device=prompt.device))
    for ids in [prompt[:, j : j + 1] for j in range(p - 1)] if static else [prompt[:, : p - 1]] if p > 1 else []:
        step(decoder, ids, cache, dec_mask)
        cache = cache._replace(index=cache.index + ids.shape[1])
    return cache


__all__ = ["GenerationMixin", "TorchOps", "PROCESSORS"]
