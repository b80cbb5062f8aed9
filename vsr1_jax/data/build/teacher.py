"""Step 05_generate_match_grounding: the teacher's prompts for a top-1 pool row and the parsing of its answer into
the reasoning row, as preprocess/dataset_generation/generate_match_grounding.py (GM below) does. The model call is
not here: a teacher is any callable `(requests) -> [(text, finish_reason)]` (vsr1_jax/prepare.py wraps the
project's sampler around a Qwen3-VL checkpoint)."""
from __future__ import annotations

import re
from typing import Any, Mapping, Protocol, Sequence

from vsr1_jax.processing import prompts as P

# GM L31-63, verbatim.
POS_SYSTEM_PROMPT = (
    "You are helping create supervision data for correctly retrieved video-query pairs.\n\n"
    "Context:\n"
    "- The retrieved top-1 video is the correct match for the query (it matches ground truth).\n"
    "- You may be given reference temporal information (ground-truth start/end in seconds).\n\n"
    "Tasks:\n"
    "1. Explain briefly why the retrieved video matches the query.\n\n"
    "Rules:\n"
    "- Ground your explanation in query-required visual evidence.\n"
    "- Include temporal cues in the reasoning (what starts/finishes around the grounded span).\n"
    "- If reference temporal span is provided, keep your final span consistent with it.\n"
    "- If reference temporal span is provided, explicitly justify both boundaries:\n"
    "  why the start should not be earlier (no required event before start, first required event begins at start),\n"
    "  and why the end should not be later (required event is no longer present after end).\n"
    "- Keep reasoning concise and factual (one to three sentences). Reasoning should be concise, but also needs to "
    "contain all necessary information to decide answer\n\n"
    "Output format:\n"
    "Reasoning: <concise sentences with temporal rationale>\n"
)

NEG_SYSTEM_PROMPT = (
    "You are helping create supervision data for wrongly retrieved video-query pairs.\n\n"
    "Task:\n"
    "Explain why the retrieved video does NOT satisfy the query.\n\n"
    "Rules:\n"
    "- Base your reasoning on query-required elements and what is visibly retrieved in video.\n"
    "- Explain why this is still not the correct match.\n"
    "- Explain what is missing in videos but query has.\n"
    "- You may briefly mention confusing overlap, but end with the key mismatch.\n"
    "- Include concise grounding evidence in the reasoning.\n"
    "- Keep the reasoning concise (one or two sentences) and avoid hallucination. Reasoning should be concise, but "
    "also needs to contain all necessary information to decide answer\n\n"
    "Output format:\n"
    "Reasoning: <concise sentences with temporal rationale>\n"
)

_NOT_MATCH_RE = re.compile(r"\b(?:not match|no match|non match|notmatching|unmatch|unmatched|mismatch|"
                           r"does not match|doesn't match|do not match|fails to match)\b")
_MATCH_RE = re.compile(r"\bmatch(?:es|ed|ing)?\b")


class Teacher(Protocol):
    """requests: dicts with `messages` (system + user text + a video item), `frames` (uint8 [T, H, W, 3]), `meta`
    (the npy meta.jsonl row: raw fps and source indices for real-second timestamps) and `index` (the row's pool
    position, a stable seed). Returns one (text, finish_reason, error) per request: finish_reason "stop" or
    "length", error None or a message (the row is then kept with model_error set, as GM does)."""

    def __call__(self, requests: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str | None]]: ...


def gold_label(row: Mapping[str, Any]) -> str:
    """GM `_row_gold_label_norm`: "match" | "not_match" | ""."""
    g = str(row.get("gold_label", "")).strip().lower()
    if g in {"match", "pos", "positive"}:
        return "match"
    if g in {"not_match", "neg", "negative", "no_match"}:
        return "not_match"
    top1, pos = str(row.get("top1_doc_id", "")).strip(), str(row.get("query_pos_doc_id", "")).strip()
    if top1 and pos:
        return "match" if top1 == pos else "not_match"
    return ""


def system_prompt(row: Mapping[str, Any]) -> str:
    return POS_SYSTEM_PROMPT if gold_label(row) == "match" else NEG_SYSTEM_PROMPT


def user_text(row: Mapping[str, Any]) -> str:
    """GM `_build_user_text`: the quoted query, plus the GT span for a match (values printed as Python prints
    them, e.g. `start=11.6, end=17.7`)."""
    lines = [f'Query: "{str(row.get("query", "")).strip()}"']
    s, e = row.get("gt_start"), row.get("gt_end")
    if gold_label(row) == "match" and (s is not None or e is not None):
        lines.append(f"Ground-truth segment for query: start={s}, end={e}")
    return "\n".join(lines)


def messages(row: Mapping[str, Any], **video_fields: Any) -> list[dict]:
    """GM `_build_messages` with use_video: [system, user(text, video)]; the text comes before the video."""
    return [{"role": "system", "content": system_prompt(row)},
            {"role": "user", "content": [{"type": "text", "text": user_text(row)}, P.video_item(**video_fields)]}]


def split_think(text: str) -> tuple[str, str]:
    """GM `_split_think`: (think, rest) around the first `</think>`."""
    if "</think>" not in text:
        return "", text.strip()
    before, after = text.split("</think>", 1)
    return before.replace("<think>", "").strip(), after.strip()


def tagged_line(text: str, tag: str) -> str:
    """GM `_extract_tagged_line`: the rest of the first line starting with `<tag>:` (any case)."""
    tag = tag.strip().lower()
    for line in (text or "").splitlines():
        line = line.strip()
        if line and line.lower().startswith(f"{tag}:"):
            return line.split(":", 1)[1].strip()
    return ""


def normalize_label(text: str) -> str:
    """GM `_normalize_label`: label-like patterns only ("not match", "mismatch", ... before "match")."""
    t = str(text or "").strip().lower()
    if not t:
        return ""
    norm = re.sub(r"[_\-\s]+", " ", t)
    if _NOT_MATCH_RE.search(norm):
        return "not_match"
    if _MATCH_RE.search(norm):
        return "match"
    return ""


def parse_range(text: str) -> tuple[float | None, float | None]:
    """GM `_parse_temporal_range`: `a - b`, `a, b`, `a ~ b` or `[a, b]`."""
    if not text:
        return None, None
    m = re.search(r"(-?\d+(?:\.\d+)?)\s*[,~-]\s*(-?\d+(?:\.\d+)?)", text) or \
        re.search(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]", text)
    if not m:
        return None, None
    return float(m.group(1)), float(m.group(2))


def parse_response(raw_text: str) -> tuple[str, str, str, float | None, float | None, bool]:
    """GM `_parse_response`: (label, reasoning, temporal text, start, end, parsed_ok)."""
    _, body = split_think(raw_text)
    content = body if body else raw_text
    label = normalize_label(tagged_line(content, "Label"))
    reasoning = tagged_line(content, "Reasoning")
    temporal = tagged_line(content, "Temporal Grounding")
    if not label:
        compact = content.strip()
        if compact and len(compact) <= 32:
            label = normalize_label(compact)
    reasoning = reasoning or content.strip()
    temporal = temporal or "N/A"
    start, end = parse_range(temporal)
    return label, reasoning, temporal, start, end, bool(reasoning)


def output_row(row: Mapping[str, Any], text: str, err: str | None, finish_reason: str | None) -> dict[str, Any]:
    """GM `_build_output_row` (L561-589): the pool row plus the model_* fields."""
    think, body = split_think(text)
    label, reasoning, temporal, start, end, ok = parse_response(body if body else text)
    out = dict(row)
    gold = gold_label(out)
    label = label or gold
    out.update(model_label=label, model_reasoning=reasoning, model_temporal_grounding=temporal,
               model_temporal_start=start, model_temporal_end=end, model_think=think,
               model_finish_reason=finish_reason or "", model_error=err or "", parsed_ok=bool(ok),
               model_gold_consistent=bool(gold and label and gold == label))
    return out


__all__ = [
    "NEG_SYSTEM_PROMPT", "POS_SYSTEM_PROMPT", "Teacher", "gold_label", "messages", "normalize_label",
    "output_row", "parse_range", "parse_response", "split_think", "system_prompt", "tagged_line", "user_text",
]
