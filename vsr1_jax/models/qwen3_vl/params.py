"""One table mapping HF safetensors keys of Qwen3-VL (and the VideoSearch-R1 `refine_*` tensors) to our parameters.

Each rule says which HF key (with `{i}` for a layer / merger index) fills which of our arrays, whether our array
is stacked over that index, and how the tensor is laid out:
  "T"     torch Linear (out, in) -> kernel (in, out)
  "conv"  Conv3d (out, C, T, P, P) -> kernel (C*T*P*P, out)  (a patch row is flattened in (C, T, P, P) order)
  "copy"  as is (norm weights, biases, embedding tables)
The same table drives both directions, so HF -> ours -> HF is exact (transposes and reshapes only).
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig
from vsr1_jax.models.qwen3_vl.model import Qwen3VL, abstract_model


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str               # HF key, may contain {i}
    ours: tuple[str, ...]  # path in our state
    kind: str             # "T" | "conv" | "copy"
    count: int = 0        # >0: stacked over i in range(count)


@dataclasses.dataclass(frozen=True)
class Entry:
    hf: str
    ours: tuple[str, ...]
    kind: str
    index: int | None     # position in our stacked array, or None


def model_rules(cfg: Qwen3VLConfig, prefix: str = "") -> list[Rule]:
    V, L = cfg.vision.depth, cfg.text.num_hidden_layers
    nds = len(cfg.vision.deepstack_visual_indexes)
    vb, tl = "model.visual.blocks.{i}.", "model.language_model.layers.{i}."
    rules = [
        Rule("model.visual.patch_embed.proj.weight", ("visual", "patch_kernel"), "conv"),
        Rule("model.visual.patch_embed.proj.bias", ("visual", "patch_bias"), "copy"),
        Rule("model.visual.pos_embed.weight", ("visual", "pos_embed"), "copy"),
    ]
    for hf, ours, kind in [("norm1.weight", "norm1_scale", "copy"), ("norm1.bias", "norm1_bias", "copy"),
                           ("attn.qkv.weight", "qkv_kernel", "T"), ("attn.qkv.bias", "qkv_bias", "copy"),
                           ("attn.proj.weight", "proj_kernel", "T"), ("attn.proj.bias", "proj_bias", "copy"),
                           ("norm2.weight", "norm2_scale", "copy"), ("norm2.bias", "norm2_bias", "copy"),
                           ("mlp.linear_fc1.weight", "fc1_kernel", "T"), ("mlp.linear_fc1.bias", "fc1_bias", "copy"),
                           ("mlp.linear_fc2.weight", "fc2_kernel", "T"), ("mlp.linear_fc2.bias", "fc2_bias", "copy")]:
        rules.append(Rule(vb + hf, ("visual", ours), kind, V))
    merger = [("norm.weight", "norm_scale", "copy"), ("norm.bias", "norm_bias", "copy"),
              ("linear_fc1.weight", "fc1_kernel", "T"), ("linear_fc1.bias", "fc1_bias", "copy"),
              ("linear_fc2.weight", "fc2_kernel", "T"), ("linear_fc2.bias", "fc2_bias", "copy")]
    for hf, ours, kind in merger:
        rules.append(Rule("model.visual.merger." + hf, ("visual", "merger", ours), kind))
        if nds:
            rules.append(Rule("model.visual.deepstack_merger_list.{i}." + hf, ("visual", "deepstack", ours), kind,
                              nds))
    rules.append(Rule("model.language_model.embed_tokens.weight", ("text", "embed"), "copy"))
    for hf, ours, kind in [("input_layernorm.weight", "input_norm", "copy"),
                           ("self_attn.q_proj.weight", "q_kernel", "T"), ("self_attn.k_proj.weight", "k_kernel", "T"),
                           ("self_attn.v_proj.weight", "v_kernel", "T"), ("self_attn.o_proj.weight", "o_kernel", "T"),
                           ("self_attn.q_norm.weight", "q_norm", "copy"), ("self_attn.k_norm.weight", "k_norm", "copy"),
                           ("post_attention_layernorm.weight", "post_norm", "copy"),
                           ("mlp.gate_proj.weight", "gate_kernel", "T"), ("mlp.up_proj.weight", "up_kernel", "T"),
                           ("mlp.down_proj.weight", "down_kernel", "T")]:
        rules.append(Rule(tl + hf, ("text", ours), kind, L))
    rules.append(Rule("model.language_model.norm.weight", ("text", "final_norm"), "copy"))
    if not cfg.tie_word_embeddings:
        rules.append(Rule("lm_head.weight", ("text", "lm_head"), "T"))
    return [dataclasses.replace(r, hf=prefix + r.hf) for r in rules]


def sqr_rules() -> list[Rule]:
    """`refine_*` tensors of a released VideoSearch-R1 policy (nn.Sequential indices; sqr_and_sft.md §10 item 8)."""
    s = ("sqr",)
    return [
        Rule("refine_projector.0.weight", s + ("proj_fc1_kernel",), "T"),
        Rule("refine_projector.0.bias", s + ("proj_fc1_bias",), "copy"),
        Rule("refine_projector.1.weight", s + ("proj_norm_scale",), "copy"),
        Rule("refine_projector.1.bias", s + ("proj_norm_bias",), "copy"),
        Rule("refine_projector.3.weight", s + ("proj_fc2_kernel",), "T"),
        Rule("refine_projector.3.bias", s + ("proj_fc2_bias",), "copy"),
        Rule("refine_gate.weight", s + ("gate_kernel",), "T"),
        Rule("refine_gate.bias", s + ("gate_bias",), "copy"),
        Rule("refine_latent_input_projector.0.weight", s + ("latent_norm_scale",), "copy"),
        Rule("refine_latent_input_projector.0.bias", s + ("latent_norm_bias",), "copy"),
        Rule("refine_latent_input_projector.1.weight", s + ("latent_kernel",), "T"),
        Rule("refine_latent_input_projector.1.bias", s + ("latent_bias",), "copy"),
        Rule("refine_append_input_projector.0.weight", s + ("append_norm_scale",), "copy"),
        Rule("refine_append_input_projector.0.bias", s + ("append_norm_bias",), "copy"),
        Rule("refine_append_input_projector.1.weight", s + ("append_kernel",), "T"),
        Rule("refine_append_input_projector.1.bias", s + ("append_bias",), "copy"),
    ]


def expand(rules: list[Rule]) -> Iterator[Entry]:
    for r in rules:
        if r.count:
            for i in range(r.count):
                yield Entry(r.hf.format(i=i), r.ours, r.kind, i)
        else:
            yield Entry(r.hf, r.ours, r.kind, None)


def hf_to_ours(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "T":
        return np.ascontiguousarray(x.T)
    if kind == "conv":
        return np.ascontiguousarray(x.reshape(x.shape[0], -1).T)
    return x


def ours_to_hf(x: np.ndarray, kind: str, hf_shape: tuple[int, ...] | None = None) -> np.ndarray:
    if kind == "T":
        return np.ascontiguousarray(x.T)
    if kind == "conv":
        return np.ascontiguousarray(x.T).reshape(hf_shape)
    return x


def expected_hf_shape(entry: Entry, ours_shape: tuple[int, ...], cfg: Qwen3VLConfig) -> tuple[int, ...]:
    """HF shape of one entry given our (possibly stacked) array shape."""
    s = ours_shape[1:] if entry.index is not None else ours_shape
    if entry.kind == "T":
        return tuple(reversed(s))
    if entry.kind == "conv":
        v = cfg.vision
        return (s[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    return tuple(s)


def flat_shapes(module) -> dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]]:
    """Path -> (shape, dtype) of every nnx.Param of a (possibly abstract) module."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        v = var.get_value() if hasattr(var, "get_value") else var.value
        out[tuple(str(p) for p in path)] = (tuple(v.shape), np.dtype(v.dtype))
    return out


def assemble(entries: list[Entry], shapes: dict, get_tensor, dtype=None, on_tensor=None) -> dict:
    """Fill our arrays from HF tensors, one tensor at a time.

    get_tensor(hf_key) -> np.ndarray (raises KeyError when absent). Shapes are checked per key.
    dtype None keeps the checkpoint's dtype. Returns {path: np.ndarray}.
    """
    out: dict[tuple[str, ...], np.ndarray] = {}
    for e in entries:
        x = get_tensor(e.hf)
        y = hf_to_ours(np.asarray(x), e.kind) if e.kind != "conv" else None
        shape, _ = shapes[e.ours]
        want = shape[1:] if e.index is not None else shape
        if e.kind == "conv":
            if x.ndim != 5 or x.shape[0] != want[1] or int(np.prod(x.shape[1:])) != want[0]:
                raise ValueError(f"{e.hf}: shape mismatch, expected {(want[1],) + ('C', 'T', 'P', 'P')} with "
                                 f"C*T*P*P={want[0]}, got {tuple(x.shape)}")
            y = hf_to_ours(np.asarray(x), e.kind)
        if tuple(y.shape) != tuple(want):
            exp = tuple(reversed(want)) if e.kind == "T" else tuple(want)
            raise ValueError(f"{e.hf}: shape mismatch, expected {exp}, got {tuple(x.shape)}")
        dt = np.dtype(dtype) if dtype is not None else y.dtype
        if e.index is None:
            out[e.ours] = y.astype(dt, copy=False)
        else:
            if e.ours not in out:
                out[e.ours] = np.empty(shape, dt)
            out[e.ours][e.index] = y
        if on_tensor is not None:
            on_tensor(e)
    return out


def load_flat(module, flat: dict, dtype=None) -> None:
    """Set every nnx.Param of `module` from {path tuple: array} (all paths must be present)."""
    state = nnx.to_flat_state(nnx.state(module, nnx.Param))
    missing = [p for p, _ in state if tuple(str(x) for x in p) not in flat]
    if missing:
        raise KeyError(f"no values for parameters: {missing[:10]}{' …' if len(missing) > 10 else ''}")
    for path, var in state:
        v = flat[tuple(str(x) for x in path)]
        var.set_value(jnp.asarray(v, dtype=dtype) if dtype is not None else jnp.asarray(v))
    nnx.update(module, nnx.from_flat_state(state))


def model_from_hf_state_dict(cfg: Qwen3VLConfig, state_dict: dict, *, dtype=None, prefix: str = ""):
    """Build a `Qwen3VL` from an in-memory {hf_key: array} (tests, tools). Unknown keys are ignored here."""
    shapes = flat_shapes(abstract_model(cfg))
    flat = assemble(list(expand(model_rules(cfg, prefix))), shapes, state_dict.__getitem__, dtype=dtype)
    model = Qwen3VL(cfg, rngs=None) if dtype is None else Qwen3VL(cfg, param_dtype=dtype, rngs=None)
    load_flat(model, flat)
    return model
