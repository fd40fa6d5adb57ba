"""Training with optax: one jitted step (loss, gradients, update) with fresh dropout per step.

>>> import optax  # doctest: +SKIP
>>> step = make_train_step(model, optax.adamw(3e-3))  # doctest: +SKIP
>>> opt_state = optax.adamw(3e-3).init(model.params)  # doctest: +SKIP
>>> params, opt_state, loss = step(model.params, opt_state, {"input_ids": src, "labels": tgt}, rng)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax


def loss_fn(model, params: Any, batch: Mapping[str, Any], dropout_rng: jax.Array | None = None) -> jax.Array:
    """The model's loss on ``batch`` (keyword arguments of the model's call, ``labels`` included).

    With ``dropout_rng`` dropout is on (``train=True``); without it the model is deterministic.
    """
    out = model(**batch, params=params, dropout_rng=dropout_rng, train=dropout_rng is not None)
    return out.loss


def make_train_step(model, optimizer: optax.GradientTransformation, *, jit: bool = True, **jit_kwargs: Any) -> Callable:
    """``step(params, opt_state, batch, rng) -> (params, opt_state, loss)`` for ``model`` and ``optimizer``.

    ``rng`` is split once per step for dropout, so the caller passes a fresh key each time
    (``jax.random.fold_in(key, step)``). Compiled once per batch shape with ``jax.jit``.
    Tied weights (``tie_encoder_decoder``) are stored once, so their gradients add up.
    ``jit_kwargs`` go to ``jax.jit`` (``donate_argnums=(0, 1)``, ``compiler_options``, ...).
    """

    def step(params, opt_state, batch, rng):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, batch, rng))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, **jit_kwargs) if jit else step


__all__ = ["loss_fn", "make_train_step"]
