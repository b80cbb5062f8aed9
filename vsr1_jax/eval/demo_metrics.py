"""The demo report's figures from evaluation detail rows (agent/detail_rows.py): retrieval before and after the
agent with a paired significance test, the SQR-only (oracle-gated) R@1, verification against its majority-class
baseline, grounding on the videos the policy accepts, refine and turn-2 rates, and whether the policy's turn-1
description matches the video it was shown. Pure functions over rows."""
from __future__ import annotations

import math
from typing import Sequence

Row = dict


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (binomial(b + c, 1/2), doubled, capped at 1)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def _rank_ok(rank, k: int) -> bool:
    return isinstance(rank, int) and not isinstance(rank, bool) and 0 < rank <= k


def paired_retrieval(rows: Sequence[Row]) -> dict:
    """Original-query top-1 vs the agent's final top-1 on the same queries: R@1 both ways, the discordant counts
    (b: right before, wrong after; c: wrong before, right after) and the exact McNemar p-value."""
    before = [_rank_ok(r.get("orig_rank"), 1) for r in rows]
    after = [_rank_ok(r.get("final_rank"), 1) for r in rows]
    b = sum(x and not y for x, y in zip(before, after))
    c = sum(y and not x for x, y in zip(before, after))
    n = max(len(rows), 1)
    return {"N": len(rows), "R@1 original": sum(before) / n, "R@1 final": sum(after) / n,
            "R@5 original": sum(_rank_ok(r.get("orig_rank"), 5) for r in rows) / n,
            "R@5 final": sum(_rank_ok(r.get("final_rank"), 5) for r in rows) / n,
            "lift": (sum(after) - sum(before)) / n, "worse (b)": b, "better (c)": c, "p (McNemar exact)": mcnemar_exact(b, c)}


def sqr_only(rows: Sequence[Row]) -> dict:
    """R@1 when the refined query is used exactly where the original top-1 is wrong (oracle verification): a row
    counts as a hit if its original top-1 is right, or if it is wrong and its turn-1 refined query ranks the GT video
    first: the refinement the episode applied (policy_rank), or, for a row that accepted its wrong video, the probe's
    (sqr_probe_rank, config.demo.sqr_probe). `refined among them` = wrong-top-1 rows that have a refined query (the
    others, without <REFINE>, keep their miss); the p-value is the paired test against the original query.
    `R@1 refined, all rows`: the turn-1 refined query's R@1 over every row (a row without one counts as a miss),
    which, unlike SQR-only, also counts the right top-1s that the refinement loses."""
    hits = b = c = covered = wrong = every = 0
    for r in rows:
        orig = _rank_ok(r.get("orig_rank"), 1)
        t1 = (r.get("turns") or [{}])[0]
        rank = t1.get("policy_rank") if t1.get("refine_applied") else t1.get("sqr_probe_rank")
        every += rank is not None and _rank_ok(rank, 1)
        if orig:
            hits += 1
            continue
        wrong += 1
        if rank is not None:
            covered += 1
            if _rank_ok(rank, 1):
                hits += 1
                c += 1
    n = max(len(rows), 1)
    return {"R@1 SQR-only": hits / n, "wrong top-1 rows": wrong, "refined among them": covered,
            "p (McNemar exact)": mcnemar_exact(b, c), "R@1 refined, all rows": every / n}


def verification(rows: Sequence[Row]) -> dict:
    """Turn-1 accept/reject accuracy over the rows answered matched/not_matched, and the majority-class baseline on
    those rows (always answer the more frequent truth)."""
    pairs = [(r.get("turn1_answer"), bool(r.get("turn1_top1_is_gt"))) for r in rows
             if r.get("turn1_answer") in ("matched", "not_matched")]
    n = len(pairs)
    if not n:
        return {"VER turn 1": 0.0, "VER majority baseline": 0.0, "answered": 0}
    correct = sum((a == "matched") == g for a, g in pairs)
    pos = sum(g for _, g in pairs)
    return {"VER turn 1": correct / n, "VER majority baseline": max(pos, n - pos) / n, "answered": n}


def grounding(rows: Sequence[Row]) -> dict:
    """mIoU over the turns the policy accepted (answered matched): `iou_r1` (0 when the accepted video is not the
    GT one or the span did not parse), and over the accepted GT videos only (`iou_raw`)."""
    acc, acc_gt = [], []
    for r in rows:
        for t in r.get("turns") or []:
            if t.get("answer") == "matched":
                acc.append(float(t.get("iou_r1") or 0.0))
                if t.get("top1_is_gt"):
                    acc_gt.append(float(t.get("iou_raw") or 0.0))
    return {"accepted turns": len(acc), "mIoU accepted": sum(acc) / len(acc) if acc else 0.0,
            "mIoU accepted GT videos": sum(acc_gt) / len(acc_gt) if acc_gt else 0.0}


def rates(rows: Sequence[Row]) -> dict:
    n = max(len(rows), 1)
    return {"<REFINE> written (turn 1)": sum(bool((r.get("turns") or [{}])[0].get("refine_token_generated"))
                                              for r in rows) / n,
            "turn 2 ran": sum(len(r.get("turns") or []) >= 2 for r in rows) / n}


def reads_video(rows: Sequence[Row], described, events_of: dict) -> dict:
    """Does the policy read the video it is shown? For each row whose turn-1 text names an event
    (`described(text)` -> {color, shape, direction} or None), whether each attribute is that of some event of the
    turn-1 top-1 video (`events_of[doc_id]`: its events' attribute dicts). A policy that ignores the video agrees
    at about chance (1 / the number of values); one that reads it, far above."""
    n, hits = 0, {"color": 0, "shape": 0, "direction": 0}
    for r in rows:
        t = (r.get("turns") or [{}])[0]
        said = described(t.get("raw_output", ""))
        events = events_of.get(t.get("top1_doc_id"))
        if said is None or not events:
            continue
        n += 1
        for k in hits:
            hits[k] += any(e[k] == said[k] for e in events)
    return {"described": n, **{f"{k} agrees": hits[k] / n if n else 0.0 for k in hits}}


def follows_checks(rows: Sequence[Row], parse) -> dict:
    """Does the turn-1 verdict follow the policy's own attribute checks? `parse(text)` -> (checks, says_match) or
    None, checks = [(seen value, query value, said yes)] (the "compare" teacher style, `synthetic_text.parse_checks`).
    Counts the rows whose checks say yes exactly when the two values are equal, whose written verdict is "matches"
    after five yes or "does not match" right after a no, and whose <answer> is that verdict. Where these are near 1
    and VER is not, the errors are in reading the video or the query, not in deciding from what was read."""
    n = values = verdict = answer = 0
    for r in rows:
        t = (r.get("turns") or [{}])[0]
        parsed = parse(t.get("raw_output") or "")
        if parsed is None:
            continue
        checks, says = parsed
        n += 1
        values += all(yes == (seen == asked) for seen, asked, yes in checks)
        # the checks stop at the first "no": "matches" after five yes, "does not match" right after a no
        verdict += (len(checks) == 5 and all(yes for _, _, yes in checks)) if says else not checks[-1][2]
        answer += says == (t.get("answer") == "matched")
    f = (lambda k: k / n if n else 0.0)
    return {"checked": n, "yes iff equal": f(values), "verdict follows checks": f(verdict),
            "answer follows verdict": f(answer)}


CHECKED = ("colour", "shape", "direction", "position", "background")


def reads_checks(rows: Sequence[Row], parse, truth) -> dict:
    """How well the policy's turn-1 checks read the video and the query, value by value. `parse(text)` as in
    `follows_checks`; `truth(row)` -> (the five values the shown video has, the five the query asks for) or None
    (`synthetic_text.checked_values`). For each check the policy wrote (they stop at the first "no"), whether its seen
    value is the video's and its query value the query's: `<name> seen` / `<name> query` fractions and counts."""
    seen = dict.fromkeys(CHECKED, 0)
    asked = dict.fromkeys(CHECKED, 0)
    n = dict.fromkeys(CHECKED, 0)
    for r in rows:
        t = (r.get("turns") or [{}])[0]
        parsed, want = parse(t.get("raw_output") or ""), truth(r)
        if parsed is None or want is None:
            continue
        for name, (s, a, _), s_true, a_true in zip(CHECKED, parsed[0], *want):
            n[name] += 1
            seen[name] += s == s_true
            asked[name] += a == a_true
    out = {}
    for name in CHECKED:
        out[f"{name} seen"] = seen[name] / n[name] if n[name] else 0.0
        out[f"{name} query"] = asked[name] / n[name] if n[name] else 0.0
        out[f"{name} checks"] = n[name]
    return out


__all__ = ["CHECKED", "follows_checks", "grounding", "mcnemar_exact", "paired_retrieval", "rates", "reads_checks",
           "reads_video", "sqr_only", "verification"]
