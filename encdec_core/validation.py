"""Input checks shared by the three backends: shapes and lengths, before any tensor op.

The backends pass *shapes* (tuples, or None for an absent input), so one function gives the
same error, with the same message, in PyTorch, TensorFlow and Flax, instead of a deep
broadcasting error or an out-of-range embedding lookup (which on some devices reads garbage).

>>> check_batch(None, None, input_ids=(2, 5), attention_mask=(2, 6))
Traceback (most recent call last):
...
encdec_core.errors.InputError: attention_mask has shape (2, 6), expected (2, 5) (the shape of input_ids)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from encdec_core.errors import InputError
from encdec_core.semantics import IGNORE_INDEX

Shape = Sequence[int] | None


def max_positions(config: Any) -> int | None:
    """The longest sequence a model's position embeddings cover (RoBERTa's start after padding_idx)."""
    return None if config is None else config.position_limit


def _two_d(name: str, shape: Shape) -> tuple[int, int] | None:
    if shape is None:
        return None
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise InputError(f"{name} expected shape (batch, length), got {shape}")
    if shape[0] == 0:
        raise InputError(f"{name} is an empty batch (shape {shape}); give at least one row")
    if shape[1] == 0:
        raise InputError(f"{name} has length 0 (shape {shape}); give at least one token")
    return shape  # type: ignore[return-value]


def _same(name: str, shape: Shape, like_name: str, like: tuple[int, int] | None) -> None:
    if shape is not None and like is not None and tuple(shape) != like:
        raise InputError(f"{name} has shape {tuple(shape)}, expected {like} (the shape of {like_name})")


def check_batch(
    encoder_config: Any,
    decoder_config: Any,
    *,
    input_ids: Shape = None,
    attention_mask: Shape = None,
    encoder_states: Shape = None,
    decoder_input_ids: Shape = None,
    decoder_attention_mask: Shape = None,
    labels: Shape = None,
) -> None:
    """Shapes agree (batch sizes, masks = ids) and lengths fit the position embeddings."""
    src = _two_d("input_ids", input_ids)
    if src is None and encoder_states is not None:
        src = tuple(int(s) for s in encoder_states[:2])
    _same("attention_mask", attention_mask, "input_ids" if input_ids is not None else "the encoder states", src)
    dec = _two_d("decoder_input_ids", decoder_input_ids)
    lab = _two_d("labels", labels)
    _same("decoder_attention_mask", decoder_attention_mask, "decoder_input_ids" if dec else "labels", dec or lab)
    if dec is not None and lab is not None:
        _same("labels", lab, "decoder_input_ids", dec)
    for name, shape in (("decoder_input_ids", dec), ("labels", lab)):
        if src is not None and shape is not None and shape[0] != src[0]:
            raise InputError(f"{name} has batch size {shape[0]}, but the source batch has {src[0]} rows")
    for name, shape, config in (
        ("input_ids", src if input_ids is not None else None, encoder_config),
        ("decoder_input_ids" if dec else "labels", dec or lab, decoder_config),
    ):
        limit = max_positions(config)
        if shape is not None and limit is not None and shape[1] > limit:
            raise InputError(
                f"{name} has length {shape[1]}, longer than the {limit} positions the "
                f"{config.model_type} model was trained with (max_position_embeddings / n_positions)"
            )


def check_label_values(low: int | None, high: int | None, vocab_size: int) -> None:
    """Labels are token ids in [0, vocab_size) or -100 (ignored); low/high over the labels that are not -100."""
    if low is None or high is None:
        return
    bad = low if low < 0 else (high if high >= vocab_size else None)
    if bad is not None:
        raise InputError(f"labels hold {bad}, expected token ids in [0, {vocab_size}) or {IGNORE_INDEX} (ignored)")


__all__ = ["check_batch", "check_label_values", "max_positions"]
