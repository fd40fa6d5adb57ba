"""The one report of a load: what the checkpoint filled, and what it did not.

Warm-starting a seq2seq model always leaves weights unfilled on purpose (cross-attention,
``enc_to_dec_proj``): they are listed as ``expected_new``, not as a wall of warnings.
Only missing, unexpected or mismatched keys are problems; strict mode raises one error
listing every one of them.

>>> r = LoadingReport(missing=["a.0.w", "a.1.w"], unexpected=["pooler.b"], source="ckpt/")
>>> print(r)
ckpt/: 2 missing [a.{0,1}.w]; 1 unexpected [pooler.b]
>>> r.ok
False
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from encdec_core.errors import CheckpointError, ShapeMismatchError

Shape = tuple[int, ...]


def _render_numbers(nums: tuple[int, ...]) -> str:
    """(0, 1, 2, 3, 5) -> "{0..3,5}"; one number stays bare."""
    if len(nums) == 1:
        return str(nums[0])
    runs, start = [], 0
    for i in range(1, len(nums) + 1):
        if i == len(nums) or nums[i] != nums[i - 1] + 1:
            run = nums[start:i]
            runs.append(f"{run[0]}..{run[-1]}" if len(run) >= 3 else ",".join(map(str, run)))
            start = i
    return "{" + ",".join(runs) + "}"


def group_names(names: Iterable[str]) -> list[str]:
    """Merge names that differ only in numeric parts: ``h.0.w, h.1.w`` -> ``h.{0,1}.w``.

    >>> group_names(["l.0.q", "l.1.q", "l.2.q", "l.0.k", "emb"])
    ['l.{0..2}.q', 'l.0.k', 'emb']
    """
    # A name is a tuple of parts; numeric parts become tuples of ints so they can merge.
    entries: list[tuple[Any, ...]] = [tuple((int(p),) if p.isdigit() else p for p in name.split(".")) for name in names]
    width = max((len(e) for e in entries), default=0)
    for pos in range(width - 1, -1, -1):
        merged: dict[tuple[Any, ...], set[int]] = {}  # entry with pos blanked -> numbers there
        for e in entries:
            key = e[:pos] + (None,) + e[pos + 1 :] if pos < len(e) and isinstance(e[pos], tuple) else e
            merged.setdefault(key, set()).update(e[pos] if key is not e else ())
        entries = [k if not nums else k[:pos] + (tuple(sorted(nums)),) + k[pos + 1 :] for k, nums in merged.items()]
    return [".".join(_render_numbers(p) if isinstance(p, tuple) else p for p in e) for e in entries]


def _shape(s: Iterable[int]) -> Shape:
    return tuple(int(d) for d in s)


@dataclass
class LoadingReport:
    """What a load did: every model weight and checkpoint key lands in one list."""

    missing: list[str] = field(default_factory=list)  # model weights not filled, not expected
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model did not use
    expected_new: list[str] = field(default_factory=list)  # newly initialised on purpose
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)  # key, expected, got
    tied: list[str] = field(default_factory=list)  # filled by tying to another weight
    source: str = ""  # the file or folder loaded
    # tie_encoder_decoder not honoured: these encoder weights' copies in the checkpoint differ from
    # the decoder's (a writer that ignores the tie, e.g. Transformers 5), so each side kept its own
    untied: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is missing, unexpected or mismatched."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 3) -> str:
        """One line: counts per list and its first ``limit`` (grouped) names."""

        def part(label: str, items: list[str]) -> str:
            groups = group_names(items)
            shown = ", ".join(groups[:limit]) + (f", +{len(groups) - limit} more" if len(groups) > limit else "")
            return f"{len(items)} {label} [{shown}]"

        mism = [f"{k}: expected {_shape(e)}, got {_shape(g)}" for k, e, g in self.mismatched]
        parts = [
            part(label, items)
            for label, items in (
                ("missing", self.missing),
                ("unexpected", self.unexpected),
                ("mismatched", mism),
                ("newly initialised", self.expected_new),
            )
            if items
        ]
        if self.tied:
            parts.append(f"{len(self.tied)} tied")
        if self.untied:
            parts.append(
                part(
                    "untied (tie_encoder_decoder not honoured: the checkpoint's encoder and decoder "
                    "copies differ; each side loaded its own)",
                    self.untied,
                )
            )
        return f"{self.source or 'checkpoint'}: " + ("; ".join(parts) or "all weights loaded")

    def __str__(self) -> str:
        return self.summary()

    def log(self, logger: logging.Logger) -> None:
        """Emit the summary as ONE line: a warning if anything is wrong, else info."""
        logger.log(logging.INFO if self.ok and not self.untied else logging.WARNING, "%s", self.summary())

    def raise_if(self, strict: bool) -> None:
        """In strict mode, raise one error listing every missing, unexpected, mismatched key.

        ``ShapeMismatchError`` when shapes are the only problem, else ``CheckpointError``.
        """
        if not strict or self.ok:
            return
        lines = [
            f"strict load from {self.source or 'checkpoint'} refused: {len(self.missing)} "
            f"missing, {len(self.unexpected)} unexpected, {len(self.mismatched)} mismatched"
        ]
        if self.missing:
            lines += ["missing (model weights the checkpoint does not fill):"]
            lines += [f"  {k}" for k in self.missing]
        if self.unexpected:
            lines += ["unexpected (checkpoint keys the model does not use):"]
            lines += [f"  {k}" for k in self.unexpected]
        if self.mismatched:
            lines += ["mismatched (key: model shape, checkpoint shape):"]
            lines += [f"  {k}: expected {_shape(e)}, got {_shape(g)}" for k, e, g in self.mismatched]
        only_shapes = not (self.missing or self.unexpected)
        raise (ShapeMismatchError if only_shapes else CheckpointError)("\n".join(lines))

    def prefixed(self, prefix: str) -> LoadingReport:
        """The same report with every model weight name placed under ``prefix``.

        Checkpoint keys (``unexpected``, ``mismatched``) stay as the checkpoint spells them:
        they name entries of ``source``, not weights of the composed model.
        """
        return LoadingReport(
            missing=[prefix + k for k in self.missing],
            unexpected=list(self.unexpected),
            expected_new=[prefix + k for k in self.expected_new],
            mismatched=list(self.mismatched),
            tied=[prefix + k for k in self.tied],
            source=self.source,
            untied=[prefix + k for k in self.untied],
        )

    @classmethod
    def merge(cls, reports: Iterable[LoadingReport], *, extra_new: Iterable[str] = ()) -> LoadingReport:
        """One report of several loads (warm-starting reads two checkpoints), plus weights made new after."""
        reports = list(reports)
        sources = dict.fromkeys(r.source for r in reports if r.source)  # ordered, unique
        return cls(
            missing=[k for r in reports for k in r.missing],
            unexpected=[k for r in reports for k in r.unexpected],
            expected_new=[k for r in reports for k in r.expected_new] + list(extra_new),
            mismatched=[m for r in reports for m in r.mismatched],
            tied=[k for r in reports for k in r.tied],
            source=" + ".join(sources),
            untied=[k for r in reports for k in r.untied],
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (shapes as lists)."""
        return {
            "source": self.source,
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "expected_new": list(self.expected_new),
            "mismatched": [[k, list(_shape(e)), list(_shape(g))] for k, e, g in self.mismatched],
            "tied": list(self.tied),
            "untied": list(self.untied),
        }


__all__ = ["LoadingReport", "group_names"]
