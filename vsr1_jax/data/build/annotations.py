"""Step 01_data_generate: the VERIFIED annotation rows of a split -> its corpus (one whole-video document per video
that exists on disk) and its query rows, as preprocess/annotation_process/prepare_activitynet_segments.py does with
`--use_full_video` (PS below; eval_and_data.md §3.2)."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Sequence

STATS_KEYS = ("total_lines", "valid_segments", "missing_video", "bad_time", "missing_desc")


def _float(v: Any, default: float = 0.0) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def read_annotation_lines(path: str | os.PathLike) -> list[str]:
    with open(path, "r", encoding="utf-8") as f:
        return f.readlines()


def prepare_split(lines: Sequence[str], resolve: Callable[[str], str | None], *,
                  seed: int = 0) -> tuple[list[dict], list[dict], dict[str, int]]:
    """PS `add_from_jsonl` (L39-126) in full-video mode, then the seeded shuffle of the queries (L137-139).

    lines: the raw jsonl lines (blank and malformed lines count in total_lines and are skipped, as PS does).
    resolve: video id -> file path, or None when the video is missing (PS `resolve_video_path`).
    Returns (corpus rows {doc_id, video_id, video_path, start, end, duration} in first-appearance order,
    query rows {qid, query, pos_doc_id, weight, fig_score} shuffled with random.Random(seed), stats).
    A row whose video is missing is dropped with its query (missing_video); a row without fig_desc keeps its
    document but adds no query (missing_desc); bad_time stays 0 in full-video mode (PS checks spans only for
    segment documents).
    """
    corpus: list[dict] = []
    queries: list[dict] = []
    seen_doc: set[str] = set()
    seen_qid: set[str] = set()
    stats = {k: 0 for k in STATS_KEYS}
    for line in lines:
        stats["total_lines"] += 1
        total = stats["total_lines"]
        text = line.strip()
        if not text:
            continue
        try:
            j = json.loads(text)
        except json.JSONDecodeError:
            continue
        if not isinstance(j, dict):
            continue
        video_id = j.get("video")
        desc_id = str(j.get("desc_id", total))
        duration = _float(j.get("duration", 0.0))
        fig_desc = (j.get("fig_desc") or "").strip()
        fig_score = _float(j.get("fig_desc_score", 0.0))
        start, end = 0.0, (duration if duration > 0 else 0.0)
        video_path = resolve(str(video_id)) if video_id is not None else None
        if not video_path:
            stats["missing_video"] += 1
            continue
        doc_id = str(video_id)
        if doc_id not in seen_doc:
            corpus.append({"doc_id": doc_id, "video_id": doc_id, "video_path": video_path, "start": start,
                           "end": end, "duration": duration})
            seen_doc.add(doc_id)
            stats["valid_segments"] += 1
        if not fig_desc:
            stats["missing_desc"] += 1
            continue
        qid = f"{desc_id}_fig"
        if qid in seen_qid:
            qid = f"{qid}_{total}"
        seen_qid.add(qid)
        queries.append({"qid": qid, "query": fig_desc, "pos_doc_id": doc_id, "weight": 1.0, "fig_score": fig_score})
    random.Random(int(seed)).shuffle(queries)
    return corpus, queries, stats


def split_files(split_dir: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(corpus_segments.jsonl, <split>_queries.jsonl) of a split folder (01_data_generate.bash L58-109)."""
    d = Path(split_dir)
    return d / "corpus_segments.jsonl", d / f"{split}_queries.jsonl"


def read_jsonl_plain(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


__all__ = ["STATS_KEYS", "prepare_split", "read_annotation_lines", "read_jsonl_plain", "split_files"]
