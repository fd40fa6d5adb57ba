"""Level 2: the PyTorch backend against Transformers 4.57 outputs on the committed fixtures."""

from __future__ import annotations

import pytest
import torch

from encdec_core import load_config
from encdec_core.registry import model_class
from encdec_pt import EncoderDecoderModel
from encdec_pt.models import BertModel, GPT2LMHeadModel  # noqa: F401
from tests.conftest import FIXTURES, PAIRS, compare_to_reference, expected
from tests.tolerances import assert_close

FORMATS = ["pt", "pt_bin", "pt_sharded", "pt_bin_sharded"]
CASES = [(p, f) for p in PAIRS for f in FORMATS if (FIXTURES / p / f).is_dir()]


def _t(e, key):
    return torch.from_numpy(e[key])


def run_reference_batch(model, e):
    """Run A (labels only) and run B (explicit decoder inputs, all outputs) of the fixture."""
    with torch.no_grad():
        a = model(input_ids=_t(e, "input_ids"), attention_mask=_t(e, "attention_mask"), labels=_t(e, "labels"))
        b = model(
            input_ids=_t(e, "input_ids"),
            attention_mask=_t(e, "attention_mask"),
            decoder_input_ids=_t(e, "decoder_input_ids"),
            decoder_attention_mask=_t(e, "decoder_attention_mask"),
            output_attentions=True,
            output_hidden_states=True,
        )
    return a, b


@pytest.mark.parametrize("pair,fmt", CASES, ids=[f"{p}-{f}" for p, f in CASES])
def test_fixture_matches_transformers(pair, fmt):
    model, report = EncoderDecoderModel.from_pretrained(FIXTURES / pair / fmt, output_loading_info=True)
    assert report.ok and not report.expected_new, str(report)
    e = expected(pair)
    a, b = run_reference_batch(model, e)
    compare_to_reference(a, b, e, f"{pair}/{fmt}")


@pytest.mark.parametrize("pair", PAIRS)
def test_labels_run_derives_hf_decoder_inputs(pair):
    """labels -> decoder_input_ids and the default decoder mask exactly as Transformers did."""
    e = expected(pair)
    model = EncoderDecoderModel.from_pretrained(FIXTURES / pair / "pt")
    ids = model.prepare_decoder_input_ids_from_labels(_t(e, "labels"))
    assert torch.equal(ids, _t(e, "a.decoder_input_ids"))
    if "a.decoder_attention_mask" in e:
        assert torch.equal((ids != model.config.pad_token_id).long(), _t(e, "a.decoder_attention_mask"))


@pytest.mark.parametrize("pair", ["bert2bert", "bert2gpt2", "roberta2roberta"])
def test_standalone_parts_load_and_match(pair):
    """The seed's per-submodule checkpoints load alone and reproduce the wrapper's numbers."""
    e = expected(pair)
    enc_cfg = load_config(FIXTURES / pair / "encoder")
    dec_cfg = load_config(FIXTURES / pair / "decoder")
    encoder = model_class("pt", enc_cfg, "encoder").from_pretrained(FIXTURES / pair / "encoder", strict=True)
    decoder = model_class("pt", dec_cfg, "decoder").from_pretrained(FIXTURES / pair / "decoder", strict=True)
    with torch.no_grad():
        enc = encoder(input_ids=_t(e, "input_ids"), attention_mask=_t(e, "attention_mask"))
        dec = decoder(
            input_ids=_t(e, "decoder_input_ids"),
            attention_mask=_t(e, "decoder_attention_mask"),
            encoder_hidden_states=enc.last_hidden_state,
            encoder_attention_mask=_t(e, "attention_mask"),
        )
    assert_close(enc.last_hidden_state, e["b.encoder_last_hidden_state"], what=f"{pair} standalone encoder")
    assert_close(dec.logits, e["b.logits"], what=f"{pair} standalone decoder")
