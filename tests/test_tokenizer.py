"""Tests of vsr1_jax.processing.tokenizer: Qwen added tokens, the tiny tokenizer, offline loading, <REFINE>."""
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import regex

from vsr1_jax.data.tiny_tokenizer import TINY_NUM_MERGES, _tiny_vocab_and_merges, build_tiny_tokenizer
from vsr1_jax.processing import tokenizer as T
from vsr1_jax.processing.special_tokens import (
    CONTROL_TOKENS,
    ENDOFTEXT,
    IM_END,
    QWEN_FIRST_ADDED_ID,
    QWEN_NON_SPECIAL_ADDED_TOKENS,
    QWEN_SPECIAL_TOKENS,
    special_ids,
)

TINY_SIZE = 256 + TINY_NUM_MERGES + 26 + 1  # bytes + merges + Qwen added tokens + <REFINE>


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_tok")
    build_tiny_tokenizer(out)
    return out


# ---------------------------------------------------------------------------------------------------- constants

def test_qwen_added_tokens_order_matches_spec_ids():
    assert len(QWEN_SPECIAL_TOKENS) == 26 and len(set(QWEN_SPECIAL_TOKENS)) == 26
    ids = {tok: QWEN_FIRST_ADDED_ID + k for k, tok in enumerate(QWEN_SPECIAL_TOKENS)}
    # ids stated by the spec (sqr_and_sft.md §3, qwen3_vl.md part B) and Qwen3VLConfig defaults
    assert ids["<|endoftext|>"] == 151643
    assert ids["<|im_start|>"] == 151644
    assert ids["<|im_end|>"] == 151645
    assert ids["<|vision_start|>"] == 151652
    assert ids["<|vision_end|>"] == 151653
    assert ids["<|image_pad|>"] == 151655
    assert ids["<|video_pad|>"] == 151656
    assert ids["<think>"] == 151667
    assert ids["</think>"] == 151668
    assert ids["<|file_sep|>"] == 151664  # last token of Qwen2.5
    assert QWEN_NON_SPECIAL_ADDED_TOKENS == {
        "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
        "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>"}
    assert set(CONTROL_TOKENS) == set(QWEN_SPECIAL_TOKENS) - QWEN_NON_SPECIAL_ADDED_TOKENS


def test_qwen_sized_layout_gives_refine_151669():
    # A stand-in with Qwen's layout (151,643 base entries, then the 26 added tokens): <REFINE> must land at 151669
    # and len(tokenizer) be 151670, the figures of sqr_and_sft.md §3.
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2Tokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({f"x{i}": 256 + i for i in range(QWEN_FIRST_ADDED_ID - 256)})
    added = {QWEN_FIRST_ADDED_ID + k: AddedToken(t, special=t not in QWEN_NON_SPECIAL_ADDED_TOKENS,
                                                  normalized=False)
             for k, t in enumerate(QWEN_SPECIAL_TOKENS)}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], added_tokens_decoder=added, eos_token=IM_END,
                         pad_token=ENDOFTEXT, unk_token=None)
    assert len(tok) == 151669
    assert T.ensure_refine_token(tok) is True
    ids = special_ids(tok)
    assert ids.refine == 151669 and len(tok) == 151670
    assert (ids.im_start, ids.im_end, ids.video_pad, ids.think, ids.think_end) == (151644, 151645, 151656,
                                                                                    151667, 151668)
    assert ids.eos_ids == (151645, 151643) and ids.pad == 151643


# ---------------------------------------------------------------------------------------------------- tiny tokenizer

def test_tiny_size_and_ids(tiny):
    assert len(tiny) == TINY_SIZE == 795 <= 1000
    first = 256 + TINY_NUM_MERGES
    for k, tok in enumerate(QWEN_SPECIAL_TOKENS):
        assert tiny.convert_tokens_to_ids(tok) == first + k, tok
    ids = special_ids(tiny)
    assert ids.refine == len(tiny) - 1 == 794  # <REFINE> last, as in the original (id = len before adding)
    assert ids.eos_ids == (770, 768) and ids.pad == 768 == ids.endoftext
    assert (ids.im_start, ids.im_end, ids.vision_start, ids.vision_end, ids.image_pad, ids.video_pad) == (
        769, 770, 777, 778, 780, 781)
    assert (ids.think, ids.think_end) == (792, 793)
    assert tiny.eos_token == "<|im_end|>" and tiny.pad_token == "<|endoftext|>"
    assert tiny.bos_token is None and tiny.unk_token is None
    # special vs merely added, as in Qwen3's tokenizer_config
    dec = tiny.added_tokens_decoder
    assert dec[ids.im_end].special and dec[ids.video_pad].special and dec[ids.refine].special
    assert not dec[ids.think].special and not dec[tiny.convert_tokens_to_ids("<tool_call>")].special


def test_tiny_without_refine():
    tok = build_tiny_tokenizer(with_refine=False)
    assert len(tok) == TINY_SIZE - 1
    assert special_ids(tok).refine is None


def test_tiny_deterministic_and_fast(tiny, tmp_path):
    t0 = time.perf_counter()
    again = build_tiny_tokenizer()
    assert time.perf_counter() - t0 < 1.0
    assert again.backend_tokenizer.to_str() == tiny.backend_tokenizer.to_str()
    build_tiny_tokenizer(tmp_path / "a")
    build_tiny_tokenizer(tmp_path / "b")
    files = sorted(os.listdir(tmp_path / "a"))
    assert files == sorted(os.listdir(tmp_path / "b")) and "tokenizer.json" in files
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_tiny_merges_independent_of_hash_seed():
    # The BPE trainer runs in Rust with hash maps: the merges must not depend on the process (seeded differently).
    code = ("import hashlib, json; from vsr1_jax.data.tiny_tokenizer import _tiny_vocab_and_merges as f; "
            "v, m = f(); print(hashlib.sha256(json.dumps([sorted(v.items()), m]).encode()).hexdigest())")
    vocab, merges = _tiny_vocab_and_merges()
    here = hashlib.sha256(json.dumps([sorted(vocab.items()), [list(m) for m in merges]]).encode()).hexdigest()
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here


def test_tiny_byte_order_like_qwen(tiny):
    # GPT-2/Qwen byte-symbol ids: "!" 0, "," 11 (Qwen: "Hello, world!" -> [9707, 11, 1879, 0]), "\n" 198, " " 220
    assert tiny.encode("!", add_special_tokens=False) == [0]
    assert tiny.encode(",", add_special_tokens=False) == [11]
    assert tiny.encode("\n", add_special_tokens=False) == [198]
    assert tiny.encode(" ", add_special_tokens=False) == [220]
    ids = tiny.encode("Hello, world!", add_special_tokens=False)
    assert ids[-1] == 0 and 11 in ids


def _regex_split(text):
    return regex.findall(T.QWEN2_PRETOKENIZE_REGEX, text)


STRINGS = [
    "Hello, world! It's 12.5 seconds, isn't it?",
    'Query: "a man opens the door"\nRetrieved video: <0.5 seconds>',
    "  leading spaces\n\n\ttabs and\r\nnewlines   ",
    "naïve café — 東京 2024 🙂",
    "<answer>not_matched</answer> <start>1,234.5</start>",
    "I'LL we'd THEY'RE 3.14159",
]


@pytest.mark.parametrize("text", STRINGS)
def test_pretokenizer_split_matches_qwen2_regex(tiny, text):
    # reference: the Qwen2 split regex applied by the `regex` package, then GPT-2 byte mapping
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    expected = [byte_level.pre_tokenize_str(piece)[0][0] for piece in _regex_split(text)]
    got = [piece for piece, _ in tiny.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]
    assert got == expected


@pytest.mark.parametrize("text", STRINGS)
def test_matches_hf_qwen2_tokenizer_and_round_trips(tiny, text):
    # reference: transformers.Qwen2Tokenizer built from the same vocab/merges
    from transformers import Qwen2Tokenizer

    vocab, merges = _tiny_vocab_and_merges()
    ref = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None)
    ids = tiny.encode(text, add_special_tokens=False)
    assert ids == ref.encode(text, add_special_tokens=False)
    assert tiny.decode(ids) == text
    assert all(i < 256 + TINY_NUM_MERGES for i in ids)


def test_added_tokens_recognised_in_text(tiny):
    ids = special_ids(tiny)
    enc = tiny.encode("x<REFINE>y<think>z<|im_end|>", add_special_tokens=False)
    assert enc.count(ids.refine) == 1 and enc.count(ids.think) == 1 and enc.count(ids.im_end) == 1
    # special tokens are dropped by skip_special_tokens, merely-added ones (<think>) are kept
    assert tiny.decode(enc, skip_special_tokens=True) == "xy<think>z"


def test_common_words_are_single_tokens(tiny):
    for word in ("assistant", "system", "user", "NULL"):
        assert len(tiny.encode(word, add_special_tokens=False)) == 1, word


# ---------------------------------------------------------------------------------------------------- loading

def test_save_load_round_trip_offline(tiny, tiny_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(tiny_dir), local_files_only=True)
    tok, info = T.load_tokenizer(tiny_dir)
    assert info.added_refine is False  # already present: not added twice
    assert info.refine_id == 794 and info.required_vocab_size == len(tok) == TINY_SIZE
    assert info.special == special_ids(tiny)
    for text in STRINGS + ["<|im_start|>user\nhi<|im_end|>\n<REFINE>"]:
        expected = tiny.encode(text, add_special_tokens=False)
        assert tok.encode(text, add_special_tokens=False) == expected
        assert auto.encode(text, add_special_tokens=False) == expected
    assert tok.chat_template == T.QWEN3_VL_CHAT_TEMPLATE == auto.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_load_adds_refine_exactly_once(tmp_path):
    folder = tmp_path / "no_refine"
    build_tiny_tokenizer(folder, with_refine=False)
    tok, info = T.load_tokenizer(folder)
    assert info.added_refine is True
    assert info.refine_id == TINY_SIZE - 1 and info.required_vocab_size == TINY_SIZE == len(tok)
    assert tok.added_tokens_decoder[info.refine_id].special
    assert T.ensure_refine_token(tok) is False and len(tok) == TINY_SIZE
    assert tok.encode("a <REFINE> b<REFINE>", add_special_tokens=False).count(info.refine_id) == 2
    # a custom refine token name
    tok2, info2 = T.load_tokenizer(folder, refine_token="<RF>")
    assert info2.refine_id == TINY_SIZE - 1 and tok2.convert_ids_to_tokens(info2.refine_id) == "<RF>"
    # add_refine=False leaves the vocabulary alone (the query embedder's tokenizer)
    tok3, info3 = T.load_tokenizer(folder, add_refine=False)
    assert info3.refine_id is None and info3.required_vocab_size == TINY_SIZE - 1 == len(tok3)


def test_load_errors_name_path_and_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        T.load_tokenizer(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*tokenizer_config\.json.*tokenizer\.json"):
        T.load_tokenizer(empty)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "tokenizer_config.json").write_text("{}")
    (partial / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as err:
        T.load_tokenizer(partial)
    assert "partial" in str(err.value) and "merges.txt" in str(err.value)
    assert "tokenizer_config.json" not in str(err.value)


def test_special_ids_reports_missing_tokens():
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    plain = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token=IM_END, pad_token=ENDOFTEXT)
    with pytest.raises(KeyError, match="vision_start"):
        special_ids(plain)
