"""Tiny random HF Qwen3-VL checkpoints for tests (built with transformers, saved with `save_pretrained`)."""
from __future__ import annotations

import json
import os

import numpy as np

from vsr1_jax.data.tiny_tokenizer import build_tiny_tokenizer

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


# Released VideoSearch-R1 layout (spec README decision 8, sqr_and_sft.md §2.1, §3, §10 item 8).
RELEASED_D = 48  # refine_projector output dim D; differs from the hidden size 64 so a missed transpose shows


def refine_tensors(H: int, D: int, He: int, seed: int = 0) -> dict:
    """Random `refine_*` tensors of a released policy in torch layout (Linear (out, in), LayerNorm (n,))."""
    rs = np.random.RandomState(seed)
    r = lambda *s: (0.1 * rs.randn(*s)).astype(np.float32)  # noqa: E731
    return {
        "refine_projector.0.weight": r(D, H), "refine_projector.0.bias": r(D),
        "refine_projector.1.weight": 1 + r(D), "refine_projector.1.bias": r(D),
        "refine_projector.3.weight": r(D, D), "refine_projector.3.bias": r(D),
        "refine_gate.weight": r(1, H), "refine_gate.bias": r(1),
        "refine_latent_input_projector.0.weight": 1 + r(D), "refine_latent_input_projector.0.bias": r(D),
        "refine_latent_input_projector.1.weight": r(H, D), "refine_latent_input_projector.1.bias": r(H),
        "refine_append_input_projector.0.weight": 1 + r(D), "refine_append_input_projector.0.bias": r(D),
        "refine_append_input_projector.1.weight": r(He, D), "refine_append_input_projector.1.bias": r(He),
    }


def make_released_fixture(path: str, *, seed: int = 0, dtype: str = "float32") -> dict:
    """A tiny released-VideoSearch-R1-style folder at `path`.

    Policy: tied tiny Qwen3-VL whose vocabulary is the tiny tokenizer's (len(tokenizer), `<REFINE>` last) with the
    `refine_*` tensors added to its safetensors; tokenizer files (with `<REFINE>`), generation/preprocessor configs;
    `query_embedder/`: a separate tiny Qwen3-VL (own seed) with the tokenizer without `<REFINE>`.
    Returns {"policy", "embedder" (HF models), "refine" ({key: np.ndarray}), "tokenizer", "vocab_size"}.
    """
    import safetensors.torch
    import torch

    os.makedirs(path, exist_ok=True)
    tok = build_tiny_tokenizer(out_dir=path, with_refine=True)
    vocab = len(tok)
    ids = tuple(tok.convert_tokens_to_ids(t) for t in
                ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"))
    policy = tiny_hf_model(seed, tie=True, vocab_size=vocab, ids=ids)
    save_tiny(path, policy, dtype=dtype)
    weights = os.path.join(path, "model.safetensors")
    sd = safetensors.torch.load_file(weights)
    refine = refine_tensors(policy.config.text_config.hidden_size, RELEASED_D,
                            policy.config.text_config.hidden_size, seed=seed + 7)
    sd.update({k: torch.from_numpy(v).to(getattr(torch, dtype)) for k, v in refine.items()})
    safetensors.torch.save_file(sd, weights, metadata={"format": "pt"})
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump({"processor_class": "Qwen3VLProcessor", "patch_size": 16, "merge_size": 2}, f)

    emb_dir = os.path.join(path, "query_embedder")
    os.makedirs(emb_dir, exist_ok=True)
    build_tiny_tokenizer(out_dir=emb_dir, with_refine=False)
    embedder = tiny_hf_model(seed + 100, tie=True, vocab_size=vocab, ids=ids)
    save_tiny(emb_dir, embedder, dtype=dtype)
    return {"policy": policy, "embedder": embedder, "refine": refine, "tokenizer": tok, "vocab_size": vocab}
