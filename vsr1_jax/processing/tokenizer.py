"""Offline loading of a checkpoint's Qwen tokenizer with the `<REFINE>` token, and the Qwen3-VL chat template and
pre-tokenizer constants. transformers is imported only inside `load_tokenizer`, so the constants stay cheap to import.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vsr1_jax.processing.special_tokens import REFINE_TOKEN, SpecialIds, special_ids, _token_id

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

# The official Qwen3-VL Instruct chat template, restricted to what VideoSearch-R1 uses (no tools / tool role):
# system only as the first message; user text, image and video items; assistant text; no <think> injection.
# A video item renders as <|vision_start|><|video_pad|><|vision_end|>, which the processor then expands.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}"
    "{%- set video_count = namespace(value=0) %}"
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}"
    "{%- else %}{%- for content in messages[0].content %}"
    "{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Picture ' ~ image_count.value ~ ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Video ' ~ video_count.value ~ ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content.text }}"
    "{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content_item in message.content %}"
    "{%- if 'text' in content_item %}{{- content_item.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen2's pre-tokenizer split (transformers models/qwen2/tokenization_qwen2.py PRETOKENIZE_REGEX): digits one by
# one, letters with one optional leading non-letter, newline runs kept apart from text.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN_MODEL_MAX_LENGTH = 262144  # Qwen3-VL tokenizer_config.json


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
    """What `load_tokenizer` found or did."""
    refine_token: str
    refine_id: int | None
    required_vocab_size: int  # = len(tokenizer): rows the policy's embedding / lm_head must have
    added_refine: bool  # True when <REFINE> was missing and has just been added
    special: SpecialIds


def ensure_refine_token(tokenizer: PreTrainedTokenizerBase, refine_token: str = REFINE_TOKEN) -> bool:
    """Add `refine_token` as ONE special token if absent (train_sft_qwen3_vl_share_gpt.py L392-397,
    `add_tokens([...], special_tokens=True)`); its id is then len(tokenizer) before the call, e.g. 151669 for
    Qwen3. Returns whether it was added. Raises if the token does not encode to a single id afterwards."""
    added = refine_token not in tokenizer.get_vocab()
    if added:
        tokenizer.add_tokens([refine_token], special_tokens=True)
    rid = _token_id(tokenizer, refine_token)
    if rid is None or tokenizer.encode(f"a{refine_token}a", add_special_tokens=False).count(rid) != 1:
        raise ValueError(f"{refine_token!r} is not a single token of this tokenizer")
    return added


def _missing_tokenizer_files(folder: Path) -> list[str]:
    missing = []
    if not (folder / "tokenizer_config.json").is_file():
        missing.append("tokenizer_config.json")
    if not (folder / "tokenizer.json").is_file():
        absent = [f for f in ("vocab.json", "merges.txt") if not (folder / f).is_file()]
        if absent:
            missing.append("tokenizer.json (or " + " + ".join(absent) + ")")
    return missing


def load_tokenizer(path: str | os.PathLike, *, refine_token: str = REFINE_TOKEN,
                   add_refine: bool = True) -> tuple[PreTrainedTokenizerFast, TokenizerInfo]:
    """Load a checkpoint's tokenizer offline and make sure `<REFINE>` is one special token.

    `path` is a local HF folder (a Qwen3-VL checkpoint, a released VideoSearch-R1 checkpoint which already holds
    `<REFINE>`, its `query_embedder/` with add_refine=False, or a `build_tiny_tokenizer` folder). Nothing is
    downloaded. The returned `TokenizerInfo.required_vocab_size` (= len(tokenizer), 151670 for Qwen3 + `<REFINE>`)
    is the embedding size the original resized the policy to (`resize_token_embeddings(len(tokenizer))`, MAIN L1159).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {str(folder)!r} does not exist or is not a directory")
    missing = _missing_tokenizer_files(folder)
    if missing:
        raise FileNotFoundError(f"tokenizer folder {str(folder)!r} is missing: {', '.join(missing)}")
    from transformers import AutoTokenizer  # lazy: transformers is slow to import; the constants stay cheap

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if not tokenizer.is_fast:
        raise TypeError(f"{folder}: expected a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}")
    added = ensure_refine_token(tokenizer, refine_token) if add_refine else False
    ids = special_ids(tokenizer, refine_token)
    info = TokenizerInfo(refine_token=refine_token, refine_id=ids.refine, required_vocab_size=len(tokenizer),
                         added_refine=added, special=ids)
    return tokenizer, info


__all__ = [
    "QWEN2_PRETOKENIZE_REGEX", "QWEN3_VL_CHAT_TEMPLATE", "QWEN_MODEL_MAX_LENGTH", "TokenizerInfo",
    "ensure_refine_token", "load_tokenizer",
]
