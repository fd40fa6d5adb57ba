"""FlaxEncoderDecoderModel behaviour: build, ties, forward semantics, bf16, dropout, clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conversion.flax_msgpack import flatten_tree
from encdec_core import BertConfig, EncoderDecoderConfig, GPT2Config, InputError
from encdec_flax import BertLMHeadModel, FlaxEncoderDecoderModel, GPT2LMHeadModel
from tests.conftest import FIXTURES, expected, tiny_gpt2, tiny_sizes
from tests.test_flax_reference import FAST_COMPILE, batch, load
from tests.tolerances import ATOL, assert_close, max_abs_diff


def test_random_init_from_configs_follows_the_tables_and_hf_init():
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(**tiny_sizes()), GPT2Config(**tiny_gpt2(n_embd=45, n_head=5))
    )
    model = FlaxEncoderDecoderModel(config, seed=3)
    flat = flatten_tree(model.params)
    assert set(flat) == {p.flax for p in model.weight_table()}  # every stored weight, HF Flax's paths
    assert flat["enc_to_dec_proj/kernel"].shape == (36, 45)  # Dense kernel (in, out)
    assert flat["decoder/transformer/h/0/attn/c_attn/kernel"].shape == (135, 45)  # GPT-2 Conv1D (out, in)
    assert np.all(flat["decoder/transformer/h/1/ln_2/scale"] == 1) and np.all(flat["encoder/pooler/dense/bias"] == 0)
    assert 0.015 < float(np.std(flat["encoder/embeddings/word_embeddings/embedding"])) < 0.025
    again = FlaxEncoderDecoderModel(config, seed=3)
    assert all(np.array_equal(v, flatten_tree(again.params)[k]) for k, v in flat.items())  # seeded


def test_tie_encoder_decoder_stores_the_shared_weights_once():
    model = load("bert2bert_tied")
    assert set(model.params["encoder"]) == {"pooler"}  # everything else is the decoder base's
    full = model.materialize(model.params)
    q = ("encoder", "layer", "0", "attention", "self", "query", "kernel")
    enc_q, dec_q = full["encoder"], full["decoder"]["bert"]
    for part in q:
        enc_q, dec_q = enc_q[part], dec_q[part]
    assert enc_q is dec_q
    assert "decoder" not in model.params["decoder"]["cls"]["predictions"]  # LM head tied to the embeddings


def test_bf16_compute_with_fp32_params_is_close():
    e = expected("bert2gpt2")
    model = FlaxEncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt", dtype=jnp.bfloat16)
    assert model.params["decoder"]["transformer"]["wte"]["embedding"].dtype == jnp.float32
    out = jax.jit(lambda p: model(**batch(e, "a"), params=p), **FAST_COMPILE)(model.params)  # bf16 ops compile once
    assert out.logits.dtype == jnp.bfloat16
    assert_close(out.logits.astype(jnp.float32), e["a.logits"], dtype="bfloat16", what="bf16 logits")
    assert abs(float(out.loss) - float(e["a.loss"])) <= ATOL["bfloat16"]
    assert max_abs_diff(out.logits.astype(jnp.float32), e["a.logits"]) > ATOL["float32"]  # it really ran in bf16


def test_roberta_positions_count_real_tokens_unlike_transformers_flax():
    """Transformers' Flax wrapper passed arange positions: on the padded batch that is far off."""
    e = expected("roberta2roberta")
    model = load("roberta2roberta")
    b, s = e["input_ids"].shape
    t = e["decoder_input_ids"].shape[1]
    hf_flax = model(
        **batch(e, "b"),
        position_ids=np.broadcast_to(np.arange(s), (b, s)),
        decoder_position_ids=np.broadcast_to(np.arange(t), (b, t)),
    )
    assert max_abs_diff(hf_flax.logits, e["b.logits"]) > 0.1
    assert_close(model(**batch(e, "b")).logits, e["b.logits"], what="roberta default positions")


def test_encode_decode_and_output_forms():
    e = expected("bert2gpt2")
    model = load("bert2gpt2")
    full = model(**batch(e, "b"), output_attentions=True, output_hidden_states=True)
    enc = model.encode(e["input_ids"], e["attention_mask"])
    # by name: explicit positions land in the position slot (Transformers' Flax put them in the token-type slot)
    by_name = model.encode(e["input_ids"], e["attention_mask"], position_ids=np.arange(11)[None])
    assert np.array_equal(by_name.last_hidden_state, enc.last_hidden_state)
    kw = dict(encoder_attention_mask=e["attention_mask"], decoder_attention_mask=e["decoder_attention_mask"])
    for encoder_outputs in (enc, (enc.last_hidden_state,), enc.last_hidden_state):
        assert np.array_equal(model.decode(e["decoder_input_ids"], encoder_outputs, **kw).logits, full.logits)
    assert full.logits.shape == (3, 7, 99) and full.encoder_last_hidden_state.shape == (3, 11, 36)
    assert len(full.decoder_hidden_states) == 3 and len(full.encoder_hidden_states) == 3
    assert full.cross_attentions[0].shape == (3, 3, 7, 11) and full.past_key_values is None
    as_tuple = model(**batch(e, "a"), return_dict=False)
    with_labels = model(**batch(e, "a"))
    assert np.array_equal(as_tuple[0], with_labels.loss) and np.array_equal(as_tuple[1], with_labels.logits)
    shifted = model(**batch(e, "b"), decoder_position_ids=np.arange(1, 8)[None]).logits
    assert max_abs_diff(shifted, full.logits) > 1e-3  # decoder_position_ids reach the decoder


def test_labels_loss_is_mean_over_non_ignored_tokens():
    e = expected("bert2gpt2")
    out = load("bert2gpt2")(**batch(e, "a"))
    keep = e["labels"] != -100
    logp = jax.nn.log_softmax(out.logits, -1)
    picked = np.take_along_axis(np.asarray(logp), np.maximum(e["labels"], 0)[..., None], -1)[..., 0]
    assert_close(np.reshape(out.loss, 1), np.reshape(-picked[keep].mean(), 1), what="loss")
    assert keep.sum() < keep.size


def test_dropout_needs_a_key_and_follows_it():
    e = expected("bert2gpt2")
    model = load("bert2gpt2")
    with pytest.raises(InputError, match="needs dropout_rng"):
        model(**batch(e, "a"), train=True)
    run = jax.jit(lambda key: model(**batch(e, "a"), train=True, dropout_rng=key).logits, **FAST_COMPILE)
    a = run(jax.random.PRNGKey(1))
    assert np.array_equal(a, run(jax.random.PRNGKey(1)))
    assert max_abs_diff(a, run(jax.random.PRNGKey(2))) > 1e-3
    assert max_abs_diff(a, model(**batch(e, "a")).logits) > 1e-3


def test_standalone_decoders_build_with_and_without_tied_head():
    untied = GPT2LMHeadModel(GPT2Config(**tiny_gpt2(), tie_word_embeddings=False))
    assert untied.params["lm_head"]["kernel"].shape == (36, 99)
    bert = BertLMHeadModel(BertConfig(**tiny_sizes(), is_decoder=True, tie_word_embeddings=False))
    assert bert.params["cls"]["predictions"]["decoder"]["kernel"].shape == (36, 99)
    ids = np.array([[5, 6, 7, 8]])
    out = bert(ids, labels=ids)  # a standalone LM's next-token loss
    assert out.logits.shape == (1, 4, 99) and float(out.loss) > 0


def test_bad_inputs_are_refused_by_name():
    e = expected("bert2gpt2")
    model = load("bert2gpt2")
    b = batch(e, "a")
    cases = [
        (
            dict(b, input_ids=np.where(e["input_ids"] == 50, 99, e["input_ids"])),
            r"input_ids holds token id 99.*vocab_size",
        ),
        (dict(b, input_ids=e["input_ids"].astype(np.float32)), "input_ids must hold integer token ids"),
        (dict(b, attention_mask=e["attention_mask"][:, :5]), r"attention_mask has shape \(3, 5\), expected \(3, 11\)"),
        (
            dict(b, labels=e["labels"][:, :4], decoder_input_ids=e["decoder_input_ids"]),
            r"labels has shape \(3, 4\), expected \(3, 7\)",
        ),
        (dict(b, labels=np.full((3, 7), 120)), "labels hold 120, expected token ids"),
        (
            dict(b, input_ids=np.ones((3, 41), np.int64), attention_mask=None),
            "input_ids has length 41, longer than the 40 positions",
        ),
        ({"input_ids": e["input_ids"]}, "give decoder_input_ids, or labels"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            model(**kwargs)
    with pytest.raises(InputError, match=r"params of FlaxEncoderDecoderModel: .*expected shape \(99, 36\)"):
        model.check_params(
            {
                **model.params,
                "decoder": {
                    **model.params["decoder"],
                    "transformer": {
                        **model.params["decoder"]["transformer"],
                        "wte": {"embedding": jnp.zeros((98, 36))},
                    },
                },
            }
        )


def test_missing_special_tokens_is_a_clear_error():
    e = expected("bert2gpt2")
    model = FlaxEncoderDecoderModel.from_pretrained(FIXTURES / "bert2gpt2" / "pt", decoder_start_token_id=None)
    with pytest.raises(InputError, match="decoder_start_token_id is not set"):
        model(**batch(e, "a"))
