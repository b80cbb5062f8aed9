"""The GRPO scoring batch: every turn of a group's trajectories as one right-padded row (prompt, then its sampled
ids) in fixed bucket shapes, with the per-token loss weights (`grpo.token_weights`). Host numpy only; the GRPO run
and the bench build their batches here."""
from __future__ import annotations

import numpy as np

from vsr1_jax.agent.rollout import Trajectory
from vsr1_jax.buckets import bucket_length
from vsr1_jax.generate.sampler import pack_prompts
from vsr1_jax.models.qwen3_vl.vision import VisionBatch, VisionBuckets
from vsr1_jax.train import grpo


def scoring_sizes(trajs: list[Trajectory]) -> tuple[int, int, int]:
    """(longest prompt, most frame groups, most patches per group) over every turn: what picks the buckets of
    `scoring_batch`. Multi-host runs pass the maximum over the processes as `min_sizes`."""
    turns = [turn for t in trajs for turn in t.turns]
    return (max(len(t.prompt_ids) for t in turns), max(int(t.video.grid_thw[0]) for t in turns),
            max(int(t.video.grid_thw[1] * t.video.grid_thw[2]) for t in turns))


def scoring_batch(trajs: list[Trajectory], advantages: np.ndarray, *, cfg, pad_id: int, micro_batches: int,
                  rows_per_micro: int, prompt_buckets, completion_length: int, group_buckets, patch_buckets,
                  loss_type: str, min_sizes=None, totals=None, device_rows: int | None = None,
                  device_batches: int | None = None) -> dict:
    """Every turn of every trajectory as one scored row (its prompt, then its sampled ids, right-padded: grpo.py),
    grouped into `micro_batches` x `rows_per_micro` rows with fixed bucket shapes; missing rows are padding with
    zero weight. Returns host arrays with a leading [A, m] shape. When these trajectories are one process's part of
    the generation batch: min_sizes = the maximum of every process's `scoring_sizes` (same buckets everywhere) and
    totals = the summed `grpo.weight_totals` (weights normalised over the whole batch). loss_type "bnpo":
    device_rows = rows of one device's micro-batch (default `rows_per_micro`), device_batches = such micro-batches
    in the whole generation batch (default: these rows')."""
    rows = [(i, turn) for i, t in enumerate(trajs) for turn in t.turns]
    A, m = micro_batches, rows_per_micro
    if len(rows) > A * m:
        raise ValueError(f"{len(rows)} scored rows do not fit {A} micro-batches of {m} rows; raise "
                         "config.grpo.steps_per_generation or lower max_turns")
    n_prompt, n_groups, n_patches = scoring_sizes(trajs) if min_sizes is None else (int(x) for x in min_sizes)
    P = bucket_length(n_prompt, prompt_buckets)
    C = completion_length
    G = bucket_length(n_groups, group_buckets)
    HW = bucket_length(n_patches, patch_buckets)
    seq = np.full(A * m, -1, np.int64)
    seq[:len(rows)] = [i for i, _ in rows]
    cmask = np.zeros((A * m, C), bool)
    comp = np.full((A * m, C), pad_id, np.int32)
    adv = np.zeros(A * m, np.float32)
    for r, (i, t) in enumerate(rows):
        n = len(t.sampled_ids)
        comp[r, :n], cmask[r, :n], adv[r] = t.sampled_ids, True, advantages[i]
    weights = grpo.token_weights(cmask, seq, loss_type, totals=totals, group_rows=device_rows or m,
                                 groups_total=device_batches)
    parts = []
    for a in range(A):
        sel = [rows[min(r, len(rows) - 1)][1] for r in range(a * m, (a + 1) * m)]
        p = pack_prompts([list(t.prompt_ids) for t in sel], cfg=cfg, pad_id=pad_id, length=P,
                         video_pixels=np.concatenate([t.video.pixel_rows for t in sel]),
                         video_grids=[tuple(t.video.grid_thw) for t in sel],
                         vision_buckets=VisionBuckets(items=(m,), groups=(G,), patches=(HW,)), padding="right")
        sl = slice(a * m, (a + 1) * m)
        # right-padded rows: prompt (n_r tokens), completion (C columns, its own padding at the end), then the
        # prompt's padding; positions carry on from the prompt's next position (the sampler's decode positions)
        plen = p.mask.sum(1).astype(np.int32)
        ids = np.full((m, P + C), pad_id, np.int32)
        mask = np.zeros((m, P + C), np.int32)
        pos = np.zeros((3, m, P + C), np.int32)
        tidx = np.full((m, P + C), -1, np.int32)
        for r in range(m):
            n, cols = plen[r], slice(plen[r], plen[r] + C)
            ids[r, :n], ids[r, cols] = p.ids[r, :n], comp[a * m + r]
            mask[r, :n], mask[r, cols] = 1, cmask[a * m + r]
            pos[:, r, :n], pos[:, r, cols] = p.positions[:, r, :n], p.next_pos[r] + np.arange(C)
            tidx[r, :n] = p.vision.token_index[r, :n]
        parts.append(dict(input_ids=ids, attention_mask=mask, positions=pos, vision=p.vision._replace(token_index=tidx),
                          prompt_lengths=plen, completion_ids=comp[sl], completion_mask=cmask[sl],
                          advantages=adv[sl], token_weight=weights[sl]))
    out = {k: np.stack([pt[k] for pt in parts]) for k in parts[0] if k != "vision"}
    out["vision"] = VisionBatch(*(np.stack(x) for x in zip(*[pt["vision"] for pt in parts])))
    return out


__all__ = ["scoring_batch", "scoring_sizes"]
