"""Level 5 in Flax: a jitted optax step with dropout makes a warm-started bert2gpt2 learn the toy task."""

from __future__ import annotations

import jax
import numpy as np
import optax

from encdec_core import BertConfig, GPT2Config
from encdec_core.toy import BOS, EOS, PAD, reverse_task
from encdec_flax import BertModel, FlaxEncoderDecoderModel, GPT2LMHeadModel, make_train_step
from tests.test_flax_reference import FAST_COMPILE


def test_warm_started_model_learns_and_depends_on_input(tmp_path):
    vocab = 24
    BertModel(
        BertConfig(
            vocab_size=vocab,
            hidden_size=36,
            num_hidden_layers=1,
            num_attention_heads=3,
            intermediate_size=37,
            max_position_embeddings=16,
        ),
        seed=1,
    ).save_pretrained(tmp_path / "enc")
    GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_embd=36,
            n_layer=1,
            n_head=3,
            n_inner=37,
            n_positions=16,
            bos_token_id=BOS,
            eos_token_id=EOS,
        ),
        seed=2,
    ).save_pretrained(tmp_path / "dec")
    model = FlaxEncoderDecoderModel.from_encoder_decoder_pretrained(
        tmp_path / "enc",
        tmp_path / "dec",
        encoder_hidden_dropout_prob=0.0,
        decoder_resid_pdrop=0.0,
        decoder_start_token_id=BOS,
        pad_token_id=PAD,
    )
    src, tgt = reverse_task(2048, length=4, vocab_size=vocab, seed=1)
    optimizer = optax.adamw(3e-3)
    step = make_train_step(model, optimizer, **FAST_COMPILE)
    params, opt_state = model.params, optimizer.init(model.params)
    key, order = jax.random.PRNGKey(0), np.random.default_rng(0)
    losses = []
    for i in range(250):
        idx = order.integers(0, len(src), 32)
        params, opt_state, loss = step(
            params, opt_state, {"input_ids": src[idx], "labels": tgt[idx]}, jax.random.fold_in(key, i)
        )  # attention dropout stays on: fresh masks per step
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:10]), (losses[:10], losses[-10:])

    test_src, test_tgt = reverse_task(64, length=4, vocab_size=vocab, seed=99)
    predict = jax.jit(lambda p, s, t: model(s, labels=t, params=p).logits.argmax(-1), **FAST_COMPILE)
    pred = np.asarray(predict(params, test_src, test_tgt))
    # the same decoder inputs with another source: predictions must follow the source
    other = np.asarray(predict(params, np.roll(test_src, 1, axis=0), test_tgt))
    acc = float((pred == test_tgt).mean())
    assert acc > 0.9, f"teacher-forced accuracy {acc:.2f} on held-out examples"
    assert float((other != pred).mean()) > 0.5
