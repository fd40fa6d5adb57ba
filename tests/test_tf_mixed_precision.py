"""Keras' mixed_bfloat16 policy: float32 variables, bf16 compute, float32 loss; training and generate work.

The policy is global: every test restores "float32", so later tests build float32 models.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from conftest import FIXTURES, expected
from tolerances import ATOL, max_abs_diff

from encdec_tf import TFEncoderDecoderModel

CKPT = FIXTURES / "bert2gpt2" / "pt"


def _mixed_model() -> TFEncoderDecoderModel:
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        return TFEncoderDecoderModel.from_pretrained(CKPT)  # the policy is read when layers are built
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_policy_call_and_gradient_step():
    e = expected("bert2gpt2")
    model = _mixed_model()
    batch = {k: tf.constant(e[k]) for k in ("input_ids", "attention_mask", "labels")}
    with tf.GradientTape() as tape:
        out = model(**batch, training=False)
    assert out.logits.dtype == tf.bfloat16 and out.loss.dtype == tf.float32
    assert {v.dtype for v in model.trainable_variables} == {"float32"}
    grads = tape.gradient(out.loss, model.trainable_variables)
    assert all(g is not None and g.dtype == tf.float32 for g in grads)
    assert max_abs_diff(tf.cast(out.logits, tf.float32), e["a.logits"]) <= ATOL["bfloat16"]


def test_mixed_policy_generate_runs_and_matches_float32_here():
    ids = expected("bert2gpt2")["input_ids"]
    mask = expected("bert2gpt2")["attention_mask"]
    mixed, full = _mixed_model(), TFEncoderDecoderModel.from_pretrained(CKPT)
    for settings in ({"max_new_tokens": 5}, {"max_new_tokens": 5, "num_beams": 2}):
        got = mixed.generate(ids, attention_mask=mask, **settings).numpy()
        want = full.generate(ids, attention_mask=mask, **settings).numpy()
        assert got.shape[0] == want.shape[0] and got.dtype == np.int32
        # bf16 may flip a near tie; on this fixture the first generated token agrees
        np.testing.assert_array_equal(got[:, :2], want[:, :2])
