"""The Flax building blocks: one attention module, one block, the layer stack, masks.

Module and attribute names copy HF's Flax parameter tree (``attention/self/query``,
``attn/c_attn``, ``LayerNorm``), so the Flax column of the core weight tables addresses our
parameters directly. BERT and GPT-2 differ only by flags: the projection layout (separate
``query``/``key``/``value`` Dense layers vs GPT-2's fused ``Conv1D``) and the place of the
LayerNorm (after the residual sum in BERT, before the sublayer in GPT-2).

Shapes: B batch, T query length, S key length (source, or the cache's L slots), L the static
cache length (``max_length``), D model width, H heads, K head width (D / H), I feed-forward
width, V vocabulary.

Attention scores, masks and softmax are computed in float32 whatever the compute ``dtype``
(bf16 scores lose the small differences between neighbouring logits); everything else runs
in ``dtype`` with the parameters kept as stored (float32 by default).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

from encdec_core.configs import ACTIVATIONS, PretrainedConfig

Dtype = Any
NEG = float(jnp.finfo(jnp.float32).min)  # additive mask value: finite, so an all-masked row stays uniform, not NaN


def activation(name: str):
    """HF activation name -> function: exact (erf) GELU or its tanh approximation."""
    return partial(nn.gelu, approximate=ACTIVATIONS[name] == "tanh")


def LayerNorm(config: PretrainedConfig, dtype: Dtype) -> nn.LayerNorm:  # noqa: N802 (HF's attribute name)
    """LayerNorm with the config's epsilon and the two-pass variance (as PyTorch), not E[x^2] - E[x]^2."""
    return nn.LayerNorm(epsilon=config.norm_eps, dtype=dtype, use_fast_variance=False)


class Conv1D(nn.Module):
    """GPT-2's linear layer as HF Flax stores it: ``kernel`` (out, in), so y = x @ kernel.T + bias."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.normal(0.02), (self.features, x.shape[-1]), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        return x @ kernel.T + bias


class Attention(nn.Module):
    """Multi-head attention, self or cross, with HF's BERT or GPT-2 parameter layout.

    BERT layout: ``query``, ``key``, ``value``; the output projection lives in the sublayer's
    ``output`` (:class:`AddNorm`). GPT-2 layout: fused ``c_attn`` (q, k, v for self-attention;
    k, v for cross-attention, whose q is ``q_attn``) and ``c_proj``.
    """

    config: PretrainedConfig
    gpt2: bool
    cross: bool
    layer_idx: int = 0
    dtype: Dtype = jnp.float32

    def setup(self):
        c, d = self.config, self.config.hidden_size
        if self.gpt2:
            if self.cross:
                self.q_attn = Conv1D(d, self.dtype)
                self.c_attn = Conv1D(2 * d, self.dtype)
            else:
                self.c_attn = Conv1D(3 * d, self.dtype)
            self.c_proj = Conv1D(d, self.dtype)
            self.resid_dropout = nn.Dropout(c.hidden_dropout)
        else:
            self.query = nn.Dense(d, dtype=self.dtype)
            self.key = nn.Dense(d, dtype=self.dtype)
            self.value = nn.Dense(d, dtype=self.dtype)
        self.attn_dropout = nn.Dropout(c.attn_dropout)

    def _scale(self) -> float:
        return self.config.attention_scale(self.layer_idx)

    def _split(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        h = self.config.num_attention_heads
        return x.reshape(b, t, h, d // h).transpose(0, 2, 1, 3)  # (B,H,T,K)

    def kv(self, source: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Cross-attention keys and values of ``source`` (B,S,D_kv): two (B,H,S,K) arrays."""
        if self.gpt2:
            k, v = jnp.split(self.c_attn(source), 2, axis=-1)
        else:
            k, v = self.key(source), self.value(source)
        return self._split(k), self._split(v)

    def __call__(self, x, mask=None, *, kv=None, cache=None, index=None, deterministic=True, need_weights=False):
        """x (B,T,D) -> (context (B,T,D), cache entry (k, v) or None, probs (B,H,T,S) or None).

        ``mask`` is additive float32, broadcastable to (B,H,T,S). Self-attention with ``cache``
        (k, v), each (B,H,L,K): this step's keys/values are written at slot ``index`` with
        ``lax.dynamic_update_slice`` and the queries attend over all L slots (``mask`` hides
        the slots not written yet). Cross-attention with ``cache``: the encoder's keys/values,
        computed once by :meth:`kv`, are used as they are and ``kv`` (the encoder states) is ignored;
        they may be (N/g,H,S,K) for N = g * B rows, the g rows of a source sharing its keys/values
        (generation's beams), the ``mask`` then being (N/g,1,1,S).
        """
        if self.gpt2 and not self.cross:
            q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
            k, v = self._split(k), self._split(v)
        else:
            q = self.q_attn(x) if self.gpt2 else self.query(x)
            if self.cross:
                k, v = cache if cache is not None else self.kv(kv)
            else:
                k, v = self._split(self.key(x)), self._split(self.value(x))
        q = self._split(q)  # (N,H,T,K)
        # g decoder rows per source (beams, samples) share the source's cross keys/values (B = N / g
        # rows): fold the rows into the query axis rather than copy the keys/values g times
        g = q.shape[0] // k.shape[0]
        if g > 1:
            q = _fold_rows(q, g)  # (B,H,g*T,K)
        new_cache = cache
        if cache is not None and not self.cross:
            zero = jnp.zeros((), jnp.int32)
            start = (zero, zero, jnp.asarray(index, jnp.int32), zero)
            k = lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), start)  # (B,H,L,K)
            v = lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), start)
            new_cache = (k, v)
        scores = jnp.einsum("bhtk,bhsk->bhts", q, k, preferred_element_type=jnp.float32) * self._scale()
        if mask is not None:
            scores = scores + mask
        probs = jax.nn.softmax(scores, axis=-1)  # (B,H,T,S) float32
        dropped = self.attn_dropout(probs, deterministic=deterministic)
        ctx = jnp.einsum("bhts,bhsk->bhtk", dropped.astype(v.dtype), v)
        if g > 1:
            ctx, probs = _unfold_rows(ctx, g), _unfold_rows(probs, g)  # (N,H,T,K), (N,H,T,S)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1)  # (B,T,D)
        if self.gpt2:
            ctx = self.resid_dropout(self.c_proj(ctx), deterministic=deterministic)
        return ctx, new_cache, (probs.astype(self.dtype) if need_weights else None)


def _fold_rows(q: jax.Array, g: int) -> jax.Array:
    """(B*g,H,T,K) -> (B,H,g*T,K): the queries of a source's g rows side by side."""
    n, h, t, k = q.shape
    return q.reshape(n // g, g, h, t, k).transpose(0, 2, 1, 3, 4).reshape(n // g, h, g * t, k)


def _unfold_rows(x: jax.Array, g: int) -> jax.Array:
    """(B,H,g*T,X) -> (B*g,H,T,X), the inverse of :func:`_fold_rows`."""
    b, h, gt, last = x.shape
    return x.reshape(b, h, g, gt // g, last).transpose(0, 2, 1, 3, 4).reshape(b * g, h, gt // g, last)


class AddNorm(nn.Module):
    """BERT's ``output`` sublayer: LayerNorm(dropout(dense(x)) + residual)."""

    config: PretrainedConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        self.dense = nn.Dense(self.config.hidden_size, dtype=self.dtype)
        self.LayerNorm = LayerNorm(self.config, self.dtype)
        self.dropout = nn.Dropout(self.config.hidden_dropout)

    def __call__(self, x, residual, deterministic=True):
        return self.LayerNorm(self.dropout(self.dense(x), deterministic=deterministic) + residual)


class AttentionSublayer(nn.Module):
    """BERT's ``attention`` / ``crossattention``: ``self`` (the heads) and ``output`` (AddNorm)."""

    config: PretrainedConfig
    cross: bool
    dtype: Dtype = jnp.float32

    def setup(self):
        self.self = Attention(self.config, gpt2=False, cross=self.cross, dtype=self.dtype)
        self.output = AddNorm(self.config, self.dtype)


class FeedForward(nn.Module):
    """Position-wise MLP: BERT's ``intermediate.dense`` (its output half is an AddNorm) or GPT-2's ``mlp``."""

    config: PretrainedConfig
    gpt2: bool
    dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        if self.gpt2:
            self.c_fc = Conv1D(c.intermediate_size, self.dtype)
            self.c_proj = Conv1D(c.hidden_size, self.dtype)
            self.dropout = nn.Dropout(c.hidden_dropout)
        else:
            self.dense = nn.Dense(c.intermediate_size, dtype=self.dtype)

    def __call__(self, x, deterministic=True):
        if self.gpt2:
            act = activation(self.config.act_name)
            return self.dropout(self.c_proj(act(self.c_fc(x))), deterministic=deterministic)
        return activation(self.config.act_name)(self.dense(x))  # (B,T,I)


class Block(nn.Module):
    """One transformer layer: self-attention, optional cross-attention, feed-forward.

    ``gpt2=False``: BERT post-LN (``x = LN(x + f(x))``); ``gpt2=True``: GPT-2 pre-LN
    (``x = x + f(LN(x))``). Cross-attention exists when the config has ``add_cross_attention``.
    """

    config: PretrainedConfig
    layer_idx: int
    gpt2: bool
    dtype: Dtype = jnp.float32

    def setup(self):
        c, dt = self.config, self.dtype
        self.has_cross = bool(c.add_cross_attention)
        if self.gpt2:
            self.ln_1 = LayerNorm(c, dt)
            self.attn = Attention(c, gpt2=True, cross=False, layer_idx=self.layer_idx, dtype=dt)
            if self.has_cross:
                self.crossattention = Attention(c, gpt2=True, cross=True, layer_idx=self.layer_idx, dtype=dt)
                self.ln_cross_attn = LayerNorm(c, dt)
            self.ln_2 = LayerNorm(c, dt)
            self.mlp = FeedForward(c, gpt2=True, dtype=dt)
        else:
            self.attention = AttentionSublayer(c, cross=False, dtype=dt)
            if self.has_cross:
                self.crossattention = AttentionSublayer(c, cross=True, dtype=dt)
            self.intermediate = FeedForward(c, gpt2=False, dtype=dt)
            self.output = AddNorm(c, dt)

    def _cross_heads(self) -> Attention:
        return self.crossattention if self.gpt2 else self.crossattention.self

    def cross_kv(self, enc: jax.Array) -> tuple[jax.Array, jax.Array]:
        """This layer's cross-attention keys/values (B,H,S,K) of the encoder states: the cache's cross entries."""
        return self._cross_heads().kv(enc)

    def _sublayer(self, x, norm, heads, out, deterministic, **kw):
        """Run one attention sublayer in this block's LayerNorm order."""
        if self.gpt2:
            ctx, present, probs = heads(norm(x), deterministic=deterministic, **kw)
            return x + ctx, present, probs
        ctx, present, probs = heads(x, deterministic=deterministic, **kw)
        return out(ctx, x, deterministic), present, probs

    def __call__(
        self, x, mask=None, enc=None, enc_mask=None, cache=None, index=None, deterministic=True, need_weights=False
    ):
        """x (B,T,D) -> (x, this layer's new :class:`~encdec_core.decoding.LayerCache` or None, self probs, cross probs)."""
        g = self.gpt2
        x, present, p_self = self._sublayer(
            x,
            getattr(self, "ln_1", None),
            self.attn if g else self.attention.self,
            None if g else self.attention.output,
            deterministic,
            mask=mask,
            index=index,
            cache=None if cache is None else (cache.key, cache.value),
            need_weights=need_weights,
        )
        new_cache = None if cache is None else cache._replace(key=present[0], value=present[1])
        p_cross = None
        cross_cache = None if cache is None or cache.cross_key is None else (cache.cross_key, cache.cross_value)
        if self.has_cross and (enc is not None or cross_cache is not None):
            x, _, p_cross = self._sublayer(
                x,
                getattr(self, "ln_cross_attn", None),
                self._cross_heads(),
                None if g else self.crossattention.output,
                deterministic,
                mask=enc_mask,
                kv=enc,
                cache=cross_cache,
                need_weights=need_weights,
            )
        if g:
            x = x + self.mlp(self.ln_2(x), deterministic)
        else:
            x = self.output(self.intermediate(x), x, deterministic)
        return x, new_cache, p_self, p_cross


class Layers(nn.Module):
    """The layer stack: BERT's ``encoder/layer`` or GPT-2's ``h``, blocks named "0" .. "n-1" as HF's tree."""

    config: PretrainedConfig
    gpt2: bool
    dtype: Dtype = jnp.float32

    def setup(self):
        n = self.config.num_hidden_layers
        self.blocks = [Block(self.config, i, gpt2=self.gpt2, dtype=self.dtype, name=str(i)) for i in range(n)]

    def cross_kv(self, enc: jax.Array) -> tuple[tuple[jax.Array, jax.Array], ...]:
        return tuple(block.cross_kv(enc) for block in self.blocks)

    def __call__(self, x, *, mask, enc, enc_mask, cache, index, deterministic, output_attentions, output_hidden_states):
        """Run the blocks, collecting hidden states, attentions and the new per-layer caches as HF does."""
        hidden, attns, cross_attns, layers = [], [], [], []
        for i, block in enumerate(self.blocks):
            if output_hidden_states:
                hidden.append(x)
            x, present, p_self, p_cross = block(
                x, mask, enc, enc_mask, None if cache is None else cache[i], index, deterministic, output_attentions
            )
            layers.append(present)
            attns.append(p_self)
            cross_attns.append(p_cross)
        has_cross = enc is not None or (cache is not None and cache[0].cross_key is not None)
        return x, {
            "hidden_states": hidden,
            "layers": None if cache is None else tuple(layers),
            "attentions": tuple(attns) if output_attentions else None,
            "cross_attentions": tuple(cross_attns) if output_attentions and has_cross else None,
        }


def additive_mask(keep: jax.Array) -> jax.Array:
    """Boolean mask of positions to attend to -> additive float32 mask (0 or the float32 minimum)."""
    return jnp.where(keep, 0.0, NEG).astype(jnp.float32)


def self_attention_mask(attention_mask, t: int, s: int, *, causal: bool, offset=0):
    """Additive (B|1,1,T,S) self-attention mask, or None when nothing is masked.

    ``attention_mask`` (B,S) marks the keys to attend to. ``causal``: query t (at absolute
    position ``offset + t``) sees keys 0 .. offset + t, which with a static cache
    (``offset`` = the cache index, S = L) also hides the slots not written yet.
    """
    keep = None
    if attention_mask is not None:
        keep = attention_mask[:, None, None, :].astype(bool)  # (B,1,1,S)
    if causal:
        tri = jnp.arange(s)[None, :] <= offset + jnp.arange(t)[:, None]  # (T,S)
        keep = tri[None, None] if keep is None else keep & tri[None, None]
    return None if keep is None else additive_mask(keep)


def cross_attention_mask(encoder_attention_mask):
    """(B,S) encoder padding mask -> additive (B,1,1,S), or None."""
    if encoder_attention_mask is None:
        return None
    return additive_mask(encoder_attention_mask[:, None, None, :].astype(bool))


def run_stack(
    layers: Layers,
    x,
    *,
    attention_mask,
    causal,
    enc,
    enc_mask,
    cache,
    deterministic,
    output_attentions,
    output_hidden_states,
):
    """Masks, cache index and the layer stack of a base model: x (B,T,D) -> (x, extra).

    ``cache`` is None or a :class:`~encdec_core.decoding.DecoderCache` (see
    :meth:`encdec_flax.encoder_decoder.FlaxEncoderDecoderModel.init_cache`); ``extra["cache"]``
    is the updated one (index advanced by T).
    """
    t = x.shape[1]
    index = None if cache is None else cache.index
    s = t if cache is None else cache.max_length
    mask = self_attention_mask(attention_mask, t, s, causal=causal, offset=0 if index is None else index)
    x, extra = layers(
        x,
        mask=mask,
        enc=enc,
        enc_mask=cross_attention_mask(enc_mask),
        cache=None if cache is None else cache.layers,
        index=index,
        deterministic=deterministic,
        output_attentions=output_attentions,
        output_hidden_states=output_hidden_states,
    )
    layers = extra.pop("layers")
    extra["cache"] = None if cache is None else cache._replace(index=index + t, layers=layers)
    return x, extra
