"""Every evaluation metric of VideoSearch-R1 (VCMR IoU@R1, VR R@k/MRR, VER accuracy, per-turn series, refine effect).

Pure Python/NumPy on detail rows (spec eval_and_data.md §1). Each function mirrors one piece of the original:
EVAL = eval_verified_test_rerank_temporal_grounding.py, REP = temp_report_temporal_grounding.bash (its Python),
WTR = scripts/eval/write_temporal_result.py. Edge cases follow the original unless a docstring says otherwise.
"""
from __future__ import annotations

import math
from collections import Counter
from statistics import median
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

IOU_THRESHOLDS = (0.3, 0.5, 0.7)  # TCK L143-180 IOU_THRESHOLDS=0.3,0.5,0.7; WTR L57-68 hard-codes the same
TOPK = (1, 5, 10, 100)  # TCK TOPK=1,5,10,100; WTR L33-46
ANSWERS = ("matched", "not_matched", "unknown")
STOP_REASONS = (  # EVAL L3536-3548
    "matched",
    "max_turn_reached_with_refine",
    "not_matched_no_refine_token",
    "unknown_no_refine_token",
    "refine_token_no_update",
    "continue_refine",
    "max_turn_reached",
)
REFINE_BUCKETS = ("1", "2", "3-5", "6-10", "11-20", "21-50", "51-100", "101+")  # REP step_bucket
_IOU_EPS = 1e-9

Row = Mapping[str, Any]


# ------------------------------------------------------------------------------------------ scalar coercions
def is_int(v) -> bool:
    # bool is an int subclass in Python; a rank/index of True is never meant. np.integer is accepted so that
    # in-memory rows (before the JSONL round trip turns them into ints) score the same as read-back rows.
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_bool(v) -> bool:
    return isinstance(v, (bool, np.bool_))


def as_rank(value) -> int | None:
    """A rank counts only if it is an integer > 0 (WTR L29-30); floats such as 3.0, None and -1 are dropped."""
    return int(value) if is_int(value) and int(value) > 0 else None


def as_float(value) -> float:
    """WTR L49-54: float(value), with anything unparsable or non-finite (None, "x", NaN, inf) -> 0.0."""
    try:
        out = float(value)
    except Exception:
        return 0.0
    return out if math.isfinite(out) else 0.0


def norm_answer(value) -> str:
    """REP's answer normalisation: str(v).strip().lower(), empty -> "unknown" (a missing answer reads "unknown")."""
    return str(value).strip().lower() or "unknown"


# ------------------------------------------------------------------------------------------ IoU (§1.1)
def iou(gt: Sequence[float], pred: Sequence[float], eps: float = _IOU_EPS) -> float:
    """Temporal IoU of two (start, end) spans in seconds (EVAL ``_compute_iou`` L918-931).

    Reversed spans are swapped; 0 if either span has length <= eps or the union <= eps; clipped to [0, 1].
    Clamping the prediction to the video duration happens earlier, in answer parsing.
    """
    gs, ge = float(gt[0]), float(gt[1])
    ps, pe = float(pred[0]), float(pred[1])
    if ge < gs:
        gs, ge = ge, gs
    if pe < ps:
        ps, pe = pe, ps
    if (ge - gs) <= eps or (pe - ps) <= eps:
        return 0.0
    inter = max(0.0, min(ge, pe) - max(gs, ps))
    union = (ge - gs) + (pe - ps) - inter
    if union <= eps:
        return 0.0
    return float(max(0.0, min(1.0, inter / union)))


def iou_r1(iou_raw: float, answer: str, time_parse_ok: bool, top1_is_gt: bool) -> float:
    """EVAL L3354: the IoU counts only if the model said matched, its span parsed, and the video shown is the GT."""
    return float(iou_raw) if (answer == "matched" and bool(time_parse_ok) and bool(top1_is_gt)) else 0.0


def turn_ious(gt_span: Sequence[float], pred_span: Sequence[float] | None, answer: str,
              top1_is_gt: bool) -> tuple[float, float]:
    """(iou_raw, iou_r1) of one turn (EVAL L3351-3354). pred_span None = the span did not parse.

    iou_raw is the IoU whenever the answer is matched and a span parsed (whatever video was shown);
    iou_r1 additionally needs top1_is_gt.
    """
    ok = pred_span is not None
    raw = iou(gt_span, pred_span) if (answer == "matched" and ok) else 0.0
    return raw, iou_r1(raw, answer, ok, top1_is_gt)


def iou_key(threshold: float) -> str:
    """Result key of an IoU threshold: 0.3 -> "IoU@0.3@R1" (repr keeps 0.25 as "0.25", unlike REP's :.1f)."""
    return f"IoU@{float(threshold)!r}@R1"


# ------------------------------------------------------------------------------------------ row bookkeeping
def dedup_rows(rows: Iterable[Row]) -> list[Row]:
    """De-duplicate detail rows, last copy wins (WTR L20-26, REP dedup_rows).

    Key: ``index`` if it is an int, else ``qid`` (stripped, if non-empty), else the row's position. A later copy
    replaces the earlier one *in the earlier one's place* (Python dict order), exactly like the original.
    """
    by_key: dict[str, Row] = {}
    for i, r in enumerate(rows):
        idx = r.get("index")
        qid = str(r.get("qid", "")).strip()
        key = f"idx:{int(idx)}" if is_int(idx) else (f"qid:{qid}" if qid else f"row:{i}")
        by_key[key] = r
    return list(by_key.values())


def max_turn_wtr(rows: Iterable[Row]) -> int:
    """WTR L90-96: max(1, every int ``max_turn``, every ``len(turns)``)."""
    mt = 1
    for r in rows:
        if is_int(r.get("max_turn")):
            mt = max(mt, int(r["max_turn"]))
        if isinstance(r.get("turns"), list):
            mt = max(mt, len(r["turns"]))
    return mt


# ------------------------------------------------------------------------------------------ VR (§1.4)
def retrieval_metrics(ranks: Iterable[Any], ks: Sequence[int] = TOPK, *, with_median: bool = False) -> dict:
    """R@k = mean(rank <= k), MRR = mean(1/rank), mean_rank (WTR rank_metrics L33-46; REP adds median_rank).

    Only integer ranks > 0 count (N). With N = 0 the result is WTR's {"N": 0, R@k: 0.0, MRR: 0.0}: no
    mean_rank key, as in the original.
    """
    rs = [r for r in (as_rank(v) for v in ranks) if r is not None]
    n = len(rs)
    out: dict[str, Any] = {"N": n}
    for k in ks:
        out[f"R@{k}"] = (sum(r <= k for r in rs) / n) if n else 0.0
    out["MRR"] = (sum(1.0 / r for r in rs) / n) if n else 0.0
    if n:
        out["mean_rank"] = sum(rs) / n
        if with_median:
            out["median_rank"] = median(rs)
    return out


def original_retrieval(rows: Iterable[Row], ks: Sequence[int] = TOPK, *, with_median: bool = False) -> dict:
    """VR without refinement: ranks of ``orig_rank`` (the precomputed text query, EVAL L3242)."""
    return retrieval_metrics([r.get("orig_rank") for r in rows], ks, with_median=with_median)


def final_retrieval(rows: Iterable[Row], ks: Sequence[int] = TOPK, *, with_median: bool = False) -> dict:
    """VR with refinement: ``final_rank`` (policy rank of the last executed turn), falling back to ``rank`` (WTR L101)."""
    return retrieval_metrics([r.get("final_rank", r.get("rank")) for r in rows], ks, with_median=with_median)


# ------------------------------------------------------------------------------------------ VCMR (§1.3)
def temporal_metrics(ious: Iterable[Any], thresholds: Sequence[float] = IOU_THRESHOLDS, *,
                     matched_only: Sequence[Any] | None = None) -> dict:
    """N, mIoU@R1 = mean(iou), IoU@θ@R1 = mean(iou >= θ) (inclusive; WTR L57-68, REP L183-197).

    Every value counts in N; unparsable/non-finite values count as 0 (WTR as_float). With ``matched_only``
    (iou_raw of turns answered matched with a parsed span, REP) the diagnostic mIoU_matched_only is added.
    """
    vals = [as_float(v) for v in ious]
    n = len(vals)
    out: dict[str, Any] = {"N": n, "mIoU@R1": (sum(vals) / n) if n else 0.0}
    for th in thresholds:
        out[iou_key(th)] = (sum(v >= th for v in vals) / n) if n else 0.0
    if matched_only is not None:
        mo = [as_float(v) for v in matched_only]
        out["mIoU_matched_only"] = (sum(mo) / len(mo)) if mo else 0.0
        out["matched_with_time_count"] = len(mo)
    return out


def final_iou_value(row: Row):
    """WTR L103-105's key chain for the final IoU: final_iou_r1, else final_iou_raw, final_iou, iou_r1, iou."""
    return row.get("final_iou_r1", row.get("final_iou_raw", row.get("final_iou", row.get("iou_r1", row.get("iou")))))


def final_temporal(rows: Iterable[Row], thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict:
    """VCMR headline: IoU@θ@R1 / mIoU@R1 over every row (N = all evaluated queries, §1.3)."""
    return temporal_metrics([final_iou_value(r) for r in rows], thresholds)


def final_matched_only(rows: Iterable[Row]) -> list[float]:
    """final_iou_raw of rows whose final answer is matched with a parsed span, any video (EVAL L1718, REP L193)."""
    return [as_float(r.get("final_iou_raw", 0.0)) for r in rows
            if norm_answer(r.get("final_answer", "unknown")) == "matched" and bool(r.get("final_time_parse_ok", False))]


# ------------------------------------------------------------------------------------------ VER (§1.5)
def answer_accuracy(answers: Iterable[Any], top1_is_gt: Iterable[Any]) -> dict:
    """REP ``answer_accuracy`` L378-410 on parallel (answer, gt-flag) sequences.

    Only pairs whose answer is matched/not_matched and whose flag is a bool count ("unknown" is left out of N).
    Correct = matched ∧ flag, or not_matched ∧ ¬flag. Returns N, overall_acc, pred_matched, pred_not_matched,
    match_acc_pred (= correct matched / predicted matched) and not_match_acc_pred.
    """
    valid = correct = pred_m = pred_n = corr_m = corr_n = 0
    for a, g in zip(answers, top1_is_gt):
        ans = str(a).strip().lower()
        if ans not in ("matched", "not_matched") or not _is_bool(g):
            continue
        valid += 1
        if ans == "matched":
            pred_m += 1
            if g:
                correct += 1
                corr_m += 1
        else:
            pred_n += 1
            if not g:
                correct += 1
                corr_n += 1
    return {
        "N": valid,
        "overall_acc": (correct / valid) if valid else 0.0,
        "pred_matched": pred_m,
        "pred_not_matched": pred_n,
        "match_acc_pred": (corr_m / pred_m) if pred_m else 0.0,
        "not_match_acc_pred": (corr_n / pred_n) if pred_n else 0.0,
    }


def _last_turn(row: Row) -> Row:
    turns = row.get("turns")
    if not isinstance(turns, list):
        return {}
    dicts = [t for t in turns if isinstance(t, dict)]
    return dicts[-1] if dicts else {}


def verification_accuracy(rows: Sequence[Row]) -> dict:
    """VER three ways (spec README decision 7, §1.5).

    turn1: (turn1_answer, turn1_top1_is_gt), always correctly paired (REP L473).
    final_as_original: (final_answer, final_top1_is_gt) as REP L474 pairs it; when the last turn refined, the
      flag describes the post-refinement top-1, a video the model never judged.
    final_paired: the last executed turn's answer with the top1_is_gt of the video judged in that turn
      (``turns[-1]``); rows without a turns list are left out (no bool flag).
    """
    last = [_last_turn(r) for r in rows]
    return {
        "turn1": answer_accuracy([r.get("turn1_answer", "unknown") for r in rows],
                                 [r.get("turn1_top1_is_gt") for r in rows]),
        "final_as_original": answer_accuracy([r.get("final_answer", "unknown") for r in rows],
                                             [r.get("final_top1_is_gt") for r in rows]),
        "final_paired": answer_accuracy([t.get("answer", "unknown") for t in last],
                                        [t.get("top1_is_gt") for t in last]),
    }


# ------------------------------------------------------------------------------------------ per-turn series (§1.6)
def _pos_int(v) -> bool:
    return is_int(v) and int(v) > 0


def extract_policy_turns(row: Row) -> list[dict]:
    """REP ``extract_policy_turns``: the executed turns of a row with a usable policy rank.

    policy_rank falls back (if missing/invalid) to: the next turn's rank when this turn applied a refinement,
    then the row's final_rank, then this turn's rank_before_refine (or rank). Turns still without a rank > 0
    and non-dict entries are skipped.
    """
    turns = row.get("turns", [])
    if not isinstance(turns, list):
        return []
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            continue
        policy_rank = t.get("policy_rank")
        rank_before = t.get("rank_before_refine", t.get("rank"))
        if not _pos_int(policy_rank):
            if bool(t.get("refine_applied", False)):
                if i + 1 < len(turns) and isinstance(turns[i + 1], dict) and _pos_int(turns[i + 1].get("rank")):
                    policy_rank = int(turns[i + 1]["rank"])
                if not _pos_int(policy_rank) and is_int(row.get("final_rank")):
                    policy_rank = int(row["final_rank"])
            if not _pos_int(policy_rank) and is_int(rank_before):
                policy_rank = int(rank_before)
        if not _pos_int(policy_rank):
            continue
        try:
            turn_no = int(t.get("turn", i + 1))
        except Exception:
            turn_no = i + 1
        try:
            rb = int(rank_before)
        except Exception:
            rb = int(policy_rank)
        out.append({
            "turn": turn_no,
            "rank_before_refine": rb,
            "policy_rank": int(policy_rank),
            "answer": norm_answer(t.get("answer", "unknown")),
            "time_parse_ok": bool(t.get("time_parse_ok", False)),
            "iou_raw": as_float(t.get("iou_raw", 0.0)),
            "iou_r1": as_float(t.get("iou_r1", 0.0)),
        })
    return out


def _fallback_turns(row: Row) -> list[dict]:
    """REP collect_turn_series: a row without usable turns becomes one turn from its final_* (or orig) values."""
    rank = row.get("final_rank")
    if not _pos_int(rank):
        rank = row.get("orig_rank")
    if not _pos_int(rank):
        return []
    return [{
        "turn": 1,
        "rank_before_refine": int(rank),
        "policy_rank": int(rank),
        "answer": norm_answer(row.get("final_answer", "unknown")),
        "time_parse_ok": bool(row.get("final_time_parse_ok", False)),
        "iou_raw": as_float(row.get("final_iou_raw", 0.0)),
        "iou_r1": as_float(row.get("final_iou_r1", 0.0)),
    }]


def turn_series(rows: Sequence[Row]) -> dict:
    """REP ``collect_turn_series``: per-turn value lists for policy@t (carry forward) and strict turn t.

    Returns {"max_turn", "policy_ranks", "strict_ranks", "policy_iou", "strict_iou", "policy_iou_matched",
    "strict_iou_matched"}, each series a {t: list} for t = 1..max_turn. max_turn = max(1, int row max_turn,
    number of extracted turns).
    """
    per_row = []
    max_turn = 1
    for r in rows:
        if is_int(r.get("max_turn")):
            max_turn = max(max_turn, int(r["max_turn"]))
        turns = extract_policy_turns(r)
        max_turn = max(max_turn, len(turns))
        per_row.append(turns or _fallback_turns(r))
    keys = ("policy_ranks", "strict_ranks", "policy_iou", "strict_iou", "policy_iou_matched", "strict_iou_matched")
    out: dict[str, Any] = {k: {t: [] for t in range(1, max_turn + 1)} for k in keys}
    out["max_turn"] = max_turn
    for turns in per_row:
        if not turns:
            continue
        for t in range(1, max_turn + 1):
            td = turns[t - 1] if t <= len(turns) else turns[-1]  # a stopped query carries its last turn forward
            out["policy_ranks"][t].append(td["policy_rank"])
            out["policy_iou"][t].append(td["iou_r1"])
            if td["answer"] == "matched" and td["time_parse_ok"]:
                out["policy_iou_matched"][t].append(td["iou_raw"])
        for t, td in enumerate(turns, start=1):
            out["strict_ranks"][t].append(td["policy_rank"])
            out["strict_iou"][t].append(td["iou_r1"])
            if td["answer"] == "matched" and td["time_parse_ok"]:
                out["strict_iou_matched"][t].append(td["iou_raw"])
    return out


def series_metrics(series: dict, kind: str, ks: Sequence[int] = TOPK,
                   thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict[int, dict]:
    """{t: {"retrieval", "temporal"}} from a turn_series() result; kind = "policy" or "strict"."""
    return {
        t: {
            "retrieval": retrieval_metrics(series[f"{kind}_ranks"][t], ks, with_median=True),
            "temporal": temporal_metrics(series[f"{kind}_iou"][t], thresholds,
                                         matched_only=series[f"{kind}_iou_matched"][t]),
        }
        for t in range(1, series["max_turn"] + 1)
    }


def policy_by_turn(rows: Sequence[Row], ks: Sequence[int] = TOPK,
                   thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict[int, dict]:
    """policy@t for t = 1..max_turn: {t: {"retrieval", "temporal"}} (EVAL L1786-1800, REP L274-281).

    A query that stopped at turn n < t counts with its turn-n values, so policy@max_turn = the final values.
    """
    return series_metrics(turn_series(rows), "policy", ks, thresholds)


def strict_by_turn(rows: Sequence[Row], ks: Sequence[int] = TOPK,
                   thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict[int, dict]:
    """strict turn t: only queries that actually ran turn t (EVAL L1802-1809, REP L283-288)."""
    return series_metrics(turn_series(rows), "strict", ks, thresholds)


def pick_turn(row: Row, turn_idx: int) -> Row:
    """WTR L71-76: the row's turns[turn_idx-1] if it exists and is a dict, else {}."""
    turns = row.get("turns")
    if not isinstance(turns, list) or len(turns) < turn_idx:
        return {}
    t = turns[turn_idx - 1]
    return t if isinstance(t, dict) else {}


def result_turns(rows: Sequence[Row], ks: Sequence[int] = TOPK,
                 thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict[str, dict]:
    """result.json ``turns`` (WTR L108-113): {"t": {"retrieval", "temporal"}} for t = 1..max_turn_wtr.

    A query with fewer than t turns yields {}: its rank is dropped from the retrieval N, but its IoU counts as 0
    in the temporal N. Neither policy@t nor strict; kept for comparability (§1.6).
    """
    out = {}
    for t in range(1, max_turn_wtr(rows) + 1):
        turns = [pick_turn(r, t) for r in rows]
        out[str(t)] = {
            "retrieval": retrieval_metrics([d.get("policy_rank", d.get("rank")) for d in turns], ks),
            "temporal": temporal_metrics([d.get("iou_r1", d.get("iou_raw", 0.0)) for d in turns], thresholds),
        }
    return out


# ------------------------------------------------------------------------------------------ refine effect (§1.7)
def step_bucket(delta: int) -> str:
    """REP ``step_bucket``: |rank change| -> "1", "2", "3-5", "6-10", "11-20", "21-50", "51-100", "101+"."""
    if delta == 1:
        return "1"
    if delta == 2:
        return "2"
    if 3 <= delta <= 5:
        return "3-5"
    if 6 <= delta <= 10:
        return "6-10"
    if 11 <= delta <= 20:
        return "11-20"
    if 21 <= delta <= 50:
        return "21-50"
    if 51 <= delta <= 100:
        return "51-100"
    return "101+"


def refine_effect_by_turn(rows: Sequence[Row], max_turn: int | None = None) -> dict[int, dict]:
    """REP ``collect_refine_effect_by_turn`` (L319-375): what each applied refinement did to the GT rank.

    For every extracted turn whose raw dict has refine_applied, delta = rank_before_refine - policy_rank
    (> 0 improved). Per turn: applied, improved/same/worse counts and shares, top1_after (policy_rank == 1),
    improve/worse step means and bucket counts (REFINE_BUCKETS order).
    """
    if max_turn is None:
        max_turn = turn_series(rows)["max_turn"]
    acc = {t: {"applied": 0, "improved": 0, "same": 0, "worse": 0, "top1_after": 0,
               "improve_steps": [], "worse_steps": []} for t in range(1, max_turn + 1)}
    for r in rows:
        raw_turns = r.get("turns", [])
        raw_by_turn = {}
        if isinstance(raw_turns, list):
            for i, rt in enumerate(raw_turns):
                if isinstance(rt, dict):
                    try:
                        raw_by_turn[int(rt.get("turn", i + 1))] = rt
                    except Exception:
                        raw_by_turn[i + 1] = rt
        for td in extract_policy_turns(r):
            t = td["turn"]
            if not 1 <= t <= max_turn or not bool(raw_by_turn.get(t, {}).get("refine_applied", False)):
                continue
            before, after = td["rank_before_refine"], td["policy_rank"]
            if before <= 0 or after <= 0:
                continue
            st = acc[t]
            st["applied"] += 1
            st["top1_after"] += int(after == 1)
            delta = before - after
            if delta > 0:
                st["improved"] += 1
                st["improve_steps"].append(delta)
            elif delta == 0:
                st["same"] += 1
            else:
                st["worse"] += 1
                st["worse_steps"].append(-delta)
    out = {}
    for t, st in acc.items():
        a = st["applied"]
        imp, wor = st.pop("improve_steps"), st.pop("worse_steps")
        st.update({
            "improved_share": st["improved"] / a if a else 0.0,
            "same_share": st["same"] / a if a else 0.0,
            "worse_share": st["worse"] / a if a else 0.0,
            "top1_after_share": st["top1_after"] / a if a else 0.0,
            "improve_steps_mean": sum(imp) / len(imp) if imp else 0.0,
            "worse_steps_mean": sum(wor) / len(wor) if wor else 0.0,
            "improve_buckets": {b: sum(step_bucket(d) == b for d in imp) for b in REFINE_BUCKETS},
            "worse_buckets": {b: sum(step_bucket(d) == b for d in wor) for b in REFINE_BUCKETS},
        })
        out[t] = st
    return out


# ------------------------------------------------------------------------------------------ counts (REP [Answer/Turn])
def answer_counts(rows: Iterable[Row]) -> dict[str, int]:
    """Counter of normalised final_answer (REP L420)."""
    return dict(Counter(norm_answer(r.get("final_answer", "unknown")) for r in rows))


def stop_reason_counts(rows: Iterable[Row]) -> dict[str, int]:
    """Counter of stop_reason, most common first (REP L421, L503-505)."""
    c = Counter(str(r.get("stop_reason", "unknown")).strip() or "unknown" for r in rows)
    return dict(c.most_common())


def matched_turn_counts(rows: Iterable[Row]) -> dict[int, int]:
    """Counter of matched_turn (0 = never matched; REP L422)."""
    out: Counter = Counter()
    for r in rows:
        try:
            out[int(r.get("matched_turn", 0) or 0)] += 1
        except Exception:
            out[0] += 1
    return dict(out)


def refine_usage(rows: Sequence[Row]) -> dict[str, int]:
    """REP [Refine]: rows that used a refinement, and turn totals of generated / applied <REFINE>."""
    def _int(v):
        try:
            return int(v or 0)
        except Exception:
            return 0
    return {
        "used_refine_any": sum(bool(r.get("used_refine_any", False)) for r in rows),
        "refine_token_generated_turns": sum(_int(r.get("refine_token_generated_turns")) for r in rows),
        "refine_applied_turns": sum(_int(r.get("refine_applied_turns")) for r in rows),
    }
