"""Qwen tokenizer handling for vsr1_jax: offline loading with the `<REFINE>` token, special ids, and a tiny
deterministic Qwen2-style byte-level BPE tokenizer that tests and the default demo build without downloads.

transformers/tokenizers are imported inside the functions that need them, so `special_ids` and the constants stay
cheap to import (prompts.py imports them).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

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
# expansion may produce them; text that contains them is rejected by prompts.encode_chat.
CONTROL_TOKENS: tuple[str, ...] = QWEN_SPECIAL_TOKENS[:14]

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

# The tiny tokenizer: 256 byte symbols + TINY_NUM_MERGES merges + 26 Qwen added tokens (+ <REFINE>) = 795 ids,
# under the 1024 rows of the tiny test models (as Qwen's 151,669 tokens sit under its 151,936 embedding rows).
TINY_NUM_MERGES = 512


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


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
    """What `load_tokenizer` found or did."""
    refine_token: str
    refine_id: int | None
    required_vocab_size: int  # = len(tokenizer): rows the policy's embedding / lm_head must have
    added_refine: bool  # True when <REFINE> was missing and has just been added
    special: SpecialIds


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
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if not tokenizer.is_fast:
        raise TypeError(f"{folder}: expected a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}")
    added = ensure_refine_token(tokenizer, refine_token) if add_refine else False
    ids = special_ids(tokenizer, refine_token)
    info = TokenizerInfo(refine_token=refine_token, refine_id=ids.refine, required_vocab_size=len(tokenizer),
                         added_refine=added, special=ids)
    return tokenizer, info


# --------------------------------------------------------------------------------------------------------------
# Tiny tokenizer
# --------------------------------------------------------------------------------------------------------------

# Typical FIG queries (Charades / DiDeMo / ActivityNet style), written for this corpus.
_TINY_QUERIES = (
    "a person opens the door and walks into the kitchen",
    "the man is holding a cup of coffee while talking on the phone",
    "a woman sits down on the sofa and starts reading a book",
    "a person takes a towel from the closet and folds it",
    "the girl in the red shirt jumps into the swimming pool",
    "a man in a black jacket is playing the guitar on the stage",
    "two people are dancing in the middle of the room",
    "a person is washing the dishes in the sink",
    "someone turns on the light and looks at the camera",
    "the boy throws the ball to the dog in the yard",
    "a woman puts on her shoes and leaves the house",
    "a person laughs while eating a sandwich at the table",
    "the camera zooms in on the car as it drives away",
    "a man is cutting vegetables on a wooden board",
    "people are running along the beach at sunset",
    "a person closes the laptop and stands up from the chair",
    "the woman pours water into a glass and drinks it",
    "a child rides a bicycle down the street",
    "a person is sweeping the floor with a broom",
    "the man picks up a box and carries it out of the room",
)
_TINY_REASONING = (
    "The query asks for a person who opens a door and then walks into a kitchen. In the video a person opens "
    "the door at the start and walks into the kitchen, so the scene matches the query.",
    "The query requires a man holding a cup while talking on the phone. The video shows a woman reading a book "
    "on a sofa; no man, no cup and no phone are visible, so the video does not match.",
    "The person in the video takes a towel and folds it, which is the action the query describes, and it happens "
    "between the first and the second timestamp.",
)


def _tiny_corpus() -> list[str]:
    from vsr1_jax.processing import prompts  # lazy: prompts imports this module

    lines = ["system\n", "user\n", "assistant\n"] * 40
    lines += [prompts.sft_system_prompt(), prompts.eval_system_prompt(), prompts.grpo_system_prompt()] * 3
    lines += [prompts.normalize_instruction(prompts.EMBEDDER_INSTRUCTION), prompts.EMBEDDER_EMPTY_QUERY] * 5
    lines += [prompts.GRPO_INFORMATION_TEMPLATE.replace(prompts.VIDEO_MARKER, "")] * 5
    lines += [f"<{0.5 + 2 * k:.1f} seconds>" for k in range(32)]
    for i, query in enumerate(_TINY_QUERIES):
        lines.append(prompts.USER_TURN_TEMPLATE.format(query=query).replace(prompts.VIDEO_MARKER, ""))
        lines.append(query)
        reasoning = _TINY_REASONING[i % len(_TINY_REASONING)]
        if i % 2 == 0:
            lines.append(prompts.assistant_target(prompts.MATCHED, reasoning, 1.5 * i, 2.25 * i + 4.0))
        else:
            lines.append(prompts.assistant_target(prompts.NOT_MATCHED, reasoning))
    return lines


def _tiny_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte symbols in GPT-2/Qwen order (so `\\n` is 198 and space 220, as in Qwen) + deterministic merges.

    Merges come from tokenizers' BpeTrainer on `_tiny_corpus()` with the Qwen2 pre-tokenizer; its ranking breaks
    count ties by the pair itself, so the result does not depend on hash seeds (checked across processes in the
    tests). Only `tokenizers` is needed here.
    """
    import json

    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    # GPT-2 bytes_to_unicode maps the 256 bytes onto code points in byte-rank order; sorting recovers that order.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.NFC()
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + TINY_NUM_MERGES, min_frequency=2, show_progress=False,
                                  initial_alphabet=alphabet, special_tokens=[])
    trainer_tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(trainer_tok.to_str())["model"]["merges"]]
    if len(merges) != TINY_NUM_MERGES:  # keeps every id after the merges fixed (tests and tiny configs rely on it)
        raise RuntimeError(f"the tiny corpus yields {len(merges)} merges, fewer than TINY_NUM_MERGES="
                           f"{TINY_NUM_MERGES}; enlarge _tiny_corpus or lower TINY_NUM_MERGES")
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    for left, right in merges:
        token = left + right
        if token in vocab:
            raise RuntimeError(f"duplicate merge result {token!r}")
        vocab[token] = len(vocab)
    return vocab, merges


def build_tiny_tokenizer(out_dir: str | os.PathLike | None = None, *,
                         with_refine: bool = True) -> PreTrainedTokenizerFast:
    """A small Qwen2-style tokenizer (same normaliser, pre-tokenizer split, byte-level BPE and decoder as
    `transformers.Qwen2Tokenizer`) for tests and the default demo; no download.

    Ids: 0-255 byte symbols (`\n` = 198, space = 220 as in Qwen), 256..767 the TINY_NUM_MERGES merges, then the 26
    QWEN_SPECIAL_TOKENS in Qwen order (768..793: <|endoftext|> 768, <|im_start|> 769, <|im_end|> 770,
    <|vision_start|> 777, <|vision_end|> 778, <|image_pad|> 780, <|video_pad|> 781, <think> 792, </think> 793), then
    `<REFINE>` (794) when `with_refine`: 795 tokens, or 794. eos `<|im_end|>`, pad
    `<|endoftext|>`, no bos/unk, chat template QWEN3_VL_CHAT_TEMPLATE. Deterministic: identical tokenizer.json on every
    call. `out_dir`: also `save_pretrained` there (loadable with `AutoTokenizer.from_pretrained` or
    `load_tokenizer`, offline).
    """
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = _tiny_vocab_and_merges()
    first = len(vocab)
    added = {first + k: AddedToken(tok, special=tok not in QWEN_NON_SPECIAL_ADDED_TOKENS, normalized=False,
                                   lstrip=False, rstrip=False, single_word=False)
             for k, tok in enumerate(QWEN_SPECIAL_TOKENS)}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, added_tokens_decoder=added, eos_token=IM_END, pad_token=ENDOFTEXT,
        unk_token=None, bos_token=None, add_prefix_space=False, errors="replace",
        model_max_length=QWEN_MODEL_MAX_LENGTH, split_special_tokens=False, clean_up_tokenization_spaces=False)
    tokenizer.chat_template = QWEN3_VL_CHAT_TEMPLATE
    for k, tok in enumerate(QWEN_SPECIAL_TOKENS):  # Qwen2Tokenizer must not have re-added eos/pad elsewhere
        if tokenizer.convert_tokens_to_ids(tok) != first + k:
            raise RuntimeError(f"{tok} landed at id {tokenizer.convert_tokens_to_ids(tok)}, expected {first + k}")
    if len(tokenizer) != first + len(QWEN_SPECIAL_TOKENS):
        raise RuntimeError(f"unexpected tiny tokenizer size {len(tokenizer)}")
    if with_refine:
        ensure_refine_token(tokenizer, REFINE_TOKEN)
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


__all__ = [
    "CONTROL_TOKENS", "ENDOFTEXT", "IMAGE_PAD", "IM_END", "IM_START", "QWEN2_PRETOKENIZE_REGEX",
    "QWEN3_VL_CHAT_TEMPLATE",
    "QWEN_FIRST_ADDED_ID", "QWEN_NON_SPECIAL_ADDED_TOKENS", "QWEN_SPECIAL_TOKENS", "REFINE_TOKEN", "THINK",
    "THINK_END", "TINY_NUM_MERGES", "VIDEO_PAD", "VISION_END", "VISION_PAD", "VISION_START", "SpecialIds",
    "TokenizerInfo", "build_tiny_tokenizer", "ensure_refine_token", "load_tokenizer", "special_ids",
]
