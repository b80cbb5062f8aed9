"""The original's ordered construction steps (start_from_scratch.bash L33-46; eval_and_data.md §6 step 4) as
resumable file steps over one dataset folder. Each step skips itself when its marker says it finished and its
outputs exist, writes every file through a temporary name, and returns rows in / rows out / drops by reason; long
steps keep chunked partial results so an interrupted run continues. The models are passed in lazily: `embedder()`
and `teacher()` are only called by the steps that need them.

    annotations     01_data_generate      raw_annotation/, <split>/corpus_segments.jsonl, <split>/<split>_queries.jsonl
    npy_train       04_extract_train_npy  train/video_npy_with_meta/
    npy_test        04_extract_test_npy   test/video_npy_with_meta/
    embed_queries   02_embed_queries      <split>/query_embedding/
    embed_videos    02_embed_segments     <split>/video_embedding_1fps/
    index           03_build_index + 07   <split>/index/, test/metrics_npy.json
    top1_pool       05_build_top1_pool    sft_data/top1_pool.train.jsonl
    teacher         05_generate_match_grounding  sft_data/top1_reasoning_grounding.train.jsonl
    sft_convert     06_convert_to_train_oneturn  sft_data/train_oneturn.json
    hard_negatives  08_build_hard_negatives      train/hard_negatives.json
    grpo            09_build_verified_search_minimal_top1  grpo_data/

Only the train and test splits are built (the port's layout has no val split).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from vsr1_jax.data import files as F
from vsr1_jax.data.build import annotations as A
from vsr1_jax.data.build import frames as FR
from vsr1_jax.data.build import oneturn as OT
from vsr1_jax.data.build import select as SEL
from vsr1_jax.data.build import store as ST
from vsr1_jax.data.build import teacher as TE
from vsr1_jax.data.paths import SPLITS, PreparedPaths
from vsr1_jax.errors import UserError
from vsr1_jax.processing import prompts as P

STEPS = ("annotations", "npy_train", "npy_test", "embed_queries", "embed_videos", "index", "top1_pool", "teacher",
         "sft_convert", "hard_negatives", "grpo")
# The original's script behind each step (start_from_scratch.bash L33-46), for messages and the summary.
ORIGINAL = {"annotations": "01_data_generate", "npy_train": "04 train npy", "npy_test": "04 test npy",
            "embed_queries": "02_embed_queries", "embed_videos": "02_embed_segments",
            "index": "03_build_index + 07_eval_test_retrieval_npy", "top1_pool": "05_build_top1_pool",
            "teacher": "05_generate_match_grounding", "sft_convert": "06_convert_to_train_oneturn",
            "hard_negatives": "08_build_hard_negatives", "grpo": "09_build_verified_search_minimal_top1"}


class Embedder(Protocol):
    """The search engine: unit-norm float32 rows [N, D] for texts and for uint8 [T, H, W, 3] videos."""

    def embed_texts(self, texts: list[str], batch_size: int = 32) -> np.ndarray: ...

    def embed_videos(self, videos: list[np.ndarray], batch_size: int = 8) -> np.ndarray: ...


class BuildError(UserError, RuntimeError):
    """A build input is missing or inconsistent; the message names it and the config field or step to fix."""


@dataclasses.dataclass
class BuildContext:
    """paths: the dataset folder; cfg: `config.data.build` (a ConfigDict or anything with those attributes);
    grpo: the GRPO rows' builder (`GRPORows`: `config.data.build.grpo` + `config.grpo.hard_negative_topk`);
    embedder / teacher: zero-argument callables returning the models (called on first use); log: one-line
    messages."""

    paths: PreparedPaths
    cfg: Any
    grpo: Any
    embedder: Callable[[], Embedder]
    teacher: Callable[[], TE.Teacher]
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)
    _models: dict = dataclasses.field(default_factory=dict)

    def get_embedder(self) -> Embedder:
        if "embedder" not in self._models:
            self._models["embedder"] = self.embedder()
        return self._models["embedder"]

    def get_teacher(self) -> TE.Teacher:
        if "teacher" not in self._models:
            self._models["teacher"] = self.teacher()
        return self._models["teacher"]

    def bar(self, total: int, desc: str, unit: str, initial: int = 0) -> ST.Progress:
        return ST.Progress(total, desc, unit, enabled=bool(self.cfg.progress), initial=initial)

    def rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.paths.dataset_dir))


def parse_steps(steps: str | Sequence[str]) -> list[str]:
    """"all", a comma list ("annotations,npy_train") or a range ("embed_queries-index") -> step names in order."""
    if isinstance(steps, str):
        text = steps.strip()
        if text in ("", "all"):
            return list(STEPS)
        if "-" in text and "," not in text and text not in STEPS:
            a, b = (s.strip() for s in text.split("-", 1))
            for s in (a, b):
                if s not in STEPS:
                    raise BuildError(f"unknown build step {s!r} in --config.data.build.steps; "
                                     f"steps: {', '.join(STEPS)}")
            return list(STEPS[STEPS.index(a):STEPS.index(b) + 1])
        names = [s.strip() for s in text.split(",") if s.strip()]
    else:
        names = [str(s).strip() for s in steps]
    bad = [s for s in names if s not in STEPS]
    if bad:
        raise BuildError(f"unknown build step(s) {bad} in --config.data.build.steps; steps: {', '.join(STEPS)}")
    return [s for s in STEPS if s in names]


def _need(path: Path, step: str, what: str) -> Path:
    if not Path(path).exists():
        raise BuildError(f"{path} not found: {what} is written by the {step!r} step; run it first "
                         f"(--config.data.build.steps={step})")
    return Path(path)


def _drops(**counts: int) -> dict[str, int]:
    return {k: int(v) for k, v in counts.items() if v}


# ---------------------------------------------------------------------------------------------------------------
# 01 annotations
# ---------------------------------------------------------------------------------------------------------------
def _annotation_file(cfg, split: str) -> Path:
    name = str(cfg.train_annotation if split == "train" else cfg.test_annotation)
    path = Path(name) if os.path.isabs(name) or not cfg.annotations else Path(str(cfg.annotations)) / name
    if not path.is_file():
        field = "train_annotation" if split == "train" else "test_annotation"
        raise BuildError(f"{split} annotation file {path} not found: set --config.data.build.annotations=<folder "
                         f"with the VERIFIED jsonl files> (and --config.data.build.{field}=<file name>)")
    return path


def step_annotations(ctx: BuildContext) -> tuple[dict, list[Path]]:
    cfg, paths = ctx.cfg, ctx.paths
    raw_videos = str(cfg.raw_videos)
    if not raw_videos or not os.path.isdir(raw_videos):
        raise BuildError(f"raw video folder {raw_videos or '<empty>'!r} not found: set "
                         "--config.data.build.raw_videos=<folder holding <video_id>.mp4|mkv|webm|avi>")
    exts = tuple(cfg.video_extensions)
    outputs: list[Path] = []
    stats: dict[str, Any] = {}
    rows_in = rows_out = 0
    drops = {"missing_video": 0, "missing_desc": 0}
    for split in SPLITS:
        src = _annotation_file(cfg, split)
        raw_dst = paths.raw_annotation(split)
        ST.write_atomic(raw_dst, lambda tmp, s=src: shutil.copyfile(s, tmp))  # a verbatim copy (01 L54-57)
        lines = A.read_annotation_lines(src)
        corpus, queries, s = A.prepare_split(lines, lambda vid: FR.resolve_video_path(raw_videos, vid, exts),
                                             seed=int(cfg.query_shuffle_seed))
        corpus_path, query_path = A.split_files(paths.split_dir(split), split)
        ST.write_atomic(corpus_path, lambda tmp, r=corpus: F.write_jsonl(tmp, r))
        ST.write_atomic(query_path, lambda tmp, r=queries: F.write_jsonl(tmp, r))
        outputs += [raw_dst, corpus_path, query_path]
        stats[split] = dict(s, videos=len(corpus), queries=len(queries))
        rows_in += s["total_lines"]
        rows_out += len(queries)
        for k in drops:
            drops[k] += s[k]
        ctx.log(f"[annotations] {split}: {s['total_lines']} lines -> {len(corpus)} videos, {len(queries)} queries "
                f"(missing video {s['missing_video']}, missing desc {s['missing_desc']})")
    return {"rows_in": rows_in, "rows_out": rows_out, "drops": _drops(**drops), "stats": stats}, outputs


def _split_inputs(ctx: BuildContext, split: str) -> tuple[list[dict], list[dict]]:
    corpus_path, query_path = A.split_files(ctx.paths.split_dir(split), split)
    return (A.read_jsonl_plain(_need(corpus_path, "annotations", "the corpus")),
            A.read_jsonl_plain(_need(query_path, "annotations", "the query rows")))


# ---------------------------------------------------------------------------------------------------------------
# 04 npy frames
# ---------------------------------------------------------------------------------------------------------------
def _read_partial_rows(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        with open(path, "r", encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from an interrupted run
    return rows


def step_npy(ctx: BuildContext, split: str) -> tuple[dict, list[Path]]:
    """04_extract_<split>_npy: one npy per unique positive video of the split's query rows, in query order (X reads
    <split>_queries.jsonl with VIDEO_ID_KEY=pos_doc_id, 04_extract_train_npy.bash L13-14)."""
    cfg, paths = ctx.cfg, ctx.paths
    corpus, queries = _split_inputs(ctx, split)
    path_of = {d["doc_id"]: d["video_path"] for d in corpus}
    videos = list(dict.fromkeys(q["pos_doc_id"] for q in queries if q.get("pos_doc_id") in path_of))
    partial = ST.build_dir(paths) / f"npy_{split}.partial.jsonl"
    done = {r["video_id"]: r for r in _read_partial_rows(partial) if paths.video_npy_exists(split, r["video_id"])}
    todo = [v for v in videos if v not in done]
    failed: list[dict] = []
    utc = str(cfg.extract_utc) or None

    def extract(video_id: str):
        try:
            arr, meta = FR.extract_npy_frames(
                path_of[video_id], fps=float(cfg.video_fps), max_frames=int(cfg.video_max_frames),
                max_pixels=int(cfg.video_max_pixels) or None, min_pixels=int(cfg.video_min_pixels) or None,
                unknown_frame_count=str(cfg.npy_unknown_frame_count), extract_utc=utc)
            return video_id, arr, meta, None
        except FR.VideoDecodeError as exc:
            return video_id, None, None, str(exc)

    partial.parent.mkdir(parents=True, exist_ok=True)
    with ctx.bar(len(videos), f"npy {split}", "video", initial=len(videos) - len(todo)) as bar, \
            open(partial, "a", encoding="utf-8") as log_f, \
            ThreadPoolExecutor(max_workers=max(1, int(cfg.npy_workers))) as pool:
        for video_id, arr, meta, err in pool.map(extract, todo):
            if err is not None:
                ctx.log(f"[npy {split}] failed {path_of[video_id]}: {err}")
                failed.append({"source_video_path": os.path.normpath(path_of[video_id]), "error": err,
                               "extract_utc": utc or FR.utc_now()})
            else:
                npy = paths.video_npy(split, video_id)
                ST.write_atomic(npy, lambda tmp, a=arr: F.write_video_npy(tmp, a))
                # paths inside the files are relative to the dataset folder (readers match by id, basename or
                # stem, as the original's video_metadata.py does), so a moved tree still matches
                meta.update(video_id=video_id, output_npy_path=ctx.rel(npy))
                done[video_id] = meta
                log_f.write(json.dumps(meta, ensure_ascii=False) + "\n")
                log_f.flush()
            bar.update(1)
    meta_rows = [done[v] for v in videos if v in done]
    ST.write_atomic(paths.video_npy_meta(split), lambda tmp: F.write_video_npy_meta(tmp, meta_rows))
    failed_path = paths.video_npy_dir(split) / "failed_videos.jsonl"
    ST.write_atomic(failed_path, lambda tmp: F.write_jsonl(tmp, failed))
    partial.unlink(missing_ok=True)
    ctx.log(f"[npy {split}] {len(meta_rows)}/{len(videos)} videos extracted, {len(failed)} failed")
    return ({"rows_in": len(videos), "rows_out": len(meta_rows), "drops": _drops(decode_failed=len(failed)),
             "stats": {"videos": len(videos), "ok": len(meta_rows), "failed": len(failed),
                       "failed_videos": [f["source_video_path"] for f in failed]}},
            [paths.video_npy_meta(split), failed_path])


# ---------------------------------------------------------------------------------------------------------------
# 02 embeddings
# ---------------------------------------------------------------------------------------------------------------
def step_embed_queries(ctx: BuildContext) -> tuple[dict, list[Path]]:
    """02_embed_queries: every query row of each split through the embedder (instruction "Represent the user's
    input", batch 32), rows in file order; written in chunks so an interrupted run continues."""
    cfg, paths = ctx.cfg, ctx.paths
    outputs: list[Path] = []
    stats: dict[str, Any] = {}
    total = 0
    for split in SPLITS:
        _, queries = _split_inputs(ctx, split)
        store = ST.ChunkStore(paths.query_embeddings(split).parent / ".partial")
        spans = ST.chunks(len(queries), int(cfg.query_chunk))
        done = sum(store.done(i) for i in range(len(spans)))
        with ctx.bar(len(queries), f"embed queries {split}", "query",
                     initial=sum(e - s for i, (s, e) in enumerate(spans) if store.done(i))) as bar:
            for i, (s, e) in enumerate(spans):
                if store.done(i):
                    continue
                vecs = np.asarray(ctx.get_embedder().embed_texts([q["query"] for q in queries[s:e]],
                                                                 batch_size=int(cfg.query_embed_batch_size)),
                                  np.float32)
                store.write(i, {"rows": e - s}, vecs)
                bar.update(e - s)
        mats = [store.read(i)[1] for i in range(len(spans))]
        matrix = np.concatenate(mats) if mats else np.zeros((0, 0), np.float32)
        if matrix.shape[0] != len(queries):
            raise BuildError(f"{store.folder}: {matrix.shape[0]} embedded rows for {len(queries)} queries; delete "
                             "the folder and rerun the step")
        ST.write_atomic(paths.query_embeddings(split), lambda tmp, m=matrix: F.write_embeddings(tmp, m))
        ST.write_atomic(paths.query_meta(split), lambda tmp, r=queries: F.write_query_meta(tmp, r))
        store.remove()
        outputs += [paths.query_embeddings(split), paths.query_meta(split)]
        stats[split] = {"queries": len(queries), "dim": int(matrix.shape[1]) if matrix.size else 0,
                        "chunks_resumed": int(done)}
        total += len(queries)
    return {"rows_in": total, "rows_out": total, "drops": {}, "stats": stats}, outputs


def _embed_chunk(ctx: BuildContext, docs: list[dict]) -> tuple[dict, np.ndarray | None]:
    """Decode the search-engine frames of `docs` (threads) and embed them, `segment_embed_batch_size` at a time."""
    cfg = ctx.cfg
    ok, metas, failed, vecs = [], [], [], []

    def decode(doc: dict):
        try:
            frames, info = FR.embedder_frames(doc["video_path"], duration=doc.get("duration"),
                                              sample_fps=float(cfg.embed_sample_fps),
                                              max_frames=int(cfg.embed_max_frames))
            info["sampling_control"] = FR.embed_sampling_control(
                float(doc.get("end") or doc.get("duration") or 0.0) - float(doc.get("start") or 0.0),
                sample_fps=float(cfg.embed_sample_fps), max_frames=int(cfg.embed_max_frames))
            return doc, frames, info, None
        except FR.VideoDecodeError as exc:
            return doc, None, None, str(exc)

    bs = max(1, int(cfg.segment_embed_batch_size))
    with ThreadPoolExecutor(max_workers=max(1, int(cfg.decode_workers))) as pool:
        for s in range(0, len(docs), bs):
            batch = list(pool.map(decode, docs[s:s + bs]))
            good = [(d, f, i) for d, f, i, err in batch if err is None]
            for d, _, _, err in batch:
                if err is not None:
                    ctx.log(f"[embed videos] failed {d['video_path']}: {err}")
                    failed.append({"doc_id": d["doc_id"], "error": err})
            if good:
                v = np.asarray(ctx.get_embedder().embed_videos([f for _, f, _ in good], batch_size=bs), np.float32)
                vecs.append(v)
                for d, _, info in good:
                    ok.append(d["doc_id"])
                    metas.append({k: d.get(k) for k in ("doc_id", "video_id", "video_path", "start", "end",
                                                         "duration")} | {"info": info})
    record = {"docs": ok, "meta": metas, "failed": failed}
    return record, (np.concatenate(vecs) if vecs else None)


def step_embed_videos(ctx: BuildContext) -> tuple[dict, list[Path]]:
    """02_embed_segments: one vector per corpus video (whole video, 1 fps, <= 64 frames, original resolution),
    in corpus order; failures named in failed_docs.jsonl; chunked so an interrupted run continues."""
    cfg, paths = ctx.cfg, ctx.paths
    outputs: list[Path] = []
    stats: dict[str, Any] = {}
    rows_in = rows_out = n_failed = 0
    for split in SPLITS:
        corpus, _ = _split_inputs(ctx, split)
        out_dir = paths.segment_embeds(split).parent
        store = ST.ChunkStore(out_dir / ".partial")
        spans = ST.chunks(len(corpus), int(cfg.video_chunk))
        with ctx.bar(len(corpus), f"embed videos {split}", "video",
                     initial=sum(e - s for i, (s, e) in enumerate(spans) if store.done(i))) as bar:
            for i, (s, e) in enumerate(spans):
                if store.done(i):
                    continue
                record, matrix = _embed_chunk(ctx, corpus[s:e])
                store.write(i, record, matrix)
                bar.update(e - s)
        docs, metas, failed, mats = [], [], [], []
        for i in range(len(spans)):
            record, matrix = store.read(i)
            docs += record["docs"]
            metas += record["meta"]
            failed += record["failed"]
            if matrix is not None:
                mats.append(matrix)
        if not docs:
            raise BuildError(f"no {split} video could be embedded ({len(failed)} failed; see the log): nothing to "
                             "retrieve from")
        matrix = np.concatenate(mats)
        docid2row = {d: r for r, d in enumerate(docs)}
        ST.write_atomic(paths.segment_embeds(split), lambda tmp, m=matrix: F.write_embeddings(tmp, m))
        ST.write_atomic(paths.docid2row(split), lambda tmp, m=docid2row: F.write_docid2row(tmp, m))
        ST.write_atomic(paths.video_embed_meta(split), lambda tmp, r=metas: F.write_video_embed_meta(tmp, r))
        ST.write_atomic(out_dir / "failed_docs.jsonl", lambda tmp, r=failed: F.write_jsonl(tmp, r))
        config = {"backend": "pyav", "instruction": str(cfg.embed_instruction),
                  "sample_fps": float(cfg.embed_sample_fps), "sample_max_frames": int(cfg.embed_max_frames),
                  "frame_size": 0,
                  "segment_batch_size": int(cfg.segment_embed_batch_size), "num_rows": int(matrix.shape[0]),
                  "embed_dim": int(matrix.shape[1])}
        ST.write_json_atomic(out_dir / "config.json", config)
        store.remove()
        outputs += [paths.segment_embeds(split), paths.docid2row(split), paths.video_embed_meta(split),
                    out_dir / "failed_docs.jsonl", out_dir / "config.json"]
        stats[split] = {"videos": len(corpus), "embedded": len(docs), "failed": len(failed),
                        "failed_docs": [f["doc_id"] for f in failed]}
        rows_in += len(corpus)
        rows_out += len(docs)
        n_failed += len(failed)
        ctx.log(f"[embed videos] {split}: {len(docs)}/{len(corpus)} videos embedded, {len(failed)} failed")
    return {"rows_in": rows_in, "rows_out": rows_out, "drops": _drops(decode_failed=n_failed), "stats": stats}, \
        outputs


# ---------------------------------------------------------------------------------------------------------------
# 03 index + 07 test R@k
# ---------------------------------------------------------------------------------------------------------------
def _load_split_vectors(ctx: BuildContext, split: str):
    p = ctx.paths
    _need(p.segment_embeds(split), "embed_videos", "the video embeddings")
    _need(p.query_embeddings(split), "embed_queries", "the query embeddings")
    return (F.read_embeddings(p.segment_embeds(split), "segment_embeds"), F.read_docid2row(p.docid2row(split)),
            F.read_embeddings(p.query_embeddings(split), "query_embeddings"),
            [m.to_json() for m in F.read_query_meta(p.query_meta(split))])


def step_index(ctx: BuildContext) -> tuple[dict, list[Path]]:
    """03_build_index: FAISS IndexFlatIP over the L2-normalised videos + id_map per split; then 07: test R@k of the
    stored query vectors for the raw test rows (eval_retrieval_npy.py) -> test/metrics_npy.json."""
    paths, cfg = ctx.paths, ctx.cfg
    outputs: list[Path] = []
    stats: dict[str, Any] = {}
    for split in SPLITS:
        v, d2r, _, _ = _load_split_vectors(ctx, split)
        ST.write_atomic(paths.faiss_index(split), lambda tmp, m=v: F.write_faiss_index(tmp, m))
        ST.write_atomic(paths.id_map(split), lambda tmp, m=d2r: F.write_id_map(tmp, F.id_map_from_docid2row(m)))
        outputs += [paths.faiss_index(split), paths.id_map(split)]
        stats[split] = {"videos": int(v.shape[0]), "dim": int(v.shape[1])}
    v, d2r, q, meta = _load_split_vectors(ctx, "test")
    raw = [o for _, o in F.iter_jsonl(paths.raw_annotation("test"), "raw_annotation")]
    metrics = SEL.retrieval_recall(q, v, d2r, meta, raw, tuple(cfg.metrics_topk))
    names = {"query_embeddings": ctx.rel(paths.query_embeddings("test")),
             "query_meta": ctx.rel(paths.query_meta("test")),
             "video_embeddings": ctx.rel(paths.segment_embeds("test")),
             "video_docid2row": ctx.rel(paths.docid2row("test")), "queries": ctx.rel(paths.raw_annotation("test"))}
    metrics_path = paths.split_dir("test") / "metrics_npy.json"
    ST.write_json_atomic(metrics_path, names | metrics)
    outputs.append(metrics_path)
    line = " ".join(f"{k}={val:.4f}" for k, val in metrics["metrics"].items())
    ctx.log(f"[index] test retrieval over {metrics['total_rows_evaluated']} queries: {line}")
    stats["test_metrics"] = metrics["metrics"]
    stats["test_rows_evaluated"] = metrics["total_rows_evaluated"]
    n = sum(stats[s]["videos"] for s in SPLITS)
    return {"rows_in": n, "rows_out": n, "drops": {}, "stats": stats}, outputs


# ---------------------------------------------------------------------------------------------------------------
# 05 top-1 pool, teacher; 06 one-turn SFT
# ---------------------------------------------------------------------------------------------------------------
def pool_path(paths: PreparedPaths) -> Path:
    return paths.sft_oneturn.parent / "top1_pool.train.jsonl"


def _faiss_search(paths: PreparedPaths, split: str) -> SEL.Search:
    index = F.read_faiss_index(_need(paths.faiss_index(split), "index", "the FAISS index"))
    return lambda q, k: index.search(np.ascontiguousarray(q, np.float32), int(k))


def step_top1_pool(ctx: BuildContext) -> tuple[dict, list[Path]]:
    """05_build_top1_pool: the FAISS top-1 of every train query, <= 1000 match + 1000 not_match (seed 42)."""
    cfg, paths = ctx.cfg, ctx.paths
    _, _, q, meta = _load_split_vectors(ctx, "train")
    id_map = F.read_id_map(_need(paths.id_map("train"), "index", "the id map"))
    qn = q / (np.linalg.norm(q, axis=-1, keepdims=True) + 1e-9)  # TP `_l2_normalize`
    scores, rows = _faiss_search(paths, "train")(qn.astype(np.float32), 1)
    doc_meta: dict[str, dict] = {}
    for r in F.read_video_embed_meta(paths.video_embed_meta("train")):
        doc_meta.setdefault(r.doc_id, r.to_json())
    raw = [o for _, o in F.iter_jsonl(paths.raw_annotation("train"), "raw_annotation")]
    pool, s = SEL.top1_pool(meta, rows[:, 0], scores[:, 0], id_map, doc_meta, raw,
                            num_match=int(cfg.top1_pool_match), num_not_match=int(cfg.top1_pool_not_match),
                            seed=int(cfg.top1_pool_seed))
    out = pool_path(paths)
    ST.write_atomic(out, lambda tmp: F.write_jsonl(tmp, pool))
    ctx.log(f"[top1_pool] {s['valid']} valid queries: {s['match_available']} top-1 matches, "
            f"{s['not_match_available']} misses -> {s['selected_match']} + {s['selected_not_match']} rows")
    return {"rows_in": len(meta), "rows_out": len(pool),
            "drops": _drops(invalid_query_or_missing_positive=len(meta) - s["valid"],
                            not_sampled=s["valid"] - len(pool)), "stats": s}, [out]


def teacher_request(ctx: BuildContext, row: Mapping[str, Any], video_meta: F.VideoMeta) -> dict | None:
    """The teacher's input for one pool row: GM `_build_messages` with the train npy of the top-1 video and its
    meta row (raw fps + source indices: real-second timestamps, GM L306-319); None when the npy is missing."""
    vid = str(row.get("top1_video_id", "")).strip() or str(row.get("top1_doc_id", "")).strip()
    npy = ctx.paths.video_npy("train", vid)
    if not npy.is_file():
        return None
    return {"messages": TE.messages(row), "frames": F.load_npy_video(npy), "meta": video_meta.lookup(vid) or {}}


def step_teacher(ctx: BuildContext) -> tuple[dict, list[Path]]:
    """05_generate_match_grounding: the teacher's reasoning for every pool row (chunked, resumable), parsed into
    the model_* fields; a row whose top-1 npy is missing gets model_error set and no text, as an API error does
    in the original."""
    cfg, paths = ctx.cfg, ctx.paths
    pool = [o for _, o in F.iter_jsonl(_need(pool_path(paths), "top1_pool", "the top-1 pool"), "sft_reasoning")]
    video_meta = F.read_video_meta(_need(paths.video_npy_meta("train"), "npy_train", "the train npy meta"))
    store = ST.ChunkStore(paths.sft_reasoning.parent / ".partial_teacher")
    spans = ST.chunks(len(pool), int(cfg.teacher_chunk))
    with ctx.bar(len(pool), "teacher", "pair",
                 initial=sum(e - s for i, (s, e) in enumerate(spans) if store.done(i))) as bar:
        for i, (s, e) in enumerate(spans):
            if store.done(i):
                continue
            rows = pool[s:e]
            reqs = [teacher_request(ctx, r, video_meta) for r in rows]
            for j, q in enumerate(reqs):
                if q is not None:
                    q["index"] = s + j  # the pool position: a stable seed for the batch, resumed or not
            live = [q for q in reqs if q is not None]
            replies = iter(ctx.get_teacher()(live) if live else [])
            out = []
            for r, q in zip(rows, reqs):
                if q is None:
                    out.append(TE.output_row(r, "", f"top-1 video npy missing: {r.get('top1_doc_id')}", None))
                else:
                    text, finish, err = next(replies)
                    out.append(TE.output_row(r, text, err, finish))
            store.write(i, {"rows": out})
            bar.update(e - s)
    rows = [r for i in range(len(spans)) for r in store.read(i)[0]["rows"]]
    ST.write_atomic(paths.sft_reasoning, lambda tmp: F.write_sft_reasoning(tmp, rows))
    store.remove()
    finish: dict[str, int] = {}
    for r in rows:
        finish[r["model_finish_reason"] or "none"] = finish.get(r["model_finish_reason"] or "none", 0) + 1
    s = {"finish_reasons": finish, "model_error": sum(bool(r["model_error"]) for r in rows),
         "gold_consistent": sum(r["model_gold_consistent"] for r in rows)}
    ctx.log(f"[teacher] {len(rows)} rows; finish reasons {finish}; {s['model_error']} errors")
    return {"rows_in": len(pool), "rows_out": len(rows), "drops": {}, "stats": s}, [paths.sft_reasoning]


def step_sft_convert(ctx: BuildContext) -> tuple[dict, list[Path]]:
    """06_convert_to_train_oneturn: one item per reasoning row, rows the teacher cut at max tokens dropped."""
    cfg, paths = ctx.cfg, ctx.paths
    rows = F.read_sft_reasoning(_need(paths.sft_reasoning, "teacher", "the teacher's reasoning"))
    items, s = OT.convert_rows(rows, exclude_finish_reasons=tuple(cfg.sft_exclude_finish_reasons),
                               balance_binary_by_downsample=bool(cfg.sft_balance_binary),
                               balance_seed=int(cfg.sft_balance_seed))
    ST.write_atomic(paths.sft_oneturn, lambda tmp: F.write_sft_items(tmp, items))
    ctx.log(f"[sft_convert] {len(rows)} rows -> {len(items)} items ({s['pos']} pos, {s['neg']} neg; "
            f"{s['skipped_finish_reason']} dropped for finish reason)")
    return {"rows_in": len(rows), "rows_out": len(items),
            "drops": _drops(finish_reason=s["skipped_finish_reason"], balance_pos=s["dropped_pos"],
                            balance_neg=s["dropped_neg"]), "stats": s}, [paths.sft_oneturn]


# ---------------------------------------------------------------------------------------------------------------
# 08 hard negatives, 09 GRPO
# ---------------------------------------------------------------------------------------------------------------
def step_hard_negatives(ctx: BuildContext) -> tuple[dict, list[Path]]:
    """08_build_hard_negatives: top-50 train videos by cosine per train query, positive and repeats removed."""
    cfg, paths = ctx.cfg, ctx.paths
    v, d2r, q, meta = _load_split_vectors(ctx, "train")
    row2doc = [""] * max(v.shape[0], max(d2r.values(), default=-1) + 1)
    for d, r in d2r.items():
        row2doc[r] = d
    pool = min(max(1, int(cfg.hard_negative_topk_pool)), v.shape[0])
    top = SEL.rank_order(SEL.l2_normalize(q) @ SEL.l2_normalize(v).T)[:, :pool]
    negs, skips = SEL.hard_negatives(meta, top, row2doc, max_negatives=int(cfg.hard_negative_max))
    ST.write_atomic(paths.hard_negatives, lambda tmp: F.write_hard_negatives(tmp, negs))
    lens = [len(x) for x in negs.values()]
    s = dict(skips, output_qids=len(negs), min=min(lens, default=0), max=max(lens, default=0),
             mean=float(np.mean(lens)) if lens else 0.0)
    return {"rows_in": len(meta), "rows_out": len(negs), "drops": _drops(**skips), "stats": s}, [paths.hard_negatives]


def step_grpo(ctx: BuildContext) -> tuple[dict, list[Path]]:
    """09_build_verified_search_minimal_top1: one GRPO row per raw train row + match balancing, and its stats."""
    cfg, g, paths = ctx.cfg, ctx.grpo, ctx.paths
    _, _, q, meta = _load_split_vectors(ctx, "train")
    id_map = F.read_id_map(_need(paths.id_map("train"), "index", "the id map"))
    raw = [o for _, o in F.iter_jsonl(paths.raw_annotation("train"), "raw_annotation")]
    rows, stats = SEL.grpo_rows(
        raw, meta, q, _faiss_search(paths, "train"), id_map, lambda v: paths.video_npy_exists("train", v),
        dataset_name=str(cfg.dataset_name), problem_prefix=P.sft_system_prompt(),
        hard_negative_topk=int(g.hard_negative_topk), hard_negative_depth=int(g.hard_negative_depth),
        drop_missing_video_npy=bool(g.drop_missing_video_npy),
        augment_match_to_balance=bool(g.augment_match_to_balance),
        target_match_ratio=float(g.target_match_ratio), augment_seed=int(g.augment_seed),
        raw_annotation=ctx.rel(paths.raw_annotation("train")))
    ST.write_atomic(paths.grpo_rows, lambda tmp: F.write_grpo_rows(tmp, rows))
    ST.write_atomic(paths.grpo_stats, lambda tmp: F.write_grpo_stats(tmp, stats))
    ctx.log(f"[grpo] {stats['rows_total']} raw rows -> {stats['rows_written']} ({stats['rows_matched']} matched, "
            f"{stats['rows_augmented_match_added']} augmented)")
    return {"rows_in": stats["rows_total"], "rows_out": stats["rows_written"],
            "drops": _drops(**{k: stats[k] for k in SEL.GRPO_DROP_KEYS}), "stats": stats}, \
        [paths.grpo_rows, paths.grpo_stats]


_RUNNERS: dict[str, Callable[[BuildContext], tuple[dict, list[Path]]]] = {
    "annotations": step_annotations, "npy_train": lambda c: step_npy(c, "train"),
    "npy_test": lambda c: step_npy(c, "test"), "embed_queries": step_embed_queries,
    "embed_videos": step_embed_videos, "index": step_index, "top1_pool": step_top1_pool, "teacher": step_teacher,
    "sft_convert": step_sft_convert, "hard_negatives": step_hard_negatives, "grpo": step_grpo,
}


def run_steps(ctx: BuildContext, steps: str | Sequence[str] = "all", *, overwrite: bool = False) -> dict[str, Any]:
    """Run `steps` in the original's order; a step whose marker and outputs exist is skipped (unless overwrite).
    Returns the summary: per step its status, seconds, rows in/out, drops by reason and stats."""
    names = parse_steps(steps)
    summary: dict[str, Any] = {"dataset_dir": str(ctx.paths.dataset_dir), "steps": {}}
    t_all = time.perf_counter()
    for name in names:
        marker = None if overwrite else ST.step_complete(ctx.paths, name)
        if marker is not None:
            ctx.log(f"[build] {name}: complete, skipped ({ORIGINAL[name]})")
            summary["steps"][name] = {"status": "skipped", "seconds": 0.0, **marker["stats"]}
            continue
        ctx.log(f"[build] {name} ({ORIGINAL[name]})")
        ST.clear_marker(ctx.paths, name)
        t0 = time.perf_counter()
        stats, outputs = _RUNNERS[name](ctx)
        ST.write_marker(ctx.paths, name, stats, outputs)
        summary["steps"][name] = {"status": "ran", "seconds": round(time.perf_counter() - t0, 3), **stats}
    summary["total_seconds"] = round(time.perf_counter() - t_all, 3)
    ST.write_json_atomic(ST.build_dir(ctx.paths) / "summary.json", summary)
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """The final table: step, status, time, rows in -> out, drops by reason."""
    lines = [f"build summary for {summary['dataset_dir']} ({summary['total_seconds']:.1f} s)",
             f"  {'step':<15} {'status':<8} {'time':>8}  {'rows in':>8} -> {'out':<8} drops"]
    for name, s in summary["steps"].items():
        drops = ", ".join(f"{k} {v}" for k, v in s.get("drops", {}).items()) or "-"
        lines.append(f"  {name:<15} {s['status']:<8} {s['seconds']:>7.1f}s  {s.get('rows_in', 0):>8} -> "
                     f"{s.get('rows_out', 0):<8} {drops}")
    return "\n".join(lines)


__all__ = ["BuildContext", "BuildError", "Embedder", "ORIGINAL", "STEPS", "format_summary", "parse_steps",
           "pool_path", "run_steps", "teacher_request"]
