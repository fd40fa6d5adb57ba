"""Checkpoints both ways with Transformers 5.x, for every fixture pair (issue 15).

The fixtures were written by Transformers 4.57 with its reference outputs. Ours -> 5.x: our
save loads in 5.x with no missing or unexpected key and gives 4.57's logits. 5.x -> ours: what
5.x saves loads in ours with 5.x's own outputs. Transformers 5 ignores ``tie_encoder_decoder``:
from 4.57's tied checkpoint (one copy) it builds a random encoder and saves both copies, which
then differ; ours loads that untied, as 5.x computes, and says so in the report. A tied
checkpoint we write holds both copies (equal), so 5.x reads the tied model right, and so does
4.57 (it loads both and ties the encoder to the decoder's copy).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from encdec_core.tables import tied_copies
from encdec_pt import EncoderDecoderModel
from tests.conftest import FIXTURES, PAIRS, expected
from tests.tolerances import assert_close, max_abs_diff

transformers = pytest.importorskip("transformers", reason="needs Transformers 5 installed")
# make test installs the pinned Transformers 5.x (constraints.txt): an older one is a broken test environment
assert int(transformers.__version__.split(".")[0]) >= 5, f"Transformers 5.x expected, {transformers.__version__} found"


def batch(pair: str) -> dict[str, torch.Tensor]:
    e = expected(pair)
    return {k: torch.from_numpy(e[k]) for k in ("input_ids", "attention_mask", "labels")}


def theirs_from(folder):
    model, info = transformers.EncoderDecoderModel.from_pretrained(folder, output_loading_info=True)
    return model.eval(), info


@pytest.mark.parametrize("pair", PAIRS)
def test_our_save_loads_in_transformers5_with_the_reference_logits(tmp_path, pair):
    EncoderDecoderModel.from_pretrained(FIXTURES / pair / "pt").save_pretrained(tmp_path / "ours")
    theirs, info = theirs_from(tmp_path / "ours")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        logits = theirs(**batch(pair)).logits
    assert_close(logits, expected(pair)["a.logits"], what=f"{pair}: Transformers 5 on our save vs 4.57")


@pytest.mark.parametrize("pair", PAIRS)
def test_transformers5_save_loads_in_ours_with_its_outputs(tmp_path, pair):
    theirs, _ = theirs_from(FIXTURES / pair / "pt")
    theirs.save_pretrained(tmp_path / "theirs")
    ours, report = EncoderDecoderModel.from_pretrained(tmp_path / "theirs", output_loading_info=True)
    assert not report.missing and not report.unexpected and not report.mismatched, report
    with torch.no_grad():
        want, got = theirs(**batch(pair)), ours(**batch(pair))
    assert_close(got.logits, want.logits, what=f"{pair}: ours on Transformers 5's save")
    assert_close(got.loss, want.loss, what=f"{pair}: loss")
    tied = pair == "bert2bert_tied"
    assert bool(report.untied) == tied  # 5.x's random encoder copy differs from the decoder's: not tied
    if tied:
        assert "encoder.embeddings.word_embeddings.weight" in report.untied
        assert "untied (tie_encoder_decoder not honoured" in report.summary()
        assert ours.encoder.embeddings.word_embeddings.weight is not ours.decoder.bert.embeddings.word_embeddings.weight
        # the reason: 5.x computed with a random encoder (the tie was not honoured on its side either)
        assert max_abs_diff(want.logits, expected(pair)["a.logits"]) > 1e-4


def test_tied_checkpoint_we_write_holds_both_copies_and_reloads_tied(tmp_path):
    model = EncoderDecoderModel.from_pretrained(FIXTURES / "bert2bert_tied" / "pt")
    model.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["tie_encoder_decoder"] is True
    copies = tied_copies(model.config)
    encoder = {n for n, _ in model.encoder.named_parameters(remove_duplicate=False)}
    # every encoder weight but the pooler (the decoder has none) is shared with the decoder's base
    assert {t.pt for t in copies} == {f"encoder.{n}" for n in encoder if not n.startswith("pooler.")}
    with safe_open(tmp_path / "ours" / "model.safetensors", "np") as f:
        for t in copies:
            np.testing.assert_array_equal(f.get_tensor(t.pt), f.get_tensor(t.source))
    again, report = EncoderDecoderModel.from_pretrained(tmp_path / "ours", output_loading_info=True, strict=True)
    assert not report.untied and again.config.tie_encoder_decoder
    assert again.encoder.encoder.layer[1].output.dense.weight is again.decoder.bert.encoder.layer[1].output.dense.weight
    with torch.no_grad():
        assert_close(
            again(**batch("bert2bert_tied")).logits,
            expected("bert2bert_tied")["a.logits"],
            what="our tied save reloaded in ours",
        )


def test_a_tie_is_kept_when_the_copies_agree_and_dropped_when_they_differ(tmp_path):
    """Both copies equal: the tie holds (ours = 4.57's model); one copy changed: each side keeps its own."""
    from safetensors.numpy import load_file, save_file

    model = EncoderDecoderModel.from_pretrained(FIXTURES / "bert2bert_tied" / "pt")
    model.save_pretrained(tmp_path / "ck")
    arrays = load_file(tmp_path / "ck" / "model.safetensors")
    arrays["encoder.encoder.layer.0.output.dense.bias"] = arrays["encoder.encoder.layer.0.output.dense.bias"] + 0.5
    save_file(arrays, tmp_path / "ck" / "model.safetensors", metadata={"format": "pt"})
    ours, report = EncoderDecoderModel.from_pretrained(tmp_path / "ck", output_loading_info=True)
    assert report.untied == ["encoder.encoder.layer.0.output.dense.bias"] and not ours.config.tie_encoder_decoder
    bias = ours.encoder.encoder.layer[0].output.dense.bias
    assert bias is not ours.decoder.bert.encoder.layer[0].output.dense.bias
    np.testing.assert_array_equal(bias.detach().numpy(), arrays["encoder.encoder.layer.0.output.dense.bias"])
    ours.save_pretrained(tmp_path / "again")  # saved untied: config and weights say what the model is
    assert json.loads((tmp_path / "again" / "config.json").read_text())["tie_encoder_decoder"] is False


@pytest.mark.parametrize("framework", ["tf", "flax"])
def test_transformers5_tied_save_loads_untied_in_keras_and_flax(tmp_path, framework):
    pair = "bert2bert_tied"
    theirs, _ = theirs_from(FIXTURES / pair / "pt")
    theirs.save_pretrained(tmp_path / "theirs")
    e = expected(pair)
    with torch.no_grad():
        want = theirs(**batch(pair)).logits
    inputs = {k: e[k] for k in ("input_ids", "attention_mask", "labels")}
    if framework == "tf":
        tf = pytest.importorskip("tensorflow")
        from encdec_tf import TFEncoderDecoderModel as cls

        inputs = {k: tf.constant(v) for k, v in inputs.items()}
    else:
        pytest.importorskip("jax")
        from encdec_flax import FlaxEncoderDecoderModel as cls
    ours, report = cls.from_pretrained(tmp_path / "theirs", output_loading_info=True)
    assert report.untied and not report.missing and not report.unexpected, report
    assert_close(np.asarray(ours(**inputs).logits), want, what=f"{framework} on Transformers 5's tied save")
