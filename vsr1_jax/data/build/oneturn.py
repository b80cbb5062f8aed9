"""Step 06_convert_to_train_oneturn: teacher reasoning rows -> `train_oneturn.json` items, as
preprocess/dataset_generation/convert_match_grounding_to_oneturn.py (CO below; eval_and_data.md §3.8) does."""
from __future__ import annotations

import os
import random
import re
from typing import Any, Mapping, Sequence

from vsr1_jax.processing import prompts as P

_NOT_MATCH_RE = re.compile(r"\b(?:not match|no match|non match|notmatching|unmatch|unmatched|mismatch|"
                           r"does not match|doesn't match|do not match|fails to match)\b")
_MATCH_RE = re.compile(r"\bmatch(?:es|ed|ing)?\b")


def _safe_float(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if x != x else x


def _strip_ext(name: Any) -> str:
    base = os.path.basename(str(name or "").strip())
    if not base:
        return ""
    stem, _ = os.path.splitext(base)
    return stem or base


def binary_label(v: Any) -> str:
    """CO `_normalize_binary_label`: "pos" | "neg" | ""."""
    s = str(v or "").strip().lower()
    if not s:
        return ""
    if s in {"match", "matched", "pos", "positive"}:
        return "pos"
    if s in {"not_match", "not matched", "not_matched", "neg", "negative", "no_match"}:
        return "neg"
    norm = re.sub(r"[_\-\s]+", " ", s)
    if _NOT_MATCH_RE.search(norm):
        return "neg"
    if _MATCH_RE.search(norm):
        return "pos"
    return ""


def answer_label(row: Mapping[str, Any]) -> str:
    """CO `_derive_answer_label`: the teacher's label, else the gold label, else top-1 == positive."""
    for key in ("model_label", "gold_label"):
        b = binary_label(row.get(key, ""))
        if b:
            return P.MATCHED if b == "pos" else P.NOT_MATCHED
    top1 = str(row.get("top1_doc_id", "")).strip() or str(row.get("top1_video_id", "")).strip()
    pos = str(row.get("query_pos_doc_id", "")).strip() or str(row.get("query_pos_video_id", "")).strip()
    if top1 and pos:
        return P.MATCHED if _strip_ext(top1) == _strip_ext(pos) else P.NOT_MATCHED
    return P.NOT_MATCHED


def gold_bin(row: Mapping[str, Any], answer: str) -> str:
    """CO `_derive_gold_bin`: "pos" | "neg" from the gold label, else top-1 == positive, else the answer."""
    g = binary_label(row.get("gold_label", ""))
    if g:
        return g
    top1 = str(row.get("top1_doc_id", "")).strip() or str(row.get("top1_video_id", "")).strip()
    pos = str(row.get("query_pos_doc_id", "")).strip() or str(row.get("query_pos_video_id", "")).strip()
    if top1 and pos:
        return "pos" if _strip_ext(top1) == _strip_ext(pos) else "neg"
    return "pos" if answer == P.MATCHED else "neg"


def matched_span(row: Mapping[str, Any]) -> tuple[float, float]:
    """CO `_pick_matched_span` (L167-188): the first of (teacher span, GT span, top-1 start/end) whose ends parse,
    with a negative start raised to 0 and end >= start; else [0, top1_duration]; else [0, 0]."""
    for s_key, e_key in (("model_temporal_start", "model_temporal_end"), ("gt_start", "gt_end"),
                         ("top1_start", "top1_end")):
        s, e = _safe_float(row.get(s_key)), _safe_float(row.get(e_key))
        if s is None or e is None:
            continue
        s = max(s, 0.0)
        if e < s:
            continue
        return s, e
    d = _safe_float(row.get("top1_duration"))
    if d is not None and d >= 0:
        return 0.0, float(d)
    return 0.0, 0.0


def top1_video_id(row: Mapping[str, Any]) -> str:
    """CO `_pick_top1_video_id`."""
    for key in ("top1_video_id", "top1_doc_id", "video_id", "retrieved_video"):
        v = str(row.get(key, "")).strip()
        if v:
            return _strip_ext(v)
    path = str(row.get("top1_video_path", "")).strip() or str(row.get("video_path", "")).strip()
    return _strip_ext(path) if path else ""


def query_pos_video_id(row: Mapping[str, Any]) -> str:
    for key in ("query_pos_video_id", "query_pos_doc_id", "gt_video_id"):
        v = str(row.get(key, "")).strip()
        if v:
            return _strip_ext(v)
    return ""


def assistant_content(row: Mapping[str, Any], answer: str) -> str:
    """CO `_build_assistant_content`: the reasoning (else the think text, else the default sentence) and the
    answer tags; the matched span from `matched_span`."""
    reasoning = P.normalize_reasoning(row.get("model_reasoning", "")) or \
        P.normalize_reasoning(row.get("model_think", ""))
    # built here rather than with P.assistant_target, which would normalise the reasoning a second time
    if answer == P.MATCHED:
        s, e = matched_span(row)
        return (f"<think> {reasoning or P.DEFAULT_MATCHED_REASONING} </think> <answer>matched</answer> "
                f"<start>{P.format_seconds(s)}</start> <end>{P.format_seconds(e)}</end> <REFINE>")
    return f"<think> {reasoning or P.DEFAULT_NOT_MATCHED_REASONING} </think> <answer>not_matched</answer> <REFINE>"


def convert_rows(rows: Sequence[Mapping[str, Any]], *, exclude_finish_reasons: Sequence[str] = ("length",),
                 source: str = "pairs_with_reasoning", episode_type: str = "T1", video_ext: str = ".npy",
                 system_prompt: str | None = None, balance_binary_by_downsample: bool = False,
                 balance_seed: int = 42) -> tuple[list[dict], dict[str, int]]:
    """CO `convert` (L300-360): one item per row whose finish reason is not excluded, in row order. Returns
    (items, stats: rows_in, rows_out, skipped_finish_reason, pos, neg, dropped_pos, dropped_neg)."""
    exclude = {str(x).strip().lower() for x in exclude_finish_reasons if str(x).strip()}
    system = P.sft_system_prompt() if system_prompt is None else system_prompt
    ext = video_ext if str(video_ext).startswith(".") else f".{video_ext}"
    items: list[dict] = []
    skipped = 0
    for idx, row in enumerate(rows):
        finish = str(row.get("model_finish_reason", "")).strip().lower()
        if finish and finish in exclude:
            skipped += 1
            continue
        qid = str(row.get("qid", "")).strip() or f"idx_{idx}"
        query = str(row.get("query", "")).strip()
        top1 = top1_video_id(row)
        pair_id = str(row.get("pair_id", "")).strip() or (f"{qid}::{top1}" if top1 else qid)
        answer = answer_label(row)
        gold = gold_bin(row, answer)
        path = str(row.get("top1_video_path", "")).strip() or str(row.get("video_path", "")).strip()
        video = f"{top1}{ext}" if top1 else (f"{_strip_ext(path)}{ext}" if path else f"unknown{ext}")
        items.append({
            "qid": qid, "query": query,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": P.USER_TURN_TEMPLATE.format(query=query)},
                         {"role": "assistant", "content": assistant_content(row, answer)}],
            "videos": [video],
            "meta": {"source": source, "gold_label": gold, "video_id": top1, "query_pos_video_id":
                     query_pos_video_id(row), "pair_id": pair_id, "episode_type": episode_type,
                     "num_negs": 0 if gold == "pos" else 1, "top1_video_id": top1, "top1_gold_label": gold},
        })
    pos = sum(it["meta"]["gold_label"] == "pos" for it in items)
    stats = {"rows_in": len(rows), "skipped_finish_reason": skipped, "pos": pos, "neg": len(items) - pos,
             "dropped_pos": 0, "dropped_neg": 0}
    if balance_binary_by_downsample:
        items, counts = downsample_to_equal(items, balance_seed)
        stats.update(pos=counts["after_pos"], neg=counts["after_neg"], dropped_pos=counts["dropped_pos"],
                     dropped_neg=counts["dropped_neg"])
    stats["rows_out"] = len(items)
    return items, stats


def downsample_to_equal(items: list[dict], seed: int = 42) -> tuple[list[dict], dict[str, int]]:
    """CO `_downsample_to_equal_binary` (off by default in 06): keep min(#pos, #neg) of each, shuffled."""
    pos = [x for x in items if x["meta"]["gold_label"] == "pos"]
    neg = [x for x in items if x["meta"]["gold_label"] == "neg"]
    counts = {"before_pos": len(pos), "before_neg": len(neg), "dropped_pos": 0, "dropped_neg": 0}
    if not pos or not neg:
        counts.update(after_pos=len(pos), after_neg=len(neg))
        return items, counts
    keep = min(len(pos), len(neg))
    rng = random.Random(int(seed))
    rng.shuffle(pos)
    rng.shuffle(neg)
    counts.update(dropped_pos=len(pos) - keep, dropped_neg=len(neg) - keep, after_pos=keep, after_neg=keep)
    out = pos[:keep] + neg[:keep]
    rng.shuffle(out)
    return out, counts


__all__ = ["answer_label", "assistant_content", "binary_label", "convert_rows", "downsample_to_equal", "gold_bin",
           "matched_span", "query_pos_video_id", "top1_video_id"]
