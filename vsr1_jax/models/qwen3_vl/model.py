"""Qwen3-VL (vision tower + text decoder + LM head) in Flax NNX: HF `Qwen3VLForConditionalGeneration`.

The forward takes token ids, host-computed M-RoPE positions ([3, B, T], see `rope.get_rope_index`), and the
images' and videos' patch rows with their (static) grids; it returns logits, the last decoder layer's output
before the final norm (what the original's `hidden_states[-1]` is, the SQR `<REFINE>` readout) and the final
normed hidden states.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig
from vsr1_jax.models.qwen3_vl.text import KVCache, TextModel, Visual
from vsr1_jax.models.qwen3_vl.vision import VisionModel

Grid = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How to compute (not what): dtypes, attention kernel, rematerialisation."""
    dtype: str = "float32"          # activation / compute dtype ("bfloat16" on accelerators)
    # "xla" (einsum, any backend, any padding) or "cudnn" (fused causal flash kernel, GPU bf16/fp16): with "cudnn",
    # multi-token calls must have right-padded (or unpadded) rows starting at cache slot 0; decode steps use XLA.
    attn_impl: str = "xla"
    vision_attn_impl: str = "xla"
    # single-position steps with a cache: "xla" (`text.cached_attention`) or "pallas" (GPU flash-decoding kernel,
    # vsr1_jax.kernels.decode_attention: reads the stacked cache in place). "pallas" is for unsharded models: under
    # a mesh, XLA cannot split the kernel and would gather the whole cache onto each device. Off GPUs it runs
    # through the Pallas interpreter (correct, slow: for tests).
    decode_attn_impl: str = "xla"
    remat: str = "none"             # "none" | "full" | "dots" (decoder layers)

    @property
    def jdtype(self):
        return jnp.dtype(self.dtype)

    @classmethod
    def from_config(cls, model_cfg, **overrides) -> "RunOptions":
        """From a config's `model` section (configs/base.py). decode_attn_impl "auto" = the Pallas kernel on NVIDIA
        GPUs, XLA elsewhere."""
        decode = model_cfg.decode_attn_impl
        if decode == "auto":
            dev = jax.devices()[0]
            decode = "pallas" if dev.platform == "gpu" and "NVIDIA" in dev.device_kind else "xla"
        kw = dict(dtype=model_cfg.dtype, attn_impl=model_cfg.attn_impl, vision_attn_impl=model_cfg.vision_attn_impl,
                  decode_attn_impl=decode, remat=model_cfg.get("remat", "none"))
        kw.update(overrides)
        return cls(**kw)


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

    def embed(self, input_ids, opts: RunOptions, *, image_pixels=None, image_grids=(), video_pixels=None,
              video_grids=()):
        """Token embeddings with visual features scattered into placeholder positions.

        Returns (embeds [B, T, D], Visual or None). Features fill the placeholders in row-major order, images
        and videos separately, exactly like HF's `masked_scatter`.
        """
        cfg = self.cfg
        x = self.text.embed_tokens(input_ids, opts.jdtype)
        parts, masks = [], []
        for pixels, grids, tok in ((image_pixels, image_grids, cfg.image_token_id),
                                   (video_pixels, video_grids, cfg.video_token_id)):
            if pixels is None or not len(grids):
                continue
            merged, deep = self.encode_visual(pixels, grids, opts)
            parts.append((merged, deep))
            masks.append(input_ids == tok)
        if not parts:
            return x, None
        offset = 0
        idx = jnp.zeros(input_ids.shape, jnp.int32)
        any_mask = jnp.zeros(input_ids.shape, bool)
        for (merged, _), m in zip(parts, masks):
            local = jnp.cumsum(m.reshape(-1)).reshape(m.shape) - 1 + offset
            idx = jnp.where(m, local, idx)
            any_mask = any_mask | m
            offset += merged.shape[0]
        merged_all = jnp.concatenate([p[0] for p in parts], 0).astype(x.dtype)
        deep_all = jnp.concatenate([p[1] for p in parts], 1).astype(x.dtype)
        x = jnp.where(any_mask[..., None], jnp.take(merged_all, idx, axis=0), x)
        return x, Visual(idx, any_mask, deep_all)

    def decode(self, x, positions, attention_mask=None, *, opts: RunOptions, cache: KVCache | None = None,
               visual: Visual | None = None, logits: str = "all", kv_extra_slots: int | None = None):
        """Decoder + head on input embeddings. logits: "all" | "last" | "none". kv_extra_slots: see TextModel."""
        pre, normed, cache = self.text(x, positions, attention_mask, cache=cache, visual=visual,
                                       attn_impl=opts.attn_impl, decode_attn_impl=opts.decode_attn_impl,
                                       remat=opts.remat, kv_extra_slots=kv_extra_slots)
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
                 image_pixels=None, image_grids: Sequence[Grid] = (), video_pixels=None,
                 video_grids: Sequence[Grid] = (), cache: KVCache | None = None, logits: str = "all"):
        """input_ids [B, T]; positions [3, B, T]; attention_mask [B, T]; pixels [N, patch_dim] with static grids."""
        x, visual = self.embed(input_ids, opts, image_pixels=image_pixels, image_grids=image_grids,
                               video_pixels=video_pixels, video_grids=video_grids)
        return self.decode(x, positions, attention_mask, opts=opts, cache=cache, visual=visual, logits=logits)


def abstract_model(cfg: Qwen3VLConfig, param_dtype=jnp.float32) -> Qwen3VL:
    """Shapes only (no memory), for restoring checkpoints into."""
    return nnx.eval_shape(lambda: Qwen3VL(cfg, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
