"""Trajectories -> the original's evaluation detail rows: one row per query with the per-turn dicts
(EVAL L2629-2666, per-turn dict L3559-3594; eval_and_data.md §1). Formatting only: every number comes from the
episode engine (agent/rollout.py), the IoUs from eval/metrics.py."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vsr1_jax.agent.rollout import Trajectory, Turn
from vsr1_jax.eval import metrics

_TURN_KEYS = ("rank", "rank_before_refine", "top1_doc_id", "top1_is_gt", "policy_top1_doc_id", "policy_top1_is_gt",
              "answer", "time_parse_ok", "pred_start", "pred_end", "iou_raw", "iou_r1")


def turn_info(t: Turn, query: dict, num_latents: int) -> dict:
    """The original's per-turn dict. `policy_*` are the values after this turn's refinement (the refined query's
    top-1 and GT rank) when one ran, else the turn's own retrieval."""
    top1_is_gt = t.doc_id == query["gt_doc_id"]
    iou_raw, iou_r1 = metrics.turn_ious((query["gt_start"], query["gt_end"]), t.span, t.answer, top1_is_gt)
    span = t.span
    info = dict(turn=t.turn, rank=t.rank, rank_before_refine=t.rank, policy_rank=t.rank, top1_doc_id=t.doc_id,
                top1_is_gt=top1_is_gt, policy_top1_doc_id=t.doc_id, policy_top1_is_gt=top1_is_gt, answer=t.answer,
                time_parse_ok=span is not None, pred_start=None if span is None else span[0],
                pred_end=None if span is None else span[1], iou_raw=iou_raw, iou_r1=iou_r1,
                refine_token_generated=t.has_refine, refine_applied=False, qfinal_mode="embedder_splice",
                rollout_depth_config=num_latents, rollout_depth_actual=0, raw_output=t.text,
                generated_tokens=int(len(t.sampled_ids)))
    if t.refined and t.answer == "matched" and t.next_rank is not None:
        # refined although accepted (EpisodeConfig.refine_matched: the demo's SQR-only probe); the episode ended here
        info.update(sqr_probe_rank=t.next_rank, sqr_probe_top1_is_gt=t.next_doc_id == query["gt_doc_id"])
    if t.refined and t.answer != "matched":
        Z = t.latents
        norms = np.linalg.norm(Z, axis=-1)
        cos_prev = [float(Z[k] @ Z[k - 1] / max(norms[k] * norms[k - 1], 1e-12)) for k in range(1, len(Z))]
        info.update(policy_rank=t.next_rank, policy_top1_doc_id=t.next_doc_id,
                    policy_top1_is_gt=t.next_doc_id == query["gt_doc_id"], refine_applied=True,
                    rollout_depth_actual=int(Z.shape[0]), rollout_shape=list(Z.shape),
                    rollout_latent_norms=[float(x) for x in norms], rollout_latent_cos_prev=cos_prev,
                    rollout_latent_head=[float(x) for x in Z[0, :6]], latent_injected_to_llm=True)
    return info


def detail_row(traj: Trajectory, max_turn: int, num_latents: int) -> dict:
    """One query's detail row; the original's final values come from the last executed turn, after its
    refinement if one ran (eval_and_data.md §1.2)."""
    q = traj.query
    turns = [turn_info(t, q, num_latents) for t in traj.turns]
    first, last = turns[0], turns[-1]
    row = dict(index=q["index"], qid=q["qid"], query=q["query"], gt_pos_doc_id=q["gt_doc_id"],
               gt_start=q["gt_start"], gt_end=q["gt_end"], orig_rank=traj.orig_rank)
    row.update({f"turn1_{k}": first[k] for k in _TURN_KEYS})
    row["turn1_rank"] = first["policy_rank"]
    row.update({f"final_{k}": last[k] for k in _TURN_KEYS})
    row.update(final_rank=last["policy_rank"], final_top1_is_gt=last["policy_top1_is_gt"])
    matched = [t["turn"] for t in turns if t["answer"] == "matched"]
    row.update(matched_turn=matched[0] if matched else 0, stop_turn=last["turn"], stop_reason=traj.stop_reason,
               used_refine_any=any(t["refine_applied"] for t in turns),
               refine_token_generated_turns=[t["turn"] for t in turns if t["refine_token_generated"]],
               refine_applied_turns=[t["turn"] for t in turns if t["refine_applied"]],
               max_turn=max_turn, turns=turns)
    return row


def detail_rows(trajs: Sequence[Trajectory], max_turn: int, num_latents: int) -> list[dict]:
    """Rows of every trajectory that ran at least one turn (a query whose first video is missing has none)."""
    return [detail_row(t, max_turn, num_latents) for t in trajs if t.turns]
