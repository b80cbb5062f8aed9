"""What the trainers and the eval read from a prepared dataset: the retrieval corpus and query vectors, the eval's
query list with its skip rules, and the SFT / GRPO records for the pipelines (spec: eval_and_data.md §1, §3-4).
"""
from __future__ import annotations

import dataclasses
import math
import random
import re
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np

from vsr1_jax.data.files import (
    id_map_from_docid2row,
    l2_normalize_rows,
    read_docid2row,
    read_embeddings,
    read_grpo_rows,
    read_hard_negatives,
    read_query_meta,
    read_raw_annotation,
    read_sft_items,
)
from vsr1_jax.data.paths import PreparedDataError, PreparedPaths
from vsr1_jax.data.records import _NUM, QueryMetaRow, _type_ok

# The original eval's skip counters, in its order (EVAL L2417-2422; eval_and_data.md §1.3).
EVAL_SKIP_KEYS = ("query_not_found_in_meta", "pos_doc_missing", "video_file_missing", "gt_time_invalid")

# Same number pattern as the original eval's `_parse_float` (EVAL FLOAT_RE, L80-ish; used at L900-915).
_FLOAT_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


# ---------------------------------------------------------------------------------------------------------------
# Retrieval corpus and queries
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Corpus:
    """The retrieval corpus of one split: one unit vector per video (eval_and_data.md §3.5, §4.1).

    doc_ids[r] is the video of matrix row r; matrix: float32 [N, D], rows L2-normalised.
    """

    doc_ids: tuple[str, ...]
    matrix: np.ndarray
    docid2row: dict[str, int]

    def __len__(self) -> int:
        return len(self.doc_ids)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


@dataclasses.dataclass(frozen=True)
class Queries:
    """Precomputed query vectors of one split.

    meta[i] ↔ matrix[i]; matrix: float32 [Nq, D], rows L2-normalised. text2row maps the stripped query text to its
    row, a later duplicate overwriting an earlier one and empty texts skipped (EVAL `_load_query_meta` L858-867).
    """

    meta: list[QueryMetaRow]
    matrix: np.ndarray
    text2row: dict[str, int]

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def lookup(self, text: str) -> tuple[int, str, str] | None:
        """(row, qid, pos_doc_id) for a query text, as the eval's query_map returns (EVAL L858-867)."""
        row = self.text2row.get(str(text).strip())
        if row is None:
            return None
        m = self.meta[row]
        return row, m.qid.strip(), m.pos_doc_id.strip()


def query_text_map(meta: Sequence[QueryMetaRow], *, duplicates: str = "last") -> dict[str, int]:
    """Stripped query text → meta row. duplicates='last' is the eval (EVAL L858-867); 'first' is the GRPO builder
    (build_verified_search_minimal_top1.py `_load_query_meta`: `if query not in out`)."""
    if duplicates not in ("last", "first"):
        raise ValueError(f"duplicates must be 'last' or 'first', got {duplicates!r}")
    out: dict[str, int] = {}
    for i, m in enumerate(meta):
        q = m.query.strip()
        if not q or (duplicates == "first" and q in out):
            continue
        out[q] = i
    return out


def load_corpus(paths: PreparedPaths, split: str) -> Corpus:
    """segment_embeds.npy + docid2row.json → Corpus. docid2row must map exactly rows 0..N-1 (a row without a doc id
    would make a top-1 unresolvable; EVAL L2197-2199 inverts the map)."""
    matrix = read_embeddings(paths.segment_embeds(split), "segment_embeds")
    docid2row = read_docid2row(paths.docid2row(split))
    n = matrix.shape[0]
    rows = sorted(docid2row.values())
    if rows != list(range(n)):
        out_of_range = [r for r in rows if r >= n][:5]
        missing = sorted(set(range(n)) - set(rows))[:5]
        raise PreparedDataError(
            f"{paths.docid2row(split)}: maps {len(docid2row)} docs but {paths.segment_embeds(split)} has {n} rows "
            f"(rows out of range: {out_of_range}, rows without a doc: {missing})")
    doc_ids = tuple(id_map_from_docid2row(docid2row))
    return Corpus(doc_ids=doc_ids, matrix=l2_normalize_rows(matrix), docid2row=docid2row)


def load_queries(paths: PreparedPaths, split: str, *, duplicates: str = "last") -> Queries:
    """query_embeddings.<split>.npy + query_meta.<split>.jsonl → Queries (EVAL L2190-2195, L858-867)."""
    matrix = read_embeddings(paths.query_embeddings(split), "query_embeddings")
    meta = read_query_meta(paths.query_meta(split))
    if len(meta) != matrix.shape[0]:
        raise PreparedDataError(
            f"{paths.query_meta(split)} has {len(meta)} rows but {paths.query_embeddings(split)} has "
            f"{matrix.shape[0]}: row i of the meta must describe embedding row i (embed_queries.py L58-80)")
    return Queries(meta=meta, matrix=l2_normalize_rows(matrix), text2row=query_text_map(meta, duplicates=duplicates))


def check_same_dim(queries: Queries, corpus: Corpus, where: str = "") -> int:
    """The retrieval dim D is read from the files and must agree (MAIN `_resolve_retrieval_dim` L445-467).
    `where`: the two files, "<query file> vs <video file>: "."""
    if queries.dim != corpus.dim:
        raise PreparedDataError(f"{where}query embeddings are {queries.dim}-d but video embeddings are "
                                f"{corpus.dim}-d; both must come from the same embedder (rebuild the query "
                                "embeddings with the embedder of the corpus: the embed_queries build step)")
    return corpus.dim


def load_retrieval(paths: PreparedPaths, split: str) -> tuple[Corpus, Queries]:
    """The corpus and the queries of a split, their dimensions checked against each other."""
    corpus, queries = load_corpus(paths, split), load_queries(paths, split)
    check_same_dim(queries, corpus, f"{paths.query_embeddings(split)} vs {paths.segment_embeds(split)}: ")
    return corpus, queries


# ---------------------------------------------------------------------------------------------------------------
# Eval query list
# ---------------------------------------------------------------------------------------------------------------
def parse_seconds(raw: Any) -> float | None:
    """First float in str(raw) ignoring commas, finite only: the eval's `_parse_float` (EVAL L900-915)."""
    if raw is None or isinstance(raw, bool):
        return None
    m = _FLOAT_RE.search(str(raw).strip().replace(",", " "))
    if not m:
        return None
    try:
        v = float(m.group(0))
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def parse_gt_span(raw: Any) -> tuple[float, float] | None:
    """GT `time` → (start, end), swapped if reversed; None when invalid (EVAL L3205-3215). A zero-length span is
    valid here (the eval keeps it; IoU is then 0)."""
    if not isinstance(raw, (list, tuple)) or len(raw) < 2:
        return None
    s, e = parse_seconds(raw[0]), parse_seconds(raw[1])
    if s is None or e is None:
        return None
    return (e, s) if e < s else (s, e)


@dataclasses.dataclass(frozen=True)
class EvalQuery:
    """One evaluable test query (EVAL L3190-3224). `index` is the 0-based row of raw_annotation/<split>.jsonl after
    eval_limit_ratio / max_samples (EVAL L2151); q_row / pos_row index the query / corpus matrices."""

    index: int
    qid: str
    query: str
    gt_doc_id: str
    gt_start: float
    gt_end: float
    duration: float | None
    q_row: int
    pos_row: int

    def to_record(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class EvalQuerySet:
    """queries: the evaluable rows; skips: the original's four counters. `video_file_missing` stays 0 here: the
    original counts it inside the turn loop, when the *retrieved top-1* has no npy (EVAL L3283-3290), which is only
    known after retrieval; the eval loop increments it via `skip_video_missing`."""

    queries: list[EvalQuery]
    skips: dict[str, int]
    rows_total: int
    rows_total_before_limit: int

    def skip_video_missing(self, n: int = 1) -> None:
        self.skips["video_file_missing"] += n


def limit_rows(n_rows: int, *, max_samples: int | None = None, limit_ratio: float | None = None,
               seed: int = 42) -> list[int]:
    """Row positions kept by EVAL L2139-2148: a seeded `random.Random(seed).sample` of round(n·ratio) rows, sorted,
    then a prefix of max_samples. Python's `random` is used on purpose: the same seed picks the same rows."""
    kept = list(range(n_rows))
    if limit_ratio is not None and float(limit_ratio) < 1.0:
        ratio = float(max(0.0, min(1.0, limit_ratio)))
        keep_n = max(1, int(round(n_rows * ratio)))
        kept = sorted(random.Random(int(seed)).sample(range(n_rows), keep_n))
    if max_samples is not None and 0 < int(max_samples) < len(kept):
        kept = kept[: int(max_samples)]
    return kept


def eval_queries(paths: PreparedPaths, split: str = "test", max_samples: int | None = None,
                 limit_ratio: float | None = None, seed: int = 42, *,
                 queries: Queries | None = None, docid2row: Mapping[str, int] | None = None) -> EvalQuerySet:
    """The eval's query list in raw_annotation file order with its skip rules and counters (EVAL L2137-2148,
    L3190-3224). Pass `queries` / `docid2row` to reuse already-loaded ones; otherwise only the meta and docid2row
    files are read (not the matrices)."""
    raw = read_raw_annotation(paths.raw_annotation(split))
    n_before = len(raw)
    kept = [raw[i] for i in limit_rows(n_before, max_samples=max_samples, limit_ratio=limit_ratio, seed=seed)]
    if queries is None:
        meta = read_query_meta(paths.query_meta(split))
        text2row = query_text_map(meta)
    else:
        meta, text2row = queries.meta, queries.text2row
    if docid2row is None:
        docid2row = read_docid2row(paths.docid2row(split))

    skips = {k: 0 for k in EVAL_SKIP_KEYS}
    out: list[EvalQuery] = []
    for index, row in enumerate(kept):
        text = row.query_text
        q_row = text2row.get(text) if text else None
        if q_row is None:
            skips["query_not_found_in_meta"] += 1
            continue
        m = meta[q_row]
        pos_meta = m.pos_doc_id.strip()
        # GT doc = row `video`, falling back to the meta's pos_doc_id (EVAL L3197-3204).
        gt = str(row.video if row.video is not None else "").strip() or pos_meta
        pos_row = docid2row.get(gt)
        if pos_row is None:
            pos_row = docid2row.get(pos_meta)
            if pos_row is None:
                skips["pos_doc_missing"] += 1
                continue
            gt = pos_meta
        span = parse_gt_span(row.time)
        if span is None:
            skips["gt_time_invalid"] += 1
            continue
        duration = parse_seconds(row.duration) if not _type_ok(row.duration, _NUM) else float(row.duration)
        if duration is not None and not math.isfinite(duration):
            duration = None
        out.append(EvalQuery(index=index, qid=m.qid.strip(), query=text, gt_doc_id=gt, gt_start=span[0],
                             gt_end=span[1], duration=duration, q_row=int(q_row), pos_row=int(pos_row)))
    return EvalQuerySet(queries=out, skips=skips, rows_total=len(kept), rows_total_before_limit=n_before)


# ---------------------------------------------------------------------------------------------------------------
# Records for the pipelines (plain dicts: picklable for grain workers and encodable for tfds)
# ---------------------------------------------------------------------------------------------------------------
def _rows_or_minus1(ids: Sequence[str], docid2row: Mapping[str, int] | None, k: int | None) -> np.ndarray:
    rows = [docid2row.get(x, -1) if docid2row is not None else -1 for x in ids]
    if k is not None:
        rows = (rows + [-1] * k)[:k]
    return np.asarray(rows, dtype=np.int32)


def filter_known_ids(ids: Sequence[str], docid2row: Mapping[str, int], exclude: str = "") -> tuple[list[str], int]:
    """Drop ids absent from the corpus, duplicates and `exclude` (the positive): TRN `_select_negative_ids`
    L1059-1089 skips positive/dupes/unknown ids. Returns (kept, number of unknown ids)."""
    kept, seen, unknown = [], set(), 0
    for x in ids:
        if x == exclude or x in seen:
            continue
        if x not in docid2row:
            unknown += 1
            continue
        seen.add(x)
        kept.append(x)
    return kept, unknown


def sft_records(paths: PreparedPaths, *, docid2row: Mapping[str, int] | None = None,
                hard_negatives: Mapping[str, Sequence[str]] | None = None,
                require_npy: bool = True, only_neg: bool = False,
                dropped: list | None = None) -> tuple[list[dict], Counter]:
    """train_oneturn.json → pipeline records + drop counts.

    A record: index (position in the array), qid, query, messages, video_id (top-1 shown), pos_video_id,
    gold_label, pair_id, video_path, hard_negative_ids (from hard_negatives.json; the positive, duplicates and
    unknown ids removed) and, with docid2row, pos_row / video_row.
    Dropped (counted): with `only_neg` (config.sft.only_neg; VS L126-129), the items whose gold label is not
    "neg" (`only_neg_skipped`); items whose top-1 npy is missing (`video_file_missing`). Counted, kept: GT not in the
    corpus (`pos_doc_missing`: the InfoNCE term then has no positive, TRN L1336-1344). `dropped`: a list that
    receives one dict per dropped item (file, item, qid, reason, detail).
    """
    items = read_sft_items(paths.sft_oneturn)
    if docid2row is None and paths.docid2row("train").exists():
        docid2row = read_docid2row(paths.docid2row("train"))
    if hard_negatives is None and paths.hard_negatives.exists():
        hard_negatives = read_hard_negatives(paths.hard_negatives)
    counts: Counter = Counter()
    out = []
    for index, it in enumerate(items):
        if only_neg and it.meta.gold_label != "neg":
            counts["only_neg_skipped"] += 1
            continue
        vid = it.video_id
        npy = paths.video_npy("train", vid)
        if require_npy and not npy.is_file():
            counts["video_file_missing"] += 1
            if dropped is not None:
                dropped.append(dict(file=str(paths.sft_oneturn), item=index, qid=it.qid, reason="video_file_missing",
                                    detail=f"{npy} not found"))
            continue
        pos = it.meta.query_pos_video_id
        negs = [x for x in dict.fromkeys((hard_negatives or {}).get(it.qid, [])) if x != pos]
        if docid2row is not None:
            if pos not in docid2row:
                counts["pos_doc_missing"] += 1
            negs, unknown = filter_known_ids(negs, docid2row, exclude=pos)
            counts["hard_negative_unknown_ids"] += unknown
        rec = {
            "index": index, "qid": it.qid, "query": it.query, "messages": it.messages, "video_id": vid,
            "pos_video_id": pos,
            "gold_label": it.meta.gold_label, "pair_id": it.meta.pair_id or "", "video_path": str(npy),
            "hard_negative_ids": negs,
        }
        if docid2row is not None:
            rec["pos_row"] = int(docid2row.get(pos, -1))
            rec["video_row"] = int(docid2row.get(vid, -1))
        out.append(rec)
    counts["items_total"] = len(items)
    counts["items_kept"] = len(out)
    return out, counts


def grpo_records(paths: PreparedPaths, *, docid2row: Mapping[str, int] | None = None,
                 hard_negative_k: int = 24, require_npy: bool = True,
                 dropped: list | None = None) -> tuple[list[dict], Counter]:
    """train.minimal_top1.jsonl → pipeline records + counts (grpo.md §5; data_rl.py L739-795).

    A record: problem_id, qid, query, gt_video, gt_time float64 [2] (NaN when null), has_gt_time, gt_duration
    (NaN when null), retrieved_video (the bootstrap top-1), label, is_augmented, video_path,
    hard_negative_ids (≤ K, unknown ids removed), and with docid2row gt_row and hard_negative_rows int32 [K]
    (-1 padded) for the retrieval reward (TR:3964-4035).
    Dropped (counted): rows whose retrieved npy is missing (`drop_missing_video_npy`, BV's key). Counted, kept:
    `gt_time_invalid` (reversed/zero-length spans become null: BV `_normalize_time_span` requires end > start) and
    `pos_doc_missing` (the reward then takes the no-refine penalty, TR:3838-3846). `dropped`: a list that receives
    one dict per dropped row (file, line, qid, reason, detail).
    """
    rows = read_grpo_rows(paths.grpo_rows)
    if docid2row is None and paths.docid2row("train").exists():
        docid2row = read_docid2row(paths.docid2row("train"))
    counts: Counter = Counter()
    out = []
    for line, r in enumerate(rows, 1):
        npy = paths.video_npy("train", r.retrieved_video)
        if require_npy and not npy.is_file():
            counts["drop_missing_video_npy"] += 1
            if dropped is not None:
                dropped.append(dict(file=str(paths.grpo_rows), line=line, qid=r.qid, reason="drop_missing_video_npy",
                                    detail=f"{npy} not found"))
            continue
        gt = r.gt_time
        if gt is not None and not (math.isfinite(gt[0]) and math.isfinite(gt[1]) and gt[1] > gt[0]):
            counts["gt_time_invalid"] += 1
            gt = None
        negs = list(r.hard_negative_ids)
        if docid2row is not None:
            if r.gt_video not in docid2row:
                counts["pos_doc_missing"] += 1
            negs, unknown = filter_known_ids(negs, docid2row, exclude=r.gt_video)
            counts["hard_negative_unknown_ids"] += unknown
        negs = negs[:hard_negative_k]
        rec = {
            "problem_id": r.problem_id, "qid": r.qid, "query": r.query, "gt_video": r.gt_video,
            "gt_time": np.asarray(gt if gt is not None else [np.nan, np.nan], dtype=np.float64),
            "has_gt_time": gt is not None,
            "gt_duration": float(r.gt_duration) if r.gt_duration is not None else float("nan"),
            "retrieved_video": r.retrieved_video, "label": r.label, "is_augmented": r.is_augmented,
            "video_path": str(npy), "hard_negative_ids": negs,
        }
        if docid2row is not None:
            rec["gt_row"] = int(docid2row.get(r.gt_video, -1))
            rec["hard_negative_rows"] = _rows_or_minus1(negs, docid2row, hard_negative_k)
        out.append(rec)
    counts["rows_total"] = len(rows)
    counts["rows_kept"] = len(out)
    return out, counts


__all__ = [
    "Corpus", "EVAL_SKIP_KEYS", "EvalQuery", "EvalQuerySet", "Queries", "check_same_dim", "eval_queries",
    "filter_known_ids", "grpo_records", "limit_rows", "load_corpus", "load_queries", "load_retrieval",
    "parse_gt_span", "parse_seconds", "query_text_map", "sft_records",
]
