"""Readers, writers and cross-file checks for every file of a prepared VideoSearch-R1 dataset.

The formats are the original's (spec: eval_and_data.md §3, grpo.md §5); numpy only, no JAX.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

# Where to point users when a file is missing. vsr1_jax has no builder for the real datasets: the original's
# download script fetches the prepared tree; the synthetic generator writes a complete toy tree in this layout.
BUILD_HINT = ("the original's `bash scripts/download_data.bash` fetches the prepared tree; for a synthetic tree in "
              "this layout: `python -m vsr1_jax.main --config=configs/toy.py` (writes outputs/toy/data)")

SPLITS = ("train", "test")

# The original eval's skip counters, in its order (EVAL L2417-2422; eval_and_data.md §1.3).
EVAL_SKIP_KEYS = ("query_not_found_in_meta", "pos_doc_missing", "video_file_missing", "gt_time_invalid")

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

# Which pipeline step writes each file, for "not found" messages. Step names are the original's
# `preprocess/scripts_<ds>/NN_*.bash` (start_from_scratch.bash L33-46; eval_and_data.md §6).
PRODUCERS = {
    "raw_annotation": "the raw-annotation step (original 01_data_generate: a verbatim copy of the VERIFIED FIG jsonl)",
    "query_embeddings": "the query-embedding step (original 02_embed_queries)",
    "query_meta": "the query-embedding step (original 02_embed_queries)",
    "segment_embeds": "the video-embedding step (original 02_embed_segments)",
    "docid2row": "the video-embedding step (original 02_embed_segments)",
    "video_embed_meta": "the video-embedding step (original 02_embed_segments)",
    "video_npy": "the frame-extraction step (original 04_extract_<split>_npy)",
    "video_npy_meta": "the frame-extraction step (original 04_extract_<split>_npy)",
    "faiss_index": "the index step (original 03_build_index)",
    "id_map": "the index step (original 03_build_index)",
    "hard_negatives": "the hard-negative step (original 08_build_hard_negatives)",
    "sft_oneturn": "the SFT-data step (original 06_convert_to_train_oneturn)",
    "sft_reasoning": "the teacher-reasoning step (original 05_generate_match_grounding)",
    "grpo_rows": "the GRPO-data step (original 09_build_verified_search_minimal_top1)",
    "grpo_stats": "the GRPO-data step (original 09_build_verified_search_minimal_top1)",
}

# Same number pattern as the original eval's `_parse_float` (EVAL FLOAT_RE, L80-ish; used at L900-915).
_FLOAT_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
# Rows whose L2 norm is at or below this are "zero": the original clips the norm at 1e-12 (EVAL `_l2_norm_rows`),
# which silently leaves an all-zero vector that scores 0 against everything.
_ZERO_NORM = 1e-12


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------
class PreparedDataError(ValueError):
    """A prepared-data file exists but its content is wrong (message names the file, and the line when known)."""


class MissingPreparedFileError(FileNotFoundError):
    """A prepared-data file is absent; the message names the file and the step that produces it."""


def _missing(path: Path, kind: str) -> MissingPreparedFileError:
    return MissingPreparedFileError(f"{path} not found: produced by {PRODUCERS[kind]}; {BUILD_HINT}")


def _require(path: Path, kind: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise _missing(path, kind)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------------------
def _check_split(split: str) -> str:
    if split not in ("train", "test", "val"):
        raise ValueError(f"unknown split {split!r}: expected 'train', 'test' (or 'val' for ActivityNet/DiDeMo)")
    return split


@dataclasses.dataclass(frozen=True)
class PreparedPaths:
    """Every path of `<root>/<dataset>/` (README "Prepared Data Folder Layout"; eval_and_data.md §3)."""

    root: Path
    dataset: str

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def from_dataset_dir(cls, dataset_dir: str | os.PathLike) -> "PreparedPaths":
        d = Path(dataset_dir)
        return cls(d.parent, d.name)

    @property
    def dataset_dir(self) -> Path:
        return self.root / self.dataset

    def raw_annotation(self, split: str) -> Path:
        return self.dataset_dir / "raw_annotation" / f"{_check_split(split)}.jsonl"

    def split_dir(self, split: str) -> Path:
        return self.dataset_dir / _check_split(split)

    def query_embeddings(self, split: str) -> Path:
        return self.split_dir(split) / "query_embedding" / f"query_embeddings.{split}.npy"

    def query_meta(self, split: str) -> Path:
        return self.split_dir(split) / "query_embedding" / f"query_meta.{split}.jsonl"

    def segment_embeds(self, split: str) -> Path:
        return self.split_dir(split) / "video_embedding_1fps" / "segment_embeds.npy"

    def docid2row(self, split: str) -> Path:
        return self.split_dir(split) / "video_embedding_1fps" / "docid2row.json"

    def video_embed_meta(self, split: str) -> Path:
        return self.split_dir(split) / "video_embedding_1fps" / "meta.jsonl"

    def video_npy_dir(self, split: str) -> Path:
        return self.split_dir(split) / "video_npy_with_meta"

    def video_npy(self, split: str, video_id: str) -> Path:
        return self.video_npy_dir(split) / f"{video_id}.npy"

    def video_npy_meta(self, split: str) -> Path:
        return self.video_npy_dir(split) / "meta.jsonl"

    def faiss_index(self, split: str) -> Path:
        return self.split_dir(split) / "index" / "index.faiss"

    def id_map(self, split: str) -> Path:
        return self.split_dir(split) / "index" / "id_map.json"

    @property
    def hard_negatives(self) -> Path:
        return self.dataset_dir / "train" / "hard_negatives.json"

    @property
    def sft_oneturn(self) -> Path:
        return self.dataset_dir / "sft_data" / "train_oneturn.json"

    @property
    def sft_reasoning(self) -> Path:
        return self.dataset_dir / "sft_data" / "top1_reasoning_grounding.train.jsonl"

    @property
    def grpo_rows(self) -> Path:
        return self.dataset_dir / "grpo_data" / "train.minimal_top1.jsonl"

    @property
    def grpo_stats(self) -> Path:
        return self.dataset_dir / "grpo_data" / "stats.minimal_top1.json"

    def video_npy_exists(self, split: str, video_id: str) -> bool:
        return self.video_npy(split, video_id).is_file()


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
# Typed rows
# ---------------------------------------------------------------------------------------------------------------
_NUM = (int, float)


def _type_ok(value: Any, types: tuple) -> bool:
    if object in types:  # "any JSON value": the consumer applies the original's own parsing rules
        return True
    if value is None:
        return type(None) in types
    if isinstance(value, bool):  # bool is an int subclass; only accept it where bool is asked for
        return bool in types
    return isinstance(value, tuple(t for t in types if t is not type(None)))


def _fields_from_json(cls, obj: Mapping[str, Any], where: str) -> dict:
    """Check declared field types, collect unknown keys into `extra` (kept so writers round-trip them)."""
    out: dict = {}
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        types, required = f.metadata["types"], f.metadata.get("required", False)
        if f.name not in obj:
            if required:
                raise PreparedDataError(f"{where}: missing required field {f.name!r}")
            continue
        value = obj[f.name]
        if not _type_ok(value, types):
            names = "/".join("null" if t is type(None) else t.__name__ for t in types)
            raise PreparedDataError(
                f"{where}: field {f.name!r} should be {names}, got {type(value).__name__} {value!r:.60}")
        out[f.name] = value
    known = {f.name for f in dataclasses.fields(cls)}
    out["extra"] = {k: v for k, v in obj.items() if k not in known}
    return out


def _fields_to_json(row) -> dict:
    out: dict = {}
    for f in dataclasses.fields(row):
        if f.name == "extra":
            continue
        value = getattr(row, f.name)
        # Optional fields that were absent stay absent; required ones are always written (null included).
        if value is None and not f.metadata.get("required", False):
            continue
        out[f.name] = value.to_json() if hasattr(value, "to_json") else value
    out.update(row.extra)
    return out


def _f(types: tuple, required: bool = False, default: Any = None):
    return dataclasses.field(default=default, metadata={"types": types, "required": required})


def _extra():
    return dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RawAnnotationRow:
    """One VERIFIED FIG row (eval_and_data.md §3.1). Values are kept as stored; `time` may be invalid."""

    video: str | None = _f((str, int, type(None)))
    # Any JSON value: an unparsable `time` is the eval's counted `gt_time_invalid`, not a read error (EVAL L3205-3212).
    time: Any = _f((object,))
    desc_id: int | None = _f((int, str, type(None)))
    duration: float | None = _f((*_NUM, str, type(None)))
    cog_desc: str | None = _f((str, type(None)))
    fig_desc: str | None = _f((str, type(None)))
    fig_desc_score: float | None = _f((*_NUM, type(None)))
    extra: dict = _extra()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "raw annotation row") -> "RawAnnotationRow":
        return cls(**_fields_from_json(cls, obj, where))

    def to_json(self) -> dict:
        return _fields_to_json(self)

    @property
    def query_text(self) -> str:
        """The query the eval looks up: `fig_desc`, stripped (EVAL L3190-3195)."""
        return str(self.fig_desc or "").strip()


@dataclasses.dataclass
class QueryMetaRow:
    """Row i of query_meta.<split>.jsonl ↔ row i of the query embedding matrix (prepare_activitynet_segments.py
    L109-124; embed_queries.py L58-80)."""

    qid: str = _f((str,), required=True)
    query: str = _f((str,), required=True)
    pos_doc_id: str = _f((str,), required=True)
    weight: float | None = _f((*_NUM, type(None)))
    fig_score: float | None = _f((*_NUM, type(None)))
    extra: dict = _extra()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "query meta row") -> "QueryMetaRow":
        return cls(**_fields_from_json(cls, obj, where))

    def to_json(self) -> dict:
        return _fields_to_json(self)


@dataclasses.dataclass
class SftMeta:
    """`meta` of a train_oneturn.json item (convert_match_grounding_to_oneturn.py L333-343)."""

    source: str = _f((str,))
    gold_label: str = _f((str,), required=True)  # "pos" | "neg"
    video_id: str = _f((str,), required=True)  # the top-1 video shown to the policy
    query_pos_video_id: str = _f((str,), required=True)  # the GT video
    pair_id: str | None = _f((str,))
    episode_type: str | None = _f((str,))
    num_negs: int | None = _f((int,))
    top1_video_id: str | None = _f((str,))
    top1_gold_label: str | None = _f((str,))
    extra: dict = _extra()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "sft meta") -> "SftMeta":
        return cls(**_fields_from_json(cls, obj, where))

    def to_json(self) -> dict:
        return _fields_to_json(self)


@dataclasses.dataclass
class SftItem:
    """One element of the train_oneturn.json array (convert_match_grounding_to_oneturn.py L324-344).

    messages = [system, user 'Query: "{q}"\\nRetrieved video: <video>', assistant target]; videos = ["<top1>.npy"].
    """

    qid: str = _f((str,), required=True)
    query: str = _f((str,), required=True)
    messages: list = _f((list,), required=True)
    videos: list = _f((list,), required=True)
    meta: SftMeta = _f((dict,), required=True)
    extra: dict = _extra()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "sft item") -> "SftItem":
        kw = _fields_from_json(cls, obj, where)
        for i, m in enumerate(kw["messages"]):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m):
                raise PreparedDataError(f"{where}: messages[{i}] must be an object with 'role' and 'content'")
        roles = [m["role"] for m in kw["messages"]]
        if roles[-1:] != ["assistant"] or "user" not in roles:
            raise PreparedDataError(f"{where}: messages roles {roles} must contain a user turn and end with assistant")
        if not kw["videos"] or not all(isinstance(v, str) for v in kw["videos"]):
            raise PreparedDataError(f"{where}: 'videos' must be a non-empty list of file names")
        kw["meta"] = SftMeta.from_json(kw["meta"], f"{where} meta")
        return cls(**kw)

    def to_json(self) -> dict:
        return _fields_to_json(self)

    @property
    def video_id(self) -> str:
        """Top-1 video id: `meta.video_id`, else the stem of `videos[0]` (L336, L330)."""
        return self.meta.video_id or Path(self.videos[0]).stem

    def message(self, role: str) -> str:
        for m in self.messages:
            if m["role"] == role:
                return m["content"]
        raise KeyError(role)


@dataclasses.dataclass
class GrpoRow:
    """One train.minimal_top1.jsonl row (build_verified_search_minimal_top1.py L371-394, augmented L405-461).

    GRPO itself reads only query, gt_video, gt_time, retrieved_video and hard_negative_ids (data_rl.py L739-795).
    """

    problem_id: int = _f((int,), required=True)
    qid: str = _f((str,), required=True)
    problem: str = _f((str,), required=True)
    data_type: str = _f((str,), required=True)
    problem_type: str = _f((str,), required=True)
    options: list = _f((list,), required=True)
    solution: str = _f((str,), required=True)
    path: str = _f((str,), required=True)
    data_source: str = _f((str,), required=True)
    query: str = _f((str,), required=True)
    gt_video: str = _f((str,), required=True)
    gt_time: list | None = _f((list, type(None)), required=True)  # [s, e] seconds, or null
    gt_duration: float | None = _f((*_NUM, type(None)), required=True)
    retrieved_video: str = _f((str,), required=True)
    label: str = _f((str,), required=True)  # "matched" | "not_matched"
    hard_negative_ids: list = _f((list,), required=True)
    hard_negative_scores: list = _f((list,), required=True)
    hard_negative_ranks: list = _f((list,), required=True)
    is_augmented: bool = _f((bool,), required=True)
    augmentation_type: str | None = _f((str,))
    source_label: str | None = _f((str,))
    source_retrieved_video: str | None = _f((str,))
    extra: dict = _extra()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "grpo row") -> "GrpoRow":
        kw = _fields_from_json(cls, obj, where)
        if kw["label"] not in ("matched", "not_matched"):
            raise PreparedDataError(f"{where}: label {kw['label']!r} is not 'matched' or 'not_matched'")
        ids, scores, ranks = kw["hard_negative_ids"], kw["hard_negative_scores"], kw["hard_negative_ranks"]
        if not all(isinstance(x, str) for x in ids):
            raise PreparedDataError(f"{where}: hard_negative_ids must be strings")
        if not (len(ids) == len(scores) == len(ranks)):
            raise PreparedDataError(
                f"{where}: hard_negative_ids/scores/ranks lengths differ ({len(ids)}/{len(scores)}/{len(ranks)})")
        gt = kw["gt_time"]
        if gt is not None and not (len(gt) == 2 and all(_type_ok(x, _NUM) for x in gt)):
            raise PreparedDataError(f"{where}: gt_time must be [start, end] numbers or null, got {gt!r}")
        return cls(**kw)

    def to_json(self) -> dict:
        return _fields_to_json(self)


@dataclasses.dataclass
class VideoNpyMeta:
    """One video_npy_with_meta/meta.jsonl row (extract_npy.py L201-218; eval_and_data.md §3.4)."""

    source_video_path: str | None = _f((str, type(None)))
    source_total_frames: int | None = _f((int, type(None)))
    source_duration_sec: float | None = _f((*_NUM, type(None)))
    raw_fps: float | None = _f((*_NUM, type(None)))
    target_sample_fps: float | None = _f((*_NUM, type(None)))
    target_max_frames: int | None = _f((int, type(None)))
    requested_indices_src: list | None = _f((list, type(None)))
    sampled_indices_src: list | None = _f((list, type(None)))
    sampled_timestamps_sec: list | None = _f((list, type(None)))
    sampled_frames_before_even_pad: int | None = _f((int, type(None)))
    even_pad_applied: bool | None = _f((bool, type(None)))
    output_num_frames: int = _f((int,), required=True)
    output_height: int | None = _f((int, type(None)))
    output_width: int | None = _f((int, type(None)))
    output_dtype: str | None = _f((str, type(None)))
    extract_utc: str | None = _f((str, type(None)))
    video_id: str | None = _f((str, type(None)))
    output_npy_path: str | None = _f((str, type(None)))
    extra: dict = _extra()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "video npy meta row") -> "VideoNpyMeta":
        row = cls(**_fields_from_json(cls, obj, where))
        if not row.key:
            raise PreparedDataError(f"{where}: neither 'video_id' nor 'output_npy_path' names the video")
        n = row.output_num_frames
        # extract_npy.py L181-186 duplicates the last frame when the count is odd (Qwen3-VL groups frames in pairs),
        # so an odd count means the file was not produced by that step.
        if n <= 0 or n % 2:
            raise PreparedDataError(
                f"{where}: video {row.key!r} has output_num_frames={n}; expected a positive even count "
                "(extract_npy.py L181-186 pads odd counts by duplicating the last frame)")
        return row

    def to_json(self) -> dict:
        return _fields_to_json(self)

    @property
    def key(self) -> str:
        """video id, falling back to the npy stem (video_metadata.py L193-220 also matches by stem)."""
        if self.video_id:
            return self.video_id
        return Path(self.output_npy_path).stem if self.output_npy_path else ""


@dataclasses.dataclass
class VideoEmbedMeta:
    """One video_embedding_1fps/meta.jsonl row: {doc_id, video_id, video_path, start, end, duration, info{…}}
    (embed_segments.py L237-330; eval_and_data.md §3.5)."""

    doc_id: str = _f((str,), required=True)
    video_id: str | None = _f((str, type(None)))
    video_path: str | None = _f((str, type(None)))
    start: float | None = _f((*_NUM, type(None)))
    end: float | None = _f((*_NUM, type(None)))
    duration: float | None = _f((*_NUM, type(None)))
    info: dict | None = _f((dict, type(None)))
    extra: dict = _extra()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "video embed meta row") -> "VideoEmbedMeta":
        return cls(**_fields_from_json(cls, obj, where))

    def to_json(self) -> dict:
        return _fields_to_json(self)


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
    import faiss  # imported lazily: only index building/reading needs it

    vecs = np.ascontiguousarray(np.asarray(matrix, dtype=np.float32).copy())
    _check_vectors(vecs, "faiss input")
    faiss.normalize_L2(vecs)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    return index


def write_faiss_index(path: str | os.PathLike, matrix_or_index) -> Path:
    import faiss

    index = matrix_or_index if hasattr(matrix_or_index, "ntotal") else build_faiss_index(matrix_or_index)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    return path


def read_faiss_index(path: str | os.PathLike):
    import faiss

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
    """The retrieval dim D is read from the files and must agree (MAIN `_resolve_retrieval_dim` L445-467)."""
    if queries.dim != corpus.dim:
        raise PreparedDataError(f"{where}query embeddings are {queries.dim}-d but video embeddings are "
                                f"{corpus.dim}-d; both must come from the same embedder")
    return corpus.dim


def load_retrieval(paths: PreparedPaths, split: str) -> tuple[Corpus, Queries]:
    corpus, queries = load_corpus(paths, split), load_queries(paths, split)
    check_same_dim(queries, corpus, f"{paths.dataset_dir}/{split}: ")
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
                require_npy: bool = True) -> tuple[list[dict], Counter]:
    """train_oneturn.json → pipeline records + drop counts.

    A record: index (position in the array), qid, query, messages, video_id (top-1 shown), pos_video_id,
    gold_label, pair_id, video_path, hard_negative_ids (from hard_negatives.json; the positive, duplicates and
    unknown ids removed) and, with docid2row, pos_row / video_row.
    Dropped (counted): items whose top-1 npy is missing (`video_file_missing`). Counted, kept: GT not in the
    corpus (`pos_doc_missing`: the InfoNCE term then has no positive, TRN L1336-1344).
    """
    items = read_sft_items(paths.sft_oneturn)
    if docid2row is None and paths.docid2row("train").exists():
        docid2row = read_docid2row(paths.docid2row("train"))
    if hard_negatives is None and paths.hard_negatives.exists():
        hard_negatives = read_hard_negatives(paths.hard_negatives)
    counts: Counter = Counter()
    out = []
    for index, it in enumerate(items):
        vid = it.video_id
        npy = paths.video_npy("train", vid)
        if require_npy and not npy.is_file():
            counts["video_file_missing"] += 1
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
                 hard_negative_k: int = 24, require_npy: bool = True) -> tuple[list[dict], Counter]:
    """train.minimal_top1.jsonl → pipeline records + counts (grpo.md §5; data_rl.py L739-795).

    A record: problem_id, qid, query, gt_video, gt_time float64 [2] (NaN when null), has_gt_time, gt_duration
    (NaN when null), retrieved_video (the bootstrap top-1), label, is_augmented, video_path,
    hard_negative_ids (≤ K, unknown ids removed), and with docid2row gt_row and hard_negative_rows int32 [K]
    (-1 padded) for the retrieval reward (TR:3964-4035).
    Dropped (counted): rows whose retrieved npy is missing (`drop_missing_video_npy`, BV's key). Counted, kept:
    `gt_time_invalid` (reversed/zero-length spans become null: BV `_normalize_time_span` requires end > start) and
    `pos_doc_missing` (the reward then takes the no-refine penalty, TR:3838-3846).
    """
    rows = read_grpo_rows(paths.grpo_rows)
    if docid2row is None and paths.docid2row("train").exists():
        docid2row = read_docid2row(paths.docid2row("train"))
    counts: Counter = Counter()
    out = []
    for r in rows:
        npy = paths.video_npy("train", r.retrieved_video)
        if require_npy and not npy.is_file():
            counts["drop_missing_video_npy"] += 1
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
