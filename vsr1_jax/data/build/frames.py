"""Decode raw videos with PyAV: the policy's npy frames (the original's preprocess/extract_npy/extract_npy.py, X below)
and the search engine's frames (preprocess/extract_embed/softqmr/video_io.py + embed_segments.py, VI / ES below).

Why PyAV. X decodes with PyAV, so the npy frames (and their meta: frame counts, fps, indices) come out of the same
demuxer and decoder as the original's. PyAV ships abi3 manylinux wheels with FFmpeg inside (cp311+, so the same wheel
serves Python 3.11 here and 3.12 on the GPU machine) and numpy-2 support; decord's last release is from 2021 (no
numpy-2 build), and OpenCV (the original's *embedding* decoder) is a ~60 MB wheel whose per-frame seek
(CAP_PROP_POS_FRAMES) is slower than one sequential pass for 64 frames spread over a whole video. Here both paths
decode each video in one threaded sequential pass that stops at the last frame needed; `python -m benchmarks.build`
measures the rate. Deviation: the original's embedding path reads frames through OpenCV; this one reads
the same frame indices (OpenCV's frame count and fps rules, `stream_info`) through PyAV.

Everything a caller gets back is plain numpy; a file that cannot be read raises VideoDecodeError naming it.
"""
from __future__ import annotations

import dataclasses
import math
import os
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from vsr1_jax.errors import UserError
from vsr1_jax.processing.video import embedder_frame_indices

# prepare_activitynet_segments.py `resolve_video_path` tries these extensions in this order (L8-19).
VIDEO_EXTENSIONS = ("mp4", "mkv", "webm", "avi")
# X L14-L18: the fps assumed when the stream has no average rate, then 30.
_FALLBACK_FPS = 30.0


class VideoDecodeError(UserError, RuntimeError):
    """A video file that cannot be opened or decoded (the message names the file and the reason)."""


def av_module():
    """PyAV, imported on first use (a data step that decodes nothing does not need it)."""
    try:
        import av  # lazy: only the frame steps decode; the rest of data/ must import without PyAV installed
    except ImportError as exc:  # pragma: no cover - setup.py installs it
        raise VideoDecodeError("PyAV is required to decode videos: pip install av (setup.py lists it)") from exc
    return av


# ---------------------------------------------------------------------------------------------------------------
# Video lookup
# ---------------------------------------------------------------------------------------------------------------
def resolve_video_path(video_base: str | os.PathLike, video_id: str,
                       extensions: Sequence[str] = VIDEO_EXTENSIONS) -> str | None:
    """`<video_base>/<id>` if the id has an extension and exists, else the first `<id>.<ext>` that exists
    (prepare_activitynet_segments.py L8-19). None when nothing matches."""
    if not video_id:
        return None
    base = Path(video_base)
    if os.path.splitext(video_id)[1]:
        p = base / video_id
        if p.exists():
            return str(p)
    for ext in extensions:
        p = base / f"{video_id}.{ext.lstrip('.')}"
        if p.exists():
            return str(p)
    return None


# ---------------------------------------------------------------------------------------------------------------
# Pure parts: which frames, what size
# ---------------------------------------------------------------------------------------------------------------
def npy_sample_indices(total_frames: int, duration_sec: float | None, fps: float, max_frames: int) -> np.ndarray:
    """X `_get_sample_indices` (L115-121): n = min(total, max_frames, max(1, floor(duration * fps))) frames at
    linspace(0, total - 1, n) truncated to int32. A stream without a frame count (total 0, e.g. many webm/mkv files)
    gets the original's indices 0..max_frames-1 (the first ~2 s of a 30 fps video); see `extract_npy_frames`'s
    `unknown_frame_count` for the alternative."""
    if total_frames <= 0:
        return np.linspace(0, max_frames - 1, max_frames).astype(np.int32)
    n = max(1, math.floor(float(duration_sec or 0.0) * float(fps)))
    n = min(int(total_frames), int(max_frames), n)
    return np.linspace(0, total_frames - 1, n).astype(np.int32)


def target_size(height: int, width: int, max_pixels: int | None, min_pixels: int | None) -> tuple[int, int]:
    """X `_resize_frame` (L124-140) size rule: scale by sqrt(max/(h*w)) when above max_pixels, then by
    sqrt(min/(h*w)) when below min_pixels, each side truncated with int() and at least 1. Returns (h, w)."""
    new_h, new_w = height, width
    if max_pixels and height * width > max_pixels:
        f = math.sqrt(max_pixels / (height * width))
        new_w, new_h = max(1, int(width * f)), max(1, int(height * f))
        width, height = new_w, new_h
    if min_pixels and height * width < min_pixels:
        f = math.sqrt(min_pixels / (height * width))
        new_w, new_h = max(1, int(width * f)), max(1, int(height * f))
    return new_h, new_w


def resize_frame(arr: np.ndarray, max_pixels: int | None, min_pixels: int | None) -> np.ndarray:
    """uint8 [H, W, 3] -> PIL bicubic to `target_size`, or the frame itself when the size does not change."""
    h, w = target_size(arr.shape[0], arr.shape[1], max_pixels, min_pixels)
    if (h, w) == arr.shape[:2]:
        return arr
    return np.asarray(Image.fromarray(arr).resize((w, h), resample=Image.BICUBIC), dtype=np.uint8)


def pick_nearest(requested: Sequence[int], decoded: Iterable[int]) -> list[int]:
    """X L171-179: each requested index, or the nearest decoded one when it was not decoded (first on ties)."""
    available = sorted(decoded)
    have = set(available)
    return [int(i) if int(i) in have else min(available, key=lambda x: abs(x - int(i))) for i in requested]


# ---------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StreamInfo:
    """What the container says about its first video stream."""

    frames: int  # stream frame count, 0 when the container does not store it
    average_fps: float | None  # stream average rate
    stream_duration_sec: float | None  # stream duration x time base
    container_duration_sec: float | None  # container duration (microseconds / 1e6)

    def fps(self, fallback: float) -> float:
        """X L144-149: the average rate, else `fallback`, else 30."""
        for v in (self.average_fps, fallback):
            if v is not None and math.isfinite(v) and v > 0:
                return float(v)
        return _FALLBACK_FPS

    def opencv_total(self, fps: float) -> int:
        """OpenCV's CAP_PROP_FRAME_COUNT (the original embedding decoder, VI `_sample_with_opencv`): the stored
        count, else round(duration x fps) from the container duration."""
        if self.frames > 0:
            return self.frames
        dur = self.container_duration_sec or self.stream_duration_sec or 0.0
        return int(round(dur * fps))


def _open(path: str):
    av = av_module()
    try:
        container = av.open(str(path), "r")
    except Exception as exc:  # av.error.* (invalid data, missing file, ...)
        raise VideoDecodeError(f"{path}: cannot open ({type(exc).__name__}: {exc})") from None
    streams = [s for s in container.streams if s.type == "video"]
    if not streams:
        container.close()
        raise VideoDecodeError(f"{path}: no video stream")
    stream = streams[0]
    stream.thread_type = "AUTO"  # frame- and slice-threaded decoding; results are identical
    return container, stream


def _info(container, stream) -> StreamInfo:
    rate = stream.average_rate
    sdur = float(stream.duration * stream.time_base) if stream.duration is not None and stream.time_base else None
    cdur = float(container.duration) / 1e6 if container.duration else None
    return StreamInfo(frames=int(stream.frames or 0), average_fps=float(rate) if rate else None,
                      stream_duration_sec=sdur, container_duration_sec=cdur)


def stream_info(path: str | os.PathLike) -> StreamInfo:
    container, stream = _open(str(path))
    try:
        return _info(container, stream)
    finally:
        container.close()


def _decode(path: str, container, stream, wanted: set[int], transform) -> dict[int, np.ndarray]:
    """One sequential pass; frame i = the i-th decoded frame (X L160-167); stops after the last wanted index."""
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    last = max(wanted)
    try:
        container.seek(0)
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out[i] = transform(frame.to_ndarray(format="rgb24"))
                if len(out) >= len(wanted):
                    break
            if i >= last:
                break
    except Exception as exc:  # a corrupt packet mid-stream: keep what decoded, as long as something did
        if not out:
            raise VideoDecodeError(f"{path}: decoding failed ({type(exc).__name__}: {exc})") from None
    return out


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def extract_npy_frames(path: str | os.PathLike, *, fps: float = 1.0, max_frames: int = 64,
                       max_pixels: int | None = 200704, min_pixels: int | None = 256,
                       unknown_frame_count: str = "original",
                       extract_utc: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The policy's frames of one video: uint8 [T, H, W, 3], T even, T <= max_frames (+1 pad), and X's meta row
    (L201-218) without `video_id` / `output_npy_path` (the caller adds them).

    unknown_frame_count: what to do when the stream stores no frame count. "original" = X's indices 0..max_frames-1
    (L115-117); "estimate" = OpenCV's estimate round(container duration x fps) as the total, then X's rule. The
    duration is the stream's, else the container's (X reads only the stream's and fails the video without one).
    """
    path = str(path)
    if unknown_frame_count not in ("original", "estimate"):
        raise ValueError(f"unknown_frame_count must be 'original' or 'estimate', got {unknown_frame_count!r}")
    container, stream = _open(path)
    try:
        info = _info(container, stream)
        raw_fps = info.fps(fps)
        total = info.frames
        duration = info.stream_duration_sec if info.stream_duration_sec else info.container_duration_sec
        if total <= 0 and unknown_frame_count == "estimate":
            total = info.opencv_total(raw_fps)
        requested = npy_sample_indices(total, duration, fps, max_frames).tolist()
        decoded = _decode(path, container, stream, set(requested),
                          lambda a: resize_frame(a, max_pixels, min_pixels))
    finally:
        container.close()
    if not decoded:
        raise VideoDecodeError(f"{path}: no frames extracted")
    sampled = pick_nearest(requested, decoded)
    frames = [decoded[i] for i in sampled]
    before_pad = len(frames)
    if before_pad % 2:  # X L181-186
        frames.append(frames[-1].copy())
        sampled.append(sampled[-1])
    stacked = np.stack(frames).astype(np.uint8)
    total_src = info.frames if info.frames > 0 else int(max(sampled) + 1)  # X L188-190
    duration_sec = info.stream_duration_sec
    if not duration_sec or not math.isfinite(duration_sec) or duration_sec <= 0:  # X L192-196
        duration_sec = float(total_src) / max(raw_fps, 1e-6)
    meta = {
        "source_video_path": os.path.normpath(path),
        "source_total_frames": int(total_src),
        "source_duration_sec": float(duration_sec),
        "raw_fps": float(raw_fps),
        "target_sample_fps": float(fps),
        "target_max_frames": int(max_frames),
        "requested_indices_src": [int(x) for x in requested],
        "sampled_indices_src": [int(x) for x in sampled],
        "sampled_timestamps_sec": [float(x) / float(raw_fps) for x in sampled],
        "sampled_frames_before_even_pad": int(before_pad),
        "even_pad_applied": bool(before_pad % 2),
        "output_num_frames": int(stacked.shape[0]),
        "output_height": int(stacked.shape[1]),
        "output_width": int(stacked.shape[2]),
        "output_dtype": str(stacked.dtype),
        "extract_utc": extract_utc or utc_now(),
    }
    return stacked, meta


# ES `_estimate_tokens_per_frame` with FRAME_SIZE 0 (side 336): 0.85 * (336 / 28)^2.
_TOKENS_PER_FRAME_ORIG = 0.85 * (336 / 28.0) ** 2


def embed_sampling_control(duration: float, *, sample_fps: float, max_frames: int, max_input_tokens: int = 16384,
                           input_token_reserve: int = 512) -> dict[str, Any]:
    """ES L338-365 `sampling_control` (token budget -> frame cap; fps lowered to (cap - 1) / seconds when
    floor(seconds x fps) + 1 exceeds it), for the embed meta row. The indices themselves come from
    processing.video.embedder_frame_indices, which applies the same rule."""
    budget = max(1, int(max_input_tokens) - int(input_token_reserve))
    tpf = max(1.0, _TOKENS_PER_FRAME_ORIG)
    budget_frames = max(1, int(budget // max(tpf, 1e-6)))
    cap = min(int(max_frames), budget_frames) if max_frames else budget_frames
    seconds = max(float(duration or 0.0), 1e-3)
    eff_fps = float(sample_fps)
    if eff_fps > 0 and int(np.floor(seconds * eff_fps)) + 1 > cap:
        eff_fps = max((float(cap) - 1.0) / max(seconds, 1e-6), 1e-3)
    return {"token_budget": int(budget), "tokens_per_frame_est": float(round(tpf, 4)),
            "max_frames_budget": int(budget_frames), "effective_sample_fps": float(eff_fps),
            "effective_max_frames": int(cap), "effective_num_frames": int(cap)}


def embedder_frames(path: str | os.PathLike, *, duration: float | None, sample_fps: float = 1.0,
                    max_frames: int = 64) -> tuple[np.ndarray, dict[str, Any]]:
    """The search engine's frames of one whole-video document (ES + VI `_sample_with_opencv`): uint8 [T, H, W, 3]
    at the original resolution, T <= max_frames, and the meta row's `info`.

    Indices: `embedder_frame_indices` (1 fps from 0 to the annotated duration, clipped, de-duplicated, linspace to
    max_frames). Frames past the end of the stream are skipped and the list is padded with copies of the last frame
    (VI L118-121)."""
    path = str(path)
    container, stream = _open(path)
    try:
        info = _info(container, stream)
        fps = info.fps(_FALLBACK_FPS)
        total = info.opencv_total(fps)
        if total <= 0:
            raise VideoDecodeError(f"{path}: cannot read the frame count")
        end = float(duration) if duration and duration > 0 else None
        idxs = embedder_frame_indices(total, fps, start=0.0, end=end, duration=duration, sample_fps=sample_fps,
                                      max_frames=max_frames)
        decoded = _decode(path, container, stream, set(int(i) for i in idxs), lambda a: a)
    finally:
        container.close()
    frames = [decoded[int(i)] for i in idxs if int(i) in decoded]
    if not frames:
        raise VideoDecodeError(f"{path}: zero decoded frames")
    while len(frames) < len(idxs):
        frames.append(frames[-1].copy())
    start_idx = 0
    end_idx = max(0, min(int(float(end) * fps), total - 1)) if end else total - 1  # VI `_resolve_bounds`
    if end_idx <= start_idx:
        end_idx = min(start_idx + 1, total - 1)
    meta_info = {"backend": "pyav", "fps": float(fps), "num_total": int(total), "start_idx": int(start_idx),
                 "end_idx": int(end_idx), "idxs": [int(i) for i in idxs], "frame_size": 0,
                 "sample_fps": float(sample_fps), "max_frames": int(max_frames), "sampled_frames": int(len(idxs))}
    return np.stack(frames).astype(np.uint8), meta_info


def write_test_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: int = 10,
                     codec: str = "mpeg4") -> Path:
    """Encode uint8 [H, W, 3] frames (an array [T, H, W, 3] or any iterable, e.g. a generator for long videos) into
    a video file; tests and benchmarks make their own videos. H and W even (yuv420p)."""
    av = av_module()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), "w")
    stream = None
    try:
        for arr in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(fps))
                stream.width, stream.height = int(arr.shape[1]), int(arr.shape[0])
                stream.pix_fmt = "yuv420p"
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    finally:
        container.close()
    return path


__all__ = [
    "StreamInfo", "VIDEO_EXTENSIONS", "VideoDecodeError", "av_module", "embed_sampling_control",
    "embedder_frames", "extract_npy_frames", "npy_sample_indices", "pick_nearest", "resize_frame",
    "resolve_video_path", "stream_info", "target_size", "utc_now", "write_test_video",
]
