"""Stage-2 GRPO (grpo.md §3; spec README decisions 5 and 6): group advantages, the clipped token objective with a
k3 KL to the frozen Stage-1 reference, the scorer that computes per-token log-probs of the sampled ids in exactly
the context the sampler saw, and one jitted update with gradient accumulation.

Scoring layout of one row (P + C columns): the prompt's n tokens, then the sampled ids in C columns (right-padded
within them), then padding; M-RoPE positions continue from the prompt's next position on all three axes (the
decode positions of the sampler), so whichever way the sampler padded, the scorer sees the same tokens at the same
positions. Right padding is what the fused cudnn kernel takes (per-row lengths). Token t of the completion is
predicted from column n - 1 + t (`prompt_lengths`). Only the sampled tokens carry loss weight, so in the
multi-turn option nothing the policy did not sample (the retrieved video, the environment's text) is trained on.

The loss is a weighted token sum: `token_weight` [B, C] is set on the host (`token_weights`):
- "grpo" (the original's default, AR:523): mean over each sequence's sampled tokens, then mean over the sequences
  of the generation batch; equal to the original's per-micro-batch means averaged over GA = steps_per_generation and
  the ranks (TR:5664-5668), because every micro-batch holds the same number of sequences.
- "bnpo" (the original's token mean, TR:5669-5672): each per-device micro-batch's token mean, averaged over the
  accumulation steps and devices (the Trainer divides by GA, TR:1231; DeepSpeed averages the ranks). Micro-batches
  with more tokens weigh each token less, so the result depends on how the rows are split.
- "token_mean" (this port's option, not the original's): one mean over every sampled token of the generation batch,
  the same whatever the micro-batching. It differs from "bnpo" whenever micro-batches hold different token counts.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.train.logprobs import token_logprobs
from vsr1_jax.train.state import Graphdefs, TrainState, accumulate, guarded_update

LOSS_TYPES = ("grpo", "bnpo", "token_mean")


# ---- advantages and weights (host, numpy) ------------------------------------------------------------------------
def group_advantages(rewards: np.ndarray, group: int, eps: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """(advantages [N], zero-std group mask [N // group]) with A_i = (R_i - mean_g) / (std_g + eps), the std
    unbiased (N - 1), over groups of `group` consecutive samples (TR:4915-4927)."""
    r = np.asarray(rewards, np.float64).reshape(-1, group)
    mean = r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, ddof=1, keepdims=True) if group > 1 else np.zeros_like(mean)
    adv = (r - mean) / (std + eps)
    return adv.reshape(-1).astype(np.float32), (std[:, 0] == 0)


def token_weights(completion_mask: np.ndarray, sequence: np.ndarray, loss_type: str, *,
                  totals: tuple[float, float] | None = None, group_rows: int | None = None,
                  groups_total: int | None = None) -> np.ndarray:
    """[B, C] float32 weights of the sampled tokens so that sum(w * per_token_loss) is the aggregation of
    `loss_type` (module docstring). sequence [B]: the sequence (trajectory) each row belongs to (rows of one
    trajectory = its turns), -1 for padding rows. totals: (sequences, tokens) of the whole generation batch when
    these rows are one process's part of it (`weight_totals` summed over the processes); default: these rows'.
    "bnpo" only: group_rows = rows of one per-device micro-batch (consecutive rows; B must be a multiple of it) and
    groups_total = the number of such micro-batches in the whole generation batch (GA x devices; default: these
    rows' B // group_rows)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: expected one of {LOSS_TYPES}")
    m = np.asarray(completion_mask, np.float64) * (np.asarray(sequence) >= 0)[:, None]
    if loss_type == "bnpo":
        B = m.shape[0]
        if not group_rows or B % group_rows:
            raise ValueError(f"loss_type='bnpo' needs group_rows dividing the {B} rows, got {group_rows}")
        groups = m.reshape(B // group_rows, group_rows, -1)
        per_group = np.maximum(groups.sum(axis=(1, 2), keepdims=True), 1.0)   # clamp(min=1) as TR:5671
        n = B // group_rows if groups_total is None else groups_total
        return (groups / per_group / n).reshape(m.shape).astype(np.float32)
    n_seqs, n_tokens = weight_totals(completion_mask, sequence) if totals is None else totals
    if loss_type == "token_mean":
        return (m / max(n_tokens, 1.0)).astype(np.float32)
    seqs = np.unique(sequence[sequence >= 0])
    per_seq = {s: m[sequence == s].sum() for s in seqs}
    w = np.zeros_like(m)
    for b, s in enumerate(sequence):
        if s >= 0:
            w[b] = m[b] / max(per_seq[s], 1.0) / max(n_seqs, 1)
    return w.astype(np.float32)


def weight_totals(completion_mask: np.ndarray, sequence: np.ndarray) -> tuple[float, float]:
    """(sequences, sampled tokens) of these rows: what `token_weights` normalises by."""
    sequence = np.asarray(sequence)
    m = np.asarray(completion_mask, np.float64) * (sequence >= 0)[:, None]
    return float(len(np.unique(sequence[sequence >= 0]))), float(m.sum())


# ---- the objective (device) ---------------------------------------------------------------------------------------
def per_token_objective(logp, old_logp, ref_logp, advantages, *, epsilon_low: float, epsilon_high: float,
                        beta: float):
    """-> (per-token loss [B, C], kl [B, C], clipped [B, C] bool).

    ratio = exp(logp - old); -min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A) + beta * KL with the k3
    estimator KL = exp(ref - logp) - (ref - logp) - 1 (TR:5574-5678)."""
    ratio = jnp.exp(logp - old_logp)
    A = advantages[:, None]
    clipped_ratio = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    loss = -jnp.minimum(ratio * A, clipped_ratio * A)
    d = ref_logp - logp
    kl = jnp.exp(d) - d - 1.0
    if beta != 0.0:
        loss = loss + beta * kl
    clipped = ((ratio < 1.0 - epsilon_low) & (A < 0)) | ((ratio > 1.0 + epsilon_high) & (A > 0))
    return loss, kl, clipped


def score(policy, batch, *, opts: RunOptions, temperature: float, chunk: int):
    """Per-token log-probs [B, C] of `completion_ids` under `policy` in the scoring layout (module docstring)."""
    x, visual = policy.embed(batch["input_ids"], opts, vision=batch["vision"])
    out = policy.decode(x, batch["positions"], batch["attention_mask"], opts=opts, visual=visual, logits="none")
    C = batch["completion_ids"].shape[1]
    cols = batch["prompt_lengths"][:, None] - 1 + jnp.arange(C)[None]          # [B, C]
    h = jnp.take_along_axis(out.hidden, cols[..., None], axis=1)
    return token_logprobs(policy.text.logits, h, batch["completion_ids"], chunk=chunk, temperature=temperature)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.01
    temperature: float = 1.0
    logprob_chunk: int = 256
    use_old_logprobs: bool = False    # num_iterations > 1: the ratio uses the stored generation-time log-probs


def grpo_loss(params, frozen, batch, *, graphdefs: Graphdefs, opts: RunOptions, lc: LossConfig):
    policy, _ = graphdefs.modules(params, frozen)
    logp = score(policy, batch, opts=opts, temperature=lc.temperature, chunk=lc.logprob_chunk)
    old = batch["old_logprobs"] if lc.use_old_logprobs else jax.lax.stop_gradient(logp)
    per_tok, kl, clipped = per_token_objective(logp, old, batch["ref_logprobs"], batch["advantages"],
                                               epsilon_low=lc.epsilon_low, epsilon_high=lc.epsilon_high,
                                               beta=lc.beta)
    w = batch["token_weight"]
    m = batch["completion_mask"].astype(jnp.float32)
    loss = jnp.sum(per_tok * w)
    aux = dict(kl_sum=jnp.sum(kl * m), clipped_sum=jnp.sum(clipped * m), tokens=jnp.sum(m))
    return loss, aux


def make_score_fn(graphdefs: Graphdefs, opts: RunOptions, lc: LossConfig):
    """score_fn(params, frozen, batch [A, ...]) -> log-probs [A, B, C]: the reference (or old-policy) pass,
    once per generation batch."""

    def fn(params, frozen, batch):
        policy, _ = graphdefs.modules(params, frozen)
        return jax.lax.map(lambda mb: score(policy, mb, opts=opts, temperature=lc.temperature,
                                            chunk=lc.logprob_chunk), batch)

    return fn


def make_train_step(graphdefs: Graphdefs, tx: optax.GradientTransformation, opts: RunOptions, lc: LossConfig,
                    lr_fns: Mapping[str, Any]):
    """grpo_step(state, batch) -> (state, metrics); batch leaves [A, ...] (A = steps_per_generation
    micro-batches): the token-weighted losses and their gradients are summed over the micro-batches (the weights
    already normalise over the whole generation batch). Non-finite loss or gradient: no update, counted."""
    grad_fn = jax.value_and_grad(functools.partial(grpo_loss, graphdefs=graphdefs, opts=opts, lc=lc), has_aux=True)

    def grpo_step(state: TrainState, batch):
        grads, losses, aux = accumulate(grad_fn, state, batch)
        loss = losses.sum()
        new, gnorm, ok = guarded_update(state, grads, loss, tx)
        tokens = jnp.maximum(aux["tokens"].sum(), 1.0)
        metrics = dict(loss=loss, grad_norm=gnorm, update_skipped=~ok, kl=aux["kl_sum"].sum() / tokens,
                       clip_fraction=aux["clipped_sum"].sum() / tokens,
                       **{f"lr_{k}": fn(state.step) for k, fn in lr_fns.items()})
        return new, metrics

    return grpo_step
