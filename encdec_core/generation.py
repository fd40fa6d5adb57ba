"""Generation settings and rules shared by the three backends (no tensors here).

:class:`GenerationConfig` has HF's ``generation_config.json`` keys and defaults for the
strategies encdec implements; other keys survive a round trip in ``extra`` (and a key that
would change decoding in a way encdec does not implement is an error at the call, not
silently ignored). :func:`resolve` turns a model's config, its generation config and the
call's keyword arguments into a :class:`GenerationPlan`: validated settings with the
special tokens and lengths worked out once, so PyTorch, TensorFlow and Flax decode alike.

The decoding semantics (as Transformers 4.57, which the fixtures pin):

* lengths count the *decoder* sequence, prompt (the start token) included: ``max_length``
  (default 20) or ``prompt + max_new_tokens``; ``min_length`` / ``prompt + min_new_tokens``
  ban every EOS id while the sequence is shorter.
* Processors, in this order, on the step's scores (raw logits for greedy and sampling,
  log-softmax for beam search): repetition penalty (a seen token's score ``s`` becomes
  ``s / p`` if positive else ``s * p``), no-repeat n-gram (ban a token that would repeat an
  n-gram of the row), bad words (ban a token that completes a listed sequence; EOS-only
  entries are dropped), min length, min new tokens, forced BOS (at length 1 only the BOS id),
  forced EOS (at length ``max_length - 1`` only EOS ids). Banned scores are ``-inf``.
* Sampling adds warpers after them: temperature, top-k (``max(top_k, 1 or 2 with beams)``),
  top-p (keep the smallest set whose probability exceeds ``top_p``), then draws from softmax.
* Greedy/sampling: a finished row (it emitted an EOS id) gets ``pad_token_id`` from then on;
  generation stops when every row is finished or at ``max_length``.
* Beam search (batch B, ``num_beams`` n): each step scores ``n * V`` continuations per row
  by accumulated log-probability and keeps the top ``max(2, 1 + #eos) * n``; those ending in
  EOS (or reaching ``max_length``) among the first n become finished hypotheses scored
  ``sum_logprob / generated_length ** length_penalty``; the best n others run on.
  ``early_stopping=True`` stops a row once it has n finished hypotheses; ``False`` stops
  when the best running beam, at the current length, cannot beat the worst finished one;
  ``"never"`` uses the longest possible length for that bound when ``length_penalty > 0``.
  Returned: the ``num_return_sequences`` best finished hypotheses per row.

Where encdec deliberately differs from Transformers 4.57 (documented in docs/generation.md):
beam outputs are padded with ``pad_token_id`` after EOS (Transformers fills with EOS when the
pad id is 0, because it tests the id for truthiness).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encdec_core.configs import _check_type
from encdec_core.errors import ConfigError, GenerationError

logger = logging.getLogger("encdec")

SPECIAL_TOKENS = ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id")

# HF keys that change decoding in ways encdec does not implement, with their neutral value.
UNSUPPORTED = {
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "penalty_alpha": None,
    "constraints": None,
    "force_words_ids": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "min_p": None,
    "guidance_scale": None,
    "sequence_bias": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0,
    "exponential_decay_length_penalty": None,
    "renormalize_logits": False,
    "max_time": None,
    "stop_strings": None,
    "dola_layers": None,
    "watermarking_config": None,
    "low_memory": None,
    "top_h": None,
}


@dataclass
class GenerationConfig:
    """HF ``generation_config.json`` fields encdec decodes with (HF defaults)."""

    max_length: int = 20  # decoder length cap, prompt included
    max_new_tokens: int | None = None  # if set, overrides max_length: prompt + this
    min_length: int = 0  # EOS banned while the decoder sequence is shorter
    min_new_tokens: int | None = None  # EOS banned while fewer tokens were generated
    early_stopping: bool | str = False  # beam stopping rule: True, False or "never"
    do_sample: bool = False  # multinomial sampling instead of argmax / top-k beams
    num_beams: int = 1  # 1: greedy or sampling; >1: beam search
    temperature: float = 1.0  # sampling: logits / temperature
    top_k: int = 50  # sampling: keep the k best tokens (0: off)
    top_p: float = 1.0  # sampling: nucleus mass (1.0: off)
    repetition_penalty: float = 1.0  # 1.0: off
    length_penalty: float = 1.0  # beam score = logprob / length ** length_penalty
    no_repeat_ngram_size: int = 0  # 0: off
    bad_words_ids: list | None = None  # token sequences never to generate
    forced_bos_token_id: int | None = None  # the first generated token
    forced_eos_token_id: int | list | None = None  # the last token at max_length
    num_return_sequences: int = 1  # per input row (<= num_beams for beam search)
    output_scores: bool = False  # with return_dict_in_generate: per-step processed scores
    return_dict_in_generate: bool = False  # return a GenerateOutput instead of ids
    use_cache: bool = True  # keys/values cached between steps
    decoder_start_token_id: int | None = None  # first decoder token (falls back to bos)
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None  # one id or several
    pad_token_id: int | None = None  # fills rows that finished
    prompt_lookup_num_tokens: int | None = None  # assisted: K candidates per call copied from the source
    max_matching_ngram_size: int | None = None  # prompt lookup: longest n-gram matched (None: 2)
    num_assistant_tokens: int = 20  # assisted with assistant_model=: K draft tokens per call
    num_assistant_tokens_schedule: str = "constant"  # K stays fixed (static shapes): every schedule is constant
    extra: dict[str, Any] = field(default_factory=dict)  # keys we do not model, kept verbatim

    def __post_init__(self) -> None:
        for name, hint in _hints().items():
            setattr(self, name, _check_type("GenerationConfig", name, getattr(self, name), hint))

    # ------------------------------------------------------------------ file format
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "generation_config") -> GenerationConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        try:
            return cls(**known, extra={k: v for k, v in data.items() if k not in names})
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> GenerationConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read a generation config: {e}") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """What differs from HF's defaults, plus the kept keys (HF writes the same way)."""
        default = GenerationConfig()
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "extra" and getattr(self, f.name) != getattr(default, f.name)
        }
        out.update(self.extra)
        return dict(sorted(out.items()))

    @classmethod
    def from_model_config(cls, config: Any) -> GenerationConfig:
        """Special tokens from the model config; a seq2seq config's unset ones from its decoder (as HF)."""
        values = {k: getattr(config, k, None) for k in SPECIAL_TOKENS}
        decoder = getattr(config, "decoder", None)
        if decoder is not None:
            for k in SPECIAL_TOKENS:
                if values[k] is None:
                    values[k] = getattr(decoder, k, None)
        # the generation settings an architecture's config carries (BART's forced_eos_token_id), as HF pulls them
        for part in (config, decoder):
            for k in getattr(type(part), "generation_keys", ()):
                if values.get(k) is None:
                    values[k] = getattr(part, k)
        gen = cls(**values)
        gen.extra["_from_model_config"] = True
        return gen

    # What Transformers' Seq2SeqTrainer reads and writes on ``model.generation_config`` (HF's GenerationConfig API).
    @property
    def _from_model_config(self) -> bool:
        return bool(self.extra.get("_from_model_config", False))

    @_from_model_config.setter
    def _from_model_config(self, value: bool) -> None:
        self.extra["_from_model_config"] = bool(value)

    @staticmethod
    def _get_default_generation_params() -> dict[str, Any]:
        """HF's defaults of the settings encdec decodes with."""
        default = GenerationConfig()
        return {f.name: getattr(default, f.name) for f in dataclasses.fields(default) if f.name != "extra"}

    def update(self, defaults_only: bool = False, **kwargs: Any) -> GenerationConfig | dict[str, Any]:
        """A copy with ``kwargs`` set; an unknown name is an error that lists the known ones.

        ``defaults_only=True`` is HF's in-place form, as Transformers' Seq2SeqTrainer calls it:
        each field that is None takes its value from ``kwargs``; the names not used are returned.
        """
        names = {f.name for f in dataclasses.fields(self)} - {"extra"}
        if defaults_only:
            used = {k: v for k, v in kwargs.items() if k in names and getattr(self, k) is None}
            for k, v in used.items():
                setattr(self, k, _check_type("GenerationConfig", k, v, _hints()[k]))
            return {k: v for k, v in kwargs.items() if k not in used}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise GenerationError(
                f"generate() got unknown argument(s) {unknown}; generation settings are {sorted(names)}"
            )
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data.update(kwargs)
        data["extra"] = dict(self.extra)
        try:
            return GenerationConfig(**data)
        except ConfigError as e:
            raise GenerationError(str(e)) from None


@functools.cache
def _hints() -> dict[str, Any]:
    """Field -> type hint, resolved once (``get_type_hints`` is slow and generate() builds configs per call)."""
    hints = typing.get_type_hints(GenerationConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(GenerationConfig) if f.name != "extra"}


@dataclass(frozen=True)
class GenerationPlan:
    """Validated settings of one ``generate`` call, lengths and special tokens resolved."""

    config: GenerationConfig
    strategy: str  # "greedy" | "sample" | "beam" | "beam_sample"
    start_id: int  # decoder start token
    eos_ids: tuple[int, ...]  # empty: no EOS stopping
    pad_id: int | None  # fills finished rows (None only when eos_ids is empty)
    prompt_length: int  # decoder prompt length (1: the start token)
    max_length: int  # decoder sequence cap, prompt included
    min_length: int  # EOS banned while the sequence is shorter than this (0: off)
    num_beams: int
    num_return_sequences: int
    candidates: int = 0  # assisted decoding: K candidate tokens verified per decoder call (0: off)
    assistant: bool = False  # assisted by a draft model (else by prompt lookup, when candidates > 0)
    lookup_ngram: int = 2  # prompt lookup: longest n-gram matched

    @property
    def max_new_tokens(self) -> int:
        return self.max_length - self.prompt_length

    @property
    def sure_new_tokens(self) -> int:
        """Tokens every row is sure to get before it can stop: all of them without EOS, else ``min_length``'s."""
        return (
            self.max_new_tokens
            if not self.eos_ids
            else max(0, min(self.min_length, self.max_length) - self.prompt_length)
        )

    @property
    def rows_per_source(self) -> int:
        """Decoder rows per source: the beams, the samples (num_return_sequences), or 1."""
        if self.num_beams > 1:
            return self.num_beams
        return self.num_return_sequences if self.config.do_sample else 1


def derived_tokens(gen: GenerationConfig) -> dict[str, Any]:
    """Snapshot of the special tokens of a config derived from the model config (else empty)."""
    return {k: getattr(gen, k) for k in SPECIAL_TOKENS} if gen.extra.get("_from_model_config") else {}


def config_for_call(
    gen: GenerationConfig, model_config: Any, derived: dict[str, Any], overrides: dict[str, Any]
) -> GenerationConfig:
    """The settings of one generate() call: ``gen`` + ``overrides``.

    A config derived from the model config follows later edits of the model config's special
    tokens (the seed's workflow sets ``model.config.decoder_start_token_id`` after building),
    unless that token was changed on the generation config itself (``derived`` is the snapshot).
    """
    if not isinstance(gen, GenerationConfig):
        raise GenerationError(f"generation_config expected an encdec GenerationConfig, got {type(gen).__name__}")
    if gen.extra.get("_from_model_config"):
        fresh = GenerationConfig.from_model_config(model_config)
        gen = gen.update(**{k: getattr(fresh, k) for k in derived if getattr(gen, k) == derived[k]})
    return gen.update(**overrides)


def start_token_id(gen: GenerationConfig) -> int:
    """The decoder start token: ``decoder_start_token_id``, else ``bos_token_id``; a clear error if neither."""
    start = gen.decoder_start_token_id if gen.decoder_start_token_id is not None else gen.bos_token_id
    if start is None:
        raise GenerationError(
            "generate: no decoder_start_token_id (nor bos_token_id) is set: set model.config.decoder_start_token_id "
            "(e.g. the tokenizer's cls/bos id) or pass decoder_start_token_id=..."
        )
    return _as_ids(start, "decoder_start_token_id")[0]


def _as_ids(value: Any, name: str) -> tuple[int, ...]:
    if value is None:
        return ()
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise GenerationError(f"{name} expected a non-negative int or a list of them, got {value!r}")
    return tuple(values)


def resolve(
    gen: GenerationConfig,
    *,
    prompt_length: int,
    vocab_size: int,
    max_positions: int | None = None,
    assistant: bool = False,
    assistant_positions: int | None = None,
) -> GenerationPlan:
    """Check ``gen`` for one call and work out its lengths, special tokens and strategy.

    ``max_positions``: the decoder's position-embedding count, which ``max_length`` must not exceed;
    ``assistant``: an ``assistant_model`` was given (``assistant_positions``: its decoder's count).
    """
    for key, neutral in UNSUPPORTED.items():
        if gen.extra.get(key, neutral) not in (neutral, None):
            raise GenerationError(
                f"generation_config.{key}={gen.extra[key]!r} is not supported by encdec "
                f"(set it to {neutral!r}); supported strategies: greedy, beam search, sampling"
            )
    start = start_token_id(gen)
    eos = _as_ids(gen.eos_token_id, "eos_token_id")
    pad = gen.pad_token_id
    if pad is None and eos:
        pad = eos[0]
        logger.info("generate: pad_token_id is not set; finished rows are padded with eos_token_id %d", pad)
    for name, ids in (
        ("decoder_start_token_id", (start,)),
        ("eos_token_id", eos),
        ("pad_token_id", _as_ids(pad, "pad_token_id")),
        ("forced_bos_token_id", _as_ids(gen.forced_bos_token_id, "forced_bos_token_id")),
        ("forced_eos_token_id", _as_ids(gen.forced_eos_token_id, "forced_eos_token_id")),
    ):
        bad = [i for i in ids if i >= vocab_size]
        if bad:
            raise GenerationError(f"{name}={bad[0]} is outside the decoder vocabulary [0, {vocab_size})")
    _check_ranges(gen)
    max_length = prompt_length + gen.max_new_tokens if gen.max_new_tokens is not None else gen.max_length
    if max_length <= prompt_length:
        raise GenerationError(
            f"max_length={max_length} leaves no room to generate after a decoder prompt of {prompt_length} token(s); "
            "raise max_length or set max_new_tokens"
        )
    if max_positions is not None and max_length > max_positions:
        raise GenerationError(
            f"max_length={max_length} (prompt {prompt_length} + new tokens) exceeds the decoder's {max_positions} "
            "positions; lower max_length / max_new_tokens"
        )
    min_length = gen.min_length
    if gen.min_new_tokens is not None:
        min_length = max(min_length, prompt_length + gen.min_new_tokens)
    for words in gen.bad_words_ids or []:
        _as_ids(words, "bad_words_ids")
    beams = gen.num_beams
    strategy = ("beam_sample" if gen.do_sample else "beam") if beams > 1 else ("sample" if gen.do_sample else "greedy")
    plan = GenerationPlan(
        gen, strategy, start, eos, pad, prompt_length, max_length, min_length, beams, gen.num_return_sequences
    )
    return _assisted(plan, assistant, (max_positions, assistant_positions))


def _assisted(plan: GenerationPlan, assistant: bool, limits) -> GenerationPlan:
    """The plan with assisted decoding's settings: greedy only; K capped by the new tokens and the positions."""
    gen, lookup = plan.config, plan.config.prompt_lookup_num_tokens
    if not assistant and lookup is None:
        return plan
    if assistant and lookup is not None:
        raise GenerationError("generate: give assistant_model= or prompt_lookup_num_tokens=, not both")
    if plan.strategy != "greedy":
        raise GenerationError(
            f"assisted decoding (assistant_model= / prompt_lookup_num_tokens=) is greedy search: got {plan.strategy} "
            f"(num_beams={gen.num_beams}, do_sample={gen.do_sample}); set num_beams=1 and do_sample=False"
        )
    k = gen.num_assistant_tokens if assistant else lookup
    name = "num_assistant_tokens" if assistant else "prompt_lookup_num_tokens"
    if k < 1:
        raise GenerationError(f"generate: {name} must be >= 1, got {k}")
    ngram = 2 if gen.max_matching_ngram_size is None else gen.max_matching_ngram_size
    if ngram < 1:
        raise GenerationError(f"generate: max_matching_ngram_size must be >= 1, got {ngram}")
    k = min(k, plan.max_new_tokens)
    for limit in limits:  # the last call writes positions up to L + K - 3, which every decoder must embed
        if limit is not None:
            k = min(k, limit - plan.max_length + 2)
    k = max(k, 1)
    return dataclasses.replace(plan, candidates=k, assistant=assistant, lookup_ngram=ngram)


def _check_ranges(gen: GenerationConfig) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise GenerationError(f"generate: {what}")

    need(gen.num_beams >= 1, f"num_beams must be >= 1, got {gen.num_beams}")
    need(gen.num_return_sequences >= 1, f"num_return_sequences must be >= 1, got {gen.num_return_sequences}")
    if gen.num_beams > 1:
        need(
            gen.num_return_sequences <= gen.num_beams,
            f"num_return_sequences={gen.num_return_sequences} must be <= num_beams={gen.num_beams}",
        )
    elif not gen.do_sample:
        need(
            gen.num_return_sequences == 1,
            "greedy search returns one sequence per row: num_return_sequences must be 1 "
            f"(got {gen.num_return_sequences}); use num_beams or do_sample=True",
        )
    need(
        gen.early_stopping in (True, False, "never"),
        f"early_stopping must be True, False or 'never', got {gen.early_stopping!r}",
    )
    need(
        gen.max_new_tokens is None or gen.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {gen.max_new_tokens}"
    )
    need(gen.temperature > 0, f"temperature must be > 0, got {gen.temperature}")
    need(gen.top_k >= 0, f"top_k must be >= 0, got {gen.top_k}")
    need(0.0 < gen.top_p <= 1.0, f"top_p must be in (0, 1], got {gen.top_p}")
    need(gen.repetition_penalty > 0, f"repetition_penalty must be > 0, got {gen.repetition_penalty}")
    need(gen.no_repeat_ngram_size >= 0, f"no_repeat_ngram_size must be >= 0, got {gen.no_repeat_ngram_size}")
    bad = gen.bad_words_ids
    need(
        bad is None or (isinstance(bad, list) and all(isinstance(w, list) and w for w in bad)),
        f"bad_words_ids must be a list of non-empty lists of token ids, got {bad!r}",
    )


def mask_pad_id(probe: GenerationPlan) -> int | None:
    """The pad id a missing source ``attention_mask`` is inferred from (as HF), or None when the rule is off.

    HF infers ``input_ids != pad_token_id`` when a pad id is set and is not also an EOS id.
    """
    return probe.pad_id if probe.pad_id is not None and probe.pad_id not in probe.eos_ids else None


def prepend_start(first_tokens, start_id: int) -> bool:
    """Whether a decoder prompt gets the start token first: unless every row (first_tokens, (B,)) begins with it."""
    return not all(int(t) == start_id for t in first_tokens)


class GenerationConfigMixin:
    """The generation-config plumbing of the three wrappers (no tensors): ``set_generation_config`` and the
    call's settings."""

    def set_generation_config(self, gen: GenerationConfig) -> None:
        """Use ``gen`` for generate(); if it came from the model config, later model.config tokens still apply."""
        self.generation_config = gen
        self._derived_tokens = derived_tokens(gen)

    def _generation_config(self, generation_config: GenerationConfig | None, kwargs: dict) -> GenerationConfig:
        gen = generation_config if generation_config is not None else self.generation_config
        # Transformers' Seq2SeqTrainer passes the batch's labels and synced_gpus (ZeRO-3 / FSDP) to generate():
        # neither changes what is decoded (HF's generate ignores labels too)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("labels", "synced_gpus")}
        return config_for_call(gen, self.config, dict(getattr(self, "_derived_tokens", {})), kwargs)


def bad_words_for(gen: GenerationConfig, eos_ids: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The bad-word sequences to ban: single EOS ids are dropped (as HF), so EOS stays reachable."""
    return [tuple(w) for w in gen.bad_words_ids or [] if not (len(w) == 1 and w[0] in eos_ids)]


__all__ = [
    "GenerationConfig",
    "GenerationPlan",
    "resolve",
    "bad_words_for",
    "config_for_call",
    "derived_tokens",
    "start_token_id",
    "SPECIAL_TOKENS",
    "UNSUPPORTED",
    "GenerationConfigMixin",
    "mask_pad_id",
    "prepend_start",
]
