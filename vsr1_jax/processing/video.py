"""Video inputs of the VideoSearch-R1 policy and search engine, host side, numpy only: npy frames + meta.jsonl ->
the original's resize -> Qwen3-VL `pixel_values_videos` rows, `video_grid_thw` and the per-group prompt timestamps.

References (spec pages in shared/spec/: S = sqr_and_sft.md, E = eval_and_data.md, G = grpo.md, Q = qwen3_vl.md):
  VP  = videosearch_r1/model/qwen_vl_utils/vision_process.py, the original's copy of qwen-vl-utils 0.0.14 with an
        npy reader added.
  VM  = videosearch_r1/utils/video_metadata.py (meta.jsonl lookup).
  HFV = transformers/models/qwen3_vl/video_processing_qwen3_vl.py (5.24), HFP = processing_qwen3_vl.py,
  HFB = transformers/image_processing_backends.py (TorchvisionBackend).
  EMB = preprocess/extract_embed/vendor/qwen3_vl_embedding.py (search-engine embedder; stock qwen-vl-utils inside).

The policy's pipeline (S §6.2, E §2.1): npy uint8 [T, H, W, 3] -> repeat the last frame to an even T (VP L492-496)
-> `smart_resize` to multiples of 32 under the phase's pixel limits (VP L58-95, fetch_video L638-672) -> antialiased
bicubic resize of the uint8 tensor with torchvision's v1 `transforms.functional.resize` (VP L667-672), which casts to
float32, interpolates, clamps to [0, 255] and rounds back to uint8, then `.float()` -> the HF processor with
`do_resize=False`: (x - 127.5) / 127.5 (HFB rescale_and_normalize, fused) -> patchify (HFV patchify).

Resampling fidelity. `resize_bicubic` reproduces torch's CPU kernel (`_upsample_bicubic2d_aa`,
aten/src/ATen/native/cpu/UpSampleKernel.cpp) bit for bit on the torch 2.13 x86-64 CPU build: weights in float32 as
`_compute_indices_min_size_weights_aa` with the Keys cubic (a = -0.5), and the tap sums in the order and with the
fused multiply-adds that build performs (see `_resample_axis_f32`). Other torch builds can differ in the last bit;
after the uint8 rounding that only matters for values within ~1e-4 of a half integer. The uint8 paths
(`resize_bicubic_uint8`: torch's native uint8 kernel used by HF's own resize, and PIL's) are integer arithmetic
and exact everywhere.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------------------------

PATCH_SIZE = 16  # Qwen3VLVideoProcessor.patch_size (HFV L121; Q §3)
TEMPORAL_PATCH_SIZE = 2  # HFV L122
MERGE_SIZE = 2  # HFV L123
FACTOR = PATCH_SIZE * MERGE_SIZE  # 32: resized sides are multiples of this (image_patch_size=16, MAIN L1321; S §6.2)
PATCH_DIM = 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE  # 1536 values per pixel row
IMAGE_MEAN = (0.5, 0.5, 0.5)  # IMAGENET_STANDARD_MEAN (HFV L115)
IMAGE_STD = (0.5, 0.5, 0.5)  # IMAGENET_STANDARD_STD (HFV L116)
RESCALE_FACTOR = 1 / 255  # VideoProcessorMixin.rescale_factor

# qwen-vl-utils module constants (VP top of file; identical in qwen_vl_utils 0.0.14)
MAX_RATIO = 200
FRAME_FACTOR = 2
IMAGE_MIN_TOKEN_NUM = 4
IMAGE_MAX_TOKEN_NUM = 16384
VIDEO_MIN_TOKEN_NUM = 128
VIDEO_MAX_TOKEN_NUM = 768

# Qwen3-VL-Embedding video input (EMB L22-30; S §4 "Videos"; E §3.5)
EMBEDDER_TOTAL_PIXELS = 10 * 768 * 32 * 32  # MAX_TOTAL_PIXELS = 7,864,320
EMBEDDER_SAMPLE_FPS = 1.0  # SAMPLE_FPS=1.0 (02_embed_segments.bash L44-60)
EMBEDDER_MAX_FRAMES = 64  # SAMPLE_MAX_FRAMES=64
# fetch_video's list-of-frames branch tags the frames with sample_fps 2.0 when none is given (qwen_vl_utils 0.0.14
# vision_process.py L434-446; VP has the same branch), so the embedder's timestamps are index / 2.
EMBEDDER_TIMESTAMP_FPS = 2.0

_PREPARE_HINT = ("video_npy_with_meta/ is written by the data prepare/build step (preprocess/extract_npy/"
                 "extract_npy.py; eval_and_data.md §3.4)")


# --------------------------------------------------------------------------------------------------------------
# Loading: npy frames and meta.jsonl
# --------------------------------------------------------------------------------------------------------------

def load_npy_video(path: str | os.PathLike) -> np.ndarray:
    """Load one pre-extracted video: uint8 RGB frames [T, H, W, 3] (extract_npy.py L188; E §3.4).

    A `.npz` gives its first array, as VP `_read_video_npy` (L444-550) does. Raises FileNotFoundError / ValueError
    naming the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file; {_PREPARE_HINT}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable .npy/.npz array ({e})") from e
    if isinstance(arr, np.lib.npyio.NpzFile):
        with arr:
            if not arr.files:
                raise ValueError(f"{path}: empty .npz archive")
            arr = arr[arr.files[0]]
    if arr.dtype != np.uint8:
        raise ValueError(f"{path}: dtype {arr.dtype}, expected uint8 RGB frames [T, H, W, 3]")
    if arr.ndim != 4:
        raise ValueError(f"{path}: shape {arr.shape} has {arr.ndim} dims, expected 4 (T, H, W, 3)")
    if arr.shape[-1] != 3:
        raise ValueError(f"{path}: shape {arr.shape} has {arr.shape[-1]} channels in the last axis, expected 3 (RGB)")
    if arr.size == 0:
        raise ValueError(f"{path}: empty video, shape {arr.shape}")
    return arr


# keys whose value is the video file (VM `_extract_candidate_paths`)
_META_PATH_KEYS = ("npy_path", "output_npy_path", "output_path", "path", "video_path", "video")


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


class VideoMeta(dict):
    """`video_id -> meta.jsonl row`, plus `lookup()` by id, path, basename or stem (VM `load_video_meta_index`,
    `resolve_video_meta_for_video_path` L193-220; E §3.4).

    The original indexes each row under the absolute path, basename and stem of its npy path so that meta files
    written on another machine (stale absolute paths) still match (E §3.4 last bullet); `lookup` does the same.
    """

    def __init__(self, source: str):
        super().__init__()
        self.source = source
        self._by_path: dict[str, dict] = {}
        self._by_basename: dict[str, dict] = {}
        self._by_stem: dict[str, dict] = {}

    def _add(self, video_id: str, row: dict, paths: list[str]) -> None:
        self[video_id] = row
        for p in paths:
            ap = os.path.normpath(os.path.abspath(p))
            self._by_path[ap] = row
            self._by_basename[os.path.basename(ap)] = row
            self._by_stem[_stem(ap)] = row

    def lookup(self, video: str | os.PathLike) -> dict | None:
        """The row of a video given by id or by (any) path of its npy file; None if unknown.

        Order: video id, absolute path, basename, stem (VM resolve_video_meta_for_video_path L193-220; the GRPO
        loader tries the id first, generate_match_grounding.py `_resolve_video_meta`).
        """
        key = os.fspath(video)
        if key in self:
            return self[key]
        ap = os.path.normpath(os.path.abspath(key))
        for index, k in ((self._by_path, ap), (self._by_basename, os.path.basename(ap)), (self._by_stem, _stem(ap))):
            if k in index:
                return index[k]
        return None


def read_video_meta(meta_jsonl_path: str | os.PathLike) -> VideoMeta:
    """Read `video_npy_with_meta/meta.jsonl` (extract_npy.py L201-218; S §6.1): `{video_id: row}` with lookups.

    Blank lines are skipped; a line that is not a JSON object raises ValueError naming `file:line` (the original
    skips such lines silently, VM `_iter_jsonl`). A row without `video_id` is keyed by the stem of its npy path.
    """
    path = Path(meta_jsonl_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such meta.jsonl; {_PREPARE_HINT}")
    from vsr1_jax.data.layout import iter_jsonl  # one JSONL reader (file:line errors) for every prepared file
    meta = VideoMeta(str(path))
    for lineno, row in iter_jsonl(path, "video_npy_meta"):
        paths = [str(row[k]).strip() for k in _META_PATH_KEYS if isinstance(row.get(k), str) and str(row[k]).strip()]
        video_id = str(row.get("video_id", "")).strip() or (_stem(paths[0]) if paths else "")
        if not video_id:
            raise ValueError(f"{path}:{lineno}: row has neither `video_id` nor an npy path "
                             f"({', '.join(_META_PATH_KEYS)})")
        meta._add(video_id, row, paths)
    return meta


# --------------------------------------------------------------------------------------------------------------
# Frame count and resize rules
# --------------------------------------------------------------------------------------------------------------

def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """[T, ...] -> [T + T % 2, ...]: repeat the last frame when T is odd (VP `_read_video_npy` L492-496)."""
    frames = np.asarray(frames)
    if frames.shape[0] == 0:
        raise ValueError("pad_to_even: no frames")
    if frames.shape[0] % FRAME_FACTOR:
        frames = np.concatenate([frames, frames[-1:]], axis=0)
    return frames


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: float | None = None,
                 max_pixels: float | None = None) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor` with h*w in [min_pixels, max_pixels]: qwen-vl-utils'
    per-frame rule (VP smart_resize L58-95, S §6.2).

    Round each side to the nearest multiple (Python's round, ties to even; at least `factor`); if the area exceeds
    max_pixels, floor-rescale both sides by sqrt(h*w/max); if it is below min_pixels, ceil-rescale by
    sqrt(min/(h*w)). Defaults are the image limits (4 and 16384 tokens of factor**2 px).
    """
    max_pixels = IMAGE_MAX_TOKEN_NUM * factor ** 2 if max_pixels is None else max_pixels
    min_pixels = IMAGE_MIN_TOKEN_NUM * factor ** 2 if min_pixels is None else min_pixels
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels {max_pixels} < min_pixels {min_pixels}")
    if height <= 0 or width <= 0:
        raise ValueError(f"bad frame size {height}x{width}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_RATIO}, got "
                         f"{max(height, width) / min(height, width)}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar <= 0 or w_bar <= 0:  # VP would go on with a zero side and fail inside the resize
        raise ValueError(f"{height}x{width} frames resize to {h_bar}x{w_bar} under max_pixels={max_pixels}")
    return h_bar, w_bar


def video_max_pixels(num_frames: int, *, min_pixels: float, total_pixels: float, max_pixels: float | None = None,
                     factor: int = FACTOR) -> float:
    """Per-frame pixel cap of `fetch_video` (VP L638-672; S §6.2):
    `min(max_pixels, max(min(768*factor**2, total_pixels/T*2), int(1.05*min_pixels)))`, T = frames after even
    padding; `max_pixels` None = no item-level cap (then the computed value is used as is).
    """
    cap = max(min(VIDEO_MAX_TOKEN_NUM * factor * factor, total_pixels / num_frames * FRAME_FACTOR),
              int(min_pixels * 1.05))
    return cap if max_pixels is None else min(max_pixels, cap)


def resized_video_size(num_frames: int, height: int, width: int, *, min_pixels: float, max_pixels: float | None,
                       total_pixels: float, factor: int = FACTOR) -> tuple[int, int]:
    """(h, w) the policy's frames are resized to: `smart_resize` under `video_max_pixels` (VP fetch_video L638-672).

    `num_frames` is the frame count after even padding, as fetch_video reads it from the padded tensor.
    """
    cap = video_max_pixels(num_frames, min_pixels=min_pixels, total_pixels=total_pixels, max_pixels=max_pixels,
                           factor=factor)
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=cap)


def hf_smart_resize(num_frames: int, height: int, width: int, temporal_factor: int = TEMPORAL_PATCH_SIZE,
                    factor: int = FACTOR, min_pixels: float = 128 * 32 * 32,
                    max_pixels: float = 768 * 32 * 32) -> tuple[int, int]:
    """HF Qwen3VLVideoProcessor's own size rule (HFV smart_resize L75-108; Q §3): limits on the *total volume*
    t_bar*h_bar*w_bar, not per frame. Used only when the HF processor resizes (`do_resize=True`), which the original
    never does; `min_pixels`/`max_pixels` are its `size["shortest_edge"]` / `size["longest_edge"]`.
    """
    if num_frames < temporal_factor:
        raise ValueError(f"t:{num_frames} must be larger than temporal_factor:{temporal_factor}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height = int(height * scale)
        width = int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got "
                         f"{max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def hf_capped_max_pixels(num_frames: int, min_pixels: float, max_pixels: float, factor: int = FACTOR,
                         max_video_tokens: int = VIDEO_MAX_TOKEN_NUM) -> float:
    """HF's `cap_pixels_per_frame=True` total budget (HFV resize L203-207): per-frame
    `max(min(max_video_tokens*factor**2, max_pixels // T), int(1.05*min_pixels))`, times T."""
    per_frame = max(min(max_video_tokens * factor * factor, max_pixels // num_frames), int(min_pixels * 1.05))
    return per_frame * num_frames


# --------------------------------------------------------------------------------------------------------------
# Antialiased bicubic resampling
# --------------------------------------------------------------------------------------------------------------

_F32 = np.float32


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    # float32 fused multiply-add: the float32 product is exact in float64, so one float64 add and one rounding to
    # float32 give fma's single rounding (up to a double-rounding tie, ~2**-29 of cases).
    r = np.multiply(a, b, dtype=np.float64)
    r += c
    return r.astype(_F32)


def _keys_cubic_f32(x: np.ndarray) -> np.ndarray:
    """torch `HelperInterpCubic::aa_filter<float>` (a = -0.5) with cubic_convolution1/2 of UpSample.h, evaluated
    as the x86 build compiles them (each `p * x + q` step contracted to an fma)."""
    x = np.abs(x).astype(_F32)
    # |x| < 1: ((a + 2) * x - (a + 3)) * x * x + 1
    near = _fma32((_fma32(np.full_like(x, 1.5), x, np.full_like(x, -2.5)) * x).astype(_F32), x, np.ones_like(x))
    # 1 <= |x| < 2: ((a * x - 5a) * x + 8a) * x - 4a
    far = _fma32(_fma32(_fma32(np.full_like(x, -0.5), x, np.full_like(x, 2.5)), x, np.full_like(x, -4.0)), x,
                 np.full_like(x, 2.0))
    return np.where(x < 1, near, np.where(x < 2, far, _F32(0))).astype(_F32)


def _aa_ranges(in_size: int, out_size: int, scale: float, support: float) -> tuple[np.ndarray, np.ndarray, int]:
    # PIL/torch source window of each output pixel: xmin = trunc(center - support + 0.5) clamped at 0,
    # xsize = min(trunc(center + support + 0.5), in_size) - xmin, at most max_interp_size taps.
    kmax = int(math.ceil(support)) * 2 + 1
    center = scale * (np.arange(out_size) + 0.5)
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xsize = np.clip(np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin, 0, kmax)
    return xmin, xsize, kmax


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:  # cached results are shared between calls
        a.setflags(write=False)


@functools.lru_cache(maxsize=64)
def _torch_weights_f32(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch float32 weights: `_compute_index_ranges_weights<float>` + `_compute_indices_min_size_weights_aa`
    (UpSampleKernel.cpp), antialias=True, align_corners=False, no scale factor -> xmin, xsize [out], w [out, K]."""
    scale = _F32(in_size) / _F32(out_size)  # area_pixel_compute_scale<float>: float(in) / out
    support = _F32(2.0 * float(scale)) if scale >= 1.0 else _F32(2.0)  # (interp_size * 0.5) * scale -> float
    invscale = _F32(1.0 / float(scale)) if scale >= 1.0 else _F32(1.0)
    kmax = int(math.ceil(float(support))) * 2 + 1
    # center = scale * (i + 0.5) is evaluated in double and stored as float; the bounds add 0.5 in double.
    center = (float(scale) * (np.arange(out_size) + 0.5)).astype(_F32)
    xmin = np.maximum(np.trunc((center - support).astype(np.float64) + 0.5).astype(np.int64), 0)
    xsize = np.clip(np.minimum(np.trunc((center + support).astype(np.float64) + 0.5).astype(np.int64), in_size)
                    - xmin, 0, kmax)
    w = np.zeros((out_size, kmax), _F32)
    total = np.zeros(out_size, _F32)
    for j in range(kmax):
        # filter((j + xmin - center + 0.5) * invscale): int - float in float, + 0.5 and * invscale in double
        arg = ((j + xmin).astype(_F32) - center).astype(_F32)
        arg = ((arg.astype(np.float64) + 0.5) * float(invscale)).astype(_F32)
        wj = np.where(j < xsize, _keys_cubic_f32(arg), _F32(0)).astype(_F32)
        w[:, j] = wj
        total = (total + wj).astype(_F32)
    nz = total != 0
    w[nz] = (w[nz] / total[nz, None]).astype(_F32)
    _readonly(xmin, xsize, w)
    return xmin, xsize, w


def _bcast(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def _resample_axis_f32(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One separable pass of torch's float32 antialiased bicubic along `axis` (float32 in and out).

    torch sums `out = t0*w0; out += tj*wj` for j < xsize (`interpolate_aa_single_dim[_zero_strides]`). Measured on
    the torch 2.13 x86-64 CPU build against F.interpolate: the compiled loop does the adds in blocks of 4 as plain
    float adds of rounded products and the remaining (xsize-1) % 4 adds as fmas. Reproducing that makes the result
    identical; any other order differs by a few float32 ulps.
    """
    in_size = x.shape[axis]
    xmin, xsize, w = _torch_weights_f32(in_size, out_size)
    out_shape = list(x.shape)
    out_shape[axis] = out_size
    out = np.empty(out_shape, _F32)
    for n in np.unique(xsize):
        sel = np.nonzero(xsize == n)[0]
        n = int(n)
        plain_adds = 4 * ((n - 1) // 4)
        acc = (np.take(x, xmin[sel], axis=axis) * _bcast(w[sel, 0], x.ndim, axis)).astype(_F32)
        for j in range(1, n):
            t = np.take(x, xmin[sel] + j, axis=axis)
            wj = _bcast(w[sel, j], x.ndim, axis)
            acc = (acc + (t * wj).astype(_F32)).astype(_F32) if j <= plain_adds else _fma32(t, wj, acc)
        idx = [slice(None)] * x.ndim
        idx[axis] = sel
        out[tuple(idx)] = acc
    return out


def _check_frames(frames: np.ndarray, out_h: int, out_w: int) -> None:
    if frames.ndim < 3:
        raise ValueError(f"frames must be [..., H, W, C], got shape {frames.shape}")
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"bad output size {out_h}x{out_w}")


def resize_bicubic(frames: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Antialiased bicubic resize of float frames [..., H, W, C] -> float32 [..., out_h, out_w, C], equal to
    `torch.nn.functional.interpolate(x, (out_h, out_w), mode="bicubic", antialias=True, align_corners=False)` on
    float32 channel-first data (what torchvision's resize runs on float tensors).

    PIL/torch-style separable resampling: Keys cubic a = -0.5, support 2 * max(scale, 1) source pixels, weights
    normalised per output pixel, windows clipped at the borders (no padding); horizontal pass first, then vertical;
    a side whose size does not change is not resampled.
    """
    frames = np.asarray(frames)
    _check_frames(frames, out_h, out_w)
    if frames.shape[-3:-1] == (out_h, out_w):
        return frames.astype(_F32)
    if frames.ndim > 3:  # frame by frame: the float64 temporaries then stay cache-sized (about 3x faster)
        flat = frames.reshape((-1,) + frames.shape[-3:])
        out = np.empty((flat.shape[0], out_h, out_w, frames.shape[-1]), _F32)
        for i in range(flat.shape[0]):
            out[i] = resize_bicubic(flat[i], out_h, out_w)
        return out.reshape(frames.shape[:-3] + out.shape[1:])
    x = frames.astype(_F32)
    if x.shape[1] != out_w:
        x = _resample_axis_f32(x, 1, out_w)
    if x.shape[0] != out_h:
        x = _resample_axis_f32(x, 0, out_h)
    return x


def _keys_cubic_f64(x: np.ndarray) -> np.ndarray:
    # torch `aa_filter<double, true>` (a = -0.5) of the uint8 path
    x = np.abs(x)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _pil_bicubic_f64(x: np.ndarray) -> np.ndarray:
    # Pillow libImaging/Resample.c bicubic_filter (a = -0.5), its own operation order
    x = np.abs(x)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def _fixed_point_weights(in_size: int, out_size: int, kernel: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer weights of one axis -> (xmin [out], w int64 [out, K], precision bits).

    torch (uint8 tensors): `_compute_index_ranges_int16_weights` - weights in double, normalised, scaled by the
    largest power of two that keeps the largest weight under 2**15, rounded half away from zero.
    pil: Pillow `precompute_coeffs` + `normalize_coeffs_8bpc` - same window, PRECISION_BITS = 22.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    xmin, xsize, kmax = _aa_ranges(in_size, out_size, scale, support)
    center = scale * (np.arange(out_size) + 0.5)
    j = np.arange(kmax)
    # both multiply by the reciprocal: torch `* invscale`, Pillow `* ss` with ss = 1.0 / filterscale
    arg = (j[None, :] + xmin[:, None] - center[:, None] + 0.5) * (1.0 / filterscale)
    filt = _pil_bicubic_f64 if kernel == "pil" else _keys_cubic_f64
    w = np.where(j[None, :] < xsize[:, None], filt(arg), 0.0)
    total = _seq_sum(w)
    w = np.where(total != 0, w / np.where(total == 0, 1.0, total), w)
    if kernel == "pil":
        precision = 22  # PRECISION_BITS = 32 - 8 - 2
    else:
        wt_max = float(w.max())
        precision = 0
        while precision < 22:
            if int(0.5 + wt_max * (1 << (precision + 1))) >= (1 << 15):
                break
            precision += 1
    v = w * float(1 << precision)
    wi = np.where(v < 0, np.trunc(v - 0.5), np.trunc(v + 0.5)).astype(np.int64)
    _readonly(xmin, wi)
    return xmin, wi, precision


def _seq_sum(w: np.ndarray) -> np.ndarray:
    # left-to-right sum, as the C loops accumulate `total_w`
    total = np.zeros((w.shape[0], 1))
    for j in range(w.shape[1]):
        total[:, 0] += w[:, j]
    return total


def _resample_axis_int(x: np.ndarray, axis: int, out_size: int, kernel: str) -> np.ndarray:
    # out = clamp((2**(p-1) + sum_j t_j * w_j) >> p, 0, 255): exact integer arithmetic, order irrelevant
    # (torch basic_loop_aa_horizontal/vertical<uint8_t>; Pillow ImagingResampleHorizontal/Vertical_8bpc).
    in_size = x.shape[axis]
    xmin, wi, precision = _fixed_point_weights(in_size, out_size, kernel)
    out_shape = list(x.shape)
    out_shape[axis] = out_size
    acc = np.full(out_shape, 1 << (precision - 1), np.int64)
    for j in range(wi.shape[1]):
        wj = wi[:, j]
        if not wj.any():
            continue
        t = np.take(x, np.minimum(xmin + j, in_size - 1), axis=axis).astype(np.int64)
        acc += t * _bcast(wj, x.ndim, axis)
    return np.clip(acc >> precision, 0, 255).astype(np.uint8)


def resize_bicubic_uint8(frames: np.ndarray, out_h: int, out_w: int, kernel: str = "torch") -> np.ndarray:
    """Antialiased bicubic resize of uint8 frames [..., H, W, C] -> uint8, in fixed point like the libraries do.

    kernel="torch": torch's native uint8 CPU kernel, i.e. what torchvision v2 `resize` (HF's processor when it
    resizes, HFB TorchvisionBackend.resize) runs on uint8 tensors on the CPU. The intermediate (after the horizontal
    pass) is rounded to uint8 too.
    kernel="pil": `PIL.Image.resize(..., BICUBIC)` on RGB images (qwen-vl-utils `fetch_image`, used by the embedder's
    frame lists), including Pillow 13's pass order (libImaging/Resample.c ImagingResampleInner: the vertical pass
    runs first when the height shrinks by more than twice as many pixels as the width; Pillow releases before that
    change always ran the horizontal pass first, which changes some values by 1-3).
    """
    frames = np.asarray(frames)
    _check_frames(frames, out_h, out_w)
    if frames.dtype != np.uint8:
        raise ValueError(f"resize_bicubic_uint8 needs uint8 frames, got {frames.dtype}")
    if kernel not in ("torch", "pil"):
        raise ValueError(f"kernel must be 'torch' or 'pil', got {kernel!r}")
    x = frames
    w_axis, h_axis = frames.ndim - 2, frames.ndim - 3
    in_h, in_w = frames.shape[h_axis], frames.shape[w_axis]
    vertical_first = kernel == "pil" and (in_h - out_h) > 0 and (in_h - out_h) > (in_w - out_w) * 2
    passes = [(h_axis, out_h), (w_axis, out_w)] if vertical_first else [(w_axis, out_w), (h_axis, out_h)]
    for axis, size in passes:
        if x.shape[axis] != size:
            x = _resample_axis_int(x, axis, size, kernel)
    return x if x is not frames else x.copy()


def resize_like_qwen_vl_utils(frames: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """The original's resize (VP fetch_video L667-672): `torchvision.transforms.functional.resize(video, [h, w],
    BICUBIC, antialias=True).float()` on the npy tensor -> float32 [..., out_h, out_w, C] in [0, 255].

    On uint8 input torchvision (v1 `_functional_tensor.resize`) casts to float32, interpolates, clamps to [0, 255]
    and rounds half to even back to uint8, so the values are whole numbers. Float input stays unrounded. Same size
    in and out: returned unchanged (as float32).
    """
    frames = np.asarray(frames)
    _check_frames(frames, out_h, out_w)
    if frames.shape[-3:-1] == (out_h, out_w):
        return frames.astype(_F32)
    out = resize_bicubic(frames, out_h, out_w)
    if frames.dtype == np.uint8:
        out = np.rint(np.clip(out, 0, 255)).astype(_F32)
    return out


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
    x = np.asarray(frames).astype(_F32)
    c = x.shape[-1]
    inv = _F32(1.0 / rescale_factor)
    m = (np.broadcast_to(np.asarray(mean, _F32), (c,)) * inv).astype(_F32)
    s = (np.broadcast_to(np.asarray(std, _F32), (c,)) * inv).astype(_F32)
    return ((x - m).astype(_F32) / s).astype(_F32)


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


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
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
      item's per-frame cap), `total_pixels`, optionally `fps` (timestamps, default 1.0) and
      `patch_size`/`temporal_patch_size`/`merge_size`.
    timestamps_mode: "index" (default; the original: fps 1, indices 0..T-1 -> 0.5, 2.5, ...) or "meta" (real
      seconds from `meta_row`, see `meta_timestamps`).
    Steps: pad to even T -> `resized_video_size` -> `resize_like_qwen_vl_utils` -> `rescale_normalize` -> `patchify`.
    """
    frames = _as_frames(frames)
    patch = int(_cfg_get(phase_cfg, "patch_size", PATCH_SIZE))
    tps = int(_cfg_get(phase_cfg, "temporal_patch_size", TEMPORAL_PATCH_SIZE))
    merge = int(_cfg_get(phase_cfg, "merge_size", MERGE_SIZE))
    t0 = frames.shape[0]
    frames = pad_to_even(frames)
    h, w = resized_video_size(frames.shape[0], frames.shape[1], frames.shape[2],
                              min_pixels=_cfg_get(phase_cfg, "min_pixels"),
                              max_pixels=_cfg_get(phase_cfg, "max_pixels"),
                              total_pixels=_cfg_get(phase_cfg, "total_pixels"), factor=patch * merge)
    pixels = rescale_normalize(resize_like_qwen_vl_utils(frames, h, w))
    rows, grid = patchify(pixels, patch, tps, merge)
    if timestamps_mode == "index":
        # VP: frames_indices = 0..T0-1 extended with the last index to the padded count, fps = meta fps = 1.0
        indices = list(range(t0)) + [t0 - 1] * (frames.shape[0] - t0)
        timestamps = group_timestamps(frames.shape[0], float(_cfg_get(phase_cfg, "fps", 1.0)), indices, tps)
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
    "EMBEDDER_MAX_FRAMES", "EMBEDDER_SAMPLE_FPS", "EMBEDDER_TOTAL_PIXELS", "FACTOR", "MERGE_SIZE", "PATCH_DIM",
    "PATCH_SIZE", "TEMPORAL_PATCH_SIZE", "VideoInputs", "VideoMeta", "embedder_frame_indices", "group_timestamps",
    "hf_capped_max_pixels", "hf_smart_resize", "load_npy_video", "meta_timestamps", "pad_to_even", "patchify",
    "preprocess_frames_for_embedder", "preprocess_video", "read_video_meta", "rescale_normalize", "resize_bicubic",
    "resize_bicubic_uint8", "resize_like_qwen_vl_utils", "resized_video_size", "smart_resize", "video_max_pixels",
]
