"""Qwen3-VL vision tower in Flax NNX: patch embedding, interpolated position grid, axial-RoPE ViT blocks with
per-frame attention, the patch merger and the DeepStack mergers (HF `Qwen3VLVisionModel`).

Blocks are stacked along a leading layer axis and run with `lax.scan` in segments between DeepStack taps.
Attention is computed per temporal patch group ([t, h*w] tokens attend within their frame group only), so memory
grows with t * (h*w)^2, never (t*h*w)^2.

One implementation, `VisionModel.encode_batch`, runs a padded `VisionBatch` whose shapes come from buckets only: the
position-embedding gather, the RoPE tables and the masks are data built host-side (`pack_vision`), so batches of
different videos in the same buckets share one compilation. The static-grid entry points (`encode`, `__call__`)
build the unpadded layout from the grid and call the same function.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax.models.qwen3_vl.config import VisionConfig
from vsr1_jax.models.qwen3_vl.layers import attention, layer_norm, linear, make_param
from vsr1_jax.models.qwen3_vl.rope import apply_rope, vision_rope_cos_sin

Grid = tuple[int, int, int]


# ---- host side: the padded, bucketed layout of a batch of images / videos -----------------------------------------
class VisionBuckets(NamedTuple):
    """Allowed padded sizes of a `VisionBatch`: each a tuple of sizes (the smallest that fits is taken) or None (the
    exact size the batch needs). items: images/videos per batch; groups: temporal patch groups per item; patches:
    patches per frame (h*w), in multiples of spatial_merge_size**2."""
    items: tuple[int, ...] | None = None
    groups: tuple[int, ...] | None = None
    patches: tuple[int, ...] | None = None


class VisionBatch(NamedTuple):
    """A padded batch of Nv images/videos, each G temporal patch groups of HW patches (merge-block order), with all
    that depends on the grids as data, so one compiled encoder serves every batch of the same bucket shape.

    Item i with grid (t, h, w) fills groups [0, t) and patches [0, h*w) of each of them; the rest is padding. Its
    merged rows are rows g * HW/4 + r (g < t, r < h*w/4) of `merged[i]` ([Nv, G*HW/4, D]), i.e. rows
    i * G*HW/4 + g * HW/4 + r of the flattened [Nv*G*HW/4, D] features that `token_index` points into.
    """
    pixels: np.ndarray | None     # [Nv, G, HW, patch_dim] (zeros in padding)
    pos_index: np.ndarray         # [Nv, HW, 4] int32: the bilinear corners' rows of the learned position table
    pos_weight: np.ndarray        # [Nv, HW, 4] float32: their weights (0 on padded patches)
    rope_cos: np.ndarray          # [Nv, HW, head_dim] float32: axial vision RoPE of each patch (1 on padding)
    rope_sin: np.ndarray          # [Nv, HW, head_dim] float32 (0 on padding)
    patch_mask: np.ndarray        # [Nv, HW] bool: a real patch (a prefix of each item's frame: h*w patches)
    group_mask: np.ndarray        # [Nv, G] bool: a real temporal group (the first t)
    token_index: np.ndarray | None = None  # [B, T] int32: flattened merged row of each placeholder token, -1 else


def _pick(need: int, allowed, what: str) -> int:
    if allowed is None:
        return need
    fits = sorted(int(a) for a in allowed if int(a) >= need)
    if not fits:
        raise ValueError(f"{what}: {need} needed but the largest bucket is {max(allowed)}; add a larger bucket")
    return fits[0]


def _axis_taps(n: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, 2] bilinear taps (floor, floor+1 clamped) and weights into a `side`-long axis, align_corners=True: HF
    `_interpolation_axis_taps_weights(mode="bilinear", padding="border")`, float32 step for step."""
    src = np.arange(n, dtype=np.float32) * np.float32(side - 1) / np.float32(max(n - 1, 1))
    floor = np.floor(src)
    offsets = np.arange(2, dtype=np.float32)
    taps = np.clip(floor[:, None].astype(np.int64) + np.arange(2), 0, side - 1)
    dist = np.abs(src[:, None] - floor[:, None] - offsets)
    return taps, np.maximum(np.float32(1) - dist, np.float32(0)).astype(np.float32)


def pos_embed_taps(h: int, w: int, side: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """HF `fast_pos_embed_interpolate` as a gather: for each patch of an (h, w) frame in merge-block order, the 4
    rows of the learned [side*side, d] table and their bilinear weights: ([h*w, 4] int32, [h*w, 4] float32)."""
    hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    row = hh.reshape(shape).transpose(0, 2, 1, 3).ravel()
    col = ww.reshape(shape).transpose(0, 2, 1, 3).ravel()
    ht, hw_ = _axis_taps(h, side)
    wt, ww_ = _axis_taps(w, side)
    idx = (ht[row][:, :, None] * side + wt[col][:, None, :]).reshape(-1, 4)
    wgt = (hw_[row][:, :, None] * ww_[col][:, None, :]).reshape(-1, 4)
    return idx.astype(np.int32), wgt.astype(np.float32)


def vision_layout(grids: Sequence[Grid], cfg: VisionConfig, buckets: VisionBuckets | None = None) -> VisionBatch:
    """The grid-dependent part of a `VisionBatch` (pixels=None, token_index=None), padded to `buckets`."""
    grids = [tuple(int(v) for v in g) for g in grids]
    m, mu = cfg.spatial_merge_size, cfg.merge_unit
    for g in grids:
        if len(g) != 3 or g[1] % m or g[2] % m or min(g) < 1:
            raise ValueError(f"grid {g}: expected (t, h, w) >= 1 with h and w multiples of {m}")
    b = buckets or VisionBuckets()
    for hw in b.patches or ():
        if int(hw) % mu:
            raise ValueError(f"patch bucket {hw} is not a multiple of spatial_merge_size**2 = {mu}")
    Nv = _pick(len(grids), b.items, "images/videos per batch")
    G = _pick(max([g[0] for g in grids], default=1), b.groups, "temporal groups per item")
    HW = _pick(max([g[1] * g[2] for g in grids], default=mu), b.patches, "patches per frame")
    side = int(round(cfg.num_position_embeddings ** 0.5))
    hd = cfg.head_dim
    pos_index = np.zeros((Nv, HW, 4), np.int32)
    pos_weight = np.zeros((Nv, HW, 4), np.float32)
    cos = np.ones((Nv, HW, hd), np.float32)
    sin = np.zeros((Nv, HW, hd), np.float32)
    patch_mask = np.zeros((Nv, HW), bool)
    group_mask = np.zeros((Nv, G), bool)
    cache: dict = {}
    for i, (t, h, w) in enumerate(grids):
        if (h, w) not in cache:
            cache[(h, w)] = (*pos_embed_taps(h, w, side, m), *vision_rope_cos_sin(h, w, m, hd, cfg.rope_theta))
        pi, pw, c, s = cache[(h, w)]
        n = h * w
        pos_index[i, :n], pos_weight[i, :n], cos[i, :n], sin[i, :n] = pi, pw, c, s
        patch_mask[i, :n] = True
        group_mask[i, :t] = True
    return VisionBatch(None, pos_index, pos_weight, cos, sin, patch_mask, group_mask)


def split_rows(pixels, grids: Sequence[Grid]) -> list:
    """Concatenated patch rows of several items -> one [t*h*w, patch_dim] block per item."""
    sizes = [int(np.prod(g)) for g in grids]
    if pixels is None or not sizes:
        if sizes:
            raise ValueError(f"{len(sizes)} grids given without pixel rows")
        return []
    if sum(sizes) != pixels.shape[0]:
        raise ValueError(f"grids cover {sum(sizes)} pixel rows but {pixels.shape[0]} were given")
    return np.split(np.asarray(pixels), np.cumsum(sizes)[:-1])


def token_index(input_ids, grids: Sequence[Grid], placeholder_ids: Sequence[int], groups: int, patches: int,
                merge_unit: int) -> np.ndarray:
    """[B, T] int32: for each placeholder token the flattened merged row it takes, -1 for other tokens.

    For each placeholder id, that id's items fill that id's tokens in row-major order (item k's tokens come after
    item k-1's, rows in order): HF's `masked_scatter`, images and videos separately. Item i's rows start at
    i * groups * patches / merge_unit; within it, temporal group g's h*w/merge_unit rows start at g * patches /
    merge_unit.
    """
    ids = np.asarray(input_ids)
    out = np.full(ids.shape, -1, np.int32)
    per_group, per_item = patches // merge_unit, groups * patches // merge_unit
    for pid in dict.fromkeys(int(p) for p in placeholder_ids):
        rows = []
        for i, (g, p) in enumerate(zip(grids, placeholder_ids)):
            if int(p) != pid:
                continue
            t, h, w = (int(v) for v in g)
            n = h * w // merge_unit
            rows.append((i * per_item + np.arange(t)[:, None] * per_group + np.arange(n)[None, :]).ravel())
        rows = np.concatenate(rows) if rows else np.zeros((0,), np.int64)
        where = np.flatnonzero(ids.reshape(-1) == pid)
        if len(where) != len(rows):
            raise ValueError(f"{len(where)} placeholder tokens of id {pid} in the input ids, but their items have "
                             f"{len(rows)} merged rows")
        out.reshape(-1)[where] = rows
    return out


def pack_vision(items: Sequence[tuple], cfg: VisionConfig, buckets: VisionBuckets | None = None, *,
                input_ids=None, placeholder_ids: int | Sequence[int] | None = None) -> VisionBatch:
    """Host-side (numpy) packer: items [(pixel_rows [t*h*w, patch_dim], grid (t, h, w)), ...] -> a padded
    `VisionBatch` whose shapes depend only on `buckets` (None: the exact sizes of these items).

    With input_ids ([B, T]) also the `token_index` (see `token_index`); placeholder_ids is the token id each item's
    placeholders carry (one int for all items, or one per item: image and video items can share a batch).
    """
    grids = [tuple(int(v) for v in g) for _, g in items]
    lay = vision_layout(grids, cfg, buckets)
    Nv, G, HW = lay.patch_mask.shape[0], lay.group_mask.shape[1], lay.patch_mask.shape[1]
    dtype = np.result_type(*[np.asarray(px).dtype for px, _ in items]) if items else np.float32
    pixels = np.zeros((Nv, G, HW, cfg.patch_dim), dtype)
    for i, (px, (t, h, w)) in enumerate(zip([px for px, _ in items], grids)):
        px = np.asarray(px)
        if px.shape != (t * h * w, cfg.patch_dim):
            raise ValueError(f"item {i}: pixel rows {px.shape} do not match grid {(t, h, w)} "
                             f"(expected {(t * h * w, cfg.patch_dim)})")
        pixels[i, :t, :h * w] = px.reshape(t, h * w, -1)
    ti = None
    if input_ids is not None:
        if placeholder_ids is None:
            raise ValueError("input_ids given without placeholder_ids (the token id each item fills)")
        pids = [placeholder_ids] * len(items) if np.ndim(placeholder_ids) == 0 else list(placeholder_ids)
        if len(pids) != len(items):
            raise ValueError(f"{len(pids)} placeholder ids for {len(items)} items")
        ti = token_index(input_ids, grids, pids, G, HW, cfg.merge_unit)
    return lay._replace(pixels=pixels, token_index=ti)


def merged_mask(batch: VisionBatch, merge_unit: int):
    """[Nv, G*HW/merge_unit] bool: the merged rows that are real (works on numpy and jax arrays)."""
    pm = batch.patch_mask[:, ::merge_unit]
    m = batch.group_mask[:, :, None] & pm[:, None, :]
    return m.reshape(m.shape[0], -1)


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

    def encode_batch(self, batch: VisionBatch, *, dtype=jnp.float32, attn_impl: str = "xla", remat: bool = False,
                     mask_keys: bool = True):
        """A padded `VisionBatch` (device or host arrays; shapes from the buckets only) -> (merged [Nv, G*HW/4, out],
        deepstack [n_deepstack, Nv, G*HW/4, out]); padded rows are zero.

        Items are independent (a batch axis); attention is per temporal group ([t, h*w] tokens attend within their
        frame group) with padded patches masked out as keys. mask_keys=False skips the key mask: only for batches
        without padded patches (the static-grid entry points). attn_impl "cudnn" (GPU, bf16/fp16) passes the real
        patch counts as key lengths (real patches are a prefix of each frame); "xla" uses a boolean mask.
        """
        cfg = self.cfg
        Nv, G, HW, pd = batch.pixels.shape
        mu = cfg.merge_unit
        if pd != cfg.patch_dim or HW % mu:
            raise ValueError(f"pixels {batch.pixels.shape}: expected [Nv, G, HW, {cfg.patch_dim}] with HW a "
                             f"multiple of {mu}")
        if attn_impl not in ("xla", "cudnn"):
            raise ValueError(f"vision attn_impl={attn_impl!r}: expected 'xla' or 'cudnn'")
        heads, hd, eps = cfg.num_heads, cfg.head_dim, cfg.layer_norm_eps
        x = linear(jnp.asarray(batch.pixels).astype(dtype), self.patch_kernel[...], self.patch_bias[...])
        # Learned square grid resampled bilinearly: a weighted sum of 4 gathered rows per patch (HF order), in fp32.
        table = self.pos_embed[...].astype(jnp.float32)
        pe = jnp.sum(jnp.take(table, batch.pos_index, axis=0) * batch.pos_weight[..., None], axis=2)  # [Nv, HW, d]
        x = x + pe.astype(dtype)[:, None]
        cos = jnp.asarray(batch.rope_cos, jnp.float32)[:, None, :, None, :]   # [Nv, 1, HW, 1, hd]
        sin = jnp.asarray(batch.rope_sin, jnp.float32)[:, None, :, None, :]
        real = jnp.asarray(batch.patch_mask, bool)
        if mask_keys:
            # Key 0 always stays: a fully padded item then attends to a finite row instead of to nothing (no NaN,
            # in any kernel); real items always have patch 0.
            keys = real | (jnp.arange(HW) == 0)
            kmask = jnp.broadcast_to(keys[:, None, None, :], (Nv, G, 1, HW)).reshape(Nv * G, 1, HW)
            klen = jnp.broadcast_to(jnp.sum(keys, -1, dtype=jnp.int32)[:, None], (Nv, G)).reshape(-1)
        blocks = {k: getattr(self, k)[...] for k in self._BLOCK_KEYS}

        def block(x, p):
            y = layer_norm(x, p["norm1_scale"], p["norm1_bias"], eps)
            qkv = linear(y, p["qkv_kernel"], p["qkv_bias"]).reshape(Nv, G, HW, 3, heads, hd)
            q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
            # Rotary in fp32 as HF apply_rotary_pos_emb_vision, then back to the compute dtype.
            q = apply_rope(q.astype(jnp.float32), cos, sin).astype(dtype).reshape(Nv * G, HW, heads, hd)
            k = apply_rope(k.astype(jnp.float32), cos, sin).astype(dtype).reshape(Nv * G, HW, heads, hd)
            v = v.reshape(Nv * G, HW, heads, hd)
            # (item, group) pairs act as the batch: attention is block-diagonal over frame groups.
            if attn_impl == "cudnn" and mask_keys:
                o = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=klen, implementation="cudnn")
            else:
                o = attention(q, k, v, kmask if mask_keys else None, impl=attn_impl)
            x = x + linear(o.reshape(Nv, G, HW, heads * hd), p["proj_kernel"], p["proj_bias"])
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
        rows = (jnp.asarray(batch.group_mask, bool)[:, :, None] & real[:, None, ::mu]).reshape(Nv, -1)
        keep = lambda y: jnp.where(rows[..., None], y.reshape(Nv, G * HW // mu, -1), 0).astype(y.dtype)
        mp = {k: getattr(self.merger, k)[...] for k in ("norm_scale", "norm_bias", "fc1_kernel", "fc1_bias",
                                                         "fc2_kernel", "fc2_bias")}
        d = x.shape[-1]
        merged = keep(merger_apply(mp, x.reshape(-1, d), False, self.merger.hidden, eps))
        ds = []
        for j, li in enumerate(taps):
            dp = {k: getattr(self.deepstack, k)[j] for k in mp}
            ds.append(keep(merger_apply(dp, feats[li].reshape(-1, d), True, self.deepstack.hidden, eps)))
        deep = jnp.stack(ds) if ds else jnp.zeros((0,) + merged.shape, merged.dtype)
        return merged, deep

    def _encode_same_grid(self, pixel_rows, grid: Grid, r: int, **kw):
        """r items of one static grid, rows concatenated -> (merged [r*t*h*w/4, out], deepstack [n, r*t*h*w/4, out]).
        The unpadded layout is built host-side from the grid and run through `encode_batch`."""
        cfg = self.cfg
        t, h, w = grid
        n = t * h * w
        if pixel_rows.shape != (r * n, cfg.patch_dim):
            raise ValueError(f"pixel rows {pixel_rows.shape} do not match {r} x grid {grid} "
                             f"(expected {(r * n, cfg.patch_dim)})")
        lay = vision_layout([grid] * r, cfg)
        m, d = self.encode_batch(lay._replace(pixels=pixel_rows.reshape(r, t, h * w, -1)), mask_keys=False, **kw)
        return m.reshape(-1, m.shape[-1]), d.reshape(d.shape[0], -1, d.shape[-1])

    def encode(self, pixel_rows, grid: Grid, *, dtype=jnp.float32, attn_impl: str = "xla",
               remat: bool = False):
        """One image or video. pixel_rows [t*h*w, patch_dim] -> (merged [t*h*w/4, out], deepstack [n, t*h*w/4, out])."""
        return self._encode_same_grid(pixel_rows, tuple(int(v) for v in grid), 1, dtype=dtype, attn_impl=attn_impl,
                                      remat=remat)

    def __call__(self, pixel_rows, grids: Sequence[Grid], **kw):
        """Several items whose rows are concatenated in order: returns concatenated merged and deepstack features.

        Consecutive items with the same grid are encoded together (one unpadded `encode_batch`), so a batch of
        equal-size videos costs one trace, not one per video.
        """
        grids = [tuple(int(v) for v in g) for g in grids]
        total = sum(int(np.prod(g)) for g in grids)
        if total != pixel_rows.shape[0]:
            raise ValueError(f"grids cover {total} pixel rows but {pixel_rows.shape[0]} were given")
        merged, deep, off, i = [], [], 0, 0
        while i < len(grids):
            j = i
            while j < len(grids) and grids[j] == grids[i]:
                j += 1
            g, r, n = grids[i], j - i, int(np.prod(grids[i]))
            m, d = self._encode_same_grid(pixel_rows[off:off + r * n], g, r, **kw)
            merged.append(m)
            deep.append(d)
            off += r * n
            i = j
        return jnp.concatenate(merged, 0), jnp.concatenate(deep, 1)
