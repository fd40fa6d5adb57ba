"""The Keras 3 building blocks: one attention layer, one block, embeddings, masks.

Layer names are HF's TensorFlow names (``attention/self/query``, ``attn/c_attn``, ``LayerNorm``),
so the table name (``Param.tf``) of a variable is, by construction, the chain of layer names
from its model down to it followed by the variable's own name (the rule is written once, in
:func:`encdec_tf.modeling_utils.walk`). Attribute names are the PyTorch backend's, except
``output``, a read-only property of every Keras layer: that attribute is ``output_`` here (its
layer is still named "output"). BERT and GPT-2 differ only by flags, as in ``encdec_pt``.

Variables are declared by the primitive layers (``param_specs``) and created once, by the
model, from the checkpoint's values when loading: nothing is random-initialised first.

Shapes: B batch, T query length, S key length (source, cache + new, or a preallocated cache's
length L), D model width, H heads, K head width (D / H), I feed-forward width, V vocabulary.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from encdec_core.configs import ACTIVATIONS, PretrainedConfig
from encdec_core.outputs import run_layers
from encdec_tf.cache import write_cache


def activation(name: str):
    """HF activation name -> function: exact (erf) GELU or its tanh approximation."""
    approximate = ACTIVATIONS[name] == "tanh"
    return lambda x: tf.nn.gelu(x, approximate=approximate)


def dropout(x: tf.Tensor, rate: float, training: bool) -> tf.Tensor:
    return tf.nn.dropout(x, rate=rate) if training and rate > 0 else x


def dims(x: tf.Tensor) -> list:
    """Static sizes where known, dynamic ones (scalar tensors) elsewhere: reshapes work traced too."""
    dynamic = tf.shape(x)
    return [d if d is not None else dynamic[i] for i, d in enumerate(x.shape)]


# ---------------------------------------------------------------------------------- primitives
class Module(keras.layers.Layer):
    """A Keras layer whose variables are declared, not built: ``param_specs`` = ((name, shape, init), ...).

    ``init`` is HF's initialisation of a weight the checkpoint does not fill: "normal"
    (N(0, initializer_range)), "zeros" or "ones". The model creates each variable once and sets
    it as the attribute ``name`` (see ``modeling_utils.build_variables``). ``tf_path`` replaces
    the layer's name in table names where HF's path has more than one segment.
    """

    param_specs: tuple = ()
    tf_path: str | None = None

    def __init__(self, name: str):
        super().__init__(name=name)
        self._allow_non_tensor_positional_args = True  # masks, caches and flags are passed positionally


class Dense(Module):
    """y = x @ kernel + bias, with the (in, out) kernel of Keras and HF-TF."""

    def __init__(self, n_in: int, n_out: int, name: str, use_bias: bool = True):
        super().__init__(name)
        self.use_bias = use_bias
        self.param_specs = (("kernel", (n_in, n_out), "normal"),) + ((("bias", (n_out,), "zeros"),) if use_bias else ())

    def call(self, x):
        y = tf.matmul(x, self.kernel)  # (..., in) @ (in, out): batch dims broadcast
        return y + self.bias if self.use_bias else y


class Conv1D(Module):
    """GPT-2's linear layer: ``weight`` (in, out) and a (1, out) ``bias``, as HF-TF stores them."""

    def __init__(self, n_in: int, n_out: int, name: str):
        super().__init__(name)
        self.param_specs = (("weight", (n_in, n_out), "normal"), ("bias", (1, n_out), "zeros"))

    def call(self, x):
        return tf.matmul(x, self.weight) + self.bias


class LayerNorm(Module):
    """(x - mean) / sqrt(var + eps) * gamma + beta over the last axis; eps from the config."""

    def __init__(self, d: int, eps: float, name: str):
        super().__init__(name)
        self.eps = eps
        self.param_specs = (("gamma", (d,), "ones"), ("beta", (d,), "zeros"))

    def call(self, x):
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + self.eps) * self.gamma + self.beta


class Embedding(Module):
    """A lookup table; HF-TF names its variable "embeddings", or "weight" for BERT's word embeddings."""

    def __init__(self, n: int, d: int, name: str, leaf: str = "embeddings", padding_idx: int | None = None):
        super().__init__(name)
        self.leaf, self.padding_idx = leaf, padding_idx  # padding row zeroed at random init, as PT
        self.param_specs = ((leaf, (n, d), "normal"),)

    @property
    def table(self):
        return getattr(self, self.leaf)  # (n, D)

    def call(self, ids):
        return tf.gather(self.table, ids)


# ---------------------------------------------------------------------------------- attention
def attend(q, k, v, mask, *, scale: float, rate: float, training: bool, extra=None):
    """Scaled dot-product attention. q (B,H,T,K), k/v (B,H,S,K), mask additive (B,1,T|1,S).

    ``extra`` (B,H,T,S) is added to the scores before the scale (BERT's relative position terms).
    """
    scores = tf.matmul(q, k, transpose_b=True)  # (B,H,T,S)
    scores = (scores if extra is None else scores + extra) * scale
    if mask is not None:
        scores = scores + mask
    probs = tf.nn.softmax(scores, axis=-1)
    return tf.matmul(dropout(probs, rate, training), v), probs


def _linear_names(suffix: str) -> tuple[str, str, str, str]:
    return tuple(f"{n}_{suffix}" for n in ("q", "k", "v", "out"))


class Attention(Module):
    """Multi-head attention, self or cross, with HF's BERT, GPT-2, DistilBERT or BART parameter layout.

    BERT layout: ``query``, ``key``, ``value`` dense layers; the output projection lives in the
    sublayer's ``output`` (see :class:`AddNorm`). GPT-2 layout: fused ``c_attn`` (q, k, v for
    self-attention; k, v for cross-attention, whose q is ``q_attn``) and ``c_proj``. DistilBERT
    (``{q,k,v,out}_lin``) and BART (``{q,k,v,out}_proj``): separate projections and the output
    projection in this layer. BERT's relative positions (``config.relative_attention``) add a
    ``distance_embedding`` to self-attention: query ``i`` sits at ``past + i``, key ``s`` at ``s``
    (a preallocated cache's slot), and ``q . E[i - s]`` (``+ k . E[i - s]``) joins the scores.
    ``past`` is this layer's cached (k, v): reused as is by cross-attention (computed once per
    generation, for the B sources: when x has N = B * g rows, e.g. beams, the g rows of a source
    are folded into its query axis rather than tiling k/v g times); extended by self-attention,
    by concatenation (HF's growing tuples) or, with ``cache_index``, by writing into a
    preallocated (N,H,L,K) buffer at that position.
    """

    NAMES = {"bert": ("query", "key", "value", None), "distilbert": _linear_names("lin"), "bart": _linear_names("proj")}

    def __init__(self, config: PretrainedConfig, *, cross: bool, layer_idx: int = 0, name: str):
        super().__init__(name)
        d, kv_in = config.hidden_size, config.cross_width if cross else config.hidden_size
        self.n_heads, self.head_dim, self.cross = config.num_attention_heads, config.head_dim, cross
        self.layout, self.gpt2 = config.layout, config.layout == "gpt2"
        self.attn_dropout, self.resid_dropout = config.attn_dropout, config.hidden_dropout
        self.scale = config.attention_scale(layer_idx)
        self.relative = None if cross else config.relative_attention
        if self.relative:
            self.offset = config.relative_distances // 2  # distance 0's row
            self.distance_embedding = Embedding(config.relative_distances, config.head_dim, "distance_embedding")
        if self.gpt2:
            if cross:
                self.q_attn = Conv1D(d, d, "q_attn")
                self.c_attn = Conv1D(kv_in, 2 * d, "c_attn")
            else:
                self.c_attn = Conv1D(d, 3 * d, "c_attn")
            self.c_proj = Conv1D(d, d, "c_proj")
            return
        q, k, v, out = self.NAMES[self.layout]
        self.query, self.key, self.value = Dense(d, d, q), Dense(kv_in, d, k), Dense(kv_in, d, v)
        self.out = Dense(d, d, out) if out else None

    def _split(self, x):
        b, t = dims(x)[:2]
        return tf.transpose(tf.reshape(x, (b, t, self.n_heads, self.head_dim)), (0, 2, 1, 3))  # (B,H,T,K)

    def _kv(self, kv):
        if self.gpt2:
            k, v = tf.split(self.c_attn(kv), 2, axis=-1)
            return k, v
        return self.key(kv), self.value(kv)

    def project_kv(self, kv):
        """Keys and values (B,H,S,K) of ``kv`` (B,S,D): what a cache holds for cross-attention."""
        k, v = self._kv(kv)
        return self._split(k), self._split(v)

    def call(
        self,
        x,
        attn_mask=None,
        kv=None,
        past=None,
        cache_index=None,
        use_cache=False,
        need_weights=False,
        training=False,
    ):
        """x (B,T,D) -> (context (B,T,D), present (k, v) or None, probs (B,H,T,S) or None)."""
        if self.gpt2 and not self.cross:
            q, k, v = tf.split(self.c_attn(x), 3, axis=-1)
            k, v = self._split(k), self._split(v)
        else:
            q = self.q_attn(x) if self.gpt2 else self.query(x)
            k, v = past if self.cross and past is not None else self.project_kv(kv if self.cross else x)
        if past is not None and not self.cross:
            if cache_index is None:  # growing cache: append this step's keys/values
                k, v = tf.concat([past[0], k], axis=2), tf.concat([past[1], v], axis=2)
            else:
                k, v = write_cache(past[0], k, cache_index), write_cache(past[1], v, cache_index)
        q = self._split(q)  # (N,H,T,K)
        fold = self.cross and past is not None and _shared_rows(q, k)  # only cached k/v can be shared
        if fold:  # beams (or samples) of one source share its cross keys/values: fold them into queries
            n, h, t, hd = dims(q)
            b = dims(k)[0]
            q = tf.transpose(tf.reshape(q, (b, n // b, h, t, hd)), (0, 2, 1, 3, 4))  # (B,H,g,T,K)
            q = tf.reshape(q, (b, h, -1, hd))  # (B,H,g*T,K)
        extra = None
        if self.relative:
            extra = self._relative(q, k, past if cache_index is None else cache_index)
        ctx, probs = attend(
            q, k, v, attn_mask, scale=self.scale, rate=self.attn_dropout, training=training, extra=extra
        )
        if fold:  # (B,H,g*T,.) -> (N,H,T,.)
            ctx, probs = _unfold(ctx, n, t), (_unfold(probs, n, t) if need_weights else probs)
        b, _, t, _ = dims(ctx)
        ctx = tf.reshape(tf.transpose(ctx, (0, 2, 1, 3)), (b, t, self.n_heads * self.head_dim))  # (B,T,D)
        if self.gpt2:
            ctx = dropout(self.c_proj(ctx), self.resid_dropout, training)
        elif self.out is not None:
            ctx = dropout(self.out(ctx), self.resid_dropout, training)
        return ctx, ((k, v) if use_cache else None), (probs if need_weights else None)

    def _relative(self, q, k, past):
        """BERT's relative terms (N,H,T,S): queries at ``past + arange(T)``, keys at ``arange(S)``."""
        t, s = dims(q)[2], dims(k)[2]
        if past is None:
            start = 0
        elif isinstance(past, (tuple, list)):  # growing cache: the keys before this step's T
            start = s - t
        else:
            start = tf.cast(past, tf.int32)
        dist = (start + tf.range(t))[:, None] - tf.range(s)[None, :]  # (T,S)
        e = self.distance_embedding(dist + self.offset)  # (T,S,K)
        extra = tf.einsum("nhtd,tsd->nhts", q, e)
        if self.relative == "relative_key_query":
            extra = extra + tf.einsum("nhsd,tsd->nhts", k, e)
        return extra


def _shared_rows(q, k) -> bool:
    """Whether q's N rows come in groups sharing k's B rows (N = B * g): known statically, or assumed when not."""
    n, b = q.shape[0], k.shape[0]
    return n is None or b is None or n != b  # unknown (an exported signature): fold, a no-op reshape if g = 1


def _unfold(x, n, t):
    """(B,H,g*T,X) -> (N,H,T,X): each row's queries back in their own row."""
    b, h, _, last = dims(x)
    return tf.reshape(tf.transpose(tf.reshape(x, (b, h, n // b, t, last)), (0, 2, 1, 3, 4)), (n, h, t, last))


class AddNorm(Module):
    """BERT's ``output`` sublayer: LayerNorm(dropout(dense(x)) + residual)."""

    def __init__(self, config: PretrainedConfig, n_in: int, name: str = "output"):
        super().__init__(name)
        self.dense = Dense(n_in, config.hidden_size, "dense")
        self.LayerNorm = LayerNorm(config.hidden_size, config.norm_eps, "LayerNorm")
        self.rate = config.hidden_dropout

    def call(self, x, residual, training=False):
        return self.LayerNorm(dropout(self.dense(x), self.rate, training) + residual)


class AttentionSublayer(Module):
    """BERT's ``attention`` / ``crossattention``: ``self`` (the heads) and ``output`` (AddNorm)."""

    def __init__(self, config: PretrainedConfig, *, cross: bool, name: str):
        super().__init__(name)
        self.self = Attention(config, cross=cross, name="self")
        self.output_ = AddNorm(config, config.hidden_size)


class FeedForward(Module):
    """Position-wise MLP: BERT's ``intermediate.dense`` (the output half is an AddNorm), GPT-2's ``mlp``
    (``c_fc``, ``c_proj``) or DistilBERT's ``ffn`` (``lin1``, ``lin2``); BART's ``fc1``/``fc2`` sit in its block.
    """

    def __init__(self, config: PretrainedConfig, name: str):
        super().__init__(name)
        d, i = config.hidden_size, config.intermediate_size
        self.act, self.rate = activation(config.act_name), config.hidden_dropout
        if config.layout == "gpt2":
            self.c_fc, self.c_proj = Conv1D(d, i, "c_fc"), Conv1D(i, d, "c_proj")
            self.pair = ("c_fc", "c_proj")
        elif config.layout == "distilbert":
            self.lin1, self.lin2 = Dense(d, i, "lin1"), Dense(i, d, "lin2")
            self.pair = ("lin1", "lin2")
        else:
            self.dense = Dense(d, i, "dense")
            self.pair = None

    def call(self, x, training=False):
        if self.pair is None:
            return self.act(self.dense(x))  # (B,T,I)
        return mlp(x, *(getattr(self, n) for n in self.pair), self.act, self.rate, training)


def mlp(x, fc_in, fc_out, act, rate: float, training: bool):
    """dropout(fc_out(act(fc_in(x)))): the feed-forward of the layouts whose residual is added by the block."""
    return dropout(fc_out(act(fc_in(x))), rate, training)


# the layouts whose blocks name their sublayers flat: (self-attention, its norm, cross, its norm, FFN, its norm)
FLAT_NAMES = {
    "gpt2": ("attn", "ln_1", "crossattention", "ln_cross_attn", "mlp", "ln_2"),
    "distilbert": ("attention", "sa_layer_norm", None, None, "ffn", "output_layer_norm"),
    "bart": ("self_attn", "self_attn_layer_norm", "encoder_attn", "encoder_attn_layer_norm", None, "final_layer_norm"),
}


class Block(Module):
    """One transformer layer: self-attention, optional cross-attention, feed-forward.

    BERT layout: post-LN ``x = LN(x + f(x))`` through ``attention``/``crossattention``/``output``
    sublayers. The flat layouts (:data:`FLAT_NAMES`: GPT-2, DistilBERT, BART) hold the attention
    layers (output projection inside) and a LayerNorm per sublayer, applied before the sublayer
    when ``config.pre_norm`` (GPT-2, MBart: ``x = x + f(LN(x))``) or after the residual sum
    (DistilBERT, BART). Cross-attention exists when ``config.has_cross_attention`` and runs when
    encoder states, or their cached keys/values, are given.
    """

    def __init__(self, config: PretrainedConfig, layer_idx: int, name: str):
        super().__init__(name)
        self.has_cross, self.pre_norm = config.has_cross_attention, config.pre_norm
        self.flat = FLAT_NAMES.get(config.layout)
        d, eps = config.hidden_size, config.norm_eps
        if self.flat is None:  # BERT
            self.attention = AttentionSublayer(config, cross=False, name="attention")
            if self.has_cross:
                self.crossattention = AttentionSublayer(config, cross=True, name="crossattention")
            self.intermediate = FeedForward(config, name="intermediate")
            self.output_ = AddNorm(config, config.intermediate_size)
            return
        attn, ln_attn, cross, ln_cross, ffn, ln_ffn = self.flat
        setattr(self, attn, Attention(config, cross=False, layer_idx=layer_idx, name=attn))
        setattr(self, ln_attn, LayerNorm(d, eps, ln_attn))
        if self.has_cross:
            setattr(self, cross, Attention(config, cross=True, layer_idx=layer_idx, name=cross))
            setattr(self, ln_cross, LayerNorm(d, eps, ln_cross))
        if ffn is None:  # BART: fc1 / fc2 on the block
            self.fc1 = Dense(d, config.intermediate_size, "fc1")
            self.fc2 = Dense(config.intermediate_size, d, "fc2")
            self.act, self.rate = activation(config.act_name), config.hidden_dropout
        else:
            setattr(self, ffn, FeedForward(config, name=ffn))
        setattr(self, ln_ffn, LayerNorm(d, eps, ln_ffn))

    def ffn_call(self, x, training=False):
        if self.flat[4] is None:
            return mlp(x, self.fc1, self.fc2, self.act, self.rate, training)
        return getattr(self, self.flat[4])(x, training=training)

    def attention_layers(self) -> tuple[Attention, Attention | None]:
        """(self-attention, cross-attention or None): the layers that own this block's cache."""
        if self.flat is None:
            cross = getattr(self, "crossattention", None)
            return self.attention.self, (cross.self if cross is not None else None)
        return getattr(self, self.flat[0]), (getattr(self, self.flat[2]) if self.has_cross else None)

    def _norm(self, k: int):
        return getattr(self, self.flat[k]) if self.flat else None

    def _residual(self, x, norm, f):
        """x + f(x) with this block's LayerNorm order; ``f`` returns (y, *rest)."""
        y, *rest = f(norm(x) if self.pre_norm else x)
        return ((x + y) if self.pre_norm else norm(x + y)), rest

    def _sublayer(self, x, k, attn, out, training, **kw):
        """Run one attention sublayer (``k``: 1 self, 3 cross, the index of its norm in the names)."""
        if self.flat is not None:
            x, (present, probs) = self._residual(x, self._norm(k), lambda h: attn(h, training=training, **kw))
            return x, present, probs
        ctx, present, probs = attn(x, training=training, **kw)
        return out(ctx, x, training=training), present, probs

    def call(
        self,
        x,
        attn_mask=None,
        enc=None,
        cross_mask=None,
        past=None,
        cache_index=None,
        use_cache=False,
        need_weights=False,
        training=False,
    ):
        """x (B,T,D) -> (x, present (self k, self v[, cross k, cross v]) or None, self probs, cross probs)."""
        bert = self.flat is None
        kw = dict(use_cache=use_cache, need_weights=need_weights, training=training)
        self_attn, cross_attn = self.attention_layers()
        x, present, p_self = self._sublayer(
            x,
            1,
            self_attn,
            self.attention.output_ if bert else None,
            attn_mask=attn_mask,
            past=None if past is None else past[:2],
            cache_index=cache_index,
            **kw,
        )
        p_cross = None
        cross_past = None if past is None or len(past) < 4 or past[2] is None else past[2:]
        if self.has_cross and (enc is not None or cross_past is not None):
            x, present_x, p_cross = self._sublayer(
                x,
                3,
                cross_attn,
                self.crossattention.output_ if bert else None,
                attn_mask=cross_mask,
                kv=enc,
                past=cross_past,
                **kw,
            )
            present = present + present_x if use_cache else None
        if bert:
            x = self.output_(self.intermediate(x), x, training=training)
        else:
            x, _ = self._residual(x, self._norm(5), lambda h: (self.ffn_call(h, training=training),))
        return x, present, p_self, p_cross


# ---------------------------------------------------------------------------------- masks
def additive_mask(keep, dtype=tf.float32) -> tf.Tensor:
    """Boolean mask of positions to attend to -> additive mask (0 or the dtype's minimum).

    The minimum (not -inf) keeps an all-padding row finite: softmax over it is uniform, not NaN.
    """
    return (1.0 - tf.cast(keep, dtype)) * dtype.min


def self_attention_mask(attention_mask, t, key_len, past, *, causal: bool):
    """Padding mask (B, S) and causality -> additive (B,1,T,S), or None if nothing is masked.

    Query ``i`` sits at position ``past + i`` and sees keys ``s <= past + i``; ``past`` may be a
    scalar tensor (a cache index), so one compiled step serves every position.
    """
    keep = None
    if attention_mask is not None:
        keep = tf.cast(attention_mask, tf.bool)[:, None, None, :]  # (B,1,1,S)
    if causal:
        q_pos = tf.cast(past, tf.int32) + tf.range(t)
        tri = (tf.range(key_len)[None, :] <= q_pos[:, None])[None, None]  # (1,1,T,S)
        keep = tri if keep is None else keep & tri
    return None if keep is None else additive_mask(keep)


def cross_attention_mask(encoder_attention_mask):
    """(B, S) encoder padding mask -> additive (B,1,1,S), or None."""
    if encoder_attention_mask is None:
        return None
    return additive_mask(tf.cast(encoder_attention_mask, tf.bool)[:, None, None, :])


def run_blocks(blocks, x, mask, enc, enc_mask, past_key_values, cache_index, flags, training):
    """Run the layer stack (:func:`encdec_core.outputs.run_layers`); flags: (use_cache, attentions, hidden states)."""
    use_cache, output_attentions, output_hidden_states = flags

    def step(i, block, x):
        past = None if past_key_values is None else past_key_values[i]
        return block(x, mask, enc, enc_mask, past, cache_index, use_cache, output_attentions, training=training)

    return run_layers(
        blocks,
        x,
        step,
        output_hidden_states=output_hidden_states,
        output_attentions=output_attentions,
        keep_presents=use_cache,
    )
