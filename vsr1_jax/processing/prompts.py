"""Prompt texts and chat-message builders of VideoSearch-R1: system prompts, user/assistant turns, the SFT target
and the query embedder's messages. Pure Python (no JAX, no tokenizer); rendering and encoding live in chat.py.

Wording. The three system prompts are the original's text verbatim (mlvlab/VideoSearch-R1 at 8903eb8, files and
lines cited at each constant), with the refine token as the `{refine}` field, so `*_system_prompt()` returns the
original string exactly; `_format_seconds`, the user turn and the SFT assistant target follow
convert_match_grounding_to_oneturn.py as well.
"""
from __future__ import annotations

import unicodedata
from typing import Any

from vsr1_jax.processing.special_tokens import REFINE_TOKEN

# --------------------------------------------------------------------------------------------------------------
# System prompts: the original's text verbatim. `{refine}` is the refine token (the original hard-codes "<REFINE>"
# in the SFT text and formats `{refine_suffix}` into the eval/GRPO text).
# --------------------------------------------------------------------------------------------------------------

# SFT data: preprocess/dataset_generation/convert_match_grounding_to_oneturn.py L11-23 (`SYSTEM_PROMPT`). The GRPO
# data builder's `problem` prefix is the same text (build_verified_search_minimal_top1.py L20-32,
# `SFT_EVAL_REFINE_SYSTEM_PROMPT`). Five refine tokens, "special token <REFINE>" (singular).
SFT_SYSTEM_PROMPT_TEMPLATE = (
    "You are a video retrieval assistant. Your task is to analyze a retrieved video against the user query. "
    "Inside <think>...</think>, perform a step by step comparison between the query requirements and the visible "
    "evidence in the video. "
    "Identify whether a scene corresponding to the query appears in the video and determine the exact time span "
    "where it occurs. "
    "If a scene corresponding to the query appears in the video, output strictly in the following format: "
    "<answer>matched</answer> <start>START_TIME_IN_SECONDS</start> <end>END_TIME_IN_SECONDS</end> {refine}. "
    "Even if matched, you must still append the special token {refine} at the very end to allow further latent "
    "refinement. "
    "If no scene corresponding to the query appears in the video, output strictly: "
    "<answer>not_matched</answer> {refine}. "
    "In this case, the {refine} token is required to initiate a latent query update. "
    "You must always append the special token {refine} at the very end of the output. "
    "Do not invent details beyond what is visible. Be concise inside <think>. "
    "Do not output anything outside the specified tags."
)

# Evaluation: scripts/internal/stage1/eval_verified_test_rerank_temporal_grounding.py L63-75
# (`SYSTEM_PROMPT_TEMPLATE`, formatted with refine_suffix=<REFINE> by `_make_system_prompt`). Differs from the SFT
# text in "special token(s)" and in "the special token(s) are required" (no token there): four refine tokens.
EVAL_SYSTEM_PROMPT_TEMPLATE = (
    "You are a video retrieval assistant. Your task is to analyze a retrieved video against the user query. "
    "Inside <think>...</think>, perform a step by step comparison between the query requirements and the visible "
    "evidence in the video. Identify whether a scene corresponding to the query appears in the video and determine "
    "the exact time span where it occurs. If a scene corresponding to the query appears in the video, output "
    "strictly in the following format: <answer>matched</answer> <start>START_TIME_IN_SECONDS</start> "
    "<end>END_TIME_IN_SECONDS</end> {refine}. Even if matched, you must still append the special token(s) "
    "{refine} at the very end to allow further latent refinement. If no scene corresponding to the query "
    "appears in the video, output strictly: <answer>not_matched</answer> {refine}. In this case, the "
    "special token(s) are required to initiate a latent query update. You must always append the special token(s) "
    "{refine} at the very end of the output. Do not invent details beyond what is visible. Be concise inside "
    "<think>. Do not output anything outside the specified tags."
)

# GRPO: videosearch_r1/utils/data_rl.py L59-73 (`SFT_EVAL_REFINE_SYSTEM_PROMPT_TEMPLATE`, used with
# SEARCH_SYSTEM_PROMPT_STYLE=sft_eval and refine_suffix <REFINE>, grpo.md §1.1 step 1). Its literals split
# differently, but the concatenated string is identical to the eval template (tests pin both texts).
GRPO_SYSTEM_PROMPT_TEMPLATE = EVAL_SYSTEM_PROMPT_TEMPLATE


def _fill(template: str, refine_token: str) -> str:
    return template.format(refine=refine_token)


def sft_system_prompt(refine_token: str = REFINE_TOKEN) -> str:
    """The Stage-1 SFT system prompt with `refine_token` substituted."""
    return _fill(SFT_SYSTEM_PROMPT_TEMPLATE, refine_token)


def eval_system_prompt(refine_token: str = REFINE_TOKEN) -> str:
    """The inference/evaluation system prompt with `refine_token` substituted."""
    return _fill(EVAL_SYSTEM_PROMPT_TEMPLATE, refine_token)


def grpo_system_prompt(refine_token: str = REFINE_TOKEN) -> str:
    """The Stage-2 GRPO system prompt with `refine_token` substituted."""
    return _fill(GRPO_SYSTEM_PROMPT_TEMPLATE, refine_token)


# --------------------------------------------------------------------------------------------------------------
# User turns and assistant targets
# --------------------------------------------------------------------------------------------------------------

VIDEO_MARKER = "<video>"  # where the video item goes in a user text (utils/data_sft_share_gpt.py L321-345 splits on it)
# SFT / eval single user turn: convert_match_grounding_to_oneturn.py L228-229; EVAL L957-964.
USER_TURN_TEMPLATE = 'Query: "{query}"\nRetrieved video: ' + VIDEO_MARKER
# GRPO environment feedback, a second user turn: grpo_vllm_trainer_qwen3_vl.py L523-541.
GRPO_INFORMATION_TEMPLATE = "<information>\nRetrieved video: " + VIDEO_MARKER + "\n</information>"

MATCHED = "matched"
NOT_MATCHED = "not_matched"
UNKNOWN = "unknown"

Message = dict[str, Any]


def video_item(**fields: Any) -> dict[str, Any]:
    """A chat content item for a video (extra fields, e.g. the npy path, are carried along and ignored here)."""
    return {"type": "video", **fields}


def split_video_markers(text: str, marker: str = VIDEO_MARKER, **video_fields: Any) -> list[dict[str, Any]]:
    """Turn `"...<video>..."` into chat content items: text pieces and one video item per marker.

    Empty text pieces are dropped (the original's SFT loader does the same split, data_sft_share_gpt.py L321-345).
    """
    items: list[dict[str, Any]] = []
    parts = text.split(marker)
    for i, part in enumerate(parts):
        if part:
            items.append({"type": "text", "text": part})
        if i < len(parts) - 1:
            items.append(video_item(**video_fields))
    return items


def user_turn(query: str, template: str = USER_TURN_TEMPLATE, **video_fields: Any) -> Message:
    """The SFT/eval user message: `Query: "{q}"\\nRetrieved video: ` followed by the video item."""
    return {"role": "user", "content": split_video_markers(template.format(query=query), **video_fields)}


def build_eval_messages(query: str, *, system_prompt: str | None = None, refine_token: str = REFINE_TOKEN,
                        user_template: str = USER_TURN_TEMPLATE, **video_fields: Any) -> list[Message]:
    """`[system, user]` of one inference turn (EVAL L934-966): a fresh single-turn chat, no history."""
    system = eval_system_prompt(refine_token) if system_prompt is None else system_prompt
    return [{"role": "system", "content": system}, user_turn(query, user_template, **video_fields)]


def build_sft_messages(query: str, assistant: str, *, system_prompt: str | None = None,
                       refine_token: str = REFINE_TOKEN, user_template: str = USER_TURN_TEMPLATE,
                       **video_fields: Any) -> list[Message]:
    """`[system, user, assistant]` of one SFT sample (convert_match_grounding_to_oneturn.py L324-344)."""
    system = sft_system_prompt(refine_token) if system_prompt is None else system_prompt
    return [{"role": "system", "content": system}, user_turn(query, user_template, **video_fields),
            {"role": "assistant", "content": assistant}]


def build_grpo_messages(query: str, *, system_prompt: str | None = None, refine_token: str = REFINE_TOKEN,
                        information_template: str = GRPO_INFORMATION_TEMPLATE, **video_fields: Any) -> list[Message]:
    """`[system, user(raw query), user(<information> video </information>)]` of a GRPO rollout (grpo.md §1.1).

    The environment turn sits under a *user* header, as the sampler saw it (the original's scorer swapped it to an
    assistant header, Quirk A in grpo.md §3.5; the port scores the sampled context).
    """
    system = grpo_system_prompt(refine_token) if system_prompt is None else system_prompt
    return [{"role": "system", "content": system},
            {"role": "user", "content": [{"type": "text", "text": query}]},
            {"role": "user", "content": split_video_markers(information_template, **video_fields)}]


def format_seconds(value: float) -> str:
    """Seconds as the SFT targets print them (`_format_seconds`, convert_match_grounding_to_oneturn.py L98-102).

    Within 1e-9 of an integer: `12.0`. Otherwise six decimals with trailing zeros and then a trailing "." stripped:
    `12.5`, `3.141593`, and (the original's quirk, kept) `60` for 59.9999999 and `0` for 1e-7, whose six-decimal
    form is a whole number.
    """
    x = float(value)
    if abs(x - round(x)) < 1e-9:
        return f"{int(round(x))}.0"
    return f"{x:.6f}".rstrip("0").rstrip(".") or "0.0"


# The original's fallbacks when the teacher gave no reasoning (convert_match_grounding_to_oneturn.py L206-225).
DEFAULT_MATCHED_REASONING = "The retrieved video contains the key query-required visual events and timing cues."
DEFAULT_NOT_MATCHED_REASONING = "The retrieved video does not satisfy the query-required visual evidence."


def normalize_reasoning(text: str) -> str:
    """`_normalize_reasoning` (convert_match_grounding_to_oneturn.py L89-95): strip, drop a leading
    "reasoning:" (any case), collapse every whitespace run to one space."""
    text = str(text or "").strip()
    if text.lower().startswith("reasoning:"):
        text = text.split(":", 1)[1].strip()
    return " ".join(text.split())


def assistant_target(answer: str, reasoning: str, start: float | None = None, end: float | None = None, *,
                     refine_token: str = REFINE_TOKEN) -> str:
    """The SFT assistant text (`_build_assistant_content`, convert_match_grounding_to_oneturn.py L206-225).

    matched:     `<think> {reasoning} </think> <answer>matched</answer> <start>{s}</start> <end>{e}</end> <REFINE>`
    not matched: `<think> {reasoning} </think> <answer>not_matched</answer> <REFINE>`
    The reasoning is normalised as the original does (`normalize_reasoning`); empty reasoning becomes the original's
    default sentence for that answer.
    """
    reasoning = normalize_reasoning(reasoning)
    if answer == MATCHED:
        if start is None or end is None:
            raise ValueError("a matched target needs start and end seconds")
        reasoning = reasoning or DEFAULT_MATCHED_REASONING
        return (f"<think> {reasoning} </think> <answer>{MATCHED}</answer> <start>{format_seconds(start)}</start> "
                f"<end>{format_seconds(end)}</end> {refine_token}")
    if answer == NOT_MATCHED:
        reasoning = reasoning or DEFAULT_NOT_MATCHED_REASONING
        return f"<think> {reasoning} </think> <answer>{NOT_MATCHED}</answer> {refine_token}"
    raise ValueError(f"answer must be {MATCHED!r} or {NOT_MATCHED!r}, got {answer!r}")


# --------------------------------------------------------------------------------------------------------------
# Query embedder input
# --------------------------------------------------------------------------------------------------------------

EMBEDDER_INSTRUCTION = "Represent the user's input"  # QUERY_EMBEDDER_INPUT_PREFIX, _dataset_defaults.bash L77-79
EMBEDDER_MAX_LENGTH = 128  # query_embedder_max_length (sft_soft_refine_trainer.py L684-690)
EMBEDDER_EMPTY_QUERY = "NULL"  # qwen3_vl_embedding.py L231-233


def normalize_instruction(instruction: str) -> str:
    """Append "." unless the instruction already ends in punctuation (qwen3_vl_embedding.py L217-228).

    "Punctuation" = any Unicode punctuation category (P*), so `?`, `!` and CJK full stops are kept as they are.
    """
    instruction = instruction.strip()
    if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
        instruction += "."
    return instruction


def embedder_messages(query: str, instruction: str = EMBEDDER_INSTRUCTION) -> list[Message]:
    """`[system: instruction, user: query]` of the query embedder; an empty query becomes "NULL"."""
    if not query.strip():
        query = EMBEDDER_EMPTY_QUERY
    return [{"role": "system", "content": [{"type": "text", "text": normalize_instruction(instruction)}]},
            {"role": "user", "content": [{"type": "text", "text": query}]}]


__all__ = [
    "DEFAULT_MATCHED_REASONING", "DEFAULT_NOT_MATCHED_REASONING", "EMBEDDER_EMPTY_QUERY", "EMBEDDER_INSTRUCTION",
    "EMBEDDER_MAX_LENGTH", "EVAL_SYSTEM_PROMPT_TEMPLATE", "GRPO_INFORMATION_TEMPLATE", "GRPO_SYSTEM_PROMPT_TEMPLATE",
    "MATCHED", "Message", "NOT_MATCHED", "SFT_SYSTEM_PROMPT_TEMPLATE", "UNKNOWN", "USER_TURN_TEMPLATE",
    "VIDEO_MARKER", "assistant_target", "build_eval_messages", "build_grpo_messages", "build_sft_messages",
    "embedder_messages", "eval_system_prompt", "format_seconds", "grpo_system_prompt", "normalize_instruction",
    "normalize_reasoning", "sft_system_prompt", "split_video_markers", "user_turn", "video_item",
]
