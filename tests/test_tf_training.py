"""Training in Keras: fit() on dict batches with the internal loss, a GradientTape loop, gradients as PyTorch's."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from conversion.mapping import from_framework
from encdec_core import BertConfig, EncoderDecoderConfig, GPT2Config
from encdec_core.toy import BOS, PAD, reverse_task
from encdec_pt import EncoderDecoderModel
from encdec_tf import TFEncoderDecoderModel
from tests.conftest import FIXTURES, expected
from tests.tolerances import GRAD_ATOL, assert_close, max_abs_diff

VOCAB = 24


def _toy_model() -> TFEncoderDecoderModel:
    keras.utils.set_random_seed(0)
    enc = BertConfig(
        vocab_size=VOCAB,
        hidden_size=36,
        num_hidden_layers=1,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
    )
    dec = GPT2Config(
        vocab_size=VOCAB, n_embd=36, n_layer=1, n_head=3, n_inner=37, n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0
    )
    model = TFEncoderDecoderModel(config=EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec))
    model.config.decoder_start_token_id, model.config.pad_token_id = BOS, PAD
    return model


def _dataset(n: int, seed: int) -> tf.data.Dataset:
    src, tgt = reverse_task(n, length=4, vocab_size=VOCAB, seed=seed)
    return tf.data.Dataset.from_tensor_slices({"input_ids": src, "attention_mask": np.ones_like(src), "labels": tgt})


def test_fit_on_dict_batches_learns_the_toy_task():
    """compile() without a loss, fit() on {input_ids, attention_mask, labels}: the internal loss falls."""
    model = _toy_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(
        _dataset(2048, seed=1).shuffle(2048, seed=0).batch(32).repeat(),
        epochs=4,
        steps_per_epoch=25,
        shuffle=False,
        verbose=0,
    )
    losses = history.history["loss"]  # per-epoch means
    assert losses[-1] < 0.5 * losses[0], losses
    test = next(iter(_dataset(64, seed=99).batch(64)))
    # (x, y) batches: y are the labels, as with Transformers' TF models (test_step run eagerly: no second trace)
    x = {k: v for k, v in test.items() if k != "labels"}
    model.reset_metrics()  # the loss tracker still averages fit's last epoch
    assert_close(model.test_step((x, test["labels"]))["loss"], model(test).loss, what="test_step on (x, y)")
    pred = tf.argmax(model(test).logits, -1).numpy()
    other = tf.argmax(model({**test, "input_ids": tf.roll(test["input_ids"], 1, axis=0)}).logits, -1).numpy()
    assert (pred != other).mean() > 0.3  # predictions read the source through cross-attention


def test_custom_gradient_tape_loop():
    """A hand-written loop (eager: no trace to pay for a few steps) fits one batch of the toy task."""
    model = _toy_model()
    optimizer = keras.optimizers.Adam(2e-2)
    variables = model.trainable_variables
    batch = next(iter(_dataset(16, seed=3).batch(16)))
    losses = []
    for _ in range(12):
        with tf.GradientTape() as tape:
            loss = model(batch, training=True).loss
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        losses.append(float(loss))
    assert losses[-1] < 0.75 * losses[0], losses  # the loop works; gradient values are checked just below


@pytest.mark.parametrize("pair", ["bert2gpt2_proj", "bert2bert_tied"])
def test_gradients_match_pytorch(pair):
    """Same weights, same batch, dropout off: every gradient within GRAD_ATOL of PyTorch's (ties summed alike)."""
    e = expected(pair)
    pt = EncoderDecoderModel.from_pretrained(FIXTURES / pair / "pt")
    pt.eval()
    pt(**{k: torch.from_numpy(e[k]) for k in ("input_ids", "attention_mask", "labels")}).loss.backward()
    stored = {p.pt for p in pt.weight_table()}  # tied parameters under their stored name, as ours
    pt_grads = {
        n: p.grad.numpy() for n, p in pt.named_parameters(remove_duplicate=False) if n in stored and p.grad is not None
    }

    model = TFEncoderDecoderModel.from_pretrained(FIXTURES / pair / "pt")
    params = model.weight_table()
    named = model.named_variables()
    with tf.GradientTape() as tape:
        loss = model(input_ids=e["input_ids"], attention_mask=e["attention_mask"], labels=e["labels"]).loss
    grads = tape.gradient(loss, [named[p.tf] for p in params])
    used = [(p, g) for p, g in zip(params, grads) if g is not None]
    ours = from_framework({p.tf: tf.convert_to_tensor(g).numpy() for p, g in used}, [p for p, _ in used], "tf")
    assert set(ours) == set(pt_grads) and len(ours) > 50
    worst = max((max_abs_diff(ours[k], pt_grads[k]), k) for k in ours)
    assert worst[0] <= GRAD_ATOL["float32"], f"gradient of {worst[1]}: max abs diff {worst[0]:.3e}"
