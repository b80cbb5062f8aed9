"""Qwen3-VL chat rendering and encoding: the official chat template as pieces, video placeholder expansion with
per-group timestamps, token ids with the SFT loss mask, and the query embedder's prompt ids. Pure Python + numpy.
"""
from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vsr1_jax.processing import video as _video
from vsr1_jax.processing.prompts import EMBEDDER_INSTRUCTION, EMBEDDER_MAX_LENGTH, Message, embedder_messages
from vsr1_jax.processing.special_tokens import (
    IM_END,
    IM_START,
    IMAGE_PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    SpecialIds,
    special_ids,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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
        return [_video.group_timestamps(2 * t) for t, _, _ in grids]
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


__all__ = [
    "EncodedChat", "embedder_query_ids", "encode_chat", "encode_prompt", "expand_video_placeholders", "render_chat",
    "render_prompt_text", "timestamps_from_seconds", "video_token_count",
]
