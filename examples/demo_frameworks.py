"""The demo's step 5: the PyTorch checkpoint in Keras 3 and in Flax, text to text, then more fine-tuning.

Each framework loads the canonical folder as it is (no conversion, no ``from_pt``),
generates from the same held-out sentences (the tokenizer in, ``decode(...,
skip_special_tokens=True)`` out) and must produce PyTorch's ids exactly; then it continues
fine-tuning the same weights on more of the training stream (Keras ``train_on_batch``, a
jitted optax step in Flax) and generates again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import text_task as task
from tqdm import tqdm


def _fixed_shape(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Pad every batch to the longest source and target among them: one shape, so one XLA compilation."""
    s = max(b["input_ids"].shape[1] for b in batches)
    t = max(b["labels"].shape[1] for b in batches)
    out = []
    for b in batches:
        ids = np.pad(b["input_ids"], ((0, 0), (0, s - b["input_ids"].shape[1])))  # (B, S), [PAD] = 0
        labels = np.pad(b["labels"], ((0, 0), (0, t - b["labels"].shape[1])), constant_values=task.IGNORE)  # (B, T)
        out.append({"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64), "labels": labels})
    return out


def _keras(folder: Path, lr: float):
    import keras

    from encdec_tf import TFEncoderDecoderModel

    keras.utils.set_random_seed(0)
    model = TFEncoderDecoderModel.from_pretrained(folder)  # the PyTorch checkpoint as it is

    def fit(bar) -> list[float]:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr))  # no loss: computed from labels
        losses = []
        for batch in bar:
            losses.append(float(model.train_on_batch(batch)))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        return losses

    return (
        model,
        lambda enc: np.asarray(
            model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=32)
        ),
        fit,
    )


def _flax(folder: Path, lr: float):
    import jax
    import optax

    from encdec_flax import FlaxEncoderDecoderModel, make_train_step

    model = FlaxEncoderDecoderModel.from_pretrained(folder)

    def fit(bar) -> list[float]:
        optimizer = optax.adamw(lr, weight_decay=0.01)
        step = make_train_step(model, optimizer)  # jax.jit(loss, grad, update)
        params, opt_state, key, losses = model.params, optimizer.init(model.params), jax.random.PRNGKey(0), []
        for i, batch in enumerate(bar):
            params, opt_state, loss = step(params, opt_state, batch, jax.random.fold_in(key, i))
            losses.append(float(loss))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        model.params = params
        return losses

    return (
        model,
        lambda enc: model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=32).sequences,
        fit,
    )


def continue_elsewhere(
    folder: Path,
    tok,
    split: task.Split,
    enc: dict[str, np.ndarray],
    pt_ids: np.ndarray,
    args,
    stream: Callable[[int], Iterator[dict]],
) -> dict[str, dict]:
    """Keras and Flax on the PyTorch checkpoint: same ids as ``pt_ids``, then ``args.continue_steps`` more steps."""
    steps = _fixed_shape(list(stream(args.continue_steps))) if args.continue_steps else []
    lr = args.lr / 4  # a continuation: past the warm-up and most of the decay
    results = {}
    for name, load in (("Keras 3 (TensorFlow, XLA generate)", _keras), ("Flax (jax.jit)", _flax)):
        t0 = time.time()
        _, generate, fit = load(folder, lr)
        ids = generate(enc)
        same = ids.shape == pt_ids.shape and np.array_equal(ids, pt_ids)
        texts = tok.decode_batch(ids.tolist(), skip_special_tokens=True)
        losses = fit(tqdm(steps, desc=f"    {name.split()[0]:13s}", unit="step")) if steps else []
        after = tok.decode_batch(generate(enc).tolist(), skip_special_tokens=True)
        verdict = (
            f"greedy ids {'identical to' if same else 'DIFFERENT from'} PyTorch's on {len(ids)} held-out "
            f"sentences, e.g. {split.test_source[0]!r} -> {texts[0]!r}"
        )
        if losses:
            verdict += f"; continued {len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, then {after[0]!r}"
        results[name] = {
            "same_ids": bool(same),
            "ids": ids.tolist(),
            "texts": texts,
            "continued_losses": losses,
            "texts_after": after,
            "seconds": round(time.time() - t0, 1),
            "verdict": verdict,
        }
    return results
