"""The episode viewer (vsr1_jax.viewer): the page built from a tiny prepared split + detail rows written here is
self-contained (no network reference, every image a data: URI), escapes model text, samples reproducibly with every
stratum present, counts missing videos, finds the data through run_summary.json, and renders in a real headless
Chromium (cards, decoded images, timelines, a screenshot); that test skips when no browser is installed."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from vsr1_jax import viewer as V
from vsr1_jax.data.files import write_video_npy, write_video_npy_meta
from vsr1_jax.data.paths import PreparedPaths
from vsr1_jax.eval.report import write_detail_jsonl

EVIL = '<script>alert("x")</script><img src="http://evil.example/x.png">'
N_VIDEOS = 6   # syn_test_0000..0005 are written; 0006 is referenced by a row but has no file


def _turn(turn, doc, gt, answer, rank, *, refine_to=None, span=None, text="reasoning"):
    return dict(turn=turn, rank=rank, rank_before_refine=rank, policy_rank=refine_to[1] if refine_to else rank,
                top1_doc_id=doc, top1_is_gt=doc == gt, policy_top1_doc_id=refine_to[0] if refine_to else doc,
                policy_top1_is_gt=(refine_to[0] if refine_to else doc) == gt, answer=answer,
                time_parse_ok=span is not None, pred_start=span and span[0], pred_end=span and span[1],
                iou_raw=0.5 if span else 0.0, iou_r1=0.0, refine_token_generated=refine_to is not None,
                refine_applied=refine_to is not None, raw_output=text)


def _row(i, gt, turns, orig_rank):
    last = turns[-1]
    return dict(index=i, qid=f"q{i}", query=f"a red circle moves up (query {i})", gt_pos_doc_id=gt, gt_start=2.0,
                gt_end=5.0, orig_rank=orig_rank, final_rank=last["policy_rank"],
                final_top1_is_gt=last["policy_top1_is_gt"], used_refine_any=any(t["refine_applied"] for t in turns),
                stop_reason="test", max_turn=2, turns=turns)


def make_rows():
    """Four strata: refined (two turns, the second's top-1 is the GT), matched, not matched, no verdict; one row
    names a video with no file; one row's model text is hostile HTML."""
    rows = []
    for i in range(12):
        gt = f"syn_test_{i % N_VIDEOS:04d}"
        other = f"syn_test_{(i + 1) % N_VIDEOS:04d}"
        if i % 4 == 0:
            turns = [_turn(1, other, gt, "not_matched", 3, refine_to=(gt, 1), text=EVIL if i == 0 else "no"),
                     _turn(2, gt, gt, "matched", 1, span=(2.5, 6.0))]
        elif i % 4 == 1:
            turns = [_turn(1, gt, gt, "matched", 1, span=(1.0, 4.0))]
        elif i % 4 == 2:
            turns = [_turn(1, "syn_test_0006" if i == 2 else other, gt, "not_matched", 2)]
        else:
            turns = [_turn(1, other, gt, "unknown", 4, text="garbled")]
        rows.append(_row(i, gt, turns, turns[0]["rank"]))
    return rows


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    """A prepared test split of 64x64 videos with meta.jsonl, and an evaluation folder like evaluate.py's."""
    root = tmp_path_factory.mktemp("view")
    paths = PreparedPaths(root / "data", "syn")
    rng = np.random.default_rng(0)
    meta = []
    for v in range(N_VIDEOS):
        shape = (10, 90, 200, 3) if v == 5 else (10, 64, 64, 3)  # video 5: real-data sized frames -> JPEG
        frames = np.zeros(shape, np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
        frames[:, 20:40, 20:40] = 255
        write_video_npy(paths.video_npy("test", f"syn_test_{v:04d}"), frames)
        meta.append(dict(video_id=f"syn_test_{v:04d}", output_num_frames=10,
                         sampled_timestamps_sec=[float(t) for t in range(10)], source_duration_sec=10.0))
    write_video_npy_meta(paths.video_npy_meta("test"), meta)
    out = root / "eval"
    detail = out / "detail_syn_test.jsonl"
    write_detail_jsonl(make_rows(), detail)
    with open(out / "run_summary.json", "w") as f:
        json.dump(dict(detail_jsonl=str(detail), data_root=str(root / "data"), dataset="syn", split="test"), f)
    return out


def test_page_is_self_contained_escaped_and_counts_missing(eval_dir):
    path, counts = V.write_page(str(eval_dir), sample=0)
    page = open(path, encoding="utf-8").read()
    assert path == str(eval_dir / "episodes.html") and counts["queries"] == counts["shown"] == 12
    # nothing fetched from anywhere: every src/href is a data: URI, no external stylesheet, font or script
    refs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs and all(r.startswith(("data:image/", "#ep-")) for r in refs), [r[:40] for r in refs if "data:" not in r]
    assert not re.search(r"https?://", page.replace("http://evil.example", "")), "a network URL in the page"
    assert "<link" not in page and "@import" not in page and "url(" not in page
    # the hostile model text is shown escaped; the page's only <script> is its own footer counter
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page and page.count("<script") == 1
    assert 'src="http://evil' not in page
    # 12 cards, 6 readable videos + 1 missing, placeholder with the reason and the count in the header
    assert page.count('<section class="card"') == 12
    assert counts["videos"] == 7 and counts["missing"] == 1
    assert "videos missing: <b>1 of 7 shown</b>" in page and "syn_test_0006.npy: no such video file" in page
    assert page.count("<svg") == 12 and "R@1 original → final: <b>0.250 → 0.500</b>" in page
    # thumbnails: 8 of each readable video's 10 frames, PNG data URIs (JPEG for the large frames)
    assert page.count('<img src="data:image/png;base64,') >= 8 * 5 and 'src="data:image/jpeg;base64,' in page


def test_sample_is_stratified_and_reproducible(eval_dir):
    rows = make_rows()
    a = V.sample_rows(rows, 4, seed=1)
    assert {V.stratum(r) for r in a} == set(V.STRATA)
    assert [r["index"] for r in a] == [r["index"] for r in V.sample_rows(rows, 4, seed=1)]
    picks = {tuple(r["index"] for r in V.sample_rows(rows, 6, seed=s)) for s in range(6)}
    assert len(picks) > 1  # the seed matters
    path, counts = V.write_page(str(eval_dir), str(eval_dir / "s.html"), sample=5, seed=3)
    assert counts["shown"] == 5 and open(path).read().count('<section class="card"') == 5


def test_errors_name_the_path_and_the_fix(tmp_path, eval_dir, capsys):
    assert V.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope: no such evaluation folder" in err and err.count("\n") == 1
    assert V.main([str(tmp_path)]) == 2
    assert "no detail_*.jsonl" in capsys.readouterr().err
    # without run_summary.json the data's location comes from the command line
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(eval_dir / "detail_syn_test.jsonl", bare)
    assert V.main([str(bare)]) == 2
    assert "--data_root R --dataset D --split S" in capsys.readouterr().err
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "run_summary.json").write_text("{")
    assert V.main([str(tmp_path / "torn")]) == 2
    assert "run_summary.json: unreadable" in capsys.readouterr().err
    summary = json.load(open(eval_dir / "run_summary.json"))
    assert V.main([str(bare), "--data_root", summary["data_root"], "--sample", "4"]) == 0
    assert "4 of 12 episodes" in capsys.readouterr().out and (bare / "episodes.html").is_file()


def _chromium():
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_page_renders_in_headless_chromium(eval_dir, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (`apt-get install chromium`; .ci/run installs it when apt-get exists)")
    path, _ = V.write_page(str(eval_dir), str(tmp_path / "page.html"), sample=0)
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}"]
    url = "file://" + os.path.abspath(path)
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=60).stdout
    assert dom.count('<section class="card"') == 12, dom[:500]
    m = re.search(r'id="render-check" data-images="(\d+)" data-decoded="(\d+)"', dom)
    assert m, "the page's load script did not run"
    assert int(m.group(1)) >= 48 and m.group(1) == m.group(2), f"{m.group(2)} of {m.group(1)} images decoded"
    assert dom.count('<svg class="timeline"') == 12 and dom.count('class="gt"') >= 12
    assert "<script>alert" not in dom  # the hostile text stayed text
    shot = tmp_path / "shot.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1200,1600", url], capture_output=True,
                   timeout=60)
    from PIL import Image
    img = Image.open(shot)
    assert img.size == (1200, 1600) and len(np.unique(np.asarray(img.convert("L")))) > 20  # rendered, not blank
