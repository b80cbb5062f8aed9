"""Rotary embeddings of Qwen3-VL: host-side M-RoPE position ids (numpy), and device-side cos/sin tables.

Host side mirrors HF `Qwen3VLModel.get_rope_index` (transformers 5.x): text runs count up on all three axes,
each vision placeholder run gets (t, h, w) offsets from the running position, videos are split into one grid
per temporal patch group (time is carried by textual timestamps), and the rope delta is max position + 1 minus
the number of valid tokens (used to place decode tokens).
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

TEXT, IMAGE, VIDEO = 0, 1, 2


def token_types(input_ids: np.ndarray, image_token_id: int, video_token_id: int) -> np.ndarray:
    """mm_token_type_ids as HF's processor makes them: 0 text, 1 image pad, 2 video pad. [B, T] int32."""
    ids = np.asarray(input_ids)
    return np.where(ids == image_token_id, IMAGE, np.where(ids == video_token_id, VIDEO, TEXT)).astype(np.int32)


def _runs(types: np.ndarray):
    """Contiguous runs of equal type: (type, start, end)."""
    if len(types) == 0:
        return []
    change = np.flatnonzero(np.diff(types)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(types)]])
    return [(int(types[s]), int(s), int(e)) for s, e in zip(starts, ends)]


def get_rope_index(
    input_ids: np.ndarray,
    *,
    image_token_id: int,
    video_token_id: int,
    spatial_merge_size: int = 2,
    image_grid_thw: Sequence[Sequence[int]] | None = None,
    video_grid_thw: Sequence[Sequence[int]] | None = None,
    attention_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """M-RoPE position ids [3, B, T] (int32) and rope deltas [B] (int32).

    Grids are in patches (t, h, w) as the vision tower sees them, listed in the order their placeholders appear
    (row-major over the batch). Padding positions (attention_mask == 0) get position 0, as in HF.
    """
    input_ids = np.asarray(input_ids)
    B, T = input_ids.shape
    mask = np.ones((B, T), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    types = token_types(input_ids, image_token_id, video_token_id)
    images = iter([tuple(int(x) for x in g) for g in (image_grid_thw if image_grid_thw is not None else [])])
    frames = iter([(1, int(h), int(w)) for (t, h, w) in (video_grid_thw if video_grid_thw is not None else [])
                   for _ in range(int(t))])
    grids = {IMAGE: images, VIDEO: frames}
    pos = np.zeros((3, B, T), np.int64)
    deltas = np.zeros((B,), np.int64)
    m = spatial_merge_size
    for b in range(B):
        row_types = types[b][mask[b]]
        pieces = []
        cur = 0
        for kind, s, e in _runs(row_types):
            if kind == TEXT:
                pieces.append(np.broadcast_to(np.arange(e - s) + cur, (3, e - s)))
                cur += e - s
                continue
            try:
                t, h, w = next(grids[kind])
            except StopIteration:
                raise ValueError(f"row {b}: more {'image' if kind == IMAGE else 'video'} placeholder runs than "
                                 "grids given") from None
            gh, gw = h // m, w // m
            n = t * gh * gw
            if n != e - s:
                raise ValueError(f"row {b}: a placeholder run of {e - s} tokens does not match grid {(t, h, w)} "
                                 f"({n} tokens after {m}x{m} merging)")
            tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
            pieces.append(np.stack([tt.ravel() + cur, hh.ravel() + cur, ww.ravel() + cur]))
            cur += max(gh, gw)
        row = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.int64)
        pos[:, b, mask[b]] = row
        deltas[b] = (row.max() + 1 - row.shape[1]) if row.shape[1] else 0
    for kind, it in grids.items():
        if next(it, None) is not None:
            raise ValueError(f"more {'image' if kind == IMAGE else 'video'} grids given than placeholder runs")
    return pos.astype(np.int32), deltas.astype(np.int32)


def text_positions(attention_mask: np.ndarray) -> np.ndarray:
    """[3, B, T] positions for text-only rows: cumulative count of valid tokens (pads at 0)."""
    mask = np.asarray(attention_mask).astype(np.int64)
    p = np.clip(np.cumsum(mask, -1) - 1, 0, None) * mask
    return np.broadcast_to(p, (3,) + p.shape).astype(np.int32).copy()


# ---- device side ------------------------------------------------------------------------------------------------
def mrope_cos_sin(positions: jnp.ndarray, head_dim: int, theta: float, mrope_section: Sequence[int]):
    """Interleaved M-RoPE tables. positions [3, B, T] -> cos, sin [B, T, head_dim] in float32.

    Slot j of the head_dim/2 frequencies takes the H axis when j % 3 == 1 and j < 3 * section[1], the W axis when
    j % 3 == 2 and j < 3 * section[2], otherwise T (HF `Qwen3VLTextRotaryEmbedding.recomposition_frequencies`).
    """
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    axis = np.zeros(half, np.int32)
    j = np.arange(half)
    axis[(j % 3 == 1) & (j < 3 * mrope_section[1])] = 1
    axis[(j % 3 == 2) & (j < 3 * mrope_section[2])] = 2
    pos = positions.astype(jnp.float32)                      # [3, B, T]
    sel = jnp.take(pos, jnp.asarray(axis), axis=0)           # [half, B, T]
    freqs = jnp.moveaxis(sel, 0, -1) * jnp.asarray(inv_freq)  # [B, T, half]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x):
    h = x.shape[-1] // 2
    return jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def apply_rope(x, cos, sin):
    """x [..., T, H, D] with cos/sin broadcastable as [..., T, 1, D]."""
    return x * cos + rotate_half(x) * sin


def vision_rope_cos_sin(h: int, w: int, merge: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Axial 2-D RoPE of one frame in merge-block order: cos, sin [h*w, head_dim] (float32, host constants)."""
    spatial = head_dim // 2
    inv_freq = 1.0 / (theta ** (np.arange(0, spatial, 2, dtype=np.float32) / spatial))
    hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    hpos = hh.reshape(shape).transpose(0, 2, 1, 3).ravel()
    wpos = ww.reshape(shape).transpose(0, 2, 1, 3).ravel()
    fh = hpos[:, None].astype(np.float32) * inv_freq
    fw = wpos[:, None].astype(np.float32) * inv_freq
    f = np.concatenate([fh, fw], -1)
    emb = np.concatenate([f, f], -1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)
