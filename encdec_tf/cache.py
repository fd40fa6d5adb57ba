"""The decoder's key/value cache: HF's growing tuples, or a preallocated :class:`DecoderCache` for XLA.

HF's format (``past_key_values``): per layer ``(k, v[, cross_k, cross_v])``, each (B,H,S,K);
every step concatenates, so shapes change and a compiled step would recompile. The
preallocated cache keeps every shape fixed, writes each step at a position held in a tensor,
and masks the positions not written yet by causality: one XLA compilation serves a whole
generation (the Flax / keras-hub design).

Shapes: B batch, H heads, L the cache's length (max_length), S source length, K head width.
"""

from __future__ import annotations

import tensorflow as tf

# XLA's in-place DynamicUpdateSlice (TF's own wrapper; it also runs eagerly, as a one-op XLA cluster)
from tensorflow.compiler.tf2xla.python.xla import dynamic_update_slice

from encdec_core.decoding import DecoderCache, LayerCache
from encdec_core.errors import InputError


def write_cache(buffer: tf.Tensor, new: tf.Tensor, index) -> tf.Tensor:
    """Write ``new`` (B,H,T,K) into ``buffer`` (B,H,L,K) at time ``index``: fixed shapes, so XLA compiles once.

    XLA clamps the start so the update fits: the caller keeps ``index + T <= L``.
    """
    zero = tf.zeros((), tf.int32)
    return dynamic_update_slice(buffer, new, tf.stack([zero, zero, tf.cast(index, tf.int32), zero]))


def reorder_cache(cache: DecoderCache, beam_idx, shared_cross: bool | None = None) -> DecoderCache:
    """The cache of the rows ``beam_idx`` (N_new,): what beam search keeps after a step.

    Cross keys/values and the encoder mask follow the rows when they hold one per row. When
    they are shared (B sources for N = B * g rows, see ``init_cache``) they stay as they are:
    ``beam_idx`` must then keep every row within its source, as beam search does.
    ``shared_cross=None`` tells the two apart by the static batch sizes.
    """
    take = lambda t: None if t is None else tf.gather(t, beam_idx, axis=0)  # noqa: E731
    if shared_cross is None:
        first = cache.layers[0]
        shared_cross = first.cross_key is not None and first.key.shape[0] != first.cross_key.shape[0]
    if not shared_cross:
        layers = tuple(LayerCache(*(take(t) for t in e)) for e in cache.layers)
        return DecoderCache(cache.index, layers, take(cache.encoder_attention_mask))
    layers = tuple(e._replace(key=take(e.key), value=take(e.value)) for e in cache.layers)
    return cache._replace(layers=layers)


def empty_cache(
    attention_layers, batch_size: int, max_length: int, encoder_hidden_states=None, encoder_attention_mask=None
) -> DecoderCache:
    """Zero self-attention buffers for each (self, cross) attention pair; cross keys/values computed now.

    With ``batch_size = B * g`` rows for B encoder states (beams, samples), the cross entries
    stay (B,H,S,K), shared by each source's g consecutive rows (attention folds them into its
    queries) rather than tiled g times. The encoder mask is (B, S) int32 ((B, 0) without
    cross-attention).
    """
    layers = []
    for self_attn, cross_attn in attention_layers:
        # (B,H,L,K) in the layer's compute dtype: bf16 under a mixed_bfloat16 policy, as the keys it will hold
        empty = tf.zeros((batch_size, self_attn.n_heads, max_length, self_attn.head_dim), self_attn.compute_dtype)
        cross = (None, None)
        if cross_attn is not None and encoder_hidden_states is not None:
            cross = cross_attn.project_kv(tf.convert_to_tensor(encoder_hidden_states))  # (B,H,S,K) x 2
        layers.append(LayerCache(empty, empty, *cross))
    if encoder_hidden_states is None:
        enc_mask = tf.zeros((batch_size, 0), tf.int32)
    elif encoder_attention_mask is None:
        enc_mask = tf.ones(tf.shape(encoder_hidden_states)[:2], tf.int32)
    else:
        enc_mask = tf.cast(encoder_attention_mask, tf.int32)
    return DecoderCache(tf.zeros((), tf.int32), tuple(layers), enc_mask)


def as_cache(index, presents, encoder_attention_mask) -> DecoderCache:
    """The per-layer ``(k, v[, cross_k, cross_v])`` tuples of a step as a :class:`DecoderCache` at ``index``."""
    return DecoderCache(index, tuple(LayerCache(*p) for p in presents), encoder_attention_mask)


def past_state(past_key_values, encoder_attention_mask):
    """(past length, cache index or None, per-layer pasts, encoder mask) of HF tuples or a DecoderCache."""
    if isinstance(past_key_values, DecoderCache):
        enc_mask = past_key_values.encoder_attention_mask
        return past_key_values.index, past_key_values.index, past_key_values.layers, enc_mask
    past = 0 if past_key_values is None else (past_key_values[0][0].shape[2] or tf.shape(past_key_values[0][0])[2])
    return past, None, past_key_values, encoder_attention_mask


def check_room(past_key_values, t) -> None:
    """Eagerly refuse a step that would not fit the preallocated cache (XLA would clamp it silently)."""
    if isinstance(past_key_values, DecoderCache) and tf.executing_eagerly():
        end = int(past_key_values.index) + int(t)
        if end > past_key_values.max_length:
            raise InputError(
                f"past_key_values: this step writes positions up to {end}, but the cache holds "
                f"max_length={past_key_values.max_length}; build it with a larger init_cache(max_length=...)"
            )


__all__ = [
    "DecoderCache",
    "LayerCache",
    "write_cache",
    "reorder_cache",
    "empty_cache",
    "as_cache",
    "past_state",
    "check_room",
]
