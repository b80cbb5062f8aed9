"""The original's selection rules over embeddings, as pure functions of rows and matrices (numpy only):

  hard_negatives   preprocess/annotation_process/build_hard_negatives_npy.py (HN)      eval_and_data.md §3.7
  top1_pool        preprocess/dataset_generation/build_top1_pool.py (TP)               §3.8
  grpo_rows        preprocess/data_annotation_process/build_verified_search_minimal_top1.py (BV), §3.9
  retrieval_recall preprocess/annotation_process/eval_retrieval_npy.py (ER)            §4.1 (test/metrics_npy.json)

Retrieval is exact inner product over L2-normalised rows; `Search` is any (queries [B, D], k) -> (scores [B, k],
rows [B, k]) function: `numpy_search` (ties to the lower row, as the eval's argmax) or a FAISS IndexFlatIP's
`search` (what TP and BV call).
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import numpy as np

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise x / max(||x||, eps) in float32 (HN/ER `_l2_norm_rows`)."""
    x = np.asarray(x, dtype=np.float32)
    return (x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), eps, None)).astype(np.float32)


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Descending order per row, ties to the lower index (the eval's argmax picks the first, EVAL L3280)."""
    return np.argsort(-np.asarray(scores), axis=-1, kind="stable")


def numpy_search(matrix: np.ndarray) -> Search:
    """Exact inner-product search over the rows of `matrix` (L2-normalised here, as build_faiss.py does)."""
    v = l2_normalize(matrix)

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.asarray(q, np.float32) @ v.T
        k = min(int(k), v.shape[0])
        idx = rank_order(scores)[:, :k]
        return np.take_along_axis(scores, idx, axis=1), idx
    return search


# ---------------------------------------------------------------------------------------------------------------
# 08 hard negatives
# ---------------------------------------------------------------------------------------------------------------
def hard_negatives(query_meta: Sequence[Mapping[str, Any]], top_rows: np.ndarray, doc_ids: Sequence[str], *,
                   max_negatives: int = 50, dedup: bool = True) -> tuple[dict[str, list[str]], dict[str, int]]:
    """HN L116-154: per query row, its top-`TOPK_POOL` documents (`top_rows` [Nq, pool], best first) without the
    positive and (dedup) repeats, at most `max_negatives` (0 = no cap). A row without qid is skipped; a repeated
    qid keeps its first row. Returns ({qid: [doc_id, ...]}, {missing_qid, duplicate_qid})."""
    out: dict[str, list[str]] = {}
    skips = {"missing_qid": 0, "duplicate_qid": 0}
    for i, row in enumerate(query_meta):
        qid = str(row.get("qid") or "").strip()
        if not qid:
            skips["missing_qid"] += 1
            continue
        if qid in out:
            skips["duplicate_qid"] += 1
            continue
        pos = str(row.get("pos_doc_id") or "").strip()
        negs: list[str] = []
        seen: set[str] = set()
        for r in np.asarray(top_rows[i]).tolist():
            if r < 0 or r >= len(doc_ids):
                continue
            d = doc_ids[r]
            if not d or (pos and d == pos):
                continue
            if dedup:
                if d in seen:
                    continue
                seen.add(d)
            negs.append(d)
            if max_negatives > 0 and len(negs) >= max_negatives:
                break
        out[qid] = negs
    return out, skips


# ---------------------------------------------------------------------------------------------------------------
# 05 top-1 pool
# ---------------------------------------------------------------------------------------------------------------
def _to_float(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if x != x else x


def _norm_text(text: Any) -> str:
    return " ".join(str(text or "").strip().lower().split())


def _qid_to_desc_id(qid: str) -> str | None:
    token = str(qid or "").strip()
    if not token:
        return None
    if token.endswith("_fig"):
        token = token[:-len("_fig")]
    if token.isdigit():
        return token
    prefix = token.split("_", 1)[0]
    return prefix if prefix.isdigit() else None


class RawIndex:
    """TP `_load_raw_annotation_index` / `_resolve_raw_annotation_row` (L108-164): raw rows by desc_id, normalised
    fig_desc and normalised cog_desc, first row wins."""

    def __init__(self, raw_rows: Sequence[Mapping[str, Any]]):
        self.by_desc: dict[str, Mapping] = {}
        self.by_fig: dict[str, Mapping] = {}
        self.by_cog: dict[str, Mapping] = {}
        for row in raw_rows:
            d = str(row.get("desc_id", "")).strip()
            if d and d not in self.by_desc:
                self.by_desc[d] = row
            f = _norm_text(row.get("fig_desc", ""))
            if f and f not in self.by_fig:
                self.by_fig[f] = row
            c = _norm_text(row.get("cog_desc", ""))
            if c and c not in self.by_cog:
                self.by_cog[c] = row

    def resolve(self, qid: str, query: str) -> Mapping | None:
        d = _qid_to_desc_id(qid)
        if d and d in self.by_desc:
            return self.by_desc[d]
        q = _norm_text(query)
        return self.by_fig.get(q) or self.by_cog.get(q)


def _gt_span_from_raw(row: Mapping[str, Any]) -> tuple[float | None, float | None, float | None]:
    """TP `_extract_gt_span_from_raw` (L167-188): the `time` span; gt_duration is the span's length."""
    start = end = duration = None
    t = row.get("time")
    if isinstance(t, (list, tuple)) and len(t) >= 2:
        start, end = _to_float(t[0]), _to_float(t[1])
    if start is None:
        start = _to_float(row.get("start"))
    if end is None:
        end = _to_float(row.get("end"))
    if start is not None and end is not None:
        duration = max(0.0, float(end) - float(start))
    else:
        duration = _to_float(row.get("segment_duration"))
        if duration is None:
            duration = _to_float(row.get("duration"))
    return start, end, duration


def pool_row(meta_row: Mapping[str, Any], query_index: int, top1_doc_id: str, top1_score: float,
             doc_meta: Mapping[str, Mapping[str, Any]], raw_index: RawIndex | None) -> dict[str, Any]:
    """One top1_pool.train.jsonl row (TP L390-460)."""
    pos = str(meta_row.get("pos_doc_id", "")).strip()
    qid = _qid_from_row(meta_row, query_index)
    top1_meta = doc_meta.get(top1_doc_id, {})
    gt_meta = doc_meta.get(pos, {})
    gt_video_id = str(gt_meta.get("video_id", "")).strip() or pos
    gt_video_path = str(gt_meta.get("video_path", "")).strip()
    gt_start, gt_end, gt_duration = gt_meta.get("start"), gt_meta.get("end"), gt_meta.get("duration")
    raw = raw_index.resolve(qid, str(meta_row.get("query", "")).strip()) if raw_index is not None else None
    if raw is not None:
        raw_video = str(raw.get("video", "")).strip()
        if raw_video:
            gt_video_id = raw_video
            gt_video_path = str(doc_meta.get(raw_video, {}).get("video_path", "")).strip() or gt_video_path
        s, e, d = _gt_span_from_raw(raw)
        gt_start = s if s is not None else gt_start
        gt_end = e if e is not None else gt_end
        gt_duration = d if d is not None else gt_duration
    return {
        "pair_id": f"{qid}::{top1_doc_id}", "qid": qid, "query": str(meta_row.get("query", "")).strip(),
        "query_index": int(query_index), "query_pos_doc_id": pos, "fig_score": meta_row.get("fig_score"),
        "top1_doc_id": top1_doc_id, "top1_score": float(top1_score), "top1_rank": 1,
        "gold_label": "match" if top1_doc_id == pos else "not_match",
        "top1_video_id": str(top1_meta.get("video_id", "")).strip() or top1_doc_id,
        "top1_video_path": str(top1_meta.get("video_path", "")).strip(),
        "top1_start": top1_meta.get("start"), "top1_end": top1_meta.get("end"),
        "top1_duration": top1_meta.get("duration"),
        "gt_video_id": gt_video_id, "gt_video_path": gt_video_path, "gt_start": gt_start, "gt_end": gt_end,
        "gt_duration": gt_duration,
    }


def _qid_from_row(row: Mapping[str, Any], idx: int) -> str:
    """TP `_qid_from_row`."""
    qid = str(row.get("qid", "")).strip()
    if qid:
        return qid
    desc = str(row.get("desc_id", "")).strip()
    return f"{desc}_fig" if desc else f"idx_{idx}"


def _target_count(available: int, requested: int) -> int:
    """TP `_resolve_target_count` with allow_smaller=1."""
    return available if requested <= 0 else min(int(requested), available)


def sample_pool(match_rows: list, not_rows: list, num_match: int, num_not_match: int, seed: int = 42) -> list:
    """TP L462-475: one random.Random(seed) shuffles the match rows, then the not-match rows, keeps the first
    num_match / num_not_match of each (fewer if fewer exist; <= 0 = all), and shuffles the concatenation."""
    match_rows, not_rows = list(match_rows), list(not_rows)
    rng = random.Random(int(seed))
    rng.shuffle(match_rows)
    rng.shuffle(not_rows)
    selected = match_rows[:_target_count(len(match_rows), num_match)] + \
        not_rows[:_target_count(len(not_rows), num_not_match)]
    rng.shuffle(selected)
    return selected


def top1_pool(query_meta: Sequence[Mapping[str, Any]], top1_rows: np.ndarray, top1_scores: np.ndarray,
              doc_ids: Sequence[str], doc_meta: Mapping[str, Mapping[str, Any]],
              raw_rows: Sequence[Mapping[str, Any]] | None, *, num_match: int = 1000, num_not_match: int = 1000,
              seed: int = 42) -> tuple[list[dict], dict[str, int]]:
    """TP main (L330-480): the top-1 of each query whose text and positive are non-empty and whose positive is in
    the corpus (exclude_missing_pos=1), labelled match / not_match, sampled by `sample_pool`.

    top1_rows / top1_scores: [Nq] FAISS top-1 row and score of every query_meta row (in row order)."""
    id_set = set(doc_ids)
    raw_index = RawIndex(raw_rows) if raw_rows is not None else None
    match, not_match = [], []
    stats = {"queries_total": len(query_meta), "valid": 0, "raw_gt_hit": 0}
    for i, m in enumerate(query_meta):
        query, pos = str(m.get("query", "")).strip(), str(m.get("pos_doc_id", "")).strip()
        if not query or not pos or pos not in id_set:
            continue
        stats["valid"] += 1
        r = int(top1_rows[i])
        if r < 0 or r >= len(doc_ids):
            continue
        row = pool_row(m, i, str(doc_ids[r]), float(top1_scores[i]), doc_meta, raw_index)
        if raw_index is not None and raw_index.resolve(row["qid"], row["query"]) is not None:
            stats["raw_gt_hit"] += 1
        (match if row["gold_label"] == "match" else not_match).append(row)
    selected = sample_pool(match, not_match, num_match, num_not_match, seed)
    stats.update(match_available=len(match), not_match_available=len(not_match),
                 selected_match=sum(r["gold_label"] == "match" for r in selected),
                 selected_not_match=sum(r["gold_label"] == "not_match" for r in selected), rows_out=len(selected))
    return selected, stats


# ---------------------------------------------------------------------------------------------------------------
# 09 GRPO rows (minimal top-1) with match balancing
# ---------------------------------------------------------------------------------------------------------------
GRPO_DROP_KEYS = ("drop_empty_query_or_gt", "drop_query_missing_meta", "drop_invalid_qrow", "drop_empty_top1",
                  "drop_missing_video_npy")


def normalize_time_span(raw: Any) -> list[float] | None:
    """BV `_normalize_time_span`: [start, end] finite with end > start, else None."""
    if not isinstance(raw, (list, tuple)) or len(raw) < 2:
        return None
    s, e = _finite(raw[0]), _finite(raw[1])
    if s is None or e is None or e <= s:
        return None
    return [s, e]


def _finite(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def positive_or_none(raw: Any) -> float | None:
    """BV `_normalize_duration`: a finite duration > 0, else None."""
    d = _finite(raw)
    return d if d is not None and d > 0 else None


def matched_solution(gt_time: list[float] | None, gt_duration: float | None) -> str | None:
    """BV `_format_matched_solution_with_time`: the GT span (else [0, duration]) with 2 decimals; None when
    neither exists (BV then writes a span-less solution and skips the row)."""
    if gt_time is None:
        if gt_duration is None:
            return None
        gt_time = [0.0, float(gt_duration)]
    return f"<answer>matched</answer><start>{gt_time[0]:.2f}</start><end>{gt_time[1]:.2f}</end><REFINE>"


def first_query_rows(query_meta: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int, str]]:
    """BV `_load_query_meta`: stripped query text -> (row, qid); the first occurrence wins, empty texts skipped."""
    out: dict[str, tuple[int, str]] = {}
    for i, row in enumerate(query_meta):
        q = str(row.get("query", "")).strip()
        if q and q not in out:
            out[q] = (i, str(row.get("qid", "")).strip())
    return out


def grpo_rows(raw_rows: Sequence[Mapping[str, Any]], query_meta: Sequence[Mapping[str, Any]],
              query_vectors: np.ndarray, search: Search, doc_ids: Sequence[str],
              npy_exists: Callable[[str], bool], *, dataset_name: str, problem_prefix: str,
              hard_negative_topk: int = 24, hard_negative_depth: int = 200, drop_missing_video_npy: bool = True,
              augment_match_to_balance: bool = True, target_match_ratio: float = 1.0, augment_seed: int = 42,
              raw_annotation: str = "") -> tuple[list[dict], dict[str, Any]]:
    """BV `build_dataset` (L236-478): one row per raw annotation row, then matched rows cloned from not-matched
    ones (GT video shown) until #matched = ceil(#not_matched x ratio). Returns (rows, stats.minimal_top1.json)."""
    stats: dict[str, Any] = {
        "dataset_name": dataset_name, "raw_annotation": raw_annotation,
        "rows_total": 0, "rows_written": 0, "rows_matched": 0, "rows_not_matched": 0, "rows_written_raw": 0,
        "rows_matched_raw": 0, "rows_not_matched_raw": 0, **{k: 0 for k in GRPO_DROP_KEYS},
        "augment_match_to_balance": int(bool(augment_match_to_balance)),
        "target_match_ratio": float(target_match_ratio), "augment_seed": int(augment_seed),
        "rows_augmented_match_added": 0, "rows_augmented_match_target": 0, "rows_augmented_match_candidates": 0,
        "rows_augmented_drop_missing_gt_npy": 0, "rows_augmented_drop_missing_gt_time": 0,
        "hard_negative_topk": int(hard_negative_topk), "hard_negative_depth": int(hard_negative_depth),
        "hard_negative_avg_count": 0.0,
    }
    text2row = first_query_rows(query_meta)
    depth = int(max(1, hard_negative_depth, hard_negative_topk + 1))
    rows: list[dict] = []
    for ex in raw_rows:
        stats["rows_total"] += 1
        query = str(ex.get("fig_desc", ex.get("query", ""))).strip()
        gt_video = str(ex.get("video", ex.get("gt_video", ex.get("video", "")))).strip()
        gt_time = normalize_time_span(ex.get("time", ex.get("gt_time", ex.get("time"))))
        gt_duration = positive_or_none(ex.get("duration", ex.get("gt_duration", ex.get("duration"))))
        if not query or not gt_video:
            stats["drop_empty_query_or_gt"] += 1
            continue
        hit = text2row.get(query)
        if hit is None:
            stats["drop_query_missing_meta"] += 1
            continue
        q_row, fallback_qid = hit
        if q_row < 0 or q_row >= len(query_vectors):
            stats["drop_invalid_qrow"] += 1
            continue
        q = l2_normalize(np.asarray(query_vectors[q_row], np.float32)[None])
        scores, idxs = search(q, depth)
        scores, idxs = np.asarray(scores)[0], np.asarray(idxs)[0]
        if idxs.size == 0 or int(idxs[0]) < 0:
            stats["drop_empty_top1"] += 1
            continue
        top1 = str(doc_ids[int(idxs[0])])
        if drop_missing_video_npy and not npy_exists(top1):
            stats["drop_missing_video_npy"] += 1
            continue
        neg_ids: list[str] = []
        neg_scores: list[float] = []
        neg_ranks: list[int] = []
        for rank, r in enumerate(idxs.tolist(), start=1):
            if r < 0:
                continue
            d = str(doc_ids[r])
            if d == gt_video or d in neg_ids:
                continue
            neg_ids.append(d)
            neg_scores.append(float(scores[rank - 1]))
            neg_ranks.append(rank)
            if len(neg_ids) >= int(hard_negative_topk):
                break
        is_match = top1 == gt_video
        desc = str(ex.get("desc_id", "")).strip()
        qid = str(ex.get("qid", "")).strip() or fallback_qid or (f"{desc}_fig" if desc else f"q_{q_row}")
        rows.append({
            "problem_id": -1, "qid": qid, "problem": f"{problem_prefix}\n\nQuery:\n{query}",
            "data_type": "video", "problem_type": "multiple choice",
            "options": ["<answer>matched</answer>", "<answer>not_matched</answer><REFINE>"],
            "solution": "<answer>matched</answer>" if is_match else "<answer>not_matched</answer><REFINE>",
            "path": f"{top1}.npy", "data_source": f"Verified-Search-Minimal-Top1-{dataset_name}", "query": query,
            "gt_video": gt_video, "gt_time": gt_time, "gt_duration": gt_duration, "retrieved_video": top1,
            "label": "matched" if is_match else "not_matched", "hard_negative_ids": neg_ids,
            "hard_negative_scores": neg_scores, "hard_negative_ranks": neg_ranks, "is_augmented": False,
        })
    n_match = sum(r["label"] == "matched" for r in rows)
    n_not = sum(r["label"] == "not_matched" for r in rows)
    stats.update(rows_written_raw=len(rows), rows_matched_raw=n_match, rows_not_matched_raw=n_not)
    if augment_match_to_balance and target_match_ratio > 0.0 and n_not > 0:
        rows.extend(balance_matches(rows, n_match, n_not, npy_exists, stats, target_match_ratio, augment_seed))
    for i, r in enumerate(rows):
        r["problem_id"] = i
    stats.update(rows_written=len(rows), rows_matched=sum(r["label"] == "matched" for r in rows),
                 rows_not_matched=sum(r["label"] == "not_matched" for r in rows))
    if rows:
        stats["hard_negative_avg_count"] = sum(len(r["hard_negative_ids"]) for r in rows) / float(len(rows))
    return rows, stats


def balance_matches(rows: Sequence[dict], n_match: int, n_not: int, npy_exists: Callable[[str], bool],
                    stats: dict[str, Any], target_match_ratio: float = 1.0, seed: int = 42) -> list[dict]:
    """BV L397-461: candidates are not-matched rows whose GT npy exists and that have a span (else a duration);
    shuffled cycles of them (with replacement across cycles) fill the missing matched count; each clone shows the
    GT video with the span solution. Updates the rows_augmented_* counters in `stats`."""
    target = int(math.ceil(n_not * float(target_match_ratio)))
    stats["rows_augmented_match_target"] = target
    need = max(0, target - n_match)
    if need <= 0:
        return []
    candidates = []
    for r in rows:
        if r["label"] != "not_matched" or not r["gt_video"]:
            continue
        if not npy_exists(r["gt_video"]):
            stats["rows_augmented_drop_missing_gt_npy"] += 1
            continue
        if matched_solution(r["gt_time"], r["gt_duration"]) is None:
            stats["rows_augmented_drop_missing_gt_time"] += 1
            continue
        candidates.append(r)
    stats["rows_augmented_match_candidates"] = len(candidates)
    if not candidates:
        return []
    rng = random.Random(int(seed))
    selected: list[dict] = []
    while len(selected) < need:
        cycle = list(candidates)
        rng.shuffle(cycle)
        selected.extend(cycle[:need - len(selected)])
    out = []
    for src in selected:
        aug = dict(src)
        aug.update(problem_id=-1, solution=matched_solution(src["gt_time"], src["gt_duration"]),
                   path=f"{src['gt_video']}.npy", retrieved_video=src["gt_video"], label="matched",
                   is_augmented=True, augmentation_type="gt_video_positive", source_label="not_matched",
                   source_retrieved_video=src["retrieved_video"])
        out.append(aug)
    stats["rows_augmented_match_added"] = len(out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# 07 test R@k (metrics_npy.json)
# ---------------------------------------------------------------------------------------------------------------
def _first_non_empty(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    for k in keys:
        v = row.get(k)
        if v is not None and str(v).strip():
            return str(v).strip()
    return ""


def eval_pairs(query_meta: Sequence[Mapping[str, Any]], query_rows: Sequence[Mapping[str, Any]] | None, *,
               query_fields: Sequence[str] = ("query", "fig_desc"),
               pos_fields: Sequence[str] = ("pos_doc_id", "video", "query_pos_doc_id"),
               ) -> tuple[list[int], list[str], dict[str, int]]:
    """ER `_resolve_eval_indices` (L67-121): each listed query row consumes the next unused meta row with the same
    (text, positive) (or the same text when it names no positive). Returns (meta rows, positives, skips)."""
    texts = [str(r.get("query", "")).strip() for r in query_meta]
    pos = [str(r.get("pos_doc_id", "")).strip() for r in query_meta]
    skip = {"query_empty": 0, "query_pair_not_found_in_meta": 0, "query_not_found_in_meta": 0}
    if query_rows is None:
        keep = [i for i, (q, p) in enumerate(zip(texts, pos)) if q and p]
        return keep, [pos[i] for i in keep], skip
    pair_b: dict[tuple[str, str], list[int]] = defaultdict(list)
    text_b: dict[str, list[int]] = defaultdict(list)
    for i, (q, p) in enumerate(zip(texts, pos)):
        pair_b[(q, p)].append(i)
        text_b[q].append(i)
    used = np.zeros(len(query_meta), bool)
    cursors: dict = {}

    def consume(key, buckets) -> int | None:
        arr = buckets.get(key)
        if not arr:
            return None
        i = cursors.get(key, 0)
        while i < len(arr) and used[arr[i]]:
            i += 1
        cursors[key] = min(i + 1, len(arr)) if i < len(arr) else len(arr)
        if i >= len(arr):
            return None
        used[arr[i]] = True
        return int(arr[i])

    rows, targets = [], []
    for row in query_rows:
        q = _first_non_empty(row, query_fields)
        if not q:
            skip["query_empty"] += 1
            continue
        p = _first_non_empty(row, pos_fields)
        if p:
            idx = consume((q, p), pair_b)
            if idx is None:
                skip["query_pair_not_found_in_meta"] += 1
                continue
            rows.append(idx)
            targets.append(p)
            continue
        idx = consume(q, text_b)
        if idx is None:
            skip["query_not_found_in_meta"] += 1
            continue
        rows.append(idx)
        targets.append(pos[idx])
    return rows, targets, skip


def retrieval_recall(query_vectors: np.ndarray, video_vectors: np.ndarray, docid2row: Mapping[str, int],
                     query_meta: Sequence[Mapping[str, Any]], query_rows: Sequence[Mapping[str, Any]] | None,
                     topk: Sequence[int] = (1, 5, 10, 100)) -> dict[str, Any]:
    """ER main (L140-226): R@k = share of evaluated queries whose positive is among the top-k (k capped at the
    corpus size). Returns the metrics_npy.json fields that do not name files (`metrics`, `skip`, counts)."""
    ks = sorted({int(k) for k in topk if int(k) > 0})
    q_idx, targets, skip = eval_pairs(query_meta, query_rows)
    rows, pos_rows = [], []
    for i, p in zip(q_idx, targets):
        r = docid2row.get(str(p))
        if r is None:
            skip["pos_doc_missing_in_docid2row"] = skip.get("pos_doc_missing_in_docid2row", 0) + 1
            continue
        rows.append(i)
        pos_rows.append(int(r))
    total = len(rows)
    hits = {k: 0 for k in ks}
    if total:
        q = l2_normalize(np.asarray(query_vectors)[rows])
        v = l2_normalize(video_vectors)
        order = rank_order(q @ v.T)
        where = np.asarray(pos_rows)[:, None]
        for k in ks:
            hits[k] = int((order[:, :min(k, v.shape[0])] == where).any(axis=1).sum())
    return {"topk_list": ks, "normalize": True, "device": "cpu",
            "total_rows_requested": int(len(query_rows) if query_rows is not None else len(query_meta)),
            "total_rows_evaluated": int(total), "skip": {k: int(v) for k, v in skip.items()},
            "metrics": {f"R@{k}": float(hits[k]) / float(max(total, 1)) for k in ks}}


__all__ = [
    "GRPO_DROP_KEYS", "RawIndex", "Search", "balance_matches", "eval_pairs", "first_query_rows", "grpo_rows",
    "hard_negatives", "l2_normalize", "matched_solution", "normalize_time_span", "numpy_search", "pool_row",
    "positive_or_none", "rank_order", "retrieval_recall", "sample_pool", "top1_pool",
]
