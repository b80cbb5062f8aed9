"""Evaluate a converted VideoSearch-R1 checkpoint on the prepared activitynet test split.

    python -m vsr1_jax.main --config=configs/activitynet.py --config.data_root=/data --config.checkpoint=/ckpt/activitynet-stage2
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.base import get_config as base_config  # noqa: E402


def get_config():
    c = base_config()
    c.dataset = "activitynet"
    c.output_dir = "outputs/activitynet"
    return c
