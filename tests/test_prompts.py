"""Tests of vsr1_jax.processing.prompts: prompts, chat rendering vs HF, video expansion, encoding, parsing."""
import random
import re
from types import SimpleNamespace

import numpy as np
import pytest

from vsr1_jax.data.tiny_tokenizer import build_tiny_tokenizer
from vsr1_jax.processing import prompts as P
from vsr1_jax.processing.chat import (
    embedder_query_ids,
    encode_chat,
    encode_prompt,
    expand_video_placeholders,
    render_chat,
    render_prompt_text,
    timestamps_from_seconds,
    video_token_count,
)
from vsr1_jax.processing.parsing import (
    has_refine,
    has_think,
    has_time_tags,
    last_refine_position,
    last_refine_positions,
    parse_answer_eval,
    parse_answer_reward,
    parse_span_eval,
    parse_span_reward,
    refine_positions,
    sanitize_completion,
)
from vsr1_jax.processing.special_tokens import VIDEO_PAD, VISION_END, VISION_START, special_ids
from vsr1_jax.processing.video import group_timestamps


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def ids(tok):
    return special_ids(tok)


QUERY = "a man opens the door and walks into the kitchen"
MATCHED_TARGET = P.assistant_target(P.MATCHED, "He opens the door, then walks in.", 1.5, 7)


def _hf_processor_block(grid, fps, indices):
    """The per-video placeholder of HF transformers' Qwen3VLProcessor.replace_video_token (5.24), called with a
    stand-in `self` (the real processor needs torchvision's video processor, absent here)."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    fake = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2, temporal_patch_size=2),
                           vision_start_token=VISION_START, vision_end_token=VISION_END, video_token=VIDEO_PAD)
    fake._calculate_timestamps = lambda *a: Qwen3VLProcessor._calculate_timestamps(fake, *a)
    meta = SimpleNamespace(fps=fps, frames_indices=np.asarray(indices))
    return Qwen3VLProcessor.replace_video_token(fake, {"video_grid_thw": np.array([grid]),
                                                       "video_metadata": [meta]}, 0)


# ---------------------------------------------------------------------------------------------------- prompts

# The original texts, copied here independently of prompts.py (mlvlab/VideoSearch-R1 @ 8903eb8):
# convert_match_grounding_to_oneturn.py L11-23 `SYSTEM_PROMPT` (= build_verified_search_minimal_top1.py L20-32).
ORIGINAL_SFT_PROMPT = (
    "You are a video retrieval assistant. Your task is to analyze a retrieved video against the user query. "
    "Inside <think>...</think>, perform a step by step comparison between the query requirements and the visible "
    "evidence in the video. Identify whether a scene corresponding to the query appears in the video and determine "
    "the exact time span where it occurs. If a scene corresponding to the query appears in the video, output "
    "strictly in the following format: <answer>matched</answer> <start>START_TIME_IN_SECONDS</start> "
    "<end>END_TIME_IN_SECONDS</end> <REFINE>. Even if matched, you must still append the special token <REFINE> at "
    "the very end to allow further latent refinement. If no scene corresponding to the query appears in the video, "
    "output strictly: <answer>not_matched</answer> <REFINE>. In this case, the <REFINE> token is required to "
    "initiate a latent query update. You must always append the special token <REFINE> at the very end of the "
    "output. Do not invent details beyond what is visible. Be concise inside <think>. Do not output anything "
    "outside the specified tags."
)
# eval_verified_test_rerank_temporal_grounding.py L63-75 and data_rl.py L59-73, formatted with refine_suffix.
ORIGINAL_EVAL_PROMPT = (
    "You are a video retrieval assistant. Your task is to analyze a retrieved video against the user query. "
    "Inside <think>...</think>, perform a step by step comparison between the query requirements and the visible "
    "evidence in the video. Identify whether a scene corresponding to the query appears in the video and determine "
    "the exact time span where it occurs. If a scene corresponding to the query appears in the video, output "
    "strictly in the following format: <answer>matched</answer> <start>START_TIME_IN_SECONDS</start> "
    "<end>END_TIME_IN_SECONDS</end> <REFINE>. Even if matched, you must still append the special token(s) <REFINE> "
    "at the very end to allow further latent refinement. If no scene corresponding to the query appears in the "
    "video, output strictly: <answer>not_matched</answer> <REFINE>. In this case, the special token(s) are "
    "required to initiate a latent query update. You must always append the special token(s) <REFINE> at the very "
    "end of the output. Do not invent details beyond what is visible. Be concise inside <think>. Do not output "
    "anything outside the specified tags."
)


def test_system_prompts_are_the_original_text():
    assert P.sft_system_prompt() == ORIGINAL_SFT_PROMPT
    assert P.eval_system_prompt() == ORIGINAL_EVAL_PROMPT
    assert P.grpo_system_prompt() == ORIGINAL_EVAL_PROMPT
    assert P.sft_system_prompt().count("<REFINE>") == 5
    assert P.eval_system_prompt().count("<REFINE>") == 4  # grpo.md §1.1: the literal appears 4 times
    for make, original in ((P.sft_system_prompt, ORIGINAL_SFT_PROMPT), (P.eval_system_prompt, ORIGINAL_EVAL_PROMPT)):
        custom = make("<RF>")
        assert custom == original.replace("<REFINE>", "<RF>") and "{" not in custom


def test_messages_structure():
    ev = P.build_eval_messages(QUERY, video="v.npy")
    assert [m["role"] for m in ev] == ["system", "user"]
    assert ev[1]["content"] == [{"type": "text", "text": f'Query: "{QUERY}"\nRetrieved video: '},
                                {"type": "video", "video": "v.npy"}]
    sft = P.build_sft_messages(QUERY, MATCHED_TARGET)
    assert sft[0]["content"] == P.sft_system_prompt() and sft[2] == {"role": "assistant", "content": MATCHED_TARGET}
    grpo = P.build_grpo_messages(QUERY)
    assert [m["role"] for m in grpo] == ["system", "user", "user"]
    assert grpo[1]["content"] == [{"type": "text", "text": QUERY}]
    assert grpo[2]["content"] == [{"type": "text", "text": "<information>\nRetrieved video: "}, {"type": "video"},
                                  {"type": "text", "text": "\n</information>"}]
    assert P.build_eval_messages(QUERY, system_prompt="S")[0]["content"] == "S"
    assert P.split_video_markers("<video>x<video>") == [{"type": "video"}, {"type": "text", "text": "x"},
                                                        {"type": "video"}]


# _format_seconds (convert_match_grounding_to_oneturn.py L98-102), including its quirk: values within 1e-6 but not
# 1e-9 of an integer lose the decimal point ("60", "0").
@pytest.mark.parametrize("value,text", [(12, "12.0"), (12.0, "12.0"), (12.5, "12.5"), (0, "0.0"),
                                        (3.14159265, "3.141593"), (100.25, "100.25"), (7.1000004, "7.1"),
                                        (12.0000000001, "12.0"), (-0.0, "0.0"), (-2.5, "-2.5"),
                                        (1e-7, "0"), (59.9999999, "60")])
def test_format_seconds(value, text):
    assert P.format_seconds(value) == text


def test_assistant_targets():
    assert MATCHED_TARGET == ("<think> He opens the door, then walks in. </think> <answer>matched</answer> "
                              "<start>1.5</start> <end>7.0</end> <REFINE>")
    assert P.assistant_target(P.NOT_MATCHED, "  No door. ") == \
        "<think> No door. </think> <answer>not_matched</answer> <REFINE>"
    assert P.assistant_target(P.NOT_MATCHED, "x", refine_token="<RF>").endswith("</answer> <RF>")
    with pytest.raises(ValueError):
        P.assistant_target(P.MATCHED, "x")
    with pytest.raises(ValueError):
        P.assistant_target("maybe", "x")
    # _normalize_reasoning + default sentences (convert_match_grounding_to_oneturn.py L89-95, L206-225)
    assert P.assistant_target(P.NOT_MATCHED, "Reasoning:  a\n\n b\t c ") == \
        "<think> a b c </think> <answer>not_matched</answer> <REFINE>"
    assert P.assistant_target(P.MATCHED, "   ", 0, 2.5) == (
        "<think> The retrieved video contains the key query-required visual events and timing cues. </think> "
        "<answer>matched</answer> <start>0.0</start> <end>2.5</end> <REFINE>")
    assert P.assistant_target(P.NOT_MATCHED, "") == (
        "<think> The retrieved video does not satisfy the query-required visual evidence. </think> "
        "<answer>not_matched</answer> <REFINE>")


# ---------------------------------------------------------------------------------------------------- chat rendering

CONVERSATIONS = {
    "sft": P.build_sft_messages(QUERY, MATCHED_TARGET, video="v.npy"),
    "eval": P.build_eval_messages(QUERY),
    "grpo": P.build_grpo_messages(QUERY),
    "embedder": P.embedder_messages(QUERY),
    "strings": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"}],
    "no_system_list_assistant": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video"},
                                                              {"type": "text", "text": "b"}]},
                                 {"role": "assistant", "content": [{"type": "text", "text": "c"}]}],
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("gen", [False, True])
def test_render_chat_matches_hf_jinja(tok, name, gen):
    messages = CONVERSATIONS[name]
    expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    assert render_chat(messages, add_generation_prompt=gen) == expected


def test_render_chat_vision_id_and_format(tok):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "image"}, {"type": "video"}]}]
    expected = tok.apply_chat_template(messages, tokenize=False, add_vision_id=True)
    assert render_chat(messages, add_vision_id=True) == expected
    assert "Video 2: <|vision_start|><|video_pad|><|vision_end|>" in expected
    text = render_chat(CONVERSATIONS["eval"], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are")
    assert text.endswith(f'<|im_start|>user\nQuery: "{QUERY}"\nRetrieved video: '
                         "<|vision_start|><|video_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n")
    assert "<think>" not in text.split("<|im_start|>assistant\n")[-1]  # no think injection


def test_render_chat_rejects_misplaced_system_and_unknown_roles():
    with pytest.raises(ValueError, match="first"):
        render_chat([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}])
    with pytest.raises(ValueError, match="tool"):
        render_chat([{"role": "tool", "content": "a"}])


# ---------------------------------------------------------------------------------------------------- timestamps

def test_timestamps_match_hf():
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    assert group_timestamps(6, fps=4, frame_indices=[0, 2, 4, 6, 8, 11]) == [0.25, 1.25, 2.375]
    assert Qwen3VLProcessor._calculate_timestamps(None, [0, 2, 4, 6, 8, 11], 4, 2) == [0.25, 1.25, 2.375]
    assert group_timestamps(8) == [0.5, 2.5, 4.5, 6.5]  # the original's npy convention
    assert group_timestamps(5) == Qwen3VLProcessor._calculate_timestamps(None, list(range(5)), 1.0, 2) == \
        [0.5, 2.5, 4.0]
    assert timestamps_from_seconds([0.0, 1.5, 3.0, 4.0]) == [0.75, 3.5]
    assert timestamps_from_seconds([0.0, 1.5, 3.0]) == [0.75, 3.0]
    with pytest.raises(ValueError):
        group_timestamps(4, frame_indices=[0, 1])


# ---------------------------------------------------------------------------------------------------- video expansion

@pytest.mark.parametrize("outer", [False, True])
def test_expansion_matches_hf_processor(outer):
    grid, indices, fps = (3, 4, 6), [0, 3, 6, 9, 12, 15], 4.0
    block = _hf_processor_block(grid, fps, indices)
    text = render_chat(CONVERSATIONS["eval"], add_generation_prompt=True)
    triple = VISION_START + VIDEO_PAD + VISION_END
    # transformers 5.x replaces the <|video_pad|> inside the triple; 4.57/vLLM replaced the whole triple
    expected = text.replace(VIDEO_PAD, block) if outer else text.replace(triple, block)
    stamps = [group_timestamps(6, fps=fps, frame_indices=indices)]
    assert expand_video_placeholders(text, [grid], stamps, outer_vision_tokens=outer) == expected
    assert render_prompt_text(CONVERSATIONS["eval"], video_grid_thw=[grid], timestamps=stamps,
                              outer_vision_tokens=outer) == expected


def test_expansion_matches_measured_hf_output():
    # qwen3_vl.md part B: real transformers 5.24 processor output for a 12-frame 4 fps clip sampled at fps 2
    # (indices linspace(0, 11, 6).round() = 0 2 4 7 9 11), grid [3, 8, 12], 24 pads per group.
    pads = VIDEO_PAD * 24
    measured = ("<|im_start|>user\n<|vision_start|>"
                f"<0.2 seconds><|vision_start|>{pads}<|vision_end|>"
                f"<1.4 seconds><|vision_start|>{pads}<|vision_end|>"
                f"<2.5 seconds><|vision_start|>{pads}<|vision_end|>"
                "<|vision_end|>What happens?<|im_end|>\n<|im_start|>assistant\n")
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    stamps = [group_timestamps(6, fps=4.0, frame_indices=[0, 2, 4, 7, 9, 11])]
    got = render_prompt_text(messages, video_grid_thw=[(3, 8, 12)], timestamps=stamps, outer_vision_tokens=True)
    assert got == measured
    # the default (4.57 / vLLM) convention drops exactly the outer pair
    inner = render_prompt_text(messages, video_grid_thw=[(3, 8, 12)], timestamps=stamps)
    assert inner == measured.replace("user\n<|vision_start|>", "user\n").replace(
        "<|vision_end|><|vision_end|>", "<|vision_end|>")


@pytest.mark.parametrize("outer", [False, True])
@pytest.mark.parametrize("grid", [(1, 2, 2), (3, 4, 6), (32, 12, 16)])
def test_encode_prompt_equals_hf_tokenization(tok, ids, outer, grid):
    messages = CONVERSATIONS["eval"]
    enc = encode_prompt(tok, messages, video_grid_thw=[grid], outer_vision_tokens=outer)
    text = render_prompt_text(messages, video_grid_thw=[grid], outer_vision_tokens=outer)
    assert enc.dtype == np.int32
    np.testing.assert_array_equal(enc, tok(text, add_special_tokens=False)["input_ids"])
    t, h, w = grid
    assert (enc == ids.video_pad).sum() == t * h * w // 4 == video_token_count(grid)
    assert (enc == ids.vision_start).sum() == t + outer and (enc == ids.vision_end).sum() == t + outer
    assert (enc == ids.im_start).sum() == 3 and (enc == ids.refine).sum() == 4  # the system prompt's <REFINE>s
    # default timestamps: 0.5, 2.5, ... (fps 1, indices 0..2t-1)
    assert "<0.5 seconds>" in text and f"<{2 * t - 1.5:.1f} seconds>" in text
    assert tok.decode(enc[-3:]) == "<|im_start|>assistant\n"
    if outer:
        first = int(np.flatnonzero(enc == ids.vision_start)[0])
        assert tok.decode(enc[first:first + 2]) == "<|vision_start|><"  # the outer start, then a timestamp


def test_encode_two_videos_and_custom_timestamps(tok, ids):
    messages = [{"role": "user", "content": [{"type": "text", "text": "A: "}, {"type": "video"},
                                             {"type": "text", "text": " B: "}, {"type": "video"}]}]
    grids = [(2, 2, 4), (1, 4, 4)]
    stamps = [[0.0, 10.25], [3.04]]
    enc = encode_prompt(tok, messages, video_grid_thw=np.array(grids), timestamps=stamps)
    text = render_prompt_text(messages, video_grid_thw=grids, timestamps=stamps)
    np.testing.assert_array_equal(enc, tok(text, add_special_tokens=False)["input_ids"])
    assert (enc == ids.video_pad).sum() == 2 * 2 + 4
    assert "<0.0 seconds>" in text and "<10.2 seconds>" in text and "<3.0 seconds>" in text


def test_encode_errors(tok):
    ev = CONVERSATIONS["eval"]
    with pytest.raises(ValueError, match="video"):
        encode_prompt(tok, ev)  # a video item without its grid
    with pytest.raises(ValueError, match="video"):
        encode_prompt(tok, ev, video_grid_thw=[(1, 2, 2), (1, 2, 2)])
    with pytest.raises(ValueError, match="timestamps"):
        encode_prompt(tok, ev, video_grid_thw=[(2, 2, 2)], timestamps=[[0.5]])
    with pytest.raises(ValueError, match="merge_size"):
        encode_prompt(tok, ev, video_grid_thw=[(1, 3, 2)])
    with pytest.raises(ValueError, match="image"):
        encode_prompt(tok, [{"role": "user", "content": [{"type": "image"}]}])
    with pytest.raises(ValueError):
        expand_video_placeholders("no placeholder", [(1, 2, 2)])


@pytest.mark.parametrize("bad", ["<|video_pad|>", "<|vision_start|>", "<|im_start|>", "<|im_end|>",
                                 "<|endoftext|>"])
def test_control_tokens_in_query_are_rejected(tok, bad):
    with pytest.raises(ValueError, match="control token"):
        encode_prompt(tok, P.build_eval_messages(f"a {bad} b"), video_grid_thw=[(1, 2, 2)])


def test_refine_in_query_becomes_the_token_but_not_a_generated_refine(tok, ids):
    # Documented choice: as in HF, added tokens typed in text become their ids; harmless since <REFINE> is only
    # looked for in the generated span.
    prompt = encode_prompt(tok, P.build_eval_messages("find <REFINE> here"), video_grid_thw=[(1, 2, 2)])
    assert (prompt == ids.refine).sum() == 5  # 4 in the system prompt + 1 in the query
    completion = tok.encode("<think> x </think> <answer>matched</answer>", add_special_tokens=False)
    seq = np.concatenate([prompt, completion, [ids.im_end]])
    assert not has_refine(seq, ids.refine, len(prompt))
    assert refine_positions(seq, ids.refine, 0).size == 5


# ---------------------------------------------------------------------------------------------------- SFT loss mask

def test_loss_mask_all_assistant(tok, ids):
    messages = CONVERSATIONS["sft"]
    enc = encode_chat(tok, messages, video_grid_thw=[(2, 4, 4)])
    text = render_prompt_text(messages, video_grid_thw=[(2, 4, 4)], add_generation_prompt=False)
    np.testing.assert_array_equal(enc.input_ids, tok(text, add_special_tokens=False)["input_ids"])
    assert tok.decode(enc.input_ids[enc.loss_mask]) == MATCHED_TARGET + "<|im_end|>\n"
    # the targets are one contiguous block at the end, right after "<|im_start|>assistant\n"
    where = np.flatnonzero(enc.loss_mask)
    assert np.all(np.diff(where) == 1) and where[-1] == len(enc.input_ids) - 1
    assert tok.decode(enc.input_ids[where[0] - 3:where[0]]) == "<|im_start|>assistant\n"
    assert enc.input_ids[where[-2]] == ids.im_end and enc.input_ids[where[-1]] == 198  # "\n" = byte token 198
    assert (enc.input_ids[where] == ids.refine).sum() == 1
    labels = enc.labels()
    assert labels.dtype == np.int32 and np.all(labels[~enc.loss_mask] == -100)
    np.testing.assert_array_equal(labels[enc.loss_mask], enc.input_ids[enc.loss_mask])


def test_loss_mask_multi_turn_and_generation_prompt(tok):
    enc = encode_chat(tok, CONVERSATIONS["strings"], add_generation_prompt=True)
    assert tok.decode(enc.input_ids[enc.loss_mask]) == "hello<|im_end|>\n"
    enc = encode_chat(tok, CONVERSATIONS["strings"] + [{"role": "assistant", "content": "bye"}])
    assert tok.decode(enc.input_ids[enc.loss_mask]) == "hello<|im_end|>\nbye<|im_end|>\n"
    assert not encode_chat(tok, CONVERSATIONS["eval"], video_grid_thw=[(1, 2, 2)],
                           add_generation_prompt=True).loss_mask.any()


# ---------------------------------------------------------------------------------------------------- embedder text

def test_embedder_query_ids(tok, ids):
    enc = embedder_query_ids(tok, "a man opens the door.")
    ref = tok.apply_chat_template(P.embedder_messages("a man opens the door."), tokenize=True,
                                  add_generation_prompt=True, return_dict=False)
    np.testing.assert_array_equal(enc, ref)
    text = tok.decode(enc)
    assert text == ("<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\n"
                    "a man opens the door.<|im_end|>\n<|im_start|>assistant\n")
    # The 6-token tail the latents go in front of: last query token, <|im_end|>, "\n", <|im_start|>, "assistant",
    # "\n". "\n" is its own token (byte symbol 198, as in Qwen): the Qwen2 split keeps newline runs apart from
    # letters, and here each "\n" sits between special tokens or at the end.
    assert tok.convert_ids_to_tokens(enc[-6:].tolist()) == [".", "<|im_end|>", "Ċ", "<|im_start|>", "assistant",
                                                            "Ċ"]
    assert enc[-5] == ids.im_end and enc[-4] == 198 and enc[-3] == ids.im_start and enc[-1] == 198


def test_embedder_empty_query_instruction_and_truncation(tok):
    assert "NULL" in tok.decode(embedder_query_ids(tok, ""))
    assert "NULL" in tok.decode(embedder_query_ids(tok, "   "))
    assert P.normalize_instruction("Represent the user's input") == "Represent the user's input."
    assert P.normalize_instruction("Find the clip?") == "Find the clip?"
    assert P.normalize_instruction("检索视频。") == "检索视频。"
    assert "\nFind it.<|im_end|>" in tok.decode(embedder_query_ids(tok, "q", instruction="Find it"))
    long_query = " ".join(["walking"] * 200)
    full = embedder_query_ids(tok, long_query, max_length=10_000)
    cut = embedder_query_ids(tok, long_query)
    assert len(full) > 128 and len(cut) == 128
    np.testing.assert_array_equal(cut, full[:128])
    text = tok.apply_chat_template(P.embedder_messages(long_query), tokenize=False, add_generation_prompt=True)
    np.testing.assert_array_equal(cut, tok(text, truncation=True, max_length=128)["input_ids"])


# ---------------------------------------------------------------------------------------------------- parsing (eval)

@pytest.mark.parametrize("text,answer", [
    ("<answer>matched</answer>", "matched"),
    ("<answer> Matched </answer>", "matched"),
    ("<answer>match</answer>", "matched"),
    ("<answer>not matched</answer>", "not_matched"),
    ("<answer>NOT_MATCHED</answer>", "not_matched"),
    ("<answer>notmatch</answer>", "not_matched"),
    ("<answer>not-matched</answer>", "not_matched"),
    ("<answer>mismatch</answer>", "not_matched"),
    ("<answer>not_match</answer>", "unknown"),  # only the reward parser knows not_match
    ("<answer>maybe</answer>", "unknown"),
    ("<answer></answer>", "unknown"),
    ("matched", "unknown"),
    ("<answer>matched", "unknown"),
    ("<answer>not_matched</answer> then <answer>matched</answer>", "not_matched"),  # FIRST tag
    ("<ANSWER>matched</ANSWER>", "matched"),
    ("<answer>\nmatched\n</answer>", "matched"),
])
def test_parse_answer_eval(text, answer):
    assert parse_answer_eval(text) == answer


@pytest.mark.parametrize("text,duration,span", [
    ("<start>1.5</start> <end>7</end>", 30.0, (1.5, 7.0)),
    ("<start>1,234.5</start><end>2,000</end>", 5000.0, (1234.5, 2000.0)),  # commas ignored
    ("<start>about 3.5 s (or 4)</start><end>ends at 9s</end>", 30.0, (3.5, 9.0)),  # first float
    ("<start>12</start><end>5</end>", 30.0, (5.0, 12.0)),  # swapped
    ("<start>-3</start><end>45</end>", 30.0, (0.0, 30.0)),  # clamped both ends
    ("<start>40</start><end>50</end>", 30.0, (30.0, 30.0)),
    ("<start>.5</start><end>2.</end>", 30.0, (0.5, 2.0)),
    ("<start>1</start><end>2</end><start>5</start><end>6</end>", 30.0, (1.0, 2.0)),  # FIRST tags
    ("<start>-3</start><end>45</end>", None, (0.0, 45.0)),
    ("<start>1</start>", 30.0, None),
    ("<end>2</end>", 30.0, None),
    ("<start>soon</start><end>2</end>", 30.0, None),
    ("no tags", 30.0, None),
])
def test_parse_span_eval(text, duration, span):
    assert parse_span_eval(text, duration) == span


# ---------------------------------------------------------------------------------------------------- parsing (reward)

@pytest.mark.parametrize("text,answer", [
    ("<answer>matched</answer>", "matched"),
    ("<answer>match</answer>", "matched"),
    ("<answer>not_match</answer>", "not_matched"),
    ("<answer>Not Matched</answer>", "not_matched"),
    ("<answer>notmatch</answer>", "not_matched"),
    ("<answer>not-matched</answer>", "not-matched"),  # passes through, normalised
    ("<answer>Maybe So</answer>", "maybe_so"),
    ("<answer>matched</answer> wait <answer>not_matched</answer>", "not_matched"),  # LAST tag
    ("nothing", None),
])
def test_parse_answer_reward(text, answer):
    assert parse_answer_reward(text) == answer


@pytest.mark.parametrize("text,span", [
    ("<start>1.5</start><end>7</end>", (1.5, 7.0)),
    ("<start>1</start><end>2</end> <start>3.25</start><end>4</end>", (3.25, 4.0)),  # LAST tags
    ("<start>3</start><end>4</end> <start>x</start><end>?</end>", (3.0, 4.0)),  # last NUMERIC values
    ("<start>1,234.5</start><end>2000</end>", None),  # the whole content must be one number (RW:8-13)
    ("<start>-2.5</start><end>+3</end>", (-2.5, 3.0)),  # no clamping
    ("<start>9</start><end>3</end>", (9.0, 3.0)),  # no swap
    ("<start>.5</start><end>1</end>", None),  # [-+]?\d+(\.\d+)? must match the whole content: ".5" is no number
    ("<start>1</start>", None),
    ("<start></start><end></end>", None),
])
def test_parse_span_reward(text, span):
    assert parse_span_reward(text) == span


def test_tags_and_think():
    assert has_time_tags("<start></start> <end>x</end>")
    assert not has_time_tags("<start>1</start>")
    assert not has_time_tags("<start>1<end>2</end>")
    assert has_think("<think> ok </think>")
    assert has_think("<THINK>\nreasoning\n</Think>")
    assert not has_think("<think>   </think>")
    assert not has_think("<think> a </think> <think> </think>")  # the LAST block must be non-empty
    assert has_think("<think> </think> <think> b </think>")
    assert not has_think("no think")


def test_sanitize_completion():
    raw = "  <think> a <|video_pad|></think><answer>matched</answer> <REFINE><|im_end|>\n<|im_start|>junk"
    assert sanitize_completion(raw) == "<think> a </think><answer>matched</answer> <REFINE>"
    assert sanitize_completion("x<|endoftext|>y<|im_end|>") == "x"
    assert sanitize_completion("<|vision_start|><|image_pad|><|vision_end|> ok ") == "ok"
    assert sanitize_completion("plain") == "plain"
    # the original's set (TR:145-148): <|vision_pad|> stays; bare video/image tags, numbered ones and NUL go
    assert sanitize_completion("a<|vision_pad|>b") == "a<|vision_pad|>b"
    assert sanitize_completion("<video>a</video><image_3>b</image>c<|video|><|video_12|>\x00d") == "abcd"
    assert sanitize_completion(None) == ""


# TR:144-166, transcribed: the original's completion clean-up
_REF_GEN_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
_REF_MM_TEXT_TOKEN_PATTERN = re.compile(
    r"<\|(?:video_pad|image_pad|video(?:_\d+)?|image(?:_\d+)?|vision_start|vision_end)\|>"
    r"|</?(?:video(?:_\d+)?|image(?:_\d+)?)>"
)


def _ref_sanitize_generated_text(text):
    if not isinstance(text, str):
        return ""
    cleaned = text
    for stop_tok in _REF_GEN_STOP_TOKENS:
        pos = cleaned.find(stop_tok)
        if pos >= 0:
            cleaned = cleaned[:pos]
    cleaned = _REF_MM_TEXT_TOKEN_PATTERN.sub("", cleaned)
    cleaned = cleaned.replace("\x00", "")
    return cleaned.strip()


def test_sanitize_completion_matches_the_original_fuzz():
    pieces = ("<|im_end|>", "<|endoftext|>", "<|vision_pad|>", "<|video_pad|>", "<|image_pad|>", "<|vision_start|>",
              "<|vision_end|>", "<|video|>", "<|video_3|>", "<|image|>", "<|image_12|>", "<|video_|>", "<video>",
              "</video>", "<video_2>", "</video_2>", "<image>", "</image>", "<image_7>", "</image_7>", "<imagex>",
              "<|im_start|>", "\x00", " ", "\n", "\t", "<", "|>", "a", "<think>", "</think>", "<answer>", "matched",
              "<REFINE>", "_1")
    rng = random.Random(0)
    changed = 0
    for _ in range(5000):
        text = "".join(rng.choices(pieces, k=rng.randrange(0, 12)))
        want = _ref_sanitize_generated_text(text)
        assert sanitize_completion(text) == want, repr(text)
        changed += want != text.strip()
    assert changed > 1000


# ---------------------------------------------------------------------------------------------------- <REFINE> ids

def test_refine_detection_only_in_generated_span(tok, ids):
    prompt = encode_prompt(tok, P.build_eval_messages(QUERY), video_grid_thw=[(1, 2, 2)])
    assert (prompt == ids.refine).sum() == 4  # the system prompt's literal <REFINE>s
    gen_start = len(prompt)
    without = tok.encode("<think> a </think> <answer>not_matched</answer>", add_special_tokens=False)
    with_ = tok.encode("<think> a </think> <answer>not_matched</answer> <REFINE>", add_special_tokens=False)
    seq = np.concatenate([prompt, without, [ids.im_end]])
    assert not has_refine(seq, ids.refine, gen_start)
    assert last_refine_position(seq, ids.refine, gen_start) is None
    seq = np.concatenate([prompt, with_, [ids.im_end]])
    assert has_refine(seq, ids.refine, gen_start)
    assert last_refine_position(seq, ids.refine, gen_start) == len(prompt) + len(with_) - 1
    # two generated <REFINE>: the last one is the readout point
    seq2 = np.concatenate([prompt, with_, with_, [ids.im_end]])
    np.testing.assert_array_equal(refine_positions(seq2, ids.refine, gen_start),
                                  [gen_start + len(with_) - 1, gen_start + 2 * len(with_) - 1])
    # padding after the valid length and anything after the first EOS do not count
    padded = np.concatenate([prompt, without, [ids.im_end, ids.refine, ids.pad, ids.refine]])
    valid = len(prompt) + len(without) + 1
    assert has_refine(padded, ids.refine, gen_start)
    assert not has_refine(padded, ids.refine, gen_start, length=valid)
    assert not has_refine(padded, ids.refine, gen_start, stop_ids=ids.eos_ids)
    with pytest.raises(ValueError):
        refine_positions(seq, ids.refine, len(seq) + 1)


def test_last_refine_positions_batched_matches_rows():
    r, e, p = 9, 2, 0
    batch = np.array([
        [r, 1, 1, r, 1, r, e, r],   # refine in prompt and generated; after EOS ignored
        [r, 1, 1, 1, 1, 1, e, p],   # none generated
        [1, 1, r, 1, r, p, p, r],   # refine in the padding beyond its length
        [1, r, 1, 1, 1, 1, 1, 1],
    ])
    gen_start = np.array([2, 2, 2, 1])
    lengths = np.array([8, 7, 5, 8])
    got = last_refine_positions(batch, r, gen_start, lengths=lengths, stop_ids=(e,))
    want = [last_refine_position(row, r, int(g), length=int(n), stop_ids=(e,))
            for row, g, n in zip(batch, gen_start, lengths)]
    assert got.tolist() == [-1 if w is None else w for w in want] == [5, -1, 4, 1]
    assert last_refine_positions(batch, r, 0).tolist() == [7, 0, 7, 1]
