"""The raw -> prepared build on tiny models, for tests and a first try: the demo's tiny random embedder as the search
engine and its tiny random policy as the teacher, so the eval demo (`configs/toy.py` models) runs on the result.

    python -m vsr1_jax.main --config=configs/build_toy.py --config.data.build.raw_videos=<videos> \\
        --config.data.build.annotations=<folder with train.jsonl and test.jsonl>
"""
from vsr1_jax.config_files import sibling

base_config = sibling(__file__, "base").get_config


def get_config():
    c = base_config()
    c.mode = "build"
    c.dataset = "toy_build"
    c.data_root = "outputs/build_toy/data"
    c.output_dir = "outputs/build_toy"
    c.model.dtype = "float32"
    c.demo.enabled = True  # eval on the result with the demo's tiny models (same embedder as the build)
    c.demo.zero_init_refine = False
    c.eval.max_new_tokens = 32
    c.video.eval.min_pixels = 32 * 32  # keep tiny frames tiny (configs/toy.py does the same)
    b = c.data.build
    b.embedder = "tiny"
    b.teacher = "tiny"
    b.teacher_max_new_tokens = 16  # the original toy uses 1024 (eval_and_data.md §6); a random policy babbles
    b.teacher_max_model_len = 8192  # the original toy's max_len (eval_and_data.md §6)
    b.teacher_batch_size = 4
    b.teacher_video.min_pixels = 32 * 32
    # A random policy never emits <|im_end|> in 16 tokens, so every row would end with finish_reason "length" and
    # the original's filter would drop them all; keep them (the filter itself is tested on constructed rows).
    b.sft_exclude_finish_reasons = ()
    b.hard_negative_topk_pool = 10  # the original toy's hard-negative pool 10/10 (eval_and_data.md §6)
    b.hard_negative_max = 10
    c.grpo.hard_negative_topk = 8  # the original toy's GRPO hard negatives 8 of depth 32 (§6)
    b.grpo.hard_negative_depth = 32
    b.npy_workers = 2
    b.decode_workers = 2
    b.video_max_frames = 32  # the original toy's VIDEO_MAXLEN=32 (§6)
    b.embed_max_frames = 32  # SAMPLE_MAX_FRAMES=32 (§6)
    return c
