"""Level 1: weight tables against the names Transformers 4.57 writes, and every op's inverse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from encdec_core import BertConfig, EncoderDecoderConfig, GPT2Config, RobertaConfig
from encdec_core.tables import OPS, apply_op, encoder_decoder_table, model_table
from tests.conftest import FIXTURES

NAMES = FIXTURES / "hf_names"
# The fact sheet's tiny models: vocab 99, hidden 32, 2 layers, 4 heads, intermediate 37, 64 positions.
SIZES = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)


def _config(pair: str) -> EncoderDecoderConfig:
    enc_t, dec_t = pair.split("2", 1)
    make = {"bert": BertConfig, "roberta": RobertaConfig}
    dec = (
        GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        if dec_t == "gpt2"
        else make[dec_t](**SIZES)
    )
    return EncoderDecoderConfig.from_encoder_decoder_configs(make[enc_t](**SIZES), dec)


@pytest.mark.parametrize("pair", ["bert2bert", "bert2gpt2", "roberta2roberta"])
def test_tables_match_transformers_names_in_three_frameworks(pair):
    ref = json.loads((NAMES / f"{pair}.json").read_text())
    table = encoder_decoder_table(_config(pair))
    shapes_pt = dict((k, tuple(s)) for k, s in ref["pt_state_dict"])
    assert {p.pt for p in table} == set(ref["pt_safetensors_keys"])
    tf_ref = {k.split("/", 1)[1]: tuple(s) for k, s in ref["tf_weight_names"]}  # drop the model scope
    assert {p.tf + ":0" for p in table} == set(tf_ref)
    fx_ref = {k: tuple(s) for k, s in ref["flax_params"]}
    assert {p.flax for p in table} == set(fx_ref)
    # the declared ops turn each PT shape into the TF and Flax shapes
    for p in table:
        a = np.zeros(shapes_pt[p.pt], dtype=np.float32)
        assert apply_op(p.tf_op, a).shape == tf_ref[p.tf + ":0"], p.pt
        assert apply_op(p.flax_op, a).shape == fx_ref[p.flax], p.pt


def test_projection_names():
    ref = json.loads((NAMES / "extra.json").read_text())
    cfg = _config("bert2gpt2")
    cfg.decoder.n_embd, cfg.decoder.n_head = 64, 4
    proj = [p for p in encoder_decoder_table(cfg) if p.group == "proj"]
    assert {p.pt for p in proj} == {k for k, _ in ref["proj_pt"]}
    assert {p.tf + ":0" for p in proj} == {k.split("/", 1)[1] for k, _ in ref["proj_tf"]}
    assert {p.flax for p in proj} == {k for k, _ in ref["proj_flax"]}


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_round_trips(name):
    rng = np.random.default_rng(0)
    for shape in [(3, 5), (7,), (1, 11)]:
        a = rng.standard_normal(shape).astype(np.float32)
        if name == "squeeze_axis0" and shape[0] != 1:
            continue
        if name == "transpose" and len(shape) != 2:
            continue
        b = apply_op(name, a)
        assert np.array_equal(apply_op(name, b, inverse=True), a)
        assert apply_op(OPS[name].inverse, b).shape == a.shape


def test_standalone_tables():
    bert = BertConfig(**SIZES)
    assert "pooler.dense.weight" in {p.pt for p in model_table(bert, "encoder")}
    lm = {p.pt for p in model_table(BertConfig(**SIZES, is_decoder=True, add_cross_attention=True), "decoder")}
    assert "bert.encoder.layer.1.crossattention.self.key.weight" in lm and "cls.predictions.bias" in lm
    assert "bert.pooler.dense.weight" not in lm and "cls.predictions.decoder.weight" not in lm  # tied
    untied = {p.pt for p in model_table(GPT2Config(n_embd=32, n_head=4, tie_word_embeddings=False), "decoder")}
    assert "lm_head.weight" in untied
