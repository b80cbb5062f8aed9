"""A reader and a writer for every file of a prepared VideoSearch-R1 dataset (JSON/JSONL, embeddings, FAISS index,
npy videos and their meta.jsonl); readers name the file and line of bad input. Numpy only, no JAX.

The npy video readers cite VP = videosearch_r1/model/qwen_vl_utils/vision_process.py and VM =
videosearch_r1/utils/video_metadata.py; spec pages: S = sqr_and_sft.md, E = eval_and_data.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from vsr1_jax.data.paths import PreparedDataError, _require
from vsr1_jax.data.records import (
    GrpoRow,
    QueryMetaRow,
    RawAnnotationRow,
    SftItem,
    VideoEmbedMeta,
    VideoNpyMeta,
    _type_ok,
)

# stats.minimal_top1.json keys in the order build_verified_search_minimal_top1.py writes them (L275-301).
# `dataset_name` and `raw_annotation` exist only in the BV builder, not in BM (grpo.md §5).
GRPO_STATS_KEYS = (
    "dataset_name", "raw_annotation",
    "rows_total", "rows_written", "rows_matched", "rows_not_matched",
    "rows_written_raw", "rows_matched_raw", "rows_not_matched_raw",
    "drop_empty_query_or_gt", "drop_query_missing_meta", "drop_invalid_qrow", "drop_empty_top1",
    "drop_missing_video_npy",
    "augment_match_to_balance", "target_match_ratio", "augment_seed",
    "rows_augmented_match_added", "rows_augmented_match_target", "rows_augmented_match_candidates",
    "rows_augmented_drop_missing_gt_npy", "rows_augmented_drop_missing_gt_time",
    "hard_negative_topk", "hard_negative_depth", "hard_negative_avg_count",
)
GRPO_STATS_OPTIONAL_KEYS = ("dataset_name", "raw_annotation")
# Rows whose L2 norm is at or below this are "zero": the original clips the norm at 1e-12 (EVAL `_l2_norm_rows`),
# which silently leaves an all-zero vector that scores 0 against everything.
_ZERO_NORM = 1e-12
# Where to point users when an npy video or meta.jsonl is missing.
_PREPARE_HINT = ("video_npy_with_meta/ is written by the data prepare/build step (preprocess/extract_npy/"
                 "extract_npy.py; eval_and_data.md §3.4)")


# ---------------------------------------------------------------------------------------------------------------
# Generic JSON / JSONL
# ---------------------------------------------------------------------------------------------------------------
def iter_jsonl(path: str | os.PathLike, kind: str) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object) for each non-blank line; blank lines are skipped as the original does.

    A malformed line or a non-object line raises PreparedDataError naming `file:line`.
    """
    path = _require(Path(path), kind)
    with open(path, "r", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PreparedDataError(f"{path}:{line_no}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise PreparedDataError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
            yield line_no, obj


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """One object per line, `ensure_ascii=False`, as every original writer does (e.g. BV L463-465)."""
    rows = list(rows)  # serialise (and validate) everything before the file is truncated
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_json(path: str | os.PathLike, kind: str) -> Any:
    path = _require(Path(path), kind)
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PreparedDataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """`indent=2, ensure_ascii=False`: how docid2row, id_map, hard negatives, SFT and stats files are written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Per-file readers / writers
# ---------------------------------------------------------------------------------------------------------------
def _rows_to_json(rows: Iterable, cls, path) -> Iterator[dict]:
    """Serialise rows (typed or plain dicts), checking each against `cls` so a writer never produces a file its
    reader would reject (e.g. a missing qid or an odd frame count in synthetic data)."""
    for i, r in enumerate(rows):
        obj = r.to_json() if hasattr(r, "to_json") else dict(r)
        cls.from_json(obj, f"writing {path} row {i}")
        yield obj


def read_raw_annotation(path: str | os.PathLike) -> list[RawAnnotationRow]:
    """raw_annotation/<split>.jsonl in file order (the eval's `index` counts these rows, EVAL L2137)."""
    return [RawAnnotationRow.from_json(o, f"{path}:{n}") for n, o in iter_jsonl(path, "raw_annotation")]


def write_raw_annotation(path: str | os.PathLike, rows: Iterable[RawAnnotationRow | Mapping]) -> Path:
    return write_jsonl(path, _rows_to_json(rows, RawAnnotationRow, path))


def read_query_meta(path: str | os.PathLike) -> list[QueryMetaRow]:
    return [QueryMetaRow.from_json(o, f"{path}:{n}") for n, o in iter_jsonl(path, "query_meta")]


def write_query_meta(path: str | os.PathLike, rows: Iterable[QueryMetaRow | Mapping]) -> Path:
    return write_jsonl(path, _rows_to_json(rows, QueryMetaRow, path))


def read_embeddings(path: str | os.PathLike, kind: str) -> np.ndarray:
    """Load an embedding matrix as float32 [N, D] (the original casts with np.asarray(..., float32), EVAL L2190).

    Refuses pickled arrays, non-2-D arrays, non-float dtypes, and non-finite or zero-norm rows.
    """
    path = _require(Path(path), kind)
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        # numpy raises ValueError("Object arrays cannot be loaded when allow_pickle=False").
        raise PreparedDataError(f"{path}: refusing to load ({exc}); embedding files must be plain float arrays, "
                                "not pickled objects") from None
    if isinstance(arr, np.lib.npyio.NpzFile):
        raise PreparedDataError(f"{path}: is an .npz archive; expected a single .npy float32 [N, D] array")
    if arr.ndim != 2:
        raise PreparedDataError(f"{path}: expected a 2-D [N, D] array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise PreparedDataError(f"{path}: expected float embeddings, got dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float32)
    _check_vectors(arr, str(path))
    return arr


def _check_vectors(arr: np.ndarray, where: str) -> np.ndarray:
    """Returns row norms [N]; raises on non-finite or zero rows (naming up to 5 row indices)."""
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        raise PreparedDataError(f"{where}: {bad.size} row(s) contain NaN/Inf (rows {bad[:5].tolist()}...)")
    norms = np.linalg.norm(arr, axis=1)
    zero = np.flatnonzero(norms <= _ZERO_NORM)
    if zero.size:
        raise PreparedDataError(f"{where}: {zero.size} zero-norm row(s) (rows {zero[:5].tolist()}); "
                                "they cannot be L2-normalised and would score 0 against everything")
    return norms


def l2_normalize_rows(arr: np.ndarray) -> np.ndarray:
    """float32 [N, D] → unit rows (EVAL L2190-2195 `_l2_norm_rows`; zero rows are rejected beforehand)."""
    arr = np.asarray(arr, dtype=np.float32)
    norms = _check_vectors(arr, "embedding matrix")
    return (arr / norms[:, None]).astype(np.float32, copy=False)


def write_embeddings(path: str | os.PathLike, matrix: np.ndarray) -> Path:
    """Save float32 [N, D] (query_embeddings.<split>.npy, segment_embeds.npy: eval_and_data.md §3.3, §3.5)."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"embedding matrix must be 2-D [N, D], got shape {matrix.shape}")
    matrix = matrix.astype(np.float32)
    _check_vectors(matrix, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, matrix, allow_pickle=False)
    return path


def read_docid2row(path: str | os.PathLike) -> dict[str, int]:
    """`{video_id: row}` (embed_segments.py L237-330). Rows must be distinct non-negative integers."""
    obj = read_json(path, "docid2row")
    if not isinstance(obj, dict):
        raise PreparedDataError(f"{path}: expected a JSON object {{video_id: row}}, got {type(obj).__name__}")
    seen: dict[int, str] = {}
    for doc, row in obj.items():
        if not _type_ok(row, (int,)) or row < 0:
            raise PreparedDataError(f"{path}: row of {doc!r} must be a non-negative integer, got {row!r}")
        if row in seen:
            raise PreparedDataError(f"{path}: row {row} is claimed by both {seen[row]!r} and {doc!r}")
        seen[row] = doc
    return {str(k): int(v) for k, v in obj.items()}


def write_docid2row(path: str | os.PathLike, docid2row: Mapping[str, int]) -> Path:
    return write_json(path, {str(k): int(v) for k, v in docid2row.items()})


def read_id_map(path: str | os.PathLike) -> list[str]:
    """index/id_map.json: doc ids sorted by docid2row row (build_faiss.py L27)."""
    obj = read_json(path, "id_map")
    if not isinstance(obj, list) or not all(isinstance(x, str) for x in obj):
        raise PreparedDataError(f"{path}: expected a JSON list of doc ids")
    return obj


def id_map_from_docid2row(docid2row: Mapping[str, int]) -> list[str]:
    return [doc for doc, _ in sorted(docid2row.items(), key=lambda kv: kv[1])]


def write_id_map(path: str | os.PathLike, id_map: Sequence[str]) -> Path:
    return write_json(path, [str(x) for x in id_map])


def build_faiss_index(matrix: np.ndarray):
    """faiss.IndexFlatIP over L2-normalised rows = exact cosine (build_faiss.py L22-37)."""
    import faiss  # lazy: faiss is absent on the accelerator machine; only index building/reading needs it

    vecs = np.ascontiguousarray(np.asarray(matrix, dtype=np.float32).copy())
    _check_vectors(vecs, "faiss input")
    faiss.normalize_L2(vecs)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    return index


def write_faiss_index(path: str | os.PathLike, matrix_or_index) -> Path:
    import faiss  # lazy: faiss is absent on the accelerator machine

    index = matrix_or_index if hasattr(matrix_or_index, "ntotal") else build_faiss_index(matrix_or_index)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    return path


def read_faiss_index(path: str | os.PathLike):
    import faiss  # lazy: faiss is absent on the accelerator machine

    path = _require(Path(path), "faiss_index")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise PreparedDataError(f"{path}: not a readable FAISS index ({str(exc).splitlines()[0]})") from None


def read_hard_negatives(path: str | os.PathLike) -> dict[str, list[str]]:
    """train/hard_negatives.json = {qid: [doc_id, …]} (build_hard_negatives_npy.py L116-154)."""
    obj = read_json(path, "hard_negatives")
    if not isinstance(obj, dict):
        raise PreparedDataError(f"{path}: expected a JSON object {{qid: [doc_id, ...]}}")
    for qid, ids in obj.items():
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise PreparedDataError(f"{path}: value of qid {qid!r} must be a list of doc id strings")
    return obj


def write_hard_negatives(path: str | os.PathLike, negatives: Mapping[str, Sequence[str]]) -> Path:
    return write_json(path, {str(k): [str(x) for x in v] for k, v in negatives.items()})


def read_sft_items(path: str | os.PathLike) -> list[SftItem]:
    """sft_data/train_oneturn.json: a JSON **array** of items (convert_match_grounding_to_oneturn.py L346-348)."""
    obj = read_json(path, "sft_oneturn")
    if not isinstance(obj, list):
        raise PreparedDataError(f"{path}: expected a JSON array of SFT items, got {type(obj).__name__}")
    items = []
    for i, o in enumerate(obj):
        if not isinstance(o, dict):
            raise PreparedDataError(f"{path} item {i}: expected an object, got {type(o).__name__}")
        items.append(SftItem.from_json(o, f"{path} item {i} (qid={o.get('qid')!r})"))
    return items


def write_sft_items(path: str | os.PathLike, items: Iterable[SftItem | Mapping]) -> Path:
    return write_json(path, list(_rows_to_json(items, SftItem, path)))


# Fields a reasoning row needs to be converted to an SFT item (convert_match_grounding_to_oneturn.py L300-344).
SFT_REASONING_REQUIRED = ("pair_id", "qid", "query", "top1_doc_id", "gold_label")


def read_sft_reasoning(path: str | os.PathLike) -> list[dict]:
    """top1_reasoning_grounding.train.jsonl: top-1 pool rows + teacher fields (eval_and_data.md §3.8). Plain dicts:
    the row carries ~30 fields and nothing downstream except the converter reads it."""
    rows = []
    for n, o in iter_jsonl(path, "sft_reasoning"):
        missing = [k for k in SFT_REASONING_REQUIRED if k not in o]
        if missing:
            raise PreparedDataError(f"{path}:{n}: missing required field(s) {missing}")
        rows.append(o)
    return rows


def write_sft_reasoning(path: str | os.PathLike, rows: Iterable[Mapping]) -> Path:
    return write_jsonl(path, rows)


def read_grpo_rows(path: str | os.PathLike) -> list[GrpoRow]:
    return [GrpoRow.from_json(o, f"{path}:{n}") for n, o in iter_jsonl(path, "grpo_rows")]


def write_grpo_rows(path: str | os.PathLike, rows: Iterable[GrpoRow | Mapping]) -> Path:
    return write_jsonl(path, _rows_to_json(rows, GrpoRow, path))


def read_grpo_stats(path: str | os.PathLike) -> dict:
    """stats.minimal_top1.json; every count key of GRPO_STATS_KEYS must be present (BV L275-301)."""
    obj = read_json(path, "grpo_stats")
    if not isinstance(obj, dict):
        raise PreparedDataError(f"{path}: expected a JSON object")
    missing = [k for k in GRPO_STATS_KEYS if k not in obj and k not in GRPO_STATS_OPTIONAL_KEYS]
    if missing:
        raise PreparedDataError(f"{path}: missing stats key(s) {missing}")
    return obj


def write_grpo_stats(path: str | os.PathLike, stats: Mapping[str, Any]) -> Path:
    """Known keys first in the builder's order, unknown keys after (json.dump indent=2, BV L473-474)."""
    ordered = {k: stats[k] for k in GRPO_STATS_KEYS if k in stats}
    ordered.update({k: v for k, v in stats.items() if k not in ordered})
    return write_json(path, ordered)


def read_video_npy_meta(path: str | os.PathLike) -> list[VideoNpyMeta]:
    return [VideoNpyMeta.from_json(o, f"{path}:{n}") for n, o in iter_jsonl(path, "video_npy_meta")]


def write_video_npy_meta(path: str | os.PathLike, rows: Iterable[VideoNpyMeta | Mapping]) -> Path:
    return write_jsonl(path, _rows_to_json(rows, VideoNpyMeta, path))


def index_video_npy_meta(rows: Iterable[VideoNpyMeta]) -> dict[str, VideoNpyMeta]:
    """video id → meta; a later row for the same id wins, as in video_metadata.py's dict build."""
    return {r.key: r for r in rows}


def read_video_embed_meta(path: str | os.PathLike) -> list[VideoEmbedMeta]:
    return [VideoEmbedMeta.from_json(o, f"{path}:{n}") for n, o in iter_jsonl(path, "video_embed_meta")]


def write_video_embed_meta(path: str | os.PathLike, rows: Iterable[VideoEmbedMeta | Mapping]) -> Path:
    return write_jsonl(path, _rows_to_json(rows, VideoEmbedMeta, path))


def read_video_npy(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """<video_id>.npy: uint8 [T, H, W, 3] RGB, T even (T ≤ 64 in the original; extract_npy.py L188, L303-308)."""
    path = _require(Path(path), "video_npy")
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as exc:
        raise PreparedDataError(f"{path}: refusing to load ({exc}); video files must be uint8 arrays") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise PreparedDataError(f"{path}: expected uint8 [T, H, W, 3], got {arr.dtype} {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[0] % 2:
        raise PreparedDataError(f"{path}: has {arr.shape[0]} frames; expected a positive even count "
                                "(extract_npy.py L181-186)")
    return arr


def write_video_npy(path: str | os.PathLike, frames: np.ndarray) -> Path:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[0] == 0 or frames.shape[0] % 2:
        raise ValueError(f"frame count must be positive and even (extract_npy.py L181-186), got {frames.shape[0]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, frames, allow_pickle=False)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Npy videos for the model and their meta.jsonl, with lookups by id or path
# ---------------------------------------------------------------------------------------------------------------
def load_npy_video(path: str | os.PathLike) -> np.ndarray:
    """Load one pre-extracted video: uint8 RGB frames [T, H, W, 3] (extract_npy.py L188; E §3.4).

    A `.npz` gives its first array, as VP `_read_video_npy` (L444-550) does. Raises FileNotFoundError / ValueError
    naming the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file; {_PREPARE_HINT}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable .npy/.npz array ({e})") from e
    if isinstance(arr, np.lib.npyio.NpzFile):
        with arr:
            if not arr.files:
                raise ValueError(f"{path}: empty .npz archive")
            arr = arr[arr.files[0]]
    if arr.dtype != np.uint8:
        raise ValueError(f"{path}: dtype {arr.dtype}, expected uint8 RGB frames [T, H, W, 3]")
    if arr.ndim != 4:
        raise ValueError(f"{path}: shape {arr.shape} has {arr.ndim} dims, expected 4 (T, H, W, 3)")
    if arr.shape[-1] != 3:
        raise ValueError(f"{path}: shape {arr.shape} has {arr.shape[-1]} channels in the last axis, expected 3 (RGB)")
    if arr.size == 0:
        raise ValueError(f"{path}: empty video, shape {arr.shape}")
    return arr


# keys whose value is the video file (VM `_extract_candidate_paths`)
_META_PATH_KEYS = ("npy_path", "output_npy_path", "output_path", "path", "video_path", "video")


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


class VideoMeta(dict):
    """`video_id -> meta.jsonl row`, plus `lookup()` by id, path, basename or stem (VM `load_video_meta_index`,
    `resolve_video_meta_for_video_path` L193-220; E §3.4).

    The original indexes each row under the absolute path, basename and stem of its npy path so that meta files
    written on another machine (stale absolute paths) still match (E §3.4 last bullet); `lookup` does the same.
    """

    def __init__(self, source: str):
        super().__init__()
        self.source = source
        self._by_path: dict[str, dict] = {}
        self._by_basename: dict[str, dict] = {}
        self._by_stem: dict[str, dict] = {}

    def _add(self, video_id: str, row: dict, paths: list[str]) -> None:
        self[video_id] = row
        for p in paths:
            ap = os.path.normpath(os.path.abspath(p))
            self._by_path[ap] = row
            self._by_basename[os.path.basename(ap)] = row
            self._by_stem[_stem(ap)] = row

    def lookup(self, video: str | os.PathLike) -> dict | None:
        """The row of a video given by id or by (any) path of its npy file; None if unknown.

        Order: video id, absolute path, basename, stem (VM resolve_video_meta_for_video_path L193-220; the GRPO
        loader tries the id first, generate_match_grounding.py `_resolve_video_meta`).
        """
        key = os.fspath(video)
        if key in self:
            return self[key]
        ap = os.path.normpath(os.path.abspath(key))
        for index, k in ((self._by_path, ap), (self._by_basename, os.path.basename(ap)), (self._by_stem, _stem(ap))):
            if k in index:
                return index[k]
        return None


def read_video_meta(meta_jsonl_path: str | os.PathLike) -> VideoMeta:
    """Read `video_npy_with_meta/meta.jsonl` (extract_npy.py L201-218; S §6.1): `{video_id: row}` with lookups.

    Blank lines are skipped; a line that is not a JSON object raises ValueError naming `file:line` (the original
    skips such lines silently, VM `_iter_jsonl`). A row without `video_id` is keyed by the stem of its npy path.
    """
    path = Path(meta_jsonl_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such meta.jsonl; {_PREPARE_HINT}")
    meta = VideoMeta(str(path))
    for lineno, row in iter_jsonl(path, "video_npy_meta"):
        paths = [str(row[k]).strip() for k in _META_PATH_KEYS if isinstance(row.get(k), str) and str(row[k]).strip()]
        video_id = str(row.get("video_id", "")).strip() or (_stem(paths[0]) if paths else "")
        if not video_id:
            raise ValueError(f"{path}:{lineno}: row has neither `video_id` nor an npy path "
                             f"({', '.join(_META_PATH_KEYS)})")
        meta._add(video_id, row, paths)
    return meta


__all__ = [
    "GRPO_STATS_KEYS", "GRPO_STATS_OPTIONAL_KEYS", "SFT_REASONING_REQUIRED", "VideoMeta", "build_faiss_index",
    "id_map_from_docid2row", "index_video_npy_meta", "iter_jsonl", "l2_normalize_rows", "load_npy_video",
    "read_docid2row", "read_embeddings", "read_faiss_index", "read_grpo_rows", "read_grpo_stats",
    "read_hard_negatives", "read_id_map", "read_json", "read_query_meta", "read_raw_annotation", "read_sft_items",
    "read_sft_reasoning", "read_video_embed_meta", "read_video_meta", "read_video_npy", "read_video_npy_meta",
    "write_docid2row", "write_embeddings", "write_faiss_index", "write_grpo_rows", "write_grpo_stats",
    "write_hard_negatives", "write_id_map", "write_json", "write_jsonl", "write_query_meta", "write_raw_annotation",
    "write_sft_items", "write_sft_reasoning", "write_video_embed_meta", "write_video_npy", "write_video_npy_meta",
]
