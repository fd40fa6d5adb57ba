"""Keras TFEncoderDecoderModel behaviour: build, warm-start, save/load (canonical and h5), ties, call semantics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import save_file

from conversion.tf_h5 import TFH5Reader
from encdec_core import (
    BertConfig,
    CheckpointError,
    ConfigError,
    EncoderDecoderConfig,
    GPT2Config,
    InputError,
    ShapeMismatchError,
)
from encdec_tf import BertModel, GPT2LMHeadModel, TFEncoderDecoderModel, modeling_utils
from tests.conftest import FIXTURES, expected, tiny_gpt2, tiny_sizes
from tests.test_hub import fill_cache
from tests.test_tf_reference import batch, compare_to_reference, run_reference_batch
from tests.tolerances import assert_close

WARM = FIXTURES / "warm"
ROOT = FIXTURES.parents[1]


def _batch(e):
    return batch(e, "input_ids", "attention_mask", "labels")


def _logits(model, e):
    return model(**_batch(e)).logits.numpy()


def _values(model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.named_variables().items()}


@pytest.fixture(scope="module")
def bert2gpt2():
    return TFEncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt")


def test_random_init_ties_the_head_and_gives_hf_init():
    """The parts' types and flags: tests/test_wrappers.py; here Keras' variables."""
    model = TFEncoderDecoderModel(
        config=EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(**tiny_sizes()), BertConfig(**tiny_sizes()))
    )
    assert model.get_output_embeddings().table is model.decoder.bert.embeddings.word_embeddings.weight  # tied head
    word = model.encoder.embeddings.word_embeddings.weight.numpy()
    assert np.all(word[0] == 0) and 0.01 < word[1:].std() < 0.03  # HF's N(0, 0.02), PyTorch's zero padding row
    assert len(model.variables) == len(model.weight_table())
    assert len(model.trainable_variables) == len(model.weight_table()) - 2  # the pooler, unused, is frozen


def test_build_from_two_models_keeps_their_variables():
    enc = BertModel(BertConfig(**tiny_sizes()))
    dec = GPT2LMHeadModel(GPT2Config(**tiny_gpt2(n_embd=45, n_head=5), is_decoder=True, add_cross_attention=True))
    model = TFEncoderDecoderModel(encoder=enc, decoder=dec)
    assert model.encoder.embeddings.word_embeddings.weight is enc.embeddings.word_embeddings.weight  # not rebuilt


def test_warm_start_keeps_weights_inits_new_ones_and_routes_kwargs():
    model = TFEncoderDecoderModel.from_encoder_decoder_pretrained(
        WARM / "bert",
        WARM / "gpt2",
        decoder_n_positions=40,
        encoder_hidden_dropout_prob=0.0,
        decoder_start_token_id=2,
        pad_token_id=0,
    )
    enc_ref, dec_ref = BertModel.from_pretrained(WARM / "bert"), GPT2LMHeadModel.from_pretrained(WARM / "gpt2")
    np.testing.assert_array_equal(
        model.encoder.encoder.layer[1].output_.dense.kernel.numpy(),
        enc_ref.encoder.layer[1].output_.dense.kernel.numpy(),
    )
    np.testing.assert_array_equal(
        model.decoder.transformer.h[0].attn.c_attn.weight.numpy(), dec_ref.transformer.h[0].attn.c_attn.weight.numpy()
    )
    assert model.config.encoder.hidden_dropout_prob == 0.0
    assert (model.config.decoder_start_token_id, model.config.pad_token_id) == (2, 0)
    h0 = model.decoder.transformer.h[0]  # new cross-attention: zero bias, unit LayerNorm, small normal weights
    assert np.all(h0.crossattention.c_attn.bias.numpy() == 0) and np.all(h0.ln_cross_attn.gamma.numpy() == 1)
    assert 0.005 < h0.crossattention.q_attn.weight.numpy().std() < 0.05


def test_load_never_initialises_what_the_checkpoint_fills(monkeypatch):
    calls = []
    orig = modeling_utils._initializer
    monkeypatch.setattr(modeling_utils, "_initializer", lambda slot: calls.append(slot.name) or orig(slot))
    TFEncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2_proj" / "pt")
    assert calls == []
    model = TFEncoderDecoderModel.from_encoder_decoder_pretrained(WARM / "bert", WARM / "gpt2_45")
    assert {f"decoder/{c}" for c in calls if not c.startswith("enc_to_dec_proj")} | {
        c for c in calls if c.startswith("enc_to_dec_proj")
    } == {p.tf for p in model.weight_table() if p.pt in model.loading_report.expected_new}


def test_sharded_save_and_user_files_kept(tmp_path, bert2gpt2):
    out = tmp_path / "sh"
    bert2gpt2.save_pretrained(out, max_shard_size="40KB")
    assert len(list(out.glob("model-*.safetensors"))) >= 3 and (out / "model.safetensors.index.json").exists()
    (out / "tokenizer.json").write_text("{}")
    bert2gpt2.save_pretrained(out)  # now one file: the shards go, the user's file stays
    assert not list(out.glob("model-*.safetensors")) and (out / "tokenizer.json").read_text() == "{}"
    e = expected("bert2gpt2")
    np.testing.assert_array_equal(_logits(TFEncoderDecoderModel.from_pretrained(out), e), _logits(bert2gpt2, e))


def _h5_tree(path):
    """Every group/dataset of an h5 file with the model scope replaced, and its attribute names."""
    out = {}

    def visit(name, obj):
        parts = name.split("/")
        if len(parts) > 1 and parts[0] != "top_level_model_weights":
            parts[1] = "<scope>"
        out["/".join(parts)] = (
            type(obj).__name__,
            getattr(obj, "shape", None),
            str(getattr(obj, "dtype", "")),
            sorted(obj.attrs),
        )

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        root = {k: (f.attrs.get_id(k).dtype, f.attrs.get_id(k).shape) for k in f.attrs}
        groups = {g: sorted(w.split("/", 1)[1] for w in f[g].attrs["weight_names"]) for g in f.attrs["layer_names"]}
        layer_names = list(f.attrs["layer_names"])
    return out, root, groups, layer_names


@pytest.mark.parametrize("pair", ["bert2gpt2_proj", "bert2bert_tied", "roberta2roberta"])
def test_h5_save_matches_transformers_layout_and_reads_back_bitwise(tmp_path, pair):
    model = TFEncoderDecoderModel.from_pretrained(FIXTURES / pair / "pt")
    model.save_pretrained(tmp_path / "h5", save_format="h5")
    assert sorted(p.name for p in (tmp_path / "h5").iterdir()) == [
        "config.json",
        "generation_config.json",
        "tf_model.h5",
    ]
    assert _h5_tree(tmp_path / "h5" / "tf_model.h5") == _h5_tree(FIXTURES / pair / "tf" / "tf_model.h5")
    with TFH5Reader(tmp_path / "h5") as ours, TFH5Reader(FIXTURES / pair / "tf") as theirs:
        assert set(ours.keys()) == set(theirs.keys())
        for k in ours.keys():  # same values as Transformers' own TF save of the same weights
            np.testing.assert_array_equal(ours.get(k), theirs.get(k), err_msg=k)
    again = TFEncoderDecoderModel.from_pretrained(tmp_path / "h5", strict=True)
    mine, back = _values(model), _values(again)
    assert all(np.array_equal(mine[k], back[k]) for k in mine)


def test_sharded_h5_save_reads_back(tmp_path, bert2gpt2):
    bert2gpt2.save_pretrained(tmp_path / "h5", save_format="h5", max_shard_size="30KB")
    index = json.loads((tmp_path / "h5" / "tf_model.h5.index.json").read_text())
    ref = json.loads((FIXTURES / "bert2gpt2" / "tf_sharded" / "tf_model.h5.index.json").read_text())
    assert {k.split("/", 1)[1] for k in index["weight_map"]} == {k.split("/", 1)[1] for k in ref["weight_map"]}
    assert len(set(index["weight_map"].values())) > 3
    again = TFEncoderDecoderModel.from_pretrained(tmp_path / "h5", strict=True)
    mine, back = _values(bert2gpt2), _values(again)
    assert all(np.array_equal(mine[k], back[k]) for k in mine)


@pytest.mark.parametrize("pair", ["bert2gpt2", "roberta2roberta", "bert2bert"])
def test_tf_format_safetensors_with_transformers_names(tmp_path, pair):
    """A TF-format model.safetensors keyed exactly as Transformers 4.57 writes it (fact sheet) loads fully."""
    keys = json.loads((FIXTURES / "hf_names" / f"{pair}.json").read_text())["tf_safetensors_keys"]
    model = TFEncoderDecoderModel.from_pretrained(FIXTURES / pair / "pt")
    values = _values(model)
    (tmp_path / "tf_st").mkdir()
    (tmp_path / "tf_st" / "config.json").write_text((FIXTURES / pair / "pt" / "config.json").read_text())
    save_file(
        {k: values[k.removesuffix(":0")] for k in keys},
        tmp_path / "tf_st" / "model.safetensors",
        metadata={"format": "tf"},
    )
    again, report = TFEncoderDecoderModel.from_pretrained(tmp_path / "tf_st", output_loading_info=True, strict=True)
    assert report.ok and not report.expected_new
    back = _values(again)
    assert all(np.array_equal(values[k], back[k]) for k in values)


def test_hub_repo_id_from_an_offline_cache(tmp_path, monkeypatch):
    """A repo holding only Transformers' TF files, found in a pre-filled cache (no network)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = FIXTURES / "bert2gpt2" / "tf"
    fill_cache(tmp_path / "cache", "org/bert2gpt2-tf", "c" * 40, {p.name: p.read_bytes() for p in folder.iterdir()})
    model = TFEncoderDecoderModel.from_pretrained("org/bert2gpt2-tf", cache_dir=tmp_path / "cache")
    e = expected("bert2gpt2")
    assert_close(_logits(model, e), e["a.logits"], what="hub h5")


def test_shape_mismatch_is_named():
    config = GPT2Config.from_dict(json.loads((WARM / "gpt2" / "config.json").read_text()))
    with pytest.raises(
        ShapeMismatchError,
        match=r"transformer.wte.weight: the config gives \(99, 36\).*the checkpoint holds \(99, 45\)",
    ):
        GPT2LMHeadModel.from_pretrained(WARM / "gpt2_45", config=config)


def test_tie_encoder_decoder_shares_variables():
    model = TFEncoderDecoderModel.from_pretrained(FIXTURES / "bert2bert_tied" / "pt")
    enc_q = model.encoder.encoder.layer[0].attention.self.query.kernel
    assert enc_q is model.decoder.bert.encoder.layer[0].attention.self.query.kernel
    assert model.encoder.embeddings.word_embeddings.weight is model.get_output_embeddings().table
    cross = model.decoder.bert.encoder.layer[0].crossattention.self.query.kernel
    assert all(cross is not v for v in model.encoder.variables)
    untied = TFEncoderDecoderModel.from_pretrained(FIXTURES / "bert2bert" / "pt")
    assert len(model.variables) == len(model.weight_table()) < len(untied.variables)


def test_labels_loss_is_mean_over_non_ignored_tokens(bert2gpt2):
    e = expected("bert2gpt2")
    out = bert2gpt2(**_batch(e))
    keep = e["labels"] != -100
    logp = tf.nn.log_softmax(out.logits).numpy()
    picked = np.take_along_axis(logp, np.clip(e["labels"], 0, None)[..., None], -1)[..., 0]
    assert_close(out.loss, -picked[keep].mean(), what="loss")
    assert keep.sum() < keep.size  # the fixture really has ignored positions


def test_encoder_outputs_as_object_or_tuple_and_return_dict_false(bert2gpt2):
    e = expected("bert2gpt2")
    b = _batch(e)
    full = bert2gpt2(**b)
    enc = bert2gpt2.get_encoder()(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    from_obj = bert2gpt2(encoder_outputs=enc, attention_mask=b["attention_mask"], labels=b["labels"])
    from_tuple = bert2gpt2(
        encoder_outputs=(enc.last_hidden_state,), attention_mask=b["attention_mask"], labels=b["labels"]
    )
    np.testing.assert_array_equal(from_obj.logits, full.logits)
    np.testing.assert_array_equal(from_tuple.logits, full.logits)
    as_tuple = bert2gpt2(**b, return_dict=False)
    assert float(as_tuple[0]) == float(full.loss)
    np.testing.assert_array_equal(as_tuple[1], full.logits)


def test_output_fields_and_shapes(bert2gpt2):
    out = bert2gpt2(**_batch(expected("bert2gpt2")), output_attentions=True, output_hidden_states=True)
    assert out.logits.shape == (3, 7, 99)
    assert len(out.decoder_hidden_states) == 3 and len(out.encoder_hidden_states) == 3
    assert out.cross_attentions[0].shape == (3, 3, 7, 11) and out.decoder_attentions[0].shape == (3, 3, 7, 7)
    assert out.encoder_last_hidden_state.shape == (3, 11, 36)
    assert len(out.past_key_values) == 2 and len(out.past_key_values[0]) == 4  # self k, v; cross k, v
    assert out.past_key_values[0][0].shape == (3, 3, 7, 12) and out.past_key_values[0][2].shape == (3, 3, 11, 12)


def test_inputs_embeds_stand_for_ids(bert2gpt2):
    e = expected("bert2gpt2")
    b = batch(e, "input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
    by_ids = bert2gpt2(**b).logits
    embeds = tf.gather(bert2gpt2.encoder.get_input_embeddings().table, b.pop("input_ids"))
    dec_embeds = tf.gather(bert2gpt2.decoder.get_input_embeddings().table, b.pop("decoder_input_ids"))
    assert_close(
        bert2gpt2(inputs_embeds=embeds, decoder_inputs_embeds=dec_embeds, **b).logits, by_ids, what="inputs_embeds"
    )


def test_decoder_kwargs_are_routed(bert2gpt2):
    b = _batch(expected("bert2gpt2"))
    shifted = bert2gpt2(**b, decoder_position_ids=tf.range(1, 8)[None]).logits
    assert np.abs(shifted.numpy() - bert2gpt2(**b).logits.numpy()).max() > 1e-3


def test_bad_inputs_are_clear_errors(bert2gpt2):
    e = expected("bert2gpt2")
    ids = e["input_ids"].copy()
    ids[0, 0] = 99
    with pytest.raises(InputError, match=r"input_ids holds token id 99.*vocab_size"):
        bert2gpt2(input_ids=ids, attention_mask=e["attention_mask"], labels=e["labels"])
    with pytest.raises(InputError, match=r"labels has shape \(3, 6\), expected \(3, 7\)"):
        bert2gpt2(input_ids=e["input_ids"], decoder_input_ids=e["decoder_input_ids"], labels=e["labels"][:, :6])
    with pytest.raises(InputError, match="decoder_input_ids, decoder_inputs_embeds or labels"):
        bert2gpt2(input_ids=e["input_ids"])
    with pytest.raises(InputError, match="input_ids, inputs_embeds or encoder_outputs"):
        bert2gpt2(decoder_input_ids=e["decoder_input_ids"])
    model = TFEncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt")
    model.config.decoder_start_token_id = None
    with pytest.raises(InputError, match="decoder_start_token_id"):
        model(**_batch(e))


def test_wrong_class_and_missing_weights_are_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot be loaded into GPT2LMHeadModel"):
        GPT2LMHeadModel.from_pretrained(WARM / "bert")
    (tmp_path / "config.json").write_text((WARM / "bert" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no weights found.*tf_model.h5"):
        BertModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no PyTorch weights found"):
        TFEncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "tf", from_pt=True)


def test_importing_sets_the_tensorflow_backend():
    assert os.environ["KERAS_BACKEND"] == "tensorflow" and keras.backend.backend() == "tensorflow"


@pytest.mark.parametrize(
    "first,env,expect",
    [
        ("", {"KERAS_BACKEND": "jax"}, "KERAS_BACKEND='jax'"),
        (
            "import os; os.environ['KERAS_BACKEND'] = 'numpy'; import keras; del os.environ['KERAS_BACKEND']; ",
            {},
            "imported with the 'numpy' backend",
        ),
    ],
)
def test_another_keras_backend_is_refused_at_import(first, env, expect):
    clean = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    out = subprocess.run(
        [sys.executable, "-c", first + "import encdec_tf"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **env},
    )
    assert out.returncode != 0 and "ImportError" in out.stderr and expect in out.stderr, out.stderr[-2000:]


def test_reference_harness_is_sensitive(bert2gpt2):
    """The shared comparison fails on a model whose one bias entry is off by the fixture noise (0.05).

    (One entry: a shift of the whole bias would vanish in the next LayerNorm.)
    """
    model = TFEncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt")
    bias = model.decoder.transformer.h[1].mlp.c_proj.bias
    bias.assign(bias + 0.05 * tf.one_hot([[0]], 36)[0])
    e = expected("bert2gpt2")
    with pytest.raises(AssertionError, match="max abs diff"):
        compare_to_reference(*run_reference_batch(model, e), e, "perturbed")
