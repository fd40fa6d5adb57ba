"""Issue 15, item 8: outputs behave like Transformers' ModelOutput (a dict of the set fields) in the three backends."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from encdec_core.outputs import BaseModelOutput, GenerateOutput, Seq2SeqLMOutput
from tests.conftest import FIXTURES, expected


def test_mapping_protocol_skips_unset_fields():
    out = Seq2SeqLMOutput(logits=np.ones((1, 2, 3)), encoder_last_hidden_state=np.zeros((1, 4, 5)))
    assert isinstance(out, dict)
    assert "logits" in out and "loss" not in out
    assert list(out.keys()) == ["logits", "encoder_last_hidden_state"]
    assert [k for k, _ in out.items()] == list(out) == ["logits", "encoder_last_hidden_state"]
    assert out.get("loss") is None and out.get("loss", 7) == 7
    assert out[0] is out.logits and out[-1] is out.encoder_last_hidden_state
    assert out.to_tuple() == tuple(out.values()) and len(out) == 2
    assert out[:1] == (out.logits,)
    with pytest.raises(KeyError):
        out["loss"]


def test_setting_a_field_updates_the_items_in_field_order():
    out = Seq2SeqLMOutput(logits="L")
    out.loss = "l"  # an earlier field set later still comes first, as in to_tuple
    assert list(out) == ["loss", "logits"] and out[0] == "l"
    out["decoder_hidden_states"] = ("h",)
    assert out.decoder_hidden_states == ("h",) and list(out) == ["loss", "logits", "decoder_hidden_states"]
    out.logits = None
    assert "logits" not in out and out.to_tuple() == ("l", ("h",))
    with pytest.raises(KeyError, match="no field 'logit'"):
        out["logit"] = 1
    with pytest.raises(TypeError):
        out.pop("loss")
    with pytest.raises(TypeError):
        del out["loss"]


def test_rebuilt_from_pairs_pickled_and_copied():
    # tf.nest / keras.tree rebuild a Mapping as type(m)((key, value) for key in m)
    out = GenerateOutput((k, v) for k, v in [("sequences", [[2, 5]]), ("sequences_scores", [0.5])])
    assert (
        out.sequences == [[2, 5]] and out.sequences_scores == [0.5] and list(out) == ["sequences", "sequences_scores"]
    )
    for clone in (pickle.loads(pickle.dumps(out)), copy.deepcopy(out), copy.copy(out)):
        assert type(clone) is GenerateOutput and dict(clone) == dict(out)
    assert BaseModelOutput(last_hidden_state=(1, 2)).last_hidden_state == (1, 2)  # a plain tuple is a value


def _check(out, framework: str):
    assert isinstance(out, dict) and "loss" in out and "logits" in out, framework
    assert "cross_attentions" not in out and out.get("cross_attentions") is None  # GPT-2 run without attentions
    assert list(out.keys())[:2] == ["loss", "logits"], framework
    assert out["loss"] is out.loss and out[0] is out.loss and out[1] is out.logits
    assert dict(out.items())["logits"] is out.logits
    assert all(v is not None for v in out.to_tuple()) and len(out.to_tuple()) == len(out)


def test_pytorch_output_is_a_mapping():
    torch = pytest.importorskip("torch")
    from encdec_pt import EncoderDecoderModel

    e = expected("bert2gpt2")
    model = EncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt")
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(e[k]) for k in ("input_ids", "attention_mask", "labels")})
    _check(out, "pt")


def test_tensorflow_output_is_a_mapping():
    tf = pytest.importorskip("tensorflow")
    from encdec_tf import TFEncoderDecoderModel

    e = expected("bert2gpt2")
    model = TFEncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt")
    out = model(**{k: tf.constant(e[k]) for k in ("input_ids", "attention_mask", "labels")})
    _check(out, "tf")  # `"loss" in out` used to raise TypeError (comparing a string with tensors)


def test_flax_output_is_a_mapping_and_a_pytree():
    jax = pytest.importorskip("jax")
    from encdec_flax import FlaxEncoderDecoderModel

    e = expected("bert2gpt2")
    model = FlaxEncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt")
    out = model(**{k: e[k] for k in ("input_ids", "attention_mask", "labels")})
    _check(out, "flax")
    doubled = jax.tree_util.tree_map(lambda x: x * 2, out)  # still a pytree: jitted functions can return it
    assert type(doubled) is Seq2SeqLMOutput and list(doubled) == list(out)
    np.testing.assert_array_equal(np.asarray(doubled.logits), 2 * np.asarray(out.logits))
