"""The GRPO rewards (vsr1_jax/train/rewards.py) and the reward-side parsers (vsr1_jax/processing/parsing.py)
against a plain-Python transcription of the original's reward code, on random and hand-written cases."""
from __future__ import annotations

import math
import random
import re

import ml_collections
import numpy as np
import pytest

from vsr1_jax.processing.parsing import has_think, has_time_tags, parse_answer_reward, parse_span_reward
from vsr1_jax.train import rewards as R

# ================================================================================================================
# REFERENCE: a plain-Python transcription of videosearch_r1/reward/reward.py (RW) and of the trainer's answer parse
# and turn record (TR:421-432, TR:4322-4373), written to follow the original line by line. The code under test must
# agree with it; nothing below imports from vsr1_jax.
# ================================================================================================================

_REF_THINK = re.compile(r"<think>([\s\S]*?)</think>", re.IGNORECASE)                             # RW:5
_REF_START_ANY = re.compile(r"<start>\s*[\s\S]*?\s*</start>", re.IGNORECASE)                     # RW:6
_REF_END_ANY = re.compile(r"<end>\s*[\s\S]*?\s*</end>", re.IGNORECASE)                           # RW:7
_REF_START_NUM = re.compile(r"<start>\s*([-+]?\d+(?:\.\d+)?)\s*</start>", re.IGNORECASE)         # RW:8-10
_REF_END_NUM = re.compile(r"<end>\s*([-+]?\d+(?:\.\d+)?)\s*</end>", re.IGNORECASE)               # RW:11-13


def ref_extract_answer(text):  # TR:421-432
    if not text:
        return ""
    hits = re.findall(r"<answer>\s*(.*?)\s*</answer>", text, flags=re.IGNORECASE | re.DOTALL)
    if not hits:
        return ""
    val = hits[-1].strip().lower().replace(" ", "_")
    if val in ("match", "matched"):
        return "matched"
    if val in ("not_match", "not_matched", "notmatch"):
        return "not_matched"
    return val


def ref_span(text):  # RW:25-39
    if not isinstance(text, str):
        return None
    s_hits, e_hits = _REF_START_NUM.findall(text), _REF_END_NUM.findall(text)
    if not s_hits or not e_hits:
        return None
    try:
        s, e = float(s_hits[-1]), float(e_hits[-1])
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(s) and math.isfinite(e)):
        return None
    return s, e


def ref_has_tags(text):  # RW:42-45
    if not isinstance(text, str):
        return False
    return bool(_REF_START_ANY.search(text) and _REF_END_ANY.search(text))


def ref_gt_span(raw):  # RW:48-61
    if not isinstance(raw, (list, tuple)) or len(raw) < 2:
        return None
    try:
        s, e = float(raw[0]), float(raw[1])
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(s) and math.isfinite(e)):
        return None
    if e <= s:
        return None
    return s, e


def ref_trainer_gt_time(raw):  # the trainer's own _normalize_gt_span before reward_meta (TR: _generate_..._search)
    if not isinstance(raw, (list, tuple)) or len(raw) < 2:
        return None
    try:
        return [float(raw[0]), float(raw[1])]
    except (TypeError, ValueError):
        return None


def ref_think(text):  # RW:64-79
    if not isinstance(text, str):
        return 0.0
    m = _REF_THINK.findall(text)
    if not m:
        return 0.0
    return 1.0 if str(m[-1]).strip() else 0.0


def ref_final(turns):  # RW:16-22
    if not turns:
        return None
    for t in reversed(turns):
        if not t.get("shadow"):
            return t
    return turns[-1]


def ref_answer_binary(meta, solution):  # RW:82-105
    turns = meta.get("turns", [])
    if not turns:
        return 0.0
    final = ref_final(turns)
    rid = str(final.get("retrieved_id", "") or "")
    gt = str(solution or "") or str(meta.get("gt_video", "") or "") or str(final.get("gt_video", "") or "")
    label = "matched" if rid and rid == gt else "not_matched"
    return 1.0 if str(final.get("answer", "") or "") == label else -1.0


def ref_time_format(text, meta):  # RW:108-135
    final = ref_final(meta.get("turns", []))
    if final is None:
        return 0.0
    a = str(final.get("answer", "") or "").strip().lower()
    tags = ref_has_tags(text)
    if a == "not_matched":
        return 1.0 if not tags else 0.0
    if a == "matched":
        return 1.0 if tags else 0.0
    return 0.0


def ref_time_iou(text, meta):  # RW:138-191
    final = ref_final(meta.get("turns", []))
    if final is None:
        return 0.0
    if ("correct_accept" in final) or ("correct_reject" in final):
        if not (bool(final.get("correct_accept", False)) or bool(final.get("correct_reject", False))):
            return 0.0
    a = str(final.get("answer", "") or "").strip().lower()
    tags = ref_has_tags(text)
    if a == "not_matched":
        return 0.5 if not tags else 0.0
    if a != "matched" or not tags:
        return 0.0
    pred, gt = ref_span(text), ref_gt_span(meta.get("gt_time"))
    if pred is None or gt is None:
        return 0.0
    ps, pe = pred
    gs, ge = gt
    if pe <= ps:
        return 0.0
    inter = max(0.0, min(pe, ge) - max(ps, gs))
    union = max(pe, ge) - min(ps, gs)
    iou = inter / union if union > 0 else 0.0
    return float(max(0.0, min(1.0, iou)))


def ref_refine_presence(meta):  # RW:218-230
    final = ref_final(meta.get("turns", []))
    if final is not None and "has_refine_token" in final:
        return 1.0 if bool(final.get("has_refine_token", False)) else 0.0
    return 1.0 if bool(meta.get("improve_has_refine", False)) else 0.0


def ref_meta(text, retrieved_id, gt_id, gt_time, has_refine):  # the turn record of TR:4322-4373, one turn
    answer = ref_extract_answer(text)
    turn = {"retrieved_id": retrieved_id, "answer": answer, "has_refine_token": has_refine,
            "correct_accept": retrieved_id == gt_id and answer == "matched",
            "correct_reject": retrieved_id != gt_id and answer == "not_matched"}
    return {"turns": [turn], "gt_video": gt_id, "gt_time": ref_trainer_gt_time(gt_time)}


def ref_quality(q_final, q_orig, v_gt, v_negs, *, has_refine, tau, variant, penalty, scale):
    """TR:3964-4072 + RW:194-215 with plain numpy, one sample, explicit softmax."""
    if not has_refine:
        return penalty
    unit = lambda v: np.asarray(v, np.float64) / max(np.linalg.norm(v), 1e-12)
    qf, qo, g = unit(q_final), unit(q_orig), unit(v_gt)
    negs = [unit(v) for v in v_negs]
    if not negs:
        return 0.0  # quality never set -> meta.get("query_refine_quality", 0.0)

    def prob(q):
        logits = np.array([q @ g] + [q @ v for v in negs]) / tau
        e = np.exp(logits - logits.max())
        return e[0] / e.sum()

    if variant == "delta":
        return prob(qf) - prob(qo)
    if variant == "p_after":
        return prob(qf)
    return ((qf @ g - max(qf @ v for v in negs)) - (qo @ g - max(qo @ v for v in negs))) * scale

# ================================================================================================================
# Random completions
# ================================================================================================================

_TAG_CASES = (str.lower, str.upper, str.capitalize, lambda s: "".join(
    c.upper() if i % 2 else c for i, c in enumerate(s)))
_ANSWERS = ("matched", "match", "not_matched", "not_match", "notmatch", "not matched", "Not Matched", "MATCHED",
            " matched ", "\nnot_matched\t", "not-matched", "mismatch", "maybe", "", "   ", "not  matched",
            "not\tmatched", "matched.", "yes", "<answer>matched")
_NUMBERS = ("0", "1", "2.5", "3", "5", "10", "12.75", "-3", "+4", "-0.5", "007", "1.", ".5", "12s", "1,234.5",
            "1e3", "nan", "inf", "abc", "", "  7  ", "\n8\n", "3 4", "\u0663", "9" * 400, "2.50", "1 .5", "+-1")
_WORDS = ("the", "video", "shows", "a", "man", "<REFINE>", "\n", "  ", "answer", "start", "end", "<", ">", "/")


def _tag(rng, name):
    return rng.choice(_TAG_CASES)(name)


def _block(rng, name, content, clean=False):
    kind = 0.0 if clean else rng.random()
    o, c = f"<{_tag(rng, name)}>", f"</{_tag(rng, name)}>"
    if kind < 0.80:
        return o + content + c
    if kind < 0.86:
        return o + content                        # unclosed
    if kind < 0.90:
        return content + c                        # no opening tag
    if kind < 0.94:
        return c + content + o                    # reversed
    if kind < 0.97:
        return o + o + content + c                # nested opening
    return o + content + c + c                    # doubled closing


_VALID_NUMBERS = ("0", "1", "2.5", "3", "5", "10", "12.75", "20", " 4 ", "-1", "+6", "2.50")


def random_completion(rng: random.Random) -> str:
    """Mostly malformed text; a third of it well-formed (closed tags, a real label, numeric times) so that every
    branch of the IoU reward is reached."""
    clean = rng.random() < 0.35
    parts = []
    if rng.random() < 0.8:
        think = rng.choice(("", "  ", "\n", "I see a man.", " the video shows\n a door ", "<think>x"))
        parts.append(_block(rng, "think", think, clean))
    for _ in range(1 if clean else rng.choice((0, 1, 1, 1, 2))):
        answers = ("matched", "not_matched", "Matched", " not matched ") if clean else _ANSWERS
        parts.append(_block(rng, "answer", rng.choice(answers), clean))
    for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
        pad = lambda: rng.choice(("", "", " ", "\n", " \t"))
        numbers = _VALID_NUMBERS if clean and rng.random() < 0.9 else _NUMBERS
        if clean or rng.random() < 0.5:
            parts.append(_block(rng, "start", pad() + rng.choice(numbers) + pad(), clean))
        if clean or rng.random() < 0.5:
            parts.append(_block(rng, "end", pad() + rng.choice(numbers) + pad(), clean))
    if rng.random() < 0.6:
        parts.append("<REFINE>")
    for _ in range(rng.randrange(3)):
        parts.insert(rng.randrange(len(parts) + 1), " ".join(rng.choices(_WORDS, k=rng.randrange(1, 5))))
    if not clean and rng.random() < 0.3:
        rng.shuffle(parts)
    return rng.choice(("", " ", "\n", "  ")).join(parts)


def random_gt_time(rng: random.Random):
    s, e = rng.choice((0.0, 1.0, 2.5, 3.0, 5.0, 10.0, 12.75)), rng.choice((0.0, 2.5, 3.0, 5.0, 10.0, 12.75, 20.0))
    kind = rng.random()
    if kind < 0.65:
        return [s, e]
    return rng.choice((None, [], [s], (s, e), [str(s), str(e)], ["a", e], [float("nan"), e], [s, float("inf")],
                       [s, e, 99.0], "3,5", [None, e], np.array([s, e])))


N_CASES = 12_000

# ================================================================================================================
# Parsers
# ================================================================================================================


def test_parsers_match_reference_fuzz():
    rng = random.Random(0)
    for _ in range(N_CASES):
        text = random_completion(rng)
        assert (parse_answer_reward(text) or "") == ref_extract_answer(text), text
        assert parse_span_reward(text) == ref_span(text), text
        assert has_time_tags(text) == ref_has_tags(text), text
        assert has_think(text) == bool(ref_think(text)), text


@pytest.mark.parametrize("text,answer", [
    ("<ANSWER>Matched</ANSWER>", "matched"),                       # tags in any case
    ("<Answer> not matched </answer>", "not_matched"),
    ("<answer>matched</answer><ANSWER>notmatch</Answer>", "not_matched"),  # the LAST tag, whatever its case
    ("<answer>\n match \n</answer>", "matched"),
    ("<answer>not  matched</answer>", "not__matched"),             # each space -> _
    ("<answer></answer>", ""),
    ("<answer>matched", None),
    ("", None),
])
def test_parse_answer_reward_cases(text, answer):
    assert parse_answer_reward(text) == answer


@pytest.mark.parametrize("text,span", [
    ("<START>1.5</START><End>7</End>", (1.5, 7.0)),                # tags in any case
    ("<start> \n 3 \t</start><end>4.25\n</end>", (3.0, 4.25)),     # whitespace around the number
    ("<start>12s</start><end>20</end>", None),                     # anything besides the number: no value
    ("<start>12.</start><end>20</end>", None),
    ("<start>1</start><start>12s</start><end>20</end>", (1.0, 20.0)),  # last NUMERIC tag
    ("<start><start>5</start><end>6</end>", (5.0, 6.0)),           # the regex runs over the text
    ("<start>-2.5</start><end>+3</end>", (-2.5, 3.0)),
    ("<start>" + "9" * 400 + "</start><end>1</end>", None),        # float overflow -> invalid
    ("<start>\u0663</start><end>4</end>", (3.0, 4.0)),             # \d and float() take any Unicode digit
    ("<start>1</start>", None),
])
def test_parse_span_reward_cases(text, span):
    assert parse_span_reward(text) == span


def test_time_tags_and_think_cases():
    assert has_time_tags("<START>x</START> <end></END>")
    assert not has_time_tags("</start>1<start> <end>2</end>")
    assert has_think("<THINK> a </think>")
    assert not has_think("<think> a </think><Think>\n</THINK>")
    for f in (has_time_tags, has_think):
        assert f(None) is False
    assert parse_span_reward(None) is None and parse_answer_reward(None) is None

# ================================================================================================================
# Rewards
# ================================================================================================================


def _random_ids(rng):
    gt = rng.choice(("v1", "v2", "vid_007")) if rng.random() < 0.97 else ""
    rid = rng.choice((gt, gt, "v1", "v2", "other", ""))
    return rid, gt


def test_text_rewards_match_reference_fuzz():
    rng = random.Random(1)
    counts = {"iou>0": 0, "iou=1": 0, "reject=0.5": 0}
    for _ in range(N_CASES):
        text = random_completion(rng)
        rid, gt = _random_ids(rng)
        gt_time, has_ref = random_gt_time(rng), rng.random() < 0.5
        if rng.random() < 0.25 and (span := ref_span(text)) is not None:
            gt_time = list(span) if rng.random() < 0.5 else [span[0], span[1] + rng.choice((0.0, 1.0, -0.5))]
        ref_gt = gt_time.tolist() if isinstance(gt_time, np.ndarray) else gt_time  # the original reads JSON lists
        meta = ref_meta(text, rid, gt, ref_gt, has_ref)
        answer = parse_answer_reward(text)
        assert R.answer_reward(answer, rid, gt) == ref_answer_binary(meta, gt), text
        assert R.think_reward(text) == ref_think(text), text
        assert R.time_format_reward(answer, text) == ref_time_format(text, meta), text
        iou = R.time_iou_reward(answer, text, rid, gt, gt_time)
        assert iou == ref_time_iou(text, meta), (text, rid, gt, gt_time)
        assert R.refine_reward(has_ref) == ref_refine_presence(meta)
        counts["iou>0"] += 0 < iou < 0.5 or 0.5 < iou
        counts["iou=1"] += iou == 1.0
        counts["reject=0.5"] += iou == 0.5
    assert all(v > 50 for v in counts.values()), counts  # the generator reaches every branch


def test_text_reward_edge_cases():
    ok = "<think> r </think> <answer>matched</answer> <start>2</start> <end>6</end> <REFINE>"
    a = parse_answer_reward(ok)
    assert R.answer_reward(a, "v", "v") == 1.0 and R.answer_reward(a, "w", "v") == -1.0
    assert R.answer_reward(None, "w", "v") == -1.0 and R.answer_reward("not_matched", "w", "v") == 1.0
    assert R.answer_reward("matched", "", "") == -1.0            # an empty id is never a match (RW:101)
    assert R.time_iou_reward("matched", ok, "", "", [2, 6]) == 1.0  # ... but counts as correct_accept (TR:4334)
    assert R.time_iou_reward(a, ok, "v", "v", [4, 8]) == pytest.approx(2 / 6)
    assert R.time_iou_reward(a, ok, "v", "v", [6, 9]) == 0.0      # touching spans
    assert R.time_iou_reward(a, ok, "v", "v", (2.0, 6.0)) == 1.0  # tie
    assert R.time_iou_reward(a, ok, "v", "v", np.array([2.0, 6.0])) == 1.0
    for bad in (None, [3], [6, 2], [4, 4], ["x", 5], [float("nan"), 5], [0, float("inf")], "2,6"):
        assert R.time_iou_reward(a, ok, "v", "v", bad) == 0.0, bad
    assert R.time_iou_reward(a, ok, "w", "v", [2, 6]) == 0.0       # wrong accept
    rev = ok.replace("<start>2</start> <end>6</end>", "<start>6</start> <end>2</end>")
    assert R.time_iou_reward(a, rev, "v", "v", [2, 6]) == 0.0      # pred end <= start
    assert R.time_iou_reward(a, ok.replace(">2<", ">1<").replace(">6<", ">30<"), "v", "v", [2, 6]) == pytest.approx(
        4 / 29)
    rej = "<think> r </think> <answer>not_matched</answer> <REFINE>"
    assert R.time_iou_reward("not_matched", rej, "w", "v", None) == 0.5
    assert R.time_iou_reward("not_matched", rej + "<START>1</START><end>x</end>", "w", "v", None) == 0.0
    assert R.time_iou_reward("not_matched", rej, "v", "v", None) == 0.0  # wrong reject
    assert R.time_format_reward("not_matched", rej) == 1.0 and R.time_format_reward("matched", rej) == 0.0
    assert R.time_format_reward("matched", ok) == 1.0 and R.time_format_reward("maybe", ok) == 0.0
    assert R.time_format_reward(None, rej) == 0.0
    assert R.think_reward(ok) == 1.0 and R.think_reward("<think> </think>") == 0.0
    assert R.refine_reward(True) == 1.0 and R.refine_reward(False) == 0.0

# ================================================================================================================
# Query-refine quality
# ================================================================================================================


def _random_vectors(rng: np.random.Generator, d=16):
    g = rng.normal(size=d)
    qo = g + rng.normal(scale=rng.uniform(0.2, 2.0), size=d)
    qf = g + rng.normal(scale=rng.uniform(0.2, 2.0), size=d)
    k = int(rng.integers(0, 7))
    negs = g[None] * rng.uniform(0, 1) + rng.normal(size=(k, d))
    scale = lambda x: x * rng.uniform(0.1, 10.0)  # the function normalises
    return scale(qf), scale(qo), scale(g), scale(negs)


@pytest.mark.parametrize("variant", R.QUALITY_VARIANTS)
def test_refine_quality_matches_direct_computation(variant):
    rng = np.random.default_rng({"delta": 0, "p_after": 1, "margin": 2}[variant])
    for _ in range(N_CASES):
        qf, qo, g, negs = _random_vectors(rng)
        tau, pen, scale = float(rng.choice([0.05, 0.1, 1.0])), float(rng.choice([0.0, -0.3])), float(
            rng.choice([1.0, 2.5]))
        has_ref = bool(rng.random() < 0.8)
        got = R.refine_quality_reward(qf, qo, g, negs, has_refine=has_ref, temperature=tau, variant=variant,
                                      no_refine_penalty=pen, margin_scale=scale)
        want = ref_quality(qf, qo, g, list(negs), has_refine=has_ref, tau=tau, variant=variant, penalty=pen,
                           scale=scale)
        assert got == pytest.approx(want, abs=1e-12, rel=1e-9)


@pytest.mark.parametrize("variant", R.QUALITY_VARIANTS)
def test_refine_quality_batched_with_mask(variant):
    rng = np.random.default_rng(3)
    n, k, d = 64, 6, 16
    qf, qo, g = rng.normal(size=(3, n, d))
    negs = rng.normal(size=(n, k, d)) * rng.uniform(0.5, 3.0, size=(n, k, 1))
    mask = rng.random((n, k)) < 0.6
    mask[:3] = False                                   # rows without negatives
    has_ref = rng.random(n) < 0.8
    got = R.refine_quality_rewards(qf, qo, g, negs, has_refine=has_ref, neg_mask=mask, variant=variant,
                                   no_refine_penalty=-0.3, margin_scale=2.0)
    for i in range(n):
        want = ref_quality(qf[i], qo[i], g[i], list(negs[i][mask[i]]), has_refine=bool(has_ref[i]), tau=0.1,
                           variant=variant, penalty=-0.3, scale=2.0)
        assert got[i] == pytest.approx(want, abs=1e-12, rel=1e-9)
    assert np.isfinite(got).all()


def test_refine_quality_edge_cases():
    e = np.eye(4)
    # the refined query lands on the GT: p_after = e^10 / (e^10 + e^0), p_before = 1 / (1 + 1) (q_orig between)
    q_orig = e[0] + e[1]
    got = R.refine_quality_reward(e[0], q_orig, e[0], e[1:2], has_refine=True)
    assert got == pytest.approx(1 / (1 + np.exp(-10.0)) - 0.5)
    assert R.refine_quality_reward(e[0], q_orig, e[0], e[1:2], has_refine=True, variant="margin",
                                   margin_scale=3.0) == pytest.approx(3.0)
    assert R.refine_quality_reward(None, q_orig, e[0], e[1:2], has_refine=True, no_refine_penalty=-0.3) == -0.3
    assert R.refine_quality_reward(e[0], q_orig, e[0], e[1:2], has_refine=False, no_refine_penalty=-0.3) == -0.3
    for v in R.QUALITY_VARIANTS:
        assert R.refine_quality_reward(e[0], q_orig, e[0], np.zeros((0, 4)), has_refine=True, variant=v) == 0.0
        assert R.refine_quality_reward(e[0], q_orig, e[0], None, has_refine=True, variant=v) == 0.0
    with pytest.raises(ValueError):
        R.refine_quality_reward(e[0], q_orig, e[0], e[1:2], has_refine=True, variant="lse")

# ================================================================================================================
# Weights, total, entry point
# ================================================================================================================


def _rewards_config() -> ml_collections.ConfigDict:
    # the shape and defaults of configs/_train.py `get_grpo_config().rewards` (grpo.md §4, S2 defaults)
    return ml_collections.ConfigDict(dict(answer=1.6, think=0.05, time_format=0.05, time_iou=0.35, refine=0.8,
                                          refine_quality=0.5, no_refine_penalty=0.0, quality_temperature=0.1,
                                          quality="delta", margin_scale=1.0))


def test_weights_from_the_train_config():
    train = pytest.importorskip("configs._train")
    cfg = train.get_grpo_config().rewards
    assert cfg.to_dict() == _rewards_config().to_dict()
    assert R.RewardWeights.from_config(cfg) == R.RewardWeights()


def test_weights_from_config_and_dataset_tables():
    cfg = _rewards_config()
    w = R.RewardWeights.from_config(cfg)
    assert w == R.RewardWeights()
    assert list(w.vector()) == [1.6, 0.05, 0.05, 0.35, 0.8, 0.5]
    table = {  # grpo.md §4: answer, time_iou, refine, refine_quality, no_refine_penalty per dataset
        "activitynet": (1.2, 0.45, 0.8, 0.8, -0.3), "charades-sta": (1.6, 0.35, 0.10, 0.8, 0.0),
        "didemo": (1.2, 0.45, 0.8, 0.8, -0.3)}
    for name, (acc, iou, fmt, margin, pen) in table.items():
        c = _rewards_config()
        c.update(R.dataset_reward_overrides(name))
        w = R.RewardWeights.from_config(c)
        assert (w.answer, w.time_iou, w.refine, w.refine_quality, w.no_refine_penalty) == (acc, iou, fmt, margin, pen)
        assert (w.think, w.time_format, w.quality_temperature, w.margin_scale, w.quality) == (
            0.05, 0.05, 0.1, 1.0, "delta")
    assert R.dataset_reward_overrides("charades") == R.dataset_reward_overrides("charades-sta")
    with pytest.raises(ValueError):
        R.dataset_reward_overrides("msrvtt")
    with pytest.raises(ValueError):
        R.RewardWeights.from_config({"answr": 1.0})
    with pytest.raises(ValueError):
        R.RewardWeights.from_config({"quality": "lse"})


def test_dataset_configs_carry_their_reward_table():
    """`--config.mode=grpo` with configs/<dataset>.py trains with that dataset's §4 weights, not the S2 defaults."""
    import importlib
    table = {  # grpo.md §4 (W-anet / W-cha / W-did): answer, time_iou, refine, refine_quality, no_refine_penalty
        "activitynet": (1.2, 0.45, 0.8, 0.8, -0.3), "charades": (1.6, 0.35, 0.10, 0.8, 0.0),
        "didemo": (1.2, 0.45, 0.8, 0.8, -0.3)}
    for name, (acc, iou, fmt, margin, pen) in table.items():
        w = R.RewardWeights.from_config(importlib.import_module(f"configs.{name}").get_config().grpo.rewards)
        assert (w.answer, w.time_iou, w.refine, w.refine_quality, w.no_refine_penalty) == (acc, iou, fmt, margin, pen)
        assert (w.think, w.time_format, w.quality_temperature, w.quality) == (0.05, 0.05, 0.1, "delta")


def test_total_reward_nansum():
    w = R.RewardWeights(**R.dataset_reward_overrides("activitynet"))
    r = np.array([[1.0, 1.0, 1.0, 0.5, 1.0, 0.2], [-1.0, np.nan, 0.0, np.nan, 0.0, -0.3],
                  [np.nan] * 6])
    want = [1.2 + 0.05 + 0.05 + 0.45 * 0.5 + 0.8 + 0.8 * 0.2, -1.2 + 0.8 * -0.3, 0.0]
    np.testing.assert_allclose(R.total_reward(r, w), want, rtol=1e-12)
    np.testing.assert_allclose(R.total_reward(dict(zip(R.REWARD_NAMES, r.T)), w), want, rtol=1e-12)


def test_score_samples_matches_reference():
    rng, nrng = random.Random(5), np.random.default_rng(5)
    w = R.RewardWeights(**R.dataset_reward_overrides("activitynet"), quality="delta")
    samples, want = [], {k: [] for k in R.REWARD_NAMES}
    for _ in range(2000):
        text = random_completion(rng)
        rid, gt = _random_ids(rng)
        gt_time, has_ref = random_gt_time(rng), rng.random() < 0.6
        if isinstance(gt_time, np.ndarray):
            gt_time = gt_time.tolist()
        qf, qo, g, negs = _random_vectors(nrng, d=8)
        qf = qf if rng.random() < 0.9 else None   # no q_final (query or GT unknown to the tables) -> penalty
        samples.append(R.RewardSample(text=text, retrieved_id=rid, gt_id=gt, gt_time=gt_time, has_refine=has_ref,
                                      q_final=qf, q_orig=qo, pos_vec=g, neg_vecs=negs))
        meta = ref_meta(text, rid, gt, gt_time, has_ref)
        want["answer"].append(ref_answer_binary(meta, gt))
        want["think"].append(ref_think(text))
        want["time_format"].append(ref_time_format(text, meta))
        want["time_iou"].append(ref_time_iou(text, meta))
        want["refine"].append(ref_refine_presence(meta))
        want["refine_quality"].append(ref_quality(qf, qo, g, list(negs), has_refine=has_ref and qf is not None,
                                                  tau=0.1, variant="delta", penalty=-0.3, scale=1.0))
    got = R.score_samples(samples, w)
    assert set(got) == set(R.REWARD_NAMES) | {"total"}
    for k in R.REWARD_NAMES:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)
    total = sum(getattr(w, k) * np.asarray(want[k]) for k in R.REWARD_NAMES)
    np.testing.assert_allclose(got["total"], total, rtol=1e-9, atol=1e-12)
    assert R.score_samples([], w)["total"].shape == (0,)


# ================================================================================================================
# The reward text: assistant messages minus pure <search> calls (TR:408-418, TR:4559-4570)
# ================================================================================================================


def ref_extract_search_query(text):  # TR:408-418
    if not text:
        return ""
    pattern = r"<search>(.*?)</search>"
    hits = re.findall(pattern, text, flags=re.IGNORECASE | re.DOTALL)
    if hits:
        return hits[-1].strip()
    start = text.lower().rfind("<search>")
    if start >= 0:
        return text[start + len("<search>"):].strip()
    return ""


def ref_completion_text(msg_list):  # TR:4559-4570, one rollout's messages
    parts = []
    for msg in msg_list:
        if msg.get("role") == "assistant":
            content = str(msg.get("content", ""))
            if ref_extract_search_query(content) and not ref_extract_answer(content):
                continue
            parts.append(content)
    return "\n".join(parts)


_SEARCH_PIECES = ("<search>", "</search>", "<SEARCH>", "</Search>", "<search> </search>", "<search>cat</search>",
                  "<search>dog on a log", "<answer></answer>", "<answer> </answer>", "<answer>matched</answer>",
                  "<answer>foo</answer>", "<think>b</think>", "<think> </think>", " ", "\n", "o", "query")


def _random_message(rng):
    if rng.random() < 0.4:
        return random_completion(rng)
    return "".join(rng.choices(_SEARCH_PIECES, k=rng.randrange(0, 6)))


def test_completion_text_matches_reference_fuzz():
    from vsr1_jax.processing.parsing import is_pure_search_call, search_query
    rng = random.Random(7)
    dropped = kept = 0
    for _ in range(N_CASES // 2):
        msgs = [_random_message(rng) for _ in range(rng.randrange(1, 4))]
        for m in msgs:
            assert search_query(m) == ref_extract_search_query(m), m
            pure = bool(ref_extract_search_query(m) and not ref_extract_answer(m))
            assert is_pure_search_call(m) == pure, m
            dropped, kept = dropped + pure, kept + (not pure)
        conv = [{"role": "user", "content": "q"}] + [{"role": "assistant", "content": m} for m in msgs]
        text = R.completion_text(msgs)
        assert text == ref_completion_text(conv), msgs
        assert R.think_reward(text) == ref_think(ref_completion_text(conv))
    assert dropped > 500 and kept > 500, (dropped, kept)


def test_completion_text_drops_a_pure_search_call():
    # the case: the message is a search call with no answer, so it is not in the reward text (think = 0)
    assert R.completion_text(["<think>b</think><search>o"]) == ""
    assert R.think_reward(R.completion_text(["<think>b</think><search>o"])) == 0.0
    assert R.completion_text(["<think>b</think><search>o</search><answer>matched</answer>"]) != ""
    assert R.completion_text(["<search>a</search>", "<think>x</think><answer>matched</answer>"]) == \
        "<think>x</think><answer>matched</answer>"
    assert R.completion_text(["<search> </search> t", "u"]) == "<search> </search> t\nu"  # blank query: kept


def test_grpo_reward_samples_use_the_reward_text():
    from types import SimpleNamespace

    from vsr1_jax.train.grpo_run import reward_samples
    turn = lambda text: SimpleNamespace(text=text, doc_id="v1", has_refine=False, q_next=None)  # noqa: E731
    trajs = [SimpleNamespace(turns=[turn("<think>b</think><search>o")]),
             SimpleNamespace(turns=[turn("<search>q</search>"), turn("<think>a</think><answer>matched</answer>")])]
    rec = dict(gt_video="v1", has_gt_time=False, gt_time=None)
    got = reward_samples(trajs, [rec], 2, lambda rec, t: (None, None, None))
    assert [s.text for s in got] == ["", "<think>a</think><answer>matched</answer>"]
