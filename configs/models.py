"""Model presets as ml_collections configs (HF config.json field names): the published Qwen3-VL 2B/4B/8B and
Qwen3-VL-Embedding-2B sizes, and the tiny test/demo size. The presets themselves live in
`vsr1_jax/models/qwen3_vl/config.py` (PRESETS); converted checkpoints carry their own config.json.

    --config=configs/models.py:qwen3_vl_4b
"""
import ml_collections

from vsr1_jax.models.qwen3_vl.config import PRESETS, get_preset


def get_config(preset: str = "qwen3_vl_2b") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    return ml_collections.ConfigDict(get_preset(preset).to_hf_dict())
