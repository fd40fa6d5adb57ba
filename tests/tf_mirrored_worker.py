"""A few Keras fit() steps of a fixture model: one CPU device, MirroredStrategy over two, or one worker of many.

Usage: ``python tests/tf_mirrored_worker.py {single,mirrored,multiworker} FIXTURE_DIR OUT_DIR``.
Two logical CPU devices must be set up before TensorFlow starts, hence a subprocess per run.
``multiworker`` is one process of a ``MultiWorkerMirroredStrategy`` cluster described by
``TF_CONFIG`` (one CPU device each); the chief (worker 0) saves. The global batch is 4 rows with
labels and no -100, so each replica's mean loss covers as many tokens and their average is the
global mean; under multiworker, tf.data gives each worker its rows of every global batch.
Saves the trained model (canonical checkpoint) to OUT_DIR.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def main(mode: str, fixture: str, out: str) -> None:
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from encdec_core import load_config
    from encdec_tf import TFEncoderDecoderModel

    keras.utils.set_random_seed(0)
    if mode == "multiworker":  # the cluster comes from TF_CONFIG; collectives time out instead of hanging
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=120)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    elif mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    rng = np.random.default_rng(1)
    data = {
        "input_ids": rng.integers(3, 99, (12, 9)).astype(np.int32),
        "labels": rng.integers(3, 99, (12, 5)).astype(np.int32),
    }
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(4)
    config = load_config(fixture)  # no dropout: replicas and the single run must see one function
    for part in (config.encoder, config.decoder):
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
            if hasattr(part, name):
                setattr(part, name, 0.0)
    with strategy.scope():
        model = TFEncoderDecoderModel.from_pretrained(fixture, config=config)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05))
    if mode == "multiworker":
        _fit_multiworker(model, strategy, dataset)
    else:
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    if mode != "multiworker" or json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0:
        model.save_pretrained(out)


def _fit_multiworker(model, strategy, dataset) -> None:
    """``fit``'s own step (``model.train_step``) over the distributed dataset, one epoch.

    Keras 3's ``fit`` cannot start under MultiWorkerMirroredStrategy (before the first step it
    reduces a batch of dicts across workers, which that strategy rejects: keras-team/keras#20585),
    so this loop does what ``fit`` does after that point.
    """
    import tensorflow as tf

    with strategy.scope():
        model.optimizer.build(model.trainable_variables)  # variables first, outside the replica function
    step = tf.function(lambda batch: strategy.run(model.train_step, args=(batch,)))
    for batch in strategy.experimental_distribute_dataset(dataset):
        step(batch)


if __name__ == "__main__":
    main(*sys.argv[1:4])
