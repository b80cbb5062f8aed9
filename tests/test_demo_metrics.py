"""The demo report's figures (vsr1_jax/eval/demo_metrics.py) on hand-made detail rows."""
import math

import pytest

from vsr1_jax.eval import demo_metrics as DM


def test_mcnemar_exact_known_values():
    assert DM.mcnemar_exact(0, 0) == 1.0
    assert DM.mcnemar_exact(0, 6) == pytest.approx(2 / 64)            # all 6 discordant pairs one way
    assert DM.mcnemar_exact(6, 0) == DM.mcnemar_exact(0, 6)           # two-sided
    assert DM.mcnemar_exact(5, 5) == 1.0
    # binomial(20, 1/2): P(X <= 5) = 21700 / 2**20
    assert DM.mcnemar_exact(5, 15) == pytest.approx(2 * sum(math.comb(20, i) for i in range(6)) / 2 ** 20)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert DM.mcnemar_exact(7, 19) == pytest.approx(scipy_stats.binomtest(7, 26, 0.5).pvalue)


def _row(orig, final, answer="not_matched", top1_is_gt=False, refined=True, policy_rank=None, iou_raw=0.0,
         turns=1):
    t1 = dict(answer=answer, top1_is_gt=top1_is_gt, refine_token_generated=refined, refine_applied=refined,
              policy_rank=policy_rank if policy_rank is not None else orig, iou_raw=iou_raw,
              iou_r1=iou_raw if top1_is_gt and answer == "matched" else 0.0)
    return dict(orig_rank=orig, final_rank=final, turn1_answer=answer, turn1_top1_is_gt=top1_is_gt,
                turns=[t1] + [dict(answer="unknown")] * (turns - 1))


def test_paired_sqr_only_verification_grounding():
    rows = [_row(1, 1, "matched", True, refined=False, iou_raw=0.5),   # right, accepted, half overlap
            _row(1, 3, "not_matched", True, policy_rank=3, turns=2),  # right, wrongly rejected, refine hurts
            _row(2, 1, policy_rank=1, turns=2),                       # wrong, refine fixes it
            _row(4, 4, policy_rank=4, turns=2),                       # wrong, refine does not help
            _row(3, 3, "matched", False, refined=False)]              # wrong, wrongly accepted, never refined
    pr = DM.paired_retrieval(rows)
    assert pr["R@1 original"] == 0.4 and pr["R@1 final"] == 0.4 and pr["worse (b)"] == 1 and pr["better (c)"] == 1
    assert pr["R@5 original"] == 1.0 and pr["p (McNemar exact)"] == 1.0
    sq = DM.sqr_only(rows)   # oracle gate: rows 1-2 keep their hit, row 3 is fixed, rows 4-5 stay wrong
    assert sq["R@1 SQR-only"] == pytest.approx(0.6) and sq["wrong top-1 rows"] == 3 and sq["refined among them"] == 2
    ver = DM.verification(rows)
    assert ver["VER turn 1"] == pytest.approx(3 / 5) and ver["VER majority baseline"] == pytest.approx(3 / 5)
    g = DM.grounding(rows)
    assert g["accepted turns"] == 2 and g["mIoU accepted"] == pytest.approx(0.25)
    assert g["mIoU accepted GT videos"] == pytest.approx(0.5)
    assert DM.rates(rows)["turn 2 ran"] == pytest.approx(3 / 5)
    # the probe's refined query of a row that accepted its wrong video (config.demo.sqr_probe) counts for SQR-only
    probed = _row(3, 3, "matched", False, refined=False)
    probed["turns"][0]["sqr_probe_rank"] = 1
    sq = DM.sqr_only(rows[:4] + [probed])
    assert sq["R@1 SQR-only"] == pytest.approx(0.8) and sq["refined among them"] == 3


def test_reads_video_against_the_shown_video_and_the_teacher_sentences():
    """The policy's turn-1 description compared with the events of the video it was shown; the parser inverts the
    teacher's short sentences (data/synthetic.py) for every colour, shape and direction."""
    from configs._synthetic import get_synthetic_config
    from vsr1_jax.data import synthetic as SY
    cfg = get_synthetic_config()
    videos = SY.plan_splits(cfg)["test"]
    v, w = videos[0], videos[1]
    ev, other = v.events[0], w.events[0]
    neg = SY.not_matched_reasoning(other, w.background, v, short=True)      # names v's closest event
    pos = SY.matched_reasoning(ev, v.background, v, short=True)
    for text in (neg, pos):
        said = SY.described_event(text)
        assert said is not None and any(said == {"color": e.color, "shape": e.shape, "direction": e.direction}
                                         for e in v.events), (text, said)
    assert SY.described_event("<answer>not_matched</answer>") is None
    events_of = SY.event_attributes(videos)
    t = lambda text, doc: dict(turns=[dict(raw_output=text, top1_doc_id=doc)])  # noqa: E731
    wrong = {"color": next(c for c in cfg.attributes.colors if all(c != e.color for e in v.events))}
    bad = f"<think> The video shows a {wrong['color']} {ev.shape} moving {SY._DIRECTION[ev.direction]} </think>"
    rows = [t(pos, v.video_id), t(bad, v.video_id), t("<answer>matched</answer>", v.video_id)]
    rv = DM.reads_video(rows, SY.described_event, events_of)
    assert rv["described"] == 2 and rv["color agrees"] == 0.5 and rv["shape agrees"] == 1.0
    assert rv["direction agrees"] == 1.0
