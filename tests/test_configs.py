"""Level 1: configs read and write HF config.json losslessly and refuse bad fields by name."""

from __future__ import annotations

import json

import pytest

from encdec_core import BertConfig, ConfigError, EncoderDecoderConfig, GPT2Config, RobertaConfig, load_config
from encdec_core.configs import config_from_dict
from tests.conftest import FIXTURES, PAIRS, tiny_gpt2, tiny_sizes

CONFIG_FILES = [
    FIXTURES / p / d / "config.json" for p in PAIRS for d in ("pt", "encoder", "decoder") if (FIXTURES / p / d).is_dir()
]
CONFIG_FILES += [FIXTURES / "warm" / w / "config.json" for w in ("bert", "roberta", "gpt2", "gpt2_45")]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_hf_config_round_trips_losslessly(path):
    raw = json.loads(path.read_text())
    cfg = load_config(path)
    assert cfg.to_dict() == {
        **raw,
        **({"encoder": raw["encoder"], "decoder": raw["decoder"]} if "encoder" in raw else {}),
    }
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_unknown_keys_survive_and_are_readable():
    cfg = BertConfig.from_dict({"model_type": "bert", "hidden_size": 36, "num_attention_heads": 3, "my_key": [1, 2]})
    assert cfg.my_key == [1, 2] and cfg.to_dict()["my_key"] == [1, 2]


def test_hf_defaults():
    b, r, g = BertConfig(), RobertaConfig(), GPT2Config()
    assert (b.vocab_size, b.hidden_size, b.layer_norm_eps, b.pad_token_id, b.hidden_act) == (
        30522,
        768,
        1e-12,
        0,
        "gelu",
    )
    assert (r.vocab_size, r.pad_token_id, r.bos_token_id, r.eos_token_id) == (50265, 1, 0, 2)
    assert (g.vocab_size, g.n_embd, g.layer_norm_epsilon, g.activation_function, g.intermediate_size) == (
        50257,
        768,
        1e-5,
        "gelu_new",
        3072,
    )
    assert (g.hidden_size, g.num_attention_heads, g.num_hidden_layers, g.max_position_embeddings) == (768, 12, 12, 1024)


def test_gpt2_aliases_write_hf_keys():
    g = GPT2Config(**tiny_gpt2())
    g.hidden_size = 45
    g.num_attention_heads = 5
    d = g.to_dict()
    assert d["n_embd"] == 45 and d["n_head"] == 5 and "hidden_size" not in d


def test_from_encoder_decoder_configs_marks_the_decoder():
    enc, dec = BertConfig(**tiny_sizes()), BertConfig(**tiny_sizes())
    cfg = EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    assert cfg.decoder.is_decoder and cfg.decoder.add_cross_attention
    assert not dec.is_decoder  # the caller's config is not mutated
    assert cfg.to_dict()["model_type"] == "encoder-decoder" and cfg.is_encoder_decoder


@pytest.mark.parametrize(
    "data, match",
    [
        ({"model_type": "bert", "hidden_size": "36"}, r"field 'hidden_size' expected int, got str"),
        ({"model_type": "bert", "hidden_size": 35, "num_attention_heads": 3}, r"not divisible"),
        ({"model_type": "bert", "hidden_act": "swish"}, r"field 'hidden_act'"),
        ({"model_type": "t5"}, r"unknown model_type 't5'"),
        ({"model_type": "bert", "layer_norm_eps": None}, r"'layer_norm_eps' must not be null"),
        ({"model_type": "bert", "is_decoder": "yes"}, r"'is_decoder' expected bool"),
        ({"model_type": "encoder-decoder", "encoder": {"model_type": "bert"}}, r"missing field 'decoder'"),
        (
            {
                "model_type": "encoder-decoder",
                "encoder": {"model_type": "bert"},
                "decoder": {"model_type": "gpt2", "is_decoder": True},
            },
            r"add_cross_attention",
        ),
        (
            {
                "model_type": "encoder-decoder",
                "encoder": {"model_type": "bert"},
                "decoder": {
                    "model_type": "gpt2",
                    "is_decoder": True,
                    "add_cross_attention": True,
                    "cross_attention_hidden_size": 512,
                },
            },
            r"cross_attention_hidden_size' is 512.*encoder's hidden_size is 768",
        ),
        ([1, 2], r"expected a JSON object"),
    ],
)
def test_bad_configs_name_the_field(data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data)


def test_malformed_json_names_file_and_line(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{\n  "model_type": "bert",\n  "hidden_size": 36,,\n}')
    with pytest.raises(ConfigError, match=r"config.json: malformed JSON at line 3"):
        load_config(tmp_path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path)
