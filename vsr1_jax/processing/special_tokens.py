"""The Qwen special-token strings the chat format and the agent key on, and their ids in a given tokenizer
(`special_ids`). Pure Python: transformers is only named for type checking.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# default refine token (verification_setting.bash L133; train_sft_qwen3_vl_share_gpt.py L50-53)
REFINE_TOKEN = "<REFINE>"

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
THINK = "<think>"
THINK_END = "</think>"

# The 26 tokens Qwen2.5/Qwen3 add after the 151,643 BPE ranks, in id order (151643..151668), as in Qwen3(-VL)'s
# tokenizer_config.json `added_tokens_decoder`. Qwen2.5 stops at <|file_sep|> (151664).
QWEN_FIRST_ADDED_ID = 151643
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT, IM_START, IM_END,
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD,
    "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    "<tool_response>", "</tool_response>",
    THINK, THINK_END,
)
# Added but *not* special (`"special": false`): decode(skip_special_tokens=True) keeps them.
QWEN_NON_SPECIAL_ADDED_TOKENS = frozenset(QWEN_SPECIAL_TOKENS[14:])
# The special ones: chat structure and multimodal placeholders. Only the chat template and the video placeholder
# expansion may produce them; text that contains them is rejected by chat.encode_chat.
CONTROL_TOKENS: tuple[str, ...] = QWEN_SPECIAL_TOKENS[:14]


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Ids of the tokens the model and the agent key on. `think`, `think_end` are None for Qwen2.5 tokenizers and
    `refine` is None when `<REFINE>` is not in the vocabulary."""
    pad: int
    eos_ids: tuple[int, ...]  # generation stops on any of these: (<|im_end|>, <|endoftext|>)
    endoftext: int
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    image_pad: int
    video_pad: int
    think: int | None
    think_end: int | None
    refine: int | None
    control: tuple[int, ...]  # ids of CONTROL_TOKENS present in the vocabulary


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    # convert_tokens_to_ids answers None (no unk token, as in Qwen) or the unk id for an unknown token
    i = tokenizer.convert_tokens_to_ids(token)
    if i is None or (tokenizer.unk_token_id is not None and i == tokenizer.unk_token_id
                     and token != tokenizer.unk_token):
        return None
    return int(i)


def special_ids(tokenizer: PreTrainedTokenizerBase, refine_token: str = REFINE_TOKEN) -> SpecialIds:
    """Look up the Qwen chat/vision ids (and `<REFINE>` if present); raises KeyError naming any missing one."""
    required = {"endoftext": ENDOFTEXT, "im_start": IM_START, "im_end": IM_END, "vision_start": VISION_START,
                "vision_end": VISION_END, "image_pad": IMAGE_PAD, "video_pad": VIDEO_PAD}
    found = {name: _token_id(tokenizer, tok) for name, tok in required.items()}
    missing = [required[n] for n, i in found.items() if i is None]
    if missing:
        raise KeyError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} lacks Qwen token(s) {missing}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else found["endoftext"]
    control = tuple(i for i in (_token_id(tokenizer, t) for t in CONTROL_TOKENS) if i is not None)
    return SpecialIds(pad=int(pad), eos_ids=(found["im_end"], found["endoftext"]), control=control,
                      think=_token_id(tokenizer, THINK), think_end=_token_id(tokenizer, THINK_END),
                      refine=_token_id(tokenizer, refine_token), **found)


__all__ = [
    "CONTROL_TOKENS", "ENDOFTEXT", "IMAGE_PAD", "IM_END", "IM_START", "QWEN_FIRST_ADDED_ID",
    "QWEN_NON_SPECIAL_ADDED_TOKENS", "QWEN_SPECIAL_TOKENS", "REFINE_TOKEN", "SpecialIds", "THINK", "THINK_END",
    "VIDEO_PAD", "VISION_END", "VISION_PAD", "VISION_START", "special_ids",
]
