"""Video inputs of the VideoSearch-R1 policy and search engine, host side, numpy only: npy frames -> the original's
resize (resize.py) -> Qwen3-VL `pixel_values_videos` rows, `video_grid_thw` and the per-group prompt timestamps.

References (spec pages in shared/spec/: S = sqr_and_sft.md, E = eval_and_data.md, G = grpo.md, Q = qwen3_vl.md):
  VP  = videosearch_r1/model/qwen_vl_utils/vision_process.py, the original's copy of qwen-vl-utils 0.0.14 with an
        npy reader added.
  HFV = transformers/models/qwen3_vl/video_processing_qwen3_vl.py (5.24), HFP = processing_qwen3_vl.py,
  HFB = transformers/image_processing_backends.py (TorchvisionBackend).
  EMB = preprocess/extract_embed/vendor/qwen3_vl_embedding.py (search-engine embedder; stock qwen-vl-utils inside).

The policy's pipeline (S §6.2, E §2.1): npy uint8 [T, H, W, 3] -> repeat the last frame to an even T (VP L492-496)
-> `smart_resize` to multiples of 32 under the phase's pixel limits (VP L58-95, fetch_video L638-672) -> antialiased
bicubic resize of the uint8 tensor with torchvision's v1 `transforms.functional.resize` (VP L667-672), which casts to
float32, interpolates, clamps to [0, 255] and rounds back to uint8, then `.float()` -> the HF processor with
`do_resize=False`: (x - 127.5) / 127.5 (HFB rescale_and_normalize, fused) -> patchify (HFV patchify).
Reading the npy files and meta.jsonl is data/files.py's job (`load_npy_video`, `read_video_meta`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vsr1_jax.processing.resize import (
    _F32,
    FACTOR,
    FRAME_FACTOR,
    IMAGE_MAX_TOKEN_NUM,
    IMAGE_MIN_TOKEN_NUM,
    MERGE_SIZE,
    PATCH_SIZE,
    TEMPORAL_PATCH_SIZE,
    VIDEO_MIN_TOKEN_NUM,
    resize_bicubic_uint8,
    resize_like_qwen_vl_utils,
    resized_video_size,
    smart_resize,
)

# --------------------------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------------------------

PATCH_DIM = 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE  # 1536 values per pixel row
IMAGE_MEAN = (0.5, 0.5, 0.5)  # IMAGENET_STANDARD_MEAN (HFV L115)
IMAGE_STD = (0.5, 0.5, 0.5)  # IMAGENET_STANDARD_STD (HFV L116)
RESCALE_FACTOR = 1 / 255  # VideoProcessorMixin.rescale_factor

# Qwen3-VL-Embedding video input (EMB L22-30; S §4 "Videos"; E §3.5)
EMBEDDER_TOTAL_PIXELS = 10 * 768 * 32 * 32  # MAX_TOTAL_PIXELS = 7,864,320
EMBEDDER_SAMPLE_FPS = 1.0  # SAMPLE_FPS=1.0 (02_embed_segments.bash L44-60)
EMBEDDER_MAX_FRAMES = 64  # SAMPLE_MAX_FRAMES=64
# fetch_video's list-of-frames branch tags the frames with sample_fps 2.0 when none is given (qwen_vl_utils 0.0.14
# vision_process.py L434-446; VP has the same branch), so the embedder's timestamps are index / 2.
EMBEDDER_TIMESTAMP_FPS = 2.0


# --------------------------------------------------------------------------------------------------------------
# Frame count
# --------------------------------------------------------------------------------------------------------------

def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """[T, ...] -> [T + T % 2, ...]: repeat the last frame when T is odd (VP `_read_video_npy` L492-496)."""
    frames = np.asarray(frames)
    if frames.shape[0] == 0:
        raise ValueError("pad_to_even: no frames")
    if frames.shape[0] % FRAME_FACTOR:
        frames = np.concatenate([frames, frames[-1:]], axis=0)
    return frames


# --------------------------------------------------------------------------------------------------------------
# Normalisation and patchification
# --------------------------------------------------------------------------------------------------------------

def rescale_normalize(frames: np.ndarray, mean: float | Sequence[float] = IMAGE_MEAN,
                      std: float | Sequence[float] = IMAGE_STD, rescale_factor: float = RESCALE_FACTOR) -> np.ndarray:
    """[..., C] values in [0, 255] -> float32 ((x * rescale_factor) - mean) / std.

    Computed as HF's fused form (HFB `_fuse_mean_std_and_rescale_factor` + tvF.normalize): mean and std are
    scaled by 1/rescale_factor in float32 (0.5 -> 127.5) and x is normalised as (x - 127.5) / 127.5 in float32, so
    the result is bit-identical to HF's `pixel_values_videos`.
    """
    x = np.asarray(frames)
    c = x.shape[-1]
    inv = _F32(1.0 / rescale_factor)
    m = (np.broadcast_to(np.asarray(mean, _F32), (c,)) * inv).astype(_F32)
    s = (np.broadcast_to(np.asarray(std, _F32), (c,)) * inv).astype(_F32)
    y = np.subtract(x, m, dtype=_F32)   # float32 arithmetic throughout, one new array
    return np.divide(y, s, out=y)


def patchify(frames: np.ndarray, patch_size: int = PATCH_SIZE, temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
             merge_size: int = MERGE_SIZE) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Frames [T, H, W, C] -> (rows float32 [t*h*w, C*tps*p*p], grid_thw (t, h, w) in patches), HF's exact order.

    HFV patchify L225-263: pad T to a multiple of `temporal_patch_size` by repeating the last frame, view the
    channel-first video as (t, tps, C, h/m, m, p, w/m, m, p), permute to (t, h/m, w/m, m, m, C, tps, p, p) and
    flatten. Each run of m*m = 4 consecutive rows is one merge window, i.e. one LLM token.
    """
    x = np.asarray(frames)
    if x.ndim != 4:
        raise ValueError(f"patchify needs frames [T, H, W, C], got shape {x.shape}")
    t, h, w, c = x.shape
    unit = patch_size * merge_size
    if h % unit or w % unit:
        raise ValueError(f"frame size {h}x{w} is not a multiple of patch_size*merge_size={unit}")
    if t % temporal_patch_size:
        x = np.concatenate([x, np.repeat(x[-1:], temporal_patch_size - t % temporal_patch_size, axis=0)], axis=0)
        t = x.shape[0]
    gt, gh, gw = t // temporal_patch_size, h // patch_size, w // patch_size
    x = x.transpose(0, 3, 1, 2).reshape(gt, temporal_patch_size, c, gh // merge_size, merge_size, patch_size,
                                        gw // merge_size, merge_size, patch_size)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    rows = x.reshape(gt * gh * gw, c * temporal_patch_size * patch_size * patch_size).astype(_F32)
    return rows, (gt, gh, gw)


# --------------------------------------------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------------------------------------------

def group_timestamps(num_frames: int, fps: float = 1.0, frame_indices: Sequence[float] | None = None,
                     temporal_patch_size: int = TEMPORAL_PATCH_SIZE) -> list[float]:
    """Seconds shown for each temporal group, as HF `Qwen3VLProcessor._calculate_timestamps` (HFP L173-184).

    `frame_indices` (default 0..num_frames-1) are padded to a multiple of `temporal_patch_size` by repeating the
    last one; each is divided by `fps`; each group shows the mean of its first and last time.
    Default = the original's npy convention (VP L497-523; S §6.2): fps 1 and indices 0..T-1, so 0.5, 2.5, 4.5, ...
    whatever the real frame spacing. Pass the source indices and fps for real seconds.
    """
    indices = list(range(num_frames)) if frame_indices is None else [float(i) for i in frame_indices]
    if not indices:
        raise ValueError("group_timestamps: no frames")
    if frame_indices is not None and len(indices) != num_frames:
        raise ValueError(f"{len(indices)} frame indices for {num_frames} frames")
    if len(indices) % temporal_patch_size:
        indices.extend([indices[-1]] * (temporal_patch_size - len(indices) % temporal_patch_size))
    times = [i / fps for i in indices]
    return [(times[i] + times[i + temporal_patch_size - 1]) / 2 for i in range(0, len(times), temporal_patch_size)]


def meta_timestamps(meta_row: Mapping[str, Any], num_frames: int,
                    temporal_patch_size: int = TEMPORAL_PATCH_SIZE) -> list[float]:
    """Real-seconds option (README decision 4): group timestamps from a meta.jsonl row.

    Uses `sampled_indices_src` / `raw_fps` (source frame numbers, rounded to int as VP L502-523 parses them), the
    input VP's npy reader turns into metadata when it is given them; falls back to `sampled_timestamps_sec` (=
    index / raw_fps, extract_npy.py L201-218). The list is cut or extended with its last entry to `num_frames`
    (the even-padded count), as VP does.
    """
    raw_fps = meta_row.get("raw_fps")
    indices = meta_row.get("sampled_indices_src")
    if indices is not None and raw_fps:
        values = [float(max(0, int(round(float(i))))) for i in indices]
        fps = float(raw_fps)
    elif meta_row.get("sampled_timestamps_sec") is not None:
        values = [float(s) for s in meta_row["sampled_timestamps_sec"]]
        fps = 1.0
    else:
        raise ValueError("meta row has neither sampled_indices_src + raw_fps nor sampled_timestamps_sec "
                         f"(keys: {sorted(meta_row)})")
    if not values:
        raise ValueError("meta row lists no sampled frames")
    values = (values + [values[-1]] * num_frames)[:num_frames]
    return group_timestamps(num_frames, fps=fps, frame_indices=values, temporal_patch_size=temporal_patch_size)


# --------------------------------------------------------------------------------------------------------------
# Whole pipelines
# --------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class VideoInputs:
    """One video, ready for the model: `pixel_values_videos` rows and `video_grid_thw`, plus prompt timestamps."""
    pixel_rows: np.ndarray  # float32 [t*h*w, 1536]
    grid_thw: tuple[int, int, int]  # (t, h, w) in patches; t = temporal groups of 2 frames
    timestamps: list[float]  # seconds per temporal group (len t), formatted `<{x:.1f} seconds>` by the prompt
    num_frames: int  # frames after even padding (= 2 t)
    resized_hw: tuple[int, int]  # frame size fed to the patchifier, pixels

    @property
    def num_tokens(self) -> int:
        """LLM tokens of the video: t*h*w / merge_size**2."""
        t, h, w = self.grid_thw
        return t * h * w // (MERGE_SIZE * MERGE_SIZE)


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """`cfg[key]` of a mapping or `cfg.key` of an object (an ml_collections ConfigDict), `default` when absent."""
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _as_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be a non-empty [T, H, W, 3] array, got shape {frames.shape}")
    if frames.dtype == np.float64:  # as VP `_read_video_npy` does
        frames = frames.astype(_F32)
    if frames.dtype not in (np.uint8, _F32):
        raise ValueError(f"frames must be uint8 (or float32 0-255), got {frames.dtype}")
    return frames


def preprocess_video(frames: np.ndarray, phase_cfg: Any, timestamps_mode: str = "index",
                     meta_row: Mapping[str, Any] | None = None) -> VideoInputs:
    """The policy's video input from npy frames [T, H, W, 3] (S §6.2, E §2.1, G §1.1 step 3).

    phase_cfg: `get_video_config().sft | .grpo | .eval` (or any mapping) with `min_pixels`, `max_pixels` (the
      item's per-frame cap), `total_pixels` and optionally `fps` (timestamps, default 1.0). The patch sizes are the
      Qwen3-VL processor's constants (PATCH_SIZE, TEMPORAL_PATCH_SIZE, MERGE_SIZE), not phase settings.
    timestamps_mode: "index" (default; the original: fps 1, indices 0..T-1 -> 0.5, 2.5, ...) or "meta" (real
      seconds from `meta_row`, see `meta_timestamps`).
    Steps: pad to even T -> `resized_video_size` -> `resize_like_qwen_vl_utils` -> `rescale_normalize` -> `patchify`.
    """
    frames = _as_frames(frames)
    patch, tps, merge = PATCH_SIZE, TEMPORAL_PATCH_SIZE, MERGE_SIZE
    t0 = frames.shape[0]
    frames = pad_to_even(frames)
    h, w = resized_video_size(frames.shape[0], frames.shape[1], frames.shape[2],
                              min_pixels=cfg_get(phase_cfg, "min_pixels"),
                              max_pixels=cfg_get(phase_cfg, "max_pixels"),
                              total_pixels=cfg_get(phase_cfg, "total_pixels"), factor=patch * merge)
    pixels = rescale_normalize(resize_like_qwen_vl_utils(frames, h, w))
    rows, grid = patchify(pixels, patch, tps, merge)
    if timestamps_mode == "index":
        # VP: frames_indices = 0..T0-1 extended with the last index to the padded count, fps = meta fps = 1.0
        indices = list(range(t0)) + [t0 - 1] * (frames.shape[0] - t0)
        timestamps = group_timestamps(frames.shape[0], float(cfg_get(phase_cfg, "fps", 1.0)), indices, tps)
    elif timestamps_mode == "meta":
        if meta_row is None:
            raise ValueError("timestamps_mode='meta' needs the video's meta.jsonl row (meta_row=...)")
        timestamps = meta_timestamps(meta_row, frames.shape[0], tps)
    else:
        raise ValueError(f"timestamps_mode must be 'index' or 'meta', got {timestamps_mode!r}")
    return VideoInputs(rows, grid, timestamps, int(frames.shape[0]), (h, w))


def embedder_frame_indices(total_frames: int, video_fps: float, *, start: float = 0.0, end: float | None = None,
                           duration: float | None = None, sample_fps: float = EMBEDDER_SAMPLE_FPS,
                           max_frames: int = EMBEDDER_MAX_FRAMES, budget_adjust: bool = True) -> np.ndarray:
    """Source frame indices the search engine embeds for a video (S §4 "Videos", E §3.5): 1 fps, at most 64.

    budget_adjust: embed_segments.py's `--auto_sample_by_token_budget` step (L338-365; E §3.5; on by default; with
    16384 - 512 tokens and frame size 0 the frame budget is min(64, 129) = 64): if
    floor(seconds * fps) + 1 > max_frames, fps becomes (max_frames - 1) / seconds, where seconds = end - start, or
    `duration` when no end is given (`_segment_seconds`). Then video_io.py `_build_indices` (L46-78): times
    arange(start, end + 1e-6, 1/fps) -> round(t * video_fps) clipped to the video and de-duplicated ->
    linspace(first, last, max_frames) truncated to int if still more than max_frames. `end` None = up to the last
    frame.
    """
    if total_frames <= 0:
        raise ValueError("video has zero frames")
    video_fps = float(video_fps) if video_fps and video_fps > 0 else 30.0  # video_io falls back to 30 fps
    start = max(0.0, float(start or 0.0))
    has_end = end is not None and end > 0 and end > start
    end_sec = max(start, float(end)) if has_end else (total_frames - 1) / max(video_fps, 1e-6)
    if end_sec <= start:
        end_sec = start + 1.0 / max(video_fps, 1e-6)
    if budget_adjust and sample_fps > 0:
        if has_end:
            seconds = max(float(end) - start, 1e-3)
        else:
            seconds = max(float(duration) if duration is not None else end_sec - start, 1e-3)
        if int(np.floor(seconds * sample_fps)) + 1 > max_frames:
            sample_fps = max((float(max_frames) - 1.0) / max(seconds, 1e-6), 1e-3)
    ts = np.arange(start, end_sec + 1e-6, 1.0 / float(sample_fps), dtype=np.float64)
    if ts.size == 0:
        ts = np.array([start])
    idxs = np.unique(np.clip(np.round(ts * video_fps).astype(int), 0, total_frames - 1))
    if max_frames and idxs.size > max_frames:
        idxs = np.linspace(int(idxs[0]), int(idxs[-1]), int(max_frames), dtype=int)
    return idxs


def preprocess_frames_for_embedder(frames: np.ndarray, *, total_pixels: float = EMBEDDER_TOTAL_PIXELS,
                                   min_pixels: float | None = None, factor: int = FACTOR) -> VideoInputs:
    """The search engine's video input (Qwen3-VL-Embedding, EMB L238-245 + stock qwen-vl-utils fetch_video), from
    already sampled frames [T, H, W, 3] uint8 (T <= 64, see `embedder_frame_indices`; original resolution).

    The frames go in as a PIL list, so each first passes `fetch_image`, which qwen-vl-utils calls with
    image_patch_size = 32 (so a 64 px grid, image limits 4..16384 tokens) and PIL bicubic; then the even padding and
    the video-level `smart_resize` (factor 32, min 128*32**2, cap min(768*32**2, total_pixels/T*2)) with
    torchvision's resize, as for the policy. Timestamps: fps 2.0 over indices 0..T-1 of the padded list
    (fetch_video's fake metadata for frame lists, qwen_vl_utils 0.0.14 vision_process.py L434-446).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise ValueError(f"embedder frames must be non-empty uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    image_factor = 2 * factor  # fetch_image(ele, image_factor): patch_factor = image_patch_size * 2
    ih, iw = smart_resize(frames.shape[1], frames.shape[2], factor=image_factor,
                          min_pixels=IMAGE_MIN_TOKEN_NUM * image_factor ** 2,
                          max_pixels=IMAGE_MAX_TOKEN_NUM * image_factor ** 2)
    if (ih, iw) != frames.shape[1:3]:
        frames = resize_bicubic_uint8(frames, ih, iw, kernel="pil")
    frames = pad_to_even(frames)
    min_pixels = VIDEO_MIN_TOKEN_NUM * factor * factor if min_pixels is None else min_pixels
    h, w = resized_video_size(frames.shape[0], ih, iw, min_pixels=min_pixels, max_pixels=None,
                              total_pixels=total_pixels, factor=factor)
    pixels = rescale_normalize(resize_like_qwen_vl_utils(frames, h, w))
    rows, grid = patchify(pixels, factor // MERGE_SIZE, TEMPORAL_PATCH_SIZE, MERGE_SIZE)
    timestamps = group_timestamps(frames.shape[0], EMBEDDER_TIMESTAMP_FPS)
    return VideoInputs(rows, grid, timestamps, int(frames.shape[0]), (h, w))


__all__ = [
    "EMBEDDER_MAX_FRAMES", "EMBEDDER_SAMPLE_FPS", "EMBEDDER_TIMESTAMP_FPS", "EMBEDDER_TOTAL_PIXELS", "IMAGE_MEAN",
    "IMAGE_STD", "PATCH_DIM", "RESCALE_FACTOR", "VideoInputs", "cfg_get", "embedder_frame_indices",
    "group_timestamps", "meta_timestamps", "pad_to_even", "patchify", "preprocess_frames_for_embedder",
    "preprocess_video", "rescale_normalize",
]
