"""Parsing of the policy's completions: answer and time span (the eval's rules and the reward's rules), format
checks, completion clean-up, and `<REFINE>` positions in generated token ids. Pure Python + numpy.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from vsr1_jax.processing.prompts import MATCHED, NOT_MATCHED, UNKNOWN

# --------------------------------------------------------------------------------------------------------------
# Completion parsing
# --------------------------------------------------------------------------------------------------------------

def _blocks(tag: str, text: str, flags: int = re.DOTALL) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags)


_EVAL_MATCHED = {"matched", "match"}
_EVAL_NOT_MATCHED = {"not_matched", "notmatch", "not-matched", "mismatch"}


def parse_answer_eval(text: str) -> str:
    """Evaluation answer from the FIRST `<answer>...</answer>` (EVAL L870-879, eval_and_data.md §1.1).

    Content stripped, lower-cased, spaces -> `_`; `matched`/`match` -> "matched",
    `not_matched`/`notmatch`/`not-matched`/`mismatch` -> "not_matched", anything else (or no tag) -> "unknown".
    Tags match case-insensitively.
    """
    blocks = _blocks("answer", text, re.DOTALL | re.IGNORECASE)
    if not blocks:
        return UNKNOWN
    answer = blocks[0].strip().lower().replace(" ", "_")
    if answer in _EVAL_MATCHED:
        return MATCHED
    if answer in _EVAL_NOT_MATCHED:
        return NOT_MATCHED
    return UNKNOWN


_FLOAT = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def _first_float(text: str) -> float | None:
    match = _FLOAT.search(text.replace(",", ""))
    return float(match.group(0)) if match else None


def parse_span_eval(text: str, duration: float | None = None) -> tuple[float, float] | None:
    """Evaluation span from the FIRST `<start>` and `<end>` (EVAL L900-915, eval_and_data.md §1.1).

    First float in each tag, commas ignored (`1,234.5` -> 1234.5); both ends clamped to [0, duration] (only to >= 0
    when `duration` is None); swapped when end < start. None when a tag or its number is missing.
    """
    starts = _blocks("start", text, re.DOTALL | re.IGNORECASE)
    ends = _blocks("end", text, re.DOTALL | re.IGNORECASE)
    if not starts or not ends:
        return None
    start, end = _first_float(starts[0]), _first_float(ends[0])
    if start is None or end is None:
        return None
    hi = float("inf") if duration is None else float(duration)
    start, end = min(max(start, 0.0), hi), min(max(end, 0.0), hi)
    if end < start:
        start, end = end, start
    return start, end


_REWARD_MATCHED = {"match", "matched"}
_REWARD_NOT_MATCHED = {"not_match", "not_matched", "notmatch"}


def parse_answer_reward(text: str) -> str | None:
    """Reward-side answer from the LAST `<answer>...</answer>` (TR:421-432, grpo.md §1.1 step 4).

    Stripped, lower-cased, spaces -> `_`; `match`/`matched` -> "matched", `not_match`/`not_matched`/`notmatch` ->
    "not_matched", anything else is returned as normalised (so it never equals a label); None when there is no tag
    (the original returns "" there; both score as a wrong answer). Tags match case-insensitively, like every tag
    pattern of the original (TR:421-432, RW:5-13).
    """
    blocks = _blocks("answer", text, re.DOTALL | re.IGNORECASE) if isinstance(text, str) else []
    if not blocks:
        return None
    answer = blocks[-1].strip().lower().replace(" ", "_")
    if answer in _REWARD_MATCHED:
        return MATCHED
    if answer in _REWARD_NOT_MATCHED:
        return NOT_MATCHED
    return answer


# A time tag is numeric only when its whole content, whitespace aside, is one `[-+]?\d+(\.\d+)?` number
# (`<start>12s</start>`, `<start>.5</start>`, `<start>1,234</start>` are not), tags case-insensitive (RW:8-13).
_REWARD_TIME = {tag: re.compile(rf"<{tag}>\s*([-+]?\d+(?:\.\d+)?)\s*</{tag}>", re.IGNORECASE)
                for tag in ("start", "end")}
_REWARD_TIME_ANY = {tag: re.compile(rf"<{tag}>.*?</{tag}>", re.DOTALL | re.IGNORECASE) for tag in ("start", "end")}


def parse_span_reward(text: str) -> tuple[float, float] | None:
    """Reward-side span: the values of the last numeric `<start>` and the last numeric `<end>` tag (RW:25-39,
    grpo.md §4 r_time_iou).

    The regex runs over the whole text (so `<start><start>5</start>` reads 5); a tag with anything besides one
    number is skipped; None when either side has no numeric tag or its last value overflows to inf. No commas, no
    clamping, no swap (the reward scores end <= start as 0).
    """
    if not isinstance(text, str):
        return None
    starts, ends = _REWARD_TIME["start"].findall(text), _REWARD_TIME["end"].findall(text)
    if not starts or not ends:
        return None
    start, end = float(starts[-1]), float(ends[-1])
    if not (np.isfinite(start) and np.isfinite(end)):
        return None
    return start, end


def has_time_tags(text: str) -> bool:
    """A `<start>...</start>` and an `<end>...</end>` pair are both present, any content, any tag case (RW:42-45)."""
    if not isinstance(text, str):
        return False
    return bool(_REWARD_TIME_ANY["start"].search(text)) and bool(_REWARD_TIME_ANY["end"].search(text))


def has_think(text: str) -> bool:
    """The last `<think>...</think>` block (case-insensitive) has non-blank content (RW:64-79)."""
    if not isinstance(text, str):
        return False
    blocks = _blocks("think", text, re.DOTALL | re.IGNORECASE)
    return bool(blocks) and bool(blocks[-1].strip())


def search_query(text: str) -> str:
    """The search query of a message as the original reads it (TR:408-418): the stripped content of the LAST
    `<search>...</search>` block (tags any case; "" when that block is blank, even if an earlier one is not); with
    no closed block, the stripped text after the last `<search>`; "" when there is none."""
    if not isinstance(text, str) or not text:
        return ""
    hits = re.findall(r"<search>(.*?)</search>", text, re.IGNORECASE | re.DOTALL)
    if hits:
        return hits[-1].strip()
    start = text.lower().rfind("<search>")
    return text[start + len("<search>"):].strip() if start >= 0 else ""


def is_pure_search_call(text: str) -> bool:
    """A message that is a search call with no answer: it has a search query (`search_query`) and no non-empty
    `<answer>` (TR:4566: `_extract_search_query(content) and not _extract_answer_tag(content)`; an empty answer
    tag counts as none there, as it normalises to "")."""
    return bool(search_query(text)) and not parse_answer_reward(text)


_STOP_STRINGS = ("<|im_end|>", "<|endoftext|>")
# The original's placeholder pattern (TR:145-148): <|video_pad|>, <|image_pad|>, <|vision_start|>, <|vision_end|>,
# <|video|>, <|video_N|>, <|image|>, <|image_N|>, and the bare tags <video>, </video>, <video_N>, </video_N>, <image>,
# </image>, <image_N>, </image_N>. <|vision_pad|> is not in it (kept); NUL characters are dropped too (TR:164).
_MULTIMODAL_PATTERN = re.compile(
    r"<\|(?:video_pad|image_pad|video(?:_\d+)?|image(?:_\d+)?|vision_start|vision_end)\|>"
    r"|</?(?:video(?:_\d+)?|image(?:_\d+)?)>")


def sanitize_completion(text: str, stop_strings: Sequence[str] = _STOP_STRINGS) -> str:
    """Decoded completion -> answer text, as the original's `_sanitize_generated_text` (TR:151-166): cut at the
    first stop token (each stop string in turn, the earliest wins), remove the multimodal placeholders of
    `_MULTIMODAL_PATTERN` and NUL characters, strip whitespace. Not a string -> ""."""
    if not isinstance(text, str):
        return ""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    text = _MULTIMODAL_PATTERN.sub("", text[:cut])
    return text.replace("\x00", "").strip()


# --------------------------------------------------------------------------------------------------------------
# <REFINE> detection on token ids
# --------------------------------------------------------------------------------------------------------------

def _generated_end(ids: np.ndarray, gen_start: int, length: int | None, stop_ids: Sequence[int]) -> int:
    end = ids.shape[0] if length is None else min(int(length), ids.shape[0])
    if stop_ids:
        stops = np.flatnonzero(np.isin(ids[gen_start:end], np.asarray(stop_ids)))
        if stops.size:
            end = gen_start + int(stops[0])
    return end


def refine_positions(ids: Any, refine_id: int, gen_start: int, *, length: int | None = None,
                     stop_ids: Sequence[int] = ()) -> np.ndarray:
    """Positions of `refine_id` in the generated span of one sequence (prompt + completion ids).

    Only positions >= `gen_start` count: the system prompt itself holds `<REFINE>` 4 times, and the original's
    padded-coordinate test picked those up (grpo.md §3.5 Quirk B); the port looks in the generated span only
    (README decision 5; EVAL L1134-1156). `length` = valid length of `ids` (padding after it is ignored);
    `stop_ids` (e.g. `SpecialIds.eos_ids`) end the span at the first stop token after `gen_start`.
    """
    ids = np.asarray(ids).reshape(-1)
    if not 0 <= gen_start <= ids.shape[0]:
        raise ValueError(f"gen_start {gen_start} outside [0, {ids.shape[0]}]")
    end = _generated_end(ids, gen_start, length, stop_ids)
    return gen_start + np.flatnonzero(ids[gen_start:end] == refine_id)


def has_refine(ids: Any, refine_id: int, gen_start: int, *, length: int | None = None,
               stop_ids: Sequence[int] = ()) -> bool:
    """True if the generated span holds `<REFINE>` (the sampled ids are checked, TR:4298-4308)."""
    return refine_positions(ids, refine_id, gen_start, length=length, stop_ids=stop_ids).size > 0


def last_refine_position(ids: Any, refine_id: int, gen_start: int, *, length: int | None = None,
                         stop_ids: Sequence[int] = ()) -> int | None:
    """Position of the last generated `<REFINE>` (the SQR readout point, sqr_and_sft.md §2.2), or None."""
    pos = refine_positions(ids, refine_id, gen_start, length=length, stop_ids=stop_ids)
    return int(pos[-1]) if pos.size else None


def last_refine_positions(ids: Any, refine_id: int, gen_start: Any, *, lengths: Any = None,
                          stop_ids: Sequence[int] = ()) -> np.ndarray:
    """Batched `last_refine_position` over rows of `ids` [B, L]: int32 [B], -1 where a row has none.

    `gen_start` and `lengths` are scalars or [B]; array ops only, so the same logic ports to jnp unchanged.
    """
    ids = np.asarray(ids)
    b, n = ids.shape
    pos = np.arange(n)[None, :]
    start = np.broadcast_to(np.asarray(gen_start), (b,))[:, None]
    end = np.full((b, 1), n) if lengths is None else np.broadcast_to(np.asarray(lengths), (b,))[:, None]
    valid = (pos >= start) & (pos < end)
    if stop_ids:
        is_stop = np.isin(ids, np.asarray(stop_ids)) & valid
        first_stop = np.where(is_stop.any(1), is_stop.argmax(1), n)[:, None]
        valid &= pos < first_stop
    hit = (ids == refine_id) & valid
    last = n - 1 - np.argmax(hit[:, ::-1], axis=1)
    return np.where(hit.any(1), last, -1).astype(np.int32)


__all__ = [
    "has_refine", "has_think", "has_time_tags", "last_refine_position", "last_refine_positions", "parse_answer_eval",
    "is_pure_search_call", "parse_answer_reward", "parse_span_eval", "parse_span_reward", "refine_positions",
    "sanitize_completion", "search_query",
]
