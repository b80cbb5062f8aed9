"""A tiny deterministic Qwen2-style byte-level BPE tokenizer (Qwen's added tokens, `<REFINE>`, the Qwen3-VL chat
template) that tests and the default demo build offline; its merges are trained on the prompt texts.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from vsr1_jax.processing import prompts
from vsr1_jax.processing.special_tokens import (
    ENDOFTEXT,
    IM_END,
    QWEN_NON_SPECIAL_ADDED_TOKENS,
    QWEN_SPECIAL_TOKENS,
    REFINE_TOKEN,
)
from vsr1_jax.processing.tokenizer import (
    QWEN2_PRETOKENIZE_REGEX,
    QWEN3_VL_CHAT_TEMPLATE,
    QWEN_MODEL_MAX_LENGTH,
    ensure_refine_token,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# The tiny tokenizer: 256 byte symbols + TINY_NUM_MERGES merges + 26 Qwen added tokens (+ <REFINE>) = 795 ids,
# under the 1024 rows of the tiny test models (as Qwen's 151,669 tokens sit under its 151,936 embedding rows).
TINY_NUM_MERGES = 512

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
    # lazy: tokenizers is only needed to build the tiny tokenizer
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
    # lazy: tokenizers/transformers are slow to import and only needed to build the tiny tokenizer
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
    "TINY_NUM_MERGES", "build_tiny_tokenizer",
]
