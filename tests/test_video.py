"""Tests of vsr1_jax.processing.video: npy/meta loading, the resize rules, bicubic resampling vs torch/PIL, HF's
normalisation/patchify/timestamps code, the whole pipelines, and the HF processor goldens made on the GPU host."""
import functools
import glob
import json
import os
from pathlib import Path

import numpy as np
import pytest

from vsr1_jax.data.files import load_npy_video, read_video_meta
from vsr1_jax.data.tiny_tokenizer import build_tiny_tokenizer
from vsr1_jax.processing import video as V
from vsr1_jax.processing.chat import encode_prompt
from vsr1_jax.processing.prompts import build_eval_messages
from vsr1_jax.processing.resize import (
    hf_smart_resize,
    resize_bicubic,
    resize_bicubic_uint8,
    resize_like_qwen_vl_utils,
    resized_video_size,
    smart_resize,
    video_max_pixels,
)

torch = pytest.importorskip("torch")
F = torch.nn.functional

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "processor_goldens"


def _rng(seed=0):
    return np.random.default_rng(seed)


def _u8(shape, seed=0):
    return _rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _torch_interp(frames_thwc, out_h, out_w):
    """torch reference: F.interpolate on channel-first float32 (what torchvision runs), back to [T, H, W, C]."""
    x = torch.from_numpy(np.ascontiguousarray(frames_thwc)).permute(0, 3, 1, 2)
    if x.dtype != torch.uint8:
        x = x.float()
    y = F.interpolate(x, size=(out_h, out_w), mode="bicubic", antialias=True, align_corners=False)
    return y.permute(0, 2, 3, 1).numpy()


def _hf_patchify(frames_thwc):
    """HF Qwen3VLVideoProcessor.patchify (transformers 5.24) on a [1, T, C, H, W] tensor; `self` is unused there."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    x = torch.from_numpy(np.ascontiguousarray(frames_thwc)).permute(0, 3, 1, 2)[None]
    rows, gt, gh, gw = Qwen3VLVideoProcessor.patchify(None, x, patch_size=16, merge_size=2, temporal_patch_size=2)
    return rows[0].numpy(), (gt, gh, gw)


def _hf_timestamps(indices, fps):
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    return Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)


def _torch_normalize(x_thwc):
    """HF TorchvisionBackend.rescale_and_normalize, fused branch: mean/std (float32) * (1 / (1/255)), then
    tvF.normalize = x.to(float32).sub(mean).div(std) channel-first."""
    mean = torch.tensor([0.5, 0.5, 0.5]) * (1.0 / (1 / 255))
    std = torch.tensor([0.5, 0.5, 0.5]) * (1.0 / (1 / 255))
    x = torch.from_numpy(np.ascontiguousarray(x_thwc)).permute(0, 3, 1, 2).to(torch.float32)
    return x.sub(mean.view(-1, 1, 1)).div(std.view(-1, 1, 1)).permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------------------------------------------- loading

def test_load_npy_video_ok_and_npz(tmp_path):
    frames = _u8((4, 8, 6, 3))
    np.save(tmp_path / "v.npy", frames)
    np.testing.assert_array_equal(load_npy_video(tmp_path / "v.npy"), frames)
    np.savez(tmp_path / "w.npz", frames)
    np.testing.assert_array_equal(load_npy_video(tmp_path / "w.npz"), frames)


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 4, 4, 3), np.float32), "dtype float32"),
    (np.zeros((4, 4, 3), np.uint8), "has 3 dims"),
    (np.zeros((2, 4, 4, 4), np.uint8), "4 channels"),
    (np.zeros((0, 4, 4, 3), np.uint8), "empty video"),
])
def test_load_npy_video_rejects(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=message) as e:
        load_npy_video(path)
    assert "bad.npy" in str(e.value)


def test_load_npy_video_missing_file_names_prepare_step(tmp_path):
    with pytest.raises(FileNotFoundError, match="video_npy_with_meta") as e:
        load_npy_video(tmp_path / "nope.npy")
    assert "nope.npy" in str(e.value)


def test_load_npy_video_rejects_pickled_objects(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy"):
        load_npy_video(tmp_path / "obj.npy")


def test_read_video_meta_and_lookup(tmp_path):
    rows = [
        {"video_id": "v_abc", "output_npy_path": "/old/machine/test/video_npy_with_meta/v_abc.npy",
         "raw_fps": 29.97, "output_num_frames": 64},
        {"output_npy_path": "/x/clip_2.npy", "raw_fps": 25.0},  # no video_id: keyed by the npy stem
        {"video_id": "only_id", "raw_fps": 30.0},  # no path: reachable by id only
    ]
    meta_path = tmp_path / "meta.jsonl"
    meta_path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    meta = read_video_meta(meta_path)
    assert set(meta) == {"v_abc", "clip_2", "only_id"}
    assert meta["v_abc"]["raw_fps"] == 29.97
    here = tmp_path / "test" / "video_npy_with_meta" / "v_abc.npy"  # stale absolute path: basename matches
    assert meta.lookup(here) is meta["v_abc"]
    assert meta.lookup("v_abc") is meta["v_abc"]
    assert meta.lookup("/somewhere/else/v_abc.npz") is meta["v_abc"]  # stem
    assert meta.lookup("clip_2") is meta["clip_2"]
    assert meta.lookup("only_id") is meta["only_id"]
    assert meta.lookup("unknown.npy") is None


@pytest.mark.parametrize("bad_line, message", [("{not json", "meta.jsonl:3: malformed JSON"),
                                                ("[1, 2]", "meta.jsonl:3: expected a JSON object"),
                                                ('{"raw_fps": 1}', "meta.jsonl:3: row has neither")])
def test_read_video_meta_reports_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "meta.jsonl"
    path.write_text('{"video_id": "a"}\n\n' + bad_line + "\n")
    with pytest.raises(ValueError, match=message):
        read_video_meta(path)


def test_read_video_meta_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="video_npy_with_meta"):
        read_video_meta(tmp_path / "meta.jsonl")


# -------------------------------------------------------------------------------------------------- resize rules

def test_pad_to_even():
    x = _u8((3, 2, 2, 3))
    y = V.pad_to_even(x)
    assert y.shape[0] == 4
    np.testing.assert_array_equal(y[3], x[2])
    assert V.pad_to_even(y) is y


def test_smart_resize_rounding_and_limits():
    # spec S §6.2: a 640x480 source stored as 517x387 goes to the model at 512x384 (SFT and eval limits, 64 frames)
    for max_pixels in (256 * 28 * 28, 602112):
        assert resized_video_size(64, 387, 517, min_pixels=100352, max_pixels=max_pixels,
                                  total_pixels=115200 * 28 * 28) == (384, 512)
    # round to the nearest multiple of 32, ties to even (Python round): 48/32 = 1.5 -> 2, 80/32 = 2.5 -> 2
    assert smart_resize(48, 80, 32, min_pixels=32, max_pixels=10**9) == (64, 64)
    # over max: floor-rescale; 200x150 capped at 16384 px: beta = sqrt(30000/16384)
    assert smart_resize(200, 150, 32, min_pixels=1024, max_pixels=16384) == (128, 96)
    # under min: ceil-rescale; 40x56 raised to 4096 px
    assert smart_resize(40, 56, 32, min_pixels=4096, max_pixels=8192) == (64, 96)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500, 32)
    with pytest.raises(ValueError, match="max_pixels"):
        smart_resize(64, 64, 32, min_pixels=2048, max_pixels=1024)


def test_video_max_pixels_per_phase():
    from configs._video import get_video_config

    c = get_video_config()

    def cap(phase, t):
        p = c[phase]
        return video_max_pixels(t, min_pixels=p.min_pixels, total_pixels=p.total_pixels, max_pixels=p.max_pixels)

    assert cap("sft", 64) == 200704  # video_max_pixels binds (S §6.2 "effectively 200,704")
    assert cap("eval", 64) == 602112
    assert cap("grpo", 64) == 1310720 / 64 * 2 == 40960  # total_pixels binds: <= 1280 tokens for 64 frames (G §1.1)
    assert cap("grpo", 2) == 65536
    # the 1.05 * min_pixels floor: 1280*32*32 over 640 frames would give 4096 < int(16384 * 1.05)
    assert cap("grpo", 640) == int(16384 * 1.05)
    # embedder: min(768*32^2, 10*768*32^2/64*2) = 245,760 px per frame at 64 frames (S §4)
    assert video_max_pixels(64, min_pixels=128 * 32 * 32, total_pixels=V.EMBEDDER_TOTAL_PIXELS) == 245760


def test_hf_smart_resize_matches_transformers():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf

    rng = _rng(1)
    for _ in range(300):
        t = int(rng.integers(2, 70))
        h, w = (int(v) for v in rng.integers(8, 900, size=2))
        if max(h, w) / min(h, w) > 150:
            continue
        lo = int(rng.integers(1, 200)) * 1024
        hi = lo + int(rng.integers(0, 3000)) * 1024
        assert hf_smart_resize(t, h, w, 2, 32, lo, hi) == hf(t, h, w, 2, 32, lo, hi), (t, h, w, lo, hi)


# ----------------------------------------------------------------------------------------------------- resampling

@pytest.mark.parametrize("h, w, oh, ow", [
    (90, 130, 64, 96),  # downscale, non-square
    (200, 150, 96, 64),  # strong downscale
    (387, 517, 384, 512),  # the common case: npy frames to the 32 grid
    (37, 53, 128, 160),  # upscale
    (64, 48, 64, 96),  # one side only
])
def test_resize_bicubic_matches_torch_interpolate(h, w, oh, ow):
    x = (_rng(h).random((2, h, w, 3)) * 255).astype(np.float32)
    ref = _torch_interp(x, oh, ow)
    out = resize_bicubic(x, oh, ow)
    assert out.shape == (2, oh, ow, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)


MEASURED_BUILD = torch.__version__.startswith("2.13.") and torch.backends.cpu.get_cpu_capability() == "AVX512"


@pytest.mark.skipif(not MEASURED_BUILD, reason="bit-exactness of the float32 emulation was measured on torch 2.13 "
                    "x86-64 with the AVX512 kernels; other builds may differ in the last bit (video.py docstring)")
def test_resize_bicubic_bit_exact_on_measured_build():
    rng = _rng(3)
    for _ in range(25):
        h, w, oh, ow = (int(v) for v in rng.integers(8, 200, size=4))
        x = (rng.random((1, h, w, 3)) * 255).astype(np.float32)
        np.testing.assert_array_equal(resize_bicubic(x, oh, ow), _torch_interp(x, oh, ow),
                                      err_msg=str((h, w, oh, ow)))


@pytest.mark.parametrize("h, w, oh, ow", [(90, 130, 64, 96), (37, 53, 128, 160), (300, 100, 64, 64)])
def test_resize_bicubic_uint8_torch_kernel_exact(h, w, oh, ow):
    # torch's native uint8 kernel = what HF's processor (torchvision v2) runs when it resizes uint8 video on CPU
    x = _u8((2, h, w, 3), seed=h)
    np.testing.assert_array_equal(resize_bicubic_uint8(x, oh, ow, "torch"), _torch_interp(x, oh, ow))


@pytest.mark.parametrize("h, w, oh, ow", [(90, 130, 64, 96), (37, 53, 128, 192), (300, 100, 64, 64)])
def test_resize_bicubic_uint8_pil_kernel_exact(h, w, oh, ow):
    pil = pytest.importorskip("PIL.Image")
    x = _u8((2, h, w, 3), seed=w)
    ref = np.stack([np.asarray(pil.fromarray(f).resize((ow, oh), pil.BICUBIC)) for f in x])
    np.testing.assert_array_equal(resize_bicubic_uint8(x, oh, ow, "pil"), ref)


@pytest.mark.parametrize("h, w, oh, ow", [(90, 130, 64, 96), (360, 640, 384, 640), (300, 100, 40, 20)])
def test_resize_bicubic_uint8_extreme_values_stay_exact(h, w, oh, ow):
    # 0/255 stripes drive the fixed-point sums to their extremes (positive lobes on 255, negative ones on 0): the
    # int32 accumulators must neither overflow nor clip differently from the C loops
    x = np.zeros((1, h, w, 3), np.uint8)
    x[:, ::2] = 255
    x[:, :, 1::3] = 255 - x[:, :, 1::3]
    np.testing.assert_array_equal(resize_bicubic_uint8(x, oh, ow, "torch"), _torch_interp(x, oh, ow))
    pil = pytest.importorskip("PIL.Image")
    ref = np.stack([np.asarray(pil.fromarray(f).resize((ow, oh), pil.BICUBIC)) for f in x])
    np.testing.assert_array_equal(resize_bicubic_uint8(x, oh, ow, "pil"), ref)


def test_resize_like_qwen_vl_utils_rounds_uint8_like_torchvision_v1():
    x = _u8((3, 50, 70, 3), seed=7)
    out = resize_like_qwen_vl_utils(x, 32, 64)
    # torchvision/transforms/_functional_tensor.py resize on uint8: float32 interpolate, clamp, round, uint8
    ref = np.clip(_torch_interp(x.astype(np.float32), 32, 64), 0, 255)
    ref = torch.from_numpy(ref).round().to(torch.uint8).float().numpy()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)
    xf = x.astype(np.float32) + 0.25  # float input stays float (no rounding)
    np.testing.assert_allclose(resize_like_qwen_vl_utils(xf, 32, 64), _torch_interp(xf, 32, 64), atol=1e-4)
    np.testing.assert_array_equal(resize_like_qwen_vl_utils(x, 50, 70), x.astype(np.float32))


# ------------------------------------------------------------------------------------ normalisation, patchify, time

def test_rescale_normalize_bit_identical_to_hf_fused():
    x = np.concatenate([np.arange(256, dtype=np.float32).reshape(1, 16, 16, 1).repeat(3, -1),
                        (_rng(2).random((1, 16, 16, 3)) * 255).astype(np.float32)])
    out = V.rescale_normalize(x)
    np.testing.assert_array_equal(out, _torch_normalize(x))
    # and it is (x/255 - 0.5)/0.5 up to float32 rounding
    np.testing.assert_allclose(out, (x / 255.0 - 0.5) / 0.5, atol=1e-6)


@pytest.mark.parametrize("t, h, w", [(4, 64, 96), (3, 32, 64), (2, 96, 32)])
def test_patchify_matches_hf_exactly(t, h, w):
    x = _rng(t).standard_normal((t, h, w, 3)).astype(np.float32)
    rows, grid = V.patchify(x)
    ref, ref_grid = _hf_patchify(x)
    assert grid == ref_grid == ((t + 1) // 2, h // 16, w // 16)
    assert rows.shape == (grid[0] * grid[1] * grid[2], 1536)
    np.testing.assert_array_equal(rows, ref)


def test_patchify_rows_of_one_merge_window_are_contiguous():
    t, h, w = 2, 64, 64
    x = np.zeros((t, h, w, 3), np.float32)
    for i in range(h // 16):
        for j in range(w // 16):
            x[:, i * 16:(i + 1) * 16, j * 16:(j + 1) * 16, :] = 10 * i + j  # patch id
    rows, _ = V.patchify(x)
    ids = rows[:, 0].astype(int)
    # first merge window = patches (0,0) (0,1) (1,0) (1,1); the next window starts at column 2
    assert ids[:8].tolist() == [0, 1, 10, 11, 2, 3, 12, 13]
    assert (rows == rows[:, :1]).all()  # each row holds one patch, all channels/frames


def test_patchify_rejects_off_grid():
    with pytest.raises(ValueError, match="multiple of"):
        V.patchify(np.zeros((2, 48, 64, 3), np.float32))


@pytest.mark.parametrize("indices, fps", [(range(6), 1.0), (range(5), 1.0), ([0, 2, 4, 6, 8, 11], 4.0),
                                          ([3, 40, 81], 29.97)])
def test_group_timestamps_matches_hf(indices, fps):
    indices = list(indices)
    assert V.group_timestamps(len(indices), fps, indices) == _hf_timestamps(indices, fps)


def test_group_timestamps_original_convention():
    assert V.group_timestamps(64)[:3] == [0.5, 2.5, 4.5]  # S §6.2: index-based "seconds"
    assert V.group_timestamps(6, 4.0, [0, 2, 4, 6, 8, 11]) == [0.25, 1.25, 2.375]  # Q §3 example


def test_meta_timestamps_real_seconds():
    row = {"raw_fps": 25.0, "sampled_indices_src": [0, 50, 100, 150, 199, 199],
           "sampled_timestamps_sec": [0.0, 2.0, 4.0, 6.0, 7.96, 7.96]}
    assert V.meta_timestamps(row, 6) == [1.0, 5.0, 7.96]
    assert V.meta_timestamps({"sampled_timestamps_sec": [0.0, 2.0, 4.0]}, 4) == [1.0, 4.0]
    with pytest.raises(ValueError, match="neither"):
        V.meta_timestamps({"raw_fps": 25.0}, 2)


# ------------------------------------------------------------------------------------------------------ pipelines

def _reference_pipeline(frames, h, w):
    """The original's chain with torch for the numeric steps: pad even, torchvision-v1 resize of the uint8 video,
    HF's fused normalisation and patchify. Also returns, in row order, where torch's float value before the uint8
    rounding lies within 1e-3 of k + 0.5 (see `_assert_rows_match`)."""
    if frames.shape[0] % 2:
        frames = np.concatenate([frames, frames[-1:]])
    near = np.zeros(frames.shape, bool)
    if frames.shape[1:3] != (h, w):
        r = np.clip(_torch_interp(frames.astype(np.float32), h, w), 0, 255)
        near = np.abs(r - np.floor(r) - 0.5) < 1e-3
        frames = torch.from_numpy(r).round().numpy()
    rows, grid = _hf_patchify(_torch_normalize(frames.astype(np.float32)))
    return rows, grid, _hf_patchify(near.astype(np.float32))[0] > 0.5


def _assert_rows_match(rows, ref, near, what=""):
    """rows == ref to 1e-5, except that a value whose float before the uint8 rounding was within 1e-3 of k + 0.5 may
    sit one uint8 step (1/127.5 after normalisation) away: our float32 bicubic equals torch's CPU kernel bit for bit
    only on the build it was measured on (video.py), elsewhere such a value can round the other way."""
    assert rows.shape == ref.shape, what
    diff = np.abs(rows - ref)
    flip = near & (np.abs(diff - 1 / 127.5) <= 1e-5)
    bad = (diff > 1e-5) & ~flip
    assert not bad.any(), f"{what}: {bad.sum()} values differ, max {diff[bad].max()}"
    assert flip.sum() <= max(10, ref.size // 10000), f"{what}: {flip.sum()} rounding flips"


def test_preprocess_video_matches_reference_chain():
    from configs._video import get_video_config

    frames = _u8((5, 90, 130, 3), seed=11)
    vi = V.preprocess_video(frames, get_video_config().grpo)
    # grpo limits, 6 frames: cap = min(65536, 1310720/6*2) = 65536; 90x130 rounds to 96x128 = 12288 < 16384
    assert vi.resized_hw == (128, 160) and vi.num_frames == 6
    rows, grid, near = _reference_pipeline(frames, 128, 160)
    assert vi.grid_thw == grid == (3, 8, 10)
    assert vi.num_tokens == 3 * 8 * 10 // 4
    _assert_rows_match(vi.pixel_rows, rows, near)
    assert vi.timestamps == [0.5, 2.5, 4.0] == _hf_timestamps([0, 1, 2, 3, 4, 4], 1.0)
    meta = {"raw_fps": 10.0, "sampled_indices_src": [0, 20, 40, 60, 80]}
    assert V.preprocess_video(frames, get_video_config().grpo, "meta", meta).timestamps == [1.0, 5.0, 8.0]
    with pytest.raises(ValueError, match="timestamps_mode"):
        V.preprocess_video(frames, get_video_config().grpo, "seconds")


def test_preprocess_frames_for_embedder_matches_reference_chain():
    pil = pytest.importorskip("PIL.Image")
    frames = _u8((3, 70, 100, 3), seed=5)
    vi = V.preprocess_frames_for_embedder(frames)
    # fetch_image with patch factor 64: 70x100 -> 64x128 (8192 px) < 4*64^2 -> ceil-rescale to 128x192 via PIL
    ih, iw = smart_resize(70, 100, 64)
    assert (ih, iw) == (128, 192)
    imgs = np.stack([np.asarray(pil.fromarray(f).resize((iw, ih), pil.BICUBIC)) for f in frames])
    h, w = resized_video_size(4, ih, iw, min_pixels=128 * 32 * 32, max_pixels=None,
                              total_pixels=V.EMBEDDER_TOTAL_PIXELS)
    assert vi.resized_hw == (h, w)
    rows, grid, near = _reference_pipeline(imgs, h, w)
    assert vi.grid_thw == grid
    _assert_rows_match(vi.pixel_rows, rows, near)
    assert vi.timestamps == [0.25, 1.25]  # fps 2.0 tag of frame lists, indices 0..3 of the padded list


def test_embedder_frame_indices():
    # 10 s at 30 fps: 1 fps -> frames 0, 30, ..., 270 (video_io._build_indices)
    np.testing.assert_array_equal(V.embedder_frame_indices(300, 30.0), np.arange(0, 300, 30))
    # 200 s: the token-budget step lowers fps to 63/199.97 so that at most 64 frames remain
    idx = V.embedder_frame_indices(6000, 30.0)
    assert len(idx) <= 64 and idx[0] == 0 and idx[-1] <= 5999 and np.all(np.diff(idx) > 0)
    assert len(V.embedder_frame_indices(6000, 30.0, budget_adjust=False)) == 64  # linspace fallback


# -------------------------------------------------------------------------------------------------------- goldens

def _golden_files():
    if not GOLDEN_DIR.is_dir():
        pytest.skip(f"{GOLDEN_DIR} does not exist yet. Make it on a machine with torchvision, from the repo root: "
                    f"PYTHONPATH=. python tools/make_processor_goldens.py tests/fixtures/processor_goldens")
    files = sorted(glob.glob(str(GOLDEN_DIR / "*.npz")))
    assert len(files) >= 3, f"expected >= 3 goldens in {GOLDEN_DIR}, found {len(files)}"
    return files


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer():
    return build_tiny_tokenizer()


def _encode(g, grid, timestamps):
    """The chat the golden script fed HF's processor, encoded by vsr1_jax.processing.prompts instead."""
    info = json.loads(str(g["info_json"]))
    tok = _tiny_tokenizer()
    messages = build_eval_messages(str(g["query"]))
    return encode_prompt(tok, messages, video_grid_thw=[grid], timestamps=[timestamps], add_generation_prompt=True,
                         outer_vision_tokens=info["hf_keeps_outer_vision_tokens"])


def test_goldens_original_path():
    """(b) the original's path: vsr1_jax must reproduce HF's processor fed by qwen-vl-utils + torchvision.

    Pixel rows must agree to 1e-5. The one resize difference allowed: torchvision rounds its float32 bicubic output
    to uint8, and our float32 emulation equals torch's CPU kernel bit for bit only on the build it was measured on
    (torch 2.13 x86-64; see video.py). On another build a value within ~1e-4 of k + 0.5 may round the other way:
    such elements (flagged `b_near_tie` by the golden script from torch's unrounded values) may differ by exactly
    one uint8 step, 1/127.5 after normalisation (`_assert_rows_match`).
    """
    for path in _golden_files():
        g = np.load(path)
        name = os.path.basename(path)
        lim = dict(min_pixels=float(g["b_min_pixels"]), max_pixels=float(g["b_max_pixels"]),
                   total_pixels=float(g["b_total_pixels"]))
        vi = V.preprocess_video(g["frames"], lim)
        assert vi.grid_thw == tuple(int(x) for x in g["b_grid_thw"]), name
        assert vi.timestamps == g["b_timestamps"].tolist(), name
        gold = g["b_pixel_values"]
        assert vi.pixel_rows.shape == gold.shape, name
        near = np.unpackbits(g["b_near_tie"], count=gold.size).reshape(gold.shape).astype(bool)
        _assert_rows_match(vi.pixel_rows, gold, near, name)
        np.testing.assert_array_equal(_encode(g, vi.grid_thw, vi.timestamps), g["b_input_ids"], err_msg=name)


def test_goldens_hf_resize_path():
    """(a) HF's own resize (do_resize=True): total-volume smart_resize + torch's uint8 kernel; integer, exact."""
    for path in _golden_files():
        g = np.load(path)
        name = os.path.basename(path)
        frames = g["frames"]
        h, w = hf_smart_resize(frames.shape[0], frames.shape[1], frames.shape[2],
                               min_pixels=int(g["a_size_shortest_edge"]), max_pixels=int(g["a_size_longest_edge"]))
        resized = frames if (h, w) == frames.shape[1:3] else resize_bicubic_uint8(frames, h, w, "torch")
        rows, grid = V.patchify(V.rescale_normalize(resized))
        assert grid == tuple(int(x) for x in g["a_grid_thw"]), name
        np.testing.assert_array_equal(rows, g["a_pixel_values"], err_msg=name)
        ts = V.group_timestamps(frames.shape[0])
        assert ts == g["a_timestamps"].tolist(), name
        np.testing.assert_array_equal(_encode(g, grid, ts), g["a_input_ids"], err_msg=name)
