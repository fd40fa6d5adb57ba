"""Match a checkpoint's keys to a model's weights, framework-free.

:func:`plan_load` decides, for every stored weight of a model (from its table), which
checkpoint key fills it, and builds the :class:`~encdec_core.report.LoadingReport`:
weights filled, weights newly initialised on purpose (cross-attention, projection, pooler,
an LM head missing from a base-model checkpoint), weights missing for no good reason,
checkpoint keys not used, and shape mismatches. Backends then move the arrays.

Like HF, a base-model checkpoint (``embeddings.*``) loads into a causal LM whose base sits
under a prefix (``bert.embeddings.*``), and an LM checkpoint loads into a base model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from encdec_core.report import LoadingReport
from encdec_core.tables import Param, Tie

# Buffers that old checkpoints carry and that are recomputed, never loaded (HF drops them too).
IGNORED_SUFFIXES = (
    ".position_ids",
    ".token_type_ids",
    ".attn.bias",
    ".attn.masked_bias",
    ".crossattention.bias",
    ".crossattention.masked_bias",
)
# Groups whose absence from a checkpoint is expected when warm-starting.
EXPECTED_NEW_GROUPS = ("cross", "proj", "pooler")


@dataclass
class LoadPlan:
    """Which checkpoint key fills each model weight, and the report of the load."""

    sources: dict[str, str]  # model weight name -> checkpoint key
    report: LoadingReport
    init: list[str] = field(default_factory=list)  # weights to initialise (missing or new)


def _adapt_prefix(expected: set[str], ckpt: set[str], prefix: str) -> tuple[str, str]:
    """Return (strip, add): what to remove from / put before a checkpoint key to match the model."""
    if not prefix:
        return "", ""
    p = prefix + "."
    model_has = any(k.startswith(p) for k in expected)
    ckpt_has = any(k.startswith(p) for k in ckpt)
    if model_has and not ckpt_has:
        return "", p  # base checkpoint into an LM
    if ckpt_has and not model_has:
        return p, ""  # LM checkpoint into a base model
    return "", ""


def plan_load(
    params: Sequence[Param],
    ckpt_shapes: Mapping[str, Sequence[int]],
    model_shapes: Mapping[str, Sequence[int]],
    *,
    ties: Iterable[Tie] = (),
    base_prefix: str = "",
    source: str = "",
) -> LoadPlan:
    """Plan a load of ``params`` (the model's stored weights) from a checkpoint's keys."""
    expected = {p.pt for p in params}
    ties = list(ties)
    tied = {t.pt for t in ties}
    strip, add = _adapt_prefix(expected, set(ckpt_shapes), base_prefix)

    def to_model(key: str) -> str:
        if strip and key.startswith(strip):
            key = key[len(strip) :]
        return add + key

    sources: dict[str, str] = {}
    unexpected, mismatched, bad = [], [], set()
    tied_keys: dict[str, str] = {}
    for key in ckpt_shapes:
        name = to_model(key)
        if name in expected:
            want, got = tuple(model_shapes[name]), tuple(ckpt_shapes[key])
            if want != got:
                mismatched.append((key, want, got))
                bad.add(name)
            else:
                sources[name] = key
        elif name in tied:
            tied_keys[name] = key  # a tied duplicate (.bin keeps them)
        elif not key.endswith(IGNORED_SUFFIXES):  # recomputed buffers are dropped silently
            unexpected.append(key)
    for tie in ties:  # a checkpoint that stored the other side of a tie fills its source
        if tie.source in expected and tie.source not in sources and tie.pt in tied_keys:
            sources[tie.source] = tied_keys[tie.pt]

    absent = [p for p in params if p.pt not in sources]
    head_present = any(p.group == "head" and p.pt in sources for p in params)
    new = [
        p.pt
        for p in absent
        if p.pt not in bad and (p.group in EXPECTED_NEW_GROUPS or (p.group == "head" and not head_present))
    ]
    missing = [p.pt for p in absent if p.pt not in bad and p.pt not in set(new)]
    report = LoadingReport(
        missing=missing,
        unexpected=sorted(unexpected),
        expected_new=new,
        mismatched=mismatched,
        tied=sorted(tied),
        source=source,
    )
    return LoadPlan(sources=sources, report=report, init=[p.pt for p in absent])


def differing_copies(ties: Iterable[Tie], source: Any) -> list[str]:
    """The names ``t.pt`` of ``ties`` whose two copies ``source`` (canonical names) both holds, with different values.

    The one rule for a checkpoint that stores both sides of a tie: the copies are compared bit
    for bit. The loaders (through :func:`differing_tied_copies`) and the converter
    (``conversion.formats.read_canonical``) both decide with it.
    """
    import numpy as np

    return [
        t.pt
        for t in ties
        if t.pt in source and t.source in source and not np.array_equal(source.get(t.pt), source.get(t.source))
    ]


def differing_tied_copies(config, folder) -> list[str]:
    """The ``tie_encoder_decoder`` weights whose two copies in the PyTorch weights of ``folder`` differ.

    Transformers 4.57 stores one copy of a tied checkpoint; 5.x ignores the tie, loads a
    random encoder and saves both. Different copies mean a writer that did not tie (its
    outputs come from the two sides apart): the load must then keep both, not tie. TF and Flax
    files are left to their loaders (Transformers' TF and Flax classes honour the tie).
    """
    from encdec_core.errors import CheckpointError
    from encdec_core.formats.canonical import open_source
    from encdec_core.tables import tied_copies

    ties = tied_copies(config)
    if not ties:
        return []
    try:
        with open_source(folder, accept=("pt", "bin")) as source:
            return differing_copies(ties, source)
    except CheckpointError:  # no PyTorch weights there
        return []


__all__ = ["LoadPlan", "plan_load", "IGNORED_SUFFIXES", "differing_copies", "differing_tied_copies"]
