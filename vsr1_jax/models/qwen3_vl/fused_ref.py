"""The XLA reference of one decoder layer of a single-position decode step, for the fused kernels
(`vsr1_jax.kernels.fused_decode`): the same arguments, built from the model's own pieces (`layers.rms_norm`,
`layers.linear`, `rope.apply_rope`, `text.cached_attention`) in the order `TextModel.__call__` applies them, and
generalised only in what the kernels generalise: a write slot per row (`pos`, where the model writes every row at
`cache.index`) and per-row lengths. tests/test_fused_decode.py checks it against the model's real decode step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vsr1_jax.kernels.fused_decode import LAYER_KEYS
from vsr1_jax.models.qwen3_vl.layers import linear, rms_norm
from vsr1_jax.models.qwen3_vl.rope import apply_rope, mrope_cos_sin
from vsr1_jax.models.qwen3_vl.text import cached_attention


def decode_cos_sin(pos, cfg):
    """cos, sin [B, head_dim] float32 of text position pos [B] (all three M-RoPE axes at pos, as the sampler's
    decode step): computed once per step, shared by every layer."""
    pos = jnp.asarray(pos, jnp.int32)
    pos3 = jnp.broadcast_to(pos[None, :, None], (3, pos.shape[0], 1))
    cos, sin = mrope_cos_sin(pos3, cfg.head_dim, cfg.rope_theta, cfg.mrope_section)
    return cos[:, 0], sin[:, 0]


def layer_params(params, layer):
    """One layer's weights out of stacked [L, ...] ones (or the given one-layer dict)."""
    if params["input_norm"].ndim == 2:
        return {k: params[k][layer] for k in LAYER_KEYS}
    return {k: params[k] for k in LAYER_KEYS}


def decoder_layer_decode_ref(params, hidden, cache_k, cache_v, pos, cos, sin, cfg, *, layer=0, lengths=None,
                             bias=None, parts: bool = False):
    """Same contract as `fused_decoder_layer_decode`. parts=True also returns the intermediates the kernels hand
    on: dict(q [B, Hq, hd] after norm + rope, k/v [B, K, hd] written to the cache, attn [B, Hq, hd], h [B, D] after
    the attention residual, act [B, I])."""
    squeeze = hidden.ndim == 3
    x = hidden.reshape(hidden.shape[0], -1)[:, None]                 # [B, T=1, D]
    B, _, D = x.shape
    dt = x.dtype
    Hq, K, hd, eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps
    S = cache_k.shape[3]
    p = layer_params(params, layer)
    pos = jnp.asarray(pos, jnp.int32).reshape(B)
    lengths = pos + 1 if lengths is None else jnp.asarray(lengths, jnp.int32).reshape(B)
    c, s = cos.astype(dt)[:, None, None, :], sin.astype(dt)[:, None, None, :]     # as TextModel: [B, T, 1, hd]

    y = rms_norm(x, p["input_norm"], eps)
    q = rms_norm(linear(y, p["q_kernel"]).reshape(B, 1, Hq, hd), p["q_norm"], eps)
    k = rms_norm(linear(y, p["k_kernel"]).reshape(B, 1, K, hd), p["k_norm"], eps)
    v = linear(y, p["v_kernel"]).reshape(B, 1, K, hd)
    q, k = apply_rope(q, c, s), apply_rope(k, c, s)
    rows = jnp.arange(B)
    cache_k = cache_k.at[layer, rows, :, pos, :].set(k[:, 0].astype(cache_k.dtype))
    cache_v = cache_v.at[layer, rows, :, pos, :].set(v[:, 0].astype(cache_v.dtype))
    mask = jnp.arange(S)[None, :] < lengths[:, None]
    if bias is not None:
        mask = mask & (bias > -1e29)
    o = cached_attention(q, cache_k[layer].astype(dt), cache_v[layer].astype(dt), mask[:, None, :])
    h = x + linear(o.reshape(B, 1, Hq * hd), p["o_kernel"])
    y = rms_norm(h, p["post_norm"], eps)
    act = jax.nn.silu(linear(y, p["gate_kernel"])) * linear(y, p["up_kernel"])
    out = h + linear(act, p["down_kernel"])
    out = out if squeeze else out[:, 0]
    if not parts:
        return out, cache_k, cache_v
    return out, cache_k, cache_v, dict(q=q[:, 0], k=k[:, 0], v=v[:, 0], attn=o[:, 0], h=h[:, 0], act=act[:, 0])
