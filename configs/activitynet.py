"""Evaluate a converted VideoSearch-R1 checkpoint on the prepared activitynet test split.

    python -m vsr1_jax.main --config=configs/activitynet.py --config.data_root=/data --config.checkpoint=/ckpt/activitynet-stage2
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.base import get_config as base_config  # noqa: E402
from vsr1_jax.train.rewards import dataset_reward_overrides  # noqa: E402


def get_config():
    c = base_config()
    c.dataset = "activitynet"
    c.output_dir = "outputs/activitynet"
    # --config.mode=build: the VERIFIED file names in data.build.annotations (01_data_generate.bash L15-17;
    # the test split is val_2)
    c.data.build.train_annotation = "activitynet_fig_train.jsonl"
    c.data.build.test_annotation = "activitynet_fig_val_2.jsonl"
    c.data.build.dataset_name = "ActivityNet"  # GRPO data_source suffix (09_build_*.bash DATASET_NAME L24)
    # --config.mode=grpo: this dataset's reward weights and penalties (grpo.md §4, W-*:16-31)
    c.grpo.rewards.update(dataset_reward_overrides(c.dataset))
    return c
