"""Episode viewer: one self-contained HTML page (`episodes.html`) of an evaluation's episodes, for a researcher to look
at rather than read: per sampled test query, the query, the turn-1 top-1 video's frames, the policy's reasoning and
answer, whether it refined, the refined retrieval's frames and the rank change, and the predicted span against the
ground truth on a timeline.

    python -m vsr1_jax.viewer EVAL_DIR [--data_root R --dataset D --split S] [--out F] [--sample N --seed K]

It reads only an evaluation's outputs (the detail JSONL, and run_summary.json for where the prepared data lives) and
the prepared split's `video_npy_with_meta/`, so it works on any evaluation, the demo's or a real dataset's. The page
needs no server or network: frames are inlined as data: URIs, styles and the one small script are inline, and every
text from a file (model output above all) is HTML-escaped.
"""
from __future__ import annotations

import argparse
import base64
import glob
import html
import io
import json
import os
import random
import sys
from collections import Counter

import numpy as np
from PIL import Image

from vsr1_jax.data.files import load_npy_video, read_video_meta
from vsr1_jax.data.paths import PreparedPaths
from vsr1_jax.eval import metrics as M
from vsr1_jax.eval.report import read_detail_jsonl

PAGE = "episodes.html"
THUMBS = 8          # frames shown per video: evenly spaced over the clip
THUMB_W = 160       # frames wider than this are downscaled (JPEG); smaller ones stay PNG at their own size
STRATA = ("refined", "matched", "not matched", "no verdict")
_STRATUM_TEXT = {"refined": "the policy refined its query (latent refinement + a new retrieval)",
                 "matched": "the policy accepted a top-1 video without refining",
                 "not matched": "the policy rejected the top-1 video without refining",
                 "no verdict": "no parsable answer (unknown) and no refinement"}


class ViewerError(Exception):
    """A missing input; the message names the path and the fix (printed as one `error: ...` line)."""


# ---------------------------------------------------------------------------------------------------------------
# Inputs: the detail rows and where the prepared data is
# ---------------------------------------------------------------------------------------------------------------
def find_inputs(eval_dir: str, data_root=None, dataset=None, split=None) -> tuple[str, dict, PreparedPaths, str]:
    """(detail JSONL, run_summary.json or {}, prepared paths, split). Command-line values win over run_summary.json,
    which evaluate.py writes with the data's location; the detail file's name gives dataset and split as a fallback."""
    if not os.path.isdir(eval_dir):
        raise ViewerError(f"{eval_dir}: no such evaluation folder; pass the output_dir of an evaluation run "
                          "(e.g. outputs/toy/eval_grpo after `bash scripts/demo.sh`)")
    summary_path = os.path.join(eval_dir, "run_summary.json")
    try:
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
    except FileNotFoundError:
        summary = {}
    except (OSError, ValueError) as e:
        raise ViewerError(f"{summary_path}: unreadable ({e}); delete it and pass --data_root/--dataset/--split")
    named = summary.get("detail_jsonl")
    if named and not os.path.isfile(named):  # the folder was moved: look for the file under its own name here
        named = os.path.join(eval_dir, os.path.basename(named))
    found = [named] if named and os.path.isfile(named) else sorted(glob.glob(os.path.join(eval_dir, "detail_*.jsonl")))
    if len(found) != 1:
        what = "no detail_*.jsonl" if not found else f"{len(found)} detail files ({', '.join(found)})"
        raise ViewerError(f"{eval_dir}: {what}; the evaluation writes detail_<dataset>_<split>.jsonl there "
                          "(run `python -m vsr1_jax.main --config=configs/<dataset>.py --config.mode=eval ...`)")
    detail = found[0]
    stem = os.path.basename(detail)[len("detail_"):-len(".jsonl")]
    guess_ds, _, guess_split = stem.rpartition("_")
    data_root = data_root or summary.get("data_root")
    dataset = dataset or summary.get("dataset") or guess_ds or None
    split = split or summary.get("split") or guess_split or None
    if not (data_root and dataset and split):
        raise ViewerError(f"{summary_path if summary else eval_dir} does not say where the prepared data is; pass "
                          "--data_root R --dataset D --split S (the evaluation's config.data_root/dataset/split)")
    return detail, summary, PreparedPaths(data_root, dataset), split


def stratum(row: dict) -> str:
    """What the agent did: refined the query, else accepted a video, else rejected one, else gave no verdict."""
    if row.get("used_refine_any"):
        return "refined"
    answers = {t.get("answer") for t in row.get("turns") or []}
    return next((a.replace("_", " ") for a in ("matched", "not_matched") if a in answers), "no verdict")


def sample_rows(rows: list[dict], n: int, seed: int) -> list[dict]:
    """`n` rows (all when n <= 0 or n >= len), reproducible for a seed, taken round-robin from each stratum so that
    every kind of episode appears (refined, matched, not matched, no verdict); grouped by stratum, in query order."""
    if n <= 0 or n >= len(rows):
        picked = list(range(len(rows)))
    else:
        rng = random.Random(seed)
        pools = {s: [i for i, r in enumerate(rows) if stratum(r) == s] for s in STRATA}
        for pool in pools.values():
            rng.shuffle(pool)
        picked = []
        while len(picked) < n:
            for s in STRATA:
                if pools[s] and len(picked) < n:
                    picked.append(pools[s].pop())
    order = {s: k for k, s in enumerate(STRATA)}
    return [rows[i] for i in sorted(picked, key=lambda i: (order[stratum(rows[i])], i))]


# ---------------------------------------------------------------------------------------------------------------
# Frames -> inline images
# ---------------------------------------------------------------------------------------------------------------
def data_uri(frame: np.ndarray) -> str:
    """One uint8 [H, W, 3] frame as a data: URI: PNG at its own size when small, else a downscaled JPEG."""
    img = Image.fromarray(np.ascontiguousarray(frame))
    buf = io.BytesIO()
    if img.width <= THUMB_W:
        img.save(buf, format="PNG", optimize=True)
        mime = "png"
    else:
        img = img.resize((THUMB_W, max(1, round(img.height * THUMB_W / img.width))), Image.BILINEAR)
        img.save(buf, format="JPEG", quality=80)
        mime = "jpeg"
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Frames:
    """video id -> thumbnails (data URIs + timestamps) or the reason there are none; each video decoded once."""

    def __init__(self, paths: PreparedPaths, split: str):
        self.paths, self.split, self.cache = paths, split, {}
        meta_path = paths.video_npy_meta(split)
        try:
            self.meta = read_video_meta(meta_path) if meta_path.is_file() else {}
        except ValueError:  # a malformed meta.jsonl only costs the timestamps; frames are still shown
            self.meta = {}

    def get(self, video_id: str) -> dict:
        if video_id not in self.cache:
            self.cache[video_id] = self._load(video_id)
        return self.cache[video_id]

    def _load(self, video_id: str) -> dict:
        meta = self.meta.get(video_id) or {}
        try:
            arr = load_npy_video(self.paths.video_npy(self.split, video_id))
        except (OSError, ValueError) as e:
            return dict(missing=str(e), duration=meta.get("source_duration_sec"))
        T = arr.shape[0]
        stamps = meta.get("sampled_timestamps_sec")
        if not (isinstance(stamps, list) and len(stamps) == T):
            stamps = list(range(T))  # the evaluation's default: index-based timestamps, 1 frame per second
        idx = sorted({int(round(x)) for x in np.linspace(0, T - 1, min(THUMBS, T))})
        step = float(stamps[-1]) - float(stamps[-2]) if T > 1 else 1.0  # the last frame covers one more step
        duration = meta.get("source_duration_sec") or float(stamps[-1]) + step
        return dict(thumbs=[(data_uri(arr[i]), float(stamps[i])) for i in idx], frames=T, duration=float(duration))


# ---------------------------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------------------------
def esc(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _num(x, fmt="{:.1f}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else "—"


def video_strip(frames: Frames, video_id, label: str, gt_id, gt_span, same: bool = False) -> str:
    """A labelled row of thumbnails (or a note when the video was shown just above); frames inside the GT span of
    the GT video get a green frame."""
    is_gt = video_id == gt_id
    mark = '<span class="ok">GT video ✓</span>' if is_gt else '<span class="bad">not the GT video ✗</span>'
    head = f'<div class="strip-head"><b>{esc(label)}</b><br><code>{esc(video_id)}</code><br>{mark}</div>'
    if same:
        return f'<div class="strip">{head}<div class="note">the same video as above</div></div>'
    if not video_id:
        return f'<div class="strip">{head}<div class="missing">no video id in the detail row</div></div>'
    info = frames.get(video_id)
    if "missing" in info:
        return f'<div class="strip">{head}<div class="missing">video missing: {esc(info["missing"])}</div></div>'
    cells = []
    for uri, t in info["thumbs"]:
        inside = is_gt and all(isinstance(v, (int, float)) for v in gt_span) and gt_span[0] <= t <= gt_span[1]
        px = ' class="px"' if uri.startswith("data:image/png") else ""  # small frames: sharp pixels when enlarged
        cells.append(f'<figure class="{"in-gt" if inside else ""}"><img src="{uri}"{px} alt="t={t:.1f}s">'
                     f'<figcaption>{t:.0f}s</figcaption></figure>')
    return f'<div class="strip">{head}<div class="thumbs">{"".join(cells)}</div></div>'


def timeline(row: dict, frames: Frames) -> str:
    """SVG: the ground-truth span and each turn's predicted span on one time axis (the GT video's duration when
    known). A span predicted on a video that is not the GT one is drawn hatched: its overlap does not count."""
    gs, ge = row.get("gt_start"), row.get("gt_end")
    preds = [(t.get("turn"), t.get("pred_start"), t.get("pred_end"), t.get("top1_is_gt"))
             for t in row.get("turns") or []]
    ends = [x for x in [ge] + [p[2] for p in preds] if isinstance(x, (int, float))]
    info = frames.get(row.get("gt_pos_doc_id")) if row.get("gt_pos_doc_id") else {}
    dur = max([info.get("duration") or 0.0] + ends + [1.0])
    W, L, R, H = 640, 92, 12, 22
    x = lambda s: L + (W - L - R) * max(0.0, min(float(s), dur)) / dur  # noqa: E731
    rows_svg, y = [], 6
    def bar(label, s, e, cls, note):  # noqa: E306
        nonlocal y
        body = (f'<rect class="{cls}" x="{x(s):.1f}" y="{y}" width="{max(x(e) - x(s), 2):.1f}" height="{H - 8}"/>'
                if s is not None and e is not None else
                f'<text class="none" x="{L + 4}" y="{y + H - 11}">{esc(note)}</text>')
        rows_svg.append(f'<text class="lab" x="0" y="{y + H - 11}">{esc(label)}</text>{body}')
        y += H
    bar("ground truth", gs, ge, "gt", "no GT span")
    for turn, s, e, on_gt in preds:
        ok = isinstance(s, (int, float)) and isinstance(e, (int, float))
        bar(f"turn {turn} pred", s if ok else None, e if ok else None, "pred" if on_gt else "pred off",
            "no span parsed")
    step = next(v * 10 ** e for e in range(-1, 6) for v in (1, 2, 5) if dur / (v * 10 ** e) <= 8)  # round ticks
    ticks = "".join(f'<line class="tick" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="2" y2="{y}"/>'
                    f'<text class="tl" x="{x(t):.1f}" y="{y + 12}">{t:g}s</text>'
                    for t in np.arange(0, dur + 1e-9, step).round(6))
    return (f'<svg class="timeline" viewBox="0 0 {W} {y + 16}" role="img" aria-label="timeline">{ticks}'
            f'{"".join(rows_svg)}</svg>')


def card(row: dict, frames: Frames) -> str:
    turns = row.get("turns") or []
    gt_id, gt_span = row.get("gt_pos_doc_id"), (row.get("gt_start"), row.get("gt_end"))
    ranks = [f'orig <b>{esc(row.get("orig_rank"))}</b>']
    for t in turns:
        step = f'turn {esc(t.get("turn"))} <b>{esc(t.get("rank"))}</b>'
        if t.get("refine_applied"):
            step += f' → refined <b>{esc(t.get("policy_rank"))}</b>'
        ranks.append(step)
    final_ok = bool(row.get("final_top1_is_gt"))
    s = stratum(row)
    parts = [f'<section class="card" id="ep-{esc(row.get("index"))}" data-stratum="{esc(s)}"><header>'
             f'<span class="badge s-{s.replace(" ", "-")}">{esc(s)}</span>'
             f'<span class="qid">#{esc(row.get("index"))} · {esc(row.get("qid"))}</span>'
             f'<span class="ranks">GT rank: {" → ".join(ranks)}</span>'
             f'<span class="{"ok" if final_ok else "bad"}">final top-1 {"is" if final_ok else "is not"} GT</span>'
             f'</header><p class="query">“{esc(row.get("query"))}”</p>'
             f'<p class="gt">ground truth: <code>{esc(gt_id)}</code> {_num(gt_span[0])}–{_num(gt_span[1])} s · '
             f'stop: {esc(row.get("stop_reason"))}</p>']
    seen = set()
    for t in turns:
        vid = t.get("top1_doc_id")
        label = f'turn {t.get("turn")}: top-1 ' + ("(original query)" if t.get("turn") == 1 else "(refined query)")
        parts.append(video_strip(frames, vid, label, gt_id, gt_span, same=vid in seen))
        seen.add(vid)
        ans = t.get("answer")
        span = (f'{_num(t.get("pred_start"))}–{_num(t.get("pred_end"))} s, raw IoU {_num(t.get("iou_raw"), "{:.2f}")}'
                if t.get("time_parse_ok") else "no span")
        applied = f'<REFINE> → query refined, GT rank {t.get("rank")} → {t.get("policy_rank")}'
        refine = (applied if t.get("refine_applied") else
                  "<REFINE> emitted, not applied" if t.get("refine_token_generated") else "no refinement")
        parts.append(f'<div class="turn"><div class="verdict">answer <span class="ans a-{esc(ans)}">{esc(ans)}'
                     f'</span> · {esc(span)} · {esc(refine)}</div>'
                     f'<pre class="raw">{esc(t.get("raw_output"))}</pre></div>')
        if t.get("refine_applied") and t is turns[-1]:  # the last turn's refined retrieval: no turn shows it
            nid = t.get("policy_top1_doc_id")
            parts.append(video_strip(frames, nid, "refined retrieval: top-1", gt_id, gt_span, same=nid in seen))
            seen.add(nid)
    if gt_id and gt_id not in seen:
        parts.append(f'<details><summary>ground-truth video frames</summary>'
                     f'{video_strip(frames, gt_id, "ground truth", gt_id, gt_span)}</details>')
    parts.append(timeline(row, frames) + "</section>")
    return "".join(parts)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
main{max-width:1100px;margin:0 auto;padding:18px}
h1{font-size:20px;margin:0 0 4px}.src{color:#667;font-size:12px;word-break:break-all}
.stats{display:flex;flex-wrap:wrap;gap:8px;margin:12px 0}
.stat{background:#fff;border:1px solid #dde;border-radius:8px;padding:6px 12px}.stat b{font-size:17px}
.legend{font-size:12px;color:#445}.legend span{margin-right:14px}
.sw{display:inline-block;width:14px;height:10px;margin-right:4px;vertical-align:middle;border-radius:2px}
h2{font-size:16px;margin:22px 0 8px;border-bottom:2px solid #ccd;padding-bottom:4px}
.card{background:#fff;border:1px solid #dde;border-radius:10px;padding:12px 14px;margin:0 0 14px}
.card header{display:flex;flex-wrap:wrap;gap:12px;align-items:center;font-size:13px}
.badge{color:#fff;border-radius:10px;padding:1px 9px;font-weight:600}
.s-refined{background:#7048e8}.s-matched{background:#2f9e44}.s-not-matched{background:#e8590c}
.s-no-verdict{background:#868e96}
.qid{color:#667}.ranks{color:#334}.ok{color:#2b8a3e;font-weight:600}.bad{color:#c92a2a;font-weight:600}
.query{font-size:16px;margin:8px 0 2px;font-weight:500}.gt{margin:0 0 6px;color:#445;font-size:13px}
.strip{display:grid;grid-template-columns:210px 1fr;gap:10px;align-items:center;margin:8px 0}
.strip-head{font-size:12.5px;line-height:1.5}.note{color:#667;font-style:italic;font-size:13px}
table.overview{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde;font-size:12.5px;
  margin:12px 0}
.overview td,.overview th{padding:3px 8px;border-bottom:1px solid #eef;text-align:left;white-space:nowrap}
.overview div.q{max-width:330px;overflow:hidden;text-overflow:ellipsis}.overview a{color:#364fc7;text-decoration:none}
.thumbs{display:flex;gap:4px;flex-wrap:wrap}
figure{margin:0;border:3px solid transparent;border-radius:4px;text-align:center}
figure.in-gt{border-color:#40c057}figure img{height:68px;display:block;border-radius:2px;outline:1px solid #d0d4dc}
img.px{image-rendering:pixelated}
figcaption{font-size:11px;color:#667}
.missing{background:repeating-linear-gradient(45deg,#fff4e6,#fff4e6 8px,#ffe8cc 8px,#ffe8cc 16px);
  border:1px dashed #e8590c;color:#a33e00;padding:10px;border-radius:6px;font-size:12px;word-break:break-all}
.turn{margin:4px 0 10px 220px;padding-left:10px;border-left:3px solid #dde}.verdict{font-size:13px}
.ans{font-weight:700}.a-matched{color:#2b8a3e}.a-not_matched{color:#c92a2a}.a-unknown{color:#868e96}
pre.raw{white-space:pre-wrap;word-break:break-word;background:#f8f9fa;border:1px solid #e9ecef;border-radius:6px;
  padding:6px 8px;margin:4px 0;max-height:120px;overflow:auto;font-size:12px}
details{margin:6px 0;font-size:13px}summary{cursor:pointer;color:#445}
svg.timeline{width:100%;max-width:760px;display:block;margin-top:6px}
svg .lab,svg .tl,svg .none{font-size:11px;fill:#445}svg .tl{text-anchor:middle}svg .none{font-style:italic}
svg .tick{stroke:#e3e5ea}svg .gt{fill:#40c057}svg .pred{fill:#f08c00}
svg .pred.off{fill:#ffd8a8;stroke:#f08c00;stroke-dasharray:3 2}
footer{color:#889;font-size:12px;margin:20px 0}
"""
# Counts the <img> whose pixels decoded (drawn on a canvas, some pixel not transparent: a corrupt image can still
# report its size) and writes the count into the footer, for the reader and for the browser test.
SCRIPT = ("window.addEventListener('load',function(){var im=document.images,ok=0,c=document.createElement('canvas');"
          "c.width=c.height=8;var g=c.getContext('2d');for(var i=0;i<im.length;i++){g.clearRect(0,0,8,8);"
          "try{g.drawImage(im[i],0,0,8,8);var d=g.getImageData(0,0,8,8).data,a=0;for(var j=3;j<d.length;j+=4)a+=d[j];"
          "if(im[i].naturalWidth>0&&a>0)ok++;}catch(e){}}var e=document.getElementById('render-check');"
          "e.setAttribute('data-images',im.length);e.setAttribute('data-decoded',ok);"
          "e.textContent='images decoded: '+ok+' / '+im.length;});")


def overview(shown: list[dict]) -> str:
    """One line per episode shown, linking to its card."""
    lines = []
    for r in shown:
        s, ok = stratum(r), bool(r.get("final_top1_is_gt"))
        answers = " / ".join(str(t.get("answer")) for t in r.get("turns") or [])
        iou = f'{_num(r.get("final_iou_r1"), "{:.2f}")} ({_num(r.get("final_iou_raw"), "{:.2f}")})'
        lines.append(f'<tr><td><a href="#ep-{esc(r.get("index"))}">#{esc(r.get("index"))}</a></td>'
                     f'<td><span class="badge s-{s.replace(" ", "-")}">{esc(s)}</span></td>'
                     f'<td><div class="q" title="{esc(r.get("query"))}">{esc(r.get("query"))}</div></td>'
                     f'<td>{esc(answers)}</td>'
                     f'<td>{esc(r.get("orig_rank"))} → {esc(r.get("final_rank"))}</td>'
                     f'<td class="{"ok" if ok else "bad"}">{"✓" if ok else "✗"}</td><td>{iou}</td></tr>')
    return ('<table class="overview"><tr><th></th><th>agent</th><th>query</th><th>answer per turn</th>'
            '<th>GT rank: orig → final</th><th>final top-1 GT</th><th>IoU@R1 (raw)</th></tr>'
            f'{"".join(lines)}</table>')


def build_page(rows: list[dict], frames: Frames, *, source: str, n: int = 24, seed: int = 0,
               summary: dict | None = None) -> tuple[str, dict]:
    """(HTML, counts) for the detail rows; the header's figures are over all rows, the cards over the sample."""
    shown = sample_rows(rows, n, seed)
    cards, current = [], None
    for r in shown:
        if stratum(r) != current:
            current = stratum(r)
            k = sum(stratum(x) == current for x in shown)
            cards.append(f'<h2>{esc(current)} — {k} shown: {esc(_STRATUM_TEXT[current])}</h2>')
        cards.append(card(r, frames))
    missing = sorted(v for v, info in frames.cache.items() if "missing" in info)
    orig, final = M.original_retrieval(rows, (1,)), M.final_retrieval(rows, (1,))
    by = Counter(stratum(r) for r in rows)
    answers = Counter((r.get("turns") or [{}])[0].get("answer") for r in rows)
    skipped = (summary or {}).get("skips", {}).get("video_file_missing")
    stats = [("queries", len(rows)), ("shown", f"{len(shown)} (seed {seed})"),
             ("R@1 original → final", f'{orig["R@1"]:.3f} → {final["R@1"]:.3f}'),
             ("refined", f'{by["refined"]} ({by["refined"] / max(len(rows), 1):.0%})'),
             ("turn-1 answers", ", ".join(f"{a} {c}" for a, c in sorted(answers.items(), key=str))),
             ("videos missing", f"{len(missing)} of {len(frames.cache)} shown")]
    if skipped:
        stats.append(("queries skipped by the eval (video file missing)", skipped))
    head = "".join(f'<div class="stat">{esc(k)}: <b>{esc(v)}</b></div>' for k, v in stats)
    miss = (f'<p class="missing">{len(missing)} video(s) could not be read and are shown as placeholders: '
            f'{esc(", ".join(missing))}</p>' if missing else "")
    legend = ('<div class="legend"><span><i class="sw" style="background:#40c057"></i>ground-truth span / frames '
              'inside it</span><span><i class="sw" style="background:#f08c00"></i>predicted span on the GT video'
              '</span><span><i class="sw" style="background:#ffd8a8;border:1px dashed #f08c00"></i>predicted span '
              'on another video</span><span>GT rank = rank of the GT video in the retrieval</span></div>')
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>vsr1_jax episodes</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
            f'<body><main><h1>Episodes</h1><div class="src">{esc(source)}</div><div class="stats">{head}</div>'
            f'{miss}{legend}{overview(shown)}{"".join(cards)}'
            '<footer id="render-check">images: not counted (scripts off)</footer>'
            f'</main><script>{SCRIPT}</script></body></html>')
    return page, dict(queries=len(rows), shown=len(shown), videos=len(frames.cache), missing=len(missing))


def write_page(eval_dir: str, out: str | None = None, *, data_root=None, dataset=None, split=None, sample: int = 24,
               seed: int = 0) -> tuple[str, dict]:
    """Build the page of an evaluation folder; returns (path written, counts)."""
    detail, summary, paths, split = find_inputs(eval_dir, data_root, dataset, split)
    rows = read_detail_jsonl(detail)
    if not rows:
        raise ViewerError(f"{detail}: no detail rows; the evaluation wrote none (see its report.txt / log)")
    page, counts = build_page(rows, Frames(paths, split), source=f"{detail} · videos: {paths.video_npy_dir(split)}",
                              n=sample, seed=seed, summary=summary)
    out = out or os.path.join(eval_dir, PAGE)
    with open(out, "w", encoding="utf-8") as f:
        f.write(page)
    return out, counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vsr1_jax.viewer", description=__doc__.split("\n\n")[0])
    p.add_argument("eval_dir", help="an evaluation's output folder (detail_*.jsonl, run_summary.json)")
    p.add_argument("--data_root", help="prepared data root (default: run_summary.json's)")
    p.add_argument("--dataset", help="dataset name under the root (default: run_summary.json's)")
    p.add_argument("--split", help="split the evaluation ran on (default: run_summary.json's)")
    p.add_argument("--out", help=f"output HTML (default: EVAL_DIR/{PAGE})")
    p.add_argument("--sample", type=int, default=24, help="episodes shown, stratified by outcome (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    a = p.parse_args(argv)
    try:
        out, c = write_page(a.eval_dir, a.out, data_root=a.data_root, dataset=a.dataset, split=a.split,
                            sample=a.sample, seed=a.seed)
    except ViewerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out}: {c['shown']} of {c['queries']} episodes, {c['videos']} videos ({c['missing']} missing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
