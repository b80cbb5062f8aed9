"""Typed rows of the prepared JSON/JSONL files (raw annotation, query meta, SFT items, GRPO rows, video meta),
checked field by field on read and written back with unknown keys kept (spec: eval_and_data.md §3, grpo.md §5).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from vsr1_jax.data.paths import PreparedDataError

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


__all__ = [
    "GrpoRow", "QueryMetaRow", "RawAnnotationRow", "SftItem", "SftMeta", "VideoEmbedMeta", "VideoNpyMeta",
]
