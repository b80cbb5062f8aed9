"""A procedural VideoSearch-R1 corpus (coloured shapes moving over plain backgrounds) written in the exact prepared
layout with the original pipeline's builders, so every pipeline, demo and test runs without downloads. The world is
synthetic_world.py (plans, frames), its texts synthetic_text.py; this module writes the dataset."""
from __future__ import annotations

import dataclasses
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vsr1_jax.data.files import (
    id_map_from_docid2row,
    l2_normalize_rows,
    read_raw_annotation,
    read_video_embed_meta,
    write_docid2row,
    write_embeddings,
    write_faiss_index,
    write_grpo_rows,
    write_grpo_stats,
    write_hard_negatives,
    write_id_map,
    write_query_meta,
    write_raw_annotation,
    write_sft_items,
    write_sft_reasoning,
    write_video_embed_meta,
    write_video_npy,
    write_video_npy_meta,
)
from vsr1_jax.data.build import oneturn as OT
from vsr1_jax.data.build import select as SEL
from vsr1_jax.data.build import teacher as TE
from vsr1_jax.data.build.pipeline import Embedder
from vsr1_jax.data.paths import SPLITS, PreparedPaths
from vsr1_jax.data.records import QueryMetaRow, RawAnnotationRow, VideoEmbedMeta, VideoNpyMeta
from vsr1_jax.data.validate import ValidationReport, validate_dataset
from vsr1_jax.data.synthetic_text import (_DIRECTION, QUERY_TEMPLATES, REASONING_STYLES, event_words,
                                          matched_reasoning, not_matched_reasoning)
from vsr1_jax.data.synthetic_world import Event, SyntheticVideo, plan_splits, render_video
from vsr1_jax.processing import prompts as P


# ---------------------------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------------------------
# The npy meta's extraction time is fixed so that the same seed gives byte-identical files.
FIXED_EXTRACT_UTC = "1970-01-01T00:00:00Z"


@dataclasses.dataclass
class SyntheticBuild:
    """What `build_synthetic_dataset` made: the paths, the per-split plans (ground truth for tests/demos), counts,
    and the validation report of the written dataset."""

    paths: PreparedPaths
    plans: dict[str, list[SyntheticVideo]]
    counts: dict[str, Any]
    report: ValidationReport


@dataclasses.dataclass
class _Query:
    desc_id: int
    video: SyntheticVideo
    event: Event
    text: str
    cog_desc: str
    score: float


def _progress(cfg) -> Callable[[str], None]:
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        if cfg.progress:
            print(f"[synthetic {time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)
    return log


def _queries_for(videos: list[SyntheticVideo], per_event: int, rng: np.random.Generator,
                 first_desc_id: int) -> list[_Query]:
    if not 1 <= per_event <= len(QUERY_TEMPLATES):
        raise ValueError(f"queries_per_event must be in 1..{len(QUERY_TEMPLATES)}, got {per_event}")
    out = []
    for video in videos:
        for ev in video.events:
            for k in rng.permutation(len(QUERY_TEMPLATES))[:per_event]:
                text = QUERY_TEMPLATES[int(k)].format(background=video.background, **event_words(ev))
                out.append(_Query(desc_id=first_desc_id + len(out), video=video, event=ev, text=text,
                                  cog_desc=f"a {ev.shape} moves {_DIRECTION[ev.direction]}",
                                  score=round(float(rng.uniform(0.6, 1.0)), 4)))
    if len({q.text for q in out}) != len(out):  # unique tuples + distinct templates make this impossible
        raise AssertionError("duplicate query texts")
    return out


def _embed(fn, items: list, batch_size: int, n_expected: int, what: str) -> np.ndarray:
    out = np.asarray(fn(items, batch_size=batch_size), dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != n_expected or not np.isfinite(out).all():
        raise ValueError(f"embedder returned {what} embeddings of shape {out.shape} (finite: "
                         f"{bool(np.isfinite(out).all())}); expected [{n_expected}, D] finite rows")
    return out


def _rel(paths: PreparedPaths, path: Path) -> str:
    # Paths inside files are relative to the dataset dir: absolute ones would differ between build roots and break
    # byte-identical output for equal seeds (consumers look videos up by id first, video.py VideoMeta.lookup).
    return str(Path(path).relative_to(paths.dataset_dir))


def _write_split(paths: PreparedPaths, split: str, videos: list[SyntheticVideo], queries: list[_Query], cfg,
                 embedder: Embedder, log) -> tuple[np.ndarray, np.ndarray, list[QueryMetaRow], dict[str, int]]:
    """Raw annotation, npy + meta, query and video embeddings, docid2row, index for one split."""
    frames = []
    npy_meta = []
    for i, v in enumerate(videos):
        arr = render_video(v, cfg)
        npy = write_video_npy(paths.video_npy(split, v.video_id), arr)
        frames.append(arr)
        n = v.num_frames
        # extract_npy.py L201-218 fields; the "source" is the rendering itself at 1 fps (so indices = seconds)
        npy_meta.append(VideoNpyMeta(
            source_video_path=f"synthetic://{split}/{v.video_id}", source_total_frames=n,
            source_duration_sec=v.duration, raw_fps=1.0, target_sample_fps=1.0, target_max_frames=64,
            requested_indices_src=list(range(n)), sampled_indices_src=list(range(n)),
            sampled_timestamps_sec=[float(t) for t in range(n)], sampled_frames_before_even_pad=n,
            even_pad_applied=False, output_num_frames=n, output_height=int(arr.shape[1]),
            output_width=int(arr.shape[2]), output_dtype="uint8", extract_utc=FIXED_EXTRACT_UTC,
            video_id=v.video_id, output_npy_path=_rel(paths, npy)))
        if cfg.progress_every and (i + 1) % int(cfg.progress_every) == 0:
            log(f"{split}: rendered {i + 1}/{len(videos)} videos")
    write_video_npy_meta(paths.video_npy_meta(split), npy_meta)

    # raw_annotation: the VERIFIED FIG fields, grouped by video (eval_and_data.md §3.1)
    write_raw_annotation(paths.raw_annotation(split), [
        RawAnnotationRow(video=q.video.video_id, time=[float(q.event.start), float(q.event.end)],
                         desc_id=q.desc_id, duration=q.video.duration, cog_desc=q.cog_desc, fig_desc=q.text,
                         fig_desc_score=q.score) for q in queries])

    # query rows shuffled with seed 0 (prepare_activitynet_segments.py L109-124, L137-139)
    meta = [QueryMetaRow(qid=f"{q.desc_id}_fig", query=q.text, pos_doc_id=q.video.video_id, weight=1.0,
                         fig_score=q.score) for q in queries]
    random.Random(int(cfg.build.query_shuffle_seed)).shuffle(meta)
    log(f"{split}: embedding {len(meta)} queries")
    q_emb = _embed(embedder.embed_texts, [m.query for m in meta], int(cfg.embed.text_batch_size), len(meta),
                   "query")
    write_embeddings(paths.query_embeddings(split), q_emb)
    write_query_meta(paths.query_meta(split), meta)

    # One call per frame count: equal-length videos share a patch grid, so the embedder fills whole batches of one
    # compiled shape; progress is reported after each group (the slow step with a real or tiny model).
    v_emb = None
    done = 0
    for n in sorted({v.num_frames for v in videos}):
        idx = [i for i, v in enumerate(videos) if v.num_frames == n]
        part = _embed(embedder.embed_videos, [frames[i] for i in idx], int(cfg.embed.video_batch_size), len(idx),
                      "video")
        if v_emb is None:
            v_emb = np.zeros((len(videos), part.shape[1]), np.float32)
        v_emb[idx] = part
        done += len(idx)
        log(f"{split}: embedded {done}/{len(videos)} videos")
    if v_emb.shape[1] != q_emb.shape[1]:
        raise ValueError(f"query embeddings are {q_emb.shape[1]}-d but video embeddings {v_emb.shape[1]}-d")
    docid2row = {v.video_id: i for i, v in enumerate(videos)}
    write_embeddings(paths.segment_embeds(split), v_emb)
    write_docid2row(paths.docid2row(split), docid2row)
    # embed_segments.py meta row: whole video as one doc, frames at 1 fps (eval_and_data.md §3.5)
    write_video_embed_meta(paths.video_embed_meta(split), [
        VideoEmbedMeta(doc_id=v.video_id, video_id=v.video_id,
                       video_path=_rel(paths, paths.video_npy(split, v.video_id)), start=0.0, end=v.duration,
                       duration=v.duration,
                       info={"backend": "synthetic", "fps": 1.0, "num_total": v.num_frames, "start_idx": 0,
                             "end_idx": v.num_frames - 1, "idxs": list(range(v.num_frames)), "frame_size": 0,
                             "sample_fps": 1.0, "max_frames": 64, "sampled_frames": v.num_frames,
                             "sampling_control": {}})
        for v in videos])
    write_faiss_index(paths.faiss_index(split), v_emb)
    write_id_map(paths.id_map(split), id_map_from_docid2row(docid2row))
    return l2_normalize_rows(q_emb), l2_normalize_rows(v_emb), meta, docid2row


def _teacher_text(m: QueryMetaRow, shown: str, q2event, video_by_id, style: str = "full") -> str:
    """The templated "teacher" answer in the original prompts' output format ("Reasoning: ...", GM L31-63)."""
    video, ev = q2event[m.qid]
    shown_video = video_by_id[shown]
    text = (matched_reasoning(ev, video.background, shown_video, style) if shown == m.pos_doc_id
            else not_matched_reasoning(ev, video.background, shown_video, style))
    return f"Reasoning: {text}"


def _sft(paths, raw_rows, meta, q2event, scores, order, doc_ids, docid2row, video_by_id, embed_meta, cfg,
         log) -> tuple[list[dict], list[dict]]:
    """The original's top-1 pool (build_top1_pool.py, `build.select.top1_pool`), a templated teacher parsed as the
    original parses its model (`build.teacher.output_row`) and the one-turn conversion (`build.oneturn`); plus the
    synthetic-only GT-video positives (configs/_synthetic.py `sft.augment_match_to_balance`)."""
    style = cfg.get("reasoning", "full")
    if style not in REASONING_STYLES:
        raise ValueError(f"config.synthetic.reasoning={style!r}: use one of {', '.join(REASONING_STYLES)}")
    meta_json = [m.to_json() for m in meta]
    doc_meta = {r.doc_id: r.to_json() for r in embed_meta}
    top1 = order[:, 0]
    pool, pool_stats = SEL.top1_pool(meta_json, top1, scores[np.arange(len(meta)), top1], doc_ids, doc_meta,
                                     raw_rows, num_match=int(cfg.build.top1_pool_match),
                                     num_not_match=int(cfg.build.top1_pool_not_match),
                                     seed=int(cfg.build.top1_pool_seed))
    n_match = pool_stats["selected_match"]
    misses = [r for r in pool if r["gold_label"] == "not_match"]
    added = []
    if cfg.sft.augment_match_to_balance and misses:
        # synthetic-only: show the GT video for some misses, as GRPO's builder balances (shuffled cycles)
        need = max(0, int(math.ceil(len(misses) * float(cfg.sft.target_match_ratio))) - n_match)
        aug_rng = random.Random(int(cfg.sft.augment_seed))
        picked: list = []
        while len(picked) < need:
            cycle = list(misses)
            aug_rng.shuffle(cycle)
            picked.extend(cycle[:need - len(picked)])
        raw_index = SEL.RawIndex(raw_rows)
        for src in picked:
            i, pos = src["query_index"], src["query_pos_doc_id"]
            row = SEL.pool_row(meta_json[i], i, pos, float(scores[i, docid2row[pos]]), doc_meta, raw_index)
            row.update(top1_rank=int(np.flatnonzero(order[i] == docid2row[pos])[0]) + 1,
                       augmentation_type="gt_video_positive", source_top1_doc_id=src["top1_doc_id"])
            added.append(row)
    by_qid = {m.qid: m for m in meta}
    reasoning_rows = [TE.output_row(r, _teacher_text(by_qid[r["qid"]], r["top1_doc_id"], q2event, video_by_id,
                                                            style),
                                    None, "stop") for r in pool + added]
    items, _ = OT.convert_rows(reasoning_rows, exclude_finish_reasons=tuple(cfg.build.sft_exclude_finish_reasons))
    log(f"sft: {len(items)} items ({n_match} top-1 matches, {len(misses)} misses, "
        f"{len(added)} GT-video positives added)")
    return reasoning_rows, items


def build_synthetic_dataset(root, dataset: str, cfg, *, embedder: Embedder,
                            overwrite: bool = False) -> SyntheticBuild:
    """Write `<root>/<dataset>/` in the prepared layout and validate it (raises PreparedDataError if invalid).

    Args:
      root: parent folder of the dataset folder.
      dataset: dataset folder name.
      cfg: the corpus settings, a config's `synthetic` section (the repo's configs/_synthetic.py).
      embedder: the search engine, e.g. `vsr1_jax.demo_models.tiny_embedder()` (a tiny *random* Qwen3-VL:
        retrieval is then near chance, which exercises every file and the matched/not-matched balancing but not
        retrieval quality) or a real Qwen3-VL-Embedding behind `TextVideoEmbedder`.
      overwrite: replace an existing non-empty dataset folder (otherwise FileExistsError).
    """
    paths = PreparedPaths(root, dataset)
    if paths.dataset_dir.exists() and any(paths.dataset_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{paths.dataset_dir} exists and is not empty; pass overwrite=True to replace it")
        shutil.rmtree(paths.dataset_dir)
    log = _progress(cfg)
    plans = plan_splits(cfg)
    counts: dict[str, Any] = {}
    first_desc_id = 0
    per_split = {}
    for split in SPLITS:
        rng = np.random.default_rng([int(cfg.seed), ("train", "test").index(split), 1])
        queries = _queries_for(plans[split], int(cfg[split].queries_per_event), rng, first_desc_id)
        first_desc_id += len(queries)
        log(f"{split}: {len(plans[split])} videos, {sum(len(v.events) for v in plans[split])} events, "
            f"{len(queries)} queries")
        q_emb, v_emb, meta, docid2row = _write_split(paths, split, plans[split], queries, cfg, embedder, log)
        per_split[split] = (queries, q_emb, v_emb, meta, docid2row)
        counts[f"{split}/videos"] = len(plans[split])
        counts[f"{split}/queries"] = len(queries)

    queries, q_emb, v_emb, meta, docid2row = per_split["train"]
    doc_ids = id_map_from_docid2row(docid2row)
    scores = q_emb @ v_emb.T
    order = SEL.rank_order(scores)
    counts["train/top1_hits"] = int(sum(doc_ids[int(order[i, 0])] == m.pos_doc_id for i, m in enumerate(meta)))
    log(f"train: top-1 retrieval hits {counts['train/top1_hits']}/{len(meta)}; writing hard negatives")
    meta_json = [m.to_json() for m in meta]
    negatives, _ = SEL.hard_negatives(meta_json, order[:, :int(cfg.build.hard_negative_topk_pool)], doc_ids,
                                      max_negatives=int(cfg.build.hard_negative_max))
    write_hard_negatives(paths.hard_negatives, negatives)

    raw_rows = [r.to_json() for r in read_raw_annotation(paths.raw_annotation("train"))]
    q2event = {f"{q.desc_id}_fig": (q.video, q.event) for q in queries}
    video_by_id = {v.video_id: v for v in plans["train"]}
    embed_meta = read_video_embed_meta(paths.video_embed_meta("train"))
    reasoning_rows, items = _sft(paths, raw_rows, meta, q2event, scores, order, doc_ids, docid2row, video_by_id,
                                 embed_meta, cfg, log)
    write_sft_reasoning(paths.sft_reasoning, reasoning_rows)
    write_sft_items(paths.sft_oneturn, items)
    counts["sft/items"] = len(items)

    g = cfg.grpo
    grpo_rows, stats = SEL.grpo_rows(
        raw_rows, meta_json, q_emb, SEL.numpy_search(v_emb), doc_ids, lambda v: paths.video_npy_exists("train", v),
        dataset_name=dataset, problem_prefix=P.sft_system_prompt(), hard_negative_topk=int(g.hard_negative_topk),
        hard_negative_depth=int(g.hard_negative_depth), augment_match_to_balance=bool(g.augment_match_to_balance),
        target_match_ratio=float(g.target_match_ratio), augment_seed=int(g.augment_seed),
        raw_annotation=_rel(paths, paths.raw_annotation("train")))
    write_grpo_rows(paths.grpo_rows, grpo_rows)
    write_grpo_stats(paths.grpo_stats, stats)
    counts["grpo/rows"] = len(grpo_rows)
    log(f"grpo: {stats['rows_written']} rows ({stats['rows_matched']} matched, {stats['rows_not_matched']} not, "
        f"{stats['rows_augmented_match_added']} augmented); validating")

    report = validate_dataset(paths)
    report.raise_if_errors()
    log(f"done: {paths.dataset_dir}")
    return SyntheticBuild(paths=paths, plans=plans, counts=counts, report=report)


__all__ = ["FIXED_EXTRACT_UTC", "SyntheticBuild", "build_synthetic_dataset"]
