"""Level 4: decoding with the static cache equals the full forward without it, step by step, under jax.jit.

One jitted step function per pair serves every step (static shapes), as a ``lax.while_loop``
would use it; a ``lax.fori_loop`` greedy decode over it reproduces Transformers' greedy ids.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conversion.flax_msgpack import flatten_tree, unflatten_tree
from encdec_core import InputError
from tests.conftest import expected, generations
from tests.test_flax_reference import FAST_COMPILE, batch, load
from tests.tolerances import assert_close

DECODERS = ["bert2bert", "roberta2roberta", "bert2gpt2", "bert2gpt2_proj"]  # BERT, RoBERTa, GPT-2 (+ projection)


@functools.cache
def step_fn(pair: str):
    """(params, ids (B,T), cache, decoder mask (B,L), encoder mask (B,S)) -> (logits, cache), jitted once."""
    model = load(pair)

    def step(params, ids, cache, dec_mask, enc_mask):
        out = model.decode(
            ids,
            None,
            encoder_attention_mask=enc_mask,
            decoder_attention_mask=dec_mask,
            past_key_values=cache,
            params=params,
        )
        return out.logits, out.past_key_values

    return jax.jit(step, **FAST_COMPILE)


@pytest.mark.parametrize("pair", DECODERS)
def test_token_by_token_equals_full_forward(pair):
    """The padded batch of the fixture: a 3-token prefill, then one token per step, each step's
    logits equal the full forward's at that position; the cache keeps its shapes throughout."""
    e = expected(pair)
    model = load(pair)
    full = np.asarray(model(**batch(e, "b")).logits)  # (B,T,V), no cache
    enc = model.encode(e["input_ids"], e["attention_mask"])
    b, t = e["decoder_input_ids"].shape
    length = t + 2  # more slots than tokens: the unwritten ones must stay hidden
    cache = model.init_cache(b, length, enc)
    shapes = jax.tree_util.tree_map(jnp.shape, cache)
    dec_mask = np.zeros((b, length), np.int32)
    dec_mask[:, :t] = e["decoder_attention_mask"]
    step = step_fn(pair)
    for start, stop in [(0, 3)] + [(i, i + 1) for i in range(3, t)]:
        run = step if stop - start == 1 else step.__wrapped__  # the prefill runs eagerly, the steps compiled
        logits, cache = run(model.params, e["decoder_input_ids"][:, start:stop], cache, dec_mask, e["attention_mask"])
        assert_close(logits, full[:, start:stop], what=f"{pair} positions {start}..{stop - 1} with the cache")
        assert int(cache.index) == stop
        assert jax.tree_util.tree_map(jnp.shape, cache) == shapes


def test_cached_steps_never_read_the_cross_attention_key_value_weights():
    """Cross-attention keys/values are computed once, by init_cache: with NaN key/value weights
    afterwards, the cached decode steps are unchanged."""
    pair = "bert2gpt2"
    e = expected(pair)
    model = load(pair)
    enc = model.encode(e["input_ids"], e["attention_mask"])
    cache = model.init_cache(3, 9, enc)
    flat = flatten_tree(model.params)
    poisoned = {k: (jnp.full_like(v, jnp.nan) if "crossattention/c_attn" in k else v) for k, v in flat.items()}
    assert sum("crossattention/c_attn" in k for k in flat) == 4  # kernel + bias in 2 layers
    step = step_fn(pair)
    ids = e["decoder_input_ids"][:, :1]
    clean, _ = step(model.params, ids, cache, None, e["attention_mask"])
    dirty, _ = step(unflatten_tree(poisoned), ids, cache, None, e["attention_mask"])
    assert np.isfinite(np.asarray(dirty)).all()
    assert np.array_equal(np.asarray(clean), np.asarray(dirty))


@pytest.mark.parametrize("pair", ["bert2gpt2", "roberta2roberta"])
def test_fori_loop_greedy_over_the_cache_gives_transformers_ids(pair):
    """The cache carried through ``lax.fori_loop``: greedy ids equal Transformers' (no EOS stop)."""
    gen = generations(pair)
    ref = np.asarray(gen["runs"]["greedy_no_eos"]["sequences"])  # (B, 1 + 12)
    model = load(pair)
    src, src_mask = np.asarray(gen["input_ids"]), np.asarray(gen["attention_mask"])
    b, n = ref.shape
    start = model.config.decoder_start_token_id

    @functools.partial(jax.jit, **FAST_COMPILE)
    def greedy(params, src, src_mask):
        enc = model.encode(src, src_mask, params=params)
        cache = model.init_cache(b, n, enc, params=params)
        ids = jnp.full((b, n), start, jnp.int32)

        def body(i, carry):
            ids, cache = carry
            token = jax.lax.dynamic_slice(ids, (0, i), (b, 1))
            out = model.decode(token, None, encoder_attention_mask=src_mask, past_key_values=cache, params=params)
            nxt = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)
            return jax.lax.dynamic_update_slice(ids, nxt[:, None], (0, i + 1)), out.past_key_values

        return jax.lax.fori_loop(0, n - 1, body, (ids, cache))[0]

    assert np.array_equal(np.asarray(greedy(model.params, src, src_mask)), ref)


def test_cache_misuse_is_refused():
    e = expected("bert2gpt2")
    model = load("bert2gpt2")
    enc = model.encode(e["input_ids"], e["attention_mask"])
    with pytest.raises(InputError, match="batch_size is 2"):
        model.init_cache(2, 8, enc)
    with pytest.raises(InputError, match="max_length has length 41"):
        model.init_cache(3, 41, enc)
    cache = model.init_cache(3, 2, enc)
    with pytest.raises(InputError, match=r"decoder_attention_mask has shape \(3, 5\), expected \(3, 2\)"):
        model.decode(e["decoder_input_ids"][:, :1], None, decoder_attention_mask=np.ones((3, 5)), past_key_values=cache)
    with pytest.raises(InputError, match="the cache holds 2 positions; 0 are used and 3 more do not fit"):
        model.decode(e["decoder_input_ids"][:, :3], None, past_key_values=cache)
    with pytest.raises(InputError, match="decode needs encoder_outputs"):
        model.decode(e["decoder_input_ids"], None)
