"""A SavedModel that generates: ids and mask in, ids out, runnable without encdec.

>>> model.export_generate("served", max_new_tokens=32, num_beams=4)  # doctest: +SKIP
>>> served = tf.saved_model.load("served")                            # doctest: +SKIP
>>> served.signatures["serving_default"](input_ids=ids, attention_mask=mask)["sequences"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import tensorflow as tf

from encdec_core.decoding import trim
from encdec_core.errors import InputError
from encdec_core.generation import resolve
from encdec_core.validation import max_positions
from encdec_tf.generation import decoding_function, encoder_function, knobs


def export_generate(model, path: str | os.PathLike, **settings) -> Path:
    """Write a SavedModel at ``path`` whose ``serving_default`` signature runs ``model.generate``.

    ``settings`` (``max_new_tokens=``, ``num_beams=``, ``do_sample=``, ...) override the model's
    generation config and are fixed in the export. The signature takes ``input_ids`` and
    ``attention_mask`` (int32, (batch, source length), any sizes), plus ``seed`` (int32 scalar)
    when sampling, and returns ``sequences`` (int32, decoder start token first, trimmed as
    ``generate`` trims them) and, for beam search, ``sequences_scores``. The decoding inside is
    the XLA-compiled function of ``generate``: TensorFlow compiles it for each input shape it
    meets, so serving with a few padded source lengths keeps compilations few.
    """
    gen = model._generation_config(None, settings)
    plan = resolve(
        gen,
        prompt_length=1,
        vocab_size=model.config.decoder.vocab_size,
        max_positions=max_positions(model.config.decoder),
    )
    if plan.candidates:
        raise InputError("export_generate: assisted decoding (prompt_lookup_num_tokens) is not exported; drop it")
    encode = encoder_function(model, jit_compile=True)
    decode = decoding_function(model, plan, want_scores=False, jit_compile=True)

    fixed = knobs(plan, model.config.decoder.vocab_size, 0)

    def run(input_ids, attention_mask, seed):
        prompt = tf.fill((tf.shape(input_ids)[0], 1), plan.start_id)  # (B, 1): the decoder start token
        states = encode(input_ids, attention_mask)
        out = trim(
            decode(states, attention_mask, input_ids, prompt, tf.ones_like(prompt), {**fixed, "seed": seed}), 1, False
        )
        if plan.num_beams > 1:
            return {"sequences": out.sequences, "sequences_scores": out.sequences_scores}
        return {"sequences": out.sequences}

    specs = [
        tf.TensorSpec((None, None), tf.int32, "input_ids"),  # any batch size and source length
        tf.TensorSpec((None, None), tf.int32, "attention_mask"),
    ]
    if gen.do_sample:
        specs.append(tf.TensorSpec((), tf.int32, "seed"))
        serve = run
    else:

        def serve(input_ids, attention_mask):
            return run(input_ids, attention_mask, tf.constant(0))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=specs)
    archive.write_out(str(path), verbose=False)
    return Path(path)


__all__ = ["export_generate"]
