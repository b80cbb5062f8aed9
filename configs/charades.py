"""Evaluate a converted VideoSearch-R1 checkpoint on the prepared charades-sta test split.

    python -m vsr1_jax.main --config=configs/charades.py --config.data_root=/data --config.checkpoint=/ckpt/charades-stage2
"""
from vsr1_jax.config_files import sibling
from vsr1_jax.train.rewards import dataset_reward_overrides

base_config = sibling(__file__, "base").get_config


def get_config():
    c = base_config()
    c.dataset = "charades-sta"
    c.output_dir = "outputs/charades"
    # --config.mode=build: the VERIFIED file names in data.build.annotations (01_data_generate_charades.bash L15-17)
    c.data.build.train_annotation = "charades_fig_train.jsonl"
    c.data.build.test_annotation = "charades_fig_test.jsonl"
    c.data.build.dataset_name = "Charades"  # GRPO data_source suffix (09_build_*.bash DATASET_NAME L24)
    # --config.mode=grpo: this dataset's reward weights and penalties (grpo.md §4, W-*:16-31)
    c.grpo.rewards.update(dataset_reward_overrides(c.dataset))
    return c
