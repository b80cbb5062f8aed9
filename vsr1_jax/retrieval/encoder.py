"""The search engine as a batch embedder: texts and videos -> L2-normalised vectors through Qwen3-VL-Embedding's input
format, on our Qwen3-VL port (original `preprocess/extract_embed/vendor/qwen3_vl_embedding.py`, sqr_and_sft.md §4)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
from flax import nnx

from vsr1_jax import sharding
from vsr1_jax.buckets import round_up
from vsr1_jax.models import embedder as E
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.models.qwen3_vl.rope import get_rope_index, text_positions
from vsr1_jax.processing import prompts as P
from vsr1_jax.processing import video as V
from vsr1_jax.processing.chat import embedder_query_ids, encode_prompt
from vsr1_jax.processing.special_tokens import special_ids

# Input format (EMB L217-285): chat `[system: instruction (a "." appended unless it ends in punctuation), user:
# content]` with the generation prompt; a video item comes before any text, and "NULL" replaces the content only when
# there is none at all (so a video alone has no text item). Batches are right-padded and pooled at the last non-pad
# token of the final-normed hidden states (EMB L290-365, `models.embedder.embed`). Text lengths are bucketed to
# multiples of `length_bucket` and batch rows to powers of two (padding rows repeat a real row, so they stay finite),
# and videos are batched by patch grid: each padded shape compiles once.

# Video preprocessing of the search engine (EMB constants; processing.video.preprocess_frames_for_embedder).
# min_pixels None = qwen-vl-utils' video minimum (128 tokens of 32x32 px per frame).
DEFAULT_VIDEO_CFG: Mapping[str, Any] = {"total_pixels": V.EMBEDDER_TOTAL_PIXELS, "min_pixels": None,
                                        "max_frames": V.EMBEDDER_MAX_FRAMES}


def _pow2_at_most(n: int, cap: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return min(p, cap)


class TextVideoEmbedder:
    """Embeds texts and videos with a Qwen3-VL(-Embedding) model in the search engine's input format (notes above).

    Args:
      model: a `Qwen3VL` (its final-normed hidden states are pooled; the LM head is not used).
      tokenizer: the model's fast tokenizer (`load_tokenizer(path)[0]` or `build_tiny_tokenizer()`).
      instruction: the system text (QUERY_EMBEDDER_INPUT_PREFIX, _dataset_defaults.bash L77-79).
      max_length: text prompts are cut to this many tokens (query_embedder_max_length = 128).
      video_cfg: mapping/ConfigDict with `total_pixels`, `min_pixels`, `max_frames` (DEFAULT_VIDEO_CFG).
      opts: dtype / attention implementation of the forward.
      length_bucket: text prompts are padded to a multiple of this.
      mesh: a device mesh (`sharding.mesh_for`): the parameters are placed by the sharding rules and every batch
        is split over the mesh's data-parallel axes (batches are padded to a multiple of their size). Default: where
        the model's weights live (`sharding.mesh_of`: one device for an unplaced model).
      prep_workers: threads that resize and patchify the videos of a batch on the host (numpy, which releases the
        GIL in its large array operations); 1 = in the calling thread.
    """

    def __init__(self, model: Qwen3VL, tokenizer, *, instruction: str = P.EMBEDDER_INSTRUCTION,
                 max_length: int = P.EMBEDDER_MAX_LENGTH, video_cfg: Any = None, opts: RunOptions = RunOptions(),
                 length_bucket: int = 32, mesh=None, prep_workers: int = 1):
        self.cfg = model.cfg
        self.prep_workers = max(1, int(prep_workers))
        self.tokenizer = tokenizer
        self.ids = special_ids(tokenizer)
        self.instruction = instruction
        self.max_length = int(max_length)
        self.video_cfg = DEFAULT_VIDEO_CFG if video_cfg is None else video_cfg
        self.opts = opts
        self.length_bucket = int(length_bucket)
        self.mesh = sharding.resolve_mesh(mesh, nnx.state(model))
        self._rows_multiple = sharding.batch_divisor(self.mesh)
        sharding.shard_module(model, self.mesh)
        self.graphdef, self.state = nnx.split(model)
        self._forward = jax.jit(self._forward_impl, static_argnames=("video_grids",))

    @property
    def dim(self) -> int:
        return int(self.cfg.text.hidden_size)

    def _forward_impl(self, state, ids, positions, mask, pixels, *, video_grids):
        model = nnx.merge(self.graphdef, state)
        return E.embed(model, ids, positions, mask, opts=self.opts, video_pixels=pixels, video_grids=video_grids)

    # ---- inputs ------------------------------------------------------------------------------------------------
    def text_ids(self, text: str) -> np.ndarray:
        """int32 prompt ids of one text (empty -> "NULL"), cut to max_length."""
        return embedder_query_ids(self.tokenizer, text, self.instruction, self.max_length)

    def video_inputs(self, frames: np.ndarray) -> tuple[np.ndarray, V.VideoInputs]:
        """(prompt ids with the expanded video placeholder, the video's patch rows/grid) of one video."""
        return self._video_prompt(self._video_pixels(frames))

    def _video_pixels(self, frames: np.ndarray) -> V.VideoInputs:
        """The video's patch rows/grid (host numpy only: safe to run in threads)."""
        frames = np.asarray(frames)
        max_frames = int(V.cfg_get(self.video_cfg, "max_frames", DEFAULT_VIDEO_CFG["max_frames"]))
        if frames.ndim == 4 and frames.shape[0] > max_frames:
            # the original samples at most 64 frames by linspace over the video (video_io.py L46-78)
            frames = frames[np.linspace(0, frames.shape[0] - 1, max_frames).astype(int)]
        return V.preprocess_frames_for_embedder(
            frames, total_pixels=V.cfg_get(self.video_cfg, "total_pixels", DEFAULT_VIDEO_CFG["total_pixels"]),
            min_pixels=V.cfg_get(self.video_cfg, "min_pixels", DEFAULT_VIDEO_CFG["min_pixels"]))

    def _video_prompt(self, vi: V.VideoInputs) -> tuple[np.ndarray, V.VideoInputs]:
        """The prompt ids of a prepared video (the tokenizer: calling thread only)."""
        messages = [{"role": "system",
                     "content": [{"type": "text", "text": P.normalize_instruction(self.instruction)}]},
                    {"role": "user", "content": [P.video_item()]}]
        ids = encode_prompt(self.tokenizer, messages, video_grid_thw=[vi.grid_thw], timestamps=[vi.timestamps],
                            ids=self.ids)
        return ids, vi

    def _rows(self, n: int, batch_size: int) -> int:
        """Padded rows of a batch of n: a power of two up to batch_size, a multiple of the data-parallel size."""
        return round_up(_pow2_at_most(n, batch_size), self._rows_multiple)

    def _put(self, x, ndim: int, batch_axis: int = 0):
        """Host array -> device array, split over the mesh along `batch_axis` (the rows of a batch)."""
        return jax.device_put(x, sharding.batch_sharding(self.mesh, ndim, batch_axis))

    def _pad(self, seqs: list[np.ndarray], rows: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((rows, length), self.ids.pad, np.int32)
        mask = np.zeros((rows, length), np.int32)
        for i in range(rows):
            s = seqs[min(i, len(seqs) - 1)]  # padding rows repeat the last real row (finite, then dropped)
            ids[i, :len(s)] = s
            mask[i, :len(s)] = 1
        return ids, mask

    # ---- public API --------------------------------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """float32 [N, D] unit rows, in input order."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        seqs = [self.text_ids(t) for t in texts]
        # group by padded length so short texts are not padded to the longest one of the whole call
        by_len: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            by_len.setdefault(round_up(len(s), self.length_bucket), []).append(i)
        for length, idx in sorted(by_len.items()):
            for b in range(0, len(idx), batch_size):
                chunk = idx[b:b + batch_size]
                rows = self._rows(len(chunk), batch_size)
                ids, mask = self._pad([seqs[i] for i in chunk], rows, length)
                emb = self._forward(self.state, self._put(ids, 2), self._put(text_positions(mask), 3, 1),
                                    self._put(mask, 2), None, video_grids=())
                out[chunk] = np.asarray(emb, np.float32)[:len(chunk)]
        return out

    def prepare_videos(self, videos: Sequence[np.ndarray]) -> list[tuple[np.ndarray, V.VideoInputs]]:
        """`video_inputs` of each video: the pixels in `prep_workers` threads, the prompts on the calling thread."""
        if self.prep_workers > 1 and len(videos) > 1:
            with ThreadPoolExecutor(max_workers=min(self.prep_workers, len(videos))) as pool:
                pixels = list(pool.map(self._video_pixels, videos))
        else:
            pixels = [self._video_pixels(v) for v in videos]
        return [self._video_prompt(vi) for vi in pixels]

    def embed_videos(self, videos: Sequence[np.ndarray], batch_size: int = 8) -> np.ndarray:
        """float32 [N, D] unit rows for uint8 [T, H, W, 3] videos, in input order. Videos are batched with others of
        the same patch grid (same frame count and size), so each grid compiles once."""
        videos = list(videos)
        out = np.zeros((len(videos), self.dim), np.float32)
        prepared = self.prepare_videos(videos)
        by_grid: dict[tuple[int, int, int], list[int]] = {}
        for i, (_, vi) in enumerate(prepared):
            by_grid.setdefault(vi.grid_thw, []).append(i)
        merge = self.cfg.vision.spatial_merge_size
        for grid, idx in sorted(by_grid.items()):
            for b in range(0, len(idx), batch_size):
                chunk = idx[b:b + batch_size]
                rows = self._rows(len(chunk), batch_size)
                members = [chunk[min(i, len(chunk) - 1)] for i in range(rows)]
                seqs = [prepared[i][0] for i in members]
                length = max(len(s) for s in seqs)  # same grid + same text -> same length
                ids, mask = self._pad(seqs, rows, length)
                grids = (grid,) * rows
                positions, _ = get_rope_index(ids, image_token_id=self.cfg.image_token_id,
                                              video_token_id=self.cfg.video_token_id, spatial_merge_size=merge,
                                              video_grid_thw=grids, attention_mask=mask)
                pixels = np.concatenate([prepared[i][1].pixel_rows for i in members], axis=0)
                # pixel rows are item after item, so splitting them evenly gives each device its rows' videos
                emb = self._forward(self.state, self._put(ids, 2), self._put(positions, 3, 1), self._put(mask, 2),
                                    self._put(pixels.astype(self.opts.jdtype), 2), video_grids=grids)
                out[chunk] = np.asarray(emb, np.float32)[:len(chunk)]
        return out


__all__ = ["DEFAULT_VIDEO_CFG", "TextVideoEmbedder"]
