"""``generate`` for the PyTorch backend: greedy, sampling and beam search on a preallocated cache.

The rules (lengths, special tokens, processor order, beam bookkeeping) are those of
:mod:`encdec_core.generation`; this module writes them in torch. The encoder runs once; every
decoder layer's cross-attention keys/values are computed once for the B sources and shared by
their beams; each step feeds only the new token. ``compile=True`` runs the step through
``torch.compile`` on a static cache, one graph per (rows, max_length, source length).

Shapes: B sources, g rows per source (beams or samples), N = B * g decoder rows, V vocabulary,
L max decoder length, P decoder prompt length.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from encdec_core.errors import InputError
from encdec_core.generation import (
    GenerationConfig,
    GenerationPlan,
    bad_words_for,
    config_for_call,
    derived_tokens,
    resolve,
)
from encdec_core.outputs import BaseModelOutput, GenerateOutput
from encdec_core.validation import check_batch, max_positions
from encdec_pt.layers import Cache

NEG = -1.0e9  # HF's "impossible" beam score: finite so sums and comparisons stay ordered
Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ids (N,T), scores (N,V)) -> scores


# ------------------------------------------------------------------------------- processors
def _ban(scores: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(banned, -float("inf"))


def repetition_penalty(penalty: float) -> Processor:
    """A token already in the row: positive score / penalty, negative score * penalty."""
    def apply(ids, scores):
        seen = scores.gather(1, ids)
        return scores.scatter(1, ids, torch.where(seen < 0, seen * penalty, seen / penalty))
    return apply


def no_repeat_ngram(n: int) -> Processor:
    """Ban a token that would complete an n-gram already present in the row."""
    def apply(ids, scores):
        if ids.shape[1] < n:
            return scores
        windows = ids.unfold(1, n, 1)  # (N, W, n): every n-gram so far
        match = (windows[:, :, :-1] == ids[:, None, ids.shape[1] - n + 1:]).all(-1)  # prefix = last n-1 tokens
        hits = torch.zeros_like(scores).scatter_add_(1, windows[:, :, -1], match.to(scores.dtype))
        return _ban(scores, hits > 0)
    return apply


def bad_words(words: list[tuple[int, ...]]) -> Processor:
    """Ban a word's last token when the row ends with the word's other tokens."""
    def apply(ids, scores):
        banned = torch.zeros_like(scores, dtype=torch.bool)
        for w in words:
            if len(w) - 1 > ids.shape[1]:
                continue
            hit = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device) if len(w) == 1 else \
                (ids[:, ids.shape[1] - len(w) + 1:] == torch.tensor(w[:-1], device=ids.device)).all(-1)
            banned[:, w[-1]] |= hit
        return _ban(scores, banned)
    return apply


def min_length(length: int, eos: tuple[int, ...]) -> Processor:
    """No EOS while the row is shorter than ``length``."""
    def apply(ids, scores):
        if ids.shape[1] >= length:
            return scores
        scores = scores.clone()
        scores[:, list(eos)] = -float("inf")
        return scores
    return apply


def force(token_ids: tuple[int, ...], at_length: int) -> Processor:
    """At row length ``at_length``, only ``token_ids`` are possible (score 0)."""
    def apply(ids, scores):
        if ids.shape[1] != at_length:
            return scores
        out = torch.full_like(scores, -float("inf"))
        out[:, list(token_ids)] = 0.0
        return out
    return apply


def temperature(t: float) -> Processor:
    return lambda ids, scores: scores / t


def top_k(k: int, keep: int) -> Processor:
    """Keep the k best scores (at least ``keep``)."""
    def apply(ids, scores):
        kk = min(max(k, keep), scores.shape[-1])
        return _ban(scores, scores < scores.topk(kk).values[:, -1:])
    return apply


def top_p(p: float, keep: int) -> Processor:
    """Keep the smallest set of best tokens whose probability mass exceeds p (at least ``keep``)."""
    def apply(ids, scores):
        sorted_scores, order = scores.sort(dim=-1)  # ascending
        drop = sorted_scores.softmax(-1).cumsum(-1) <= 1 - p
        drop[:, -keep:] = False
        return _ban(scores, drop.scatter(1, order, drop))
    return apply


def build_processors(plan: GenerationPlan) -> list[Processor]:
    """The call's processors, in Transformers' order, then the sampling warpers."""
    gen, eos, out = plan.config, plan.eos_ids, []
    if gen.repetition_penalty != 1.0:
        out.append(repetition_penalty(gen.repetition_penalty))
    if gen.no_repeat_ngram_size > 0:
        out.append(no_repeat_ngram(gen.no_repeat_ngram_size))
    words = bad_words_for(gen, eos)
    if words:
        out.append(bad_words(words))
    if plan.min_length > 0 and eos:
        out.append(min_length(plan.min_length, eos))
    if gen.forced_bos_token_id is not None:
        out.append(force((gen.forced_bos_token_id,), 1))
    if gen.forced_eos_token_id is not None:
        forced = gen.forced_eos_token_id
        out.append(force(tuple(forced) if isinstance(forced, list) else (forced,), plan.max_length - 1))
    if gen.do_sample:
        keep = 2 if plan.num_beams > 1 else 1
        if gen.temperature != 1.0:
            out.append(temperature(gen.temperature))
        if gen.top_k:
            out.append(top_k(gen.top_k, keep))
        if gen.top_p < 1.0:
            out.append(top_p(gen.top_p, keep))
    return out


def run_processors(processors: list[Processor], ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    for proc in processors:
        scores = proc(ids, scores)
    return scores


# ------------------------------------------------------------------------------- decoder steps
def _step(decoder, ids, position, buffers, enc, enc_mask, dec_mask, static: bool):
    """One decoder call on the cache: ids (N,T) -> last-position logits (N,V) in fp32."""
    cache = Cache(buffers, position, static=static)
    out = decoder(input_ids=ids, attention_mask=dec_mask, encoder_hidden_states=enc, encoder_attention_mask=enc_mask,
                  past_key_values=cache, use_cache=True)
    return out.logits[:, -1].float()


_COMPILED: dict[str, Callable] = {}


def _compiled_step(option) -> Callable:
    """torch.compile of :func:`_step` (shared across calls, so a shape compiles once)."""
    kwargs = dict(option) if isinstance(option, dict) else ({"backend": option} if isinstance(option, str) else {})
    key = repr(sorted(kwargs.items()))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_step, dynamic=False, **kwargs)
    return _COMPILED[key]


class Stepper:
    """The decoder with its cache: ``step(ids)`` returns the next-token logits, ``reorder(rows)`` follows beams."""

    def __init__(self, model, enc, enc_mask, rows: int, max_length: int, dec_mask=None, compile=False,
                 static: bool | None = None):
        self.decoder, self.enc, self.enc_mask = model.decoder, enc, enc_mask
        self.static = bool(compile) if static is None else static
        self.cache = Cache.allocate(model.decoder.cross_keys_values(enc), rows, max_length, static=self.static)
        self.fn = _compiled_step(compile) if compile else _step
        self.dec_mask = dec_mask  # (N, L) or None

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        c = self.cache
        if self.static and ids.shape[1] > 1:  # one graph: feed a prompt token by token
            for j in range(ids.shape[1]):
                logits = self.step(ids[:, j:j + 1])
            return logits
        mask = self.dec_mask
        if mask is not None and not self.static:
            mask = mask[:, : c.position + ids.shape[1]]
        logits = self.fn(self.decoder, ids, c.position, c.buffers(), self.enc, self.enc_mask, mask, self.static)
        c.advance(ids.shape[1])
        return logits

    def reorder(self, rows: torch.Tensor) -> None:
        self.cache.reorder(rows)


# ------------------------------------------------------------------------------- strategies
def greedy_or_sample(stepper: Stepper, prompt: torch.Tensor, plan: GenerationPlan, processors, rng, want_scores: bool):
    """Greedy search (argmax) or multinomial sampling; finished rows get the pad id."""
    ids, eos = prompt, torch.tensor(plan.eos_ids, dtype=torch.long, device=prompt.device)
    unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    scores_seen = []
    logits = stepper.step(ids)
    while True:
        scores = run_processors(processors, ids, logits)
        if want_scores:
            scores_seen.append(scores)
        if plan.config.do_sample:
            nxt = torch.multinomial(scores.softmax(-1), 1, generator=rng).squeeze(1)
        else:
            nxt = scores.argmax(-1)
        if len(eos):
            nxt = torch.where(unfinished, nxt, plan.pad_id)
            unfinished &= ~torch.isin(nxt, eos)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if ids.shape[1] >= plan.max_length or not bool(unfinished.any()):
            return GenerateOutput(sequences=ids, scores=tuple(scores_seen) if want_scores else None)
        logits = stepper.step(nxt[:, None])


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick beams along dim 1: t (B, K, ...) by idx (B, K')."""
    return t.gather(1, idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(*idx.shape, *t.shape[2:]))


def beam_search(stepper: Stepper, prompt: torch.Tensor, plan: GenerationPlan, processors, rng, want_scores: bool):
    """Vectorised beam search with Transformers 4.57's bookkeeping (see encdec_core.generation)."""
    gen, nb, L, P = plan.config, plan.num_beams, plan.max_length, plan.prompt_length
    B, dev = prompt.shape[0] // nb, prompt.device
    eos = torch.tensor(plan.eos_ids, dtype=torch.long, device=dev)
    keep = max(2, 1 + len(plan.eos_ids)) * nb  # enough candidates that nb can always run on
    fill = plan.pad_id if plan.pad_id is not None else 0
    running = torch.full((B, nb, L), fill, dtype=torch.long, device=dev)
    running[:, :, :P] = prompt.view(B, nb, P)
    finished = running.clone()
    run_scores = torch.zeros(B, nb, device=dev)
    run_scores[:, 1:] = NEG  # all beams start identical: only the first may expand
    fin_scores = torch.full((B, nb), NEG, device=dev)
    fin_done = torch.zeros(B, nb, dtype=torch.bool, device=dev)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=dev)
    run_idx = torch.full((B, nb, L - P), -1, dtype=torch.long, device=dev)
    fin_idx = run_idx.clone()
    first_n = torch.arange(keep, device=dev) < nb
    offsets = torch.arange(B, device=dev)[:, None] * nb
    scores_seen, cur = [], P
    logits = stepper.step(prompt)
    while True:
        flat = running[:, :, :cur].reshape(B * nb, cur)
        logp = run_processors(processors, flat, F.log_softmax(logits, dim=-1))
        if want_scores:
            scores_seen.append(logp)
        vocab = logp.shape[-1]
        acc = (logp.view(B, nb, vocab) + run_scores[:, :, None]).view(B, nb * vocab)
        if gen.do_sample:
            top_i = torch.multinomial(acc.softmax(-1), keep, generator=rng)
            top_s = acc.gather(1, top_i)
        else:
            top_s, top_i = acc.topk(keep)
        src = top_i // vocab  # (B, keep) beam each candidate extends
        cand = _gather(running, src)
        cand[:, :, cur] = top_i % vocab
        cand_idx = _gather(run_idx, src)
        cand_idx[:, :, cur - P] = src + offsets
        hits = torch.isin(cand[:, :, cur], eos) | (cur + 1 >= L)  # ends here: EOS or max length
        # the best nb candidates that did not end run on
        r_scores = top_s + hits.float() * NEG
        nxt = r_scores.topk(nb).indices
        running, run_scores, run_idx = _gather(cand, nxt), _gather(r_scores, nxt), _gather(cand_idx, nxt)
        # candidates among the first nb that ended compete with the finished hypotheses
        just = hits & first_n
        s = top_s / ((cur + 1 - P) ** gen.length_penalty)
        full = fin_done.all(-1, keepdim=True) & (gen.early_stopping is True)
        s = s + (full | ~improvable).float() * NEG + (~just).float() * NEG
        best = torch.cat([fin_scores, s], 1).topk(nb).indices
        finished = _gather(torch.cat([finished, cand], 1), best)
        fin_scores = _gather(torch.cat([fin_scores, s], 1), best)
        fin_idx = _gather(torch.cat([fin_idx, cand_idx], 1), best)
        fin_done = _gather(torch.cat([fin_done, just], 1), best)
        stepper.reorder(run_idx[:, :, cur - P].reshape(-1))
        cur += 1
        # can a running beam still beat the worst finished one? (length-penalty heuristic, as HF)
        length = (L - P) if gen.early_stopping == "never" and gen.length_penalty > 0 else (cur - P)
        best_running = run_scores[:, :1] / (length ** gen.length_penalty)
        worst = torch.where(fin_done, fin_scores.min(1, keepdim=True).values, NEG)
        improvable = improvable & (best_running > worst).any(-1, keepdim=True)
        if not (bool(improvable.any()) and not (bool(fin_done.all()) and gen.early_stopping is True)
                and not bool(hits.all())):
            break
        logits = stepper.step(running[:, :, cur - 1].reshape(-1, 1))
    nrs = plan.num_return_sequences
    seqs = finished[:, :nrs].reshape(B * nrs, L)
    idx = fin_idx[:, :nrs].reshape(B * nrs, L - P)
    n_gen = int((idx != -1).sum(1).max())
    return GenerateOutput(sequences=seqs[:, :P + n_gen], scores=tuple(scores_seen) if want_scores else None,
                          sequences_scores=fin_scores[:, :nrs].reshape(-1), beam_indices=idx[:, :n_gen])


# ------------------------------------------------------------------------------- the mixin
class GenerationMixin:
    """``generate`` for :class:`~encdec_pt.EncoderDecoderModel`."""

    def set_generation_config(self, gen: GenerationConfig) -> None:
        """Use ``gen`` for generate(); if it came from the model config, later model.config tokens still apply."""
        self.generation_config = gen
        self._derived_tokens = derived_tokens(gen)

    def _generation_config(self, generation_config: GenerationConfig | None, kwargs: dict) -> GenerationConfig:
        gen = generation_config if generation_config is not None else self.generation_config
        return config_for_call(gen, self.config, getattr(self, "_derived_tokens", {}), kwargs)

    def _encode_for_generation(self, input_ids, attention_mask, encoder_outputs, pad_id, eos_ids):
        if encoder_outputs is None:
            if input_ids is None:
                raise InputError("generate: give input_ids (the source tokens) or encoder_outputs")
            check_batch(self.config.encoder, None, input_ids=tuple(input_ids.shape),
                        attention_mask=None if attention_mask is None else tuple(attention_mask.shape))
            if attention_mask is None and pad_id is not None and pad_id not in eos_ids and bool((input_ids == pad_id).any()):
                attention_mask = (input_ids != pad_id).long()  # inferred from padding, as HF
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        enc = encoder_outputs.last_hidden_state
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(enc.shape[:2]):
            raise InputError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(enc.shape[:2])}")
        if self.enc_to_dec_proj is not None:
            enc = self.enc_to_dec_proj(enc)
        return enc, attention_mask

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, *, encoder_outputs=None, decoder_input_ids=None,
                 decoder_attention_mask=None, generation_config: GenerationConfig | None = None,
                 generator: torch.Generator | None = None, seed: int | None = None, compile=False, **kwargs):
        """Generate decoder token ids: greedy by default, beam search with ``num_beams``, sampling with ``do_sample``.

        Settings come from ``model.generation_config`` (from ``generation_config.json`` or the
        model config), overridden by ``generation_config=`` and by keyword arguments
        (``max_new_tokens=``, ``num_beams=``, ...). ``decoder_input_ids`` is a decoder prompt
        (the start token is prepended unless every row begins with it). Sampling is reproducible
        with ``seed=`` or ``generator=``. ``compile=True`` (or a torch.compile backend name or
        kwargs dict) decodes with a static cache under ``torch.compile``. Returns ids
        (rows, length), or a :class:`GenerateOutput` with ``return_dict_in_generate=True``.
        """
        gen = self._generation_config(generation_config, kwargs)
        probe = resolve(gen, prompt_length=1, vocab_size=self.config.decoder.vocab_size)  # tokens checked up front
        enc, enc_mask = self._encode_for_generation(input_ids, attention_mask, encoder_outputs, probe.pad_id, probe.eos_ids)
        b, dev = enc.shape[0], enc.device
        start = torch.full((b, 1), probe.start_id, dtype=torch.long, device=dev)
        if decoder_input_ids is None:
            prompt, prompt_mask = start, None
        else:
            if decoder_input_ids.dim() != 2 or decoder_input_ids.shape[0] != b:
                raise InputError(f"decoder_input_ids expected shape ({b}, length), got {tuple(decoder_input_ids.shape)}")
            prompt, prompt_mask = decoder_input_ids.to(dev), decoder_attention_mask
            if bool((prompt[:, 0] != probe.start_id).all()):
                prompt = torch.cat([start, prompt], 1)
                if prompt_mask is not None:
                    prompt_mask = torch.cat([torch.ones_like(prompt_mask[:, :1]), prompt_mask], 1)
        plan = resolve(gen, prompt_length=prompt.shape[1], vocab_size=self.config.decoder.vocab_size,
                       max_positions=max_positions(self.config.decoder))
        g = plan.num_beams if plan.num_beams > 1 else (plan.num_return_sequences if gen.do_sample else 1)
        prompt = prompt.repeat_interleave(g, 0)
        dec_mask = None
        if prompt_mask is not None:
            ones = prompt_mask.new_ones(b, plan.max_length - prompt_mask.shape[1])
            dec_mask = torch.cat([prompt_mask, ones], 1).repeat_interleave(g, 0)
        if generator is None and seed is not None:
            generator = torch.Generator(device=dev).manual_seed(seed)
        stepper = Stepper(self, enc, enc_mask, b * g, plan.max_length, dec_mask, compile)
        run = beam_search if plan.num_beams > 1 else greedy_or_sample
        out = run(stepper, prompt, plan, build_processors(plan), generator,
                  gen.return_dict_in_generate and gen.output_scores)
        if gen.return_dict_in_generate:
            return out
        return out.sequences


__all__ = ["GenerationMixin", "build_processors", "run_processors", "greedy_or_sample", "beam_search", "Stepper"]
