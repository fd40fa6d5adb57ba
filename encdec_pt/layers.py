"""The PyTorch building blocks: one attention module, one block, masks, the cache.

Module and attribute names copy HF's ``state_dict`` names (``attention.self.query``,
``attn.c_attn``, ``self_attn.q_proj``, ``attention.q_lin``) so the PyTorch column of the core
weight tables is the identity. The families differ only by config flags: ``layout`` (the
parameter names of a block: separate q/k/v linears under BERT's, BART's or DistilBERT's names, or
GPT-2's fused ``Conv1D``), ``pre_norm`` (the LayerNorm before each sublayer, GPT-2 / MBart, or
after the residual sum, BERT / BART / DistilBERT) and ``relative_attention`` (BERT's
``distance_embedding`` in self-attention).

Shapes: B batch, T query length, S key length (source or cache + new), D model width,
H heads, K head width (D / H), I feed-forward width, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from encdec_core.configs import ACTIVATIONS, PretrainedConfig
from encdec_core.decoding import DecoderCache, LayerCache
from encdec_core.outputs import run_layers
from encdec_pt.kernels import Linear, linear


def activation(name: str):
    """HF activation name -> function: exact (erf) GELU or its tanh approximation."""
    kind = ACTIVATIONS[name]
    return (lambda x: F.gelu(x)) if kind == "erf" else (lambda x: F.gelu(x, approximate="tanh"))


class Conv1D(nn.Module):
    """GPT-2's linear layer: weight stored (in, out), so y = x @ W + b (not W.T as nn.Linear)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.weight, std=0.02)  # as HF's Conv1D: never uninitialised memory (a no-op under skip_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, owner=self, transposed=True)


def attend(q, k, v, mask, *, scale: float, dropout: float, need_weights: bool):
    """Scaled dot-product attention. q (B,H,T,K), k/v (B,H,S,K), mask additive (B,1,T|1,S)."""
    if not need_weights:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale), None
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B,H,T,S)
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1)
    ctx = torch.matmul(F.dropout(probs, dropout, training=dropout > 0), v)
    return ctx, probs


# projection names of the layouts with separate q/k/v linears (BERT's output projection is its AddNorm's dense)
PROJECTIONS = {
    "bert": ("query", "key", "value", None),
    "bart": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin"),
}


class Attention(nn.Module):
    """Multi-head attention, self or cross, with HF's parameter layout (``config.layout``).

    BERT layout: ``query``, ``key``, ``value`` linears; the output projection lives in the
    sublayer's ``output`` (see :class:`AddNorm`). BART / DistilBERT: the same with their names
    (:data:`PROJECTIONS`) and the output projection here. GPT-2 layout: fused ``c_attn`` (q, k, v
    for self-attention; k, v for cross-attention, whose q is ``q_attn``) and ``c_proj``.
    ``past`` is this layer's cached (k, v): appended to for self-attention, reused as is for
    cross-attention (computed once per generation). BERT's relative positions
    (``config.relative_attention``) add a ``distance_embedding`` to self-attention only.
    """

    def __init__(self, config: PretrainedConfig, *, cross: bool, layer_idx: int = 0):
        super().__init__()
        d, kv_in = config.hidden_size, config.cross_width if cross else config.hidden_size
        self.n_heads, self.head_dim, self.cross = config.num_attention_heads, config.head_dim, cross
        self.gpt2 = config.layout == "gpt2"
        self.attn_dropout, self.scale = config.attn_dropout, config.attention_scale(layer_idx)
        self.relative = config.relative_attention if config.layout == "bert" and not cross else None
        if self.gpt2:
            if cross:
                self.q_attn = Conv1D(d, d)
                self.c_attn = Conv1D(kv_in, 2 * d)
            else:
                self.c_attn = Conv1D(d, 3 * d)
            self.names = (None, None, None, "c_proj")
            self.c_proj = Conv1D(d, d)
        else:
            self.names = PROJECTIONS[config.layout]
            q, k, v, out = self.names
            setattr(self, q, Linear(d, d))
            setattr(self, k, Linear(kv_in, d))
            setattr(self, v, Linear(kv_in, d))
            if out is not None:
                setattr(self, out, Linear(d, d))
        if self.names[3] is not None:
            self.resid_dropout = nn.Dropout(config.hidden_dropout if config.layout != "distilbert" else 0.0)
        if self.relative:
            self.distance_embedding = nn.Embedding(config.relative_distances, self.head_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B,H,T,K)

    def _project(self, which: int, x: torch.Tensor) -> torch.Tensor:
        return self._split(getattr(self, self.names[which])(x))

    def keys_values(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of the encoder states src (B,S,D_enc): each (B,H,S,K)."""
        if self.gpt2:
            k, v = self.c_attn(src).split(self.n_heads * self.head_dim, dim=-1)
            return self._split(k), self._split(v)
        return self._project(1, src), self._project(2, src)

    def relative_scores(self, q: torch.Tensor, k: torch.Tensor, start) -> torch.Tensor:
        """BERT's relative-position scores (B,H,T,S), before the 1/sqrt(K) scale.

        Query row i sits at position ``start + i`` (``start``: the tokens before this call, or the
        static cache's index), key j at position j (its slot).
        """
        t, s = q.shape[2], k.shape[2]
        rows = self.distance_embedding.num_embeddings
        q_pos = start + torch.arange(t, device=q.device)
        dist = q_pos[:, None] - torch.arange(s, device=q.device)[None, :] + (rows - 1) // 2
        e = self.distance_embedding(dist.clamp(0, rows - 1)).to(q.dtype)  # (T,S,K); clamped: masked slots only
        scores = torch.einsum("bhld,lrd->bhlr", q, e)
        if self.relative == "relative_key_query":
            scores = scores + torch.einsum("bhrd,lrd->bhlr", k, e)
        return scores

    def forward(self, x, mask=None, *, kv=None, past=None, cache_index=None, use_cache=False, need_weights=False):
        """x (B,T,D) -> (context (B,T,D), present (k, v) or None, probs (B,H,T,S) or None).

        ``past`` is a (k, v) tuple or a :class:`~encdec_core.decoding.LayerCache` (the preallocated
        cache, written at ``cache_index``: see :func:`write_cache`).
        """
        n, t = x.shape[:2]
        if self.cross:
            q = self._split(self.q_attn(x)) if self.gpt2 else self._project(0, x)
            if past is None:
                k, v = self.keys_values(kv)
            else:  # computed once per generation
                k, v = (past.cross_key, past.cross_value) if isinstance(past, LayerCache) else past
        else:
            if self.gpt2:
                q, k, v = (self._split(a) for a in self.c_attn(x).split(self.n_heads * self.head_dim, dim=-1))
            else:
                q, k, v = self._project(0, x), self._project(1, x), self._project(2, x)
            if isinstance(past, LayerCache):
                k, v = write_cache(past.key, k, cache_index), write_cache(past.value, v, cache_index)
            elif past is not None:  # a (k, v) tuple: append this step's keys/values
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            if self.relative:
                start = cache_index if isinstance(cache_index, torch.Tensor) else k.shape[2] - t
                rel = self.relative_scores(q, k, start) * self.scale
                mask = rel if mask is None else rel + mask
        p = self.attn_dropout if self.training else 0.0
        g = n // k.shape[0]
        if g > 1:  # beams (or samples) of one source share its cross keys/values: fold them into queries
            q = q.view(k.shape[0], g, *q.shape[1:]).transpose(1, 2).reshape(k.shape[0], q.shape[1], g * t, -1)
        ctx, probs = attend(q, k, v, mask, scale=self.scale, dropout=p, need_weights=need_weights)
        if g > 1:  # (B,H,g*T,.) -> (B*g,H,T,.)
            ctx = ctx.view(k.shape[0], ctx.shape[1], g, t, -1).transpose(1, 2).reshape(n, ctx.shape[1], t, -1)
            if probs is not None:
                probs = (
                    probs.view(k.shape[0], probs.shape[1], g, t, -1).transpose(1, 2).reshape(n, probs.shape[1], t, -1)
                )
        ctx = ctx.transpose(1, 2).reshape(n, t, -1)  # (B,T,D)
        if self.names[3] is not None:
            ctx = self.resid_dropout(getattr(self, self.names[3])(ctx))
        return ctx, ((k, v) if use_cache else None), probs


class AddNorm(nn.Module):
    """BERT's ``output`` sublayer: LayerNorm(dropout(dense(x)) + residual)."""

    def __init__(self, config: PretrainedConfig, n_in: int):
        super().__init__()
        self.dense = Linear(n_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class AttentionSublayer(nn.Module):
    """BERT's ``attention`` / ``crossattention``: ``self`` (the heads) and ``output`` (AddNorm)."""

    def __init__(self, config: PretrainedConfig, *, cross: bool):
        super().__init__()
        self.self = Attention(config, cross=cross)
        self.output = AddNorm(config, config.hidden_size)


def mlp(x, fc_in, fc_out, act, dropout, act_dropout=None):
    """fc_out(act(fc_in(x))) with dropouts: GPT-2's ``mlp``, DistilBERT's ``ffn``, BART's fc1/fc2."""
    h = act(fc_in(x))
    return dropout(fc_out(h if act_dropout is None else act_dropout(h)))


# the two linears of a feed-forward module, per layout (BERT's output half is an AddNorm; BART's sit on the layer)
FEED_FORWARD = {"gpt2": ("c_fc", "c_proj", Conv1D), "distilbert": ("lin1", "lin2", Linear)}


class FeedForward(nn.Module):
    """Position-wise MLP: BERT's ``intermediate.dense``, GPT-2's ``mlp`` or DistilBERT's ``ffn``."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        d, i = config.hidden_size, config.intermediate_size
        self.act = activation(config.act_name)
        self.names = FEED_FORWARD.get(config.layout)
        if self.names is None:
            self.dense = Linear(d, i)
        else:
            fc_in, fc_out, kind = self.names
            setattr(self, fc_in, kind(d, i))
            setattr(self, fc_out, kind(i, d))
            self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.names is None:
            return self.act(self.dense(x))  # (B,T,I)
        return mlp(x, getattr(self, self.names[0]), getattr(self, self.names[1]), self.act, self.dropout)


# a block's module names per layout: self-attention, its norm, cross-attention, its norm, the MLP, its norm
# (BERT's attention sublayers carry their norms in ``output``: AddNorm; its MLP is intermediate + output)
SUBLAYERS = {
    "bert": ("attention.self", "attention.output", "crossattention.self", "crossattention.output", None, None),
    "gpt2": ("attn", "ln_1", "crossattention", "ln_cross_attn", "mlp", "ln_2"),
    "bart": ("self_attn", "self_attn_layer_norm", "encoder_attn", "encoder_attn_layer_norm", None, "final_layer_norm"),
    "distilbert": ("attention", "sa_layer_norm", None, None, "ffn", "output_layer_norm"),
}


class Block(nn.Module):
    """One transformer layer: self-attention, optional cross-attention, feed-forward.

    ``config.layout`` gives HF's module names (:data:`SUBLAYERS`); ``config.pre_norm`` the place
    of each LayerNorm: before the sublayer (``x = x + f(LN(x))``: GPT-2, MBart) or after the
    residual sum (``x = LN(x + f(x))``: BERT, BART, DistilBERT). Cross-attention exists when the
    config has ``add_cross_attention``.
    """

    def __init__(self, config: PretrainedConfig, layer_idx: int):
        super().__init__()
        self.layout, self.pre_norm = config.layout, config.pre_norm
        self.has_cross = config.has_cross_attention and config.layout != "distilbert"
        self.names = SUBLAYERS[config.layout]
        d, eps = config.hidden_size, config.norm_eps
        if self.layout == "bert":
            self.attention = AttentionSublayer(config, cross=False)
            if self.has_cross:
                self.crossattention = AttentionSublayer(config, cross=True)
            self.intermediate = FeedForward(config)
            self.output = AddNorm(config, config.intermediate_size)
            return
        attn, attn_norm, cross, cross_norm, ffn, ffn_norm = self.names
        setattr(self, attn, Attention(config, cross=False, layer_idx=layer_idx))
        setattr(self, attn_norm, nn.LayerNorm(d, eps=eps))
        if self.has_cross:
            setattr(self, cross, Attention(config, cross=True, layer_idx=layer_idx))
            setattr(self, cross_norm, nn.LayerNorm(d, eps=eps))
        if ffn is not None:
            setattr(self, ffn, FeedForward(config))
        else:  # BART: fc1 / fc2 on the layer itself
            self.fc1, self.fc2 = Linear(d, config.intermediate_size), Linear(config.intermediate_size, d)
            self.act = activation(config.act_name)
            self.dropout, self.act_dropout = nn.Dropout(config.hidden_dropout), nn.Dropout(config.act_dropout)
        setattr(self, ffn_norm, nn.LayerNorm(d, eps=eps))

    def cross_attention(self) -> Attention:
        """The cross-attention heads (their ``keys_values`` fill the generation cache)."""
        return self.get_submodule(self.names[2])

    def _sublayer(self, x, attn, norm, **kw):
        """Run one attention sublayer in this block's LayerNorm order (BERT's norm is an AddNorm)."""
        attn, norm = self.get_submodule(attn), self.get_submodule(norm)
        if self.pre_norm:
            ctx, present, probs = attn(norm(x), **kw)
            return x + ctx, present, probs
        ctx, present, probs = attn(x, **kw)
        return (norm(ctx, x) if isinstance(norm, AddNorm) else norm(x + ctx)), present, probs

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "bert":
            return self.output(self.intermediate(x), x)
        ffn, norm = self.names[4], getattr(self, self.names[5])
        f = (
            getattr(self, ffn)
            if ffn
            else (lambda h: mlp(h, self.fc1, self.fc2, self.act, self.dropout, self.act_dropout))
        )
        return x + f(norm(x)) if self.pre_norm else norm(x + f(x))

    def forward(
        self, x, mask=None, enc=None, enc_mask=None, past=None, use_cache=False, need_weights=False, cache_index=None
    ):
        """x (B,T,D) -> (x, present (self k, self v[, cross k, cross v]) or None, self probs, cross probs).

        ``past``: HF's tuple, or a :class:`~encdec_core.decoding.LayerCache` written at ``cache_index``.
        """
        cached = isinstance(past, LayerCache)
        kw = dict(use_cache=use_cache, need_weights=need_weights)
        x, present, p_self = self._sublayer(
            x,
            self.names[0],
            self.names[1],
            mask=mask,
            past=past if cached or past is None else past[:2],
            cache_index=cache_index,
            **kw,
        )
        p_cross = None
        if self.has_cross and (enc is not None or (cached and past.cross_key is not None)):
            x, present_x, p_cross = self._sublayer(
                x, self.names[2], self.names[3], mask=enc_mask, kv=enc, past=_cross_past(past), **kw
            )
            present = present + present_x if use_cache else None
        x = self._feed_forward(x)
        return x, (past if cached else present), p_self, p_cross


def _cross_past(past):
    """The cross-attention part of a layer's past: a LayerCache, (cross k, cross v), or None."""
    if past is None or isinstance(past, LayerCache):
        return past
    return past[2:] if len(past) >= 4 else None


def allocate_cache(
    cross: list[tuple[torch.Tensor, torch.Tensor]], rows: int, max_length: int, encoder_attention_mask=None
) -> DecoderCache:
    """A :class:`~encdec_core.decoding.DecoderCache`: empty self-attention slots (N,H,L,K) for ``rows`` rows
    beside each layer's cross keys/values (B,H,S,K) (the g = N / B rows of a source share them).

    With an int index (eager), attention reads the filled slots ``[:index + T]`` (views, no
    copies). With a tensor index (the static cache of ``torch.compile``: ``cache._replace(index=
    torch.zeros((), dtype=torch.long))``), it reads all L slots and masks the unfilled ones, so
    every step has the same shapes.
    """
    layers = []
    for ck, cv in cross:
        shape = (rows, ck.shape[1], max_length, ck.shape[3])
        layers.append(LayerCache(ck.new_zeros(shape), ck.new_zeros(shape), ck, cv))
    return DecoderCache(0, tuple(layers), encoder_attention_mask)


def is_static(cache: DecoderCache) -> bool:
    return isinstance(cache.index, torch.Tensor)


def write_cache(buffer: torch.Tensor, new: torch.Tensor, index) -> torch.Tensor:
    """Write ``new`` (N,H,T,K) into ``buffer`` (N,H,L,K) at ``index``, in place; return the keys to attend to:
    the filled slots (int index) or all L slots (tensor index: the static cache of compiled steps)."""
    t = new.shape[2]
    if isinstance(index, torch.Tensor):
        buffer.index_copy_(2, index + torch.arange(t, device=new.device), new)
        return buffer
    buffer[:, :, index : index + t] = new
    return buffer[:, :, : index + t]


def reorder_cache(cache: DecoderCache, rows: torch.Tensor) -> DecoderCache:
    """Beam search: row i continues the hypothesis of row ``rows[i]``, in place (cross k/v are per source)."""
    n = cache.max_length if is_static(cache) else cache.index
    for layer in cache.layers:
        layer.key[:, :, :n] = layer.key[:, :, :n].index_select(0, rows)
        layer.value[:, :, :n] = layer.value[:, :, :n].index_select(0, rows)
    return cache


def additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean/0-1 mask of positions to attend to -> additive mask (0 or the dtype's minimum).

    The minimum (not -inf) keeps an all-padding row finite: softmax over it is uniform, not NaN.
    """
    return (1.0 - keep.to(dtype)) * torch.finfo(dtype).min


def self_attention_mask(
    attention_mask, batch: int, t: int, past, *, causal: bool, dtype, device, key_length: int | None = None
):
    """(B, S) padding mask and causality -> additive (B,1,T,S) mask, or None if nothing is masked.

    S = past + T, or ``key_length`` for a static cache (``past`` then is a tensor and the slots
    after each query's position are masked as unfilled).
    """
    keep = None
    if attention_mask is not None:
        keep = attention_mask[:, None, None, :].bool()  # (B,1,1,S)
    if key_length is not None:  # static cache: key j is visible to query i iff j <= past + i
        q_pos = past + torch.arange(t, device=device)
        tri = (torch.arange(key_length, device=device)[None, :] <= q_pos[:, None])[None, None]  # (1,1,T,S)
        keep = tri if keep is None else keep & tri
    elif causal and t > 1:  # a single new token sees every key: nothing to mask
        s = past + t
        tri = torch.ones(t, s, dtype=torch.bool, device=device).tril(diagonal=past)[None, None]  # (1,1,T,S)
        keep = tri if keep is None else keep & tri
    return None if keep is None else additive_mask(keep, dtype)


def cross_attention_mask(encoder_attention_mask, dtype):
    """(B, S) encoder padding mask -> additive (B,1,1,S), or None."""
    if encoder_attention_mask is None:
        return None
    return additive_mask(encoder_attention_mask[:, None, None, :], dtype)


def run_blocks(blocks, x, mask, enc, enc_mask, past_key_values, flags, checkpointing: bool):
    """Run the layer stack (:func:`encdec_core.outputs.run_layers`); flags: (use_cache, attentions, hidden states)."""
    use_cache, output_attentions, output_hidden_states = flags
    cached = isinstance(past_key_values, DecoderCache)
    pasts = past_key_values.layers if cached else past_key_values
    index = past_key_values.index if cached else None

    def step(i, block, x):
        past = None if pasts is None else pasts[i]
        if cached:  # written in place at the cache index
            return block(x, mask, enc, enc_mask, past, use_cache, output_attentions, cache_index=index)
        if checkpointing:
            return torch.utils.checkpoint.checkpoint(
                block, x, mask, enc, enc_mask, past, use_cache, output_attentions, use_reentrant=False
            )
        return block(x, mask, enc, enc_mask, past, use_cache, output_attentions)

    x, extra = run_layers(
        blocks,
        x,
        step,
        output_hidden_states=output_hidden_states,
        output_attentions=output_attentions,
        keep_presents=use_cache,
    )
    if cached:
        extra["past_key_values"] = past_key_values._replace(index=index + x.shape[1])
    return x, extra
