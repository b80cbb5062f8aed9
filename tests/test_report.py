"""result.json, the text report, the PNG plots and detail-JSONL I/O on a small hand-made set of detail rows."""
import json
import struct

import numpy as np
import pytest

from vsr1_jax.eval import report as R


def turn(t, rank, policy_rank, answer, top1_is_gt, policy_top1_is_gt, *, refine=False, parse=False,
         iou_raw=0.0, iou_r1=0.0):
    return {"turn": t, "rank": rank, "rank_before_refine": rank, "policy_rank": policy_rank,
            "top1_doc_id": "v?", "top1_is_gt": top1_is_gt, "policy_top1_doc_id": "v?",
            "policy_top1_is_gt": policy_top1_is_gt, "answer": answer, "time_parse_ok": parse,
            "pred_start": 1.0 if parse else None, "pred_end": 5.0 if parse else None,
            "iou_raw": iou_raw, "iou_r1": iou_r1, "refine_token_generated": refine, "refine_applied": refine}


def row(index, orig_rank, turns, stop_reason, matched_turn):
    t1, tl = turns[0], turns[-1]
    r = {"index": index, "qid": f"q{index}", "query": f"query {index}", "gt_pos_doc_id": f"v{index}",
         "gt_start": 0.0, "gt_end": 10.0, "orig_rank": orig_rank,
         "matched_turn": matched_turn, "stop_turn": len(turns), "stop_reason": stop_reason,
         "used_refine_any": any(t["refine_applied"] for t in turns),
         "refine_token_generated_turns": sum(t["refine_token_generated"] for t in turns),
         "refine_applied_turns": sum(t["refine_applied"] for t in turns), "max_turn": 2, "turns": turns}
    for prefix, t in (("turn1", t1), ("final", tl)):
        r.update({f"{prefix}_rank": t["policy_rank"], f"{prefix}_rank_before_refine": t["rank_before_refine"],
                  f"{prefix}_top1_is_gt": t["policy_top1_is_gt"] if prefix == "final" else t["top1_is_gt"],
                  f"{prefix}_policy_top1_is_gt": t["policy_top1_is_gt"], f"{prefix}_answer": t["answer"],
                  f"{prefix}_time_parse_ok": t["time_parse_ok"], f"{prefix}_iou_raw": t["iou_raw"],
                  f"{prefix}_iou_r1": t["iou_r1"]})
    return r


def make_rows():
    """Four queries (+ a stale copy of index 1 that must be replaced by the later one).

    R0: matched at turn 1 on the GT, IoU .8.
    R1: turn 1 wrong video, refines 4 -> 1; turn 2 matched on the GT, IoU .55.
    R2: turn 1 refines 12 -> 3; turn 2 still wrong, refines 3 -> 1 (post-refinement top-1 = GT, never judged).
    R3: turn 1 says matched on a wrong video (IoU .9 raw, 0 at R1), rank 150.
    """
    r0 = row(0, 1, [turn(1, 1, 1, "matched", True, True, parse=True, iou_raw=0.8, iou_r1=0.8)], "matched", 1)
    r1 = row(1, 4, [turn(1, 4, 1, "not_matched", False, True, refine=True),
                    turn(2, 1, 1, "matched", True, True, parse=True, iou_raw=0.55, iou_r1=0.55)], "matched", 2)
    r2 = row(2, 12, [turn(1, 12, 3, "not_matched", False, False, refine=True),
                     turn(2, 3, 1, "not_matched", False, True, refine=True)], "max_turn_reached_with_refine", 0)
    r3 = row(3, 150, [turn(1, 150, 150, "matched", False, False, parse=True, iou_raw=0.9, iou_r1=0.0)], "matched", 1)
    stale = dict(r1, orig_rank=99, final_rank=99, final_iou_r1=0.99)
    return [stale, r0, r1, r2, r3]


def test_result_json_values_by_hand():
    res = R.result_json(make_rows(), "runs/x.jsonl")
    assert list(res) == ["source_jsonl", "num_examples", "final_retrieval", "original_retrieval", "final_temporal",
                         "turns", "verification"]
    assert res["source_jsonl"] == "runs/x.jsonl" and res["num_examples"] == 4
    o = res["original_retrieval"]  # orig ranks 4, 1, 12, 150 (stale 99 replaced)
    assert list(o) == ["N", "R@1", "R@5", "R@10", "R@100", "MRR", "mean_rank"]
    assert (o["N"], o["R@1"], o["R@5"], o["R@10"], o["R@100"]) == (4, 0.25, 0.5, 0.5, 0.75)
    assert o["MRR"] == pytest.approx((1 / 4 + 1 + 1 / 12 + 1 / 150) / 4) and o["mean_rank"] == 167 / 4
    f = res["final_retrieval"]  # final ranks 1, 1, 1, 150
    assert (f["N"], f["R@1"], f["R@5"], f["R@10"], f["R@100"]) == (4, 0.75, 0.75, 0.75, 0.75)
    assert f["MRR"] == pytest.approx((3 + 1 / 150) / 4) and f["mean_rank"] == 153 / 4
    t = res["final_temporal"]  # final IoU@R1: .55, .8, 0, 0
    assert list(t) == ["N", "mIoU@R1", "IoU@0.3@R1", "IoU@0.5@R1", "IoU@0.7@R1"]
    assert t["N"] == 4 and t["mIoU@R1"] == pytest.approx(1.35 / 4)
    assert (t["IoU@0.3@R1"], t["IoU@0.5@R1"], t["IoU@0.7@R1"]) == (0.5, 0.5, 0.25)
    # turns["1"]: policy ranks 1, 1, 3, 150; IoU .8 (R0) only
    t1 = res["turns"]["1"]
    assert t1["retrieval"]["N"] == 4 and t1["retrieval"]["R@1"] == 0.5 and t1["retrieval"]["mean_rank"] == 155 / 4
    assert t1["temporal"]["mIoU@R1"] == pytest.approx(0.2) and t1["temporal"]["IoU@0.7@R1"] == 0.25
    # turns["2"]: only R1, R2 ran turn 2 (ranks 1, 1) but all 4 count in the temporal N (R0, R3 as 0)
    t2 = res["turns"]["2"]
    assert t2["retrieval"]["N"] == 2 and t2["retrieval"]["R@1"] == 1.0
    assert t2["temporal"]["N"] == 4 and t2["temporal"]["mIoU@R1"] == pytest.approx(0.55 / 4)
    assert t2["temporal"]["IoU@0.5@R1"] == 0.25 and t2["temporal"]["IoU@0.7@R1"] == 0.0
    v = res["verification"]
    # turn1: R0 ok, R1 ok, R2 ok, R3 wrong (matched on a wrong video)
    assert v["turn1"]["overall_acc"] == 0.75 and v["turn1"]["match_acc_pred"] == 0.5
    assert v["turn1"]["not_match_acc_pred"] == 1.0
    # as the original pairs it: R2's not_matched is scored against the post-refinement top-1 (GT) -> wrong
    assert v["final_as_original"]["overall_acc"] == 0.5 and v["final_as_original"]["not_match_acc_pred"] == 0.0
    assert v["final_as_original"]["match_acc_pred"] == pytest.approx(2 / 3)
    # correctly paired: R2's turn-2 video was wrong, so not_matched is right
    assert v["final_paired"]["overall_acc"] == 0.75 and v["final_paired"]["not_match_acc_pred"] == 1.0
    json.dumps(res)  # plain JSON types only


def test_text_report_key_lines():
    txt = R.text_report(make_rows(), "runs/x.jsonl")
    lines = txt.splitlines()
    assert "rows=4 (read 5, de-duplicated by index/qid) index_range=0..3 max_turn=2" in txt
    assert any(ln.startswith("- VR original_retrieval (orig_rank): N=4 | R@1=0.2500 R@5=0.5000") for ln in lines)
    assert any(ln.startswith("- VR final_retrieval (final_rank): N=4 | R@1=0.7500") for ln in lines)
    assert ("- VCMR final_temporal (final_iou_r1): N=4 | IoU@0.3@R1=0.5000 IoU@0.5@R1=0.5000 IoU@0.7@R1=0.2500 "
            "| mIoU@R1=0.3375 | mIoU_matched_only=0.7500 (n=3)") in lines  # matched+parsed final raw: .8 .55 .9
    assert any(ln.startswith("- turn1_answer_acc: overall=0.7500") for ln in lines)
    assert any(ln.startswith("- final_answer_acc (as original") and "overall=0.5000" in ln for ln in lines)
    assert any(ln.startswith("- final_answer_acc (paired") and "overall=0.7500" in ln for ln in lines)
    assert "- final_answer: matched=3 not_matched=1 unknown=0" in lines
    assert "- matched_turn: turn1=2 turn2=1 never_matched=1" in lines
    assert "- matched: 3 (75.00%)" in lines and "- max_turn_reached_with_refine: 1 (25.00%)" in lines
    assert "- refine_applied_turns: 3" in lines
    # refine effect: turn 1 applied by R1 (4->1, +3) and R2 (12->3, +9); turn 2 by R2 (3->1, +2)
    assert ("- turn1: applied=2 | improved=2 (100.00%) same=0 (0.00%) worse=0 (0.00%) | "
            "top1_after=1 (50.00%)") in lines
    assert "  improve_steps_mean=6.00 | +1:0 +2:0 +3-5:1 +6-10:1 +11-20:0 +21-50:0 +51-100:0 +101+:0" in lines
    assert any(ln.startswith("- turn2: applied=1 | improved=1") for ln in lines)
    assert any(ln.startswith("- policy@1: N=4 | R@1=0.5000") for ln in lines)
    assert any(ln.startswith("- policy@2: N=4 | R@1=0.7500") for ln in lines)
    assert any(ln.startswith("  strict_turn2: N=2 | R@1=1.0000") for ln in lines)
    assert any(ln.startswith("  strict_turn2: N=2 | IoU@0.3@R1=0.5000") for ln in lines)


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24]), len(data)


def test_write_report_files(tmp_path):
    paths = R.write_report(make_rows(), tmp_path / "out", "runs/x.jsonl")
    assert set(paths) == {"result_json", "report_txt", "recall_at_k_png", "vcmr_by_turn_png"}
    assert json.loads(paths["result_json"].read_text()) == R.result_json(make_rows(), "runs/x.jsonl")
    assert "[Refine Effect by Turn]" in paths["report_txt"].read_text()
    for key in ("recall_at_k_png", "vcmr_by_turn_png"):
        (w, h), nbytes = _png_size(paths[key])
        assert (w, h) == (640, 400) and nbytes > 10_000


def test_detail_jsonl_round_trip_and_bad_lines(tmp_path, caplog):
    rows = make_rows()
    rows[1]["extra"] = {"np_int": np.int64(3), "np_f": np.float32(0.5), "np_b": np.bool_(True),
                        "arr": np.arange(3)}
    p = R.write_detail_jsonl(rows[:2], tmp_path / "d" / "detail.jsonl")
    R.write_detail_jsonl(rows[2:], p, append=True)
    with p.open("a") as f:
        f.write("\n{torn line\n[1, 2]\n")
    back = R.read_detail_jsonl(p)
    assert len(back) == 5 and "skipped 2 bad JSON lines" in caplog.text
    assert back[1]["extra"] == {"np_int": 3, "np_f": 0.5, "np_b": True, "arr": [0, 1, 2]}
    assert back[3] == json.loads(json.dumps(rows[3]))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        R.read_detail_jsonl(tmp_path / "nope.jsonl")
