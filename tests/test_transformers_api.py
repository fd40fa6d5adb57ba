"""Transformers' API as a migrating user writes it (issue 15, items 1-4, 6, 9-12), in the three backends.

Each test is one numbered item; a behaviour the three wrappers share is parametrised by backend.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from encdec_core import BertConfig, GPT2Config
from encdec_core.errors import InputError
from tests.conftest import FIXTURES, tiny_gpt2, tiny_sizes

WARM = FIXTURES / "warm"
BACKENDS = ["pt", "tf", "flax"]
IDS = np.array([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]], np.int64)
DEC = np.array([[2, 5, 6], [2, 7, 8]], np.int64)


def wrapper(backend):
    if backend == "pt":
        from encdec_pt import EncoderDecoderModel

        return EncoderDecoderModel
    if backend == "tf":
        from encdec_tf import TFEncoderDecoderModel

        return TFEncoderDecoderModel
    from encdec_flax import FlaxEncoderDecoderModel

    return FlaxEncoderDecoderModel


def call(backend, model, **kw):
    """model(input_ids=IDS, decoder_input_ids=DEC, **kw) with each framework's tensors."""
    if backend == "pt":
        import torch

        with torch.no_grad():
            return model(input_ids=torch.tensor(IDS), decoder_input_ids=torch.tensor(DEC), **kw)
    if backend == "tf":
        return model(input_ids=IDS, decoder_input_ids=DEC, **kw)
    return model(IDS.astype(np.int32), decoder_input_ids=DEC.astype(np.int32), **kw)


def as_numpy(x):
    return x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)


# ------------------------------------------------------------------------- item 1
@pytest.mark.parametrize("backend", BACKENDS)
def test_1_config_fields_are_warm_start_overrides(backend, tmp_path):
    model = wrapper(backend).from_encoder_decoder_pretrained(
        WARM / "bert", WARM / "gpt2", return_dict=False, output_hidden_states=True, use_cache=False
    )
    assert (model.config.return_dict, model.config.output_hidden_states, model.config.use_cache) == (False, True, False)
    assert isinstance(call(backend, model), tuple)  # return_dict=None falls back to the config
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (saved["return_dict"], saved["output_hidden_states"], saved["use_cache"]) == (False, True, False)
    with pytest.raises(InputError, match=r"unknown argument\(s\) \['retrun_dict'\]"):
        wrapper(backend).from_encoder_decoder_pretrained(WARM / "bert", WARM / "gpt2", retrun_dict=False)


# ------------------------------------------------------------------------- item 2
@pytest.mark.parametrize("backend", ["pt", "tf"])
def test_2_the_wrapper_makes_the_decoder_causal_and_warns(backend, caplog):
    if backend == "pt":
        from encdec_pt import BertLMHeadModel, BertModel
    else:
        from encdec_tf import BertLMHeadModel, BertModel
    decoder = BertLMHeadModel(BertConfig(**tiny_sizes(), add_cross_attention=True))  # is_decoder left False
    with caplog.at_level(logging.WARNING, logger="encdec"):
        model = wrapper(backend)(encoder=BertModel(BertConfig(**tiny_sizes())), decoder=decoder)
    assert "is_decoder=False; set to True" in caplog.text
    if backend == "pt":
        model.eval()  # built directly: in training mode (dropout on), as a torch module
    assert decoder.config.is_decoder and model.config.decoder.is_decoder
    # causal now: the first position's logits do not see the later decoder tokens
    first = as_numpy(call(backend, model).logits)[:, 0]
    other = DEC.copy()
    other[:, 1:] = 3
    if backend == "pt":
        import torch

        with torch.no_grad():
            changed = model(input_ids=torch.tensor(IDS), decoder_input_ids=torch.tensor(other)).logits.numpy()[:, 0]
    else:
        changed = model(input_ids=IDS, decoder_input_ids=other).logits.numpy()[:, 0]
    np.testing.assert_array_equal(first, changed)


# ------------------------------------------------------------------------- item 3
def test_3_pt_warm_start_is_in_eval_mode():
    model = wrapper("pt").from_encoder_decoder_pretrained(WARM / "bert", WARM / "gpt2")
    assert not model.encoder.training and not model.decoder.training
    np.testing.assert_array_equal(as_numpy(call("pt", model).logits), as_numpy(call("pt", model).logits))


# ------------------------------------------------------------------------- items 4 and 9
@pytest.mark.parametrize("backend", BACKENDS)
def test_4_9_output_switches_come_from_the_config(backend):
    model = wrapper(backend).from_pretrained(FIXTURES / "bert2gpt2" / "pt")
    out = call(backend, model, return_dict=None)
    assert out.decoder_attentions is None and out.encoder_hidden_states is None  # defaults: False
    if backend == "pt":  # as Transformers' PyTorch class: the parts read their own configs
        model.config.decoder.output_attentions = True
        model.config.encoder.output_hidden_states = True
    else:  # Transformers' TF and Flax classes read the wrapper's config
        model.config.output_attentions = True
        model.config.output_hidden_states = True
    out = call(backend, model, return_dict=None)
    layers = model.config.decoder.num_hidden_layers
    assert len(out.decoder_attentions) == layers and len(out.cross_attentions) == layers
    assert len(out.encoder_hidden_states) == model.config.encoder.num_hidden_layers + 1
    assert call(backend, model, output_attentions=False).decoder_attentions is None  # the call wins
    model.config.return_dict = False
    assert isinstance(call(backend, model, return_dict=None), tuple)
    assert not isinstance(call(backend, model, return_dict=True), tuple)


def test_9_pt_use_cache_from_the_decoder_config():
    model = wrapper("pt").from_pretrained(FIXTURES / "bert2gpt2" / "pt")
    assert call("pt", model).past_key_values is not None
    model.config.decoder.use_cache = False
    assert call("pt", model).past_key_values is None


# ------------------------------------------------------------------------- item 10
def test_10_pt_models_built_directly_get_initializer_range_init():
    import torch

    from encdec_pt import BertModel, GPT2LMHeadModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(**tiny_sizes(vocab_size=2000), initializer_range=0.05))
    emb = bert.embeddings.word_embeddings.weight
    assert 0.045 < emb[1:].std().item() < 0.055  # HF's normal(0, initializer_range), not PyTorch's N(0, 1)
    assert torch.all(emb[0] == 0)  # the padding row
    assert torch.all(bert.embeddings.LayerNorm.weight == 1) and torch.all(bert.encoder.layer[0].output.dense.bias == 0)
    gpt2 = GPT2LMHeadModel(GPT2Config(**tiny_gpt2(vocab_size=2000)))
    assert 0.018 < gpt2.transformer.wte.weight.std().item() < 0.022
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight  # tied after the init


# ------------------------------------------------------------------------- item 11
def test_11_config_constructors_take_transformers_common_kwargs():
    config = BertConfig(**tiny_sizes(), output_attentions=True, return_dict=False, output_hidden_states=True)
    written = json.loads(config.to_json_string())
    assert (written["output_attentions"], written["return_dict"], written["output_hidden_states"]) == (
        True,
        False,
        True,
    )
    again = BertConfig.from_dict(written)
    assert (again.output_attentions, again.return_dict) == (True, False)
    assert "return_dict" not in json.loads(BertConfig(**tiny_sizes()).to_json_string())  # defaults unwritten, as HF


# ------------------------------------------------------------------------- item 12
FLAGS = {
    "pt": dict(attn_implementation="sdpa", low_cpu_mem_usage=True, from_tf=False, device_map=None),
    "tf": dict(from_tf=True, low_cpu_mem_usage=True, attn_implementation="eager"),
    "flax": dict(from_flax=False, low_cpu_mem_usage=True, attn_implementation="eager"),
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_12_loading_flags_never_reach_config_json(backend, tmp_path):
    model = wrapper(backend).from_pretrained(FIXTURES / "bert2gpt2" / "pt", **FLAGS[backend])
    model.save_pretrained(tmp_path / "m")
    text = (tmp_path / "m" / "config.json").read_text()
    assert not [flag for flag in FLAGS[backend] if f'"{flag}"' in text]


@pytest.mark.parametrize("backend", BACKENDS)
def test_12_a_typo_keyword_is_an_error_naming_it(backend):
    with pytest.raises(InputError, match=r"unknown keyword argument\(s\) \['decoder_strat_token_id'\]"):
        wrapper(backend).from_pretrained(FIXTURES / "bert2gpt2" / "pt", decoder_strat_token_id=3)


@pytest.mark.parametrize("fmt", ["tf", "flax"])
def test_12_pt_reads_a_folder_holding_only_tf_or_flax_weights(fmt, tmp_path):
    import torch

    folder = shutil.copytree(FIXTURES / "bert2bert_tied" / fmt, tmp_path / fmt)
    assert not list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
    ours, report = wrapper("pt").from_pretrained(folder, output_loading_info=True, strict=True)
    ref = wrapper("pt").from_pretrained(FIXTURES / "bert2bert_tied" / "pt")
    assert report.ok
    for name, p in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[name], p), name


# ------------------------------------------------------------------------- item 6
@pytest.mark.parametrize(
    "backend,legacy,flag", [("tf", "tf_model.h5", "from_tf"), ("flax", "flax_model.msgpack", "from_flax")]
)
def test_6_save_and_load_take_transformers_keywords(backend, legacy, flag, tmp_path):
    model = wrapper(backend).from_pretrained(FIXTURES / "bert2gpt2" / "pt", from_pt=True, revision="main")
    model.save_pretrained(tmp_path / "legacy", safe_serialization=False, max_shard_size="10MB")
    assert (tmp_path / "legacy" / legacy).exists() and not (tmp_path / "legacy" / "model.safetensors").exists()
    model.save_pretrained(tmp_path / "safe", safe_serialization=True)
    assert (tmp_path / "safe" / "model.safetensors").exists()
    expect = as_numpy(call(backend, model).logits)
    for folder, kw in ((tmp_path / "legacy", {flag: True}), (tmp_path / "safe", {"from_pt": True})):
        again = wrapper(backend).from_pretrained(folder, strict=True, **kw)
        np.testing.assert_array_equal(as_numpy(call(backend, again).logits), expect)
    with pytest.raises(InputError, match="contradicts safe_serialization"):
        model.save_pretrained(tmp_path / "x", safe_serialization=True, save_format=legacy.split(".")[-1])
