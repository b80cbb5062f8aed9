"""Qwen3-VL vision tower in Flax NNX: patch embedding, interpolated position grid, axial-RoPE ViT blocks with
per-frame attention, the patch merger and the DeepStack mergers (HF `Qwen3VLVisionModel`).

Blocks are stacked along a leading layer axis and run with `lax.scan` in segments between DeepStack taps.
Attention is computed per temporal patch group ([t, h*w] tokens attend within their frame group only), so memory
grows with t * (h*w)^2, never (t*h*w)^2.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax.models.qwen3_vl.config import VisionConfig
from vsr1_jax.models.qwen3_vl.layers import attention, layer_norm, linear, make_param
from vsr1_jax.models.qwen3_vl.rope import apply_rope, vision_rope_cos_sin

Grid = tuple[int, int, int]


def _interp_matrix(n: int, side: int) -> np.ndarray:
    """[n, side] bilinear weights with align_corners=True (HF `_interpolation_axis_taps_weights`, border clamp)."""
    idx = np.arange(n, dtype=np.float32)
    src = idx * np.float32(side - 1) / np.float32(max(n - 1, 1))
    lo = np.floor(src)
    w_hi = src - lo
    lo = lo.astype(np.int64)
    hi = np.minimum(lo + 1, side - 1)
    m = np.zeros((n, side), np.float32)
    np.add.at(m, (np.arange(n), lo), 1.0 - w_hi)
    np.add.at(m, (np.arange(n), hi), w_hi)
    return m


def _merge_order(h: int, w: int, merge: int) -> np.ndarray:
    """Raster index of each patch in 2x2 merge-block order."""
    r = np.arange(h * w).reshape(h // merge, merge, w // merge, merge)
    return r.transpose(0, 2, 1, 3).ravel()


class Merger(nnx.Module):
    """PatchMerger: LayerNorm (before or after the 2x2 shuffle), Linear, exact GELU, Linear."""

    def __init__(self, cfg: VisionConfig, postshuffle_norm: bool, dtype, rngs: nnx.Rngs | None, n: int | None = None):
        d4 = cfg.hidden_size * cfg.merge_unit
        nd = cfg.hidden_size if not postshuffle_norm else d4
        lead, lax_ = ((n,), ("stack",)) if n is not None else ((), ())
        self.postshuffle_norm = postshuffle_norm
        self.hidden = d4
        self.norm_scale = make_param(rngs, lead + (nd,), lax_ + ("norm",), dtype, "ones")
        self.norm_bias = make_param(rngs, lead + (nd,), lax_ + ("norm",), dtype, "zeros")
        self.fc1_kernel = make_param(rngs, lead + (d4, d4), lax_ + ("vis_embed", "vis_mlp"), dtype)
        self.fc1_bias = make_param(rngs, lead + (d4,), lax_ + ("vis_mlp",), dtype, "zeros")
        self.fc2_kernel = make_param(rngs, lead + (d4, cfg.out_hidden_size), lax_ + ("vis_mlp", "embed"), dtype)
        self.fc2_bias = make_param(rngs, lead + (cfg.out_hidden_size,), lax_ + ("embed",), dtype, "zeros")


def merger_apply(p: dict, x, postshuffle_norm: bool, hidden: int, eps: float):
    """x [N, d] -> [N/4, out]. `p` holds the merger's arrays (one entry of a stacked merger, or the merger)."""
    if postshuffle_norm:
        x = layer_norm(x.reshape(-1, hidden), p["norm_scale"], p["norm_bias"], eps)
    else:
        x = layer_norm(x, p["norm_scale"], p["norm_bias"], eps).reshape(-1, hidden)
    x = jax.nn.gelu(linear(x, p["fc1_kernel"], p["fc1_bias"]), approximate=False)
    return linear(x, p["fc2_kernel"], p["fc2_bias"])


class VisionModel(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        d, L, I = cfg.hidden_size, cfg.depth, cfg.intermediate_size
        p = lambda shape, axes, init="normal": make_param(rngs, shape, axes, param_dtype, init,
                                                          cfg.initializer_range)
        # Conv3d with kernel == stride over one flattened (C, T, P, P) patch row is a matmul.
        self.patch_kernel = p((cfg.patch_dim, d), ("patch", "vis_embed"))
        self.patch_bias = p((d,), ("vis_embed",), "zeros")
        self.pos_embed = p((cfg.num_position_embeddings, d), (None, "vis_embed"))
        self.norm1_scale = p((L, d), ("layers", "norm"), "ones")
        self.norm1_bias = p((L, d), ("layers", "norm"), "zeros")
        self.qkv_kernel = p((L, d, 3 * d), ("layers", "vis_embed", "vis_heads"))
        self.qkv_bias = p((L, 3 * d), ("layers", "vis_heads"), "zeros")
        self.proj_kernel = p((L, d, d), ("layers", "vis_heads", "vis_embed"))
        self.proj_bias = p((L, d), ("layers", "vis_embed"), "zeros")
        self.norm2_scale = p((L, d), ("layers", "norm"), "ones")
        self.norm2_bias = p((L, d), ("layers", "norm"), "zeros")
        self.fc1_kernel = p((L, d, I), ("layers", "vis_embed", "vis_mlp"))
        self.fc1_bias = p((L, I), ("layers", "vis_mlp"), "zeros")
        self.fc2_kernel = p((L, I, d), ("layers", "vis_mlp", "vis_embed"))
        self.fc2_bias = p((L, d), ("layers", "vis_embed"), "zeros")
        self.merger = Merger(cfg, False, param_dtype, rngs)
        n_ds = len(cfg.deepstack_visual_indexes)
        self.deepstack = Merger(cfg, True, param_dtype, rngs, n=n_ds) if n_ds else None

    _BLOCK_KEYS = ("norm1_scale", "norm1_bias", "qkv_kernel", "qkv_bias", "proj_kernel", "proj_bias",
                   "norm2_scale", "norm2_bias", "fc1_kernel", "fc1_bias", "fc2_kernel", "fc2_bias")

    def _pos_embed(self, grid: Grid, dtype):
        """Learned square grid bilinearly resampled to (h, w), in merge-block order, repeated over t: [t*h*w, d]."""
        t, h, w = grid
        side = int(round(self.cfg.num_position_embeddings ** 0.5))
        ah, aw = _interp_matrix(h, side), _interp_matrix(w, side)
        table = self.pos_embed[...].astype(jnp.float32).reshape(side, side, -1)
        pe = jnp.einsum("hi,wj,ijd->hwd", ah, aw, table).reshape(h * w, -1)
        pe = pe[_merge_order(h, w, self.cfg.spatial_merge_size)]
        return jnp.tile(pe.astype(dtype), (t, 1))

    def encode(self, pixel_rows, grid: Grid, *, dtype=jnp.float32, attn_impl: str = "xla",
               remat: bool = False):
        """One image or video. pixel_rows [t*h*w, patch_dim] -> (merged [t*h*w/4, out], deepstack [n, t*h*w/4, out])."""
        cfg = self.cfg
        t, h, w = grid
        n = t * h * w
        if pixel_rows.shape != (n, cfg.patch_dim):
            raise ValueError(f"pixel rows {pixel_rows.shape} do not match grid {grid} (expected {(n, cfg.patch_dim)})")
        x = linear(pixel_rows.astype(dtype), self.patch_kernel[...], self.patch_bias[...])
        x = x + self._pos_embed(grid, dtype)
        cos, sin = vision_rope_cos_sin(h, w, cfg.spatial_merge_size, cfg.head_dim, cfg.rope_theta)
        cos, sin = jnp.asarray(cos)[None, :, None, :], jnp.asarray(sin)[None, :, None, :]  # [1, hw, 1, D]
        blocks = {k: getattr(self, k)[...] for k in self._BLOCK_KEYS}
        heads, hd, eps = cfg.num_heads, cfg.head_dim, cfg.layer_norm_eps

        def block(x, p):
            y = layer_norm(x, p["norm1_scale"], p["norm1_bias"], eps)
            qkv = linear(y, p["qkv_kernel"], p["qkv_bias"]).reshape(t, h * w, 3, heads, hd)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            # Rotary in fp32 as HF apply_rotary_pos_emb_vision, then back to the compute dtype.
            q = apply_rope(q.astype(jnp.float32), cos, sin).astype(dtype)
            k = apply_rope(k.astype(jnp.float32), cos, sin).astype(dtype)
            o = attention(q, k, v, None, impl=attn_impl)          # frames act as the batch: block-diagonal
            x = x + linear(o.reshape(n, heads * hd), p["proj_kernel"], p["proj_bias"])
            y = layer_norm(x, p["norm2_scale"], p["norm2_bias"], eps)
            y = jax.nn.gelu(linear(y, p["fc1_kernel"], p["fc1_bias"]), approximate=True)
            return x + linear(y, p["fc2_kernel"], p["fc2_bias"]), None

        if remat:
            block = jax.checkpoint(block)
        taps = list(cfg.deepstack_visual_indexes)
        bounds = sorted(set([0, cfg.depth] + [i + 1 for i in taps]))
        feats = {}
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            seg = jax.tree.map(lambda a: a[lo:hi], blocks)
            x, _ = jax.lax.scan(block, x, seg)
            if hi - 1 in taps:
                feats[hi - 1] = x
        mp = {k: getattr(self.merger, k)[...] for k in ("norm_scale", "norm_bias", "fc1_kernel", "fc1_bias",
                                                         "fc2_kernel", "fc2_bias")}
        merged = merger_apply(mp, x, False, self.merger.hidden, eps)
        ds = []
        for j, li in enumerate(taps):
            dp = {k: getattr(self.deepstack, k)[j] for k in mp}
            ds.append(merger_apply(dp, feats[li], True, self.deepstack.hidden, eps))
        deep = jnp.stack(ds) if ds else jnp.zeros((0,) + merged.shape, merged.dtype)
        return merged, deep

    def __call__(self, pixel_rows, grids: Sequence[Grid], **kw):
        """Several items whose rows are concatenated in order: returns concatenated merged and deepstack features.

        Consecutive items with the same grid are encoded together (vmapped), so a batch of equal-size videos costs
        one trace, not one per video.
        """
        grids = [tuple(int(v) for v in g) for g in grids]
        merged, deep, off, i = [], [], 0, 0
        while i < len(grids):
            j = i
            while j < len(grids) and grids[j] == grids[i]:
                j += 1
            g, r, n = grids[i], j - i, int(np.prod(grids[i]))
            rows = pixel_rows[off:off + r * n]
            if r == 1:
                m, d = self.encode(rows, g, **kw)
            else:
                m, d = jax.vmap(lambda px: self.encode(px, g, **kw))(rows.reshape(r, n, -1))
                m = m.reshape(-1, m.shape[-1])
                d = jnp.moveaxis(d, 0, 1).reshape(d.shape[1], -1, d.shape[-1])
            merged.append(m)
            deep.append(d)
            off += r * n
            i = j
        if off != pixel_rows.shape[0]:
            raise ValueError(f"grids cover {off} pixel rows but {pixel_rows.shape[0]} were given")
        return jnp.concatenate(merged, 0), jnp.concatenate(deep, 1)
