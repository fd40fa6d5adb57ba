"""The Flax building blocks: one attention module, one block, the layer stack, masks.

Module and attribute names copy HF's Flax parameter tree (``attention/self/query``,
``attn/c_attn``, ``self_attn/q_proj``, ``LayerNorm``), so the Flax column of the core weight
tables addresses our parameters directly. The families differ only by the config's structure
flags: ``config.layout`` names a block's parts (BERT's ``query``/``key``/``value`` with an
``output`` AddNorm, GPT-2's fused ``Conv1D``, DistilBERT's ``q_lin``..``out_lin``, BART's
``q_proj``..``out_proj``: :data:`PROJECTIONS`, :data:`BLOCK_PARTS`), ``config.pre_norm`` the
place of the LayerNorm (after the residual sum, or before the sublayer: GPT-2, MBart) and
``config.relative_attention`` BERT's relative-position self-attention (``distance_embedding``).

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
from encdec_core.outputs import run_layers

Dtype = Any
NEG = float(jnp.finfo(jnp.float32).min)  # additive mask value: finite, so an all-masked row stays uniform, not NaN


def activation(name: str):
    """HF activation name -> function: exact (erf) GELU or its tanh approximation."""
    return partial(nn.gelu, approximate=ACTIVATIONS[name] == "tanh")


def LayerNorm(config: PretrainedConfig, dtype: Dtype) -> nn.LayerNorm:  # noqa: N802 (HF's attribute name)
    """LayerNorm with the config's epsilon and the two-pass variance (as PyTorch), not E[x^2] - E[x]^2."""
    return nn.LayerNorm(epsilon=config.norm_eps, dtype=dtype, use_fast_variance=False)


def dot_last(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w.T`` for w (out, in), contracting both last axes: an explicit ``w.T`` makes XLA:CPU copy the whole
    transposed matrix at every one-token decode step (measured: a MiniLM step 24 ms instead of 7)."""
    return lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())))


class Conv1D(nn.Module):
    """GPT-2's linear layer as HF Flax stores it: ``kernel`` (out, in), so y = x @ kernel.T + bias."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.normal(0.02), (self.features, x.shape[-1]), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        return dot_last(x, kernel) + bias


# layout -> the Dense layers of an attention: query, key, value, output (BERT's output is its sublayer's AddNorm)
PROJECTIONS = {
    "bert": ("query", "key", "value", None),
    "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin"),
    "bart": ("q_proj", "k_proj", "v_proj", "out_proj"),
}
# layout -> a block's parts: self-attention, cross-attention, the LayerNorms of its three sublayers, feed-forward
# (BART's feed-forward is the block's own fc1 / fc2; BERT's block is AttentionSublayer / AddNorm, see Block)
BLOCK_PARTS = {
    "gpt2": ("attn", "crossattention", ("ln_1", "ln_cross_attn", "ln_2"), "mlp"),
    "distilbert": ("attention", None, ("sa_layer_norm", None, "output_layer_norm"), "ffn"),
    "bart": (
        "self_attn",
        "encoder_attn",
        ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"),
        None,
    ),
}
FFN_PARTS = {"gpt2": ("c_fc", "c_proj"), "distilbert": ("lin1", "lin2")}


def _linear(config: PretrainedConfig, features: int, dtype: Dtype) -> nn.Module:
    return Conv1D(features, dtype) if config.layout == "gpt2" else nn.Dense(features, dtype=dtype)


class Attention(nn.Module):
    """Multi-head attention, self or cross, with the parameter layout of ``config.layout``.

    BERT: ``query``, ``key``, ``value`` (the output projection lives in the sublayer's
    ``output``, :class:`AddNorm`); DistilBERT / BART: four Dense layers (:data:`PROJECTIONS`);
    GPT-2: fused ``c_attn`` (q, k, v for self-attention; k, v for cross-attention, whose q is
    ``q_attn``) and ``c_proj``. With ``config.relative_attention`` a self-attention holds
    ``distance_embedding`` (BERT's relative_key / relative_key_query).
    """

    config: PretrainedConfig
    cross: bool
    layer_idx: int = 0
    dtype: Dtype = jnp.float32

    def setup(self):
        c, d = self.config, self.config.hidden_size
        if c.layout == "gpt2":
            if self.cross:
                self.q_attn = Conv1D(d, self.dtype)
                self.c_attn = Conv1D(2 * d, self.dtype)
            else:
                self.c_attn = Conv1D(3 * d, self.dtype)
            self.c_proj = Conv1D(d, self.dtype)
        else:
            for name in PROJECTIONS[c.layout]:
                if name:
                    setattr(self, name, nn.Dense(d, dtype=self.dtype))
        self.resid_dropout = nn.Dropout(0.0 if c.layout == "distilbert" else c.hidden_dropout)
        self.attn_dropout = nn.Dropout(c.attn_dropout)
        if c.relative_attention and not self.cross:  # never in cross-attention
            self.distance_embedding = nn.Embed(c.relative_distances, c.head_dim, dtype=self.dtype)

    def _scale(self) -> float:
        return self.config.attention_scale(self.layer_idx)

    def _proj(self, i: int) -> nn.Module | None:
        name = PROJECTIONS[self.config.layout][i]
        return getattr(self, name) if name else None

    def _split(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        h = self.config.num_attention_heads
        return x.reshape(b, t, h, d // h).transpose(0, 2, 1, 3)  # (B,H,T,K)

    def kv(self, source: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Cross-attention keys and values of ``source`` (B,S,D_kv): two (B,H,S,K) arrays."""
        if self.config.layout == "gpt2":
            k, v = jnp.split(self.c_attn(source), 2, axis=-1)
        else:
            k, v = self._proj(1)(source), self._proj(2)(source)
        return self._split(k), self._split(v)

    def _relative(self, q: jax.Array, k: jax.Array, index) -> jax.Array:
        """BERT's relative-position scores (B,H,T,S), float32: query t at position index + t, key s at slot s."""
        c = self.config
        span = (c.relative_distances - 1) // 2  # max_position_embeddings - 1
        qpos = (0 if index is None else index) + jnp.arange(q.shape[2])
        dist = qpos[:, None] - jnp.arange(k.shape[2])[None, :] + span  # (T,S)
        # slots beyond the table (a cache longer than the positions) are masked: clip, never read out of range
        e = self.distance_embedding(jnp.clip(dist, 0, c.relative_distances - 1))  # (T,S,K)
        rel = jnp.einsum("bhtk,tsk->bhts", q, e, preferred_element_type=jnp.float32)
        if c.relative_attention == "relative_key_query":
            rel = rel + jnp.einsum("bhsk,tsk->bhts", k, e, preferred_element_type=jnp.float32)
        return rel

    def __call__(self, x, mask=None, *, kv=None, cache=None, index=None, deterministic=True, need_weights=False):
        """x (B,T,D) -> (context (B,T,D), cache entry (k, v) or None, probs (B,H,T,S) or None).

        ``mask`` is additive float32, broadcastable to (B,H,T,S). Self-attention with ``cache``
        (k, v), each (B,H,L,K): this step's keys/values are written at slot ``index`` with
        ``lax.dynamic_update_slice`` and the queries attend over all L slots (``mask`` hides
        the slots not written yet). Cross-attention with ``cache``: the encoder's keys/values,
        computed once by :meth:`kv`, are used as they are and ``kv`` (the encoder states) is ignored;
        they may be (N/g,H,S,K) for N = g * B rows, the g rows of a source sharing its keys/values
        (generation's beams), the ``mask`` then being (N/g,1,1,S). Relative positions (self-attention
        only) put query t at ``index + t`` and key s at slot s.
        """
        gpt2 = self.config.layout == "gpt2"
        if gpt2 and not self.cross:
            q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
            k, v = self._split(k), self._split(v)
        else:
            q = self.q_attn(x) if gpt2 else self._proj(0)(x)
            if self.cross:
                k, v = cache if cache is not None else self.kv(kv)
            else:
                k, v = self._split(self._proj(1)(x)), self._split(self._proj(2)(x))
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
        scores = jnp.einsum("bhtk,bhsk->bhts", q, k, preferred_element_type=jnp.float32)
        if self.config.relative_attention and not self.cross:
            scores = scores + self._relative(q, k, index)  # before the scale, as Transformers
        scores = scores * self._scale()
        if mask is not None:
            scores = scores + mask
        probs = jax.nn.softmax(scores, axis=-1)  # (B,H,T,S) float32
        dropped = self.attn_dropout(probs, deterministic=deterministic)
        ctx = jnp.einsum("bhts,bhsk->bhtk", dropped.astype(v.dtype), v)
        if g > 1:
            ctx, probs = _unfold_rows(ctx, g), _unfold_rows(probs, g)  # (N,H,T,K), (N,H,T,S)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1)  # (B,T,D)
        out = self.c_proj if gpt2 else self._proj(3)
        if out is not None:
            ctx = self.resid_dropout(out(ctx), deterministic=deterministic)
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
        self.self = Attention(self.config, cross=self.cross, dtype=self.dtype)
        self.output = AddNorm(self.config, self.dtype)


class FeedForward(nn.Module):
    """Position-wise MLP: BERT's ``intermediate.dense`` (its output half is an AddNorm), GPT-2's ``mlp``
    or DistilBERT's ``ffn`` (:data:`FFN_PARTS`)."""

    config: PretrainedConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        if c.layout == "bert":
            self.dense = nn.Dense(c.intermediate_size, dtype=self.dtype)
            return
        fc_in, fc_out = FFN_PARTS[c.layout]
        setattr(self, fc_in, _linear(c, c.intermediate_size, self.dtype))
        setattr(self, fc_out, _linear(c, c.hidden_size, self.dtype))
        self.dropout = nn.Dropout(c.hidden_dropout)

    def __call__(self, x, deterministic=True):
        act = activation(self.config.act_name)
        if self.config.layout == "bert":
            return act(self.dense(x))  # (B,T,I)
        fc_in, fc_out = (getattr(self, n) for n in FFN_PARTS[self.config.layout])
        return self.dropout(fc_out(act(fc_in(x))), deterministic=deterministic)


class Block(nn.Module):
    """One transformer layer: self-attention, optional cross-attention, feed-forward.

    ``config.layout`` names the parts (:data:`BLOCK_PARTS`; BERT's are ``attention``,
    ``crossattention``, ``intermediate``, ``output``); ``config.pre_norm`` places the
    LayerNorms: post-LN ``x = LN(x + f(x))`` (BERT, DistilBERT, BART) or pre-LN
    ``x = x + f(LN(x))`` (GPT-2, MBart). Cross-attention exists when the config has
    ``has_cross_attention`` (``add_cross_attention``; always for BART).
    """

    config: PretrainedConfig
    layer_idx: int
    dtype: Dtype = jnp.float32

    def setup(self):
        c, dt = self.config, self.dtype
        self.has_cross = c.has_cross_attention
        if c.layout == "bert":
            self.attention = AttentionSublayer(c, cross=False, dtype=dt)
            if self.has_cross:
                self.crossattention = AttentionSublayer(c, cross=True, dtype=dt)
            self.intermediate = FeedForward(c, dtype=dt)
            self.output = AddNorm(c, dt)
            return
        attn, cross, norms, ffn = BLOCK_PARTS[c.layout]
        setattr(self, attn, Attention(c, cross=False, layer_idx=self.layer_idx, dtype=dt))
        setattr(self, norms[0], LayerNorm(c, dt))
        if self.has_cross:
            setattr(self, cross, Attention(c, cross=True, layer_idx=self.layer_idx, dtype=dt))
            setattr(self, norms[1], LayerNorm(c, dt))
        setattr(self, norms[2], LayerNorm(c, dt))
        if ffn:
            setattr(self, ffn, FeedForward(c, dtype=dt))
        else:  # BART: fc1 / fc2 are the block's own
            self.fc1 = nn.Dense(c.intermediate_size, dtype=dt)
            self.fc2 = nn.Dense(c.hidden_size, dtype=dt)
            self.act_dropout = nn.Dropout(getattr(c, "act_dropout", 0.0))
            self.dropout = nn.Dropout(c.hidden_dropout)

    def _part(self, i: int):
        """(heads, LayerNorm, BERT's AddNorm) of sublayer i: 0 self-attention, 1 cross-attention, 2 feed-forward."""
        layout = self.config.layout
        if layout == "bert":
            sub = (self.attention, getattr(self, "crossattention", None), None)[i]
            return (sub.self, None, sub.output) if sub is not None else (self.intermediate, None, self.output)
        attn, cross, norms, _ = BLOCK_PARTS[layout]
        return (getattr(self, (attn, cross)[i]) if i < 2 else None), getattr(self, norms[i]), None

    def _ffn(self, x, deterministic):
        ffn = BLOCK_PARTS[self.config.layout][3]
        if ffn:
            return getattr(self, ffn)(x, deterministic)
        h = self.act_dropout(activation(self.config.act_name)(self.fc1(x)), deterministic=deterministic)
        return self.dropout(self.fc2(h), deterministic=deterministic)

    def cross_kv(self, enc: jax.Array) -> tuple[jax.Array, jax.Array]:
        """This layer's cross-attention keys/values (B,H,S,K) of the encoder states: the cache's cross entries."""
        return self._part(1)[0].kv(enc)

    def _sublayer(self, x, f, norm, out, deterministic):
        """Run one sublayer ``f`` (x -> (y, extras...)) in this block's LayerNorm order."""
        if out is not None:  # BERT: AddNorm
            y, *rest = f(x)
            return out(y, x, deterministic), *rest
        if self.config.pre_norm:
            y, *rest = f(norm(x))
            return x + y, *rest
        y, *rest = f(x)
        return norm(x + y), *rest

    def __call__(
        self, x, mask=None, enc=None, enc_mask=None, cache=None, index=None, deterministic=True, need_weights=False
    ):
        """x (B,T,D) -> (x, this layer's new :class:`~encdec_core.decoding.LayerCache` or None, self probs, cross probs)."""
        heads, norm, out = self._part(0)
        past = None if cache is None else (cache.key, cache.value)
        x, present, p_self = self._sublayer(
            x,
            lambda h: heads(h, mask, index=index, cache=past, deterministic=deterministic, need_weights=need_weights),
            norm,
            out,
            deterministic,
        )
        new_cache = None if cache is None else cache._replace(key=present[0], value=present[1])
        p_cross = None
        cross_cache = None if cache is None or cache.cross_key is None else (cache.cross_key, cache.cross_value)
        if self.has_cross and (enc is not None or cross_cache is not None):
            heads, norm, out = self._part(1)
            x, _, p_cross = self._sublayer(
                x,
                lambda h: heads(
                    h, enc_mask, kv=enc, cache=cross_cache, deterministic=deterministic, need_weights=need_weights
                ),
                norm,
                out,
                deterministic,
            )
        _, norm, out = self._part(2)
        if out is not None:
            x = out(self.intermediate(x), x, deterministic)
        else:
            (x,) = self._sublayer(x, lambda h: (self._ffn(h, deterministic),), norm, None, deterministic)
        return x, new_cache, p_self, p_cross


class Layers(nn.Module):
    """The layer stack (BERT's ``encoder/layer``, GPT-2's ``h``, BART's ``layers``), blocks named "0" .. "n-1"."""

    config: PretrainedConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        n = self.config.num_layers
        self.blocks = [Block(self.config, i, dtype=self.dtype, name=str(i)) for i in range(n)]

    def cross_kv(self, enc: jax.Array) -> tuple[tuple[jax.Array, jax.Array], ...]:
        return tuple(block.cross_kv(enc) for block in self.blocks)

    def __call__(self, x, *, mask, enc, enc_mask, cache, index, deterministic, output_attentions, output_hidden_states):
        """Run the blocks (:func:`encdec_core.outputs.run_layers`), with the new per-layer caches."""

        def step(i, block, x):
            past = None if cache is None else cache[i]
            return block(x, mask, enc, enc_mask, past, index, deterministic, output_attentions)

        x, extra = run_layers(
            self.blocks,
            x,
            step,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            keep_presents=cache is not None,
        )
        extra["layers"] = extra.pop("past_key_values")
        return x, extra


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
