"""Evaluate a converted VideoSearch-R1 checkpoint on the prepared didemo test split.

    python -m vsr1_jax.main --config=configs/didemo.py --config.data_root=/data --config.checkpoint=/ckpt/didemo-stage2
"""
from vsr1_jax.config_files import sibling
from vsr1_jax.train.rewards import dataset_reward_overrides

base_config = sibling(__file__, "base").get_config


def get_config():
    c = base_config()
    c.dataset = "didemo"
    c.output_dir = "outputs/didemo"
    # --config.mode=build: the VERIFIED file names in data.build.annotations (01_data_generate_didemo.bash L15-17)
    c.data.build.train_annotation = "didemo_fig_train.jsonl"
    c.data.build.test_annotation = "didemo_fig_test.jsonl"
    c.data.build.dataset_name = "DiDeMo"  # GRPO data_source suffix (09 DATASET_NAME; spelling inferred)
    # --config.mode=grpo: this dataset's reward weights and penalties (grpo.md §4, W-*:16-31)
    c.grpo.rewards.update(dataset_reward_overrides(c.dataset))
    return c
