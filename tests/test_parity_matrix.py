"""Level 3: the cross-framework equivalence matrix, through the converter.

Every fixture pair (projection and tied included) x every pair of frameworks. PyTorch reads
the committed canonical checkpoint; TensorFlow and Flax read what ``conversion.convert``
wrote from it (TF-named safetensors or ``tf_model.h5``; Flax-named safetensors or
``flax_model.msgpack``, alternating over the pairs so both spellings of each are covered).
Each (pair, framework) is loaded and run once per session on the same padded batch with
labels; the parametrized cases compare the cached outputs. Tolerances: ``tests/tolerances.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conversion import runners
from conversion.formats import convert, detect
from conversion.parity import PARITY_ATOL, PARITY_RTOL, Comparison, Diff, ParityReport, check_parity, compare_outputs
from encdec_core.errors import InputError
from tests.conftest import FIXTURES
from tests.tolerances import ATOL, RTOL

FRAMEWORK_PAIRS = [("pt", "tf"), ("pt", "flax"), ("tf", "flax")]
# pair -> (TF format, Flax format) the converter writes for that framework to load
FORMATS = {
    "bert2bert": ("tf", "flax"),
    "bert2gpt2": ("h5", "msgpack"),
    "roberta2roberta": ("tf", "msgpack"),
    "bert2gpt2_proj": ("h5", "flax"),
    "bert2bert_tied": ("tf", "flax"),
    # one pair per family of tests/test_families.py
    "xlmr2camembert": ("h5", "msgpack"),
    "bertgen2bertgen_tied": ("tf", "flax"),
    "electra2electra": ("h5", "flax"),
    "distilbert2gpt2": ("tf", "msgpack"),
    "bert2bart": ("h5", "msgpack"),
    "bert2mbart": ("tf", "flax"),
    "bertrel2bertrel": ("h5", "msgpack"),
}
MATRIX_PAIRS = list(FORMATS)
CASES = [(p, a, b) for p in MATRIX_PAIRS for a, b in FRAMEWORK_PAIRS]
IDS = [f"{p}-{a}-{b}" for p, a, b in CASES]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(pair, framework) -> {"outputs", "greedy", "beam3"}, computed once: load, forward, generate."""
    cache: dict[tuple[str, str], dict] = {}
    root = tmp_path_factory.mktemp("matrix")

    def get(pair: str, fw: str) -> dict:
        if (pair, fw) not in cache:
            src = FIXTURES / pair / "pt"
            folder = src
            if fw != "pt":
                fmt = FORMATS[pair][0 if fw == "tf" else 1]
                folder = convert(src, root / f"{pair}-{fmt}", to=fmt)
                assert detect(folder).format == fmt
            model, report = runners.model_class(fw).from_pretrained(folder, output_loading_info=True, log_report=False)
            assert report.ok and not report.expected_new, f"{pair} {fw}: {report}"
            batch = runners.default_batch(detect(src).config)
            cache[(pair, fw)] = {
                "outputs": runners.forward(fw, model, batch),
                "greedy": runners.generate(fw, model, batch, num_beams=1, max_new_tokens=8),
                "beam3": runners.generate(fw, model, batch, num_beams=3, max_new_tokens=8),
            }
        return cache[(pair, fw)]

    return get


def test_library_tolerance_is_the_test_suites():
    """conversion.parity documents PARITY_ATOL as tests/tolerances.py's fp32 value: keep them one number."""
    assert PARITY_ATOL == ATOL["float32"] and PARITY_RTOL == RTOL["float32"]


@pytest.mark.parametrize("pair,a,b", CASES, ids=IDS)
def test_outputs_agree(run, pair, a, b):
    """Logits, loss, every encoder / decoder hidden state and cross-attention within ATOL['float32'] (absolute only)."""
    out_a, out_b = run(pair, a)["outputs"], run(pair, b)["outputs"]
    assert set(out_a) == set(out_b) and "loss" in out_a and "cross_attentions.1" in out_a
    diffs = compare_outputs(out_a, out_b, ATOL["float32"], rtol=0.0)  # the tiny fixtures hold 1e-5 alone
    over = [f"{d.name}: {d.max_abs:.2e}" for d in diffs if not d.passed]
    assert not over, f"{pair} {a} vs {b}: over {ATOL['float32']:.0e}: {over}"


@pytest.mark.parametrize("pair,a,b", CASES, ids=IDS)
def test_generated_ids_agree(run, pair, a, b):
    """Greedy and 3-beam ids equal (no tolerance) between the two frameworks."""
    for mode in ("greedy", "beam3"):
        ids_a, ids_b = run(pair, a)[mode], run(pair, b)[mode]
        assert ids_a.shape == ids_b.shape and np.array_equal(ids_a, ids_b), f"{pair} {mode}: {a} {ids_a} != {b} {ids_b}"


def test_check_parity_converts_what_a_framework_cannot_read(tmp_path):
    """check_parity on Transformers' flax_model.msgpack: PyTorch gets a canonical conversion of it."""
    report = check_parity(FIXTURES / "bert2gpt2_proj" / "flax", frameworks=("pt", "flax"), plot=tmp_path / "p.png")
    assert report.format == "msgpack" and report.reference == "pt" and not report.errors
    assert report.passed, report.table()
    (comp,) = report.comparisons
    assert comp.first_failure is None and comp.generation == {"greedy": "equal", "beam3": "equal"}
    names = [d.name for d in comp.diffs]
    assert names[:3] == ["encoder.hidden_states[0]", "encoder.hidden_states[1]", "encoder.hidden_states[2]"]
    assert names[3:6] == ["decoder.hidden_states[0]", "decoder.cross_attentions[0]", "decoder.hidden_states[1]"]
    assert names[-2:] == ["logits", "loss"] and max(d.max_abs for d in comp.diffs) <= ATOL["float32"]
    data = json.loads(report.to_json())
    assert data["passed"] and data["ids"]["pt"]["greedy"] == data["ids"]["flax"]["greedy"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_names_the_first_layer_over_the_tolerance():
    ref = {
        "encoder_hidden_states.0": np.zeros(3),
        "encoder_hidden_states.1": np.ones(3),
        "decoder_hidden_states.0": np.zeros(2),
        "cross_attentions.0": np.full(2, 0.5),
        "decoder_hidden_states.1": np.ones(2),
        "logits": np.ones(4),
        "loss": np.float32(2.0),
    }
    other = dict(ref, **{"cross_attentions.0": np.array([0.5, 0.6]), "logits": np.array([1, 1, 1, 3.0])})
    diffs = compare_outputs(ref, other, 1e-5, rtol=0.0)
    assert [d.name for d in diffs if not d.passed] == ["decoder.cross_attentions[0]", "logits"]
    bad = next(d for d in diffs if d.name == "logits")
    assert bad.max_abs == pytest.approx(2.0) and bad.max_rel == pytest.approx(2.0)
    comp = Comparison("tf", "pt", diffs, "decoder.cross_attentions[0]", {"greedy": "equal", "beam3": "different"})
    report = ParityReport("x", "pt", "bert2bert", "pt", ["pt", "tf"], 1e-5, {}, [comp])
    assert not comp.passed and not report.passed
    table = report.table()
    assert "**FAIL**" in table and "| logits | 2.00e+00 ✗ |" in table
    assert "first over tolerance: decoder.cross_attentions[0]" in table and "beam3 different" in table
    ok = Comparison(
        "tf",
        "pt",
        [Diff("logits", 0.0, 0.0, True)],
        None,
        {"greedy": "unavailable: every framework refuses: GenerationError: no decoder_start_token_id"},
    )
    assert ok.passed  # a limit of the checkpoint itself (every framework refuses) is reported, not failed


def test_generation_outcomes():
    """Same ids: equal; a refusal every framework shares (the checkpoint's limit): unavailable; else an error."""
    from conversion.parity import _outcome

    ids = np.array([[2, 5, 6]])
    assert _outcome(ids, ids.copy()) == "equal" and _outcome(ids, ids[:, :2]) == "different"
    refused = "refused: GenerationError: no decoder_start_token_id"
    assert _outcome(refused, refused).startswith("unavailable: every framework refuses: GenerationError")
    assert _outcome(ids, refused) == "error: GenerationError: no decoder_start_token_id"
    assert _outcome("TypeError: bad", "TypeError: bad") == "error: TypeError: bad"


def test_outputs_are_judged_by_absolute_and_relative_error_together():
    """As numpy.allclose on each output's scale: |a - b| <= atol + rtol * max|b|."""
    ref = {"decoder_hidden_states.4": np.array([10.0, -3.0, 0.01]), "logits": np.array([6.6, 0.18, -2.0])}
    # the figures: hidden states of magnitude 10 off by 1.7e-5 (1.7e-6 of their scale); a
    # logit near zero off by 4.3e-5 while its neighbours reach 6.6 (element-wise rtol would need 0.24)
    other = {
        "decoder_hidden_states.4": ref["decoder_hidden_states.4"] + [1.7e-5, 0.0, 0.0],
        "logits": ref["logits"] + [0.0, 4.3e-5, 0.0],
    }
    hidden, logits = compare_outputs(ref, other, ATOL["float32"], RTOL["float32"])
    assert hidden.passed and logits.passed
    assert hidden.limit == pytest.approx(1e-5 + 1e-5 * 10.0) and logits.limit == pytest.approx(1e-5 + 1e-5 * 6.6)
    assert hidden.max_abs == pytest.approx(1.7e-5) and hidden.max_rel == pytest.approx(1.7e-6)
    assert not any(d.passed for d in compare_outputs(ref, other, ATOL["float32"], rtol=0.0))  # absolute alone: FAIL
    # a real bug stays far outside: a dropped bias of 1e-2 on hidden states of magnitude 10
    assert not compare_outputs(
        ref,
        dict(other, **{"decoder_hidden_states.4": ref["decoder_hidden_states.4"] + 1e-2}),
        ATOL["float32"],
        RTOL["float32"],
    )[0].passed
    nan = compare_outputs(ref, dict(other, logits=np.array([np.nan, 0.18, -2.0])))[1]
    assert not nan.passed and nan.max_abs == float("inf")


def test_report_shows_both_tolerances_and_both_columns():
    diffs = compare_outputs({"logits": np.array([10.0])}, {"logits": np.array([10.0 + 5e-5])})
    report = ParityReport(
        "x", "pt", "bert2bert", "pt", ["pt", "tf"], PARITY_ATOL, {}, [Comparison("tf", "pt", diffs, None, {})]
    )
    table = report.table()
    assert report.passed and "1e-05 + 1e-05 * max |pt|" in table and "**PASS**" in table
    assert "| output | tf max abs | tf max rel |" in table and "| logits | 5.00e-05 | 5.00e-06 |" in table
    assert json.loads(report.to_json())["rtol"] == PARITY_RTOL
    with pytest.raises(InputError, match="rtol"):
        check_parity(FIXTURES / "bert2gpt2" / "pt", frameworks=("pt", "flax"), rtol=-1.0)
