"""conversion.mapping: canonical arrays <-> TF / Flax names through the core tables."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES
from safetensors.numpy import load_file

from conversion.mapping import from_framework, to_framework, unconsumed
from encdec_core.configs import load_config
from encdec_core.errors import CheckpointError
from encdec_core.tables import encoder_decoder_table


@pytest.mark.parametrize("framework", ["tf", "flax"])
def test_round_trip_is_bitwise(pair, framework):
    config = load_config(FIXTURES / pair / "pt")
    arrays = load_file(FIXTURES / pair / "pt" / "model.safetensors")
    params = encoder_decoder_table(config)
    there = to_framework(arrays, params, framework)
    assert len(there) == len(params) == len(arrays)
    back = from_framework(there, params, framework)
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert np.array_equal(back[k], v), k


def test_layouts_follow_the_ops():
    config = load_config(FIXTURES / "bert2gpt2" / "pt")
    arrays = load_file(FIXTURES / "bert2gpt2" / "pt" / "model.safetensors")
    params = encoder_decoder_table(config)
    tf = to_framework(arrays, params, "tf")
    fx = to_framework(arrays, params, "flax")
    q = arrays["encoder.encoder.layer.0.attention.self.query.weight"]  # (out, in)
    assert np.array_equal(tf["encoder/bert/encoder/layer_._0/attention/self/query/kernel"], q.T)
    c = arrays["decoder.transformer.h.0.attn.c_attn.weight"]  # Conv1D (in, out)
    assert np.array_equal(fx["decoder/transformer/h/0/attn/c_attn/kernel"], c.T)
    assert tf["decoder/transformer/h_._0/attn/c_attn/bias"].shape == (1, c.shape[1])


def test_missing_and_unconsumed_are_named():
    config = load_config(FIXTURES / "bert2bert" / "pt")
    arrays = load_file(FIXTURES / "bert2bert" / "pt" / "model.safetensors")
    params = encoder_decoder_table(config)
    arrays.pop("decoder.bert.embeddings.LayerNorm.weight")
    with pytest.raises(CheckpointError, match=r"decoder\.bert\.embeddings\.LayerNorm\.weight"):
        to_framework(arrays, params, "tf")
    tf = to_framework(arrays, params, "tf", missing="ignore")
    tf["encoder/stray"] = np.zeros(1)
    assert unconsumed(tf, params, "tf") == ["encoder/stray"]
    with pytest.raises(CheckpointError, match="decoder/bert/embeddings/LayerNorm/gamma"):
        from_framework(tf, params, "tf")
