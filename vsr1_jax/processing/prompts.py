"""Prompts, Qwen chat rendering, video placeholder expansion, prompt encoding and answer parsing of VideoSearch-R1.

Pure Python + numpy (no JAX): everything here runs host-side in the data pipeline and the agent loop.

Wording. The three system prompts are the original's text verbatim (mlvlab/VideoSearch-R1 at 8903eb8, files and
lines cited at each constant), with the refine token as the `{refine}` field, so `*_system_prompt()` returns the
original string exactly; `_format_seconds`, the user turn and the SFT assistant target follow
convert_match_grounding_to_oneturn.py as well.
"""
from __future__ import annotations

import bisect
import dataclasses
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vsr1_jax.processing import video as _video
from vsr1_jax.processing.tokenizer import (
    IM_END,
    IM_START,
    IMAGE_PAD,
    REFINE_TOKEN,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    SpecialIds,
    special_ids,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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
# Qwen3-VL chat format
# --------------------------------------------------------------------------------------------------------------
# A piece is (kind, value, in_assistant): kind "text" (a string), "special" (one control token string),
# "video"/"image" (value = running index of that item). `in_assistant` marks the SFT loss region.
_Piece = tuple[str, Any, bool]


def _is_image(item: Mapping[str, Any]) -> bool:
    return item.get("type") == "image" or "image" in item or "image_url" in item


def _is_video(item: Mapping[str, Any]) -> bool:
    return item.get("type") == "video" or "video" in item


def _text_only(content: str | Sequence[Mapping[str, Any]]) -> str:
    # system/assistant content: the official template keeps only the items with a "text" key
    if isinstance(content, str):
        return content
    return "".join(item["text"] for item in content if "text" in item)


def _chat_pieces(messages: Sequence[Message], add_generation_prompt: bool, add_vision_id: bool) -> Iterator[_Piece]:
    """The official Qwen3-VL Instruct chat template (tokenizer.QWEN3_VL_CHAT_TEMPLATE) as a stream of pieces.

    Only roles system (first message only), user and assistant are accepted; the official template silently drops
    a later system message, which would hide a bug here, so it raises instead. No `<think>` is injected (Qwen3-VL
    Instruct's template has none).
    """
    n_images = n_videos = 0
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == "system":
            if i != 0:
                raise ValueError(f"a system message must come first (message {i})")
            yield ("special", IM_START, False)
            yield ("text", "system\n" + _text_only(content), False)
            yield ("special", IM_END, False)
            yield ("text", "\n", False)
        elif role == "user":
            yield ("special", IM_START, False)
            yield ("text", "user\n", False)
            items = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for item in items:
                if _is_image(item):
                    n_images += 1
                    if add_vision_id:
                        yield ("text", f"Picture {n_images}: ", False)
                    yield ("image", n_images - 1, False)
                elif _is_video(item):
                    n_videos += 1
                    if add_vision_id:
                        yield ("text", f"Video {n_videos}: ", False)
                    yield ("video", n_videos - 1, False)
                elif "text" in item:
                    yield ("text", item["text"], False)
            yield ("special", IM_END, False)
            yield ("text", "\n", False)
        elif role == "assistant":
            # SFT loss (LOSS_TYPE=all_assistant, sft_share_gpt_trainer.py L147-182): every token after
            # `<|im_start|>assistant\n` up to the next role header, so `<|im_end|>` and the trailing `\n` count.
            yield ("special", IM_START, False)
            yield ("text", "assistant\n", False)
            yield ("text", _text_only(content), True)
            yield ("special", IM_END, True)
            yield ("text", "\n", True)
        else:
            raise ValueError(f"unsupported role {role!r} (message {i}); expected system, user or assistant")
    if add_generation_prompt:
        yield ("special", IM_START, False)
        yield ("text", "assistant\n", False)


def render_chat(messages: Sequence[Message], *, add_generation_prompt: bool = False,
                add_vision_id: bool = False) -> str:
    """Render `messages` exactly as the official Qwen3-VL chat template does (before placeholder expansion).

    A video item renders as `<|vision_start|><|video_pad|><|vision_end|>`, an image as the image_pad triple.
    """
    out = []
    for kind, value, _ in _chat_pieces(messages, add_generation_prompt, add_vision_id):
        if kind in ("text", "special"):
            out.append(value)
        elif kind == "video":
            out.append(VISION_START + VIDEO_PAD + VISION_END)
        else:
            out.append(VISION_START + IMAGE_PAD + VISION_END)
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------
# Video placeholders and timestamps
# --------------------------------------------------------------------------------------------------------------

# One implementation of HF's `_calculate_timestamps` lives in processing/video.py; re-exported here for callers
# that build prompts from grids.
group_timestamps = _video.group_timestamps


def timestamps_from_seconds(seconds: Sequence[float], *, temporal_patch_size: int = 2) -> list[float]:
    """Per group timestamps from true frame times (meta.jsonl `sampled_timestamps_sec`, extract_npy.py L201-218).

    The option beside the default index convention (README decision 4). An odd list is padded by repeating the
    last time, as the npy writer duplicated the last frame.
    """
    return _video.group_timestamps(len(seconds), fps=1.0, frame_indices=seconds,
                                   temporal_patch_size=temporal_patch_size)


def _as_grids(video_grid_thw: Any) -> list[tuple[int, int, int]]:
    if video_grid_thw is None:
        return []
    grids = np.asarray(video_grid_thw, dtype=np.int64).reshape(-1, 3)
    return [tuple(int(x) for x in g) for g in grids]


def video_token_count(grid_thw: Sequence[int], merge_size: int = 2) -> int:
    """Number of `<|video_pad|>` tokens of one video: t*h*w / merge_size**2 (grid in patches)."""
    t, h, w = (int(x) for x in grid_thw)
    if (h * w) % (merge_size * merge_size):
        raise ValueError(f"grid {t, h, w}: h*w is not a multiple of merge_size**2={merge_size * merge_size}")
    return t * h * w // (merge_size * merge_size)


def _video_timestamps(grids: list[tuple[int, int, int]], timestamps: Any) -> list[list[float]]:
    if timestamps is None:
        # the default convention: 2 frames per temporal group, fps 1, indices 0..2t-1
        return [group_timestamps(2 * t) for t, _, _ in grids]
    if len(timestamps) != len(grids):
        raise ValueError(f"{len(timestamps)} timestamp lists for {len(grids)} videos")
    out = []
    for (t, _, _), ts in zip(grids, timestamps):
        ts = [float(x) for x in ts]
        if len(ts) != t:
            raise ValueError(f"video with {t} temporal groups got {len(ts)} timestamps (one per group)")
        out.append(ts)
    return out


def _video_expansion(grid: tuple[int, int, int], ts: list[float], merge_size: int,
                     outer_vision_tokens: bool) -> Iterator[_Piece]:
    t, h, w = grid
    per_group = video_token_count((1, h, w), merge_size)
    if outer_vision_tokens:
        yield ("special", VISION_START, False)
    for g in range(t):
        # HF processing_qwen3_vl.replace_video_token: f"<{t:.1f} seconds>" then the per-frame vision block
        yield ("text", f"<{ts[g]:.1f} seconds>", False)
        yield ("special", VISION_START, False)
        yield ("pad", per_group, False)
        yield ("special", VISION_END, False)
    if outer_vision_tokens:
        yield ("special", VISION_END, False)


def _expanded_pieces(messages: Sequence[Message], video_grid_thw: Any, timestamps: Any, add_generation_prompt: bool,
                     outer_vision_tokens: bool, merge_size: int, add_vision_id: bool) -> Iterator[_Piece]:
    grids = _as_grids(video_grid_thw)
    stamps = _video_timestamps(grids, timestamps)
    seen = 0
    for kind, value, flag in _chat_pieces(messages, add_generation_prompt, add_vision_id):
        if kind == "video":
            if value >= len(grids):
                raise ValueError(f"the messages hold more videos than the {len(grids)} video_grid_thw rows")
            seen += 1
            yield from _video_expansion(grids[value], stamps[value], merge_size, outer_vision_tokens)
        elif kind == "image":
            raise ValueError("image items are not supported (VideoSearch-R1 prompts carry videos only)")
        else:
            yield (kind, value, flag)
    if seen != len(grids):
        raise ValueError(f"{len(grids)} video_grid_thw rows but {seen} video items in the messages")


def render_prompt_text(messages: Sequence[Message], *, video_grid_thw: Any = None, timestamps: Any = None,
                       add_generation_prompt: bool = True, outer_vision_tokens: bool = False, merge_size: int = 2,
                       add_vision_id: bool = False) -> str:
    """The chat text after video placeholder expansion: what the Qwen3-VL processor hands to the tokenizer.

    See `encode_chat` for `video_grid_thw`, `timestamps` and `outer_vision_tokens`.
    """
    out = []
    for kind, value, _ in _expanded_pieces(messages, video_grid_thw, timestamps, add_generation_prompt,
                                           outer_vision_tokens, merge_size, add_vision_id):
        out.append(VIDEO_PAD * value if kind == "pad" else value)
    return "".join(out)


def expand_video_placeholders(text: str, video_grid_thw: Any, timestamps: Any = None, *,
                              outer_vision_tokens: bool = False, merge_size: int = 2) -> str:
    """Expand each `<|vision_start|><|video_pad|><|vision_end|>` of an already rendered chat text, in order.

    outer_vision_tokens=False (default): the whole triple is replaced by the per-frame blocks (transformers 4.57,
    vLLM). True: only the inner `<|video_pad|>` is replaced, so the blocks stay inside an outer
    vision_start/vision_end (transformers 5.x). See `encode_chat`.
    """
    grids = _as_grids(video_grid_thw)
    stamps = _video_timestamps(grids, timestamps)
    triple = VISION_START + VIDEO_PAD + VISION_END
    parts = text.split(triple)
    if len(parts) - 1 != len(grids):
        raise ValueError(f"{len(parts) - 1} video placeholders but {len(grids)} video_grid_thw rows")
    out = [parts[0]]
    for grid, ts, part in zip(grids, stamps, parts[1:]):
        block = "".join(VIDEO_PAD * v if k == "pad" else v
                        for k, v, _ in _video_expansion(grid, ts, merge_size, outer_vision_tokens))
        out.append(block)
        out.append(part)
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------
# Encoding to token ids
# --------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EncodedChat:
    """Token ids of a chat and its SFT loss mask (True = the token is a training target)."""
    input_ids: np.ndarray  # int32 [L]
    loss_mask: np.ndarray  # bool [L]

    def labels(self, ignore_index: int = -100) -> np.ndarray:
        """HF-style labels: the token id where `loss_mask`, else `ignore_index` (unshifted)."""
        return np.where(self.loss_mask, self.input_ids, ignore_index).astype(np.int32)


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], *, video_grid_thw: Any = None,
                timestamps: Any = None, add_generation_prompt: bool = False, outer_vision_tokens: bool = False,
                merge_size: int = 2, add_vision_id: bool = False, ids: SpecialIds | None = None) -> EncodedChat:
    """Token ids of a Qwen3-VL chat with its videos expanded, plus the SFT `all_assistant` loss mask.

    Args:
      tokenizer: a fast (Rust-backed) Qwen tokenizer; `build_tiny_tokenizer()` or `load_tokenizer(...)[0]`.
      messages: `[{"role", "content"}]`; content is a string or a list of `{"type": "text", "text"}` /
        `{"type": "video", ...}` items (see `build_*_messages`).
      video_grid_thw: one (t, h, w) row per video item, in patches (t = temporal groups of 2 frames). Each video
        becomes, per group g, `<{ts[g]:.1f} seconds><|vision_start|>` + `<|video_pad|>` x h*w/merge_size**2 +
        `<|vision_end|>`.
      timestamps: None for the original's convention (fps 1, indices 0..2t-1, i.e. 0.5, 2.5, ...), or one list of
        per-group seconds per video (`group_timestamps`, `timestamps_from_seconds`).
      outer_vision_tokens: False (default) = transformers 4.57 / vLLM: the whole
        `<|vision_start|><|video_pad|><|vision_end|>` triple of the chat template is replaced by the per-group
        blocks; this is what the original trained (transformers 4.57.1) and evaluated (vLLM) with, so released
        checkpoints expect it. True = transformers 5.x: only `<|video_pad|>` is replaced, leaving one outer
        vision_start/vision_end around the blocks (qwen3_vl.md part B "Nesting").
      ids: precomputed `special_ids(tokenizer)` (saves the lookups in a hot loop).

    Tokenisation equals HF's on the expanded text (`tokenizer(render_prompt_text(...))`): chat/vision control
    tokens are inserted as ids, and each text run between them is tokenised by the tokenizer, which, as HF does,
    turns added tokens written in the text (`<REFINE>`, `<think>`) into their ids. That is required: the system
    prompt's and the targets' `<REFINE>` must be the special token (sqr_and_sft.md §3). A `<REFINE>` typed in a query
    therefore also becomes the token, as in the original; it is harmless because `<REFINE>` is only looked for in
    the generated span (`refine_positions`). Chat/multimodal control tokens (`<|im_start|>`, `<|video_pad|>`, ... the
    Qwen tokens marked special) typed in any message text raise ValueError instead: they would desynchronise the
    chat structure and the video placeholder count from `video_grid_thw`.

    The loss mask covers every token after `<|im_start|>assistant\\n` through `<|im_end|>\\n` of each assistant
    message, minus pad and image/video pad tokens (sft_share_gpt_trainer.py L147-182, L231-244). A token that
    straddles the header/content boundary (only possible when the content starts with a newline) is not a target.
    """
    ids = special_ids(tokenizer) if ids is None else ids
    control = {IM_START: ids.im_start, IM_END: ids.im_end, VISION_START: ids.vision_start,
               VISION_END: ids.vision_end}
    forbidden = set(ids.control)

    # Group the pieces into segments: ("ids", (int32 array, flag)) or ("text", [(string, flag), ...]).
    segments: list[tuple[str, Any]] = []
    for kind, value, flag in _expanded_pieces(messages, video_grid_thw, timestamps, add_generation_prompt,
                                              outer_vision_tokens, merge_size, add_vision_id):
        if kind == "text":
            if value:
                if segments and segments[-1][0] == "text":
                    segments[-1][1].append((value, flag))
                else:
                    segments.append(("text", [(value, flag)]))
        elif kind == "special":
            segments.append(("ids", (np.array([control[value]], np.int32), flag)))
        else:  # "pad"
            segments.append(("ids", (np.full((value,), ids.video_pad, np.int32), flag)))

    runs = ["".join(s for s, _ in seg[1]) for seg in segments if seg[0] == "text"]
    encoded = tokenizer(runs, add_special_tokens=False, return_offsets_mapping=True) if runs else None
    all_ids, all_mask = [], []
    run_i = 0
    for kind, payload in segments:
        if kind == "ids":
            arr, flag = payload
            all_ids.append(arr)
            all_mask.append(np.full(arr.shape, flag, bool))
            continue
        run_ids = encoded["input_ids"][run_i]
        offsets = encoded["offset_mapping"][run_i]
        run_i += 1
        bad = [t for t in run_ids if t in forbidden]
        if bad:
            names = sorted(set(tokenizer.convert_ids_to_tokens(bad)))
            raise ValueError(f"message text contains chat/multimodal control token(s) {names}; they may only be "
                             "produced by the chat template and the video placeholder expansion")
        # flag of each token = flag of the text piece its first character belongs to
        starts, flags, pos = [], [], 0
        for s, flag in payload:
            starts.append(pos)
            flags.append(flag)
            pos += len(s)
        tok_flags = [flags[bisect.bisect_right(starts, start) - 1] for start, _ in offsets]
        all_ids.append(np.asarray(run_ids, np.int32))
        all_mask.append(np.asarray(tok_flags, bool))
    input_ids = np.concatenate(all_ids) if all_ids else np.zeros((0,), np.int32)
    loss_mask = np.concatenate(all_mask) if all_mask else np.zeros((0,), bool)
    loss_mask &= ~np.isin(input_ids, [ids.pad, ids.image_pad, ids.video_pad])
    return EncodedChat(input_ids=input_ids, loss_mask=loss_mask)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], *, video_grid_thw: Any = None,
                  timestamps: Any = None, add_generation_prompt: bool = True, outer_vision_tokens: bool = False,
                  merge_size: int = 2, ids: SpecialIds | None = None) -> np.ndarray:
    """int32 token ids of an episode prompt (by default ending in `<|im_start|>assistant\\n`). See `encode_chat`."""
    return encode_chat(tokenizer, messages, video_grid_thw=video_grid_thw, timestamps=timestamps,
                       add_generation_prompt=add_generation_prompt, outer_vision_tokens=outer_vision_tokens,
                       merge_size=merge_size, ids=ids).input_ids


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


def embedder_query_ids(tokenizer: PreTrainedTokenizerBase, query: str, instruction: str = EMBEDDER_INSTRUCTION,
                       max_length: int = EMBEDDER_MAX_LENGTH) -> np.ndarray:
    """int32 ids of the embedder prompt for `query`, with the generation prompt, cut to `max_length`.

    The cut keeps the first `max_length` tokens (HF right truncation, as the original's `truncation=True,
    max_length=128`), so an over-long query loses its chat-template tail exactly as it did there. With the Qwen
    template the last 6 tokens of an untruncated prompt are: last query token, `<|im_end|>`, `\\n`, `<|im_start|>`,
    `assistant`, `\\n`; the 8 refined latents go in front of them (sqr_and_sft.md §2.4).
    """
    ids = encode_prompt(tokenizer, embedder_messages(query, instruction), add_generation_prompt=True)
    return ids[:max_length]


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
    "not_matched", anything else is returned as normalised (so it never equals a label); None when there is no tag.
    The reward parsers match tags case-sensitively (only `has_think` is documented as case-insensitive, RW:64-79).
    """
    blocks = _blocks("answer", text)
    if not blocks:
        return None
    answer = blocks[-1].strip().lower().replace(" ", "_")
    if answer in _REWARD_MATCHED:
        return MATCHED
    if answer in _REWARD_NOT_MATCHED:
        return NOT_MATCHED
    return answer


_REWARD_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?")  # RW:8-13


def _last_numeric(tag: str, text: str) -> float | None:
    # the last block of `tag` that holds a number; its first number (RW:25-39)
    for block in reversed(_blocks(tag, text)):
        match = _REWARD_NUMBER.search(block)
        if match:
            return float(match.group(0))
    return None


def parse_span_reward(text: str) -> tuple[float, float] | None:
    """Reward-side span: the last numeric `<start>` and `<end>` values (RW:25-39, grpo.md §4 r_time_iou).

    Numbers match `[-+]?\\d+(\\.\\d+)?` (no commas, no clamping, no swap: the reward scores end <= start as 0).
    """
    start, end = _last_numeric("start", text), _last_numeric("end", text)
    if start is None or end is None:
        return None
    return start, end


def has_time_tags(text: str) -> bool:
    """A `<start>...</start>` and an `<end>...</end>` pair are both present, any content (RW:42-45)."""
    return bool(_blocks("start", text)) and bool(_blocks("end", text))


def has_think(text: str) -> bool:
    """The last `<think>...</think>` block (case-insensitive) has non-blank content (RW:64-79)."""
    blocks = _blocks("think", text, re.DOTALL | re.IGNORECASE)
    return bool(blocks) and bool(blocks[-1].strip())


_STOP_STRINGS = ("<|im_end|>", "<|endoftext|>")
_MULTIMODAL_STRINGS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def sanitize_completion(text: str, stop_strings: Sequence[str] = _STOP_STRINGS,
                        drop_strings: Sequence[str] = _MULTIMODAL_STRINGS) -> str:
    """Decoded completion -> answer text (TR:144-166): cut at the first stop token, drop multimodal placeholder
    tokens, strip whitespace."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    text = text[:cut]
    for s in drop_strings:
        text = text.replace(s, "")
    return text.strip()


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
    "DEFAULT_MATCHED_REASONING", "DEFAULT_NOT_MATCHED_REASONING", "EMBEDDER_EMPTY_QUERY", "EMBEDDER_INSTRUCTION",
    "EMBEDDER_MAX_LENGTH", "EVAL_SYSTEM_PROMPT_TEMPLATE", "EncodedChat", "GRPO_INFORMATION_TEMPLATE",
    "GRPO_SYSTEM_PROMPT_TEMPLATE", "MATCHED", "NOT_MATCHED", "SFT_SYSTEM_PROMPT_TEMPLATE", "UNKNOWN",
    "USER_TURN_TEMPLATE", "VIDEO_MARKER", "assistant_target", "build_eval_messages", "build_grpo_messages",
    "build_sft_messages", "embedder_messages", "embedder_query_ids", "encode_chat", "encode_prompt",
    "eval_system_prompt", "expand_video_placeholders", "format_seconds", "group_timestamps", "grpo_system_prompt",
    "has_refine", "has_think", "has_time_tags", "last_refine_position", "last_refine_positions",
    "normalize_instruction", "normalize_reasoning", "parse_answer_eval", "parse_answer_reward", "parse_span_eval",
    "parse_span_reward", "refine_positions", "render_chat", "render_prompt_text", "sanitize_completion",
    "sft_system_prompt", "split_video_markers", "timestamps_from_seconds", "user_turn", "video_item",
    "video_token_count",
]
