"""Single-position attention over the stacked KV cache, as a split-S flash-decoding kernel (Pallas, Triton backend).

XLA compiles the cached attention of one decode step into a copy of the layer's K and V out of the stacked
[L, B, K, S, hd] cache and a softmax whose max and sum over S run on a handful of thread blocks (see README,
"What limits decode over long caches now"). This kernel reads the layer's keys and values in place, once: the grid
is (batch, kv head, S split); each program runs an online softmax over its split in blocks of `block_k` keys and
writes an unnormalised partial output with its running max and sum; the splits are merged in plain JAX.

Structure after jax.experimental.pallas.ops.gpu.decode_attention (which masks a contiguous [start, end) range
only); here an additive bias row per batch row carries any mask (left padding, invalidated slots, the causal edge).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

NEG = -1e30  # bias of a masked slot (finite: an all-masked block must not produce inf - inf)


def _kernel(layer_ref, q_ref, k_ref, v_ref, bias_ref, o_ref, m_ref, l_ref, *, S, split_len, block_k, block_h,
            groups, scale):
    b, kh, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    layer = layer_ref[0]
    hd = q_ref.shape[-1]
    hmask = jnp.arange(block_h) < groups
    q = plgpu.load(q_ref.at[b, kh, pl.ds(0, block_h), :], mask=hmask[:, None], other=0.0)   # [block_h, hd]
    lo = j * split_len
    n_blocks = pl.cdiv(jnp.minimum(split_len, S - lo), block_k)

    def body(i, carry):
        o, m, l = carry
        start = lo + i * block_k
        idx = start + jnp.arange(block_k)
        kmask = (idx < S) & (idx < lo + split_len)
        k = plgpu.load(k_ref.at[layer, b, kh, pl.ds(start, block_k), :], mask=kmask[:, None], other=0.0)
        v = plgpu.load(v_ref.at[layer, b, kh, pl.ds(start, block_k), :], mask=kmask[:, None], other=0.0)
        bias = plgpu.load(bias_ref.at[b, pl.ds(start, block_k)], mask=kmask, other=NEG)
        s = plgpu.dot(q, k, trans_b=True).astype(jnp.float32) * scale + bias[None, :]      # [block_h, block_k]
        m_new = jnp.maximum(m, s.max(axis=-1))
        corr = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[:, None])
        l_new = corr * l + p.sum(axis=-1)
        o_new = corr[:, None] * o + plgpu.dot(p.astype(v.dtype), v).astype(jnp.float32)
        return o_new, m_new, l_new

    init = (jnp.zeros((block_h, hd), jnp.float32), jnp.full((block_h,), NEG, jnp.float32),
            jnp.zeros((block_h,), jnp.float32))
    o, m, l = jax.lax.fori_loop(0, n_blocks, body, init)
    plgpu.store(o_ref.at[j, b, kh, pl.ds(0, block_h), :], o, mask=hmask[:, None])
    plgpu.store(m_ref.at[j, b, kh, pl.ds(0, block_h)], m, mask=hmask)
    plgpu.store(l_ref.at[j, b, kh, pl.ds(0, block_h)], l, mask=hmask)


@functools.partial(jax.jit, static_argnames=("block_k", "num_splits", "num_warps", "num_stages", "interpret"))
def decode_attention(q, k_cache, v_cache, layer, bias, *, block_k: int = 64, num_splits: int | None = None,
                     num_warps: int = 4, num_stages: int = 2, interpret: bool = False):
    """q [B, 1, Hq, hd] against layer `layer` of k_cache/v_cache [L, B, K, S, hd]; bias [B, S] float32 (0 where a
    slot may be attended, a large negative number where not). Returns [B, 1, Hq, hd] in q's dtype.

    Softmax in float32; the probabilities meet V in the cache dtype (as `text.cached_attention`)."""
    B, T, Hq, hd = q.shape
    if T != 1:
        raise ValueError(f"decode_attention takes one query position, got T={T}")
    L, Bc, K, S, hdc = k_cache.shape
    if (Bc, hdc) != (B, hd) or Hq % K:
        raise ValueError(f"q {q.shape} does not fit cache {k_cache.shape}")
    groups = Hq // K
    block_h = max(16, pl.next_power_of_2(groups))   # tensor-core dot needs >= 16 rows
    if num_splits is None:   # enough programs to fill the GPU (~2 per SM on an H100) without tiny splits
        num_splits = max(1, min(pl.cdiv(S, 4 * block_k), pl.cdiv(264, B * K)))
    split_len = pl.cdiv(pl.cdiv(S, num_splits), block_k) * block_k
    num_splits = pl.cdiv(S, split_len)
    qh = q.reshape(B, K, groups, hd).astype(k_cache.dtype)
    kernel = functools.partial(_kernel, S=S, split_len=split_len, block_k=block_k, block_h=block_h, groups=groups,
                               scale=1.0 / math.sqrt(hd))
    part = (num_splits, B, K, groups)
    o, m, l = pl.pallas_call(
        kernel,
        grid=(B, K, num_splits),
        out_shape=[jax.ShapeDtypeStruct(part + (hd,), jnp.float32), jax.ShapeDtypeStruct(part, jnp.float32),
                   jax.ShapeDtypeStruct(part, jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="vsr1_decode_attention",
    )(jnp.asarray(layer, jnp.int32).reshape(1), qh, k_cache, v_cache, bias.astype(jnp.float32))
    m_all = m.max(axis=0)
    corr = jnp.exp(m - m_all[None])
    den = (l * corr).sum(axis=0)
    out = (o * corr[..., None]).sum(axis=0) / den[..., None]
    return out.reshape(B, 1, Hq, hd).astype(q.dtype)
