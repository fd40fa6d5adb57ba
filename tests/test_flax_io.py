"""Flax checkpoints: canonical safetensors and HF msgpack written and read back, loading reports, strictness.

Loading builds the parameter tree shape-only and initialises only what the report calls new.
"""

from __future__ import annotations

import json
import logging

import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

import encdec_flax.modeling_utils as mu
from conversion.flax_msgpack import flatten_tree, read_flax_msgpack, write_flax_msgpack
from encdec_core import CheckpointError, ConfigError
from encdec_core.checkpoint import CheckpointReader
from encdec_flax import BertModel, FlaxEncoderDecoderModel, GPT2LMHeadModel
from tests.conftest import FIXTURES, expected
from tests.test_flax_reference import batch, load
from tests.tolerances import assert_close

WARM = FIXTURES / "warm"


def _same_params(a: dict, b: dict) -> None:
    fa, fb = flatten_tree(a), flatten_tree(b)
    assert set(fa) == set(fb)
    for k, v in fa.items():
        assert fb[k].dtype == v.dtype and np.array_equal(fb[k], v), k


@pytest.fixture
def init_calls(monkeypatch):
    """Every leaf initialised by HF's rule (the only way encdec_flax creates weights)."""
    calls = []
    orig = mu.init_param

    def spy(path, *args):
        calls.append(path)
        return orig(path, *args)

    monkeypatch.setattr(mu, "init_param", spy)
    return calls


def test_load_initialises_nothing_the_checkpoint_fills(init_calls):
    FlaxEncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt")
    assert init_calls == []


@pytest.mark.parametrize("enc,dec", [("bert", "bert"), ("bert", "gpt2"), ("roberta", "roberta"), ("bert", "gpt2_45")])
def test_warm_start_reports_and_initialises_exactly_the_new_weights(enc, dec, init_calls):
    """What Transformers 4.57 initialised when warm-starting, no more; only those leaves get an init."""
    combos = json.loads((WARM / "expected_new.json").read_text())["combos"]
    ref = next(c for c in combos if c["encoder"] == enc and c["decoder"] == dec)
    model = FlaxEncoderDecoderModel.from_encoder_decoder_pretrained(WARM / enc, WARM / dec)
    report = model.loading_report
    hf_new = {f"decoder.{k}" for k in ref["decoder_missing_keys_newly_initialised"]} - set(report.tied)
    hf_new |= set(ref["wrapper_new_weights"])
    assert set(report.expected_new) == hf_new
    assert not report.missing and not report.mismatched
    assert set(report.unexpected) == set(ref["decoder_unexpected_keys_unused"]) | set(
        ref["encoder_unexpected_keys_unused"]
    )
    flax_names = {p.pt: p.flax for p in model.weight_table()}  # the decoder's leaves are initialised by its own load
    assert sorted(init_calls) == sorted(flax_names[k].removeprefix("decoder/") for k in hf_new)


@pytest.mark.parametrize("enc,dec", [("bert", "gpt2"), ("roberta", "roberta"), ("bert", "gpt2_45")])
def test_warm_start_composes_the_parts_shapes_as_a_trace_of_the_whole_model(enc, dec):
    """The composite takes its tree from its parts' (one trace each, none of the whole): the same as a trace."""
    model = FlaxEncoderDecoderModel.from_encoder_decoder_pretrained(WARM / enc, WARM / dec)
    traced = FlaxEncoderDecoderModel(model.config, _do_init=False).shapes
    assert model.shapes == traced and any(k.startswith("decoder/") for k in traced)
    assert ("enc_to_dec_proj/kernel" in traced) == (dec == "gpt2_45")


def test_warm_start_keeps_pretrained_weights_and_routes_prefixed_kwargs():
    model = FlaxEncoderDecoderModel.from_encoder_decoder_pretrained(
        WARM / "bert",
        WARM / "gpt2",
        encoder_hidden_dropout_prob=0.0,
        decoder_from_pt=True,
        decoder_start_token_id=2,
        pad_token_id=0,
    )
    assert model.config.encoder.hidden_dropout_prob == 0.0
    assert (model.config.decoder_start_token_id, model.config.pad_token_id) == (2, 0)
    assert "start_token_id" not in model.config.decoder.extra
    _same_params(model.params["encoder"], BertModel.from_pretrained(WARM / "bert").params)
    gpt2 = flatten_tree(GPT2LMHeadModel.from_pretrained(WARM / "gpt2").params)
    ours = flatten_tree(model.params["decoder"])
    assert all(np.array_equal(ours[k], v) for k, v in gpt2.items())
    # the new cross-attention got HF's init: zero bias, unit LayerNorm, normal(0, 0.02) weights
    h0 = model.params["decoder"]["transformer"]["h"]["0"]
    assert np.all(h0["crossattention"]["c_attn"]["bias"] == 0) and np.all(h0["ln_cross_attn"]["scale"] == 1)
    assert 0.01 < float(np.std(h0["crossattention"]["q_attn"]["kernel"])) < 0.03


def test_sharded_and_bf16_saves(tmp_path):
    model = load("bert2gpt2")
    model.save_pretrained(tmp_path / "sh", max_shard_size="40KB")
    assert len(list((tmp_path / "sh").glob("model-*.safetensors"))) >= 3
    assert (tmp_path / "sh" / "model.safetensors.index.json").exists()
    _same_params(FlaxEncoderDecoderModel.from_pretrained(tmp_path / "sh").params, model.params)

    model.save_pretrained(tmp_path / "bf16", param_dtype=jnp.bfloat16)
    assert CheckpointReader(tmp_path / "bf16").dtype("decoder.transformer.wte.weight") == "BF16"
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    full = FlaxEncoderDecoderModel.from_pretrained(tmp_path / "bf16")  # cast to fp32 by default
    half = FlaxEncoderDecoderModel.from_pretrained(tmp_path / "bf16", param_dtype="auto")
    assert full.params["decoder"]["transformer"]["wte"]["embedding"].dtype == jnp.float32
    assert half.params["decoder"]["transformer"]["wte"]["embedding"].dtype == jnp.bfloat16
    e = expected("bert2gpt2")
    assert_close(full(**batch(e, "b")).logits, e["b.logits"], dtype="bfloat16", what="bf16-stored weights")


@pytest.mark.parametrize("pair", ["bert2gpt2", "roberta2roberta", "bert2bert_tied"])
def test_msgpack_save_is_transformers_flax_format(tmp_path, pair):
    """save_format="msgpack" writes HF Flax's tree (tied copies written out); read back bitwise."""
    model = load(pair)
    model.save_pretrained(tmp_path / "mp", save_format="msgpack")
    written = (tmp_path / "mp" / "flax_model.msgpack").read_bytes()
    fixture = (FIXTURES / pair / "flax" / "flax_model.msgpack").read_bytes()
    ours, hf = read_flax_msgpack(tmp_path / "mp"), flatten_tree(serialization.msgpack_restore(fixture))
    assert set(ours) == set(hf)
    for k, v in hf.items():
        assert ours[k].dtype == v.dtype and np.array_equal(ours[k], v), k
    if pair != "bert2bert_tied":  # HF wrote that one's keys unsorted; the others byte for byte
        assert written == fixture
    _same_params(FlaxEncoderDecoderModel.from_pretrained(tmp_path / "mp", strict=True).params, model.params)


def test_sharded_msgpack_is_byte_for_byte_transformers(tmp_path):
    load("bert2gpt2").save_pretrained(tmp_path / "sh", save_format="msgpack", max_shard_size="50KB")
    ref = FIXTURES / "bert2gpt2" / "flax_sharded"
    shards = sorted(p.name for p in (tmp_path / "sh").glob("flax_model-*.msgpack"))
    assert shards == sorted(p.name for p in ref.glob("flax_model-*.msgpack")) and len(shards) == 5
    for name in shards:
        assert (tmp_path / "sh" / name).read_bytes() == (ref / name).read_bytes(), name
    index = json.loads((tmp_path / "sh" / "flax_model.msgpack.index.json").read_text())
    assert index["weight_map"] == json.loads((ref / "flax_model.msgpack.index.json").read_text())["weight_map"]


def test_save_keeps_user_files_and_refuses_unknown_format(tmp_path):
    model = load("bert2gpt2")
    model.save_pretrained(tmp_path / "ck")
    (tmp_path / "ck" / "tokenizer.json").write_text("{}")
    model.save_pretrained(tmp_path / "ck", save_format="msgpack")
    assert (tmp_path / "ck" / "tokenizer.json").read_text() == "{}"
    assert not (tmp_path / "ck" / "model.safetensors").exists()  # the stale weights went with the old save
    with pytest.raises(ValueError, match="save_format expected one of"):
        model.save_pretrained(tmp_path / "x", save_format="h5")


def test_tied_copies_that_differ_are_reported(tmp_path, caplog):
    """HF Flax saves both sides of tie_encoder_decoder; if they were trained apart, the load says so."""
    flat = read_flax_msgpack(FIXTURES / "bert2bert_tied" / "flax")
    flat["encoder/encoder/layer/1/output/dense/bias"] = flat["encoder/encoder/layer/1/output/dense/bias"] + 1.0
    write_flax_msgpack(flat, tmp_path)
    (tmp_path / "config.json").write_bytes((FIXTURES / "bert2bert_tied" / "flax" / "config.json").read_bytes())
    with caplog.at_level(logging.WARNING, logger="encdec"):
        model = FlaxEncoderDecoderModel.from_pretrained(tmp_path)
    assert "1 tied weight(s) differ" in caplog.text and "encoder.encoder.layer.1.output.dense.bias" in caplog.text
    _same_params(model.params, load("bert2bert_tied").params)  # the decoder's copy is kept


def test_bin_checkpoints_load_with_from_pt():
    _same_params(
        FlaxEncoderDecoderModel.from_pretrained(FIXTURES / "bert2bert_tied" / "pt_bin", from_pt=True).params,
        load("bert2bert_tied").params,
    )


def test_strict_load_lists_every_problem():
    with pytest.raises(CheckpointError) as err:
        FlaxEncoderDecoderModel.from_pretrained(
            FIXTURES / "bert2bert" / "pt", config=load("bert2gpt2").config, strict=True
        )
    msg = str(err.value)
    assert (
        "decoder.transformer.h.1.mlp.c_fc.weight" in msg and "decoder.bert.encoder.layer.1.output.dense.weight" in msg
    )


def test_unusable_checkpoints_are_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot be loaded into GPT2LMHeadModel"):
        GPT2LMHeadModel.from_pretrained(WARM / "bert")
    (tmp_path / "config.json").write_text((WARM / "bert" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no weights found"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "flax_model.msgpack").write_bytes(b"\xc1garbage")
    with pytest.raises(CheckpointError, match="flax_model.msgpack: not a readable Flax msgpack checkpoint"):
        BertModel.from_pretrained(tmp_path)


def test_chunked_arrays_are_written_and_read_as_flax_does(tmp_path, monkeypatch):
    # flax cuts arrays over 1 GiB into chunks; a small limit on both sides exercises that form on a tiny array
    import encdec_core.formats.flax_msgpack as fm

    monkeypatch.setattr(fm, "_MAX_CHUNK_SIZE", 40)
    monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 40)
    arrays = {
        "a/kernel": np.arange(36, dtype=np.float32).reshape(4, 9),
        "a/bias": np.arange(3, dtype=np.float32),
        "b": np.arange(11, dtype=np.int64),
    }
    write_flax_msgpack(arrays, tmp_path)
    tree = {"a": {"bias": arrays["a/bias"], "kernel": arrays["a/kernel"]}, "b": arrays["b"]}
    assert (tmp_path / "flax_model.msgpack").read_bytes() == serialization.msgpack_serialize(tree)
    back = read_flax_msgpack(tmp_path)
    assert back.keys() == arrays.keys()
    for key, a in arrays.items():
        assert back[key].dtype == a.dtype and np.array_equal(back[key], a)


def test_reader_equals_flax_on_the_fixtures():
    # the reader decodes msgpack itself (no framework import); flax's own restore is the reference
    for name in ("flax", "flax_sharded"):
        folder = FIXTURES / "bert2gpt2" / name
        ours = read_flax_msgpack(folder)
        theirs = {}
        for file in sorted(folder.glob("flax_model*.msgpack")):
            theirs.update(flatten_tree(serialization.msgpack_restore(file.read_bytes())))
        assert list(ours) == list(theirs) if name == "flax" else sorted(ours) == sorted(theirs)
        for key, a in theirs.items():
            assert ours[key].dtype == a.dtype and ours[key].tobytes() == np.asarray(a).tobytes()
