"""The parity checker: one checkpoint, loaded in PyTorch, TensorFlow and Flax, must compute the same numbers.

:func:`check_parity` runs the same padded batch (with labels) in each framework and compares
every output with the reference framework's (PyTorch by default), layer by layer, in the
order data flows: encoder hidden states (embeddings first), decoder hidden states
interleaved with each layer's cross-attention probabilities, logits, loss. For each it
reports the max absolute difference and the max relative one, ``max|a - b| / max|b|`` (a
norm-wise ratio: element-wise ratios explode where the reference is near zero), and the
first entry over the tolerance. With ``generate=True`` it also checks that greedy and beam
(``num_beams=3``) ids are equal across frameworks.

Tolerance: absolute and relative together, as ``numpy.allclose``, with the output's scale
for ``|b|``: an output passes when ``max|a - b| <= atol + rtol * max|b|``. fp32 rounding
error in a layer's output follows the magnitudes it was computed from, the tensor's scale,
not each element: on all-MiniLM-L6-v2 as bert2bert a logit of 0.18 is off by 4.3e-5 while
its neighbours reach 6.6, which no element-wise ``rtol`` accepts short of 5e-2, and decoder
hidden states of magnitude 10 differ by 3.4e-5 (TF) and 7.6e-5 (Flax), i.e. 3e-6 and
7e-6 of their scale. Defaults: :data:`PARITY_ATOL` = 1e-5 (``ATOL["float32"]`` of
``tests/tolerances.py``, the one place the test suite keeps tolerances; ~5e-7 is measured on
the tiny fixtures, where 1e-5 alone holds) and :data:`PARITY_RTOL` = 1e-5 (``RTOL["float32"]``
there: numpy's default, ~84 fp32 ulps), so a real bug (a dropped bias, a transposed
kernel, 1e-2 and up) is still far outside.

>>> report = check_parity("tests/fixtures/bert2gpt2/pt", frameworks=("pt", "flax"))  # doctest: +SKIP
>>> report.passed, report.comparisons[0].first_failure  # doctest: +SKIP
(True, None)
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from conversion import runners
from conversion.formats import detect
from encdec_core.errors import EncdecError, InputError

logger = logging.getLogger("encdec")

PARITY_ATOL = 1e-5  # fp32 absolute tolerance; equals tests/tolerances.py ATOL["float32"]
PARITY_RTOL = 1e-5  # fp32 tolerance relative to an output's max |reference|; equals tests/tolerances.py RTOL["float32"]
GENERATION_MODES = {"greedy": 1, "beam3": 3}  # mode -> num_beams


@dataclass
class Diff:
    """One output compared: max |a - b|, max |a - b| / max |b|, and whether it is within the tolerance.

    ``limit`` is the tolerance this output was judged by: ``atol + rtol * max|b|``.
    """

    name: str
    max_abs: float
    max_rel: float
    passed: bool
    limit: float = PARITY_ATOL


@dataclass
class Comparison:
    """One framework against the reference: every output, the first over the tolerance, and generation."""

    framework: str
    reference: str
    diffs: list[Diff]
    first_failure: str | None
    generation: dict[str, str] = field(default_factory=dict)  # mode -> equal | different | unavailable: .. | error: ..

    @property
    def passed(self) -> bool:
        gen_ok = all(v == "equal" or v.startswith("unavailable") for v in self.generation.values())
        return all(d.passed for d in self.diffs) and gen_ok


@dataclass
class ParityReport:
    """Outcome of :func:`check_parity`; ``passed`` is the verdict, ``table()`` / ``to_json()`` the details."""

    path: str
    format: str
    architecture: str
    reference: str
    frameworks: list[str]
    tolerance: float  # atol
    batch_shapes: dict[str, list[int]]
    comparisons: list[Comparison]
    ids: dict[str, dict[str, list[list[int]] | str]] = field(default_factory=dict)  # framework -> mode -> ids
    errors: dict[str, str] = field(default_factory=dict)  # framework -> why it could not run
    rtol: float = PARITY_RTOL  # relative to each output's max |reference|

    @property
    def passed(self) -> bool:
        return not self.errors and bool(self.comparisons) and all(c.passed for c in self.comparisons)

    def to_json(self, **kwargs) -> str:
        data = asdict(self)
        data["passed"] = self.passed
        for c, raw in zip(self.comparisons, data["comparisons"]):
            raw["passed"] = c.passed
        return json.dumps(data, indent=kwargs.pop("indent", 2), **kwargs)

    def table(self) -> str:
        """Markdown: one row per output, one column pair per compared framework, then generation and verdict."""
        lines = [
            f"### Parity of `{self.path}` ({self.architecture}, {self.format}) against {self.reference}",
            "",
            f"tolerance per output: max abs <= {self.tolerance:.0e} + {self.rtol:.0e} * max |{self.reference}| "
            f"(fp32, as numpy.allclose on the output's scale); verdict: **{'PASS' if self.passed else 'FAIL'}**",
            "",
        ]
        if self.comparisons:
            head = ["output"] + [f"{c.framework} {k}" for c in self.comparisons for k in ("max abs", "max rel")]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for i, d in enumerate(self.comparisons[0].diffs):
                cells = [d.name]
                for c in self.comparisons:
                    x = c.diffs[i]
                    cells += [f"{x.max_abs:.2e}" + ("" if x.passed else " ✗"), f"{x.max_rel:.2e}"]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
            for c in self.comparisons:
                gen = ", ".join(f"{m} {v}" for m, v in c.generation.items()) or "not run"
                first = f"first over tolerance: {c.first_failure}" if c.first_failure else "all within tolerance"
                lines.append(f"- {c.framework} vs {c.reference}: {first}; generated ids: {gen}")
        lines += [f"- {fw}: could not run: {why}" for fw, why in self.errors.items()]
        return "\n".join(lines) + "\n"


def _order(names: Sequence[str]) -> list[str]:
    """Data-flow order: encoder states, decoder states with each layer's cross-attention before its output, logits, loss."""

    def key(name: str) -> tuple:
        field_, _, i = name.partition(".")
        i = int(i) if i else 0
        return {
            "encoder_hidden_states": (0, i, 0),
            "decoder_hidden_states": (1, i, 1),
            "cross_attentions": (1, i + 1, 0),
            "logits": (2, 0, 0),
            "loss": (3, 0, 0),
        }[field_]

    return sorted(names, key=key)


def _label(name: str) -> str:
    field_, _, i = name.partition(".")
    short = {
        "encoder_hidden_states": "encoder.hidden_states",
        "decoder_hidden_states": "decoder.hidden_states",
        "cross_attentions": "decoder.cross_attentions",
    }.get(field_, field_)
    return f"{short}[{i}]" if i else short


def compare_outputs(
    reference: Mapping[str, np.ndarray],
    other: Mapping[str, np.ndarray],
    tolerance: float = PARITY_ATOL,
    rtol: float = PARITY_RTOL,
) -> list[Diff]:
    """Every output both runs have, in data-flow order; a shape mismatch (or a NaN) is an infinite difference.

    An output passes when ``max|a - b| <= tolerance + rtol * max|b|`` (``rtol=0``: absolute only).
    """
    diffs = []
    for name in _order([k for k in reference if k in other]):
        a, b = np.asarray(other[name], np.float64), np.asarray(reference[name], np.float64)
        if a.shape != b.shape:
            diffs.append(Diff(_label(name), float("inf"), float("inf"), False, tolerance))
            continue
        err = float(np.max(np.abs(a - b))) if a.size else 0.0
        err = float("inf") if np.isnan(err) else err
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        limit = tolerance + rtol * scale
        diffs.append(Diff(_label(name), err, err / scale if scale else err, bool(err <= limit), limit))
    return diffs


def _outcome(ref: np.ndarray | str, other: np.ndarray | str) -> str:
    """``equal`` / ``different`` for two id arrays; otherwise why the comparison could not be made.

    A generation both frameworks refuse with the same encdec error (e.g. no start token in
    the config) is the checkpoint's limit, reported "unavailable"; any other failure is an error.
    """
    if not isinstance(ref, str) and not isinstance(other, str):
        return "equal" if ref.shape == other.shape and np.array_equal(ref, other) else "different"
    texts = [x for x in (ref, other) if isinstance(x, str)]
    if (
        isinstance(ref, str)
        and isinstance(other, str)
        and ref.startswith("refused")
        and ref.split(":")[:2] == other.split(":")[:2]
    ):
        return f"unavailable: every framework refuses: {ref.removeprefix('refused: ')}"
    return f"error: {texts[0].removeprefix('refused: ')}"


def _generate_all(framework: str, model, batch, max_new_tokens: int) -> dict[str, np.ndarray | str]:
    out: dict[str, np.ndarray | str] = {}
    for mode, beams in GENERATION_MODES.items():
        try:
            out[mode] = runners.generate(framework, model, batch, num_beams=beams, max_new_tokens=max_new_tokens)
        except EncdecError as e:  # a refusal with our own error: compared with the other frameworks' (_outcome)
            out[mode] = f"refused: {type(e).__name__}: {e}"
        except Exception as e:  # a backend failing to generate fails the report, it does not stop it
            out[mode] = f"{type(e).__name__}: {e}"
    return out


def check_parity(
    path: str | os.PathLike[str],
    frameworks: Sequence[str] = runners.FRAMEWORKS,
    batch: Mapping[str, np.ndarray] | None = None,
    tolerance: float | None = None,
    plot: str | os.PathLike[str] | None = None,
    generate: bool = True,
    *,
    reference: str | None = None,
    max_new_tokens: int = 8,
    rtol: float | None = None,
) -> ParityReport:
    """Load the checkpoint at ``path`` in each of ``frameworks``, run the same batch, compare with ``reference``.

    ``batch`` defaults to :func:`conversion.runners.default_batch` (seeded, padded, with
    labels); ``tolerance`` (absolute) to :data:`PARITY_ATOL` and ``rtol`` (relative to each
    output's max magnitude) to :data:`PARITY_RTOL`; ``reference`` to "pt" when it is among
    the frameworks. ``plot="file.png"`` draws the per-layer max abs differences (needs
    matplotlib: ``pip install 'encdec[plot]'``). A framework that cannot load or run is
    reported in ``errors`` (and the report fails); a generation that every framework refuses
    with the same encdec error (e.g. no start token in the config) is reported "unavailable".
    """
    frameworks = list(dict.fromkeys(frameworks))
    if bad := [f for f in frameworks if f not in runners.FRAMEWORKS]:
        raise InputError(f"frameworks: unknown {bad}; expected some of {', '.join(runners.FRAMEWORKS)}")
    if len(frameworks) < 2:
        raise InputError(f"frameworks: parity needs at least two frameworks, got {frameworks}")
    reference = reference or ("pt" if "pt" in frameworks else frameworks[0])
    if reference not in frameworks:
        raise InputError(f"reference {reference!r} is not among the frameworks {frameworks}")
    if plot is not None:
        _pyplot()  # fail before minutes of work, not after
    det = detect(path)
    if det.kind != "encoder-decoder":
        raise InputError(f"{det.path}: parity compares encoder-decoder models; this is a standalone {det.kind}")
    batch = dict(batch) if batch is not None else runners.default_batch(det.config)
    tol = PARITY_ATOL if tolerance is None else float(tolerance)
    rel = PARITY_RTOL if rtol is None else float(rtol)
    if tol < 0 or rel < 0:
        raise InputError(f"tolerance and rtol must be >= 0, got tolerance={tol}, rtol={rel}")
    outputs, ids, errors = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="encdec-parity-") as tmp:
        for fw in frameworks:
            try:
                model = runners.load(fw, runners.loadable_folder(fw, det.path, Path(tmp)))
                outputs[fw] = runners.forward(fw, model, batch)
                if generate:
                    ids[fw] = _generate_all(fw, model, batch, max_new_tokens)
            except Exception as e:  # reported: a framework that cannot run fails the report, the others still run
                errors[fw] = f"{type(e).__name__}: {e}"
                logger.warning("parity: %s failed: %s", fw, errors[fw])
            model = None  # free it before the next framework loads
    comparisons = []
    if reference in outputs:
        for fw in frameworks:
            if fw == reference or fw not in outputs:
                continue
            diffs = compare_outputs(outputs[reference], outputs[fw], tol, rel)
            first = next((d.name for d in diffs if not d.passed), None)
            gen = {m: _outcome(ids[reference][m], ids[fw][m]) for m in GENERATION_MODES} if generate else {}
            comparisons.append(Comparison(fw, reference, diffs, first, gen))
    report = ParityReport(
        str(det.path),
        det.format,
        det.architecture,
        reference,
        frameworks,
        tol,
        {k: list(v.shape) for k, v in batch.items()},
        comparisons,
        {
            fw: {m: v.tolist() if isinstance(v, np.ndarray) else v for m, v in modes.items()}
            for fw, modes in ids.items()
        },
        errors,
        rel,
    )
    if plot is not None:
        plot_report(report, plot)
    return report


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plot= needs matplotlib, which is not installed: pip install 'encdec[plot]'") from None
    return plt


def plot_report(report: ParityReport, path: str | os.PathLike[str]) -> Path:
    """Per-layer max abs difference of each framework against the reference (log scale), each output's limit as a line.

    An exact match (difference 0) is drawn at 1e-12, the bottom of the log scale.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * max((len(c.diffs) for c in report.comparisons), default=8)), 4))
    for c in report.comparisons:
        ax.plot(range(len(c.diffs)), [max(d.max_abs, 1e-12) for d in c.diffs], marker="o", label=f"{c.framework}")
    if report.comparisons:
        names = [d.name for d in report.comparisons[0].diffs]
        ax.set_xticks(
            range(len(names)),
            [re.sub(r"^decoder\.cross_attentions", "cross", n) for n in names],
            rotation=70,
            ha="right",
            fontsize=7,
        )
    if report.comparisons:  # each output's limit: atol + rtol * its scale
        limits = [d.limit for d in report.comparisons[0].diffs]
        ax.plot(
            range(len(limits)),
            limits,
            color="red",
            linestyle="--",
            drawstyle="steps-mid",
            label=f"tolerance {report.tolerance:.0e} + {report.rtol:.0e}·max|ref|",
        )
    ax.set_yscale("log")
    ax.set_ylabel(f"max |x - {report.reference}|")
    ax.set_title(f"{report.architecture}: parity against {report.reference}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = [
    "PARITY_ATOL",
    "PARITY_RTOL",
    "Diff",
    "Comparison",
    "ParityReport",
    "check_parity",
    "compare_outputs",
    "plot_report",
]
