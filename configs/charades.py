"""Evaluate a converted VideoSearch-R1 checkpoint on the prepared charades-sta test split.

    python -m vsr1_jax.main --config=configs/charades.py --config.data_root=/data --config.checkpoint=/ckpt/charades-stage2
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.base import get_config as base_config  # noqa: E402


def get_config():
    c = base_config()
    c.dataset = "charades-sta"
    c.output_dir = "outputs/charades"
    return c
