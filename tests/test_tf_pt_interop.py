"""Keras and PyTorch backends on the same weights: parity, cross-loading, and the seed's workaround."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf
import torch

from encdec_core import BertConfig, ConfigError, EncoderDecoderConfig, GPT2Config, RobertaConfig
from encdec_pt import EncoderDecoderModel, GPT2LMHeadModel
from encdec_tf import TFEncoderDecoderModel
from tests.conftest import FIXTURES, PAIRS, expected, tiny_gpt2, tiny_sizes
from tests.tolerances import assert_close

FIELDS = (
    "logits",
    "encoder_last_hidden_state",
    "encoder_hidden_states",
    "encoder_attentions",
    "decoder_hidden_states",
    "decoder_attentions",
    "cross_attentions",
)


def _pt_runs(model, e):
    t = {k: torch.from_numpy(v) for k, v in e.items()}
    with torch.no_grad():
        a = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], labels=t["labels"])
        b = model(
            input_ids=t["input_ids"],
            attention_mask=t["attention_mask"],
            decoder_input_ids=t["decoder_input_ids"],
            decoder_attention_mask=t["decoder_attention_mask"],
            output_attentions=True,
            output_hidden_states=True,
        )
    return a, b


def _tf_runs(model, e):
    a = model(input_ids=e["input_ids"], attention_mask=e["attention_mask"], labels=e["labels"])
    b = model(
        input_ids=e["input_ids"],
        attention_mask=e["attention_mask"],
        decoder_input_ids=e["decoder_input_ids"],
        decoder_attention_mask=e["decoder_attention_mask"],
        output_attentions=True,
        output_hidden_states=True,
    )
    return a, b


def assert_same_outputs(ours, theirs, what: str) -> float:
    """Every field of two seq2seq outputs (tensors or tuples of tensors) within the fp32 tolerance."""
    diffs = []
    for field in FIELDS:
        x, y = getattr(ours, field), getattr(theirs, field)
        if x is None or y is None:
            assert x is None and y is None, f"{what} {field}: one side is None"
            continue
        pairs = zip(x, y) if isinstance(x, tuple) else [(x, y)]
        diffs += [assert_close(np.asarray(u), np.asarray(v), what=f"{what} {field}") for u, v in pairs]
    return max(diffs)


@pytest.mark.parametrize("pair", PAIRS)
def test_pt_and_tf_agree_on_the_same_weights(tmp_path, pair):
    """Our PyTorch writer -> our Keras reader: every output, with and without labels (projection, ties included)."""
    pt = EncoderDecoderModel.from_pretrained(FIXTURES / pair / "pt")
    pt.save_pretrained(tmp_path / "ckpt")
    keras_model = TFEncoderDecoderModel.from_pretrained(tmp_path / "ckpt", strict=True)
    e = expected(pair)
    (pa, pb), (ta, tb) = _pt_runs(pt, e), _tf_runs(keras_model, e)
    assert_close(np.reshape(ta.loss, (1,)), pa.loss.numpy().reshape(1), what=f"{pair} loss")
    assert_same_outputs(ta, pa, f"{pair} labels run")
    assert_same_outputs(tb, pb, f"{pair} full run")


def test_keras_trained_model_loads_in_pytorch_with_no_flag(tmp_path):
    model = TFEncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2_proj" / "pt")
    e = expected("bert2gpt2_proj")
    with tf.GradientTape() as tape:  # one SGD step, so the weights are Keras' own, not the fixture's
        loss = model(input_ids=e["input_ids"], attention_mask=e["attention_mask"], labels=e["labels"]).loss
    grads = tape.gradient(loss, model.trainable_variables)
    for v, g in zip(model.trainable_variables, grads):
        if g is not None:  # the pooler takes no part in the loss
            v.assign_sub(0.5 * tf.convert_to_tensor(g))
    model.save_pretrained(tmp_path / "keras")
    pt, report = EncoderDecoderModel.from_pretrained(tmp_path / "keras", output_loading_info=True, strict=True)
    assert report.ok and not report.expected_new
    (pa, pb), (ta, tb) = _pt_runs(pt, e), _tf_runs(model, e)
    assert np.abs(ta.logits.numpy() - e["a.logits"]).max() > 1e-2  # the step really changed the model
    assert_close(np.reshape(ta.loss, (1,)), pa.loss.numpy().reshape(1), what="loss after the Keras step")
    assert_same_outputs(tb, pb, "Keras-trained model in PyTorch")


@pytest.mark.parametrize(
    "decoder",
    [BertConfig(**tiny_sizes()), RobertaConfig(**tiny_sizes()), GPT2Config(**tiny_gpt2())],
    ids=["bert", "roberta", "gpt2"],
)
def test_random_keras_model_with_untied_lm_head_in_pytorch(tmp_path, decoder):
    """tie_word_embeddings=False: the LM's own output matrix is a variable, saved under the table's name."""
    decoder.tie_word_embeddings = False
    config = EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(**tiny_sizes()), decoder)
    config.decoder_start_token_id, config.pad_token_id = 2, 0
    model = TFEncoderDecoderModel(config=config)
    assert model.get_output_embeddings() is not model.decoder.get_input_embeddings()
    model.save_pretrained(tmp_path / "random")
    pt = EncoderDecoderModel.from_pretrained(tmp_path / "random", strict=True)
    e = expected("bert2bert")
    (pa, pb), (ta, tb) = _pt_runs(pt, e), _tf_runs(model, e)
    assert_close(np.reshape(ta.loss, (1,)), pa.loss.numpy().reshape(1), what="untied loss")
    assert_same_outputs(tb, pb, f"untied {decoder.model_type}")


def test_keras_parts_load_in_pytorch_and_bf16_checkpoints_load_in_keras(tmp_path):
    model = TFEncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt")
    model.decoder.save_pretrained(tmp_path / "decoder")  # a standalone part, as the seed saves them
    pt_decoder = GPT2LMHeadModel.from_pretrained(tmp_path / "decoder", strict=True)
    w = model.decoder.transformer.h[1].crossattention.c_attn.weight.numpy()
    np.testing.assert_array_equal(pt_decoder.transformer.h[1].crossattention.c_attn.weight.detach().numpy(), w)

    pt = EncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt")
    pt.save_pretrained(tmp_path / "bf16", torch_dtype=torch.bfloat16)
    half = TFEncoderDecoderModel.from_pretrained(tmp_path / "bf16", strict=True)  # bf16 read, cast to float32
    e = expected("bert2gpt2")
    assert_close(_tf_runs(half, e)[1].logits, e["b.logits"], dtype="bfloat16", what="bf16 checkpoint in Keras")


@pytest.mark.parametrize("pair", ["bert2bert", "bert2gpt2_proj", "bert2bert_tied"])
def test_seed_workaround_as_written(tmp_path, monkeypatch, pair):
    """HF's documented workaround, line by line; the projection comes along (Transformers dropped it)."""
    monkeypatch.chdir(tmp_path)
    _model = EncoderDecoderModel.from_pretrained(FIXTURES / pair / "pt")

    _model.encoder.save_pretrained("./encoder")
    _model.decoder.save_pretrained("./decoder")

    model = TFEncoderDecoderModel.from_encoder_decoder_pretrained(
        "./encoder", "./decoder", encoder_from_pt=True, decoder_from_pt=True
    )
    # This is only for copying some specific attributes of this particular model.
    model.config = _model.config

    assert model.config is _model.config and model.decoder.config is _model.config.decoder
    if _model.config.tie_encoder_decoder:  # the parts held equal copies: one variable now, as in PyTorch
        assert model.encoder.embeddings.word_embeddings.weight is model.decoder.bert.embeddings.word_embeddings.weight
        assert len(model.variables) == len(model.weight_table())  # the copies are gone
    assert not model.loading_report.expected_new, str(model.loading_report)
    e = expected(pair)
    (pa, pb), (ta, tb) = _pt_runs(_model, e), _tf_runs(model, e)
    assert_close(np.reshape(ta.loss, (1,)), pa.loss.numpy().reshape(1), what=f"{pair} seed loss")
    assert_same_outputs(tb, pb, f"{pair} seed workaround")


def test_seed_workaround_refuses_a_projection_from_other_weights(tmp_path, monkeypatch, caplog):
    """Parts saved from a PyTorch model changed after loading: the checkpoint's projection is not theirs."""
    monkeypatch.chdir(tmp_path)
    _model = EncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2_proj" / "pt")
    with torch.no_grad():
        _model.decoder.transformer.ln_f.bias.add_(0.01)
    _model.encoder.save_pretrained("./encoder")
    _model.decoder.save_pretrained("./decoder")
    model = TFEncoderDecoderModel.from_encoder_decoder_pretrained(
        "./encoder", "./decoder", encoder_from_pt=True, decoder_from_pt=True
    )
    proj = model.enc_to_dec_proj.kernel.numpy()
    with caplog.at_level(logging.WARNING, logger="encdec"):
        model.config = _model.config
    assert "enc_to_dec_proj stays newly initialised" in caplog.text and "decoder.transformer.ln_f.bias" in caplog.text
    np.testing.assert_array_equal(model.enc_to_dec_proj.kernel.numpy(), proj)
    assert "enc_to_dec_proj.weight" in model.loading_report.expected_new


def test_direct_path_from_the_pytorch_checkpoint(tmp_path):
    """The recommended route: one call, PyTorch folder in, same numbers out."""
    _model = EncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2_proj" / "pt")
    _model.save_pretrained(tmp_path / "pt")
    model = TFEncoderDecoderModel.from_pretrained(tmp_path / "pt", from_pt=True, strict=True)
    e = expected("bert2gpt2_proj")
    assert_same_outputs(_tf_runs(model, e)[1], _pt_runs(_model, e)[1], "direct path")


def test_assigned_config_must_fit_the_weights():
    model = TFEncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt")
    other = EncoderDecoderModel.from_pretrained(FIXTURES / "bert2bert" / "pt").config
    with pytest.raises(ConfigError, match="decoder config does not fit"):
        model.config = other


def test_loaded_arrays_reach_tf_aligned_and_unchanged():
    """Checkpoint views sit at any byte offset; what TF gets is equal and 64-byte aligned (oneDNN aborts otherwise)."""
    from encdec_tf.modeling_utils import _tf_op

    raw = np.random.default_rng(0).standard_normal(1 + 37 * 36).astype(np.float32).tobytes()
    view = np.frombuffer(raw, np.float32, offset=4).reshape(37, 36)  # read-only, 4 bytes past an allocation
    for name, want in (("identity", view), ("transpose", view.T), ("add_axis0", view[None])):
        got = _tf_op(name, view)
        address = np.from_dlpack(got).ctypes.data  # no copy: the data TF holds
        assert address % 64 == 0, f"{name}: data at {address:#x}"
        np.testing.assert_array_equal(got.numpy(), want)
        assert tf.reduce_sum(tf.matmul(tf.reshape(got, (-1, 36)), tf.ones((36, 1)))).numpy() == pytest.approx(
            float(want.sum()), rel=1e-4
        )
