"""Semantics shared by the three backends, written once over an array module ``xp``.

``xp`` is any module with numpy's ``concatenate``, ``full_like`` and ``where`` (numpy,
torch, jax.numpy, tf.experimental.numpy), so PyTorch, Keras and Flax run the same lines.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from encdec_core.errors import InputError

IGNORE_INDEX = -100  # label value excluded from the loss


def check_special_tokens(pad_token_id: Any, decoder_start_token_id: Any, *, what: str = "labels") -> None:
    """Both ids are needed to turn labels into decoder inputs: say so at the call, by name."""
    for name, value in (("decoder_start_token_id", decoder_start_token_id), ("pad_token_id", pad_token_id)):
        if value is None:
            raise InputError(
                f"{name} is not set, but {what} need it: set `model.config.{name}` "
                f"(e.g. the tokenizer's {'cls' if name.startswith('decoder') else 'pad'} token id)"
            )
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InputError(f"{name} expected a non-negative int, got {value!r}")


def shift_tokens_right(labels, pad_token_id: int, decoder_start_token_id: int, *, xp=np):
    """labels (B, T) -> decoder_input_ids (B, T): start token first, labels shifted right, -100 -> pad.

    >>> shift_tokens_right(np.array([[5, 6, -100]]), 0, 2)
    array([[2, 5, 6]])
    """
    check_special_tokens(pad_token_id, decoder_start_token_id)
    start = xp.full_like(labels[:, :1], decoder_start_token_id)
    shifted = xp.concatenate([start, labels[:, :-1]], axis=1)
    return xp.where(shifted == IGNORE_INDEX, xp.full_like(shifted, pad_token_id), shifted)


def default_decoder_attention_mask(decoder_input_ids, pad_token_id: int):
    """With labels and no decoder mask, the decoder attends to its non-pad inputs (as HF's PyTorch class)."""
    return decoder_input_ids != pad_token_id


def decoder_inputs_from_labels(
    labels,
    decoder_input_ids,
    decoder_attention_mask,
    pad_token_id: Any,
    decoder_start_token_id: Any,
    *,
    xp=np,
    has_embeds: bool = False,
):
    """The loss rule's inputs: -> (decoder_input_ids, decoder_attention_mask).

    With ``labels`` and no decoder inputs (ids or embeddings), the ids are the labels shifted
    right and, without a decoder mask, the mask is ``ids != pad_token_id``; otherwise both
    come back as given. Never shift twice.

    >>> ids, mask = decoder_inputs_from_labels(np.array([[5, 0, -100]]), None, None, 0, 2)
    >>> ids.tolist(), mask.tolist()
    ([[2, 5, 0]], [[True, True, False]])
    """
    if labels is None or decoder_input_ids is not None or has_embeds:
        return decoder_input_ids, decoder_attention_mask
    decoder_input_ids = shift_tokens_right(labels, pad_token_id, decoder_start_token_id, xp=xp)
    if decoder_attention_mask is None:
        decoder_attention_mask = default_decoder_attention_mask(decoder_input_ids, pad_token_id)
    return decoder_input_ids, decoder_attention_mask


def check_label_array(labels, vocab_size: int) -> None:
    """Integer labels in [0, vocab_size) or -100, on host values (a numpy array)."""
    values = np.asarray(labels)
    if not np.issubdtype(values.dtype, np.integer):
        raise InputError(f"labels must hold integer token ids, got dtype {values.dtype}")
    kept = values[values != IGNORE_INDEX]
    if kept.size:
        from encdec_core.validation import check_label_values  # validation imports this module

        check_label_values(int(kept.min()), int(kept.max()), vocab_size)


def split_prefixed_kwargs(
    kwargs: dict, prefix: str, other_prefix: str | None = None, *, default: str = ""
) -> tuple[dict, dict]:
    """Split ``decoder_x=...`` from the rest: (other kwargs, prefix-stripped kwargs).

    With ``other_prefix`` the first dict keeps only keys with that prefix (stripped).
    """
    mine = {k[len(prefix) :]: v for k, v in kwargs.items() if k.startswith(prefix)}
    if other_prefix is None:
        rest = {k: v for k, v in kwargs.items() if not k.startswith(prefix)}
    else:
        rest = {k[len(other_prefix) :]: v for k, v in kwargs.items() if k.startswith(other_prefix)}
    return rest, mine


__all__ = [
    "IGNORE_INDEX",
    "check_special_tokens",
    "shift_tokens_right",
    "default_decoder_attention_mask",
    "decoder_inputs_from_labels",
    "check_label_array",
    "split_prefixed_kwargs",
]
