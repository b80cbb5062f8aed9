"""Video input settings of the original VideoSearch-R1 per phase (pixel limits of the npy frames fed to the policy,
and the search engine's video input), each citing its spec line. Used by vsr1_jax/processing/video.py.
Spec pages (shared/spec/): S = sqr_and_sft.md, E = eval_and_data.md, G = grpo.md, Q = qwen3_vl.md."""
from __future__ import annotations

import ml_collections


def _phase(min_pixels: int, max_pixels: int, total_pixels: int, fps: float) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.min_pixels = min_pixels  # per-frame floor of smart_resize
    c.max_pixels = max_pixels  # the item's per-frame cap; fetch_video also caps at min(768·32², total/T·2)
    c.total_pixels = total_pixels  # per-video budget entering the per-frame cap (VP fetch_video L638-672; S §6.2)
    # No frame cap: the npy reader uses every stored frame and ignores the item's max_frames 64 (VP _read_video_npy
    # L444-550; S §6.2). Stored videos hold <= 64 frames (extract_npy.py L115-121; E §3.4).
    # fps of the timestamps: every phase reads meta.jsonl, whose payload for pre-sampled npy rows is
    # {fps: target_sample_fps = 1.0, total_num_frames} (utils/video_metadata.py L74-122; S §6.2), so groups read
    # 0.5, 2.5, ... (README decision 4). GRPO's item fps 2.0 (AR:93-96) is overwritten by that payload
    # (grpo_vllm_trainer_qwen3_vl.py _build_env_content L523-541, payload.update(video_meta)).
    c.fps = fps
    return c


def get_video_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # The Qwen3-VL video processor's fixed values (patch 16, temporal patch 2, merge 2, mean = std = 0.5, rescale
    # 1/255: Q §3; transformers qwen3_vl/video_processing_qwen3_vl.py L113-128) are the processor's, not settings:
    # vsr1_jax/processing/resize.py (PATCH_SIZE, TEMPORAL_PATCH_SIZE, MERGE_SIZE) and processing/video.py
    # (IMAGE_MEAN, IMAGE_STD, RESCALE_FACTOR) hold them with their citations, and the policy's vision config must
    # agree (patch_size, temporal_patch_size, spatial_merge_size).
    # "index" = the original's timestamps (fps 1, indices 0..T-1 -> 0.5, 2.5, ... s); "meta" = real seconds from
    # meta.jsonl sampled_indices_src / raw_fps (README decision 4; S §6.2; E §2.1).
    c.timestamps_mode = "index"

    # --- Stage-1 SFT: verification_setting.bash L32-39 (S §6.2; E §2.1 "Resolution used elsewhere") --------------
    # min 128·28² = 100,352; video_max_pixels 256·28² = 200,704; total 115200·28² = 90,316,800; fps 1, 64 frames.
    c.sft = _phase(min_pixels=128 * 28 * 28, max_pixels=256 * 28 * 28, total_pixels=115200 * 28 * 28, fps=1.0)

    # --- Stage-2 GRPO: train_stage2.bash S2:243-248 (G §1.1 step 3) ---------------------------------------------
    # min 16·32² = 16,384; max 64·32² = 65,536; total 1280·32² = 1,310,720; max_frames 64.
    c.grpo = _phase(min_pixels=16 * 32 * 32, max_pixels=64 * 32 * 32, total_pixels=1280 * 32 * 32, fps=1.0)

    # --- Evaluation / inference: EVAL L2036-2039 (E §2 step 3b, §2.1) -----------------------------------------
    # min 100,352 (=128·28²); max 602,112 (=768·28²); total 115200·28² = 90,316,800.
    c.eval = _phase(min_pixels=100352, max_pixels=602112, total_pixels=115200 * 28 * 28, fps=1.0)

    # --- Search engine (Qwen3-VL-Embedding-2B) video documents (S §4 "Videos"; E §3.5) ------------------------
    c.embedder = ml_collections.ConfigDict()
    c.embedder.sample_fps = 1.0  # SAMPLE_FPS (02_embed_segments.bash L44-60)
    c.embedder.max_frames = 64  # SAMPLE_MAX_FRAMES; uniform linspace when more (softqmr/video_io.py L46-78)
    c.embedder.total_pixels = 10 * 768 * 32 * 32  # 7,864,320 (qwen3_vl_embedding.py L22-30)
    c.embedder.min_pixels = 128 * 32 * 32  # qwen-vl-utils VIDEO_MIN_TOKEN_NUM·32² (no min given by the embedder)
    return c
