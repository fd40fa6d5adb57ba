"""The core driver (encdec_core.driver): argument routing and the rules every wrapper shares, tested once.

Framework-free: no backend is imported here; the backends' wrappers run these same functions.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from encdec_core import driver
from encdec_core.configs import BertConfig, EncoderDecoderConfig, GPT2Config, RobertaConfig
from encdec_core.errors import ConfigError, InputError
from encdec_core.registry import register_model
from encdec_core.report import LoadingReport
from encdec_core.semantics import check_label_array, decoder_inputs_from_labels

SIZES = dict(vocab_size=99, hidden_size=36, num_hidden_layers=1, num_attention_heads=3, intermediate_size=37)


def _save(folder, config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config.to_json_string())
    return folder


def test_load_kwargs_are_sorted_into_hub_flags_and_overrides():
    args = driver.split_load_kwargs(
        {
            "revision": "v2",
            "cache_dir": "/c",
            "from_tf": True,
            "low_cpu_mem_usage": True,
            "attn_implementation": "sdpa",
            "is_decoder": True,
            "hidden_dropout_prob": 0.0,
        }
    )
    assert args.hub == {"revision": "v2", "cache_dir": "/c"}
    assert args.flags == {"from_tf": True, "low_cpu_mem_usage": True, "attn_implementation": "sdpa"}
    assert args.overrides == {"is_decoder": True, "hidden_dropout_prob": 0.0}


def test_prepare_load_applies_overrides_and_keeps_flags_out_of_the_config(tmp_path):
    folder = _save(tmp_path / "bert", BertConfig(**SIZES))
    cls = SimpleNamespace(config_class=BertConfig, __name__="BertModel")
    got, config, flags = driver.prepare_load(
        cls, folder, None, {"from_flax": True, "attn_implementation": "eager", "is_decoder": True}
    )
    assert got == folder and config.is_decoder is True
    assert flags == {"from_flax": True, "attn_implementation": "eager"}
    written = json.loads(config.to_json_string())
    assert not {"from_flax", "attn_implementation"} & set(written)


def test_prepare_load_refuses_another_architecture(tmp_path):
    folder = _save(tmp_path / "gpt2", GPT2Config(vocab_size=99, n_embd=36, n_layer=1, n_head=3))
    cls = SimpleNamespace(config_class=BertConfig, __name__="BertModel")
    with pytest.raises(ConfigError, match=r"model_type 'gpt2' cannot be loaded into BertModel \(expects 'bert'\)"):
        driver.prepare_load(cls, folder, None, {})


def test_warm_start_kwargs_route_prefixes_and_wrapper_tokens():
    top, parts = driver.split_warm_start_kwargs(
        {
            "decoder_start_token_id": 2,
            "pad_token_id": 0,
            "tie_encoder_decoder": True,
            "encoder_revision": "v1",
            "encoder_hidden_dropout_prob": 0.0,
            "decoder_n_positions": 40,
            "decoder_model": "m",
        }
    )
    # decoder_start_token_id is the wrapper's token, not the decoder field "start_token_id"
    assert top == {"decoder_start_token_id": 2, "pad_token_id": 0, "tie_encoder_decoder": True}
    assert parts == {
        "encoder": {"revision": "v1", "hidden_dropout_prob": 0.0},
        "decoder": {"n_positions": 40, "model": "m"},
    }


def test_unknown_unprefixed_warm_start_argument_is_named():
    with pytest.raises(InputError, match=r"unknown argument\(s\) \['n_positions'\]"):
        driver.split_warm_start_kwargs({"n_positions": 40})


@register_model("drivertest", "bert", "encoder")
class _Encoder:
    pass


@register_model("drivertest", "gpt2", "decoder")
class _Decoder:
    pass


def test_class_for_looks_up_the_part_class_by_model_type(tmp_path):
    bert = _save(tmp_path / "bert", BertConfig(**SIZES))
    assert driver.class_for("drivertest", bert, "encoder", {}) is _Encoder
    # a config= among the part's kwargs wins over the checkpoint's
    gpt2 = GPT2Config(vocab_size=99, n_embd=36, n_layer=1, n_head=3)
    assert driver.class_for("drivertest", bert, "decoder", {"config": gpt2}) is _Decoder
    with pytest.raises(ConfigError, match="cannot be used as a decoder with cross-attention in backend 'drivertest'"):
        driver.class_for("drivertest", bert, "decoder", {})


def test_warm_start_parts_loads_both_and_makes_the_decoder_causal(tmp_path):
    enc_dir = _save(tmp_path / "bert", BertConfig(**SIZES))
    dec_dir = _save(tmp_path / "gpt2", GPT2Config(vocab_size=99, n_embd=36, n_layer=1, n_head=3))
    calls = []

    def load(part_cls, path, kw):
        calls.append((part_cls, path, dict(kw)))
        config = (
            BertConfig(**SIZES)
            if part_cls is _Encoder
            else GPT2Config(
                vocab_size=99,
                n_embd=36,
                n_layer=1,
                n_head=3,
                is_decoder=kw["is_decoder"],
                add_cross_attention=kw["add_cross_attention"],
            )
        )
        return SimpleNamespace(config=config), LoadingReport(missing=["w"] if part_cls is _Decoder else [])

    config, parts, reports = driver.warm_start_parts(
        "drivertest",
        {"encoder": enc_dir, "decoder": dec_dir},
        {"decoder_start_token_id": 5, "encoder_revision": "x"},
        load,
    )
    assert [c[0] for c in calls] == [_Encoder, _Decoder]
    assert calls[0][2] == {"revision": "x"}
    assert calls[1][2] == {"is_decoder": True, "add_cross_attention": True}
    assert isinstance(config, EncoderDecoderConfig) and config.decoder_start_token_id == 5
    assert config.decoder.is_decoder and config.decoder.add_cross_attention
    assert [r.missing for r in reports] == [[], ["decoder.w"]]  # reports named from the wrapper


def test_warm_start_parts_takes_ready_models_and_needs_a_path_otherwise(tmp_path):
    enc = SimpleNamespace(config=BertConfig(**SIZES))
    with pytest.raises(InputError, match="give a decoder path or repo id, or `decoder_model=`"):
        driver.warm_start_parts(
            "drivertest",
            {"encoder": None, "decoder": None},
            {"encoder_model": enc},
            lambda *a: pytest.fail("nothing to load"),
        )


def test_wrapper_config_and_decoder_check():
    enc, dec = SimpleNamespace(config=BertConfig(**SIZES)), SimpleNamespace(config=BertConfig(**SIZES))
    cfg = driver.wrapper_config("M", None, enc, dec)
    assert cfg.decoder.is_decoder and not dec.config.is_decoder  # the parts' configs are not edited
    with pytest.raises(ConfigError, match="M needs either `config` or both `encoder` and `decoder`"):
        driver.wrapper_config("M", None, enc, None)
    with pytest.raises(ConfigError, match="expected an EncoderDecoderConfig, got BertConfig"):
        driver.wrapper_config("M", BertConfig(**SIZES), None, None)
    with pytest.raises(ConfigError, match="must be built with add_cross_attention=True"):
        driver.check_decoder("M", dec)
    dec.config.add_cross_attention = True
    driver.check_decoder("M", dec)  # causality is set at call time: made causal, with a warning
    assert dec.config.is_decoder


def test_generation_config_is_reloaded_only_when_saved(tmp_path):
    assert driver.saved_generation_config(tmp_path) is None
    assert driver.saved_generation_config(None) is None
    (tmp_path / "generation_config.json").write_text(json.dumps({"num_beams": 3, "max_length": 7}))
    gen = driver.saved_generation_config(tmp_path)
    assert (gen.num_beams, gen.max_length) == (3, 7)


def test_the_loss_rule_shifts_labels_and_masks_pads_once():
    labels = np.array([[5, 6, 0, -100], [7, -100, -100, -100]])
    ids, mask = decoder_inputs_from_labels(labels, None, None, 0, 2, xp=np)
    assert ids.tolist() == [[2, 5, 6, 0], [2, 7, 0, 0]]
    assert mask.tolist() == [[True, True, True, False], [True, True, False, False]]
    given = np.array([[1, 1, 1, 1]] * 2)
    assert decoder_inputs_from_labels(labels, given, None, 0, 2, xp=np) == (given, None)  # never shift twice
    assert decoder_inputs_from_labels(labels, None, "m", 0, 2, xp=np, has_embeds=True) == (None, "m")
    ids, mask = decoder_inputs_from_labels(labels, None, "keep", 0, 2, xp=np)
    assert mask == "keep"  # a given decoder mask is the caller's


def test_label_values_are_checked_on_host_arrays():
    check_label_array(np.array([[0, 98, -100]]), 99)
    with pytest.raises(InputError, match=r"labels hold 99, expected token ids in \[0, 99\) or -100"):
        check_label_array(np.array([[0, 99]]), 99)
    with pytest.raises(InputError, match="labels must hold integer token ids, got dtype float32"):
        check_label_array(np.zeros((1, 2), np.float32), 99)


def test_outputs_are_assembled_with_hf_field_names():
    base = SimpleNamespace(past_key_values="pkv", hidden_states=("h",), attentions=("a",), cross_attentions=("c",))
    out = driver.causal_lm_output(base, "logits", "loss", return_dict=True)
    assert (out.loss, out.logits, out.past_key_values, out.cross_attentions) == ("loss", "logits", "pkv", ("c",))
    assert driver.causal_lm_output(base, "logits", None, return_dict=False)[0] == "logits"  # None skipped, as HF
    dec = SimpleNamespace(logits="L", past_key_values=None, hidden_states=None, attentions=None, cross_attentions=None)
    enc = driver.as_encoder_output(("E", ("e0",)))
    s2s = driver.seq2seq_output(None, dec, enc)
    assert (s2s.logits, s2s.encoder_last_hidden_state, s2s.encoder_hidden_states) == ("L", "E", ("e0",))
    assert driver.encoder_states(enc) == "E" and driver.encoder_states(("E",)) == "E"
    with pytest.raises(InputError, match="encoder_outputs expected"):
        driver.encoder_states(3)


def test_configs_own_their_vocabulary():
    bert = BertConfig(
        **SIZES,
        layer_norm_eps=1e-7,
        hidden_dropout_prob=0.2,
        attention_probs_dropout_prob=0.3,
        hidden_act="gelu_new",
        max_position_embeddings=64,
    )
    assert (bert.norm_eps, bert.hidden_dropout, bert.attn_dropout, bert.embed_dropout) == (1e-7, 0.2, 0.3, 0.2)
    assert (bert.act_name, bert.num_positions, bert.position_limit, bert.head_dim) == ("gelu_new", 64, 64, 12)
    gpt2 = GPT2Config(
        n_embd=36,
        n_head=3,
        layer_norm_epsilon=1e-6,
        resid_pdrop=0.1,
        attn_pdrop=0.2,
        embd_pdrop=0.3,
        activation_function="gelu",
        n_positions=50,
        scale_attn_by_inverse_layer_idx=True,
    )
    assert (gpt2.norm_eps, gpt2.hidden_dropout, gpt2.attn_dropout, gpt2.embed_dropout) == (1e-6, 0.1, 0.2, 0.3)
    assert (gpt2.act_name, gpt2.num_positions, gpt2.position_limit) == ("gelu", 50, 50)
    assert gpt2.attention_scale(2) == pytest.approx(1 / (12**0.5) / 3)
    assert GPT2Config(n_embd=36, n_head=3, scale_attn_weights=False).attention_scale(0) == 1.0
    roberta = RobertaConfig(**SIZES, max_position_embeddings=40)  # pad 1: positions 2.. are real tokens'
    assert (roberta.num_positions, roberta.position_limit) == (40, 38)
    assert BertConfig(**SIZES, cross_attention_hidden_size=20).cross_width == 20 and bert.cross_width == 36


def test_weight_formats_put_the_asked_framework_first():
    assert driver.weight_formats(("pt", "bin"), {}) == ("pt", "bin", "h5", "tf", "msgpack", "flax")
    assert driver.weight_formats(("pt", "tf", "h5", "bin"), {"from_flax": True})[:2] == ("msgpack", "flax")
    assert driver.weight_formats(("pt", "flax", "msgpack", "bin"), {"from_pt": True})[:2] == ("pt", "bin")


def test_save_format_follows_safe_serialization():
    assert driver.save_format(None, None, ("safetensors", "h5")) == "safetensors"
    assert driver.save_format(None, False, ("safetensors", "msgpack")) == "msgpack"
    assert driver.save_format("h5", None, ("safetensors", "h5")) == "h5"
    with pytest.raises(InputError, match="contradicts safe_serialization=True"):
        driver.save_format("h5", True, ("safetensors", "h5"))
    with pytest.raises(InputError, match=r"save_format expected one of \['safetensors', 'h5'\], got 'bin'"):
        driver.save_format("bin", None, ("safetensors", "h5"))


def test_a_typo_among_loading_keywords_is_named(tmp_path):
    folder = _save(tmp_path / "bert", BertConfig(**SIZES))
    cls = SimpleNamespace(config_class=BertConfig, __name__="BertModel")
    with pytest.raises(InputError, match=r"BertModel.from_pretrained: unknown keyword argument\(s\) \['hiden_size'\]"):
        driver.prepare_load(cls, folder, None, {"hiden_size": 12})
    _, config, _ = driver.prepare_load(cls, folder, None, {"norm_eps": 1e-6, "use_cache": False})
    assert (config.layer_norm_eps, config.use_cache) == (1e-6, False)  # our vocabulary sets HF's keys
