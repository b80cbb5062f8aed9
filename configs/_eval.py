"""Evaluation defaults of the original (inference.bash -> TCK -> EVAL), as one ml_collections ConfigDict.

Values are what the shipped inference path actually runs with (spec eval_and_data.md §0 L15-35: TCK's shell defaults
with inference.bash's MAX_TURN=2), not EVAL's argparse defaults (L31-33), which apply only when EVAL runs alone.
Cite: "E:<line>" = /work/shared/spec/eval_and_data.md line, "R:<n>" = spec README decision n.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_eval_config() -> ml_collections.ConfigDict:
    """Return the eval ConfigDict; callers override fields (e.g. ``cfg.max_turn = 3``) before use."""
    c = ml_collections.ConfigDict()

    # ---- multi-turn loop
    c.max_turn = 2  # inference.bash L116-121 overrides TCK's 3 (E:18, E:24)
    c.temporal = True  # TCK TEMPORAL=True (E:24)
    c.refine_token = "<REFINE>"  # TCK REFINE_TOKEN (E:25)
    c.refine_token_count = 8  # TCK REFINE_TOKEN_COUNT=8: latent rollout depth N (E:25; EVAL argparse says 1)
    c.use_refine_gate = False  # TCK (E:26); refine_gate exists but is unused
    c.use_query_embedder_path = True  # TCK (E:26): refined query = embedder(original text + 8 latents), §4.3
    c.qfinal_pooling = "latent_last"  # TCK QFINAL_POOLING (E:28)
    c.qfinal_normalize = True  # TCK QFINAL_NORMALIZE (E:28)
    c.query_embedder_max_length = 128  # TCK QUERY_EMBEDDER_MAX_LENGTH (E:28)
    c.query_embedder_input_prefix = "Represent the user's input"  # _dataset_defaults.bash L77-79 (E:21); "." appended
    c.use_updated_query = False  # turn-1 q_orig = precomputed query_embeddings row (E:210-211)

    # ---- decoding: greedy (vLLM SamplingParams temperature 0, E:276-278)
    c.max_new_tokens = 1024  # TCK EXTERNAL_EVAL_MAX_NEW_TOKENS (E:29, E:277); the toy uses 128
    # TCK MODEL_MAX_LENGTH (E:29): the original truncates longer prompts; the port skips such a query and counts it
    # (`prompt_too_long`), since a cut prompt loses the video's end or the question
    c.model_max_length = 20384
    c.temperature = 0.0  # 0 = greedy
    c.top_p = 1.0
    c.top_k = -1  # -1 = off
    c.repetition_penalty = 1.0  # the only supported value
    # the original evaluates one query at a time (VLLM_MAX_NUM_SEQS=1, E:30); the port batches (config.agent)
    # without changing results, and runs in config.model.dtype (TCK BF16=True, E:29)
    c.seed = 42  # TCK SEED=42 (E:29)

    # video input: the eval phase of configs/_video.py (get_video_config().eval) is the one source of truth

    # ---- data selection (E:185-186); None = every row
    c.eval_limit_ratio = config_dict.placeholder(float)
    c.max_samples = config_dict.placeholder(int)
    c.rerank_topk = "all"  # retrieval is always over the whole test corpus (E:192-193)

    # ---- retrieval engine (R:9, §4 E:450-506)
    c.retrieval = ml_collections.ConfigDict()
    c.retrieval.engine = "device"  # "device" (exact jnp matmul + top_k) | "faiss" (host IndexFlatIP via pure_callback)
    # the vector size is read from the embedding files (Qwen3-VL-Embedding-2B: 2048, E:453-455)

    # ---- metrics / report (§1)
    c.iou_thresholds = (0.3, 0.5, 0.7)  # TCK IOU_THRESHOLDS (E:24); inclusive >= (E:83-84)
    c.topk = (1, 5, 10, 100)  # TCK TOPK (E:29)
    return c


def get_config() -> ml_collections.ConfigDict:
    """Entry point for ml_collections.config_flags."""
    return get_eval_config()
