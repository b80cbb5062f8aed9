"""The resize maths of the video inputs, numpy only: qwen-vl-utils' and HF's size rules (`smart_resize`, the
per-frame pixel caps) and antialiased bicubic resampling that matches torch and PIL.

References (spec pages in shared/spec/: S = sqr_and_sft.md, Q = qwen3_vl.md):
  VP  = videosearch_r1/model/qwen_vl_utils/vision_process.py, the original's copy of qwen-vl-utils 0.0.14.
  HFV = transformers/models/qwen3_vl/video_processing_qwen3_vl.py (5.24),
  HFB = transformers/image_processing_backends.py (TorchvisionBackend).

Resampling fidelity. `resize_bicubic` reproduces torch's CPU kernel (`_upsample_bicubic2d_aa`,
aten/src/ATen/native/cpu/UpSampleKernel.cpp) bit for bit on the torch 2.13 x86-64 CPU build: weights in float32 as
`_compute_indices_min_size_weights_aa` with the Keys cubic (a = -0.5), and the tap sums in the order and with the
fused multiply-adds that build performs (see `_resample_axis_f32`). Other torch builds can differ in the last bit;
after the uint8 rounding that only matters for values within ~1e-4 of a half integer. The uint8 paths
(`resize_bicubic_uint8`: torch's native uint8 kernel used by HF's own resize, and PIL's) are integer arithmetic
and exact everywhere.
"""
from __future__ import annotations

import functools
import math

import numpy as np

# --------------------------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------------------------

PATCH_SIZE = 16  # Qwen3VLVideoProcessor.patch_size (HFV L121; Q §3)
TEMPORAL_PATCH_SIZE = 2  # HFV L122
MERGE_SIZE = 2  # HFV L123
FACTOR = PATCH_SIZE * MERGE_SIZE  # 32: resized sides are multiples of this (image_patch_size=16, MAIN L1321; S §6.2)

# qwen-vl-utils module constants (VP top of file; identical in qwen_vl_utils 0.0.14)
MAX_RATIO = 200
FRAME_FACTOR = 2
IMAGE_MIN_TOKEN_NUM = 4
IMAGE_MAX_TOKEN_NUM = 16384
VIDEO_MIN_TOKEN_NUM = 128
VIDEO_MAX_TOKEN_NUM = 768


# --------------------------------------------------------------------------------------------------------------
# Resize rules
# --------------------------------------------------------------------------------------------------------------

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
    # int32 as both C loops (`int ss`): |sum_j t_j w_j| <= 255 * sum_j |w_j| * 2**22 < 2**31 for these kernels
    acc = np.full(out_shape, 1 << (precision - 1), np.int32)
    wi = wi.astype(np.int32)
    for j in range(wi.shape[1]):
        wj = wi[:, j]
        if not wj.any():
            continue
        t = np.take(x, np.minimum(xmin + j, in_size - 1), axis=axis).astype(np.int32)
        t *= _bcast(wj, x.ndim, axis)
        acc += t
    acc >>= precision
    return np.clip(acc, 0, 255, out=acc).astype(np.uint8)


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


__all__ = [
    "FACTOR", "FRAME_FACTOR", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM", "MAX_RATIO", "MERGE_SIZE", "PATCH_SIZE",
    "TEMPORAL_PATCH_SIZE", "VIDEO_MAX_TOKEN_NUM", "VIDEO_MIN_TOKEN_NUM", "hf_smart_resize",
    "resize_bicubic", "resize_bicubic_uint8", "resize_like_qwen_vl_utils", "resized_video_size", "smart_resize",
    "video_max_pixels",
]
