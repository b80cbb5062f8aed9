"""Data defaults of the original VideoSearch-R1 (layout, SFT / GRPO / eval pipelines), each citing its spec line.
Spec pages (shared/spec/): E = eval_and_data.md, S = sqr_and_sft.md, G = grpo.md, ENVMD = environment.md."""
from __future__ import annotations

import ml_collections


def get_data_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # The dataset folder, split and seed are top-level fields of configs/base.py (data_root, dataset, split).
    c.train_split = "train"  # E §3 layout

    # --- loader (grain) ---------------------------------------------------------------------------------------
    c.loader = ml_collections.ConfigDict()
    c.loader.worker_count = 0  # grain worker processes; >0 needs absl flags, handled in pipelines (ENVMD §5)
    c.loader.worker_buffer_size = 1  # per-worker prefetch (grain MultiprocessingOptions default)
    c.loader.read_threads = 1  # grain ReadOptions threads; 1 keeps 2-core machines responsive (port choice)
    c.loader.prefetch_buffer_size = 8  # grain ReadOptions buffer (port choice)

    # --- offline builders (what the prepared files were made with; used by the synthetic/real build steps) -----
    c.build = ml_collections.ConfigDict()
    c.build.hard_negative_topk_pool = 50  # TOPK_POOL (08_build_hard_negatives.bash L20-21; E §3.7)
    c.build.hard_negative_max = 50  # MAX_NEGATIVES (08_build_hard_negatives.bash L20-21; E §3.7)
    c.build.top1_pool_match = 1000  # 1000 match samples (05_build_top1_pool.bash L30-31; E §3.8)
    c.build.top1_pool_not_match = 1000  # 1000 not_match samples (05_build_top1_pool.bash L30-31; E §3.8)
    c.build.top1_pool_seed = 42  # 05_build_top1_pool.bash L30-31 (E §3.8)
    c.build.query_shuffle_seed = 0  # queries shuffled with seed 0 (prepare_activitynet_segments.py L137-139; E §3.2)
    c.build.query_embed_batch_size = 32  # embed_queries batch (S §4; E §3.3)
    c.build.segment_embed_batch_size = 8  # SEGMENT_BATCH_SIZE (02_embed_segments.bash L44-61; E §3.5)
    c.build.video_fps = 1.0  # VIDEO_FPS (04_extract_*_npy.bash L13-20; E §3.4)
    c.build.video_max_frames = 64  # VIDEO_MAXLEN (04_extract_*_npy.bash L13-20; E §3.4)
    c.build.video_max_pixels = 200704  # 256·28² (04_extract_*_npy.bash L13-20; E §3.4)
    c.build.video_min_pixels = 256  # VIDEO_MIN_PIXELS (04_extract_*_npy.bash L13-20; E §3.4)
    c.build.embed_sample_fps = 1.0  # SAMPLE_FPS for video embeddings (02_embed_segments.bash L44-61; E §3.5)
    c.build.embed_max_frames = 64  # SAMPLE_MAX_FRAMES (02_embed_segments.bash L44-61; E §3.5)
    c.build.embed_instruction = "Represent the user's input"  # _dataset_defaults.bash L77-79 (E §0)
    # rows the teacher cut at max_tokens are dropped (06_convert_to_train_oneturn.bash L20; E §3.8)
    c.build.sft_exclude_finish_reasons = ("length",)
    c.build.sft_balance_seed = 42  # convert_match_grounding_to_oneturn.py --balance_seed default
    c.build.sft_balance_binary = False  # --balance_binary_by_downsample default 0 (06 does not set it)

    # --- the raw -> prepared build (`--config.mode=build`, vsr1_jax/prepare.py; E §6 step 4) ----------------------
    c.build.raw_videos = ""  # VIDEO_BASE: <video_id>.<ext> files (01_data_generate.bash L18)
    c.build.annotations = ""  # ANNO_ROOT: folder of the VERIFIED FIG jsonl files (01_data_generate.bash L14)
    # file names inside `annotations` (or absolute paths); dataset configs set the VERIFIED names (01 L15-17)
    c.build.train_annotation = "train.jsonl"
    c.build.test_annotation = "test.jsonl"
    c.build.video_extensions = ("mp4", "mkv", "webm", "avi")  # resolve_video_path order (PS L8-19; E §3.2)
    c.build.dataset_name = ""  # DATASET_NAME of the GRPO data_source (09 L24); "" = config.dataset
    # "all", a comma list or a range "embed_queries-index" of: annotations, npy_train, npy_test, embed_queries,
    # embed_videos, index, top1_pool, teacher, sft_convert, hard_negatives, grpo (start_from_scratch.bash L33-46)
    c.build.steps = "all"
    c.build.overwrite = False  # rerun steps whose marker says they finished (port choice)
    c.build.progress = True  # tqdm bars with rate / ETA per step (port choice)
    c.build.npy_workers = 10  # NUM_WORKERS (04_extract_train_npy.bash L21); threads here (PyAV frees the GIL)
    # a stream without a frame count (many webm/mkv): "original" = extract_npy.py's frames 0..63 (L115-117),
    # "estimate" = total = round(container duration x fps) as OpenCV reports it, then the 1 fps rule (port option)
    c.build.npy_unknown_frame_count = "original"
    c.build.extract_utc = ""  # meta.jsonl extract_utc: "" = now (extract_npy.py L217); fixed = reproducible files
    c.build.decode_workers = 8  # decode threads of the embedding step (port choice)
    c.build.query_chunk = 1024  # queries per resumable chunk (port choice; the original saves once at the end)
    c.build.video_chunk = 64  # videos per resumable chunk (port choice; the original saves every video, SAVE_EVERY=1)
    c.build.metrics_topk = (1, 5, 10, 100)  # TOPKS (07_eval_test_retrieval_npy.bash L19) -> test/metrics_npy.json
    # search engine: "checkpoint" = Qwen3-VL-Embedding at embedder_checkpoint (VIDEOSEARCH_EMBED_MODEL =
    # Qwen/Qwen3-VL-Embedding-2B, env.bash L32), "tiny" = the demo's tiny random embedder
    c.build.embedder = "checkpoint"
    c.build.embedder_checkpoint = ""
    # teacher: "checkpoint" = any dense Qwen3-VL at teacher_checkpoint (the original's VIDEOSEARCH_REASONING_MODEL
    # is Qwen/Qwen3-VL-30B-A3B-Thinking, env.bash L33: a MoE model the port cannot load), "tiny" = the demo policy
    c.build.teacher = "checkpoint"
    c.build.teacher_checkpoint = ""
    c.build.teacher_temperature = 0.4  # TEMPERATURE (05_generate_match_grounding.bash L33)
    c.build.teacher_top_p = 0.9  # TOP_P (05_generate_match_grounding.bash L34)
    c.build.teacher_max_new_tokens = 16384  # MAX_TOKENS (05_generate_match_grounding.bash L35)
    c.build.teacher_max_model_len = 32768  # LOCAL_MAX_MODEL_LEN (05_generate_match_grounding.bash L45)
    c.build.teacher_batch_size = 1  # LOCAL_BATCH_SIZE (05_generate_match_grounding.bash L40)
    c.build.teacher_seed = 42  # SEED (05_generate_match_grounding.bash L53; vLLM seed)
    c.build.teacher_chunk = 8  # pool rows per resumable chunk (port choice; the original appends every row)
    # the teacher's video item: npy frames, fps 1.0, max_pixels 200704 (05 L28-32); min/total pixels unset there,
    # so qwen-vl-utils' defaults: 128 tokens of 32x32 px per frame and MODEL_SEQ_LEN 128000 x 32² x 0.9
    c.build.teacher_video = ml_collections.ConfigDict({
        "min_pixels": 128 * 32 * 32, "max_pixels": 200704, "total_pixels": int(128000 * 32 * 32 * 0.9),
        "max_frames": 64, "fps": 1.0})

    # --- the GRPO rows' builder (09_build_verified_search_minimal_top1: grpo_data/, G §5); the rows carry
    # config.grpo.hard_negative_topk hard negatives each (the training reads that many) ------------------------
    c.build.grpo = ml_collections.ConfigDict()
    c.build.grpo.hard_negative_depth = 200  # FAISS search depth of the builder (S2:103, BM:211-212; G §2.3)
    c.build.grpo.augment_match_to_balance = True  # AUGMENT_MATCH_TO_BALANCE=1 (DD:59-61; G §5)
    c.build.grpo.target_match_ratio = 1.0  # TARGET_MATCH_RATIO (DD:59-61; G §5)
    c.build.grpo.augment_seed = 42  # DD:59-61 (G §5)
    c.build.grpo.drop_missing_video_npy = True  # BV --drop-missing-video-npy default 1 (G §5)

    return c
