"""Optimizers of the two stages as optax transformations over labelled parameter groups.

Stage 1 (sqr_and_sft.md §8, TRN `create_optimizer` L1801-1852): AdamW (0.9, 0.999, eps 1e-8, weight decay 0),
gradient clipping at global norm 1.0, linear decay to 0 with no warmup; the backbone (text model incl. embeddings and
LM head, the vision merger and the DeepStack mergers) at 2e-5 and the refine modules at 5e-5. The vision encoder, the
unused refine gate and the query embedder are frozen.
Stage 2 (grpo.md §3.4): AdamW at a constant 5e-7 with weight decay 0.01 except on biases and norms (HF's default
`get_decay_parameter_names`), clip 1.0; only the text model and the LM head train.

Frozen parameters are not differentiated at all (train/state.py splits them off), so the transformations here see
the trainable tree only, labelled by `labels`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

Path = tuple[str, ...]


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """`torch.nn.utils.clip_grad_norm_`: g * min(1, max_norm / (||g|| + 1e-6)) (optax's variant has no 1e-6)."""

    def update(updates, state, params=None):
        del params
        norm = optax.global_norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def linear_decay(lr: float, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
    """HF `get_linear_schedule_with_warmup`: 0 -> lr over the warmup, then lr -> 0 at `total_steps`."""
    decay = optax.linear_schedule(lr, 0.0, max(total_steps - warmup_steps, 1))
    if warmup_steps <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), decay], [warmup_steps])


def _labels_tree(params, label_of: Callable[[Path], str]):
    """The label of every leaf of an `nnx.State` / nested dict, from its key path."""
    def name(k):
        return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))

    def lab(path, _):
        keys = tuple(name(k) for k in path if name(k) != "value")
        return label_of(keys)

    return jax.tree_util.tree_map_with_path(lab, params)


class Optimizer(NamedTuple):
    tx: optax.GradientTransformation
    schedules: dict[str, optax.Schedule]   # label -> learning-rate schedule (for logging)


def adamw_groups(groups: dict[str, optax.Schedule], label_of: Callable[[Path], str], *, b1: float = 0.9,
                 b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                 decay_mask: Callable[[Path], bool] | None = None, clip: float | None = 1.0) -> Optimizer:
    """AdamW with one learning-rate schedule per label (`label_of(path)` names a leaf's group), after global-norm
    clipping over every trainable leaf. decay_mask(path) says which leaves get weight decay (default: all)."""

    def inner(schedule):
        mask = None
        if decay_mask is not None:
            mask = lambda p: _labels_tree(p, lambda k: decay_mask(k))  # noqa: E731
        return optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)

    tx = optax.multi_transform({name: inner(s) for name, s in groups.items()},
                               lambda p: _labels_tree(p, label_of))
    if clip is not None:
        tx = optax.chain(clip_by_global_norm_torch(clip), tx)
    return Optimizer(tx, dict(groups))


# ---- the two stages' parameter groups -----------------------------------------------------------------------
# Paths are (`"policy"` | `"head"`, ...) into the train state's params (train/state.py).
REFINE_FROZEN = ("gate_kernel", "gate_bias")  # use_refine_gate=False: requires_grad False (TRN L239-247)


def sft_trainable(path: Path) -> bool:
    """Stage 1: text model, vision merger + DeepStack mergers, refine modules except the gate (sqr_and_sft.md §8)."""
    if path[0] == "head":
        return path[-1] not in REFINE_FROZEN
    return path[1] == "text" or (path[1] == "visual" and path[2] in ("merger", "deepstack"))


def sft_label(path: Path) -> str:
    return "refine" if path[0] == "head" else "backbone"


def grpo_trainable(path: Path) -> bool:
    """Stage 2: the language model (embeddings, decoder, final norm) and the LM head only (grpo.md §3.4)."""
    return path[0] == "policy" and path[1] == "text"


def grpo_decays(path: Path) -> bool:
    """HF's default decay set: every weight except biases and norm scales (`get_decay_parameter_names`)."""
    leaf = path[-1]
    return not (leaf.endswith("bias") or "norm" in leaf)


def sft_optimizer(cfg, total_steps: int) -> Optimizer:
    """cfg: `settings.AdamW` of SFT (learning_rate, refine_learning_rate, warmup_steps, adam_*, weight_decay,
    max_grad_norm)."""
    groups = {"backbone": linear_decay(cfg.learning_rate, total_steps, cfg.warmup_steps),
              "refine": linear_decay(cfg.refine_learning_rate, total_steps, cfg.warmup_steps)}
    return adamw_groups(groups, sft_label, b1=cfg.adam_beta1, b2=cfg.adam_beta2, eps=cfg.adam_epsilon,
                        weight_decay=cfg.weight_decay, clip=cfg.max_grad_norm)


def grpo_optimizer(cfg) -> Optimizer:
    """cfg: `settings.AdamW` of GRPO (learning_rate, adam_*, weight_decay, max_grad_norm): constant learning rate."""
    return adamw_groups({"policy": optax.constant_schedule(cfg.learning_rate)}, lambda p: "policy",
                        b1=cfg.adam_beta1, b2=cfg.adam_beta2, eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay,
                        decay_mask=grpo_decays, clip=cfg.max_grad_norm)
