"""TensorFlow generation under XLA: Transformers 4.57 ids on every fixture, processors, compile-once, seeds, export.

XLA compilation dominates this file (~1-2 s of CPU per program), so tests share compiled
programs: a program is keyed by the static settings and input shapes, and EOS/pad ids, length
penalty, early stopping and the seed are inputs (``greedy``, ``greedy_no_eos`` and
``eos_list`` run one program; so do ``beam3_never``/``beam3_false`` and the two
``beam2_lp3`` runs); the behaviour tests reuse the fixture runs' settings, model and batch.
Coverage, all under XLA: every non-sampling run of generate.json on every pair, except the four
beam variants (never/false, lp3) on ``bert2bert_tied``, a BERT decoder like ``bert2bert``:
each run still covers every decoder architecture (BERT, RoBERTa, GPT-2, GPT-2 behind a projection).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import tensorflow as tf
import test_generation as harness

from encdec_core.errors import InputError
from encdec_core.generation import GenerationConfig
from encdec_tf import TFEncoderDecoderModel
from encdec_tf.cache import reorder_cache
from tests.conftest import FIXTURES, generations
from tests.generation_cases import assert_same_ids
from tests.tolerances import assert_close

model_for = functools.partial(harness.model_for, "tf")  # shared with the cross-backend harness
batch = functools.partial(harness.batch, "tf")


def run_kwargs(run: dict) -> dict:
    return harness.run_kwargs("tf", run) | {"return_dict_in_generate": True}


def generate_run(pair: str, name: str, **over):
    model, (ids, mask) = model_for(pair), batch(pair)
    return model.generate(ids, attention_mask=mask, **(run_kwargs(generations(pair)["runs"][name]) | over))


def traces(model) -> int:
    return model._compiled_generate.traces


@pytest.mark.parametrize("pair", ["bert2gpt2", "roberta2roberta"])
def test_compiles_once_per_shape(pair):
    """A second call with the same shapes and settings reuses the compiled program: no Python trace."""
    model = model_for(pair)
    for name in ("greedy", "beam3"):
        first = generate_run(pair, name)  # compiled here, or already by the reference test
        before = traces(model)
        again = generate_run(pair, name)
        assert traces(model) == before, f"{pair}/{name} retraced"
        np.testing.assert_array_equal(first.sequences, again.sequences)
    generate_run(pair, "beam3", length_penalty=2.0, early_stopping="never", eos_token_id=5, pad_token_id=7, seed=9)
    assert traces(model) == before  # settings that are inputs of the program: no retrace
    ids, mask = batch(pair)
    before = traces(model)
    model.generate(ids[:2], attention_mask=mask[:2], max_new_tokens=12, jit_compile=False)
    assert traces(model) == before + 1  # another batch size: one new trace (and compilation), for that shape


def test_without_xla_the_same_ids():
    """jit_compile=False runs the same graph without XLA (for debugging): the same ids."""
    pair = "bert2gpt2"
    for name in ("greedy", "beam3"):
        run = generations(pair)["runs"][name]
        assert_same_ids(generate_run(pair, name, jit_compile=False), run, model_for(pair).config.pad_token_id, name)


# ------------------------------------------------------------------------------- behaviour
def test_encoder_outputs_instead_of_input_ids():
    pair = "bert2gpt2_proj"  # the projection is applied to given encoder outputs too
    model, (ids, mask) = model_for(pair), batch(pair)
    enc = model.get_encoder()(input_ids=ids, attention_mask=mask)
    for name in ("greedy", "beam3"):
        a = generate_run(pair, name)
        kw = run_kwargs(generations(pair)["runs"][name])
        b = model.generate(encoder_outputs=enc, attention_mask=mask, **kw)
        c = model.generate(encoder_outputs=(enc.last_hidden_state,), attention_mask=mask, **kw)
        np.testing.assert_array_equal(a.sequences, b.sequences)
        np.testing.assert_array_equal(a.sequences, c.sequences)


def test_attention_mask_is_inferred_from_padding_as_transformers():
    ids, _ = batch("bert2bert")  # padded with pad_token_id 0
    kw = run_kwargs(generations("bert2bert")["runs"]["greedy"])
    inferred = model_for("bert2bert").generate(ids, **kw).sequences
    np.testing.assert_array_equal(inferred, generate_run("bert2bert", "greedy").sequences)


def test_sampling_is_reproducible_with_a_seed():
    pair = "bert2bert"
    a = generate_run(pair, "sample", seed=5).sequences  # the fixture's warpers: temperature, top-k, top-p
    assert generate_run(pair, "sample", seed=5).sequences.numpy().tolist() == a.numpy().tolist()
    others = [generate_run(pair, "sample", seed=s).sequences for s in (6, 7)]  # the seed is an input: no retrace
    assert any(o.shape != a.shape or not np.array_equal(o, a) for o in others)
    greedy = generate_run(pair, "greedy_no_eos").sequences
    two = generate_run(pair, "greedy_no_eos", do_sample=True, top_k=1, num_return_sequences=2, seed=1).sequences
    np.testing.assert_array_equal(two, tf.repeat(greedy, 2, axis=0))  # top_k=1 is greedy, rows grouped by source


def test_beam_sampling_is_reproducible():
    kw = dict(do_sample=True, num_beams=2, max_new_tokens=5, eos_token_id=None)
    a = generate_run("bert2gpt2", "greedy", seed=11, **kw)
    b = generate_run("bert2gpt2", "greedy", seed=11, **kw)
    assert a.sequences.shape == (3, 6)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    np.testing.assert_array_equal(a.sequences_scores, b.sequences_scores)


def test_return_dict_fields():
    out = generate_run("bert2gpt2", "greedy_no_eos", output_scores=True)
    assert out.sequences.shape == (3, 13) and len(out.scores) == 12 and out.scores[0].shape == (3, 99)
    np.testing.assert_array_equal(tf.stack([tf.argmax(s, -1, tf.int32) for s in out.scores], 1), out.sequences[:, 1:])
    beam = generate_run("bert2gpt2", "beam3")  # num_return_sequences=2, output_scores=True
    n = beam.beam_indices.shape[1]
    assert beam.sequences.shape == (6, 1 + n) and beam.sequences_scores.shape == (6,) and len(beam.scores) >= n
    assert beam.scores[0].shape == (9, 99)
    assert (beam.sequences_scores.numpy()[0::2] >= beam.sequences_scores.numpy()[1::2]).all()  # best first
    assert generate_run("bert2gpt2", "greedy_no_eos", return_dict_in_generate=False).shape == (3, 13)


def test_shared_cross_keys_values_equal_tiled_ones():
    """Beams share their source's cross k/v (folded into the queries): same logits as tiling them."""
    model, (ids, mask) = model_for("bert2gpt2"), batch("bert2gpt2")
    enc = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    tokens = tf.constant(np.random.default_rng(0).integers(3, 99, (6, 4)), tf.int32)
    shared = model.init_cache(6, 5, enc, mask)  # 6 rows, 3 sources
    tiled = model.init_cache(6, 5, tf.repeat(enc, 2, 0), tf.repeat(mask, 2, 0))
    assert shared.layers[0][2].shape[0] == 3 and tiled.layers[0][2].shape[0] == 6
    a, shared = model.decode_step(tokens[:, :3], shared)
    b, tiled = model.decode_step(tokens[:, :3], tiled)
    assert_close(a, b, what="shared vs tiled")
    order = [1, 0, 3, 3, 5, 4]  # rows stay within their source
    a, _ = model.decode_step(tf.gather(tokens, order)[:, 3:], reorder_cache(shared, order))
    b, _ = model.decode_step(tf.gather(tokens, order)[:, 3:], reorder_cache(tiled, order))
    assert_close(a, b, what="after reorder")


# ------------------------------------------------------------------------------- export
def test_exported_saved_model_generates_the_same_ids(tmp_path):
    pair = "bert2gpt2"
    model, (ids, mask) = model_for(pair), batch(pair)
    settings = dict(num_beams=3, early_stopping="never", max_new_tokens=10)  # the fixture's beam3_never
    path = model.export_generate(tmp_path / "served", **settings)
    served = tf.saved_model.load(str(path))
    assert not type(served).__module__.startswith("encdec")  # TensorFlow's revived object: no encdec class needed
    out = served.signatures["serving_default"](input_ids=ids, attention_mask=mask)
    want = model.generate(ids, attention_mask=mask, return_dict_in_generate=True, **settings)
    np.testing.assert_array_equal(out["sequences"], want.sequences)
    assert_close(out["sequences_scores"], want.sequences_scores, what="exported scores")


# ------------------------------------------------------------------------------- config
def test_generation_config_written_as_pytorch_writes_it(tmp_path):
    """GenerationConfig.to_dict(), as encdec_pt: what was read survives (transformers_version, _from_model_config)."""
    model = model_for("bert2gpt2")
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    read = json.loads((FIXTURES / "bert2gpt2" / "pt" / "generation_config.json").read_text())
    assert saved == read | {"bos_token_id": model.config.decoder.bos_token_id}  # unset tokens follow the model config
    assert saved == model._generation_config(None, {}).to_dict()


def test_generation_config_saved_and_reloaded(tmp_path):
    model = TFEncoderDecoderModel.from_pretrained(FIXTURES / "bert2bert" / "pt")
    model.set_generation_config(model.generation_config.update(max_new_tokens=4, num_beams=2))
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert saved["max_new_tokens"] == 4 and saved["num_beams"] == 2 and saved["decoder_start_token_id"] == 2
    again = TFEncoderDecoderModel.from_pretrained(tmp_path / "m")
    assert again.generation_config.num_beams == 2
    ids, mask = batch("bert2bert")
    assert again.generate(ids, attention_mask=mask, eos_token_id=None, jit_compile=False).shape == (3, 5)


def test_tokens_set_on_model_config_after_construction_are_used():
    """The seed's workflow: build, then set model.config.decoder_start_token_id / pad_token_id."""
    model = TFEncoderDecoderModel.from_pretrained(FIXTURES / "bert2bert" / "pt")
    model.set_generation_config(GenerationConfig.from_model_config(model.config))
    model.config.decoder_start_token_id = 7
    out = model.generate(*batch("bert2bert"), max_new_tokens=2, jit_compile=False)
    assert out[:, 0].numpy().tolist() == [7, 7, 7]


def test_bad_inputs_are_named():
    model = model_for("bert2bert")
    ids, mask = batch("bert2bert")
    with pytest.raises(InputError, match="input_ids"):
        model.generate()
    with pytest.raises(InputError, match="decoder_input_ids"):
        model.generate(ids, decoder_input_ids=tf.constant([[2]]))
    with pytest.raises(InputError, match="attention_mask"):
        model.generate(ids, attention_mask=mask[:, :4])
    with pytest.raises(InputError, match=r"input_ids holds token id \d+, expected ids in \[0, 99\)"):
        model.generate(ids + 500)
