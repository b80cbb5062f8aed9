"""Qwen3-VL (vision tower + text decoder + LM head) in Flax NNX: HF `Qwen3VLForConditionalGeneration`.

The forward takes token ids, host-computed M-RoPE positions ([3, B, T], see `rope.get_rope_index`), and either a
padded `vision.VisionBatch` (shapes from buckets: one compilation per bucket) or the images' and videos' patch rows
with their (static) grids; it returns logits, the last decoder layer's output
before the final norm (what the original's `hidden_states[-1]` is, the SQR `<REFINE>` readout) and the final
normed hidden states. How it computes (dtype, attention kernels, remat) is a `run_options.RunOptions`.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.models.qwen3_vl.text import KVCache, TextModel, Visual
from vsr1_jax.models.qwen3_vl.vision import VisionBatch, VisionModel

Grid = tuple[int, int, int]


class Output(NamedTuple):
    logits: jax.Array | None     # [B, T, V] float32 (or [B, V] when only the last position was asked for)
    hidden_pre_norm: jax.Array   # [B, T, D]
    hidden: jax.Array            # [B, T, D] final-normed
    cache: KVCache | None


class Qwen3VL(nnx.Module):
    def __init__(self, cfg: Qwen3VLConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        self.visual = VisionModel(cfg.vision, param_dtype=param_dtype, rngs=rngs)
        self.text = TextModel(cfg.text, tie_word_embeddings=cfg.tie_word_embeddings, param_dtype=param_dtype,
                              rngs=rngs)

    # ---- pieces -------------------------------------------------------------------------------------------------
    def encode_visual(self, pixels, grids: Sequence[Grid], opts: RunOptions):
        """Concatenated patch rows of several items -> (merged [N, D], deepstack [n, N, D])."""
        return self.visual(pixels, grids, dtype=opts.jdtype, attn_impl=opts.vision_attn_impl,
                           remat=opts.remat != "none")

    def encode_vision(self, batch: VisionBatch, opts: RunOptions):
        """A padded `VisionBatch` -> (merged [Nv, G*HW/4, D], deepstack [n, Nv, G*HW/4, D]); see vision.py."""
        return self.visual.encode_batch(batch, dtype=opts.jdtype, attn_impl=opts.vision_attn_impl,
                                        remat=opts.remat != "none")

    def embed(self, input_ids, opts: RunOptions, *, vision: VisionBatch | None = None, image_pixels=None,
              image_grids=(), video_pixels=None, video_grids=()):
        """Token embeddings with visual features at the placeholder positions. Returns (embeds [B, T, D], Visual or
        None).

        vision: a padded `VisionBatch` (`vision.pack_vision`, with its `token_index`): the shapes come from its
        buckets, so batches of different videos share one compilation. Otherwise the static-grid arguments: the
        items of each kind are encoded unpadded (same `encode_batch`) and fill that kind's placeholders in
        row-major order, images and videos separately, exactly like HF's `masked_scatter`.
        """
        cfg = self.cfg
        x = self.text.embed_tokens(input_ids, opts.jdtype)
        if vision is not None:
            if image_pixels is not None or video_pixels is not None or len(image_grids) or len(video_grids):
                raise ValueError("pass either vision= (a VisionBatch) or the static pixels/grids, not both")
            if vision.token_index is None:
                raise ValueError("the VisionBatch has no token_index: build it with pack_vision(..., input_ids=...)")
            if tuple(vision.token_index.shape) != tuple(input_ids.shape):
                raise ValueError(f"token_index {tuple(vision.token_index.shape)} does not match the input ids "
                                 f"{tuple(input_ids.shape)}")
            merged, deep = self.encode_vision(vision, opts)
            return self._fill(x, vision.token_index, merged.reshape(-1, merged.shape[-1]),
                              deep.reshape(deep.shape[0], -1, deep.shape[-1]))
        merged_all, deep_all, offset = [], [], 0
        index = jnp.full(input_ids.shape, -1, jnp.int32)
        for pixels, grids, tok in ((image_pixels, image_grids, cfg.image_token_id),
                                   (video_pixels, video_grids, cfg.video_token_id)):
            if pixels is None or not len(grids):
                continue
            merged, deep = self.encode_visual(pixels, grids, opts)
            m = input_ids == tok
            local = jnp.cumsum(m.reshape(-1)).reshape(m.shape) - 1 + offset
            index = jnp.where(m, local.astype(jnp.int32), index)
            merged_all.append(merged)
            deep_all.append(deep)
            offset += merged.shape[0]
        if not merged_all:
            return x, None
        return self._fill(x, index, jnp.concatenate(merged_all, 0), jnp.concatenate(deep_all, 1))

    @staticmethod
    def _fill(x, token_index, merged, deep):
        """x [B, T, D]; token_index [B, T] rows of merged [N, D] / deep [n, N, D] (-1: keep the token embedding)."""
        mask = token_index >= 0
        idx = jnp.maximum(token_index, 0).astype(jnp.int32)
        x = jnp.where(mask[..., None], jnp.take(merged.astype(x.dtype), idx, axis=0), x)
        return x, Visual(idx, mask, deep.astype(x.dtype))

    def decode(self, x, positions, attention_mask=None, *, opts: RunOptions, cache: KVCache | None = None,
               visual: Visual | None = None, logits: str = "all", kv_extra_slots: int | None = None,
               devices: int | None = None):
        """Decoder + head on input embeddings. logits: "all" | "last" | "none". kv_extra_slots: see TextModel.
        devices: the size of the caller's mesh (None = every device of the process), for the fused decode layer's
        rule (`run_options.decode_layer_path`)."""
        pre, normed, cache = self.text(x, positions, attention_mask, cache=cache, visual=visual,
                                       attn_impl=opts.attn_impl, decode_attn_impl=opts.decode_attn_impl,
                                       decode_layer_impl=opts.decode_layer_impl, devices=devices,
                                       remat=opts.remat, kv_extra_slots=kv_extra_slots,
                                       unroll_decode=opts.unroll_decode, rollout_layers=opts.rollout_layers)
        if logits == "all":
            lg = self.text.logits(normed)
        elif logits == "last":
            lg = self.text.logits(normed[:, -1])
        elif logits == "none":
            lg = None
        else:
            raise ValueError(f"logits={logits!r}: expected 'all', 'last' or 'none'")
        return Output(lg, pre, normed, cache)

    def __call__(self, input_ids, positions, attention_mask=None, *, opts: RunOptions = RunOptions(),
                 vision: VisionBatch | None = None, image_pixels=None, image_grids: Sequence[Grid] = (),
                 video_pixels=None, video_grids: Sequence[Grid] = (), cache: KVCache | None = None,
                 logits: str = "all"):
        """input_ids [B, T]; positions [3, B, T]; attention_mask [B, T]; either a padded `VisionBatch` (vision=) or
        pixels [N, patch_dim] with static grids."""
        x, visual = self.embed(input_ids, opts, vision=vision, image_pixels=image_pixels, image_grids=image_grids,
                               video_pixels=video_pixels, video_grids=video_grids)
        return self.decode(x, positions, attention_mask, opts=opts, cache=cache, visual=visual, logits=logits)


def abstract_model(cfg: Qwen3VLConfig, param_dtype=jnp.float32) -> Qwen3VL:
    """Shapes only (no memory), for restoring checkpoints into."""
    return nnx.eval_shape(lambda: Qwen3VL(cfg, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
