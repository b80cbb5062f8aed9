"""Every metric of eval_and_data.md §1 on hand-made cases; expected values are worked out by hand from the spec formulas."""

import numpy as np
import pytest

from vsr1_jax.eval import metrics as M


def turn(t, rank, policy_rank, answer, top1_is_gt, *, refine=False, parse=True, iou_raw=0.0, iou_r1=0.0):
    return {"turn": t, "rank": rank, "rank_before_refine": rank, "policy_rank": policy_rank, "answer": answer,
            "top1_is_gt": top1_is_gt, "time_parse_ok": parse, "iou_raw": iou_raw, "iou_r1": iou_r1,
            "refine_applied": refine}


# ------------------------------------------------------------------------------------------ IoU
@pytest.mark.parametrize("gt,pred,want", [
    ((0, 10), (5, 15), 5 / 15),         # inter 5, union 15
    ((0, 10), (15, 5), 5 / 15),         # reversed prediction is swapped
    ((10, 0), (5, 15), 5 / 15),         # reversed GT is swapped
    ((0, 10), (2, 4), 2 / 10),          # contained
    ((0, 10), (0, 10), 1.0),
    ((0, 5), (5, 10), 0.0),             # touching: zero intersection
    ((0, 5), (6, 10), 0.0),             # disjoint
    ((3, 3), (0, 10), 0.0),             # zero-length GT
    ((0, 10), (4, 4), 0.0),             # zero-length prediction
    ((0, 10), (4, 4 + 1e-10), 0.0),     # length <= 1e-9 counts as zero
])
def test_iou(gt, pred, want):
    assert M.iou(gt, pred) == pytest.approx(want, abs=1e-12)


def test_iou_r1_needs_matched_parsed_and_gt_video():
    assert M.iou_r1(0.6, "matched", True, True) == 0.6
    assert M.iou_r1(0.6, "matched", True, False) == 0.0   # wrong video shown: IoU 0 even with overlap
    assert M.iou_r1(0.6, "matched", False, True) == 0.0   # span did not parse
    assert M.iou_r1(0.6, "not_matched", True, True) == 0.0
    assert M.iou_r1(0.6, "unknown", True, True) == 0.0


def test_turn_ious():
    assert M.turn_ious((0, 10), (5, 15), "matched", True) == pytest.approx((1 / 3, 1 / 3))
    assert M.turn_ious((0, 10), (5, 15), "matched", False) == pytest.approx((1 / 3, 0.0))  # raw logged, r1 zero
    assert M.turn_ious((0, 10), None, "matched", True) == (0.0, 0.0)
    assert M.turn_ious((0, 10), (5, 15), "not_matched", True) == (0.0, 0.0)


def test_iou_key():
    assert [M.iou_key(t) for t in (0.3, 0.5, 0.7, 0.25)] == ["IoU@0.3@R1", "IoU@0.5@R1", "IoU@0.7@R1", "IoU@0.25@R1"]


# ------------------------------------------------------------------------------------------ coercions, dedup
def test_as_rank_only_positive_ints():
    assert [M.as_rank(v) for v in (1, 7, np.int64(3), 0, -1, 2.0, None, True, "4")] == [1, 7, 3, None, None, None,
                                                                                        None, None, None]


def test_as_float():
    assert [M.as_float(v) for v in (0.5, "0.25", None, "x", float("nan"), float("inf"), 1)] == [
        0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_dedup_by_index_then_qid_keeps_last_copy_in_first_place():
    rows = [{"index": 0, "qid": "a", "v": 1}, {"index": 1, "v": 2}, {"index": 0, "qid": "zz", "v": 3},
            {"qid": "q", "v": 4}, {"qid": " q ", "v": 5}, {"v": 6}, {"v": 7}, {"index": "2", "qid": "z", "v": 8}]
    # keys: idx:0, idx:1, idx:0 (replaces v1 in place), qid:q, qid:q (replaces v4), row:5, row:6, qid:z
    assert [r["v"] for r in M.dedup_rows(rows)] == [3, 2, 5, 6, 7, 8]


def test_max_turn_wtr():
    assert M.max_turn_wtr([]) == 1
    assert M.max_turn_wtr([{"max_turn": 2}, {"turns": [{}, {}, {}]}, {"max_turn": "5"}]) == 3


# ------------------------------------------------------------------------------------------ VR
def test_retrieval_metrics_hand_values():
    ranks = [1, 3, 7, 150, None, -1, 0, 2.0, True, "4"]  # valid: 1, 3, 7, 150
    m = M.retrieval_metrics(ranks, with_median=True)
    assert m["N"] == 4
    assert m["R@1"] == 0.25 and m["R@5"] == 0.5 and m["R@10"] == 0.75 and m["R@100"] == 0.75
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 7 + 1 / 150) / 4)
    assert m["mean_rank"] == pytest.approx(161 / 4)
    assert m["median_rank"] == 5.0  # (3 + 7) / 2
    assert list(m) == ["N", "R@1", "R@5", "R@10", "R@100", "MRR", "mean_rank", "median_rank"]


def test_recall_thresholds_inclusive():
    m = M.retrieval_metrics([5, 100, 101])
    assert m["R@5"] == pytest.approx(1 / 3) and m["R@100"] == pytest.approx(2 / 3) and m["R@1"] == 0.0


def test_retrieval_metrics_empty_is_wtr_shape():
    assert M.retrieval_metrics([None, 0, -3]) == {"N": 0, "R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "R@100": 0.0,
                                                  "MRR": 0.0}


def test_original_and_final_retrieval_keys():
    rows = [{"orig_rank": 4, "final_rank": 1}, {"orig_rank": 2, "rank": 3}, {"orig_rank": None, "final_rank": None}]
    assert M.original_retrieval(rows)["N"] == 2 and M.original_retrieval(rows)["mean_rank"] == 3.0
    f = M.final_retrieval(rows)  # second row falls back to "rank" (WTR L101); third: None -> dropped
    assert f["N"] == 2 and f["mean_rank"] == 2.0 and f["R@1"] == 0.5


# ------------------------------------------------------------------------------------------ VCMR
def test_temporal_metrics_inclusive_thresholds_and_coercion():
    vals = [0.3, 0.5, 0.7, 0.69999, 0.0, None, "nan", float("inf")]  # last three count as 0 in N = 8
    m = M.temporal_metrics(vals)
    assert m["N"] == 8
    assert m["IoU@0.3@R1"] == 4 / 8 and m["IoU@0.5@R1"] == 3 / 8 and m["IoU@0.7@R1"] == 1 / 8
    assert m["mIoU@R1"] == pytest.approx((0.3 + 0.5 + 0.7 + 0.69999) / 8)
    assert list(m) == ["N", "mIoU@R1", "IoU@0.3@R1", "IoU@0.5@R1", "IoU@0.7@R1"]


def test_temporal_matched_only_and_empty():
    m = M.temporal_metrics([0.0, 0.4], matched_only=[0.9, 0.4])
    assert m["mIoU_matched_only"] == pytest.approx(0.65) and m["matched_with_time_count"] == 2
    assert M.temporal_metrics([]) == {"N": 0, "mIoU@R1": 0.0, "IoU@0.3@R1": 0.0, "IoU@0.5@R1": 0.0,
                                      "IoU@0.7@R1": 0.0}


def test_final_temporal_key_chain_and_matched_only():
    rows = [
        {"final_iou_r1": 0.8, "final_iou_raw": 0.8, "final_answer": "matched", "final_time_parse_ok": True},
        {"final_iou_r1": 0.0, "final_iou_raw": 0.9, "final_answer": "matched", "final_time_parse_ok": True},
        {"final_iou_raw": 0.5, "final_answer": "Matched", "final_time_parse_ok": False},  # no r1 key -> raw (WTR)
        {"iou": 0.35},
        {},
    ]
    m = M.final_temporal(rows)
    # values: 0.8, 0.0, 0.5, 0.35, 0.0
    assert m["N"] == 5 and m["mIoU@R1"] == pytest.approx(1.65 / 5)
    assert m["IoU@0.3@R1"] == 3 / 5 and m["IoU@0.5@R1"] == 2 / 5 and m["IoU@0.7@R1"] == 1 / 5
    assert M.final_matched_only(rows) == [0.8, 0.9]  # third row: span did not parse


# ------------------------------------------------------------------------------------------ VER
def test_answer_accuracy_rules():
    pairs = [
        ("matched", True),        # correct
        ("matched", False),       # wrong
        ("not_matched", False),   # correct
        ("not_matched", True),    # wrong
        ("unknown", True),        # left out
        (" Matched ", True),      # normalised -> correct
        ("matched", None),        # no bool flag -> left out
        ("matched", 1),           # an int is not a bool -> left out
        ("not_matched", True),    # wrong
    ]
    a = M.answer_accuracy(*zip(*pairs))
    assert a["N"] == 6
    assert a["overall_acc"] == pytest.approx(3 / 6)
    assert a["pred_matched"] == 3 and a["match_acc_pred"] == pytest.approx(2 / 3)
    assert a["pred_not_matched"] == 3 and a["not_match_acc_pred"] == pytest.approx(1 / 3)


def test_answer_accuracy_empty():
    assert M.answer_accuracy(["unknown"], [True]) == {"N": 0, "overall_acc": 0.0, "pred_matched": 0,
                                                      "pred_not_matched": 0, "match_acc_pred": 0.0,
                                                      "not_match_acc_pred": 0.0}


def test_verification_three_variants():
    rows = [
        # refined at the last turn: judged video (turn 2 top-1) is wrong, post-refinement top-1 is the GT
        {"turn1_answer": "not_matched", "turn1_top1_is_gt": False, "final_answer": "not_matched",
         "final_top1_is_gt": True,
         "turns": [turn(1, 5, 3, "not_matched", False, refine=True), turn(2, 3, 1, "not_matched", False, refine=True)]},
        # matched at turn 1 on the GT
        {"turn1_answer": "matched", "turn1_top1_is_gt": True, "final_answer": "matched", "final_top1_is_gt": True,
         "turns": [turn(1, 1, 1, "matched", True)]},
        # unknown answer: out of every denominator
        {"turn1_answer": "unknown", "turn1_top1_is_gt": False, "final_answer": "unknown", "final_top1_is_gt": False,
         "turns": [turn(1, 2, 2, "unknown", False)]},
        # no turns list: counted in turn1 / as-original but not in final_paired
        {"turn1_answer": "matched", "turn1_top1_is_gt": False, "final_answer": "matched", "final_top1_is_gt": False},
    ]
    v = M.verification_accuracy(rows)
    assert (v["turn1"]["N"], v["turn1"]["overall_acc"]) == (3, pytest.approx(2 / 3))
    assert (v["final_as_original"]["N"], v["final_as_original"]["overall_acc"]) == (3, pytest.approx(1 / 3))
    assert (v["final_paired"]["N"], v["final_paired"]["overall_acc"]) == (2, 1.0)


# ------------------------------------------------------------------------------------------ per-turn series
def _series_rows():
    return [
        # A: stops at turn 1 (matched on the GT)
        {"index": 0, "max_turn": 2, "turns": [turn(1, 1, 1, "matched", True, iou_raw=0.6, iou_r1=0.6)]},
        # B: refines at turn 1 (5 -> 2), matches at turn 2 on a wrong video
        {"index": 1, "max_turn": 2, "turns": [turn(1, 5, 2, "not_matched", False, refine=True),
                                              turn(2, 2, 2, "matched", False, iou_raw=0.9, iou_r1=0.0)]},
        # C: refines at both turns (8 -> 4 -> 1); last refinement never verified
        {"index": 2, "max_turn": 2, "turns": [turn(1, 8, 4, "not_matched", False, refine=True),
                                              turn(2, 4, 1, "not_matched", False, refine=True)]},
        # D: no turns: REP falls back to the final_* fields
        {"index": 3, "final_rank": 7, "final_answer": "matched", "final_time_parse_ok": True,
         "final_iou_raw": 0.4, "final_iou_r1": 0.4},
    ]


def test_policy_by_turn_carries_stopped_queries_forward():
    p = M.policy_by_turn(_series_rows())
    assert sorted(p) == [1, 2]
    # policy@1 ranks: A 1, B 2, C 4, D 7 ; policy@2: A 1 (carried), B 2, C 1, D 7 (carried)
    r1, r2 = p[1]["retrieval"], p[2]["retrieval"]
    assert r1["N"] == 4 and r1["R@1"] == 0.25 and r1["R@5"] == 0.75 and r1["mean_rank"] == 14 / 4
    assert r2["N"] == 4 and r2["R@1"] == 0.5 and r2["mean_rank"] == 11 / 4 and r2["median_rank"] == 1.5
    # IoU@R1: policy@1 = [.6, 0, 0, .4]; policy@2 = [.6, 0, 0, .4]
    t1, t2 = p[1]["temporal"], p[2]["temporal"]
    assert t1["N"] == 4 and t1["mIoU@R1"] == pytest.approx(0.25) and t1["IoU@0.5@R1"] == 0.25
    assert t1["IoU@0.3@R1"] == 0.5
    # matched with a parsed span: policy@1 -> A .6, D .4 ; policy@2 -> A .6, B .9 (wrong video), D .4
    assert t1["mIoU_matched_only"] == pytest.approx(0.5) and t2["mIoU_matched_only"] == pytest.approx(1.9 / 3)


def test_strict_by_turn_only_queries_that_ran_the_turn():
    s = M.strict_by_turn(_series_rows())
    # turn 2 ran for B (policy 2) and C (policy 1)
    assert s[2]["retrieval"]["N"] == 2 and s[2]["retrieval"]["R@1"] == 0.5 and s[2]["retrieval"]["mean_rank"] == 1.5
    assert s[2]["temporal"]["N"] == 2 and s[2]["temporal"]["mIoU@R1"] == 0.0
    assert s[1]["retrieval"]["N"] == 4


def test_result_turns_pick_turn_variant():
    t = M.result_turns(_series_rows())
    assert sorted(t) == ["1", "2"]
    # turn 2: only B and C have a 2nd turn -> retrieval N 2; temporal counts A and D as IoU 0 -> N 4
    assert t["2"]["retrieval"]["N"] == 2 and t["2"]["retrieval"]["mean_rank"] == 1.5
    assert t["2"]["temporal"]["N"] == 4 and t["2"]["temporal"]["mIoU@R1"] == 0.0
    # turn 1: D has no turns -> dropped from retrieval; ranks A 1, B 2, C 4
    assert t["1"]["retrieval"]["N"] == 3 and t["1"]["retrieval"]["mean_rank"] == pytest.approx(7 / 3)
    assert t["1"]["temporal"]["N"] == 4 and t["1"]["temporal"]["mIoU@R1"] == pytest.approx(0.15)


def test_extract_policy_turns_fallbacks():
    row = {"final_rank": 9, "turns": [
        {"turn": 1, "rank": 6, "refine_applied": True, "answer": "NOT_MATCHED"},  # -> next turn's rank 3
        {"turn": 2, "rank": 3, "refine_applied": True},                          # no next turn -> final_rank 9
        {"turn": 3, "rank_before_refine": 4},                                     # no refine -> rank_before 4
        {"turn": 4, "policy_rank": 0},                                            # nothing usable -> skipped
        "garbage",
    ]}
    got = M.extract_policy_turns(row)
    assert [(t["turn"], t["rank_before_refine"], t["policy_rank"]) for t in got] == [(1, 6, 3), (2, 3, 9), (3, 4, 4)]
    assert got[0]["answer"] == "not_matched" and got[1]["answer"] == "unknown"


# ------------------------------------------------------------------------------------------ refine effect
@pytest.mark.parametrize("delta,bucket", [(1, "1"), (2, "2"), (3, "3-5"), (5, "3-5"), (6, "6-10"), (10, "6-10"),
                                          (11, "11-20"), (20, "11-20"), (21, "21-50"), (50, "21-50"),
                                          (51, "51-100"), (100, "51-100"), (101, "101+"), (5000, "101+")])
def test_step_bucket_boundaries(delta, bucket):
    assert M.step_bucket(delta) == bucket


def test_refine_effect_by_turn():
    rows = [
        {"turns": [turn(1, 10, 1, "not_matched", False, refine=True)]},       # +9  -> 6-10, top1_after
        {"turns": [turn(1, 3, 3, "not_matched", False, refine=True)]},        # same
        {"turns": [turn(1, 2, 150, "not_matched", False, refine=True)]},      # -148 -> 101+
        {"turns": [turn(1, 200, 100, "not_matched", False, refine=True),      # +100 -> 51-100
                   turn(2, 4, 3, "not_matched", False, refine=True)]},        # turn 2: +1 -> 1
        {"turns": [turn(1, 9, 2, "not_matched", False, refine=False)]},       # not applied: ignored
    ]
    e = M.refine_effect_by_turn(rows)
    t1 = e[1]
    assert (t1["applied"], t1["improved"], t1["same"], t1["worse"], t1["top1_after"]) == (4, 2, 1, 1, 1)
    assert t1["improved_share"] == 0.5 and t1["same_share"] == 0.25 and t1["worse_share"] == 0.25
    assert t1["top1_after_share"] == 0.25
    assert t1["improve_steps_mean"] == pytest.approx((9 + 100) / 2) and t1["worse_steps_mean"] == 148
    assert t1["improve_buckets"] == {"1": 0, "2": 0, "3-5": 0, "6-10": 1, "11-20": 0, "21-50": 0, "51-100": 1,
                                     "101+": 0}
    assert t1["worse_buckets"]["101+"] == 1 and sum(t1["worse_buckets"].values()) == 1
    t2 = e[2]
    assert (t2["applied"], t2["improved"], t2["top1_after"]) == (1, 1, 0) and t2["improve_buckets"]["1"] == 1


# ------------------------------------------------------------------------------------------ counts
def test_counts():
    rows = [{"final_answer": "matched", "stop_reason": "matched", "matched_turn": 1, "used_refine_any": False},
            {"final_answer": "Not_Matched", "stop_reason": "max_turn_reached_with_refine", "matched_turn": 0,
             "used_refine_any": True, "refine_token_generated_turns": 2, "refine_applied_turns": 2},
            {"final_answer": "matched", "stop_reason": "matched", "matched_turn": 2, "used_refine_any": True,
             "refine_token_generated_turns": 2, "refine_applied_turns": 1},
            {"stop_reason": " "}]
    assert M.answer_counts(rows) == {"matched": 2, "not_matched": 1, "unknown": 1}
    assert list(M.stop_reason_counts(rows).items()) == [("matched", 2), ("max_turn_reached_with_refine", 1),
                                                        ("unknown", 1)]
    assert M.matched_turn_counts(rows) == {1: 1, 0: 2, 2: 1}
    assert M.refine_usage(rows) == {"used_refine_any": 2, "refine_token_generated_turns": 4,
                                    "refine_applied_turns": 3}
