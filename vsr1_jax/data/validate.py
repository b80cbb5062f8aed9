"""Cross-file validation of a prepared dataset: every file read and checked against the others, problems collected
in a `ValidationReport` instead of raised one by one.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from vsr1_jax.data.files import (
    read_faiss_index,
    read_grpo_rows,
    read_grpo_stats,
    read_hard_negatives,
    read_id_map,
    read_query_meta,
    read_sft_items,
    read_sft_reasoning,
    read_video_npy_meta,
)
from vsr1_jax.data.paths import SPLITS, MissingPreparedFileError, PreparedDataError, PreparedPaths, _missing
from vsr1_jax.data.queries import Corpus, eval_queries, load_corpus, load_queries

# ---------------------------------------------------------------------------------------------------------------
# Cross-file validation
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ValidationReport:
    """errors: structural problems (the data cannot be used as is). counts: what the original tolerates by
    skipping or dropping, under its key names where it has one (e.g. test/pos_doc_missing)."""

    errors: list[str] = dataclasses.field(default_factory=list)
    counts: Counter = dataclasses.field(default_factory=Counter)
    checked: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_errors(self) -> None:
        if self.errors:
            raise PreparedDataError("prepared data failed validation:\n  " + "\n  ".join(self.errors))

    def summary(self) -> str:
        lines = [f"checked: {', '.join(self.checked) or 'nothing'}", f"errors: {len(self.errors)}"]
        lines += [f"  {e}" for e in self.errors]
        lines += [f"{k}: {v}" for k, v in sorted(self.counts.items())]
        return "\n".join(lines)


def _guard(report: ValidationReport, fn: Callable[[], Any], what: str) -> Any:
    try:
        out = fn()
        report.checked.append(what)
        return out
    except (PreparedDataError, MissingPreparedFileError) as exc:
        report.errors.append(str(exc))
        return None


def validate_dataset(paths: PreparedPaths, splits: Sequence[str] = SPLITS, *, check_npy_files: bool = True,
                     check_index: bool = True) -> ValidationReport:
    """Check every file of a prepared dataset and their consistency; never raises on data problems (see
    `ValidationReport.raise_if_errors`). Counts are keyed `<split>/<counter>`, `sft/…`, `grpo/…` or
    `hard_negatives/…`.
    """
    rep = ValidationReport()
    dims: dict[str, int] = {}
    d2r_by_split: dict[str, dict[str, int]] = {}
    for split in splits:
        corpus = _guard(rep, lambda: load_corpus(paths, split), f"{split}/video_embedding_1fps")
        queries = _guard(rep, lambda: load_queries(paths, split), f"{split}/query_embedding")
        if corpus is not None:
            dims[f"{split} video"] = corpus.dim
            d2r_by_split[split] = corpus.docid2row
        if queries is not None:
            dims[f"{split} query"] = queries.dim
        if corpus is not None and queries is not None:
            missing = sum(1 for m in queries.meta if m.pos_doc_id.strip() not in corpus.docid2row)
            rep.counts[f"{split}/query_meta_pos_doc_missing"] += missing
            es = _guard(rep, lambda: eval_queries(paths, split, queries=queries, docid2row=corpus.docid2row),
                        f"{split}/raw_annotation")
            if es is not None:
                for k, v in es.skips.items():
                    if k != "video_file_missing":
                        rep.counts[f"{split}/{k}"] += v
                rep.counts[f"{split}/rows_valid"] += len(es.queries)
        meta_rows = _guard(rep, lambda: read_video_npy_meta(paths.video_npy_meta(split)),
                           f"{split}/video_npy_with_meta/meta.jsonl")
        if meta_rows is not None:
            keys = [r.key for r in meta_rows]
            rep.counts[f"{split}/video_meta_duplicate_ids"] += len(keys) - len(set(keys))
        if corpus is not None and check_npy_files:
            # The original counts `video_file_missing` per query when the retrieved top-1 has no npy
            # (EVAL L3283-3290); here we count the corpus videos without an npy, any of which can trigger it.
            miss = sum(1 for d in corpus.doc_ids if not paths.video_npy_exists(split, d))
            rep.counts[f"{split}/corpus_video_npy_missing"] += miss
            if meta_rows is not None:
                known = {r.key for r in meta_rows}
                rep.counts[f"{split}/video_meta_missing"] += sum(1 for d in corpus.doc_ids if d not in known)
        if corpus is not None and check_index and paths.faiss_index(split).exists():
            _guard(rep, lambda: _check_index(paths, split, corpus), f"{split}/index")
        elif check_index and corpus is not None:
            rep.errors.append(str(_missing(paths.faiss_index(split), "faiss_index")))
    distinct = set(dims.values())
    if len(distinct) > 1:
        rep.errors.append(f"embedding dims differ across files: {dims} (all must come from one embedder)")

    train_d2r = d2r_by_split.get("train")
    if "train" in splits:
        hn = _guard(rep, lambda: read_hard_negatives(paths.hard_negatives), "train/hard_negatives.json")
        if hn is not None and train_d2r is not None:
            rep.counts["hard_negatives/unknown_ids"] += sum(1 for ids in hn.values() for x in ids if x not in train_d2r)
            train_meta = _guard(rep, lambda: read_query_meta(paths.query_meta("train")), "train/query_meta (qids)")
            if train_meta is not None:
                qids = {m.qid for m in train_meta}
                rep.counts["hard_negatives/unknown_qids"] += sum(1 for q in hn if q not in qids)
        items = _guard(rep, lambda: read_sft_items(paths.sft_oneturn), "sft_data/train_oneturn.json")
        if items is not None:
            for i, it in enumerate(items):
                stem = Path(it.videos[0]).stem
                if it.meta.video_id and stem != it.meta.video_id:
                    rep.errors.append(f"{paths.sft_oneturn} item {i} (qid={it.qid!r}): videos[0]={it.videos[0]!r} "
                                      f"but meta.video_id={it.meta.video_id!r}")
                if train_d2r is not None:
                    rep.counts["sft/video_unknown"] += it.video_id not in train_d2r
                    rep.counts["sft/pos_doc_missing"] += it.meta.query_pos_video_id not in train_d2r
                if check_npy_files:
                    rep.counts["sft/video_file_missing"] += not paths.video_npy_exists("train", it.video_id)
        _guard(rep, lambda: read_sft_reasoning(paths.sft_reasoning), "sft_data/top1_reasoning_grounding.train.jsonl")
        grows = _guard(rep, lambda: read_grpo_rows(paths.grpo_rows), "grpo_data/train.minimal_top1.jsonl")
        stats = _guard(rep, lambda: read_grpo_stats(paths.grpo_stats), "grpo_data/stats.minimal_top1.json")
        if grows is not None:
            for r in grows:
                if train_d2r is not None:
                    rep.counts["grpo/pos_doc_missing"] += r.gt_video not in train_d2r
                    rep.counts["grpo/retrieved_unknown"] += r.retrieved_video not in train_d2r
                    rep.counts["grpo/hard_negative_unknown_ids"] += sum(x not in train_d2r for x in r.hard_negative_ids)
                if check_npy_files:
                    rep.counts["grpo/drop_missing_video_npy"] += not paths.video_npy_exists("train", r.retrieved_video)
                if r.label == "matched" and r.retrieved_video != r.gt_video:
                    rep.errors.append(f"{paths.grpo_rows}: row problem_id={r.problem_id} says matched but retrieved "
                                      f"{r.retrieved_video!r} != gt {r.gt_video!r}")
            if stats is not None and stats.get("rows_written") != len(grows):
                rep.errors.append(f"{paths.grpo_stats}: rows_written={stats.get('rows_written')} but "
                                  f"{paths.grpo_rows} has {len(grows)} rows")
    return rep


def _check_index(paths: PreparedPaths, split: str, corpus: Corpus) -> None:
    index = read_faiss_index(paths.faiss_index(split))
    id_map = read_id_map(paths.id_map(split))
    if index.ntotal != len(id_map):  # BV L240-243 refuses the same mismatch
        raise PreparedDataError(f"{paths.faiss_index(split)}: index.ntotal={index.ntotal} != len(id_map)={len(id_map)}")
    if index.d != corpus.dim:
        raise PreparedDataError(f"{paths.faiss_index(split)}: index is {index.d}-d, embeddings are {corpus.dim}-d")
    if list(corpus.doc_ids) != id_map:
        raise PreparedDataError(
            f"{paths.id_map(split)}: is not the doc ids sorted by docid2row row (build_faiss.py L27)")


__all__ = [
    "ValidationReport", "validate_dataset",
]
