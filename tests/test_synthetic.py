"""Tests of the synthetic corpus (vsr1_jax.data.synthetic) and the search-engine embedder (vsr1_jax.retrieval.encoder):
layout validity and reader round trips, determinism by seed, pixels vs annotations, SFT/GRPO construction."""
import hashlib
import json
import math
import re

import numpy as np
import pytest

from configs._synthetic import get_synthetic_config
from vsr1_jax.data import synthetic as S
from vsr1_jax.data import synthetic_text as TX
from vsr1_jax.data import synthetic_world as SW
from vsr1_jax.data.files import (
    GRPO_STATS_KEYS,
    index_video_npy_meta,
    read_grpo_rows,
    read_hard_negatives,
    read_id_map,
    read_query_meta,
    read_raw_annotation,
    read_sft_items,
    read_sft_reasoning,
    read_video_npy,
    read_video_npy_meta,
)
from vsr1_jax.data.paths import SPLITS
from vsr1_jax.data.queries import eval_queries, grpo_records, load_retrieval, sft_records
from vsr1_jax.data.validate import validate_dataset
from vsr1_jax.processing import prompts as P


class FakeEmbedder:
    """Deterministic unit vectors from a hash of the text / the video bytes: no model, instant."""

    def __init__(self, dim: int = 16):
        self.dim = dim

    def _vec(self, data: bytes) -> np.ndarray:
        v = np.random.default_rng(int.from_bytes(hashlib.sha256(data).digest()[:8], "little")).standard_normal(self.dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def embed_texts(self, texts, batch_size=32):
        return np.stack([self._vec(t.encode()) for t in texts])

    def embed_videos(self, videos, batch_size=8):
        return np.stack([self._vec(np.ascontiguousarray(v).tobytes()) for v in videos])


def small_config(seed: int = 0):
    cfg = get_synthetic_config()
    cfg.seed = seed
    cfg.train.num_videos, cfg.test.num_videos = 6, 4
    cfg.video.min_frames, cfg.video.max_frames = 8, 10
    cfg.video.height = cfg.video.width = 32
    cfg.video.shape_size = 8
    cfg.progress = False
    return cfg


def build(root, seed: int = 0):
    return S.build_synthetic_dataset(root, "syn", small_config(seed), embedder=FakeEmbedder())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(tmp_path_factory.mktemp("a"))


def _files(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------- layout

def test_validates_and_round_trips(built):
    paths = built.paths
    rep = validate_dataset(paths)
    assert rep.ok, rep.summary()
    for key in ("train/rows_valid", "test/rows_valid"):
        assert rep.counts[key] == built.counts[key.replace("rows_valid", "queries")]
    assert not any(v for k, v in rep.counts.items() if "missing" in k or "unknown" in k or "invalid" in k), rep.counts

    for split in SPLITS:
        plan_ids = [v.video_id for v in built.plans[split]]
        corpus, queries = load_retrieval(paths, split)
        assert list(corpus.doc_ids) == plan_ids == read_id_map(paths.id_map(split))
        assert queries.dim == corpus.dim == 16
        np.testing.assert_allclose(np.linalg.norm(corpus.matrix, axis=1), 1, atol=1e-6)
        raw = read_raw_annotation(paths.raw_annotation(split))
        assert {f"{r.desc_id}_fig" for r in raw} == {m.qid for m in queries.meta}  # qid = <desc_id>_fig
        assert len({r.fig_desc for r in raw}) == len(raw) == len(queries)  # one meta row per query text
        es = eval_queries(paths, split)
        assert len(es.queries) == len(raw) and not any(es.skips.values())
        for q in es.queries:  # every eval query resolves to its annotated video and span
            assert corpus.doc_ids[q.pos_row] == q.gt_doc_id == raw[q.index].video
            assert [q.gt_start, q.gt_end] == raw[q.index].time
        meta = index_video_npy_meta(read_video_npy_meta(paths.video_npy_meta(split)))
        for v in built.plans[split]:
            arr = read_video_npy(paths.video_npy(split, v.video_id))
            assert arr.shape == (v.num_frames, 32, 32, 3) and meta[v.video_id].output_num_frames == v.num_frames
            assert meta[v.video_id].sampled_timestamps_sec == [float(i) for i in range(v.num_frames)]

    hn = read_hard_negatives(paths.hard_negatives)
    meta = read_query_meta(paths.query_meta("train"))
    assert set(hn) == {m.qid for m in meta}
    for m in meta:  # top-50 pool of a 6-video corpus minus the positive
        assert len(hn[m.qid]) == len(set(hn[m.qid])) == 5 and m.pos_doc_id not in hn[m.qid]

    sft, counts = sft_records(paths)
    assert counts["items_kept"] == counts["items_total"] == built.counts["sft/items"] and sft
    grpo, counts = grpo_records(paths)
    assert counts["rows_kept"] == counts["rows_total"] == built.counts["grpo/rows"] and grpo
    for rec in grpo:
        assert rec["has_gt_time"] and rec["hard_negative_rows"].shape == (24,)
        assert rec["gt_row"] >= 0 and rec["gt_video"] not in rec["hard_negative_ids"]


def test_refuses_non_empty_dir_and_too_small_attribute_space(tmp_path):
    (tmp_path / "syn").mkdir()
    (tmp_path / "syn" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        build(tmp_path)
    cfg = small_config()
    cfg.attributes.shapes, cfg.attributes.directions, cfg.attributes.lanes = ("circle",), ("left",), ("middle",)
    cfg.attributes.backgrounds = {"black": (0, 0, 0)}
    cfg.attributes.colors = {"red": (255, 0, 0), "blue": (0, 0, 255)}  # 2 unique events at most
    with pytest.raises(SW.WorldTooSmallError, match=r"config.synthetic.train.num_videos=\d+ .*unique events"):
        SW.plan_split(cfg, "train")


def test_default_plan_unique_events_and_near_duplicates():
    cfg = get_synthetic_config()
    for split in SPLITS:
        videos = SW.plan_split(cfg, split)
        assert len(videos) == cfg[split].num_videos
        keys = []
        for v in videos:
            assert v.num_frames % 2 == 0 and cfg.video.min_frames <= v.num_frames <= cfg.video.max_frames
            spans = sorted((e.start, e.end) for e in v.events)
            assert all(0 <= s and e - s >= cfg.video.min_span_sec and e < v.num_frames for s, e in spans)
            assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))  # events never overlap in time
            colors = [e.color for e in v.events] + ([v.distractor.color] if v.distractor else [])
            assert len(colors) == len(set(colors))  # each colour on screen belongs to one thing
            keys += [(e.shape, e.color, e.direction, e.lane, v.background) for e in v.events]
        assert len(keys) == len(set(keys))  # each query has exactly one matching video
        # near-duplicates (one attribute apart) in other videos make retrieval imperfect by design
        near = sum(any(sum(a != b for a, b in zip(k, o)) == 1 for o in keys) for k in keys)
        assert near >= len(keys) // 3, (near, len(keys))
        assert any(len(v.events) == 2 for v in videos) and any(v.distractor for v in videos)


# ---------------------------------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_other_seed_differs(built, tmp_path):
    ref = _files(built.paths.dataset_dir)
    assert len(ref) == 4 + 2 * 6 + 6 + 4 + 2 + 1 + 2 + 2  # json(l)s, split files, npys, hard negs, sft, grpo
    same = _files(build(tmp_path / "same", seed=0).paths.dataset_dir)
    assert same.keys() == ref.keys()
    assert [k for k in ref if ref[k] != same[k]] == []
    other = _files(build(tmp_path / "other", seed=1).paths.dataset_dir)
    assert other["raw_annotation/train.jsonl"] != ref["raw_annotation/train.jsonl"]
    assert other["train/video_npy_with_meta/syn_train_0000.npy"] != ref["train/video_npy_with_meta/syn_train_0000.npy"]


# ---------------------------------------------------------------------------------------------------- pixels

# query wording -> (axis of np.argwhere: 0 rows / 1 columns, sign of the centroid's motion along it)
_DIRECTIONS = {"to the left": (1, -1), "to the right": (1, 1), "upward": (0, -1), "downward": (0, 1)}


def test_annotated_spans_contain_the_moving_shape(built):
    """Read from the files only: each query's colour is on screen exactly in its annotated span and moves as
    the query says."""
    cfg = small_config()
    colors = dict(cfg.attributes.colors)
    checked = 0
    for split in SPLITS:
        for row in read_raw_annotation(built.paths.raw_annotation(split)):
            frames = read_video_npy(built.paths.video_npy(split, row.video))
            (color,) = [c for c in colors if re.search(rf"\b{c}\b", row.fig_desc)]
            (direction,) = [d for d in _DIRECTIONS if d in row.fig_desc]
            start, end = (int(t) for t in row.time)
            assert row.time == [float(start), float(end)] and row.duration == float(len(frames))
            hit = np.all(frames == np.asarray(colors[color], np.uint8), axis=-1)  # [T, H, W]
            present = hit.any(axis=(1, 2))
            assert present[start:end + 1].all() and not present[:start].any() and not present[end + 1:].any()
            axis, sign = _DIRECTIONS[direction]
            centers = [np.argwhere(hit[t])[:, axis].mean() for t in range(start, end + 1)]
            assert np.all(sign * np.diff(centers) > 0), (row.fig_desc, centers)
            checked += 1
    assert checked == built.counts["train/queries"] + built.counts["test/queries"]


def test_render_matches_plan(built):
    cfg = small_config()
    for v in built.plans["train"][:3]:
        stored = read_video_npy(built.paths.video_npy("train", v.video_id))
        np.testing.assert_array_equal(SW.render_video(v, cfg), stored)


# ---------------------------------------------------------------------------------------------------- SFT / GRPO

def test_sft_items(built):
    paths = built.paths
    items = read_sft_items(paths.sft_oneturn)
    reasoning = read_sft_reasoning(paths.sft_reasoning)
    assert [r["pair_id"] for r in reasoning] == [it.meta.pair_id for it in items]
    raw = {r.fig_desc: r for r in read_raw_annotation(paths.raw_annotation("train"))}
    labels = {it.meta.gold_label for it in items}
    assert labels == {"pos", "neg"}
    for it in items:
        assert it.messages[0] == {"role": "system", "content": P.sft_system_prompt()}
        assert it.messages[1]["content"] == f'Query: "{it.query}"\nRetrieved video: <video>'
        assert it.videos == [f"{it.video_id}.npy"]
        target = it.message("assistant")
        r = raw[it.query]
        if it.meta.gold_label == "pos":
            assert it.video_id == it.meta.query_pos_video_id == r.video
            assert target.endswith(f"<answer>matched</answer> <start>{P.format_seconds(r.time[0])}</start> "
                                   f"<end>{P.format_seconds(r.time[1])}</end> <REFINE>")
        else:
            assert it.video_id != r.video and "differs in" in target
            assert target.endswith("</think> <answer>not_matched</answer> <REFINE>")
    # the top-1 rows are real retrieval results; the others show the GT video (synthetic balancing)
    top1 = [r for r in reasoning if "augmentation_type" not in r]
    assert len(top1) == built.counts["train/queries"] and all(r["top1_rank"] == 1 for r in top1)
    assert sum(it.meta.gold_label == "pos" for it in items) == math.ceil(
        sum(r["gold_label"] == "not_match" for r in top1) * 1.0)


def test_grpo_rows_and_balance(built):
    paths = built.paths
    rows = read_grpo_rows(paths.grpo_rows)
    stats = json.loads(paths.grpo_stats.read_text())
    assert list(stats) == list(GRPO_STATS_KEYS)
    raw = read_raw_annotation(paths.raw_annotation("train"))
    base = [r for r in rows if not r.is_augmented]
    aug = [r for r in rows if r.is_augmented]
    assert [r.query for r in base] == [r.fig_desc for r in raw]  # one row per raw row, in file order
    assert [r.problem_id for r in rows] == list(range(len(rows)))
    n_match, n_not = (sum(r.label == x for r in base) for x in ("matched", "not_matched"))
    assert (stats["rows_matched_raw"], stats["rows_not_matched_raw"]) == (n_match, n_not)
    assert n_not > 0 and len(aug) == stats["rows_augmented_match_added"] == math.ceil(n_not * 1.0) - n_match
    assert stats["rows_matched"] == stats["rows_not_matched"] == n_not  # balanced
    assert stats["rows_written"] == len(rows) and stats["hard_negative_avg_count"] == 5.0
    for r, src in zip(base, raw):
        assert r.gt_video == src.video and r.gt_time == src.time and r.gt_duration == src.duration
        assert r.problem == P.sft_system_prompt() + "\n\nQuery:\n" + r.query
        assert (r.label == "matched") == (r.retrieved_video == r.gt_video) and r.path == f"{r.retrieved_video}.npy"
        assert r.solution == ("<answer>matched</answer>" if r.label == "matched"
                              else "<answer>not_matched</answer><REFINE>")
        assert len(r.hard_negative_ids) == 5 and r.gt_video not in r.hard_negative_ids
        assert r.hard_negative_ranks == sorted(r.hard_negative_ranks) and r.hard_negative_ranks[0] in (1, 2)
        assert r.hard_negative_scores == sorted(r.hard_negative_scores, reverse=True)
    for r in aug:
        assert r.retrieved_video == r.gt_video != r.source_retrieved_video and r.path == f"{r.gt_video}.npy"
        assert r.solution == (f"<answer>matched</answer><start>{r.gt_time[0]:.2f}</start>"
                              f"<end>{r.gt_time[1]:.2f}</end><REFINE>")
        assert (r.augmentation_type, r.source_label, r.label) == ("gt_video_positive", "not_matched", "matched")


# ---------------------------------------------------------------------------------------------------- embedder

def test_text_video_embedder_on_tiny_random_model():
    import threading

    import jax.numpy as jnp
    from flax import nnx

    from vsr1_jax.demo_models import tiny_embedder
    from vsr1_jax.models.embedder import embed
    from vsr1_jax.models.qwen3_vl.rope import text_positions

    # min_pixels lowered so the 32x32 frames become 128x128 (16 tokens per frame pair) instead of 384x384: same code
    # path, a smaller compiled forward
    emb = tiny_embedder(0, video_cfg={"total_pixels": 10 * 768 * 32 * 32, "min_pixels": 4 * 32 * 32})
    a, b = "a red circle moves to the left", "on a gray background, a blue square moves upward through the center"
    x = emb.embed_texts([a, b, a])
    assert x.shape == (3, emb.dim) == (3, 64) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(x[0], x[2])
    assert np.abs(x[0] - x[1]).max() > 1e-3
    y = emb.embed_texts([b, a, b])  # same padded shape, other batch positions: pooling must not depend on them
    np.testing.assert_allclose(y[1], x[0], atol=1e-6)
    np.testing.assert_allclose(y[0], x[1], atol=1e-6)
    # padding to the length bucket must not change the vector: the unpadded prompt through models.embedder.embed
    ids = emb.text_ids(a)
    assert len(ids) % 32 and emb.tokenizer.decode(ids).startswith("<|im_start|>system\nRepresent the user's input.")
    ones = np.ones((1, len(ids)), np.int32)
    ref = embed(nnx.merge(emb.graphdef, emb.state), jnp.asarray(ids[None]), jnp.asarray(text_positions(ones)),
                jnp.asarray(ones))
    np.testing.assert_allclose(np.asarray(ref)[0], x[0], atol=1e-5)

    video = SW.render_video(SW.plan_split(small_config(), "train")[0], small_config())
    ids, vi = emb.video_inputs(video)
    assert (ids == emb.cfg.video_token_id).sum() == vi.num_tokens and vi.grid_thw[1:] == (8, 8)
    v1 = emb.embed_videos([video])
    assert v1.shape == (1, 64) and abs(np.linalg.norm(v1[0]) - 1) < 1e-5
    np.testing.assert_array_equal(emb.embed_videos([video]), v1)
    assert np.abs(v1[0] - x[0]).max() > 1e-3
    # the host preparation in threads (the build's prep_workers) gives the same vectors in the same order
    other = SW.render_video(SW.plan_split(small_config(), "train")[1], small_config())
    serial = emb.embed_videos([video, other, video], batch_size=4)
    emb.prep_workers = 3
    threads, prep = set(), emb._video_pixels
    emb._video_pixels = lambda v: (threads.add(threading.current_thread().name), prep(v))[1]
    np.testing.assert_array_equal(emb.embed_videos([video, other, video], batch_size=4), serial)
    assert threads and threading.main_thread().name not in threads   # the pool did the preparation
    np.testing.assert_array_equal(serial[0], serial[2])
    assert np.abs(serial[0] - serial[1]).max() > 1e-3


def test_compare_reasoning_checks_each_attribute_and_fits_the_toy_budget():
    """The "compare" teacher text (configs/toy.py): every check pairs the shown event's value with the query's and
    says yes exactly when they are equal, the checks stop at the first "no", and the verdict is "matches" exactly
    after five yes (which holds only for the video that contains the queried event); the describer regex reads it;
    with the answer tags it fits the toy's 160 label positions."""
    from vsr1_jax.data.tiny_tokenizer import build_tiny_tokenizer
    tok = build_tiny_tokenizer()
    cfg = get_synthetic_config()
    videos = SW.plan_splits(cfg)["test"]
    longest = 0
    for v in videos[:24]:
        for w in videos[:24]:
            ev = w.events[0]
            contains = SW._key(ev, w.background) in {SW._key(e, v.background) for e in v.events}
            text = (TX.matched_reasoning(ev, w.background, v, style="compare") if contains
                    else TX.not_matched_reasoning(ev, w.background, v, style="compare"))
            checks = re.search(r"vs query: (.*); so it", text).group(1).split(", ")
            assert all(c.split()[2] == ("yes" if c.split()[0] == c.split()[1] else "no") for c in checks), text
            assert all(c.endswith("yes") for c in checks[:-1]), text   # the checks stop at the first "no"
            assert text.endswith("so it matches.") == contains == (len(checks) == 5 and checks[-1].endswith("yes"))
            said = TX.described_event(text)
            assert said is not None and any(said == {"color": e.color, "shape": e.shape, "direction": e.direction}
                                            for e in v.events), text
            target = (P.assistant_target(P.MATCHED, text, ev.start, ev.end) if contains
                      else P.assistant_target(P.NOT_MATCHED, text))
            longest = max(longest, len(tok(target)["input_ids"]))
    assert longest < 160, longest   # configs/toy.py: label bucket and max new tokens 160, <|im_end|> included
    with pytest.raises(ValueError, match="config.synthetic.reasoning='brief'"):
        S._sft(*[None] * 10, {"reasoning": "brief"}, print)
