"""Tiny random HF Qwen3-VL checkpoints for tests (built with transformers, saved with `save_pretrained`)."""
from __future__ import annotations

import json
import os

import numpy as np

IMAGE_ID, VIDEO_ID, VSTART_ID, VEND_ID = 1000, 1001, 1002, 1003


def tiny_hf_config(*, tie: bool = False, vocab_size: int = 1024, text_layers: int = 2, vision_depth: int = 2,
                   deepstack=(0, 1), ids=(IMAGE_ID, VIDEO_ID, VSTART_ID, VEND_ID)):
    from transformers import Qwen3VLConfig
    return Qwen3VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=4096, tie_word_embeddings=tie,
                         rope_parameters=dict(rope_type="default", rope_theta=5e6, mrope_section=[4, 2, 2],
                                              mrope_interleaved=True)),
        vision_config=dict(depth=vision_depth, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=64, num_position_embeddings=64, deepstack_visual_indexes=list(deepstack)),
        image_token_id=ids[0], video_token_id=ids[1], vision_start_token_id=ids[2], vision_end_token_id=ids[3],
        tie_word_embeddings=tie)


def tiny_hf_model(seed: int = 0, **cfg_kw):
    """A tiny random HF model in eval mode; norms and biases perturbed so they are not trivially 1/0."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(tiny_hf_config(**cfg_kw)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def save_tiny(path: str, model, *, dtype: str = "float32", max_shard_size=None, rope_form: str = "parameters"):
    """save_pretrained, optionally in bf16 / sharded / with the old `rope_scaling` + `rope_theta` config form."""
    import torch
    m = model.to(getattr(torch, dtype))
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    m.save_pretrained(path, **kw)
    model.to(torch.float32)
    if rope_form == "scaling":
        cfg_path = os.path.join(path, "config.json")
        with open(cfg_path) as f:
            d = json.load(f)
        rp = d["text_config"].pop("rope_parameters")
        d["text_config"]["rope_theta"] = rp.pop("rope_theta")
        d["text_config"]["rope_scaling"] = {"rope_type": "default", "type": "default",
                                            "mrope_section": rp["mrope_section"], "mrope_interleaved": True}
        with open(cfg_path, "w") as f:
            json.dump(d, f, indent=2)
    return path


def random_pixels(grid, seed=0):
    return np.random.RandomState(seed).randn(int(np.prod(grid)), 1536).astype(np.float32)
