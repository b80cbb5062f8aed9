"""One Qwen3-VL decoder layer of a single-position decode step as five (or six) Pallas kernels and one XLA fusion
(Triton backend on GPUs, the Pallas interpreter elsewhere): issue 25, item 1.

XLA compiles one decode layer into ~18 kernels at batch 1 (7 GEMMs each behind a pad kernel that keeps one row a
GEMM, norms, q/k norms, rope, residual adds and cache writes as separate small fusions). Here (B = batch rows, small;
Bm = B rounded up to a power of two >= 16 *inside* the blocks only: rows >= B are masked loads of zeros and masked
stores, no padded operand exists in memory; the weights of every GEMM are read exactly once per step):

  (a) `vsr1_qkv`       grid (Hq + 2K heads[, qkv_splits]). Reads x [B, D], input_norm [D], the q/k/v kernels
                       (each program: one head's hd columns over all D rows, as two hd/2-column halves so that
                       rotate_half needs no register shuffle), q_norm/k_norm [hd], the step's cos/sin rows [B, hd],
                       pos [B]. Computes RMSNorm(x) (full-row sum of squares in a first pass over x, then
                       normalised chunks fed to the dots), the projection (fp32 accumulation), the per-head q/k
                       RMSNorm and the rotary embedding, and writes q [B, Hq, hd] and the new key/value rows into
                       the stacked cache at slot pos[b] of each row (in place: the cache is aliased in and out).
                       With `Blocks.qkv_splits` = s > 1 the D rows are split over s programs per head (more thread
                       blocks for batch 1) that write fp32 partials [s, B, Hq + 2K, hd]; then
  (a2) `vsr1_qkv_finish` grid (Hq + 2K): sums the partials and does the epilogue above (norms, rope, q and cache
                       writes). Reads only the partials, the norm weights and cos/sin.
  (b) `vsr1_attention` grid (B, K, attn_splits): flash-decoding over the cache as `decode_attention.py`, with
                       per-row lengths (blocks past a row's length are not read) and an optional additive bias
                       [B, S] (the production `valid` mask). Reads q, the layer's K and V cache rows once; writes
                       unnormalised partials o [splits, B, Hq, hd], running max m and sum l [splits, B, Hq] (fp32).
  (c1) merge          one XLA fusion (`merge_partials`): the split-S combine of the partials, once, into the
                       attention output [B, Hq x hd] in the activation dtype.
  (c2) `vsr1_oproj`    grid (D / o_n). o-proj + residual (`matmul_residual`, the kernel of (d2)): reads the
                       attention output, the o kernel's o_n columns, x; writes h = x + att @ Wo [B, D].
  (d1) `vsr1_gate_up`  grid (I / mlp_n). Post-attention RMSNorm of h (the norm needs the whole row, which no o-proj
                       program has, so it is applied here, recomputed per program from h: B x D values from L2),
                       gate and up projections, SiLU(gate) * up: reads h, post_norm, mlp_n columns of the gate and
                       up kernels; writes act [B, I].
  (d2) `vsr1_down`     grid (D / down_n). down projection + residual: reads act, down_n columns of the down kernel,
                       h; writes the layer output [B, D].

Per-step traffic beyond the weights and the layer's KV cache rows: the partials (a few hundred kB at batch 8),
activations of B x {D, I} read from L2 by every program of the next kernel.

Numerics follow the XLA model path (`models/qwen3_vl/text.py`, `layers.py`): RMSNorm in fp32 cast to the
activation dtype, then multiplied by the weight in that dtype; every projection accumulates in fp32 and rounds to
the activation dtype; q/k norms on the rounded projection; cos/sin cast to the activation dtype before rotating
(HF); attention softmax in fp32, probabilities meet V in the cache dtype; residual adds of rounded terms. Where XLA
rounds between two elementwise ops (rope, SiLU * up) the kernels keep fp32 and round once: equal within bf16
rounding, exact in fp32.

Triton-lowering constraints relied on (checked on CPU by lowering for CUDA with `jax.export`, see
tests/test_fused_decode.py, which stops before Triton's own compiler):
  * every array value in a kernel has a power-of-two number of elements: Bm, hd, hd/2, the D/I/N chunk sizes
    (`Blocks`; `_fit` picks the largest power of two <= the request that divides the dimension) and block_h;
  * `dot` operands are 2-D with every dimension >= 16 for Triton's MMA: Bm >= 16 by construction, hd/2 >= 16
    (head_dim >= 32), chunk sizes >= 16. (The tiny test config, head_dim 16, only runs through the interpreter.)
  * refs are indexed with one `.at[...]` of scalars (static or loaded) and `pl.ds(start, static size)`; out-of-range
    rows/columns are masked (`plgpu.load(..., mask, other)`, `plgpu.store(..., mask)`), never sliced dynamically;
  * no value slicing or concatenation inside kernels (Triton has none): rotate_half works on the two hd/2 halves
    kept as separate accumulators; a row of a [Bm, n] tile is taken out with a masked sum (cache writes at per-row
    slots, B stores per head, B static);
  * only elementwise ops with Triton lowerings (exp, rsqrt, max, where, arithmetic); SiLU is written as
    x / (1 + exp(-x)) (lax.logistic has no Triton lowering);
  * control flow: `jax.lax.fori_loop` (scf.for / scf.while) and `pl.when` (scf.if) on program ids.
The same API set as decode_attention.py (plgpu.load/store/dot/CompilerParams, pl.ds/program_id/when/cdiv,
input_output_aliases) is used, which exists unchanged in jax 0.10.2 and 0.11.x.

Where it runs: `models/qwen3_vl/text.fused_decode_layers` replaces the scan of `decoder_layer` for a single-position
step with the stacked cache when `RunOptions.decode_layer_impl` ("fused"; config `model.decode_layer_impl`) asks for
it and `run_options.decode_layer_path` allows it (one NVIDIA GPU; meshes of several devices, TPUs, CPUs and prefill
keep the XLA path; "fused_interpret" runs the interpreter anywhere, for tests). It calls
`fused_decoder_layer_decode(stacked weights, h, cache.k, cache.v, pos=full(B, cache.index), cos, sin, cfg,
layer=li, bias=where(valid_after_write & (slot <= index), 0, NEG))` for li = 0 .. L-1, unrolled: the kernels index
layer `li` in place (no per-layer weight slice is materialised), cos/sin of the step are computed once for all
layers, and the cache is donated by the sampler's step. DeepStack adds nothing in decode (no visual tokens).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

NEG = -1e30   # masked-slot score (finite, as decode_attention.NEG)
F32 = jnp.float32


class Blocks(NamedTuple):
    """Block sizes (requests: each is lowered to the largest power of two that divides its dimension)."""
    qkv_k: int = 128          # D rows per dot in (a)
    qkv_splits: int = 1       # programs per head over D in (a); > 1 adds the finish kernel (a2)
    attn_block_k: int = 64    # cache slots per step of (b)
    attn_splits: int = 0      # S splits of (b); 0 = enough programs for ~2 per SM of an H100
    o_n: int = 32             # output columns per program of (c2)
    o_k: int = 128            # attention-output rows per dot in (c2)
    mlp_n: int = 64           # intermediate columns per program of (d1)
    mlp_k: int = 128          # D rows per dot in (d1)
    down_n: int = 32          # output columns per program of (d2)
    down_k: int = 128         # intermediate rows per dot in (d2)
    num_warps: int = 4
    num_stages: int = 3


def _fit(req: int, dim: int) -> int:
    """The largest power of two <= req that divides dim."""
    b = 1
    while b * 2 <= min(req, dim) and dim % (b * 2) == 0:
        b *= 2
    return b


def _rows(B: int) -> int:
    return max(16, pl.next_power_of_2(B))


def _params(blocks: Blocks):
    return plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages)


def _r(x, dt):
    """Round an fp32 value to dt and back (what storing it in dt would do)."""
    return x.astype(dt).astype(F32)


# ---- shared pieces --------------------------------------------------------------------------------------------
def _row_rstd(x_ref, B, Bm, D, bk, eps):
    """1 / sqrt(mean(x^2) + eps) of each row of x [B, D] (fp32), in chunks of bk columns. [Bm]."""
    rmask = jnp.arange(Bm) < B

    def body(i, ss):
        x = plgpu.load(x_ref.at[pl.ds(0, Bm), pl.ds(i * bk, bk)], mask=rmask[:, None], other=0.0).astype(F32)
        return ss + jnp.sum(x * x, axis=1)
    ss = jax.lax.fori_loop(0, D // bk, body, jnp.zeros((Bm,), F32))
    return jax.lax.rsqrt(ss / D + eps)


def _normed_chunk(x_ref, w_ref, layer, rstd, c, B, Bm, bk, dt):
    """Chunk c (bk columns) of rms_norm(x) in dt: weight.astype(dt) * (x * rstd).astype(dt), as layers.rms_norm."""
    rmask = jnp.arange(Bm) < B
    x = plgpu.load(x_ref.at[pl.ds(0, Bm), pl.ds(c * bk, bk)], mask=rmask[:, None], other=0.0).astype(F32)
    w = _r(plgpu.load(w_ref.at[layer, pl.ds(c * bk, bk)]).astype(F32), dt)
    return (w[None, :] * _r(x * rstd[:, None], dt)).astype(dt)


# ---- (a) input norm + QKV + q/k norm + rope + cache write -----------------------------------------------------
def _head_kinds(h, Hq, K):
    """(kind, head index within its kind, predicate) of program head h of the q|k|v heads: one branch per kind."""
    return ((0, h, h < Hq), (1, h - Hq, (h >= Hq) & (h < Hq + K)), (2, h - Hq - K, h >= Hq + K))


def _qkv_accumulate(x_ref, nw_ref, w_ref, wl, col, c0, n_chunks, rstd, *, B, Bm, bk, half, dt):
    """fp32 (lo, hi) [Bm, half] of rms_norm(x)[:, chunks c0 .. c0 + n_chunks) @ W[those rows, col:col + hd]."""
    def body(i, acc):
        lo, hi = acc
        c = c0 + i
        y = _normed_chunk(x_ref, nw_ref, wl, rstd, c, B, Bm, bk, dt)
        w_lo = plgpu.load(w_ref.at[wl, pl.ds(c * bk, bk), pl.ds(col, half)]).astype(dt)
        w_hi = plgpu.load(w_ref.at[wl, pl.ds(c * bk, bk), pl.ds(col + half, half)]).astype(dt)
        return lo + plgpu.dot(y, w_lo), hi + plgpu.dot(y, w_hi)
    z = jnp.zeros((Bm, half), F32)
    return jax.lax.fori_loop(0, n_chunks, body, (z, z))


def _qkv_epilogue(kind, kv_head, lo, hi, *, wl, cl, pos_ref, cos_ref, sin_ref, qn_ref, kn_ref, q_ref, ck_ref,
                  cv_ref, head, B, Bm, half, hd, eps, dt):
    """lo/hi: fp32 projection of one head. kind 0 (q): norm, rope, write q; 1 (k): norm, rope, write the cache row;
    2 (v): write the cache row."""
    rmask = jnp.arange(Bm) < B
    lo, hi = _r(lo, dt), _r(hi, dt)                                   # the projection's output, in dt
    if kind in (0, 1):
        nref = qn_ref if kind == 0 else kn_ref
        r = jax.lax.rsqrt((jnp.sum(lo * lo, axis=1) + jnp.sum(hi * hi, axis=1)) / hd + eps)[:, None]
        w_lo = _r(plgpu.load(nref.at[wl, pl.ds(0, half)]).astype(F32), dt)[None, :]
        w_hi = _r(plgpu.load(nref.at[wl, pl.ds(half, half)]).astype(F32), dt)[None, :]
        lo, hi = _r(w_lo * _r(lo * r, dt), dt), _r(w_hi * _r(hi * r, dt), dt)
        cs = [_r(plgpu.load(ref.at[pl.ds(0, Bm), pl.ds(o, half)], mask=rmask[:, None], other=0.0).astype(F32), dt)
              for ref in (cos_ref, sin_ref) for o in (0, half)]
        c_lo, c_hi, s_lo, s_hi = cs
        lo, hi = lo * c_lo - hi * s_lo, hi * c_hi + lo * s_hi       # x * cos + rotate_half(x) * sin
    if kind == 0:
        plgpu.store(q_ref.at[pl.ds(0, Bm), head, pl.ds(0, half)], lo.astype(q_ref.dtype), mask=rmask[:, None])
        plgpu.store(q_ref.at[pl.ds(0, Bm), head, pl.ds(half, half)], hi.astype(q_ref.dtype), mask=rmask[:, None])
        return
    cref = ck_ref if kind == 1 else cv_ref
    rid = jnp.arange(Bm)[:, None]
    for b in range(B):     # one row per batch row: each goes to its own slot
        p, b = pos_ref[b], jnp.int32(b)   # (a static int index breaks the interpreter's store discharge)
        row_lo = jnp.sum(jnp.where(rid == b, lo, 0.0), axis=0).astype(dt).astype(cref.dtype)
        row_hi = jnp.sum(jnp.where(rid == b, hi, 0.0), axis=0).astype(dt).astype(cref.dtype)
        plgpu.store(cref.at[cl, b, kv_head, p, pl.ds(0, half)], row_lo)
        plgpu.store(cref.at[cl, b, kv_head, p, pl.ds(half, half)], row_hi)


def _qkv_kernel(wl_ref, cl_ref, pos_ref, x_ref, nw_ref, wq_ref, wk_ref, wv_ref, qn_ref, kn_ref, cos_ref, sin_ref,
                ck_in, cv_in, q_ref, ck_ref, cv_ref, *, B, Bm, D, Hq, K, hd, bk, eps, dt):
    del ck_in, cv_in   # aliased to ck_ref / cv_ref
    h = pl.program_id(0)
    wl, cl = wl_ref[0], cl_ref[0]
    half = hd // 2
    rstd = _row_rstd(x_ref, B, Bm, D, bk, eps)
    for kind, idx, when in _head_kinds(h, Hq, K):
        @pl.when(when)
        def _(kind=kind, idx=idx):
            w_ref = (wq_ref, wk_ref, wv_ref)[kind]
            lo, hi = _qkv_accumulate(x_ref, nw_ref, w_ref, wl, idx * hd, 0, D // bk, rstd, B=B, Bm=Bm, bk=bk,
                                     half=half, dt=dt)
            _qkv_epilogue(kind, idx, lo, hi, wl=wl, cl=cl, pos_ref=pos_ref, cos_ref=cos_ref, sin_ref=sin_ref,
                          qn_ref=qn_ref, kn_ref=kn_ref, q_ref=q_ref, ck_ref=ck_ref, cv_ref=cv_ref, head=h, B=B,
                          Bm=Bm, half=half, hd=hd, eps=eps, dt=dt)


def _qkv_partial_kernel(wl_ref, x_ref, nw_ref, wq_ref, wk_ref, wv_ref, part_ref, *, B, Bm, D, Hq, K, hd, bk, splits,
                        eps, dt):
    h, s = pl.program_id(0), pl.program_id(1)
    wl = wl_ref[0]
    half = hd // 2
    rmask = jnp.arange(Bm) < B
    rstd = _row_rstd(x_ref, B, Bm, D, bk, eps)
    per = D // bk // splits
    for kind, idx, when in _head_kinds(h, Hq, K):
        @pl.when(when)
        def _(kind=kind, idx=idx):
            w_ref = (wq_ref, wk_ref, wv_ref)[kind]
            lo, hi = _qkv_accumulate(x_ref, nw_ref, w_ref, wl, idx * hd, s * per, per, rstd, B=B, Bm=Bm, bk=bk,
                                     half=half, dt=dt)
            plgpu.store(part_ref.at[s, pl.ds(0, Bm), h, pl.ds(0, half)], lo, mask=rmask[:, None])
            plgpu.store(part_ref.at[s, pl.ds(0, Bm), h, pl.ds(half, half)], hi, mask=rmask[:, None])


def _qkv_finish_kernel(wl_ref, cl_ref, pos_ref, part_ref, qn_ref, kn_ref, cos_ref, sin_ref, ck_in, cv_in, q_ref,
                       ck_ref, cv_ref, *, B, Bm, Hq, K, hd, splits, eps, dt):
    del ck_in, cv_in
    h = pl.program_id(0)
    wl, cl = wl_ref[0], cl_ref[0]
    half = hd // 2
    rmask = jnp.arange(Bm) < B
    lo = hi = jnp.zeros((Bm, half), F32)
    for s in map(jnp.int32, range(splits)):
        lo = lo + plgpu.load(part_ref.at[s, pl.ds(0, Bm), h, pl.ds(0, half)], mask=rmask[:, None], other=0.0)
        hi = hi + plgpu.load(part_ref.at[s, pl.ds(0, Bm), h, pl.ds(half, half)], mask=rmask[:, None], other=0.0)
    for kind, idx, when in _head_kinds(h, Hq, K):
        @pl.when(when)
        def _(kind=kind, idx=idx):
            _qkv_epilogue(kind, idx, lo, hi, wl=wl, cl=cl, pos_ref=pos_ref, cos_ref=cos_ref, sin_ref=sin_ref,
                          qn_ref=qn_ref, kn_ref=kn_ref, q_ref=q_ref, ck_ref=ck_ref, cv_ref=cv_ref, head=h, B=B,
                          Bm=Bm, half=half, hd=hd, eps=eps, dt=dt)


def qkv_rope_cache(x, p, cache_k, cache_v, pos, cos, sin, *, wlayer, layer, eps, blocks=Blocks(),
                   interpret=False):
    """Kernel (a) [+ (a2)]. x [B, D] (activation dtype); p: stacked weights [Lw, ...] (see `fused_decoder_layer_
    decode`); cache [L, B, K, S, hd]; pos [B] int32 slots; cos/sin [B, hd] fp32. -> (q [B, Hq, hd], cache_k,
    cache_v) with this step's keys/values written at (layer, b, :, pos[b])."""
    B, D = x.shape
    _, Bc, K, S, hd = cache_k.shape
    Hq = p["q_kernel"].shape[-1] // hd
    if Bc != B or hd % 2 or p["k_kernel"].shape[-1] != K * hd:
        raise ValueError(f"x {x.shape} / kernels do not fit the cache {cache_k.shape}")
    dt = x.dtype
    Bm = _rows(B)
    bk = _fit(blocks.qkv_k, D)
    splits = _fit(blocks.qkv_splits, D // bk)
    i32 = lambda a: jnp.asarray(a, jnp.int32).reshape(-1)  # noqa: E731
    wl, cl, pos = i32(wlayer), i32(layer), i32(pos)
    H = Hq + 2 * K
    outs = [jax.ShapeDtypeStruct((B, Hq, hd), dt), jax.ShapeDtypeStruct(cache_k.shape, cache_k.dtype),
            jax.ShapeDtypeStruct(cache_v.shape, cache_v.dtype)]
    common = dict(B=B, Bm=Bm, Hq=Hq, K=K, hd=hd, eps=eps, dt=dt)
    if splits == 1:
        return pl.pallas_call(
            functools.partial(_qkv_kernel, D=D, bk=bk, **common), grid=(H,), out_shape=outs,
            input_output_aliases={12: 1, 13: 2}, compiler_params=_params(blocks), interpret=interpret,
            name="vsr1_qkv",
        )(wl, cl, pos, x, p["input_norm"], p["q_kernel"], p["k_kernel"], p["v_kernel"], p["q_norm"], p["k_norm"],
          cos, sin, cache_k, cache_v)
    part = pl.pallas_call(
        functools.partial(_qkv_partial_kernel, D=D, bk=bk, splits=splits, **common), grid=(H, splits),
        out_shape=jax.ShapeDtypeStruct((splits, B, H, hd), F32), compiler_params=_params(blocks),
        interpret=interpret, name="vsr1_qkv_partial",
    )(wl, x, p["input_norm"], p["q_kernel"], p["k_kernel"], p["v_kernel"])
    return pl.pallas_call(
        functools.partial(_qkv_finish_kernel, splits=splits, **common), grid=(H,), out_shape=outs,
        input_output_aliases={8: 1, 9: 2}, compiler_params=_params(blocks._replace(num_stages=1)),
        interpret=interpret, name="vsr1_qkv_finish",
    )(wl, cl, pos, part, p["q_norm"], p["k_norm"], cos, sin, cache_k, cache_v)


# ---- (b) split-S attention with per-row lengths ----------------------------------------------------------------
def _attn_kernel(cl_ref, len_ref, q_ref, k_ref, v_ref, *rest, split_len, block_k, block_h, groups, scale,
                 has_bias):
    bias_ref, (o_ref, m_ref, l_ref) = (rest[0], rest[1:]) if has_bias else (None, rest)
    b, kh, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    cl = cl_ref[0]
    n = len_ref[b]
    hd = q_ref.shape[-1]
    hmask = jnp.arange(block_h) < groups
    q = plgpu.load(q_ref.at[b, pl.ds(kh * groups, block_h), :], mask=hmask[:, None], other=0.0)
    q = q.astype(k_ref.dtype)
    lo = j * split_len
    hi = jnp.minimum(lo + split_len, n)
    n_blocks = pl.cdiv(jnp.maximum(hi - lo, 0), block_k)

    def body(i, carry):
        o, m, l = carry
        start = lo + i * block_k
        kmask = start + jnp.arange(block_k) < hi
        k = plgpu.load(k_ref.at[cl, b, kh, pl.ds(start, block_k), :], mask=kmask[:, None], other=0.0)
        v = plgpu.load(v_ref.at[cl, b, kh, pl.ds(start, block_k), :], mask=kmask[:, None], other=0.0)
        s = plgpu.dot(q, k, trans_b=True) * scale                                      # [block_h, block_k]
        if has_bias:
            s = s + plgpu.load(bias_ref.at[b, pl.ds(start, block_k)], mask=kmask, other=NEG)[None, :]
        s = jnp.where(kmask[None, :], s, NEG)
        m_new = jnp.maximum(m, s.max(axis=-1))
        corr = jnp.exp(m - m_new)
        pr = jnp.exp(s - m_new[:, None])
        l_new = corr * l + pr.sum(axis=-1)
        o_new = corr[:, None] * o + plgpu.dot(pr.astype(v.dtype), v)
        return o_new, m_new, l_new

    init = (jnp.zeros((block_h, hd), F32), jnp.full((block_h,), NEG, F32), jnp.zeros((block_h,), F32))
    o, m, l = jax.lax.fori_loop(0, n_blocks, body, init)
    plgpu.store(o_ref.at[j, b, pl.ds(kh * groups, block_h), :], o, mask=hmask[:, None])
    plgpu.store(m_ref.at[j, b, pl.ds(kh * groups, block_h)], m, mask=hmask)
    plgpu.store(l_ref.at[j, b, pl.ds(kh * groups, block_h)], l, mask=hmask)


def attention_partials(q, cache_k, cache_v, lengths, *, layer, bias=None, blocks=Blocks(), interpret=False):
    """Kernel (b). q [B, Hq, hd]; cache [L, B, K, S, hd]; lengths [B]: row b attends to slots [0, lengths[b]) of
    layer `layer` (minus those where bias [B, S] is NEG). -> (o [n, B, Hq, hd], m [n, B, Hq], l [n, B, Hq]) fp32
    over n S-splits; `merge_partials` combines them."""
    B, Hq, hd = q.shape
    _, _, K, S, _ = cache_k.shape
    groups = Hq // K
    block_h = max(16, pl.next_power_of_2(groups))
    block_k = _fit(blocks.attn_block_k, pl.next_power_of_2(S))
    n = blocks.attn_splits or max(1, min(pl.cdiv(S, 4 * block_k), pl.cdiv(264, B * K)))
    split_len = pl.cdiv(pl.cdiv(S, n), block_k) * block_k
    n = pl.cdiv(S, split_len)
    kernel = functools.partial(_attn_kernel, split_len=split_len, block_k=block_k, block_h=block_h, groups=groups,
                               scale=1.0 / math.sqrt(hd), has_bias=bias is not None)
    args = [jnp.asarray(layer, jnp.int32).reshape(1), jnp.asarray(lengths, jnp.int32).reshape(B), q, cache_k,
            cache_v] + ([bias.astype(F32)] if bias is not None else [])
    return pl.pallas_call(
        kernel, grid=(B, K, n),
        out_shape=[jax.ShapeDtypeStruct((n, B, Hq, hd), F32), jax.ShapeDtypeStruct((n, B, Hq), F32),
                   jax.ShapeDtypeStruct((n, B, Hq), F32)],
        compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=2), interpret=interpret,
        name="vsr1_attention",
    )(*args)


def merge_partials(o, m, l, dtype):
    """Plain-JAX combine of `attention_partials` over its S-splits (step (c1): one XLA fusion). [B, Hq, hd]."""
    m_all = m.max(axis=0)
    corr = jnp.exp(m - m_all[None])
    return ((o * corr[..., None]).sum(0) / (l * corr).sum(0)[..., None]).astype(dtype)


# ---- (c) merge, then o-proj + residual -------------------------------------------------------------------------
def oproj_residual(o, m, l, x, p, *, wlayer, blocks=Blocks(), interpret=False):
    """Kernels (c1) + (c2): x + merge(o, m, l) @ Wo. x [B, D]; partials from `attention_partials`. -> h [B, D].
    The split-S combine runs once (`merge_partials`, one small XLA fusion: it reads the partials and writes the
    [B, Hq x hd] attention output in the activation dtype), then the projection is `matmul_residual`. (Merging in
    the o-proj kernel's prologue made every one of its D / o_n programs merge all Hq heads again: 85-147 us per
    layer for 8.4 MB of weights on the H100, fused_decode_sweep_h100_2026-12-07.json.)"""
    B = x.shape[0]
    att = merge_partials(o, m, l, x.dtype).reshape(B, -1)
    return matmul_residual(att, x, p["o_kernel"], wlayer=wlayer, bn=blocks.o_n, bk=blocks.o_k, blocks=blocks,
                           interpret=interpret, name="vsr1_oproj")


# ---- (d) post-norm + gate/up + SiLU, then down + residual --------------------------------------------------------
def _gate_up_kernel(wl_ref, h_ref, nw_ref, wg_ref, wu_ref, a_ref, *, B, Bm, D, bn, bk, eps, dt):
    col = pl.program_id(0) * bn
    wl = wl_ref[0]
    rmask = jnp.arange(Bm) < B
    rstd = _row_rstd(h_ref, B, Bm, D, bk, eps)

    def body(c, acc):
        g, u = acc
        y = _normed_chunk(h_ref, nw_ref, wl, rstd, c, B, Bm, bk, dt)
        wg = plgpu.load(wg_ref.at[wl, pl.ds(c * bk, bk), pl.ds(col, bn)]).astype(dt)
        wu = plgpu.load(wu_ref.at[wl, pl.ds(c * bk, bk), pl.ds(col, bn)]).astype(dt)
        return g + plgpu.dot(y, wg), u + plgpu.dot(y, wu)

    z = jnp.zeros((Bm, bn), F32)
    g, u = jax.lax.fori_loop(0, D // bk, body, (z, z))
    g, u = _r(g, dt), _r(u, dt)
    act = _r(g / (1.0 + jnp.exp(-g)), dt) * u                    # silu(gate) * up
    plgpu.store(a_ref.at[pl.ds(0, Bm), pl.ds(col, bn)], act.astype(dt), mask=rmask[:, None])


def gate_up_silu(h, p, *, wlayer, eps, blocks=Blocks(), interpret=False):
    """Kernel (d1): silu(rms_norm(h) @ Wg) * (rms_norm(h) @ Wu) with the post-attention norm. -> act [B, I]."""
    B, D = h.shape
    I = p["gate_kernel"].shape[-1]
    bn, bk = _fit(blocks.mlp_n, I), _fit(blocks.mlp_k, D)
    return pl.pallas_call(
        functools.partial(_gate_up_kernel, B=B, Bm=_rows(B), D=D, bn=bn, bk=bk, eps=eps, dt=h.dtype),
        grid=(I // bn,), out_shape=jax.ShapeDtypeStruct((B, I), h.dtype), compiler_params=_params(blocks),
        interpret=interpret, name="vsr1_gate_up",
    )(jnp.asarray(wlayer, jnp.int32).reshape(1), h, p["post_norm"], p["gate_kernel"], p["up_kernel"])


def _matmul_residual_kernel(wl_ref, a_ref, h_ref, w_ref, out_ref, *, B, Bm, I, bn, bk, dt):
    col = pl.program_id(0) * bn
    wl = wl_ref[0]
    rmask = jnp.arange(Bm) < B

    def body(c, acc):
        a = plgpu.load(a_ref.at[pl.ds(0, Bm), pl.ds(c * bk, bk)], mask=rmask[:, None], other=0.0).astype(dt)
        w = plgpu.load(w_ref.at[wl, pl.ds(c * bk, bk), pl.ds(col, bn)]).astype(dt)
        return acc + plgpu.dot(a, w)

    acc = jax.lax.fori_loop(0, I // bk, body, jnp.zeros((Bm, bn), F32))
    h = plgpu.load(h_ref.at[pl.ds(0, Bm), pl.ds(col, bn)], mask=rmask[:, None], other=0.0).astype(F32)
    plgpu.store(out_ref.at[pl.ds(0, Bm), pl.ds(col, bn)], (h + _r(acc, dt)).astype(dt), mask=rmask[:, None])


def matmul_residual(a, h, w, *, wlayer, bn: int, bk: int, blocks=Blocks(), interpret=False, name="vsr1_matmul"):
    """h + a @ w[wlayer]: a [B, I] (activation dtype), h [B, D], w [Lw, I, D] read once, bn output columns per
    program, bk rows per dot. The down projection (d2) and the o-projection (c2). -> [B, D]."""
    B, D = h.shape
    I = a.shape[-1]
    bn, bk = _fit(bn, D), _fit(bk, I)
    return pl.pallas_call(
        functools.partial(_matmul_residual_kernel, B=B, Bm=_rows(B), I=I, bn=bn, bk=bk, dt=h.dtype),
        grid=(D // bn,), out_shape=jax.ShapeDtypeStruct((B, D), h.dtype), compiler_params=_params(blocks),
        interpret=interpret, name=name,
    )(jnp.asarray(wlayer, jnp.int32).reshape(1), a, h, w)


def down_residual(act, h, p, *, wlayer, blocks=Blocks(), interpret=False):
    """Kernel (d2): h + act @ Wd. -> [B, D]."""
    return matmul_residual(act, h, p["down_kernel"], wlayer=wlayer, bn=blocks.down_n, bk=blocks.down_k,
                           blocks=blocks, interpret=interpret, name="vsr1_down")


# ---- the layer ----------------------------------------------------------------------------------------------
LAYER_KEYS = ("input_norm", "q_kernel", "k_kernel", "v_kernel", "o_kernel", "q_norm", "k_norm", "post_norm",
              "gate_kernel", "up_kernel", "down_kernel")


def stacked(params, layer):
    """(weights with a leading layer axis, weight layer index): stacked [L, ...] params index `layer` in place;
    one layer's params get a leading axis of 1 (a reshape) and index 0."""
    if params["input_norm"].ndim == 2:
        return {k: params[k] for k in LAYER_KEYS}, layer
    return {k: params[k][None] for k in LAYER_KEYS}, 0


def fused_decoder_layer_decode(params, hidden, cache_k, cache_v, pos, cos, sin, cfg, *, layer=0, lengths=None,
                               bias=None, blocks: Blocks = Blocks(), interpret: bool = False):
    """One decoder layer for one new position per row, as kernels (a)[, (a2)], (b), (c1), (c2), (d1), (d2).

    params: the layer's weights under `TextModel._LAYER_KEYS` names, either one layer's ([D], [D, N], ...) or the
    stacked arrays ([L, D], [L, D, N], ...: layer `layer` is read in place). hidden [B, D] or [B, 1, D] (the
    activation dtype); cache_k/cache_v [L, B, K, S, hd]; pos [B] int32: the slot each row writes its key/value to;
    cos/sin [B, hd] float32: the rotary rows of the step (`fused_ref.decode_cos_sin`); cfg: a TextConfig (hidden,
    heads, kv heads, head_dim, intermediate, rms_norm_eps); lengths [B]: row b attends to slots [0, lengths[b])
    (default pos + 1); bias [B, S] float32: added to the scores (NEG at slots to skip; the production `valid`
    mask). Returns (output like hidden, cache_k, cache_v) with layer `layer`'s slot pos[b] of row b written (the
    caches are updated in place when the caller donates them)."""
    squeeze = hidden.ndim == 3
    x = hidden.reshape(hidden.shape[0], -1)
    B, D = x.shape
    hd, K = cfg.head_dim, cfg.num_key_value_heads
    if (D, cache_k.shape[2], cache_k.shape[4]) != (cfg.hidden_size, K, hd):
        raise ValueError(f"hidden {hidden.shape} / cache {cache_k.shape} do not fit the config")
    p, wl = stacked(params, layer)
    pos = jnp.asarray(pos, jnp.int32).reshape(B)
    lengths = pos + 1 if lengths is None else jnp.asarray(lengths, jnp.int32).reshape(B)
    eps = cfg.rms_norm_eps
    kw = dict(blocks=blocks, interpret=interpret)
    q, cache_k, cache_v = qkv_rope_cache(x, p, cache_k, cache_v, pos, cos.astype(F32), sin.astype(F32), wlayer=wl,
                                         layer=layer, eps=eps, **kw)
    o, m, l = attention_partials(q, cache_k, cache_v, lengths, layer=layer, bias=bias, **kw)
    h = oproj_residual(o, m, l, x, p, wlayer=wl, **kw)
    act = gate_up_silu(h, p, wlayer=wl, eps=eps, **kw)
    out = down_residual(act, h, p, wlayer=wl, **kw)
    return (out[:, None] if squeeze else out), cache_k, cache_v
