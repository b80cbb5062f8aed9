"""Evaluation outputs: detail JSONL I/O, the original's result.json (+ VER), a plain-text report and two PNG plots.

result.json keeps WTR's keys so numbers stay comparable with the original (spec README decision 7, eval_and_data.md
§1.7); the text report follows REP's stdout. Plots use matplotlib's Agg canvas directly (no pyplot global state).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from vsr1_jax.eval import metrics as M

logger = logging.getLogger(__name__)

RESULT_JSON = "result.json"
REPORT_TXT = "report.txt"
RECALL_PNG = "recall_at_k.png"
VCMR_PNG = "vcmr_by_turn.png"


# ------------------------------------------------------------------------------------------ detail JSONL
def _json_default(obj):
    """Make NumPy / JAX values JSON-serialisable (rows are often built from device outputs)."""
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "__array__"):  # jax.Array and friends
        return np.asarray(obj).tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_detail_jsonl(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike, *, append: bool = False) -> Path:
    """One JSON object per line (eval_and_data.md §1.7 "Detail JSONL row"); ``append`` for per-query writes/resume."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a" if append else "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(dict(r), ensure_ascii=False, default=_json_default) + "\n")
    return p


def read_detail_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read detail rows; blank lines are ignored and unparsable / non-object lines skipped with a warning.

    Skipping (not raising) is what WTR L9-19 and REP parse_rows do: a run killed mid-write leaves a torn last line.
    No de-duplication here (result_json / text_report do it).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"detail JSONL not found: {p}")
    rows, bad = [], 0
    with p.open("r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                rows.append(obj)
            else:
                bad += 1
    if bad:
        logger.warning("%s: skipped %d bad JSON lines", p, bad)
    return rows


# ------------------------------------------------------------------------------------------ result.json
def result_json(rows: Sequence[Mapping[str, Any]], source_jsonl: str, *, ks: Sequence[int] = M.TOPK,
                thresholds: Sequence[float] = M.IOU_THRESHOLDS) -> dict:
    """The original's result.json (WTR L97-113) plus one added top-level key, ``verification``.

    Keys: source_jsonl, num_examples, final_retrieval{N,R@1,R@5,R@10,R@100,MRR,mean_rank}, original_retrieval{…},
    final_temporal{N,mIoU@R1,IoU@0.3@R1,IoU@0.5@R1,IoU@0.7@R1}, turns{"t": {retrieval, temporal}} (pick_turn
    variant) and — an addition, not in the original — verification{turn1, final_as_original, final_paired}
    (metrics.verification_accuracy). Rows are de-duplicated by index, else qid, last copy kept.
    """
    rows = M.dedup_rows(rows)
    return {
        "source_jsonl": str(source_jsonl),
        "num_examples": len(rows),
        "final_retrieval": M.final_retrieval(rows, ks),
        "original_retrieval": M.original_retrieval(rows, ks),
        "final_temporal": M.final_temporal(rows, thresholds),
        "turns": M.result_turns(rows, ks, thresholds),
        "verification": M.verification_accuracy(rows),
    }


# ------------------------------------------------------------------------------------------ text report
def _pct(n, d) -> str:
    return f"{(100.0 * n / d) if d else 0.0:.2f}%"


def _fmt_retrieval(title: str, m: Mapping[str, Any], ks: Sequence[int]) -> str:
    if not m or not m.get("N"):
        return f"{title}: N/A"
    rk = " ".join(f"R@{k}={m[f'R@{k}']:.4f}" for k in ks)
    s = f"{title}: N={m['N']} | {rk} | MRR={m['MRR']:.4f} mean_rank={m['mean_rank']:.2f}"
    if "median_rank" in m:
        s += f" median_rank={m['median_rank']}"
    return s


def _fmt_temporal(title: str, m: Mapping[str, Any], thresholds: Sequence[float]) -> str:
    if not m or not m.get("N"):
        return f"{title}: N/A"
    th = " ".join(f"{M.iou_key(t)}={m[M.iou_key(t)]:.4f}" for t in thresholds)
    s = f"{title}: N={m['N']} | {th} | mIoU@R1={m['mIoU@R1']:.4f}"
    if "mIoU_matched_only" in m:
        s += f" | mIoU_matched_only={m['mIoU_matched_only']:.4f} (n={m['matched_with_time_count']})"
    return s


def _fmt_ver(title: str, a: Mapping[str, Any]) -> str:
    return (f"{title}: overall={a['overall_acc']:.4f} match_acc(pred)={a['match_acc_pred']:.4f} "
            f"not_match_acc(pred)={a['not_match_acc_pred']:.4f} "
            f"(N={a['N']}, pred_match={a['pred_matched']}, pred_not={a['pred_not_matched']})")


def text_report(rows: Sequence[Mapping[str, Any]], source_jsonl: str | None = None, *, ks: Sequence[int] = M.TOPK,
                thresholds: Sequence[float] = M.IOU_THRESHOLDS) -> str:
    """Plain-text report in the spirit of REP's stdout (L412-611), headline numbers first.

    Sections: headline (result.json's final/original VR and final VCMR, with mIoU_matched_only), VER three ways,
    answers / matched turn / stop reasons, refine usage and "Refine Effect by Turn" buckets, retrieval and
    temporal policy@t + strict turn t tables with the policy@T - policy@1 delta, and result.json's turns.
    """
    raw_n = len(rows)
    rows = M.dedup_rows(rows)
    n = len(rows)
    res = result_json(rows, source_jsonl or "")
    series = M.turn_series(rows)
    max_turn = series["max_turn"]
    policy = M.series_metrics(series, "policy", ks, thresholds)
    strict = M.series_metrics(series, "strict", ks, thresholds)
    effect = M.refine_effect_by_turn(rows, max_turn)
    idxs = [r.get("index") for r in rows if M.is_int(r.get("index"))]
    L: list[str] = []
    add = L.append

    add("=" * 100)
    add("VideoSearch-R1 evaluation report")
    if source_jsonl:
        add(f"source: {source_jsonl}")
    add(f"rows={n} (read {raw_n}, de-duplicated by index/qid) "
        f"index_range={min(idxs) if idxs else None}..{max(idxs) if idxs else None} max_turn={max_turn}")

    add("\n[Headline: result.json]")
    add(_fmt_retrieval("- VR original_retrieval (orig_rank)", res["original_retrieval"], ks))
    add(_fmt_retrieval("- VR final_retrieval (final_rank)", res["final_retrieval"], ks))
    ft = dict(res["final_temporal"])
    mo = M.final_matched_only(rows)
    ft["mIoU_matched_only"], ft["matched_with_time_count"] = (sum(mo) / len(mo) if mo else 0.0), len(mo)
    add(_fmt_temporal("- VCMR final_temporal (final_iou_r1)", ft, thresholds))
    orr, frr = res["original_retrieval"], res["final_retrieval"]
    if orr.get("N") and frr.get("N"):
        add("- delta(final-original): " + " ".join(f"R@{k}={frr[f'R@{k}'] - orr[f'R@{k}']:+.4f}" for k in ks)
            + f" MRR={frr['MRR'] - orr['MRR']:+.4f}")

    add("\n[Verification (VER)]")
    ver = res["verification"]
    add(_fmt_ver("- turn1_answer_acc", ver["turn1"]))
    add(_fmt_ver("- final_answer_acc (as original: final_answer x final_top1_is_gt)", ver["final_as_original"]))
    add(_fmt_ver("- final_answer_acc (paired: last turn's answer x its judged video)", ver["final_paired"]))

    add("\n[Answer/Turn]")
    ac = M.answer_counts(rows)
    add(f"- final_answer: matched={ac.get('matched', 0)} not_matched={ac.get('not_matched', 0)} "
        f"unknown={ac.get('unknown', 0)}"
        + "".join(f" {k}={v}" for k, v in sorted(ac.items()) if k not in M.ANSWERS))
    mt = M.matched_turn_counts(rows)
    add("- matched_turn: " + " ".join(f"turn{t}={mt.get(t, 0)}" for t in range(1, max_turn + 1))
        + "".join(f" turn{t}={v}" for t, v in sorted(mt.items()) if t > max_turn)
        + f" never_matched={mt.get(0, 0)}")

    add("\n[Stop Reason]")
    for k, v in M.stop_reason_counts(rows).items():
        add(f"- {k}: {v} ({_pct(v, n)})")

    add("\n[Refine]")
    ru = M.refine_usage(rows)
    add(f"- used_refine_any: {ru['used_refine_any']} / {n} ({_pct(ru['used_refine_any'], n)})")
    add(f"- refine_token_generated_turns: {ru['refine_token_generated_turns']}")
    add(f"- refine_applied_turns: {ru['refine_applied_turns']}")

    add("\n[Refine Effect by Turn]")
    for t in range(1, max_turn + 1):
        st = effect[t]
        a = st["applied"]
        if a <= 0:
            add(f"- turn{t}: applied=0")
            continue
        add(f"- turn{t}: applied={a} | improved={st['improved']} ({_pct(st['improved'], a)}) "
            f"same={st['same']} ({_pct(st['same'], a)}) worse={st['worse']} ({_pct(st['worse'], a)}) | "
            f"top1_after={st['top1_after']} ({_pct(st['top1_after'], a)})")
        add(f"  improve_steps_mean={st['improve_steps_mean']:.2f} | "
            + " ".join(f"+{b}:{st['improve_buckets'][b]}" for b in M.REFINE_BUCKETS))
        add(f"  worsen_steps_mean={st['worse_steps_mean']:.2f} | "
            + " ".join(f"-{b}:{st['worse_buckets'][b]}" for b in M.REFINE_BUCKETS))

    add("\n[Retrieval]")
    add(_fmt_retrieval("- orig_query_only", M.original_retrieval(rows, ks, with_median=True), ks))
    for t in range(1, max_turn + 1):
        add(_fmt_retrieval(f"- policy@{t}", policy[t]["retrieval"], ks))
    add("- strict_by_turn")
    for t in range(1, max_turn + 1):
        add(_fmt_retrieval(f"  strict_turn{t}", strict[t]["retrieval"], ks))
    p1, pT = policy[1]["retrieval"], policy[max_turn]["retrieval"]
    if p1.get("N") and pT.get("N"):
        add(f"- delta(policy@{max_turn}-policy@1): "
            + " ".join(f"R@{k}={pT[f'R@{k}'] - p1[f'R@{k}']:+.4f}" for k in ks) + f" MRR={pT['MRR'] - p1['MRR']:+.4f}")

    add("\n[Temporal IoU@R1]")
    for t in range(1, max_turn + 1):
        add(_fmt_temporal(f"- policy@{t}", policy[t]["temporal"], thresholds))
    add("- strict_by_turn")
    for t in range(1, max_turn + 1):
        add(_fmt_temporal(f"  strict_turn{t}", strict[t]["temporal"], thresholds))
    p1, pT = policy[1]["temporal"], policy[max_turn]["temporal"]
    if p1.get("N") and pT.get("N"):
        add(f"- delta(policy@{max_turn}-policy@1): "
            + " ".join(f"{M.iou_key(th)}={pT[M.iou_key(th)] - p1[M.iou_key(th)]:+.4f}" for th in thresholds)
            + f" mIoU@R1={pT['mIoU@R1'] - p1['mIoU@R1']:+.4f}")

    add("\n[result.json turns (WTR pick_turn: fewer turns -> dropped from retrieval N, IoU 0 in temporal N)]")
    for t, d in res["turns"].items():
        add(_fmt_retrieval(f"- turns[{t}].retrieval", d["retrieval"], ks))
        add(_fmt_temporal(f"  turns[{t}].temporal", d["temporal"], thresholds))
    return "\n".join(L) + "\n"


# ------------------------------------------------------------------------------------------ plots
def _new_figure(size=(6.4, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (only plotting needs matplotlib)
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(series: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike, *, title: str,
                ylabel: str, xlabel: str = "optimizer step") -> Path:
    """Line plot of named (x, y) series, e.g. training losses or rewards per step."""
    fig = _new_figure((6.4, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for name, pts in series.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, format="png")
    return p


def plot_recall_at_k(result: Mapping[str, Any], path: str | os.PathLike, ks: Sequence[int] = M.TOPK) -> Path:
    """Grouped bars of R@k (%) for the original query (orig_rank) vs the refined one (final_rank) from result.json."""
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(ks))
    w = 0.38
    for off, key, label in ((-w / 2, "original_retrieval", "original query"), (w / 2, "final_retrieval", "refined (final)")):
        m = result[key]
        vals = [100.0 * m.get(f"R@{k}", 0.0) for k in ks]
        bars = ax.bar(x + off, vals, w, label=f"{label} (N={m.get('N', 0)})")
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(x, [f"R@{k}" for k in ks])
    ax.set_ylabel("recall (%)")
    ax.set_ylim(0, 110)
    ax.set_title("Video retrieval: original vs refined query")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, format="png")
    return p


def plot_vcmr_by_turn(policy: Mapping[int, Mapping[str, Any]], path: str | os.PathLike,
                      thresholds: Sequence[float] = M.IOU_THRESHOLDS) -> Path:
    """IoU@θ@R1 (%) vs turn t for policy@t (carry-forward series; policy@T = the final numbers)."""
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    turns = sorted(policy)
    top = 0.0
    # distinct markers/dashes: equal series (common with few queries) would otherwise hide each other
    for th, marker, ls in zip(thresholds, "osD^v<>p", ("-", "--", ":", "-.") * 4):
        vals = [100.0 * policy[t]["temporal"].get(M.iou_key(th), 0.0) for t in turns]
        top = max(top, *vals)
        ax.plot(turns, vals, marker=marker, linestyle=ls, label=M.iou_key(th))
    ax.set_xticks(turns, [f"policy@{t}" for t in turns])
    ax.set_xlim(turns[0] - 0.3, turns[-1] + 0.3)
    ax.set_ylim(0, max(5.0, 1.15 * top))
    ax.set_ylabel("IoU@θ@R1 (%)")
    ax.set_xlabel("turn")
    ax.set_title("VCMR by turn")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, format="png")
    return p


# ------------------------------------------------------------------------------------------ everything
def skipped_text(skipped: Mapping[str, Any]) -> str:
    """One line: how many of the selected queries were evaluated and why the others were not, naming the missing
    video files (the `skipped` block of `write_report`)."""
    reasons = ", ".join(f"{k} {v}" for k, v in skipped["counts"].items() if v)
    text = (f"evaluated {skipped['evaluated']} of {skipped['selected']} queries: {skipped['not_evaluated']} "
            f"skipped ({reasons})")
    files = skipped.get("video_files_missing") or []
    if files:
        more = skipped.get("video_files_missing_total", len(files)) - len(files)
        text += "; video file missing: " + ", ".join(files) + (f" (+{more} more)" if more > 0 else "")
    return text


def write_report(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, source_jsonl: str, *,
                 ks: Sequence[int] = M.TOPK, thresholds: Sequence[float] = M.IOU_THRESHOLDS,
                 skipped: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write result.json, report.txt, recall_at_k.png, vcmr_by_turn.png into out_dir; return {name: path}.
    `skipped` (when some selected queries were not evaluated): {selected, evaluated, not_evaluated, counts {reason:
    n}, video_files_missing [paths]}, added to result.json as "skipped" and to report.txt (the metrics cover the
    evaluated queries only)."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    res = result_json(rows, source_jsonl, ks=ks, thresholds=thresholds)
    if skipped:
        res["skipped"] = dict(skipped)
    paths = {"result_json": d / RESULT_JSON, "report_txt": d / REPORT_TXT,
             "recall_at_k_png": d / RECALL_PNG, "vcmr_by_turn_png": d / VCMR_PNG}
    # Same serialisation as WTR L115 so the file diffs cleanly against the original's.
    paths["result_json"].write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    text = text_report(rows, source_jsonl, ks=ks, thresholds=thresholds)
    if skipped:
        text = f"NOTE: {skipped_text(skipped)}; every number below covers the evaluated queries only\n" + text
    paths["report_txt"].write_text(text, encoding="utf-8")
    plot_recall_at_k(res, paths["recall_at_k_png"], ks)
    plot_vcmr_by_turn(M.policy_by_turn(M.dedup_rows(rows), ks, thresholds), paths["vcmr_by_turn_png"], thresholds)
    return paths
