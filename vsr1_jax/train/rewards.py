"""The six Stage-2 GRPO rewards (grpo.md §4; RW = videosearch_r1/reward/reward.py, TR = the GRPO trainer) as pure
functions over parsed answers, completion text and embedding vectors. numpy only: they run on the host after a
rollout, and their output is the per-sample reward vector the advantage computation consumes.

Order and names (S2:398-399): answer (r_answer_binary), think (r_think_format), time_format (r_time_format),
time_iou (r_time_iou), refine (r_refine_presence), refine_quality (r_query_refine_quality). The total is the
weighted sum with nansum semantics (the trainer sums `rewards_per_func * weights` with `nansum`).

The original scores the final non-shadow turn of a rollout; the shipped training runs one turn (grpo.md §0), so a
sample here is that turn: its assistant text, the retrieved id, the GT id and span, whether the sampled ids held
`<REFINE>`, and the vectors of the query-refine reward.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vsr1_jax.processing.parsing import (has_think, has_time_tags, is_pure_search_call, parse_answer_reward,
                                         parse_span_reward)
from vsr1_jax.processing.prompts import MATCHED, NOT_MATCHED

REWARD_NAMES = ("answer", "think", "time_format", "time_iou", "refine", "refine_quality")  # S2:398-399
QUALITY_VARIANTS = ("delta", "p_after", "margin")


def _id(x: Any) -> str:
    # RW:95-100 / TR:4335: ids compared as strings, a missing id is ""
    return "" if x is None else str(x)


def _answer(answer: str | None) -> str:
    # RW:121, RW:166: str(answer or "").strip().lower(); a parsed answer is already in this form
    return "" if answer is None else str(answer).strip().lower()


# ------------------------------------------------------------------------------------------------ per-sample rewards

def answer_reward(answer: str | None, retrieved_id: Any, gt_id: Any) -> float:
    """r_answer_binary (RW:82-105, grpo.md §4): +1 if `answer` equals the label, else -1.

    label = "matched" iff `retrieved_id` is non-empty and equals `gt_id`, else "not_matched". `answer` is the
    output of `parse_answer_reward` (None / malformed answers never equal a label, so they score -1). The answer is
    compared as given (RW:104 does not re-normalise it).
    """
    rid, gt = _id(retrieved_id), _id(gt_id)
    label = MATCHED if rid and rid == gt else NOT_MATCHED
    return 1.0 if _id(answer) == label else -1.0


def think_reward(text: str) -> float:
    """r_think_format (RW:64-79): 1.0 if the last `<think>...</think>` block (any case) has non-blank content."""
    return 1.0 if has_think(text) else 0.0


def time_format_reward(answer: str | None, text: str) -> float:
    """r_time_format (RW:108-135): `not_matched` -> 1 if there is NO `<start>`/`<end>` pair; `matched` -> 1 if both
    tags are present (any content, RW:42-45); any other answer -> 0."""
    a, tags = _answer(answer), has_time_tags(text)
    if a == NOT_MATCHED:
        return 0.0 if tags else 1.0
    if a == MATCHED:
        return 1.0 if tags else 0.0
    return 0.0


def gt_span(gt_time: Any) -> tuple[float, float] | None:
    """The GT span as RW `_extract_gt_span` (RW:48-61) reads it: a sequence of >= 2 float-convertible, finite
    values with end > start, else None. (The original gets JSON lists; 1-D numpy arrays are accepted too.)"""
    if isinstance(gt_time, np.ndarray):
        gt_time = gt_time.reshape(-1).tolist()
    if not isinstance(gt_time, (list, tuple)) or len(gt_time) < 2:
        return None
    try:
        start, end = float(gt_time[0]), float(gt_time[1])
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
        return None
    return start, end


def time_iou_reward(answer: str | None, text: str, retrieved_id: Any, gt_id: Any, gt_time: Any) -> float:
    """r_time_iou (RW:138-191, grpo.md §4).

    Only a correct decision scores: correct_accept = (retrieved_id == gt_id and answer == matched), correct_reject =
    (retrieved_id != gt_id and answer == not_matched), as the turn record computes them (TR:4334-4335; unlike
    `answer_reward`, an empty id equal to an empty GT counts as an accept here). A correct reject scores 0.5 when
    the text has no `<start>`/`<end>` pair, else 0. A correct accept scores the IoU of the last numeric
    `<start>`/`<end>` values (`parse_span_reward`) with `gt_time`; 0 when the tags, the numbers or the GT span are
    missing or invalid (`gt_span`), or the predicted end <= start. IoU = max(0, min(e) - max(s)) / (max(e) - min(s)),
    clipped to [0, 1].
    """
    rid, gt, a = _id(retrieved_id), _id(gt_id), _answer(answer)
    accept, reject = rid == gt and a == MATCHED, rid != gt and a == NOT_MATCHED
    if not (accept or reject):
        return 0.0
    tags = has_time_tags(text)
    if reject:
        return 0.0 if tags else 0.5
    if not tags:
        return 0.0
    pred, ref = parse_span_reward(text), gt_span(gt_time)
    if pred is None or ref is None:
        return 0.0
    (ps, pe), (gs, ge) = pred, ref
    if pe <= ps:
        return 0.0
    inter = max(0.0, min(pe, ge) - max(ps, gs))
    union = max(pe, ge) - min(ps, gs)
    iou = inter / union if union > 0 else 0.0
    return float(min(1.0, max(0.0, iou)))


def refine_reward(has_refine: bool) -> float:
    """r_refine_presence (RW:218-230): 1.0 if the final turn's sampled ids contained `<REFINE>` (TR:4298-4308)."""
    return 1.0 if bool(has_refine) else 0.0


# ------------------------------------------------------------------------------------------------ query-refine quality

def _l2n(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    # torch F.normalize: x / max(||x||, eps), in float64
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def _log_p_pos(s_pos: np.ndarray, s_neg: np.ndarray, mask: np.ndarray, temperature: float) -> np.ndarray:
    # log softmax([s_pos, s_neg...] / tau)[0] over the valid negatives (TR:4010-4029)
    logits = np.concatenate([s_pos[:, None], np.where(mask, s_neg, -np.inf)], axis=1) / temperature
    top = logits.max(axis=1, keepdims=True)
    return logits[:, 0] - (top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))


def refine_quality_rewards(q_final: Any, q_orig: Any, pos_vecs: Any, neg_vecs: Any, *, has_refine: Any,
                           neg_mask: Any = None, temperature: float = 0.1, variant: str = "delta",
                           no_refine_penalty: float = 0.0, margin_scale: float = 1.0) -> np.ndarray:
    """Batched r_query_refine_quality (RW:194-215; values of TR:3964-4072; grpo.md §4): float64 [N].

    q_final, q_orig, pos_vecs: [N, D]; neg_vecs: [N, K, D]; has_refine: [N] bool (False -> `no_refine_penalty`,
    also the caller's choice when q_orig or the GT vector is unknown, TR:3838-3846); neg_mask: [N, K] bool, True
    for a real negative (None = all real). Every vector is L2-normalised here. The negatives are used as given: the
    original builds them as a set of corpus rows without the GT (hard negatives, retrieved ids, in-batch GTs,
    TR:3969-4002); deduplicating is the caller's job. A refining row with no valid negative scores 0.0 (the
    original never sets the quality then, and the reward reads its default 0.0).

    variant, with s = cosine and p = softmax([s_pos, s_neg...] / temperature)[0]:
      "delta"   p(q_final) - p(q_orig)                          (the shipped one, TR:4054)
      "p_after" p(q_final)                                      (TR:4053, commented out there)
      "margin"  [(s_pos - max s_neg)(q_final) - (s_pos - max s_neg)(q_orig)] * margin_scale   (TR:4032-4036)
    `margin_scale` applies to "margin" only (the shipped reward does not scale, grpo.md §4).
    """
    if variant not in QUALITY_VARIANTS:
        raise ValueError(f"unknown quality variant {variant!r}; expected one of {QUALITY_VARIANTS}")
    refine = np.asarray(has_refine, bool).reshape(-1)
    n = refine.shape[0]
    out = np.full(n, float(no_refine_penalty), np.float64)
    if not refine.any():
        return out
    qf, qo, pos = (_l2n(np.asarray(v, np.float64).reshape(n, -1)) for v in (q_final, q_orig, pos_vecs))
    negs = np.asarray(neg_vecs, np.float64)
    if negs.ndim != 3 or negs.shape[0] != n:
        raise ValueError(f"neg_vecs must be [N={n}, K, D], got {negs.shape}")
    negs = _l2n(negs)
    mask = np.ones(negs.shape[:2], bool) if neg_mask is None else np.asarray(neg_mask, bool).reshape(negs.shape[:2])
    has_neg = mask.any(axis=1)
    s_pos_a, s_pos_b = (qf * pos).sum(-1), (qo * pos).sum(-1)
    s_neg_a, s_neg_b = np.einsum("nkd,nd->nk", negs, qf), np.einsum("nkd,nd->nk", negs, qo)
    if variant == "margin":
        with np.errstate(invalid="ignore"):
            max_a = np.where(mask, s_neg_a, -np.inf).max(axis=1, initial=-np.inf)
            max_b = np.where(mask, s_neg_b, -np.inf).max(axis=1, initial=-np.inf)
            value = ((s_pos_a - max_a) - (s_pos_b - max_b)) * float(margin_scale)
    else:
        p_after = np.exp(_log_p_pos(s_pos_a, s_neg_a, mask, temperature))
        value = p_after if variant == "p_after" else p_after - np.exp(_log_p_pos(s_pos_b, s_neg_b, mask, temperature))
    return np.where(refine, np.where(has_neg, value, 0.0), out)


def refine_quality_reward(q_final: Any, q_orig: Any, pos_vec: Any, neg_vecs: Any, *, has_refine: bool,
                          temperature: float = 0.1, variant: str = "delta", no_refine_penalty: float = 0.0,
                          margin_scale: float = 1.0) -> float:
    """r_query_refine_quality of one sample (see `refine_quality_rewards`): q_final, q_orig, pos_vec [D];
    neg_vecs [K, D] (K may be 0). `no_refine_penalty` when `has_refine` is False or q_final is None."""
    if not has_refine or q_final is None or q_orig is None or pos_vec is None:
        return float(no_refine_penalty)
    d = np.asarray(pos_vec).reshape(-1).shape[0]
    negs = np.zeros((0, d)) if neg_vecs is None else np.asarray(neg_vecs, np.float64).reshape(-1, d)
    return float(refine_quality_rewards(np.asarray(q_final)[None], np.asarray(q_orig)[None], np.asarray(pos_vec)[None],
                                        negs[None], has_refine=[True], temperature=temperature, variant=variant,
                                        no_refine_penalty=no_refine_penalty, margin_scale=margin_scale)[0])


# ------------------------------------------------------------------------------------------------ weights and total

@dataclasses.dataclass(frozen=True)
class RewardWeights:
    """Weights of the six rewards in the original's order plus the query-refine knobs (S2:287-310; grpo.md §4).
    Field names are the keys of `configs/_train.py` `get_grpo_config().rewards`."""
    answer: float = 1.6               # W_ACC
    think: float = 0.05               # W_THINK_REWARD
    time_format: float = 0.05         # W_TIME_FMT
    time_iou: float = 0.35            # W_TIME_IOU
    refine: float = 0.8               # W_FMT
    refine_quality: float = 0.5       # W_MARGIN
    no_refine_penalty: float = 0.0    # GRPO_NO_REFINE_QUALITY_PENALTY
    quality_temperature: float = 0.1  # GRPO_QUERY_REFINE_TEMPERATURE
    quality: str = "delta"            # "delta" (shipped) | "p_after" | "margin"
    margin_scale: float = 1.0         # MARGIN_SCALE

    def __post_init__(self):
        if self.quality not in QUALITY_VARIANTS:
            raise ValueError(f"unknown quality variant {self.quality!r}; expected one of {QUALITY_VARIANTS}")
        if not self.quality_temperature > 0:
            raise ValueError(f"quality_temperature must be > 0, got {self.quality_temperature}")

    @classmethod
    def from_config(cls, cfg: Any) -> "RewardWeights":
        """From a ConfigDict / mapping shaped like `get_grpo_config().rewards`; missing keys keep the defaults,
        unknown keys are an error."""
        items = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(items) - names)
        if unknown:
            raise ValueError(f"unknown reward config keys {unknown}; expected a subset of {sorted(names)}")
        kw = {k: (str(v) if k == "quality" else float(v)) for k, v in items.items()}
        return cls(**kw)

    def vector(self) -> np.ndarray:
        """The six weights in `REWARD_NAMES` order, float64 [6]."""
        return np.asarray([getattr(self, k) for k in REWARD_NAMES], np.float64)


def total_reward(rewards: Mapping[str, Any] | Any, weights: RewardWeights) -> np.ndarray:
    """sum_i w_i * r_i over `REWARD_NAMES`, NaN terms skipped (torch nansum as the trainer uses it): float64 [N].

    `rewards` is a mapping name -> [N] or an array [N, 6] in `REWARD_NAMES` order.
    """
    if isinstance(rewards, Mapping):
        stacked = np.stack([np.asarray(rewards[k], np.float64).reshape(-1) for k in REWARD_NAMES], axis=1)
    else:
        stacked = np.asarray(rewards, np.float64).reshape(-1, len(REWARD_NAMES))
    return np.nansum(stacked * weights.vector()[None, :], axis=1)


# ------------------------------------------------------------------------------------------------ per-dataset weights

# grpo.md §4 table (S2:287-310, S2:327-328; W-anet / W-cha / W-did :16-31)
_DATASET_REWARDS = {
    "activitynet": dict(answer=1.2, think=0.05, time_format=0.05, time_iou=0.45, refine=0.8, refine_quality=0.8,
                        no_refine_penalty=-0.3, quality_temperature=0.1, margin_scale=1.0),
    "charades-sta": dict(answer=1.6, think=0.05, time_format=0.05, time_iou=0.35, refine=0.10, refine_quality=0.8,
                         no_refine_penalty=0.0, quality_temperature=0.1, margin_scale=1.0),
    "didemo": dict(answer=1.2, think=0.05, time_format=0.05, time_iou=0.45, refine=0.8, refine_quality=0.8,
                   no_refine_penalty=-0.3, quality_temperature=0.1, margin_scale=1.0),
}
_DATASET_ALIASES = {"charades": "charades-sta", "charades_sta": "charades-sta"}


def dataset_reward_overrides(dataset: str) -> dict:
    """The per-dataset reward values of grpo.md §4 (keys of `get_grpo_config().rewards`), for a dataset config to
    apply with `config.rewards.update(...)`. Datasets: activitynet | charades-sta | didemo."""
    key = _DATASET_ALIASES.get(str(dataset).lower(), str(dataset).lower())
    if key not in _DATASET_REWARDS:
        raise ValueError(f"no reward table for dataset {dataset!r}; known: {sorted(_DATASET_REWARDS)}")
    return dict(_DATASET_REWARDS[key])


# ------------------------------------------------------------------------------------------------ entry point

def completion_text(messages: Sequence[str]) -> str:
    """The reward text of a rollout: its assistant messages joined with "\n", minus the pure search calls
    (`parsing.is_pure_search_call`; TR:4559-4570, grpo.md §4 "minus pure <search> calls")."""
    return "\n".join(m for m in messages if not is_pure_search_call(m))



@dataclasses.dataclass
class RewardSample:
    """One rollout's final turn, as the rewards see it.

    text: the rollout's reward text (`completion_text` of its assistant messages; the answer, think and time tags
    are read from it); retrieved_id / gt_id: the candidate shown and the GT video id; gt_time: the GT [start, end]
    seconds (any malformed value scores IoU 0); has_refine: the sampled ids held `<REFINE>`; q_final: the refined
    query vector [D], None when no refinement was computed (then the quality reward is the penalty); q_orig: the
    original query vector [D]; pos_vec: the GT video vector [D]; neg_vecs: the negative video vectors [K, D] (K may
    be 0).
    """
    text: str
    retrieved_id: Any
    gt_id: Any
    gt_time: Any = None
    has_refine: bool = False
    q_final: Any = None
    q_orig: Any = None
    pos_vec: Any = None
    neg_vecs: Any = None


def score_samples(samples: Sequence[RewardSample], weights: RewardWeights) -> dict[str, np.ndarray]:
    """Every reward of every sample: {name: float64 [N] for name in REWARD_NAMES} plus "total" (`total_reward`).

    The quality reward is computed in one batch over the samples that refine and carry q_final, q_orig and pos_vec
    (negatives padded to the largest K with a mask); the others get `weights.no_refine_penalty`.
    """
    n = len(samples)
    out = {k: np.zeros(n, np.float64) for k in REWARD_NAMES}
    for i, s in enumerate(samples):
        answer = parse_answer_reward(s.text)
        out["answer"][i] = answer_reward(answer, s.retrieved_id, s.gt_id)
        out["think"][i] = think_reward(s.text)
        out["time_format"][i] = time_format_reward(answer, s.text)
        out["time_iou"][i] = time_iou_reward(answer, s.text, s.retrieved_id, s.gt_id, s.gt_time)
        out["refine"][i] = refine_reward(s.has_refine)
    out["refine_quality"][:] = float(weights.no_refine_penalty)
    rows = [i for i, s in enumerate(samples) if s.has_refine and s.q_final is not None and s.q_orig is not None
            and s.pos_vec is not None]
    if rows:
        d = np.asarray(samples[rows[0]].pos_vec).reshape(-1).shape[0]
        negs = [np.zeros((0, d)) if samples[i].neg_vecs is None
                else np.asarray(samples[i].neg_vecs, np.float64).reshape(-1, d) for i in rows]
        k = max(1, max(x.shape[0] for x in negs))
        neg_arr, mask = np.zeros((len(rows), k, d)), np.zeros((len(rows), k), bool)
        for j, x in enumerate(negs):
            neg_arr[j, :x.shape[0]], mask[j, :x.shape[0]] = x, True
        stack = lambda name: np.stack([np.asarray(getattr(samples[i], name), np.float64).reshape(d) for i in rows])
        out["refine_quality"][rows] = refine_quality_rewards(
            stack("q_final"), stack("q_orig"), stack("pos_vec"), neg_arr, has_refine=np.ones(len(rows), bool),
            neg_mask=mask, temperature=weights.quality_temperature, variant=weights.quality,
            no_refine_penalty=weights.no_refine_penalty, margin_scale=weights.margin_scale)
    out["total"] = total_reward(out, weights)
    return out


__all__ = [
    "QUALITY_VARIANTS", "REWARD_NAMES", "RewardSample", "RewardWeights", "answer_reward", "completion_text",
    "dataset_reward_overrides",
    "gt_span", "refine_quality_reward", "refine_quality_rewards", "refine_reward", "score_samples", "think_reward",
    "time_format_reward", "time_iou_reward", "total_reward",
]
