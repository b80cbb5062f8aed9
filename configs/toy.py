"""The demo that runs anywhere: a synthetic corpus and a tiny random model, built on first use.

    python -m vsr1_jax.main --config=configs/toy.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.base import get_config as base_config  # noqa: E402


def get_config():
    c = base_config()
    c.dataset = "synthetic"
    c.data_root = "outputs/toy/data"
    c.output_dir = "outputs/toy"
    c.model.dtype = "float32"
    c.demo.enabled = True
    # Random weights: a zero-initialised last projector layer (the original's Stage-1 init) would make every latent
    # zero; keep them random so the demo exercises the refined-query path.
    c.demo.zero_init_refine = False
    c.eval.max_new_tokens = 128     # the original toy's value (eval_and_data.md §6 step 7)
    # The synthetic frames are 64x64: keep them at that size instead of upscaling to the eval minimum.
    c.video.eval.min_pixels = 32 * 32
    c.agent.batch_size = 16
    return c
