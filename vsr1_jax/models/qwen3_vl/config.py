"""Qwen3-VL architecture configs: presets for the published sizes, and reading/writing HF `config.json`.

Field names follow HF transformers (`configuration_qwen3_vl.py`); see shared/spec/qwen3_vl.md §2.3 and part B.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from vsr1_jax.errors import UserError

SUPPORTED_MODEL_TYPES = ("qwen3_vl",)


class ConfigError(UserError, ValueError):
    """A checkpoint's config.json cannot be turned into a Qwen3-VL config; the message names file and field."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 24
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 16
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    out_hidden_size: int = 2048
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = (5, 11, 17)
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch row: C * temporal_patch * patch * patch (1536 for Qwen3-VL)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5_000_000.0
    mrope_section: tuple[int, int, int] = (24, 20, 20)
    max_position_embeddings: int = 262144
    hidden_act: str = "silu"
    attention_bias: bool = False
    initializer_range: float = 0.02


@dataclasses.dataclass(frozen=True)
class Qwen3VLConfig:
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = True

    def replace(self, **kw) -> "Qwen3VLConfig":
        return dataclasses.replace(self, **kw)

    def with_vocab_size(self, vocab_size: int) -> "Qwen3VLConfig":
        return dataclasses.replace(self, text=dataclasses.replace(self.text, vocab_size=vocab_size))

    # ---- HF config.json ------------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "Qwen3VLConfig":
        """Reads both config forms: `rope_parameters` (transformers >= 5) and `rope_scaling` + `rope_theta` (4.x)."""
        mt = d.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type={mt!r} is not supported (expected one of {SUPPORTED_MODEL_TYPES}); "
                "vsr1_jax ports dense Qwen3-VL only (Qwen3-VL-MoE is not supported)."
            )
        for key in ("text_config", "vision_config"):
            if not isinstance(d.get(key), dict):
                raise ConfigError(f"{source}: field {key!r} is missing or not an object")
        t, v = d["text_config"], d["vision_config"]

        def need(sub: dict, name: str, where: str):
            if name not in sub:
                raise ConfigError(f"{source}: field {where}.{name} is missing")
            return sub[name]

        rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
        theta = rope.get("rope_theta", t.get("rope_theta", d.get("rope_theta")))
        if theta is None:
            raise ConfigError(f"{source}: text_config has neither rope_parameters.rope_theta nor rope_theta")
        section = rope.get("mrope_section")
        if section is None:
            raise ConfigError(f"{source}: text_config rope parameters lack mrope_section")
        head_dim = t.get("head_dim") or need(t, "hidden_size", "text_config") // need(
            t, "num_attention_heads", "text_config")
        if sum(section) != head_dim // 2:
            raise ConfigError(
                f"{source}: text_config mrope_section {section} must sum to head_dim/2 = {head_dim // 2}")
        vrope = v.get("rope_parameters") or {}
        tie = d.get("tie_word_embeddings", t.get("tie_word_embeddings", False))
        text = TextConfig(
            vocab_size=need(t, "vocab_size", "text_config"),
            hidden_size=need(t, "hidden_size", "text_config"),
            intermediate_size=need(t, "intermediate_size", "text_config"),
            num_hidden_layers=need(t, "num_hidden_layers", "text_config"),
            num_attention_heads=need(t, "num_attention_heads", "text_config"),
            num_key_value_heads=t.get("num_key_value_heads", t["num_attention_heads"]),
            head_dim=head_dim,
            rms_norm_eps=t.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            mrope_section=tuple(int(s) for s in section),
            max_position_embeddings=t.get("max_position_embeddings", 262144),
            hidden_act=t.get("hidden_act", "silu"),
            attention_bias=bool(t.get("attention_bias", False)),
            initializer_range=t.get("initializer_range", 0.02),
        )
        if text.attention_bias:
            raise ConfigError(f"{source}: text_config.attention_bias=true is not supported (Qwen3-VL has no biases)")
        vision = VisionConfig(
            depth=need(v, "depth", "vision_config"),
            hidden_size=need(v, "hidden_size", "vision_config"),
            intermediate_size=need(v, "intermediate_size", "vision_config"),
            num_heads=need(v, "num_heads", "vision_config"),
            in_channels=v.get("in_channels", 3),
            patch_size=v.get("patch_size", 16),
            spatial_merge_size=v.get("spatial_merge_size", 2),
            temporal_patch_size=v.get("temporal_patch_size", 2),
            out_hidden_size=need(v, "out_hidden_size", "vision_config"),
            num_position_embeddings=v.get("num_position_embeddings", 2304),
            deepstack_visual_indexes=tuple(v.get("deepstack_visual_indexes", (5, 11, 17))),
            hidden_act=v.get("hidden_act", "gelu_pytorch_tanh"),
            rope_theta=float(vrope.get("rope_theta", 10000.0)),
            initializer_range=v.get("initializer_range", 0.02),
        )
        if vision.out_hidden_size != text.hidden_size:
            raise ConfigError(f"{source}: vision_config.out_hidden_size ({vision.out_hidden_size}) must equal "
                              f"text_config.hidden_size ({text.hidden_size})")
        return cls(
            text=text, vision=vision,
            image_token_id=d.get("image_token_id", 151655), video_token_id=d.get("video_token_id", 151656),
            vision_start_token_id=d.get("vision_start_token_id", 151652),
            vision_end_token_id=d.get("vision_end_token_id", 151653),
            tie_word_embeddings=bool(tie),
        )

    @classmethod
    def from_json(cls, path: str) -> "Qwen3VLConfig":
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.exists(path):
            raise ConfigError(f"{path}: not found (a Qwen3-VL checkpoint folder must hold config.json)")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(d, source=path)

    def to_hf_dict(self) -> dict[str, Any]:
        """The `rope_parameters` form (transformers >= 5); loadable by `Qwen3VLConfig(**d)` in HF."""
        t, v = self.text, self.vision
        return {
            "architectures": ["Qwen3VLForConditionalGeneration"],
            "model_type": "qwen3_vl",
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
            "text_config": {
                "model_type": "qwen3_vl_text", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
                "head_dim": t.head_dim, "rms_norm_eps": t.rms_norm_eps, "hidden_act": t.hidden_act,
                "max_position_embeddings": t.max_position_embeddings, "attention_bias": False,
                "attention_dropout": 0.0, "initializer_range": t.initializer_range,
                "tie_word_embeddings": self.tie_word_embeddings,
                "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta,
                                    "mrope_section": list(t.mrope_section), "mrope_interleaved": True},
            },
            "vision_config": {
                "model_type": "qwen3_vl_vision", "depth": v.depth, "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size, "num_heads": v.num_heads,
                "in_channels": v.in_channels, "patch_size": v.patch_size,
                "spatial_merge_size": v.spatial_merge_size, "temporal_patch_size": v.temporal_patch_size,
                "out_hidden_size": v.out_hidden_size, "num_position_embeddings": v.num_position_embeddings,
                "deepstack_visual_indexes": list(v.deepstack_visual_indexes), "hidden_act": v.hidden_act,
                "initializer_range": v.initializer_range,
                "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
            },
        }


# ---- presets (text sizes from shared/spec/qwen3_vl.md §2.3; vision from sqr_and_sft.md §1) ---------------------
_VISION_SMALL = VisionConfig(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                             deepstack_visual_indexes=(5, 11, 17))
_VISION_LARGE = VisionConfig(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                             deepstack_visual_indexes=(8, 16, 24))


def _preset(text: TextConfig, vision: VisionConfig, tie: bool) -> Qwen3VLConfig:
    return Qwen3VLConfig(text=text, vision=dataclasses.replace(vision, out_hidden_size=text.hidden_size),
                         tie_word_embeddings=tie)


PRESETS: dict[str, Qwen3VLConfig] = {
    "qwen3_vl_2b": _preset(TextConfig(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                                      num_attention_heads=16, num_key_value_heads=8), _VISION_SMALL, True),
    "qwen3_vl_4b": _preset(TextConfig(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                                      num_attention_heads=32, num_key_value_heads=8), _VISION_SMALL, True),
    "qwen3_vl_8b": _preset(TextConfig(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                      num_attention_heads=32, num_key_value_heads=8), _VISION_LARGE, False),
    # Qwen3-VL-Embedding-2B is the 2B architecture (hidden 2048 = the retrieval dim D).
    "qwen3_vl_embedding_2b": _preset(TextConfig(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                                                num_attention_heads=16, num_key_value_heads=8),
                                     _VISION_SMALL, True),
    # Tiny config for tests and the demo (the measured tiny config of qwen3_vl.md part B). Token ids are those of
    # `data.tiny_tokenizer.build_tiny_tokenizer` (795 tokens; the 1024-row table is larger, as Qwen's 151936 is).
    "tiny": Qwen3VLConfig(
        text=TextConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, mrope_section=(4, 2, 2),
                        max_position_embeddings=4096),
        vision=VisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                            num_position_embeddings=64, deepstack_visual_indexes=(0, 1)),
        image_token_id=780, video_token_id=781, vision_start_token_id=777, vision_end_token_id=778,
        tie_word_embeddings=False,
    ),
}


def get_preset(name: str) -> Qwen3VLConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]
