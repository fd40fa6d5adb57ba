"""Flax generation: Transformers 4.57 ids on every fixture, processors, shared cache, compile once, config.

Compiling dominates this file's time (about 1 s per generation loop here, against 3-4 s with
XLA's default options). So: every fixture run asks for ``output_scores``, and runs that differ
only in values share one compiled loop per pair (penalties, length penalty and early stopping
are traced: beam3, beam3_never and beam3_false compile once); the models compile with
``GEN_COMPILE``; the other tests reuse the fixture runs' settings where they can. Still, every
pair runs every non-sampling fixture run, beams included (the sampled runs cannot match
torch's generator: sampling is tested for reproducibility instead).
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_generation as harness

import encdec_flax.generation as flax_generation
from encdec_core.errors import GenerationError, InputError
from encdec_core.generation import GenerationConfig
from encdec_core.outputs import GenerateOutput
from encdec_flax import FlaxEncoderDecoderModel
from tests.conftest import FIXTURES, generations
from tests.tolerances import assert_close

GEN_COMPILE = harness.gen_compile()
model_for = functools.partial(harness.model_for, "flax")  # shared with the cross-backend harness (and its compiles)
fresh = functools.partial(harness.fresh, "flax")
batch = functools.partial(harness.batch, "flax")


def run_kwargs(pair: str, run_name: str) -> dict:
    kw = harness.run_kwargs("flax", generations(pair)["runs"][run_name])
    return kw | {"return_dict_in_generate": True, "output_scores": True}


# ------------------------------------------------------------------------------- cache and compiles
def test_rows_of_a_source_share_its_cross_keys_values():
    """init_cache for g rows per source keeps one (B,H,S,K) copy of the cross keys/values, not g; token by
    token through it, each row gives the full forward's logits on its own copy of the source."""
    pair = "bert2gpt2"
    model, (ids, mask) = model_for(pair), batch(pair)
    (b, _), g, t = ids.shape, 2, 5
    dec = np.random.default_rng(0).integers(3, 99, (b * g, t)).astype(np.int32)

    @functools.partial(jax.jit, **GEN_COMPILE)
    def cached_and_full(params, enc, dec):
        def step(cache, token):  # token (N,)
            out = model.decode(token[:, None], None, encoder_attention_mask=mask, past_key_values=cache, params=params)
            return out.past_key_values, out.logits[:, 0]

        cache = model.apply(params, enc, t, rows=b * g, method="init_cache")
        cache, logits = jax.lax.scan(step, cache, dec.T)  # (T,N,V)
        full = model.decode(dec, jnp.repeat(enc, g, 0), encoder_attention_mask=np.repeat(mask, g, 0), params=params)
        return cache, logits.transpose(1, 0, 2), full.logits

    enc = jax.jit(lambda p: model.encode(ids, mask, params=p).last_hidden_state, **GEN_COMPILE)(model.params)
    cache, logits, full = cached_and_full(model.params, enc, dec)
    layer = cache.layers[0]
    assert layer.key.shape[0] == b * g and layer.cross_key.shape[0] == b  # shared, not tiled
    assert_close(logits, full, what=f"{pair} token by token with shared cross keys/values")


def test_compiles_once_per_static_setting(monkeypatch):
    """Same shapes and static settings: no new trace; other values of a traced setting: none either."""
    traces = []
    real = flax_generation.search_loop

    def counting(*args):
        traces.append(1)
        return real(*args)

    monkeypatch.setattr(flax_generation, "search_loop", counting)
    model, (ids, mask) = model_for("bert2gpt2"), batch("bert2gpt2")  # settings no other test uses
    kw = dict(attention_mask=mask, max_new_tokens=7, eos_token_id=None)
    first = model.generate(ids, repetition_penalty=1.5, **kw).sequences
    again = model.generate(ids, repetition_penalty=1.5, **kw).sequences
    assert len(traces) == 1 and np.array_equal(first, again)
    other = model.generate(ids, repetition_penalty=5.0, **kw).sequences
    assert len(traces) == 1 and not np.array_equal(first, other)  # a value: traced, not compiled in
    model.generate(ids, attention_mask=mask, max_new_tokens=8, repetition_penalty=1.5, eos_token_id=None)
    assert len(traces) == 2  # max_length is a shape


# ------------------------------------------------------------------------------- behaviour
def test_attention_mask_is_inferred_from_padding_as_transformers():
    model, (ids, mask) = model_for("bert2bert"), batch("bert2bert")
    kw = run_kwargs("bert2bert", "greedy")
    assert np.array_equal(model.generate(ids, **kw).sequences, model.generate(ids, attention_mask=mask, **kw).sequences)


def test_encoder_outputs_instead_of_input_ids():
    pair = "bert2gpt2_proj"  # the projection to the decoder's width runs in init_cache on either path
    model, (ids, mask) = model_for(pair), batch(pair)
    enc = jax.jit(lambda p: model.encode(ids, mask, params=p), **GEN_COMPILE)(model.params)  # a BaseModelOutput
    for run in ("greedy", "beam3_false"):
        kw = run_kwargs(pair, run)
        a = model.generate(ids, attention_mask=mask, **kw)
        b = model.generate(encoder_outputs=enc, attention_mask=mask, **kw)
        assert np.array_equal(a.sequences, b.sequences), run


def test_sampling_is_reproducible_with_a_seed_or_key():
    pair = "bert2bert"
    model, (ids, mask) = model_for(pair), batch(pair)
    kw = run_kwargs(pair, "sample") | {"eos_token_id": None, "return_dict_in_generate": False}
    a = model.generate(ids, attention_mask=mask, seed=5, **kw).sequences
    b = model.generate(ids, attention_mask=mask, prng_key=jax.random.PRNGKey(5), **kw).sequences
    others = [model.generate(ids, attention_mask=mask, seed=s, **kw).sequences for s in (6, 7)]
    assert np.array_equal(a, b) and a.shape == (3, 13)
    assert any(not np.array_equal(a, o) for o in others)
    greedy = model.generate(ids, attention_mask=mask, **run_kwargs(pair, "greedy_no_eos")).sequences
    assert np.array_equal(model.generate(ids, attention_mask=mask, seed=1, **(kw | {"top_k": 1})).sequences, greedy)


def test_sampling_several_per_source_and_beam_sampling():
    pair = "bert2gpt2"
    model, (ids, mask) = model_for(pair), batch(pair)
    kw = run_kwargs(pair, "sample_two_each") | {"eos_token_id": None}
    two = model.generate(ids, attention_mask=mask, seed=3, **kw).sequences
    assert two.shape == (6, 9) and np.array_equal(two, model.generate(ids, attention_mask=mask, seed=3, **kw).sequences)
    assert not np.array_equal(two[0::2], two[1::2])  # a source's two rows draw apart
    beam = dict(do_sample=True, num_beams=3, max_new_tokens=6, return_dict_in_generate=True)
    x, y = (model.generate(ids, attention_mask=mask, seed=2, **beam) for _ in range(2))
    assert x.sequences.shape[0] == 3 and np.array_equal(x.sequences, y.sequences)
    assert np.array_equal(x.sequences_scores, y.sequences_scores)


def test_return_dict_fields():
    pair = "bert2gpt2"
    model, (ids, mask) = model_for(pair), batch(pair)
    out = model.generate(ids, attention_mask=mask, **run_kwargs(pair, "greedy_no_eos"))
    assert out.sequences.shape == (3, 13) and len(out.scores) == 12 and out.scores[0].shape == (3, 99)
    assert np.array_equal(np.stack([s.argmax(-1) for s in out.scores], 1), out.sequences[:, 1:])
    beam = model.generate(ids, attention_mask=mask, **run_kwargs(pair, "beam3"))  # 3 beams, 2 returned
    n_gen = beam.sequences.shape[1] - 1
    assert (
        beam.sequences.shape[0] == 6 and beam.sequences_scores.shape == (6,) and beam.beam_indices.shape == (6, n_gen)
    )
    assert len(beam.scores) >= n_gen and beam.scores[0].shape == (9, 99)
    assert (beam.sequences_scores[0::2] >= beam.sequences_scores[1::2]).all()  # best first per source


def test_bare_call_returns_an_output_with_sequences_as_transformers_flax():
    pair = "bert2gpt2"
    model, (ids, mask) = model_for(pair), batch(pair)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=12)
    assert isinstance(out, GenerateOutput) and isinstance(out.sequences, np.ndarray)
    assert out.sequences.tolist() == generations(pair)["runs"]["greedy"]["sequences"]
    assert out.scores is None and out.sequences_scores is None  # nothing else unless asked


# ------------------------------------------------------------------------------- config
def test_generation_config_saved_and_reloaded(tmp_path):
    model = fresh("bert2bert")
    model.generation_config = model.generation_config.update(max_new_tokens=4, num_beams=2)
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert saved["max_new_tokens"] == 4 and saved["num_beams"] == 2 and saved["decoder_start_token_id"] == 2
    assert (
        saved
        == GenerationConfig.from_json_file(FIXTURES / "bert2bert" / "pt" / "generation_config.json")
        .update(max_new_tokens=4, num_beams=2)
        .to_dict()
    )  # what the PyTorch backend writes
    again = FlaxEncoderDecoderModel.from_pretrained(tmp_path / "m")
    assert again.generation_config.max_new_tokens == 4 and again.generation_config.num_beams == 2


def test_tokens_set_on_model_config_after_construction_are_used():
    """The seed's workflow: build, then set model.config.decoder_start_token_id."""
    pair = "bert2gpt2"
    model, (ids, mask) = model_for(pair), batch(pair)
    model.config.decoder_start_token_id = 7
    try:
        out = model.generate(ids, attention_mask=mask, max_new_tokens=12).sequences  # the bare call's compiled loop
    finally:
        model.config.decoder_start_token_id = 2
    assert out[:, 0].tolist() == [7, 7, 7]


def test_bad_inputs_are_named():
    model, (ids, mask) = model_for("bert2bert"), batch("bert2bert")
    with pytest.raises(InputError, match="input_ids"):
        model.generate()
    with pytest.raises(InputError, match="decoder_input_ids"):
        model.generate(ids, attention_mask=mask, decoder_input_ids=np.array([[2]]))
    with pytest.raises(GenerationError, match="max_length=41 .* exceeds the decoder.s 40 positions"):
        model.generate(ids, attention_mask=mask, max_new_tokens=40)
