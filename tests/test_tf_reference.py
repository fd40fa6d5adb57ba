"""Level 2: the Keras backend against Transformers 4.57 outputs on the committed fixtures.

Every pair is loaded from our canonical checkpoint (``pt/``, and ``pt_sharded``/``pt_bin``
where committed) and from the files Transformers' TF class wrote (``tf/`` h5, ``tf_sharded``);
the harness below is shared by the other TF tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from encdec_core import load_config
from encdec_core.registry import model_class
from encdec_tf import TFEncoderDecoderModel
from tests.conftest import FIXTURES, PAIRS, compare_to_reference, expected
from tests.tolerances import assert_close

FORMATS = ["pt", "tf", "tf_sharded", "pt_sharded", "pt_bin"]
CASES = [(p, f) for p in PAIRS for f in FORMATS if (FIXTURES / p / f).is_dir()]


def batch(e, *keys):
    return {k: tf.constant(e[k]) for k in keys}


def run_reference_batch(model, e):
    """Run A (labels only) and run B (explicit decoder inputs, all outputs) of the fixture."""
    a = model(**batch(e, "input_ids", "attention_mask", "labels"))
    b = model(
        **batch(e, "input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask"),
        output_attentions=True,
        output_hidden_states=True,
    )
    return a, b


@pytest.mark.parametrize("pair,fmt", CASES, ids=[f"{p}-{f}" for p, f in CASES])
def test_fixture_matches_transformers(pair, fmt):
    model, report = TFEncoderDecoderModel.from_pretrained(FIXTURES / pair / fmt, output_loading_info=True)
    assert report.ok and not report.expected_new, str(report)
    e = expected(pair)
    a, b = run_reference_batch(model, e)
    compare_to_reference(a, b, e, f"{pair}/{fmt}")


@pytest.mark.parametrize("pair", PAIRS)
def test_labels_run_derives_hf_decoder_inputs(pair):
    """labels -> decoder_input_ids exactly as Transformers did (the mask test is in the logits above)."""
    e = expected(pair)
    model = TFEncoderDecoderModel(config=load_config(FIXTURES / pair / "pt"))
    ids = model.prepare_decoder_input_ids_from_labels(e["labels"])
    np.testing.assert_array_equal(ids.numpy(), e["a.decoder_input_ids"])


@pytest.mark.parametrize("pair", ["bert2bert", "bert2gpt2", "roberta2roberta"])
def test_standalone_parts_load_and_match(pair):
    """The seed's per-submodule checkpoints load alone (from PyTorch files) and reproduce the wrapper's numbers."""
    e = expected(pair)
    enc_cfg, dec_cfg = load_config(FIXTURES / pair / "encoder"), load_config(FIXTURES / pair / "decoder")
    encoder = model_class("tf", enc_cfg, "encoder").from_pretrained(FIXTURES / pair / "encoder", strict=True)
    decoder = model_class("tf", dec_cfg, "decoder").from_pretrained(
        FIXTURES / pair / "decoder", strict=True, from_pt=True
    )
    enc = encoder(**batch(e, "input_ids", "attention_mask"))
    dec = decoder(
        input_ids=e["decoder_input_ids"],
        attention_mask=e["decoder_attention_mask"],
        encoder_hidden_states=enc.last_hidden_state,
        encoder_attention_mask=e["attention_mask"],
    )
    assert_close(enc.last_hidden_state, e["b.encoder_last_hidden_state"], what=f"{pair} standalone encoder")
    assert_close(dec.logits, e["b.logits"], what=f"{pair} standalone decoder")
