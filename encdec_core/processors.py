"""Logits processors as data, shared by the three backends: which run, in Transformers' order, with what values.

A backend implements each name of :data:`PROCESSOR_NAMES` as ``(*args, *values) -> processor``,
a processor being ``(ids (N,L) buffer, cur, scores (N,V)) -> scores`` where only ``ids[:, :cur]``
is the sequence so far; :func:`processor_table` collects them, :func:`build_processors` builds a
call's from its :func:`processor_specs`.
"""

from __future__ import annotations

from typing import NamedTuple

from encdec_core.generation import GenerationPlan, bad_words_for


class ProcessorSpec(NamedTuple):
    """One logits processor of a call: ``name``, structural ``args`` (fixed in a compiled program) and
    ``values`` (numbers a compiled program may take as inputs)."""

    name: str
    args: tuple = ()
    values: tuple = ()


def processor_specs(plan: GenerationPlan) -> tuple[ProcessorSpec, ...]:
    """The call's processors in Transformers' order, then the sampling warpers.

    Every backend maps a name to its implementation ``(*args, *values) -> processor`` where a
    processor is ``(ids (N,L) buffer, cur, scores (N,V)) -> scores`` and only ``ids[:, :cur]``
    is the sequence so far.
    """
    gen, eos, out = plan.config, plan.eos_ids, []
    if gen.repetition_penalty != 1.0:
        out.append(ProcessorSpec("repetition_penalty", (), (gen.repetition_penalty,)))
    if gen.no_repeat_ngram_size > 0:
        out.append(ProcessorSpec("no_repeat_ngram", (gen.no_repeat_ngram_size,)))
    words = bad_words_for(gen, eos)
    if words:
        out.append(ProcessorSpec("bad_words", (tuple(words),)))
    if plan.min_length > 0 and eos:
        out.append(ProcessorSpec("min_length", (), (plan.min_length, eos)))
    if gen.forced_bos_token_id is not None:
        out.append(ProcessorSpec("force", (1,), ((gen.forced_bos_token_id,),)))
    if gen.forced_eos_token_id is not None:
        forced = gen.forced_eos_token_id
        out.append(
            ProcessorSpec("force", (plan.max_length - 1,), (tuple(forced) if isinstance(forced, list) else (forced,),))
        )
    if gen.do_sample:
        keep = 2 if plan.num_beams > 1 else 1  # tokens a warper always keeps
        if gen.temperature != 1.0:
            out.append(ProcessorSpec("temperature", (), (gen.temperature,)))
        if gen.top_k:
            out.append(ProcessorSpec("top_k", (keep,), (gen.top_k,)))
        if gen.top_p < 1.0:
            out.append(ProcessorSpec("top_p", (keep,), (gen.top_p,)))
    return tuple(out)


def temperature(t):
    """Sampling temperature: scores / t (plain arithmetic, so one implementation serves the three backends)."""
    return lambda ids, cur, scores: scores / t


# every processor a backend implements, by the name processor_specs gives it (temperature is written once, here)
PROCESSOR_NAMES = (
    "repetition_penalty",
    "no_repeat_ngram",
    "bad_words",
    "min_length",
    "force",
    "temperature",
    "top_k",
    "top_p",
)


def processor_table(namespace: dict) -> dict:
    """A backend module's processors by name (``processor_table(globals())``); ``temperature`` is the core's."""
    table = {"temperature": temperature, **{n: namespace[n] for n in PROCESSOR_NAMES if n in namespace}}
    missing = [n for n in PROCESSOR_NAMES if n not in table]
    if missing:
        raise NotImplementedError(f"{namespace.get('__name__')}: no implementation of the processors {missing}")
    return table


def build_processors(specs, implementations: dict) -> list:
    """Processors from their specs: ``implementations[name](*args, *values)``."""
    return [implementations[s.name](*s.args, *s.values) for s in specs]


def run_processors(processors, ids, cur, scores):
    """Apply ``processors`` in order to the step's scores (N, V); ``ids`` (N, L) holds ``cur`` real positions."""
    for proc in processors:
        scores = proc(ids, cur, scores)
    return scores


__all__ = [
    "ProcessorSpec",
    "processor_specs",
    "temperature",
    "PROCESSOR_NAMES",
    "processor_table",
    "build_processors",
    "run_processors",
]
