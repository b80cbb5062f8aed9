"""Settings of the synthetic corpus (vsr1_jax.data.synthetic): sizes, rendering, query difficulty and seed; the
steps that mirror the original pipeline take their values from configs/_data.py."""
from __future__ import annotations

import ml_collections

from vsr1_jax.config_files import sibling

get_data_config = sibling(__file__, "_data").get_data_config
get_grpo_config = sibling(__file__, "_train").get_grpo_config


def get_synthetic_config() -> ml_collections.ConfigDict:
    data, grpo = get_data_config(), get_grpo_config()
    c = ml_collections.ConfigDict()
    c.seed = 0  # every random choice derives from this; same seed -> byte-identical files
    c.dataset = "synthetic"

    # --- corpus size: videos per split, queries per annotated event ----------------------------------------------
    c.train = ml_collections.ConfigDict()
    c.train.num_videos = 64
    c.train.queries_per_event = 2  # distinct wordings of the same event (each one raw-annotation row)
    c.test = ml_collections.ConfigDict()
    c.test.num_videos = 32
    c.test.queries_per_event = 2

    # --- rendering: frames at 1 fps, so frame i shows second i ------------------------------------------------
    c.video = ml_collections.ConfigDict()
    c.video.min_frames = 8  # even counts only (the npy step pads odd counts, eval_and_data.md §3.4)
    c.video.max_frames = 16
    c.video.height = 64
    c.video.width = 64
    c.video.shape_size = 12  # side / diameter of a shape, pixels
    c.video.min_span_sec = 2  # an event covers frames start..end inclusive, end - start >= this
    c.video.max_span_frac = 0.75  # ... and at most this fraction of the video, so some frames never show it
    c.video.two_event_prob = 0.3  # a second, non-overlapping event (another shape) in the same video
    c.video.distractor_prob = 0.5  # a static shape of another colour present in every frame

    # --- attribute vocabulary (name -> RGB). Shape and background colours are disjoint, so a shape's pixels can be
    # found by exact colour -------------------------------------------------------------------------------------
    c.attributes = ml_collections.ConfigDict()
    c.attributes.shapes = ("circle", "square", "triangle")
    c.attributes.colors = ml_collections.ConfigDict(
        {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 230), "yellow": (235, 205, 35)})
    c.attributes.backgrounds = ml_collections.ConfigDict(
        {"black": (16, 16, 16), "gray": (120, 120, 120), "white": (240, 240, 240)})
    c.attributes.directions = ("left", "right", "up", "down")
    c.attributes.lanes = ("first", "middle", "last")  # top/middle/bottom rows, or left/center/right columns

    # --- difficulty ------------------------------------------------------------------------------------------
    c.difficulty = ml_collections.ConfigDict()
    # Probability that an event copies an earlier event of the split and changes exactly one attribute: queries that
    # differ in one word, so retrieval confuses them. Every event's full attribute tuple stays unique in its split,
    # so each query is satisfied by exactly one video.
    c.difficulty.overlap_prob = 0.35
    # True: the train split shows none of the test split's event tuples (planned after it), so no test query's
    # description is a training description and the search engine must compose attributes (the demo, configs/toy.py).
    # False: the splits are planned independently (the world of the tests and the eval golden files).
    c.difficulty.disjoint_splits = False

    # --- embedding (what the search engine is called with) ------------------------------------------------------
    c.embed = ml_collections.ConfigDict()
    c.embed.text_batch_size = data.build.query_embed_batch_size  # 32 (embed_queries batch)
    c.embed.video_batch_size = data.build.segment_embed_batch_size  # 8 (SEGMENT_BATCH_SIZE)

    # --- the original's builder settings (configs/_data.py) ------------------------------------------------------
    c.build = ml_collections.ConfigDict()
    c.build.query_shuffle_seed = data.build.query_shuffle_seed  # query rows shuffled with seed 0
    c.build.hard_negative_topk_pool = data.build.hard_negative_topk_pool  # 50
    c.build.hard_negative_max = data.build.hard_negative_max  # 50
    c.build.top1_pool_match = data.build.top1_pool_match  # 1000
    c.build.top1_pool_not_match = data.build.top1_pool_not_match  # 1000
    c.build.top1_pool_seed = data.build.top1_pool_seed  # 42
    c.build.sft_exclude_finish_reasons = data.build.sft_exclude_finish_reasons  # ("length",)

    # SFT items: the original's top-1 pool has plenty of hits (R@1 ~ 20-55 %); a random embedder gets ~1/N, so
    # matched items are added as GRPO's builder adds them (GT video shown instead of the top-1, ⌈#not_matched ·
    # ratio⌉ matched in all). A synthetic-only step; set augment_match_to_balance False for the top-1 pool as is.
    c.sft = ml_collections.ConfigDict()
    c.sft.augment_match_to_balance = True
    c.sft.target_match_ratio = 1.0
    c.sft.augment_seed = data.build.grpo.augment_seed

    c.grpo = ml_collections.ConfigDict()
    c.grpo.hard_negative_topk = grpo.hard_negative_topk  # 24
    c.grpo.hard_negative_depth = data.build.grpo.hard_negative_depth  # 200
    c.grpo.augment_match_to_balance = data.build.grpo.augment_match_to_balance  # True
    c.grpo.target_match_ratio = data.build.grpo.target_match_ratio  # 1.0
    c.grpo.augment_seed = data.build.grpo.augment_seed  # 42

    # SFT reasoning text: "full" (teacher-style, several sentences), "short" (one sentence: what the tiny demo
    # policy can learn in a few hundred CPU steps) or "compare" (the short description, then each attribute as seen
    # against the query's, then the verdict)
    c.reasoning = "full"
    c.progress = True  # print one line per build step (and every `progress_every` videos) to stderr
    c.progress_every = 16
    return c
