"""Level 3: Flax and our PyTorch backend on the same weights: outputs, loss, gradients, checkpoints.

Gradients are compared leaf by leaf after mapping PyTorch's (canonical names, PT layouts)
through the core tables, so a transposed or mis-named weight fails here.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch

from conversion.flax_msgpack import flatten_tree
from conversion.mapping import to_framework
from encdec_core import BertConfig, EncoderDecoderConfig, GPT2Config
from encdec_core.checkpoint import CheckpointReader
from encdec_flax import FlaxEncoderDecoderModel
from encdec_pt import EncoderDecoderModel
from tests.conftest import FIXTURES, expected, tiny_gpt2, tiny_sizes
from tests.test_flax_reference import FAST_COMPILE, batch, load
from tests.tolerances import GRAD_ATOL, assert_close, max_abs_diff


def _pt_model(pair):
    return EncoderDecoderModel.from_pretrained(FIXTURES / pair / "pt").eval()


def _pt_run(model, b, **kw):
    with torch.no_grad():
        return model(**{k: torch.from_numpy(np.asarray(v)) for k, v in b.items()}, **kw)


@pytest.mark.parametrize("pair", ["bert2gpt2_proj", "roberta2roberta", "bert2bert_tied"])
def test_outputs_match_pytorch_with_and_without_labels(pair):
    e = expected(pair)
    pt, fx = _pt_model(pair), load(pair)
    for run in ("a", "b"):
        ours = fx(**batch(e, run), output_hidden_states=True)
        ref = _pt_run(pt, batch(e, run), output_hidden_states=True)
        assert_close(ours.logits, ref.logits.numpy(), what=f"{pair} run {run} logits")
        for i, h in enumerate(ref.decoder_hidden_states):
            assert_close(ours.decoder_hidden_states[i], h.numpy(), what=f"{pair} run {run} decoder_hidden_states[{i}]")
    assert_close(
        np.reshape(fx(**batch(e, "a")).loss, 1), _pt_run(pt, batch(e, "a")).loss.reshape(1).numpy(), what=f"{pair} loss"
    )


@pytest.mark.parametrize("pair", ["bert2gpt2_proj", "roberta2roberta", "bert2bert_tied"])
def test_gradients_match_pytorch(pair):
    """Same weights, same padded batch with labels, dropout off: every gradient within GRAD_ATOL."""
    e = expected(pair)
    pt, fx = _pt_model(pair), load(pair)
    loss = pt(**{k: torch.from_numpy(v) for k, v in batch(e, "a").items()}).loss
    loss.backward()
    named = dict(pt.named_parameters(remove_duplicate=False))  # a tied parameter's grad is the sum of its uses
    table = fx.weight_table()
    # the pooler does not reach the loss: PyTorch leaves its grad None, JAX gives zeros
    pt_grads = to_framework(
        {
            p.pt: np.zeros(named[p.pt].shape, np.float32) if named[p.pt].grad is None else named[p.pt].grad.numpy()
            for p in table
        },
        table,
        "flax",
    )

    grads = jax.jit(jax.grad(lambda p: fx(**batch(e, "a"), params=p).loss), **FAST_COMPILE)(fx.params)
    ours = flatten_tree(grads)
    assert set(ours) == set(pt_grads)
    worst = max(max_abs_diff(ours[k], v) for k, v in pt_grads.items())
    assert worst <= GRAD_ATOL["float32"], f"{pair}: max gradient diff {worst:.3e}"
    assert max(float(np.abs(v).max()) for v in pt_grads.values()) > 1e-2  # the gradients are not all ~0


def test_flax_checkpoint_loads_in_pytorch_and_is_what_pytorch_writes(tmp_path):
    """Our Flax save is the canonical checkpoint: PyTorch loads it with no flag, and it is byte for byte
    what our PyTorch backend writes for the same weights (config.json, model.safetensors)."""
    pair = "bert2gpt2_proj"
    e = expected(pair)
    fx = load(pair)
    fx.save_pretrained(tmp_path / "flax")
    _pt_model(pair).save_pretrained(tmp_path / "pt")
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "flax" / name).read_bytes() == (tmp_path / "pt" / name).read_bytes(), name
    gen = json.loads((tmp_path / "flax" / "generation_config.json").read_text())
    pt_gen = json.loads((tmp_path / "pt" / "generation_config.json").read_text())
    assert gen == {k: pt_gen[k] for k in gen} and gen["decoder_start_token_id"] == 2  # the special tokens
    pt, report = EncoderDecoderModel.from_pretrained(tmp_path / "flax", output_loading_info=True, strict=True)
    assert_close(_pt_run(pt.eval(), batch(e, "b")).logits.numpy(), fx(**batch(e, "b")).logits, what="PT from Flax")
    assert CheckpointReader(tmp_path / "flax").metadata == {"format": "pt"}
    assert json.loads((tmp_path / "flax" / "config.json").read_text())["architectures"] == ["EncoderDecoderModel"]


def test_pytorch_checkpoint_loads_in_flax(tmp_path):
    pair = "roberta2roberta"
    e = expected(pair)
    pt = _pt_model(pair)
    pt.save_pretrained(tmp_path / "pt", max_shard_size="40KB")
    fx = FlaxEncoderDecoderModel.from_pretrained(tmp_path / "pt", strict=True)
    assert_close(fx(**batch(e, "a")).logits, _pt_run(pt, batch(e, "a")).logits.numpy(), what="Flax from PT")


@pytest.mark.parametrize("dec", ["bert", "gpt2"])
def test_untied_lm_heads_cross_load(tmp_path, dec):
    """tie_word_embeddings=False: the LM output matrix is a weight of its own in both backends."""
    torch.manual_seed(0)
    dec_cfg = (
        BertConfig(**tiny_sizes(tie_word_embeddings=False))
        if dec == "bert"
        else GPT2Config(**tiny_gpt2(tie_word_embeddings=False))
    )
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(**tiny_sizes()), dec_cfg, decoder_start_token_id=2, pad_token_id=0
    )
    pt = EncoderDecoderModel.from_config(config).eval()  # HF init (GPT-2's Conv1D starts uninitialised)
    pt.save_pretrained(tmp_path / "pt")
    fx = FlaxEncoderDecoderModel.from_pretrained(tmp_path / "pt", strict=True)
    head = "decoder/cls/predictions/decoder/kernel" if dec == "bert" else "decoder/lm_head/kernel"
    assert flatten_tree(fx.params)[head].shape == (36, 99)
    e = expected("bert2bert")
    assert_close(fx(**batch(e, "a")).logits, _pt_run(pt, batch(e, "a")).logits.numpy(), what=f"untied {dec} head")
