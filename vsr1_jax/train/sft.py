"""Stage-1 SFT (sqr_and_sft.md §2-§5, §8): the loss and one jitted train step (the host-side examples and batches
they take: train/sft_batches.py).

loss = HF causal-LM loss over the assistant turn + lambda (0.3) x InfoNCE(q_final; positive + up to 24 negatives,
tau 0.1), as the original's `compute_loss` (TRN L1664-1760). q_final is the refined query: z1 = refine_projector(the
pre-norm hidden state at the row's last `<REFINE>`), z2..z8 from the policy continuing over the latents (a cached
continuation of the same forward: its per-layer keys/values are the prefix, which equals the original's 7 full
re-forwards under causal attention), then the frozen embedder on the query text with the projected latents
spliced in. Gradients flow through the rollout and the embedder splice into the policy and the refine modules.

Loss granularity follows the original's per-device micro-batch (1 row by default): rows are grouped by
`config.sft.per_device_batch_size`; each group's LM loss is the mean over its label tokens and its InfoNCE loss
the mean over its rows that have a term (0 if none), and the step loss is the mean over groups (DDP's gradient
average).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.train.logprobs import token_logprobs
from vsr1_jax.train.state import Graphdefs, TrainState, accumulate, guarded_update


# ---- device: the loss --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static settings of the SFT loss (hashable: part of the jitted step's identity)."""
    retrieval_loss_weight: float = 0.3     # lambda (VS L116)
    temperature: float = 0.1               # tau (VS L117)
    num_latents: int = 8                   # rollout depth
    group_size: int = 1                    # rows per original micro-batch (per_device_train_batch_size)
    logprob_chunk: int = 256


def infonce_rows(q, candidates, mask, temperature: float):
    """Per-row InfoNCE: -log softmax([q.pos, q.n_1 .. q.n_m] / tau)[0]. q [B, D] and candidates [B, 1+K, D] unit
    rows; mask [B, 1+K] marks the positive (first) and the kept negatives."""
    logits = jnp.einsum("bd,bkd->bk", q.astype(jnp.float32), candidates.astype(jnp.float32)) / temperature
    logits = jnp.where(mask, logits, -jnp.inf)
    return -jax.nn.log_softmax(logits, axis=-1)[:, 0]


def lm_token_logprobs(policy, hidden, label_src, label_ids, chunk: int):
    """log p(label_ids | prefix) from the final hidden states at `label_src` = label position - 1 ([B, A])."""
    h = jnp.take_along_axis(hidden, label_src[..., None], axis=1)
    return token_logprobs(policy.text.logits, h, label_ids, chunk=chunk)


def sft_loss(params, frozen, embedder_params, batch, *, graphdefs: Graphdefs, embedder_graphdef, opts: RunOptions,
             lc: LossConfig):
    """-> (loss, aux). batch: a device batch of `SFTBatcher` (one micro-batch)."""
    policy, head = graphdefs.modules(params, frozen)
    embedder = nnx.merge(embedder_graphdef, jax.lax.stop_gradient(embedder_params))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    B = ids.shape[0]
    x, visual = policy.embed(ids, opts, vision=batch["vision"])
    out = policy.decode(x, batch["positions"], mask, opts=opts, visual=visual, logits="none",
                        kv_extra_slots=lc.num_latents - 1)
    # causal-LM loss over the assistant tokens (HF shifts labels by one)
    lp = lm_token_logprobs(policy, out.hidden, batch["label_src"], batch["label_ids"], lc.logprob_chunk)
    lmask = batch["label_mask"].astype(jnp.float32)
    nll = -lp * lmask
    # SQR: z1 from the pre-norm hidden at the last <REFINE>, z2..zN continuing from the forward's keys/values
    ridx = jnp.maximum(batch["refine_index"], 0)
    rows = jnp.arange(B)
    h_refine = out.hidden_pre_norm[rows, ridx]
    refine_pos = batch["positions"][0, rows, ridx]
    # the rollout's steps: the cache travels per layer (SLICED, see TextModel; the layer loop rolled or unrolled as
    # opts.rollout_layers says), no
    # rematerialisation (with remat, the backward would keep the whole cache per layer instead of each layer's
    # slice), and XLA attention: the Pallas decode kernel (decode_attn_impl "auto" on NVIDIA GPUs) has no VJP
    ropts = dataclasses.replace(opts, remat="none", unroll_decode=False, decode_attn_impl="xla")
    Z, _ = S.rollout_cached(policy, head, out.cache, h_refine, ridx, refine_pos, opts=ropts,
                            num_latents=lc.num_latents)
    q = S.q_final(embedder, head, Z, batch["emb_ids"], batch["emb_is_latent"], batch["emb_latent_index"],
                  batch["emb_mask"], opts=opts)
    ret_valid = batch["ret_valid"] & batch["row_valid"]
    ret = jnp.where(ret_valid, infonce_rows(q, batch["candidates"], batch["candidate_mask"], lc.temperature), 0.0)
    # the original's per-device micro-batches: token-mean LM loss and valid-row-mean InfoNCE per group, then mean
    g = lc.group_size
    row_w = batch["row_valid"].astype(jnp.float32)
    lm_g = (nll * row_w[:, None]).reshape(B // g, -1).sum(-1) / jnp.maximum(
        (lmask * row_w[:, None]).reshape(B // g, -1).sum(-1), 1.0)
    nv = ret_valid.astype(jnp.float32).reshape(B // g, g)
    ret_g = ret.reshape(B // g, g).sum(-1) / jnp.maximum(nv.sum(-1), 1.0)
    group_w = (row_w.reshape(B // g, g).sum(-1) > 0).astype(jnp.float32)
    n_groups = jnp.maximum(group_w.sum(), 1.0)
    lm_loss = (lm_g * group_w).sum() / n_groups
    ret_loss = (ret_g * group_w).sum() / n_groups
    loss = lm_loss + lc.retrieval_loss_weight * ret_loss
    aux = dict(lm_loss=lm_loss, infonce_loss=ret_loss, infonce_rows=ret_valid.sum(), label_tokens=(lmask * row_w[:, None]).sum(),
               q_final=jax.lax.stop_gradient(q))
    return loss, aux


def make_train_step(graphdefs: Graphdefs, embedder_graphdef, tx: optax.GradientTransformation, opts: RunOptions,
                    lc: LossConfig, lr_fns: Mapping[str, Any]):
    """train_step(state, embedder_params, batch) -> (state, metrics); batch leaves have a leading accumulation
    axis [A, ...]: gradients are averaged over the A micro-batches (gradient accumulation). A non-finite loss or
    gradient leaves params and optimizer state unchanged and counts the skip."""
    loss_fn = functools.partial(sft_loss, graphdefs=graphdefs, embedder_graphdef=embedder_graphdef, opts=opts, lc=lc)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, embedder_params, batch):
        grads, losses, aux = accumulate(grad_fn, state, batch, embedder_params)
        A = losses.shape[0]
        grads = jax.tree.map(lambda x: x / A, grads)
        loss = losses.mean()
        new, gnorm, ok = guarded_update(state, grads, loss, tx)
        metrics = dict(loss=loss, lm_loss=aux["lm_loss"].mean(), infonce_loss=aux["infonce_loss"].mean(),
                       infonce_rows=aux["infonce_rows"].sum(), label_tokens=aux["label_tokens"].sum(),
                       grad_norm=gnorm, update_skipped=~ok, q_final=aux["q_final"],
                       **{f"lr_{k}": fn(state.step) for k, fn in lr_fns.items()})
        return new, metrics

    return train_step
