"""A few Keras fit() steps of a fixture model on one CPU device or MirroredStrategy over two.

Usage: ``python tests/tf_mirrored_worker.py {single,mirrored} FIXTURE_DIR OUT_DIR``. Two logical
CPU devices must be set up before TensorFlow starts, hence a subprocess per run. The global
batch is 4 rows with labels and no -100, so each replica's mean loss covers as many tokens
and their average is the global mean. Saves the trained model (canonical checkpoint) to OUT_DIR.
"""

from __future__ import annotations

import sys

import numpy as np


def main(mode: str, fixture: str, out: str) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from encdec_core import load_config
    from encdec_tf import TFEncoderDecoderModel

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if mode == "mirrored" else \
        tf.distribute.OneDeviceStrategy("/cpu:0")
    rng = np.random.default_rng(1)
    data = {"input_ids": rng.integers(3, 99, (12, 9)).astype(np.int32),
            "labels": rng.integers(3, 99, (12, 5)).astype(np.int32)}
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(4)
    config = load_config(fixture)  # no dropout: replicas and the single run must see one function
    for part in (config.encoder, config.decoder):
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
            if hasattr(part, name):
                setattr(part, name, 0.0)
    with strategy.scope():
        model = TFEncoderDecoderModel.from_pretrained(fixture, config=config)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05))
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    model.save_pretrained(out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
