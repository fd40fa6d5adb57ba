"""Level 2: the Flax backend against Transformers 4.57 (PyTorch) outputs on the committed fixtures.

Every pair is loaded from our canonical ``pt/`` checkpoint and from Transformers' own
``flax/`` msgpack; the other formats (sharded msgpack, ``.bin``, sharded safetensors) must
give bitwise the same parameters. The reference numbers are Transformers' PyTorch ones:
its Flax class was wrong for RoBERTa (arange positions), which we are not.

The helpers here (``load``, ``run_reference_batch``, ``compare_to_reference``) are the
shared harness of the ``test_flax_*`` files.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from conversion.flax_msgpack import flatten_tree
from encdec_core import load_config
from encdec_core.registry import model_class
from encdec_core.semantics import shift_tokens_right
from encdec_flax import FlaxEncoderDecoderModel
from tests.conftest import FIXTURES, PAIRS, compare_to_reference, expected
from tests.tolerances import assert_close

# jax.jit options for tests: XLA:CPU's optimising passes cost seconds per compile on these tiny models
# and change nothing the tolerances can see (the numbers are asserted, not the speed)
FAST_COMPILE = {"compiler_options": {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}}
OTHER_FORMATS = ["flax_sharded", "pt_bin", "pt_sharded", "pt_bin_sharded"]
EQUIVALENT = [(p, f) for p in PAIRS for f in OTHER_FORMATS if (FIXTURES / p / f).is_dir()]


@functools.cache
def load(pair: str, fmt: str = "pt") -> FlaxEncoderDecoderModel:
    """One model per fixture folder for the whole session (tests must not mutate it)."""
    model, report = FlaxEncoderDecoderModel.from_pretrained(FIXTURES / pair / fmt, output_loading_info=True)
    assert report.ok and not report.expected_new, str(report)
    return model


def batch(e, run: str = "a") -> dict:
    """Run A: labels only (the wrapper derives the decoder inputs); run B: explicit decoder inputs."""
    b = {"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]}
    if run == "a":
        return {**b, "labels": e["labels"]}
    return {**b, "decoder_input_ids": e["decoder_input_ids"], "decoder_attention_mask": e["decoder_attention_mask"]}


def run_reference_batch(model, e, params=None):
    a = model(**batch(e, "a"), params=params)
    b = model(**batch(e, "b"), params=params, output_attentions=True, output_hidden_states=True)
    return a, b


@pytest.mark.parametrize("fmt", ["pt", "flax"])
def test_fixture_matches_transformers(pair, fmt):
    e = expected(pair)
    model = load(pair, fmt)
    a, b = run_reference_batch(model, e)
    compare_to_reference(a, b, e, f"{pair}/{fmt}")


@pytest.mark.parametrize("pair,fmt", EQUIVALENT, ids=[f"{p}-{f}" for p, f in EQUIVALENT])
def test_other_formats_give_the_same_parameters(pair, fmt):
    """Sharded msgpack, .bin and sharded safetensors fill the very same arrays as pt/."""
    ref = flatten_tree(load(pair, "pt").params)
    got = flatten_tree(load(pair, fmt).params)
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k


@pytest.mark.parametrize("pair", PAIRS)
def test_labels_give_hf_decoder_inputs(pair):
    e = expected(pair)
    cfg = load(pair).config
    ids = shift_tokens_right(jnp.asarray(e["labels"]), cfg.pad_token_id, cfg.decoder_start_token_id, xp=jnp)
    assert np.array_equal(ids, e["a.decoder_input_ids"])


@pytest.mark.parametrize("pair", ["bert2bert", "bert2gpt2", "roberta2roberta"])
def test_standalone_parts_load_and_match(pair):
    """The per-submodule checkpoints load alone (strict) and reproduce the wrapper's numbers."""
    e = expected(pair)
    enc_cfg, dec_cfg = load_config(FIXTURES / pair / "encoder"), load_config(FIXTURES / pair / "decoder")
    encoder = model_class("flax", enc_cfg, "encoder").from_pretrained(FIXTURES / pair / "encoder", strict=True)
    decoder = model_class("flax", dec_cfg, "decoder").from_pretrained(FIXTURES / pair / "decoder", strict=True)
    enc = encoder(e["input_ids"], e["attention_mask"])
    dec = decoder(
        e["decoder_input_ids"],
        e["decoder_attention_mask"],
        encoder_hidden_states=enc.last_hidden_state,
        encoder_attention_mask=e["attention_mask"],
    )
    assert_close(enc.last_hidden_state, e["b.encoder_last_hidden_state"], what=f"{pair} standalone encoder")
    assert_close(dec.logits, e["b.logits"], what=f"{pair} standalone decoder")
