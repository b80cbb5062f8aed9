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
    # every row's refined query: row 3's fix counts, and so does row 2's loss (rank 3); rows 1 and 5 have none
    assert sq["R@1 refined, all rows"] == pytest.approx(1 / 5)
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
    from vsr1_jax.data import synthetic_text as TX
    from vsr1_jax.data import synthetic_world as SW
    cfg = get_synthetic_config()
    videos = SW.plan_splits(cfg)["test"]
    v, w = videos[0], videos[1]
    ev, other = v.events[0], w.events[0]
    neg = TX.not_matched_reasoning(other, w.background, v, style="short")      # names v's closest event
    pos = TX.matched_reasoning(ev, v.background, v, style="short")
    for text in (neg, pos):
        said = TX.described_event(text)
        assert said is not None and any(said == {"color": e.color, "shape": e.shape, "direction": e.direction}
                                         for e in v.events), (text, said)
    assert TX.described_event("<answer>not_matched</answer>") is None
    events_of = TX.event_attributes(videos)
    t = lambda text, doc: dict(turns=[dict(raw_output=text, top1_doc_id=doc)])  # noqa: E731
    wrong = {"color": next(c for c in cfg.attributes.colors if all(c != e.color for e in v.events))}
    bad = f"<think> The video shows a {wrong['color']} {ev.shape} moving {TX._DIRECTION[ev.direction]} </think>"
    rows = [t(pos, v.video_id), t(bad, v.video_id), t("<answer>matched</answer>", v.video_id)]
    rv = DM.reads_video(rows, TX.described_event, events_of)
    assert rv["described"] == 2 and rv["color agrees"] == 0.5 and rv["shape agrees"] == 1.0
    assert rv["direction agrees"] == 1.0


def test_follows_checks_counts_against_the_policys_own_checks():
    """`follows_checks` on "compare"-style texts (synthetic_text.parse_checks): the teacher's own texts follow
    their checks everywhere; a text that says yes to unequal values, a verdict against its checks and an answer
    against its verdict are each counted once; a text without checks is not counted."""
    from configs._synthetic import get_synthetic_config
    from vsr1_jax.data import synthetic_text as TX
    from vsr1_jax.data import synthetic_world as SW
    cfg = get_synthetic_config()
    v, w = SW.plan_splits(cfg)["test"][:2]
    pos = TX.matched_reasoning(v.events[0], v.background, v, style="compare")
    neg = TX.not_matched_reasoning(w.events[0], w.background, v, style="compare")
    t = lambda text, answer: dict(turns=[dict(raw_output=text, answer=answer)])  # noqa: E731
    good = [t(pos, "matched"), t(neg, "not_matched")]
    assert DM.follows_checks(good, TX.parse_checks) == {"checked": 2, "yes iff equal": 1.0,
                                                        "verdict follows checks": 1.0, "answer follows verdict": 1.0}
    c = v.events[0].color
    bad_value = f"The video shows it; vs query: {c} x{c} yes; so it does not match."   # yes to unequal values
    bad_verdict = f"The video shows it; vs query: {c} {c} yes; so it does not match."  # one yes, then "no match"
    rows = good + [t(bad_value, "not_matched"), t(bad_verdict, "not_matched"), t(pos, "not_matched"),
                   t("<answer>matched</answer>", "matched")]
    fc = DM.follows_checks(rows, TX.parse_checks)
    assert fc["checked"] == 5 and fc["yes iff equal"] == pytest.approx(4 / 5)
    assert fc["verdict follows checks"] == pytest.approx(3 / 5)   # bad_value and bad_verdict stop early yet say yes
    assert fc["answer follows verdict"] == pytest.approx(4 / 5)


def test_reads_checks_scores_each_value_against_the_world():
    """`reads_checks` with `synthetic_text.checked_values`: the teacher's own "compare" texts read every value right; a
    text whose seen colour is wrong loses exactly that value; the query's event is found from
    its text among the GT video's events."""
    from configs._synthetic import get_synthetic_config
    from vsr1_jax.data import synthetic_text as TX
    from vsr1_jax.data import synthetic_world as SW
    cfg = get_synthetic_config()
    videos = SW.plan_splits(cfg)["test"]
    v, w = videos[0], videos[1]
    ev = w.events[-1]
    query = TX.QUERY_TEMPLATES[2].format(background=w.background, **TX.event_words(ev))
    seen, asked = TX.checked_values(query, w, v)
    assert asked == [ev.color, ev.shape, ev.direction, asked[3], w.background] and seen[4] == v.background
    assert TX.checked_values("no such query", w, v) is None
    text = TX.not_matched_reasoning(ev, w.background, v, style="compare")
    row = lambda raw: dict(query=query, turns=[dict(raw_output=raw)])  # noqa: E731
    truth = lambda r: TX.checked_values(r["query"], w, v)  # noqa: E731
    rc = DM.reads_checks([row(text)], TX.parse_checks, truth)
    n = len(TX.parse_checks(text)[0])
    assert all(rc[f"{k} seen"] == 1.0 and rc[f"{k} query"] == 1.0 for k in DM.CHECKED[:n])
    other = next(c for c in cfg.attributes.colors if c != seen[0])
    wrong_seen = text.replace(f"vs query: {seen[0]} ", f"vs query: {other} ", 1)
    rc = DM.reads_checks([row(text), row(wrong_seen)], TX.parse_checks, truth)
    assert rc["colour seen"] == 0.5 and rc["colour query"] == 1.0 and rc["colour checks"] == 2
