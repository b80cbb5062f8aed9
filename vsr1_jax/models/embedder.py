"""Qwen3-VL-Embedding: the search engine. The same Qwen3-VL model, pooled at the last non-pad token of the final
normed hidden states and L2-normalised (original `qwen3_vl_embedding.py` L290-365; sqr_and_sft.md §4).

Inputs are right-padded batches (text-only or with video), as the original's processor pads on the right.
"""
from __future__ import annotations

import jax.numpy as jnp

from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.run_options import RunOptions


def l2_normalize(x, eps: float = 1e-12):
    """torch.nn.functional.normalize(p=2): x / max(||x||, eps), in float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def last_token_pool(hidden, attention_mask):
    """hidden [B, T, D], attention_mask [B, T] (right padding) -> hidden at the last non-pad token [B, D]."""
    last = jnp.sum(attention_mask.astype(jnp.int32), axis=-1) - 1
    return jnp.take_along_axis(hidden, jnp.maximum(last, 0)[:, None, None], axis=1)[:, 0]


def embed(model: Qwen3VL, input_ids, positions, attention_mask, *, opts: RunOptions = RunOptions(),
          video_pixels=None, video_grids=(), image_pixels=None, image_grids=()):
    """Pooled, L2-normalised embeddings [B, D] (float32) of right-padded inputs."""
    out = model(input_ids, positions, attention_mask, opts=opts, video_pixels=video_pixels, video_grids=video_grids,
                image_pixels=image_pixels, image_grids=image_grids, logits="none")
    return l2_normalize(last_token_pool(out.hidden, attention_mask))


def embed_inputs_embeds(model: Qwen3VL, x, attention_mask, *, opts: RunOptions = RunOptions()):
    """Text-only embedder forward on input embeddings [B, T, D] with default 1-D positions (0..T-1), pooled at the
    last position and L2-normalised: the refined-query path (`embedder.language_model(inputs_embeds=...)`,
    sqr_and_sft.md §2.4). Rows are right-padded; pads get no position and are never attended to."""
    B, T, _ = x.shape
    mask = attention_mask.astype(jnp.int32)
    pos = jnp.clip(jnp.cumsum(mask, -1) - 1, 0) * mask
    positions = jnp.broadcast_to(pos[None], (3, B, T))
    out = model.decode(x, positions, attention_mask, opts=opts, logits="none")
    return l2_normalize(last_token_pool(out.hidden, attention_mask))
