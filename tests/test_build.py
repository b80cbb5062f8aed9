"""The raw -> prepared build (vsr1_jax/data/build/, vsr1_jax/prepare.py): real video files written here with PyAV,
the whole build on the tiny embedder/teacher, validation, the eval demo on the result, resumability (byte-identical
outputs after an interruption between steps and inside a step), and each step's pure logic against a plain-Python
transcription of the spec (eval_and_data.md §3) on random cases."""
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs.build_toy import get_config
from vsr1_jax.data.build import frames as FR
from vsr1_jax.data.build import oneturn as OT
from vsr1_jax.data.build import select as SEL
from vsr1_jax.data.build import store as ST
from vsr1_jax.data.build import teacher as TE
from vsr1_jax.data.build.pipeline import STEPS, parse_steps
from vsr1_jax.data.files import load_npy_video, read_sft_items, read_video_npy_meta
from vsr1_jax.data.paths import PreparedPaths
from vsr1_jax.data.settings import BuildSettings
from vsr1_jax.data.validate import validate_dataset
from vsr1_jax.processing import prompts as P

FIXED_UTC = "1970-01-01T00:00:00Z"


# ---------------------------------------------------------------------------------------------------------------
# Raw inputs: tiny real videos and VERIFIED-style annotation rows
# ---------------------------------------------------------------------------------------------------------------
def _frames(n: int, seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 200, 3)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i] = bg
        x = (i * 3) % (w - 12)
        out[i, 8:20, x:x + 12] = 255 - bg  # a square moving right: consecutive frames differ
    return out


def make_raw(root: Path) -> tuple[Path, Path]:
    """4 train + 3 test videos (4 fps, 6-9 s), 2 queries each; a train row whose video is absent and a test row
    whose file is corrupt."""
    raw, ann = root / "raw", root / "ann"
    raw.mkdir(parents=True)
    ann.mkdir()
    rows = {"train": [], "test": []}
    desc = 0
    for split, n in (("train", 4), ("test", 3)):
        for k in range(n):
            vid, frames = f"{split}{k}", 24 + 4 * k
            FR.write_test_video(raw / f"{vid}.mp4", _frames(frames, desc), fps=4)
            for j in range(2):
                rows[split].append({"video": vid, "time": [1.0, 3.5 + j], "desc_id": desc, "duration": frames / 4,
                                    "cog_desc": "a square moves", "fig_desc": f"{split} video {k} wording {j}",
                                    "fig_desc_score": 0.9})
                desc += 1
    rows["train"].append({"video": "absent", "time": [0, 1], "desc_id": 999, "duration": 3.0, "fig_desc": "gone"})
    (raw / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    rows["test"].append({"video": "corrupt", "time": [0, 1], "desc_id": 1000, "duration": 3.0,
                         "fig_desc": "the corrupt one"})
    for split, rs in rows.items():
        (ann / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    return raw, ann


def toy_config(data_root: Path, raw: Path, ann: Path):
    c = get_config()
    c.data_root = str(data_root)
    b = c.data.build
    b.raw_videos, b.annotations, b.extract_utc, b.progress = str(raw), str(ann), FIXED_UTC, False
    b.video_chunk = 2  # several chunks, so an interrupted embedding step has something to resume
    return c


def tree(d: Path) -> dict[str, bytes]:
    """Every file of a dataset folder except the build's own bookkeeping (.build/: markers with timings)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and ST.BUILD_DIR not in p.relative_to(d).parts}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One uninterrupted build; its models are reused by the other builds (one compilation)."""
    from vsr1_jax.prepare import make_embedder, make_teacher, run_build
    root = tmp_path_factory.mktemp("build")
    raw, ann = make_raw(root)
    cfg = toy_config(root / "a", raw, ann)
    b = BuildSettings.from_config(cfg)
    models = {"embedder": make_embedder(cfg, b), "teacher": make_teacher(cfg, b)}
    summary = run_build(cfg, **models)
    return {"root": root, "raw": raw, "ann": ann, "cfg": cfg, "models": models, "summary": summary,
            "paths": PreparedPaths(cfg.data_root, cfg.dataset)}


# ---------------------------------------------------------------------------------------------------------------
# The whole build
# ---------------------------------------------------------------------------------------------------------------
def test_build_validates_and_reports(built):
    s, paths = built["summary"], built["paths"]
    assert list(s["steps"]) == list(STEPS) and all(v["status"] == "ran" for v in s["steps"].values())
    assert s["validation"]["ok"], s["validation"]
    rep = validate_dataset(paths)
    assert rep.ok, rep.summary()
    st = s["steps"]
    # drops by reason: the absent video (annotations) and the corrupt file (both decoding steps), named
    assert st["annotations"]["drops"] == {"missing_video": 1}
    assert st["npy_test"]["drops"] == {"decode_failed": 1} and st["embed_videos"]["drops"] == {"decode_failed": 1}
    assert st["npy_test"]["stats"]["failed_videos"] == [str(built["raw"] / "corrupt.mp4")]
    assert st["embed_videos"]["stats"]["test"]["failed_docs"] == ["corrupt"]
    failed = [json.loads(x) for x in (paths.video_npy_dir("test") / "failed_videos.jsonl").read_text().splitlines()]
    assert [f["source_video_path"] for f in failed] == [str(built["raw"] / "corrupt.mp4")] and failed[0]["error"]
    assert st["grpo"]["drops"] == {"drop_query_missing_meta": 1}  # the absent video's row has no query vector
    grpo_stats = json.loads(paths.grpo_stats.read_text())
    assert grpo_stats["rows_written"] == st["grpo"]["rows_out"] and grpo_stats["raw_annotation"] == \
        "raw_annotation/train.jsonl"
    metrics = json.loads((paths.split_dir("test") / "metrics_npy.json").read_text())
    assert set(metrics["metrics"]) == {"R@1", "R@5", "R@10", "R@100"} and metrics["total_rows_evaluated"] == 6
    assert metrics["skip"] == {"query_empty": 0, "query_pair_not_found_in_meta": 0, "query_not_found_in_meta": 0,
                               "pos_doc_missing_in_docid2row": 1}  # the corrupt video has no vector
    # the npy files are what the reader expects: uint8 [T, H, W, 3], T even, one meta row each
    for split in ("train", "test"):
        for m in read_video_npy_meta(paths.video_npy_meta(split)):
            arr = load_npy_video(paths.video_npy(split, m.video_id))
            assert arr.shape == (m.output_num_frames, m.output_height, m.output_width, 3) and arr.shape[0] % 2 == 0
            assert m.target_sample_fps == 1.0 and m.extract_utc == FIXED_UTC
            assert m.output_npy_path == f"{split}/video_npy_with_meta/{m.video_id}.npy"
    items = read_sft_items(paths.sft_oneturn)
    assert len(items) == st["top1_pool"]["rows_out"] and {it.meta.source for it in items} == {"pairs_with_reasoning"}


def test_eval_demo_runs_on_the_result(built, tmp_path):
    from vsr1_jax.agent.evaluate import main_eval
    cfg = toy_config(built["root"] / "a", built["raw"], built["ann"])
    cfg.mode, cfg.output_dir, cfg.eval.max_samples = "eval", str(tmp_path / "eval"), 3
    summary = main_eval(cfg)
    result = json.loads(Path(summary["result_json"]).read_text())
    assert result["final_retrieval"]["N"] == summary["queries"] == 3


def test_sft_steps_run_on_the_result(built, tmp_path):
    from vsr1_jax.train.sft_run import main_sft
    cfg = toy_config(built["root"] / "a", built["raw"], built["ann"])
    cfg.mode, cfg.output_dir = "sft", str(tmp_path / "sft_run")
    s = cfg.sft
    s.max_steps, s.param_dtype, s.remat, s.refine_token_count, s.export_hf = 2, "float32", "none", 2, False
    s.label_buckets, s.vision_group_buckets, s.vision_patch_buckets = (64, 128, 256), (4, 8, 16), (16, 64, 256)
    s.checkpoint.every_fraction, s.checkpoint.every_steps = 0.0, 2
    cfg.sft.per_device_batch_size, cfg.sft.buckets = 2, (512, 1024, 2048, 4096)
    cfg.video.sft.min_pixels = 32 * 32
    summary = main_sft(cfg)
    assert summary["steps"] == summary["total_steps"] == 2   # a stopped run raises errors.Stopped instead
    with open(summary["metrics_jsonl"]) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 and r["label_tokens"] > 0 for r in rows), rows


def test_interrupted_builds_are_byte_identical(built, tmp_path):
    from vsr1_jax.prepare import run_build
    ref = tree(built["paths"].dataset_dir)
    # (1) stopped after step k = embed_queries, then the rest (the finished steps are skipped)
    cfg = toy_config(tmp_path / "b", built["raw"], built["ann"])
    cfg.data.build.steps = "annotations-embed_queries"
    run_build(cfg, **built["models"])
    cfg.data.build.steps = "all"
    s = run_build(cfg, **built["models"])
    assert [k for k, v in s["steps"].items() if v["status"] == "skipped"] == list(STEPS[:4])
    assert tree(PreparedPaths(cfg.data_root, cfg.dataset).dataset_dir) == ref

    # (2) killed inside the video-embedding step after its first chunk, then restarted: it continues
    class Dies:
        def __init__(self, inner, after):
            self.inner, self.calls, self.after = inner, 0, after

        def embed_texts(self, *a, **k):
            return self.inner.embed_texts(*a, **k)

        def embed_videos(self, *a, **k):
            self.calls += 1
            if self.calls > self.after:
                raise KeyboardInterrupt("simulated kill")
            return self.inner.embed_videos(*a, **k)

    cfg = toy_config(tmp_path / "c", built["raw"], built["ann"])
    dies = Dies(built["models"]["embedder"], after=1)
    with pytest.raises(KeyboardInterrupt):
        run_build(cfg, embedder=dies, teacher=built["models"]["teacher"])
    paths = PreparedPaths(cfg.data_root, cfg.dataset)
    assert (paths.segment_embeds("train").parent / ".partial" / "chunk_000000.json").exists()
    assert not paths.segment_embeds("train").exists()  # nothing half-written in the final place
    resumed = Dies(built["models"]["embedder"], after=10 ** 6)
    s = run_build(cfg, embedder=resumed, teacher=built["models"]["teacher"])
    assert s["steps"]["embed_videos"]["status"] == "ran" and s["steps"]["npy_train"]["status"] == "skipped"
    assert resumed.calls == 1 + 2  # train chunk 1 (chunk 0 was kept) and both test chunks
    assert tree(paths.dataset_dir) == ref


def test_parse_steps():
    assert parse_steps("all") == list(STEPS)
    assert parse_steps("grpo,annotations") == ["annotations", "grpo"]
    assert parse_steps("index-teacher") == ["index", "top1_pool", "teacher"]
    with pytest.raises(RuntimeError, match="unknown build step"):
        parse_steps("nope")


# ---------------------------------------------------------------------------------------------------------------
# Frames: the original's index choice and resize, on real files
# ---------------------------------------------------------------------------------------------------------------
def spec_npy_indices(total, duration, fps=1.0, maxlen=64):
    """E §3.4 / S §6.1: T0 = min(total, 64, max(1, floor(duration * fps))) at linspace(0, total - 1, T0), int."""
    t0 = min(total, maxlen, max(1, math.floor(duration * fps)))
    return [int(x) for x in np.linspace(0, total - 1, t0).astype(np.int32)]


def spec_size(h, w, max_px=200704, min_px=256):
    """S §6.1: scale to <= max_px keeping aspect (int truncation), then up to >= min_px."""
    if h * w > max_px:
        f = math.sqrt(max_px / (h * w))
        w, h = max(1, int(w * f)), max(1, int(h * f))
    if h * w < min_px:
        f = math.sqrt(min_px / (h * w))
        w, h = max(1, int(w * f)), max(1, int(h * f))
    return h, w


def test_npy_indices_and_size_match_the_spec():
    rng = random.Random(0)
    for _ in range(300):
        total, dur, maxlen = rng.randint(1, 5000), rng.uniform(0.1, 400), rng.choice([32, 64])
        assert FR.npy_sample_indices(total, dur, 1.0, maxlen).tolist() == spec_npy_indices(total, dur, 1.0, maxlen)
        h, w = rng.randint(1, 2160), rng.randint(1, 3840)
        assert FR.target_size(h, w, 200704, 256) == spec_size(h, w)
    assert FR.npy_sample_indices(0, None, 1.0, 64).tolist() == list(range(64))  # no frame count: X's quirk


def test_extracted_frames_are_the_chosen_decoded_frames(tmp_path):
    frames = _frames(37, 5, h=480, w=640)  # odd count at 1 fps -> even pad; 640x480 > 200704 px -> resized
    path = FR.write_test_video(tmp_path / "v.mp4", frames, fps=4)
    arr, meta = FR.extract_npy_frames(path, extract_utc=FIXED_UTC)
    want = spec_npy_indices(37, 37 / 4)  # 9 frames (9.25 s at 1 fps)
    assert meta["requested_indices_src"] == want and meta["sampled_frames_before_even_pad"] == 9
    assert meta["even_pad_applied"] and meta["sampled_indices_src"] == want + [want[-1]]
    av = FR.av_module()
    with av.open(str(path)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    h, w = spec_size(480, 640)
    expect = [np.asarray(Image.fromarray(decoded[i]).resize((w, h), Image.BICUBIC)) for i in want + [want[-1]]]
    np.testing.assert_array_equal(arr, np.stack(expect))
    assert meta["raw_fps"] == 4.0 and meta["sampled_timestamps_sec"][:2] == [0.0, want[1] / 4]
    # a container without a frame count (mkv): the original's first-64-frames rule, or the duration estimate
    mkv = FR.write_test_video(tmp_path / "v.mkv", frames, fps=4)
    assert FR.stream_info(mkv).frames == 0
    _, m_orig = FR.extract_npy_frames(mkv, extract_utc=FIXED_UTC)
    assert m_orig["requested_indices_src"] == list(range(64)) and m_orig["sampled_indices_src"][-1] == 36
    _, m_est = FR.extract_npy_frames(mkv, unknown_frame_count="estimate", extract_utc=FIXED_UTC)
    assert m_est["requested_indices_src"] == spec_npy_indices(37, 37 / 4)
    with pytest.raises(FR.VideoDecodeError, match="cannot open"):
        FR.extract_npy_frames(tmp_path / "missing.mp4")
    # the search engine's frames: 1 fps over the annotated duration at the original resolution
    emb, info = FR.embedder_frames(path, duration=37 / 4)
    assert info["idxs"] == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36] and emb.shape == (10, 480, 640, 3)
    np.testing.assert_array_equal(emb[3], decoded[12])


# ---------------------------------------------------------------------------------------------------------------
# Pure step logic vs a plain-Python transcription of the spec, on random cases
# ---------------------------------------------------------------------------------------------------------------
def test_pool_sampling_matches_the_spec():
    """E §3.8: up to N match + N not_match (seed 42): one Random(42) shuffles the matches, the misses, then the
    kept rows together (build_top1_pool.py L462-475)."""
    rng = random.Random(1)
    for _ in range(200):
        m = [("m", i) for i in range(rng.randint(0, 30))]
        n = [("n", i) for i in range(rng.randint(0, 30))]
        cm, cn, seed = rng.randint(-1, 35), rng.randint(-1, 35), rng.randint(0, 99)
        r = random.Random(seed)
        mm, nn = list(m), list(n)
        r.shuffle(mm)
        r.shuffle(nn)
        want = mm[:len(mm) if cm <= 0 else min(cm, len(mm))] + nn[:len(nn) if cn <= 0 else min(cn, len(nn))]
        r.shuffle(want)
        assert SEL.sample_pool(m, n, cm, cn, seed) == want


def test_top1_pool_labels_and_gt_fields():
    rng = np.random.default_rng(2)
    docs = [f"v{i}" for i in range(6)]
    meta = [{"qid": f"{i}_fig", "query": f"q {i}", "pos_doc_id": docs[i % 6], "fig_score": 0.5} for i in range(20)]
    meta[3]["pos_doc_id"] = "not_in_corpus"
    raw = [{"video": m["pos_doc_id"], "time": [float(i), i + 2.5], "desc_id": i, "fig_desc": m["query"]}
           for i, m in enumerate(meta)]
    top1 = rng.integers(0, 6, 20)
    doc_meta = {d: {"doc_id": d, "video_id": d, "video_path": f"/raw/{d}.mp4", "start": 0.0, "end": 9.0,
                    "duration": 9.0} for d in docs}
    pool, stats = SEL.top1_pool(meta, top1, np.linspace(1, 0, 20), docs, doc_meta, raw, num_match=3,
                                num_not_match=4)
    valid = [i for i in range(20) if i != 3]
    assert stats["valid"] == 19 and len(pool) == min(3, sum(docs[top1[i]] == meta[i]["pos_doc_id"] for i in valid)) \
        + min(4, sum(docs[top1[i]] != meta[i]["pos_doc_id"] for i in valid))
    for r in pool:
        i = r["query_index"]
        assert r["gold_label"] == ("match" if docs[top1[i]] == meta[i]["pos_doc_id"] else "not_match")
        assert r["pair_id"] == f"{i}_fig::{docs[top1[i]]}" and r["top1_rank"] == 1
        assert (r["gt_start"], r["gt_end"], r["gt_duration"]) == (float(i), i + 2.5, 2.5)  # span length (L169-172)
        assert r["top1_video_path"] == f"/raw/{docs[top1[i]]}.mp4" and r["top1_duration"] == 9.0


def spec_hard_negatives(ranked_ids, pos, pool, cap):
    """E §3.7: top-`pool` by cosine, skipping the positive and duplicates, capped at `cap`."""
    out = []
    for d in ranked_ids[:pool]:
        if d != pos and d not in out:
            out.append(d)
        if len(out) >= cap:
            break
    return out


def test_negative_selection_matches_the_spec():
    rng = np.random.default_rng(3)
    for _ in range(50):
        nd, nq = int(rng.integers(2, 40)), int(rng.integers(1, 15))
        docs = [f"d{int(x)}" for x in rng.integers(0, nd, nd)]  # repeated ids exercise the dedup
        v, q = rng.standard_normal((nd, 8)), rng.standard_normal((nq, 8))
        meta = [{"qid": f"{i}_fig", "pos_doc_id": docs[int(rng.integers(nd))]} for i in range(nq)]
        pool, cap = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        order = SEL.rank_order(SEL.l2_normalize(q) @ SEL.l2_normalize(v).T)
        got, _ = SEL.hard_negatives(meta, order[:, :min(pool, nd)], docs, max_negatives=cap)
        for i, m in enumerate(meta):
            ranked = [docs[r] for r in order[i]]
            assert got[m["qid"]] == spec_hard_negatives(ranked, m["pos_doc_id"], pool, cap)


def test_grpo_rows_and_balancing_match_the_spec():
    """E §3.9: one row per raw row; solution by top-1 == GT; <= 24 negatives from the top-200 without the GT,
    1-based ranks; then clones of not-matched rows showing the GT video until #matched = ceil(#not_matched)."""
    rng = np.random.default_rng(4)
    for trial in range(20):
        nd, nq = int(rng.integers(3, 30)), int(rng.integers(2, 25))
        docs = [f"d{i}" for i in range(nd)]
        v, q = rng.standard_normal((nd, 8)), rng.standard_normal((nq, 8))
        meta = [{"qid": f"{i}_fig", "query": f"query {i}", "pos_doc_id": docs[int(rng.integers(nd))]}
                for i in range(nq)]
        raw = []
        for i, m in enumerate(meta):
            t = [float(rng.uniform(0, 5)), float(rng.uniform(5, 9))] if rng.random() < 0.8 else None
            raw.append({"video": m["pos_doc_id"], "time": t, "duration": 10.0 if rng.random() < 0.7 else None,
                        "fig_desc": m["query"], "desc_id": i})
        have_npy = {d for d in docs if rng.random() < 0.8}
        topk, depth = int(rng.integers(1, 30)), int(rng.integers(1, 250))
        rows, stats = SEL.grpo_rows(raw, meta, q, SEL.numpy_search(v), docs, have_npy.__contains__,
                                    dataset_name="T", problem_prefix="SYS", hard_negative_topk=topk,
                                    hard_negative_depth=depth, augment_seed=trial)
        # transcription
        vn = v / np.linalg.norm(v, axis=1, keepdims=True)
        base = []
        for i, ex in enumerate(raw):
            qn = q[i] / np.linalg.norm(q[i])
            ranked = [docs[r] for r in np.argsort(-(vn @ qn), kind="stable")][:max(1, depth, topk + 1)]
            top1 = ranked[0]
            if top1 not in have_npy:
                continue
            negs = [(d, k + 1) for k, d in enumerate(ranked) if d != ex["video"]][:topk]
            t = ex["time"] if ex["time"] and ex["time"][1] > ex["time"][0] else None
            base.append(dict(gt=ex["video"], top1=top1, match=top1 == ex["video"], negs=negs, time=t,
                             dur=ex["duration"]))
        assert [(r["retrieved_video"], r["label"] == "matched") for r in rows[:len(base)]] == \
            [(b["top1"], b["match"]) for b in base]
        for r, b in zip(rows, base):
            assert r["solution"] == ("<answer>matched</answer>" if b["match"] else
                                     "<answer>not_matched</answer><REFINE>")
            assert list(zip(r["hard_negative_ids"], r["hard_negative_ranks"])) == b["negs"]
        n_match, n_not = sum(b["match"] for b in base), sum(not b["match"] for b in base)
        cands = [b for b in base if not b["match"] and b["gt"] in have_npy and (b["time"] or b["dur"])]
        need = max(0, math.ceil(n_not) - n_match) if n_not else 0
        aug = rows[len(base):]
        assert len(aug) == (need if cands else 0) == stats["rows_augmented_match_added"]
        r2 = random.Random(trial)
        picked = []
        while cands and len(picked) < need:
            cyc = list(cands)
            r2.shuffle(cyc)
            picked += cyc[:need - len(picked)]
        for a, b in zip(aug, picked):
            s, e = b["time"] or [0.0, b["dur"]]
            assert a["retrieved_video"] == a["gt_video"] == b["gt"] and a["label"] == "matched" and a["is_augmented"]
            assert a["solution"] == f"<answer>matched</answer><start>{s:.2f}</start><end>{e:.2f}</end><REFINE>"
            assert a["source_retrieved_video"] == b["top1"]
        if cands or not need:
            assert sum(r["label"] == "matched" for r in rows) >= math.ceil(n_not) or not n_not
        assert [r["problem_id"] for r in rows] == list(range(len(rows)))


def spec_span(row):
    """E §3.8: the teacher's parsed span, else the GT time, else the top-1 start/end (start < 0 -> 0, end >= start),
    else [0, top1_duration]."""
    def num(x):
        try:
            x = float(x)
        except (TypeError, ValueError):
            return None
        return None if x != x else x
    for a, b in (("model_temporal_start", "model_temporal_end"), ("gt_start", "gt_end"), ("top1_start", "top1_end")):
        s, e = num(row.get(a)), num(row.get(b))
        if s is not None and e is not None and e >= max(s, 0.0):
            return max(s, 0.0), e
    d = num(row.get("top1_duration"))
    return (0.0, d) if d is not None and d >= 0 else (0.0, 0.0)


def test_conversion_span_choice_matches_the_spec():
    rng = random.Random(5)
    choices = [None, float("nan"), "x", -3.0, 0.0, 1.25, 7.5, 12.0, "4.5"]
    for i in range(500):
        row = {k: rng.choice(choices) for k in ("model_temporal_start", "model_temporal_end", "gt_start", "gt_end",
                                               "top1_start", "top1_end", "top1_duration")}
        row.update(qid=f"{i}_fig", query="q", top1_doc_id="a", query_pos_doc_id="a", gold_label="match",
                   model_label=rng.choice(["match", "", "not_match"]), model_reasoning="Reasoning:  two  words",
                   model_finish_reason=rng.choice(["stop", "length", ""]))
        assert OT.matched_span(row) == spec_span(row)
        items, stats = OT.convert_rows([row])
        if row["model_finish_reason"] == "length":
            assert items == [] and stats["skipped_finish_reason"] == 1
            continue
        target = items[0]["messages"][2]["content"]
        if row["model_label"] == "not_match":
            assert target == "<think> two words </think> <answer>not_matched</answer> <REFINE>"
        else:
            s, e = spec_span(row)
            assert target == (f"<think> two words </think> <answer>matched</answer> <start>{P.format_seconds(s)}"
                              f"</start> <end>{P.format_seconds(e)}</end> <REFINE>")
        assert items[0]["meta"]["gold_label"] == "pos" and items[0]["videos"] == ["a.npy"]


def test_teacher_prompts_and_parsing():
    row = {"query": "a dog runs", "gold_label": "match", "gt_start": 11.6, "gt_end": 17.7}
    msgs = TE.messages(row)
    assert msgs[0]["content"] == TE.POS_SYSTEM_PROMPT
    assert msgs[1]["content"][0]["text"] == 'Query: "a dog runs"\nGround-truth segment for query: start=11.6, end=17.7'
    assert msgs[1]["content"][1]["type"] == "video"
    assert TE.messages(dict(row, gold_label="not_match"))[1]["content"][0]["text"] == 'Query: "a dog runs"'
    out = TE.output_row(dict(row, gold_label="not_match"),
                        "<think>hmm</think>\nReasoning: no dog.\nTemporal Grounding: 3 - 5.5", None, "stop")
    assert (out["model_think"], out["model_reasoning"], out["model_temporal_start"], out["model_temporal_end"]) == \
        ("hmm", "no dog.", 3.0, 5.5)
    assert out["model_label"] == "not_match" and out["model_gold_consistent"] and out["model_error"] == ""
    assert TE.normalize_label("Mismatch") == TE.normalize_label("does not match") == "not_match"
    assert TE.normalize_label("notebook") == "" and TE.normalize_label("Matches") == "match"
    assert TE.normalize_label("Not matched") == "match"  # GM's regex: "not match" needs a word end after "match"


def test_teacher_batches_of_unequal_prompts_run_on_the_fused_prefill(cudnn_as_xla):
    """On GPUs the teacher's sampler runs the fused cudnn prefill (model.attn_impl "auto"), which takes right-padded
    prompts only: the teacher packs for its sampler, and draws what the dense, left-padded path draws."""
    from configs.build_toy import get_config
    from vsr1_jax.prepare import make_teacher
    from vsr1_jax.processing import prompts as PR
    c = get_config()
    teachers = {}
    for impl in ("cudnn", "xla"):
        c.model.attn_impl = impl
        teachers[impl] = make_teacher(c, BuildSettings.from_config(c))
    assert (teachers["cudnn"].sampler.padding, teachers["xla"].sampler.padding) == ("right", "left")
    frames = np.random.RandomState(0).randint(0, 255, (4, 64, 96, 3), np.uint8)
    reqs = [{"messages": [{"role": "user", "content": [{"type": "text", "text": text}, PR.video_item()]}],
             "frames": frames, "meta": {}, "index": i}
            for i, text in enumerate(["is it there?", "a much longer question about the red circle that moves left",
                                      "where"])]
    out = {impl: t(reqs) for impl, t in teachers.items()}
    assert all(o[2] is None and o[0] for o in out["cudnn"]), out["cudnn"]
    assert out["cudnn"] == out["xla"]
