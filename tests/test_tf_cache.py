"""Level 4: decoding with the cache equals the full forward without it, step by step (BERT, RoBERTa, GPT-2)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from encdec_core import InputError
from encdec_tf import DecoderCache, GPT2LMHeadModel, TFEncoderDecoderModel
from encdec_tf.cache import reorder_cache
from tests.conftest import FIXTURES, expected
from tests.tolerances import assert_close

DECODERS = ["bert2bert", "roberta2roberta", "bert2gpt2", "bert2gpt2_proj"]  # BERT, RoBERTa, GPT-2 (+ projection)
# issue 16: CamemBERT, BertGeneration, ELECTRA, BART, MBart, BERT relative_key_query (see test_tf_families.py)
FAMILY_DECODERS = ["xlmr2camembert", "bertgen2bertgen", "electra2electra", "bert2bart", "bert2mbart", "bertrel2bertrel"]


def _setup(pair):
    model = TFEncoderDecoderModel.from_pretrained(FIXTURES / pair / "pt")
    e = expected(pair)
    full = model(
        input_ids=e["input_ids"],
        attention_mask=e["attention_mask"],
        decoder_input_ids=e["decoder_input_ids"],
        decoder_attention_mask=e["decoder_attention_mask"],
    ).logits.numpy()  # (B,T,V), no cache
    enc = model.get_encoder()(input_ids=e["input_ids"], attention_mask=e["attention_mask"])
    return model, e, full, enc


def _padded_mask(e, length):
    """The decoder mask over the whole preallocated cache (positions past the inputs: attendable, never written)."""
    m = e["decoder_attention_mask"]
    return np.concatenate([m, np.ones((m.shape[0], length - m.shape[1]), m.dtype)], axis=1)


@pytest.mark.parametrize("pair", DECODERS)
def test_preallocated_cache_steps_equal_the_full_forward(pair):
    model, e, full, enc = _setup(pair)
    ids = e["decoder_input_ids"]
    b, t = ids.shape
    length = t + 3
    cache = model.init_cache(b, length, enc, e["attention_mask"])
    cross_k = cache.layers[0][2]
    h = model.config.decoder.num_attention_heads
    k = model.config.decoder.hidden_size // h
    assert cache.layers[0][0].shape == (b, h, length, k) and cross_k.shape == (b, h, 11, k)
    mask = _padded_mask(e, length)
    logits, cache = model.decode_step(ids[:, :3], cache, mask)  # a 3-token prompt, then one token per step
    assert_close(logits, full[:, :3], what=f"{pair} prompt")
    for i in range(3, t):
        logits, cache = model.decode_step(ids[:, i : i + 1], cache, mask)
        assert int(cache.index) == i + 1
        assert_close(logits[:, 0], full[:, i], what=f"{pair} step {i}")
    assert cache.layers[0][2] is cross_k  # cross-attention keys computed once, reused as is
    # the same step through call(), which skips the encoder when the cache holds the cross keys/values
    via_call = model(
        decoder_input_ids=ids[:, :3],
        decoder_attention_mask=mask,
        past_key_values=model.init_cache(b, length, enc, e["attention_mask"]),
    )
    assert isinstance(via_call.past_key_values, DecoderCache) and via_call.encoder_last_hidden_state is None
    assert_close(via_call.logits, full[:, :3], what=f"{pair} call with cache")


@pytest.mark.parametrize("pair", DECODERS + FAMILY_DECODERS)
def test_growing_tuple_cache_equals_the_full_forward(pair):
    """HF's past_key_values tuples: run 3 tokens, then continue from the returned cache."""
    model, e, full, enc = _setup(pair)
    ids, dmask, src_mask = e["decoder_input_ids"], e["decoder_attention_mask"], e["attention_mask"]
    first = model(
        encoder_outputs=enc,
        attention_mask=src_mask,
        decoder_input_ids=ids[:, :3],
        decoder_attention_mask=dmask[:, :3],
        use_cache=True,
    )
    past = first.past_key_values
    for i in range(3, ids.shape[1]):
        out = model(
            encoder_outputs=enc,
            attention_mask=src_mask,
            decoder_input_ids=ids[:, i : i + 1],
            decoder_attention_mask=dmask[:, : i + 1],
            past_key_values=past,
        )
        past = out.past_key_values
        assert past[0][0].shape[2] == i + 1
        assert_close(out.logits[:, 0], full[:, i], what=f"{pair} tuple step {i}")


@pytest.mark.parametrize("pair", ["roberta2roberta", "bert2gpt2"])
def test_compiled_step_compiles_once_and_matches(pair):
    """tf.function(jit_compile=True) over decode_step: one trace for every step, same numbers."""
    model, e, full, enc = _setup(pair)
    ids = tf.constant(e["decoder_input_ids"])
    b, t = ids.shape
    step = tf.function(model.decode_step, jit_compile=True)
    cache = model.init_cache(b, t + 2, enc, e["attention_mask"])
    mask = tf.constant(_padded_mask(e, t + 2))
    for i in range(t):
        logits, cache = step(ids[:, i : i + 1], cache, mask)
        assert_close(logits[:, 0], full[:, i], what=f"{pair} XLA step {i}")
    assert step.experimental_get_tracing_count() == 1


def test_reordered_cache_follows_its_rows():
    model, e, full, enc = _setup("bert2gpt2")
    ids = e["decoder_input_ids"]
    cache = model.init_cache(3, 9, enc, e["attention_mask"])
    _, cache = model.decode_step(ids[:, :2], cache)
    order = [2, 0, 0]
    logits, _ = model.decode_step(ids[order, 2:3], reorder_cache(cache, order))
    assert_close(logits[:, 0], full[order, 2], what="reordered cache")


def test_decoder_alone_without_cross_attention():
    """A plain GPT-2 LM: the cache has no cross entries and still matches its full forward."""
    lm = GPT2LMHeadModel.from_pretrained(FIXTURES / "warm" / "gpt2")
    ids = np.array([[5, 17, 33, 2, 9, 41], [7, 7, 60, 12, 3, 88]])
    full = lm(input_ids=ids).logits.numpy()
    cache = lm.init_cache(2, 8)
    assert cache.layers[0].cross_key is None and cache.encoder_attention_mask.shape == (2, 0)
    for i in range(ids.shape[1]):
        out = lm(input_ids=ids[:, i : i + 1], past_key_values=cache)
        cache = out.past_key_values
        assert_close(out.logits[:, 0], full[:, i], what=f"gpt2 LM step {i}")


def test_cache_limits_are_clear_errors():
    model, e, _, enc = _setup("bert2gpt2")
    cache = model.init_cache(3, 4, enc, e["attention_mask"])
    with pytest.raises(InputError, match=r"positions up to 5.*max_length=4"):
        model.decode_step(e["decoder_input_ids"][:, :5], cache)
    with pytest.raises(InputError, match="max_length=41 exceeds the 40 positions"):
        model.init_cache(3, 41, enc)
