"""Prepared-data layout: every file round-trips through its writer and reader, and every kind of bad input is named."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from vsr1_jax.data.files import (
    GRPO_STATS_KEYS,
    id_map_from_docid2row,
    read_docid2row,
    read_embeddings,
    read_faiss_index,
    read_grpo_rows,
    read_grpo_stats,
    read_hard_negatives,
    read_id_map,
    read_query_meta,
    read_raw_annotation,
    read_sft_items,
    read_sft_reasoning,
    read_video_embed_meta,
    read_video_npy,
    read_video_npy_meta,
    write_docid2row,
    write_embeddings,
    write_faiss_index,
    write_grpo_rows,
    write_grpo_stats,
    write_hard_negatives,
    write_id_map,
    write_json,
    write_jsonl,
    write_query_meta,
    write_raw_annotation,
    write_sft_items,
    write_sft_reasoning,
    write_video_embed_meta,
    write_video_npy,
    write_video_npy_meta,
)
from vsr1_jax.data.paths import MissingPreparedFileError, PreparedDataError, PreparedPaths
from vsr1_jax.data.queries import (
    eval_queries,
    grpo_records,
    limit_rows,
    load_corpus,
    load_queries,
    load_retrieval,
    query_text_map,
    sft_records,
)
from vsr1_jax.data.records import (
    GrpoRow,
    QueryMetaRow,
    RawAnnotationRow,
    SftItem,
    SftMeta,
    VideoEmbedMeta,
    VideoNpyMeta,
)
from vsr1_jax.data.validate import validate_dataset

D = 8  # tiny retrieval dim; the real one (2048) is read from the files the same way


def _unit(rng, n, d=D):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _frames(i, t=2):
    return np.full((t, 4, 6, 3), i, dtype=np.uint8)


def write_tiny_dataset(tmp_path, dataset="charades-sta", seed=0):
    """A complete prepared dataset (both splits, SFT, GRPO) written only through the layout writers.

    Test split rows cover every eval skip rule; returns the in-memory objects for comparison.
    """
    rng = np.random.default_rng(seed)
    P = PreparedPaths(tmp_path, dataset)
    out = {"paths": P}
    for split, n_vid in (("train", 6), ("test", 5)):
        vids = [f"{split[:2]}v{i}" for i in range(n_vid)]
        # rows deliberately not in id order, so id_map (sorted by row) differs from the dict order
        perm = list(rng.permutation(n_vid))
        docid2row = {v: int(r) for v, r in zip(vids, perm)}
        vmat = _unit(rng, n_vid)
        write_embeddings(P.segment_embeds(split), vmat)
        write_docid2row(P.docid2row(split), docid2row)
        write_video_embed_meta(P.video_embed_meta(split), [
            VideoEmbedMeta(doc_id=v, video_id=v, video_path=f"/raw/{v}.mp4", start=0.0, end=30.0, duration=30.0,
                           info={"backend": "opencv", "fps": 30.0, "idxs": [0, 30]}) for v in vids])
        npy_meta = []
        for i, v in enumerate(vids):
            write_video_npy(P.video_npy(split, v), _frames(i))
            npy_meta.append(VideoNpyMeta(source_video_path=f"/raw/{v}.mp4", source_total_frames=60,
                                         source_duration_sec=2.0, raw_fps=30.0, target_sample_fps=1.0,
                                         target_max_frames=64, requested_indices_src=[0, 59],
                                         sampled_indices_src=[0, 59], sampled_timestamps_sec=[0.0, 1.97],
                                         sampled_frames_before_even_pad=2, even_pad_applied=False,
                                         output_num_frames=2, output_height=4, output_width=6,
                                         output_dtype="uint8", extract_utc="2026-01-01T00:00:00Z", video_id=v,
                                         output_npy_path=f"/old/abs/{v}.npy"))
        write_video_npy_meta(P.video_npy_meta(split), npy_meta)
        id_map = id_map_from_docid2row(docid2row)
        write_id_map(P.id_map(split), id_map)
        write_faiss_index(P.faiss_index(split), vmat)
        out[split] = dict(vids=vids, docid2row=docid2row, vmat=vmat, id_map=id_map, npy_meta=npy_meta)

    # ---- queries -------------------------------------------------------------------------------------------
    tv, sv = out["train"]["vids"], out["test"]["vids"]
    train_meta = [QueryMetaRow(qid=f"{i}_fig", query=f"train query {i}", pos_doc_id=tv[i % 6], weight=1.0,
                               fig_score=0.9) for i in range(8)]
    test_meta = [
        QueryMetaRow(qid="10_fig", query="a person opens a door", pos_doc_id=sv[0], weight=1.0, fig_score=0.8),
        QueryMetaRow(qid="11_fig", query="dup text", pos_doc_id=sv[1], weight=1.0, fig_score=0.7),
        QueryMetaRow(qid="12_fig", query="someone sits", pos_doc_id=sv[2], weight=1.0, fig_score=0.6),
        QueryMetaRow(qid="13_fig", query="fallback to meta", pos_doc_id=sv[3], weight=1.0, fig_score=0.5),
        QueryMetaRow(qid="14_fig", query="ghost video", pos_doc_id="nope", weight=1.0, fig_score=0.5),
        QueryMetaRow(qid="15_fig", query="bad time", pos_doc_id=sv[4], weight=1.0, fig_score=0.5),
        QueryMetaRow(qid="11_fig_6", query="dup text", pos_doc_id=sv[2], weight=1.0, fig_score=0.4),
    ]
    for split, meta in (("train", train_meta), ("test", test_meta)):
        write_query_meta(P.query_meta(split), meta)
        write_embeddings(P.query_embeddings(split), _unit(rng, len(meta)))
    out["train"]["meta"], out["test"]["meta"] = train_meta, test_meta

    # ---- raw annotation ------------------------------------------------------------------------------------
    train_raw = [RawAnnotationRow(video=tv[i % 6], time=[1.0, 3.5], desc_id=i, duration=30.0, cog_desc="c",
                                  fig_desc=f"train query {i}", fig_desc_score=0.9) for i in range(8)]
    test_raw = [
        RawAnnotationRow(video=sv[0], time=[11.6, 17.7], desc_id=10, duration=28.0, cog_desc="coarse",
                         fig_desc="a person opens a door", fig_desc_score=0.8),          # index 0: valid
        RawAnnotationRow(video=sv[2], time=[9.0, 2.5], desc_id=11, duration=30.0, cog_desc="c",
                         fig_desc="  dup text ", fig_desc_score=0.7),                    # 1: swapped, later dup
        RawAnnotationRow(video=sv[2], time=["3.0s", "4,5"], desc_id=12, duration="30.0", cog_desc="c",
                         fig_desc="someone sits", fig_desc_score=0.6),                   # 2: string times
        RawAnnotationRow(video="not_in_corpus", time=[0.0, 1.0], desc_id=13, duration=30.0, cog_desc="c",
                         fig_desc="fallback to meta", fig_desc_score=0.5),               # 3: GT from meta
        RawAnnotationRow(video="also_missing", time=[0.0, 1.0], desc_id=14, duration=30.0, cog_desc="c",
                         fig_desc="ghost video", fig_desc_score=0.5),                    # 4: pos_doc_missing
        RawAnnotationRow(video=sv[4], time="11.6-17.7", desc_id=15, duration=30.0, cog_desc="c",
                         fig_desc="bad time", fig_desc_score=0.5),                       # 5: gt_time_invalid
        RawAnnotationRow(video=sv[1], time=[1.0, 2.0], desc_id=16, duration=30.0, cog_desc="c",
                         fig_desc="never embedded", fig_desc_score=0.5),                 # 6: not in meta
        RawAnnotationRow(video=sv[0], time=[0.0, 0.0], desc_id=17, duration=None, cog_desc="c",
                         fig_desc="a person opens a door", fig_desc_score=0.5),          # 7: zero-length ok
    ]
    write_raw_annotation(P.raw_annotation("train"), train_raw)
    write_raw_annotation(P.raw_annotation("test"), test_raw)
    out["train"]["raw"], out["test"]["raw"] = train_raw, test_raw

    # ---- hard negatives ------------------------------------------------------------------------------------
    hn = {m.qid: [v for v in tv if v != m.pos_doc_id][:4] for m in train_meta}
    write_hard_negatives(P.hard_negatives, hn)
    out["hard_negatives"] = hn

    # ---- SFT -----------------------------------------------------------------------------------------------
    sys_prompt = "You are a video retrieval assistant. ... <REFINE> ..."
    sft = []
    for i in range(6):
        m = train_meta[i]
        top1 = m.pos_doc_id if i % 2 == 0 else tv[(i + 1) % 6]
        gold = "pos" if top1 == m.pos_doc_id else "neg"
        ans = ("<think> ok </think> <answer>matched</answer> <start>1.0</start> <end>3.5</end> <REFINE>"
               if gold == "pos" else "<think> no </think> <answer>not_matched</answer> <REFINE>")
        sft.append(SftItem(
            qid=m.qid, query=m.query,
            messages=[{"role": "system", "content": sys_prompt},
                      {"role": "user", "content": f'Query: "{m.query}"\nRetrieved video: <video>'},
                      {"role": "assistant", "content": ans}],
            videos=[f"{top1}.npy"],
            meta=SftMeta(source="pairs_with_reasoning", gold_label=gold, video_id=top1,
                         query_pos_video_id=m.pos_doc_id, pair_id=f"{m.qid}::{top1}", episode_type="T1",
                         num_negs=0 if gold == "pos" else 1, top1_video_id=top1, top1_gold_label=gold)))
    write_sft_items(P.sft_oneturn, sft)
    reasoning = [{"pair_id": it.meta.pair_id, "qid": it.qid, "query": it.query, "top1_doc_id": it.video_id,
                  "gold_label": "match" if it.meta.gold_label == "pos" else "not_match", "model_label": "matched",
                  "model_reasoning": "because", "parsed_ok": True, "model_finish_reason": "stop"} for it in sft]
    write_sft_reasoning(P.sft_reasoning, reasoning)
    out["sft"], out["reasoning"] = sft, reasoning

    # ---- GRPO ----------------------------------------------------------------------------------------------
    grpo = []
    for i in range(6):
        m = train_meta[i]
        top1 = m.pos_doc_id if i < 2 else tv[(i + 2) % 6]
        matched = top1 == m.pos_doc_id
        negs = [v for v in tv if v != m.pos_doc_id][:3]
        grpo.append(GrpoRow(
            problem_id=i, qid=m.qid, problem=f"{sys_prompt}\n\nQuery:\n{m.query}", data_type="video",
            problem_type="multiple choice",
            options=["<answer>matched</answer>", "<answer>not_matched</answer><REFINE>"],
            solution="<answer>matched</answer>" if matched else "<answer>not_matched</answer><REFINE>",
            path=f"{top1}.npy", data_source="Verified-Search-Minimal-Top1-charades-sta", query=m.query,
            gt_video=m.pos_doc_id, gt_time=[1.0, 3.5] if i != 3 else None, gt_duration=30.0, retrieved_video=top1,
            label="matched" if matched else "not_matched", hard_negative_ids=negs,
            hard_negative_scores=[0.5 - 0.1 * k for k in range(3)], hard_negative_ranks=[1, 2, 3],
            is_augmented=False))
    aug = GrpoRow(**{**grpo[2].__dict__, "extra": {}})
    aug.problem_id, aug.retrieved_video, aug.path, aug.label = 6, aug.gt_video, f"{aug.gt_video}.npy", "matched"
    aug.solution = "<answer>matched</answer><start>1.00</start><end>3.50</end><REFINE>"
    aug.is_augmented, aug.augmentation_type, aug.source_label = True, "gt_video_positive", "not_matched"
    aug.source_retrieved_video = grpo[2].retrieved_video
    grpo.append(aug)
    write_grpo_rows(P.grpo_rows, grpo)
    stats = {k: 0 for k in GRPO_STATS_KEYS}
    stats.update(dataset_name=dataset, raw_annotation=str(P.raw_annotation("train")), rows_total=8,
                 rows_written=len(grpo), rows_matched=3, rows_not_matched=4, target_match_ratio=1.0,
                 augment_seed=42, hard_negative_topk=24, hard_negative_depth=200, hard_negative_avg_count=3.0)
    write_grpo_stats(P.grpo_stats, stats)
    out["grpo"], out["stats"] = grpo, stats
    return out


@pytest.fixture()
def tiny(tmp_path):
    return write_tiny_dataset(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
def test_paths_follow_the_original_layout(tmp_path):
    P = PreparedPaths(tmp_path, "didemo")
    rel = lambda p: str(p.relative_to(tmp_path))  # noqa: E731
    assert rel(P.raw_annotation("test")) == "didemo/raw_annotation/test.jsonl"
    assert rel(P.query_embeddings("test")) == "didemo/test/query_embedding/query_embeddings.test.npy"
    assert rel(P.query_meta("train")) == "didemo/train/query_embedding/query_meta.train.jsonl"
    assert rel(P.segment_embeds("test")) == "didemo/test/video_embedding_1fps/segment_embeds.npy"
    assert rel(P.docid2row("test")) == "didemo/test/video_embedding_1fps/docid2row.json"
    assert rel(P.video_npy("train", "v1")) == "didemo/train/video_npy_with_meta/v1.npy"
    assert rel(P.video_npy_meta("train")) == "didemo/train/video_npy_with_meta/meta.jsonl"
    assert rel(P.faiss_index("train")) == "didemo/train/index/index.faiss"
    assert rel(P.id_map("train")) == "didemo/train/index/id_map.json"
    assert rel(P.hard_negatives) == "didemo/train/hard_negatives.json"
    assert rel(P.sft_oneturn) == "didemo/sft_data/train_oneturn.json"
    assert rel(P.sft_reasoning) == "didemo/sft_data/top1_reasoning_grounding.train.jsonl"
    assert rel(P.grpo_rows) == "didemo/grpo_data/train.minimal_top1.jsonl"
    assert rel(P.grpo_stats) == "didemo/grpo_data/stats.minimal_top1.json"
    assert PreparedPaths.from_dataset_dir(tmp_path / "didemo") == P
    with pytest.raises(ValueError, match="unknown split"):
        P.raw_annotation("dev")


def test_every_file_round_trips(tiny):
    P = tiny["paths"]
    for split in ("train", "test"):
        t = tiny[split]
        assert [r.to_json() for r in read_raw_annotation(P.raw_annotation(split))] == [r.to_json() for r in t["raw"]]
        assert read_query_meta(P.query_meta(split)) == t["meta"]
        assert read_docid2row(P.docid2row(split)) == t["docid2row"]
        assert read_id_map(P.id_map(split)) == t["id_map"]
        assert read_video_npy_meta(P.video_npy_meta(split)) == t["npy_meta"]
        np.testing.assert_array_equal(read_embeddings(P.segment_embeds(split), "segment_embeds"), t["vmat"])
        assert len(read_video_embed_meta(P.video_embed_meta(split))) == len(t["vids"])
        np.testing.assert_array_equal(read_video_npy(P.video_npy(split, t["vids"][3])), _frames(3))
        index = read_faiss_index(P.faiss_index(split))
        assert (index.ntotal, index.d) == (len(t["vids"]), D)
    assert read_hard_negatives(P.hard_negatives) == tiny["hard_negatives"]
    assert read_sft_items(P.sft_oneturn) == tiny["sft"]
    assert read_sft_reasoning(P.sft_reasoning) == tiny["reasoning"]
    assert read_grpo_rows(P.grpo_rows) == tiny["grpo"]
    assert read_grpo_stats(P.grpo_stats) == tiny["stats"]


def test_written_bytes_are_the_original_formats(tiny):
    P = tiny["paths"]
    # JSONL: one object per line, ensure_ascii=False, null kept for GRPO gt_time, optional absent fields stay absent
    lines = P.grpo_rows.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 7 and all(json.loads(x) for x in lines)
    row3, row6 = json.loads(lines[3]), json.loads(lines[6])
    assert row3["gt_time"] is None and "augmentation_type" not in row3
    assert list(row3)[:5] == ["problem_id", "qid", "problem", "data_type", "problem_type"]
    assert row6["augmentation_type"] == "gt_video_positive" and row6["is_augmented"] is True
    # train_oneturn.json is a JSON array of items with the converter's keys
    sft = json.loads(P.sft_oneturn.read_text())
    assert isinstance(sft, list) and list(sft[0]) == ["qid", "query", "messages", "videos", "meta"]
    assert list(sft[0]["meta"]) == ["source", "gold_label", "video_id", "query_pos_video_id", "pair_id",
                                    "episode_type", "num_negs", "top1_video_id", "top1_gold_label"]
    # npy: float32 embeddings, uint8 frames
    assert np.load(P.segment_embeds("test")).dtype == np.float32
    assert np.load(P.video_npy("test", "tev0")).dtype == np.uint8
    # docid2row = {id: row}; id_map = ids sorted by row
    d2r = json.loads(P.docid2row("test").read_text())
    id_map = json.loads(P.id_map("test").read_text())
    assert [d2r[x] for x in id_map] == list(range(len(id_map)))
    # stats: builder key order
    assert list(json.loads(P.grpo_stats.read_text()))[:3] == ["dataset_name", "raw_annotation", "rows_total"]
    # raw annotation: None-valued optional field is omitted, string times kept verbatim
    raw = [json.loads(x) for x in P.raw_annotation("test").read_text().splitlines()]
    assert "duration" not in raw[7] and raw[2]["time"] == ["3.0s", "4,5"]


def test_unknown_fields_survive_a_round_trip(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"qid": "1_fig", "query": "q", "pos_doc_id": "v", "weight": 1.0, "fig_score": 0.1,
                                "new_field": [1, 2]}) + "\n")
    rows = read_query_meta(path)
    assert rows[0].extra == {"new_field": [1, 2]}
    write_query_meta(tmp_path / "q2.jsonl", rows)
    assert (tmp_path / "q2.jsonl").read_text() == path.read_text()


# ---------------------------------------------------------------------------------------------------------------
def test_missing_file_names_file_and_producing_step(tiny):
    P = tiny["paths"]
    P.query_embeddings("test").unlink()
    with pytest.raises(MissingPreparedFileError) as ei:
        load_queries(P, "test")
    msg = str(ei.value)
    assert str(P.query_embeddings("test")) in msg
    assert "query-embedding step" in msg and "02_embed_queries" in msg and "download_data.bash" in msg
    assert "python -m vsr1_jax.main --config=configs/toy.py" in msg  # a command that exists
    P.grpo_stats.unlink()
    with pytest.raises(MissingPreparedFileError, match="09_build_verified_search_minimal_top1"):
        read_grpo_stats(P.grpo_stats)


def test_malformed_jsonl_line_gives_file_and_line(tiny):
    P = tiny["paths"]
    lines = P.query_meta("test").read_text().splitlines()
    lines[2] = lines[2][:-3]  # cut the closing brace off line 3
    P.query_meta("test").write_text("\n".join(lines) + "\n")
    with pytest.raises(PreparedDataError, match=rf"query_meta\.test\.jsonl:3: malformed JSON"):
        read_query_meta(P.query_meta("test"))
    P.grpo_rows.write_text(P.grpo_rows.read_text() + "[1, 2]\n")
    with pytest.raises(PreparedDataError, match=r"train\.minimal_top1\.jsonl:8: expected a JSON object"):
        read_grpo_rows(P.grpo_rows)


def test_malformed_json_file_and_bad_schema_are_named(tiny):
    P = tiny["paths"]
    text = P.sft_oneturn.read_text().splitlines()
    text[5] = text[5] + ","  # a trailing comma on line 6
    P.sft_oneturn.write_text("\n".join(text))
    with pytest.raises(PreparedDataError, match=r"train_oneturn\.json:\d+: malformed JSON"):
        read_sft_items(P.sft_oneturn)
    # wrong type / missing required field / bad enum, each with file:line
    rows = [json.loads(x) for x in P.grpo_rows.read_text().splitlines()]
    rows[1]["label"] = "maybe"
    write_jsonl(P.grpo_rows, rows)
    with pytest.raises(PreparedDataError, match=r"minimal_top1\.jsonl:2: label 'maybe'"):
        read_grpo_rows(P.grpo_rows)
    del rows[1]["qid"]
    write_jsonl(P.grpo_rows, rows)
    with pytest.raises(PreparedDataError, match=r":2: missing required field 'qid'"):
        read_grpo_rows(P.grpo_rows)
    rows = [json.loads(x) for x in P.query_meta("test").read_text().splitlines()]
    rows[0]["pos_doc_id"] = 7
    write_jsonl(P.query_meta("test"), rows)
    with pytest.raises(PreparedDataError, match=r":1: field 'pos_doc_id' should be str"):
        read_query_meta(P.query_meta("test"))


def test_dim_mismatch_between_queries_and_videos(tiny):
    P = tiny["paths"]
    n = len(tiny["test"]["meta"])
    write_embeddings(P.query_embeddings("test"), _unit(np.random.default_rng(1), n, D + 4))
    with pytest.raises(PreparedDataError, match=r"query embeddings are 12-d but video embeddings are 8-d"):
        load_retrieval(P, "test")
    rep = validate_dataset(P)
    assert not rep.ok and any("dims differ" in e for e in rep.errors)


def test_meta_and_embedding_row_counts_must_agree(tiny):
    P = tiny["paths"]
    write_query_meta(P.query_meta("test"), tiny["test"]["meta"][:-1])
    with pytest.raises(PreparedDataError, match="has 6 rows but .* has 7"):
        load_queries(P, "test")


def test_nan_and_zero_norm_vectors_are_rejected(tiny):
    P = tiny["paths"]
    v = tiny["test"]["vmat"].copy()
    v[2, 1] = np.nan
    np.save(P.segment_embeds("test"), v)
    with pytest.raises(PreparedDataError, match=r"NaN/Inf \(rows \[2\]"):
        load_corpus(P, "test")
    v[2] = 0.0
    np.save(P.segment_embeds("test"), v)
    with pytest.raises(PreparedDataError, match=r"zero-norm row\(s\) \(rows \[2\]\)"):
        load_corpus(P, "test")
    with pytest.raises(PreparedDataError, match="zero-norm"):
        write_embeddings(P.segment_embeds("test"), v)  # writers refuse too


def test_pickled_arrays_are_refused(tiny):
    P = tiny["paths"]
    np.save(P.query_embeddings("test"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PreparedDataError, match="allow_pickle=False"):
        read_embeddings(P.query_embeddings("test"), "query_embeddings")
    np.save(P.video_npy("test", "tev1"), np.array([None, None], dtype=object), allow_pickle=True)
    with pytest.raises(PreparedDataError, match="refusing to load"):
        read_video_npy(P.video_npy("test", "tev1"))


def test_odd_frame_counts_are_errors(tiny):
    P = tiny["paths"]
    rows = [json.loads(x) for x in P.video_npy_meta("train").read_text().splitlines()]
    rows[3]["output_num_frames"] = 5
    write_jsonl(P.video_npy_meta("train"), rows)
    with pytest.raises(PreparedDataError, match=r"meta\.jsonl:4: video 'trv3' has output_num_frames=5"):
        read_video_npy_meta(P.video_npy_meta("train"))
    np.save(P.video_npy("train", "trv0"), np.zeros((3, 4, 6, 3), np.uint8))
    with pytest.raises(PreparedDataError, match="has 3 frames"):
        read_video_npy(P.video_npy("train", "trv0"))
    with pytest.raises(ValueError, match="even"):
        write_video_npy(P.video_npy("train", "trv0"), np.zeros((3, 4, 6, 3), np.uint8))


def test_docid2row_must_cover_every_row_once(tiny):
    P = tiny["paths"]
    d = dict(tiny["test"]["docid2row"])
    a, b = list(d)[:2]
    d[b] = d[a]
    write_json(P.docid2row("test"), d)
    with pytest.raises(PreparedDataError, match="claimed by both"):
        read_docid2row(P.docid2row("test"))
    d = dict(tiny["test"]["docid2row"])
    d[a] = 99
    write_json(P.docid2row("test"), d)
    with pytest.raises(PreparedDataError, match=r"rows out of range: \[99\]"):
        load_corpus(P, "test")


# ---------------------------------------------------------------------------------------------------------------
def test_load_corpus_and_queries(tiny):
    P = tiny["paths"]
    corpus, queries = load_retrieval(P, "test")
    assert corpus.matrix.dtype == np.float32 and corpus.matrix.shape == (5, D)
    np.testing.assert_allclose(np.linalg.norm(corpus.matrix, axis=1), 1.0, rtol=1e-6)
    assert all(corpus.docid2row[d] == r for r, d in enumerate(corpus.doc_ids))
    # doc ids in row order, matrix rows as stored
    np.testing.assert_allclose(corpus.matrix, tiny["test"]["vmat"], rtol=1e-6)
    # a later duplicate query text overwrites the earlier one (EVAL L858-867); 'first' is the GRPO builder's rule
    assert queries.text2row["dup text"] == 6
    assert queries.lookup(" dup text  ") == (6, "11_fig_6", "tev2")
    assert query_text_map(queries.meta, duplicates="first")["dup text"] == 1


def test_eval_queries_skip_rules_and_counts(tiny):
    P = tiny["paths"]
    es = eval_queries(P, "test")
    assert es.skips == {"query_not_found_in_meta": 1, "pos_doc_missing": 1, "video_file_missing": 0,
                        "gt_time_invalid": 1}
    assert es.rows_total == es.rows_total_before_limit == 8
    by_index = {q.index: q for q in es.queries}
    assert sorted(by_index) == [0, 1, 2, 3, 7]
    q1 = by_index[1]  # reversed span swapped; text stripped; later duplicate's qid, but GT is the row's own video
    assert (q1.gt_start, q1.gt_end, q1.qid, q1.query, q1.gt_doc_id, q1.q_row) == (2.5, 9.0, "11_fig_6", "dup text",
                                                                                  "tev2", 6)
    assert (by_index[2].gt_start, by_index[2].gt_end, by_index[2].duration) == (3.0, 4.0, 30.0)  # "4,5" → 4
    assert by_index[3].gt_doc_id == "tev3"  # row video unknown → meta pos_doc_id
    assert by_index[3].pos_row == tiny["test"]["docid2row"]["tev3"]
    assert (by_index[7].gt_start, by_index[7].gt_end, by_index[7].duration) == (0.0, 0.0, None)
    es.skip_video_missing()
    assert es.skips["video_file_missing"] == 1


def test_eval_query_limits_match_the_original(tiny):
    P = tiny["paths"]
    es = eval_queries(P, "test", max_samples=3)
    assert es.rows_total == 3 and [q.index for q in es.queries] == [0, 1, 2]
    es = eval_queries(P, "test", limit_ratio=0.5, seed=7)
    # EVAL L2139-2146: random.Random(seed).sample(range(n), round(n*ratio)), sorted; `index` renumbers after it
    sel = sorted(random.Random(7).sample(range(8), 4))
    assert es.rows_total == 4 and es.rows_total_before_limit == 8
    raw = read_raw_annotation(P.raw_annotation("test"))
    assert [q.query for q in es.queries] == [raw[i].query_text for i in sel
                                             if i in (0, 1, 2, 3, 7)]
    assert [q.index for q in es.queries] == [j for j, i in enumerate(sel) if i in (0, 1, 2, 3, 7)]
    assert limit_rows(10, limit_ratio=0.01) != []  # at least one row is kept (max(1, …))


def test_validate_dataset_clean_and_counts(tiny):
    P = tiny["paths"]
    rep = validate_dataset(P)
    assert rep.ok, rep.summary()
    assert rep.counts["test/query_not_found_in_meta"] == 1 and rep.counts["test/pos_doc_missing"] == 1
    assert rep.counts["test/gt_time_invalid"] == 1 and rep.counts["test/rows_valid"] == 5
    assert rep.counts["test/query_meta_pos_doc_missing"] == 1  # the "ghost video" meta row
    assert rep.counts["test/corpus_video_npy_missing"] == 0 and rep.counts["hard_negatives/unknown_ids"] == 0


def test_validate_dataset_counts_unknown_ids_and_missing_npy(tiny):
    P = tiny["paths"]
    hn = dict(tiny["hard_negatives"])
    hn["0_fig"] = hn["0_fig"] + ["ghost1", "ghost2"]
    hn["no_such_qid"] = ["trv1"]
    write_hard_negatives(P.hard_negatives, hn)
    rows = [r.to_json() for r in tiny["grpo"]]
    rows[0]["hard_negative_ids"][0] = "ghost3"
    rows[1]["gt_video"] = "ghost4"
    write_grpo_rows(P.grpo_rows, rows)
    P.video_npy("train", tiny["grpo"][4].retrieved_video).unlink()
    P.video_npy("test", "tev4").unlink()
    rep = validate_dataset(P)
    assert rep.counts["hard_negatives/unknown_ids"] == 2 and rep.counts["hard_negatives/unknown_qids"] == 1
    assert rep.counts["grpo/hard_negative_unknown_ids"] == 1 and rep.counts["grpo/pos_doc_missing"] == 1
    assert rep.counts["grpo/drop_missing_video_npy"] >= 1 and rep.counts["test/corpus_video_npy_missing"] == 1
    # the GRPO records loader drops/filters the same things and reports it under the original's key names
    dropped = []
    recs, counts = grpo_records(P, dropped=dropped)
    missing = tiny["grpo"][4].retrieved_video
    assert counts["drop_missing_video_npy"] == sum(r.retrieved_video == missing for r in tiny["grpo"])
    assert all(r["retrieved_video"] != missing for r in recs)
    # each dropped row named: file, 1-based line, qid, reason, the missing file
    want = [(i + 1, r.qid) for i, r in enumerate(tiny["grpo"]) if r.retrieved_video == missing]
    assert [(d["line"], d["qid"]) for d in dropped] == want
    assert all(d["file"] == str(P.grpo_rows) and d["reason"] == "drop_missing_video_npy"
               and str(P.video_npy("train", missing)) in d["detail"] for d in dropped)
    recs, counts = grpo_records(P, require_npy=False)
    assert counts["hard_negative_unknown_ids"] == 1
    assert counts["pos_doc_missing"] == 1 and counts["gt_time_invalid"] == 0
    assert all("ghost3" not in r["hard_negative_ids"] for r in recs)
    assert all(len(r["hard_negative_rows"]) == 24 for r in recs)


def test_validate_reports_missing_files_and_broken_index(tiny):
    P = tiny["paths"]
    P.sft_reasoning.unlink()
    write_id_map(P.id_map("train"), list(reversed(tiny["train"]["id_map"])))
    rep = validate_dataset(P)
    assert any("top1_reasoning_grounding.train.jsonl not found" in e and "05_generate_match_grounding" in e
               for e in rep.errors)
    assert any("id_map.json: is not the doc ids sorted by docid2row row" in e for e in rep.errors)
    with pytest.raises(PreparedDataError, match="failed validation"):
        rep.raise_if_errors()


def test_records_for_pipelines(tiny):
    P = tiny["paths"]
    recs, counts = sft_records(P)
    assert counts["items_kept"] == 6 and counts["video_file_missing"] == 0
    r = recs[1]
    assert r["video_id"] == tiny["sft"][1].meta.video_id and r["index"] == 1
    assert r["pos_row"] == tiny["train"]["docid2row"][r["pos_video_id"]]
    assert r["pos_video_id"] not in r["hard_negative_ids"]
    P.video_npy("train", tiny["sft"][0].video_id).unlink()
    dropped = []
    recs, counts = sft_records(P, dropped=dropped)
    assert counts["video_file_missing"] >= 1 and all(r["video_id"] != tiny["sft"][0].video_id for r in recs)
    assert len(dropped) == counts["video_file_missing"] and dropped[0]["item"] == 0
    assert dropped[0]["qid"] == tiny["sft"][0].qid and dropped[0]["file"] == str(P.sft_oneturn)
    assert str(P.video_npy("train", tiny["sft"][0].video_id)) in dropped[0]["detail"]
    grecs, _ = grpo_records(P, require_npy=False)
    g3 = next(r for r in grecs if r["problem_id"] == 3)
    assert g3["has_gt_time"] is False and np.isnan(g3["gt_time"]).all()


def test_bad_hard_negatives_and_sft_items_are_named(tiny):
    P = tiny["paths"]
    write_json(P.hard_negatives, {"0_fig": ["trv1", 3]})
    with pytest.raises(PreparedDataError, match=r"hard_negatives\.json: value of qid '0_fig' must be a list"):
        read_hard_negatives(P.hard_negatives)
    items = json.loads(P.sft_oneturn.read_text())
    items[4]["videos"] = []
    write_json(P.sft_oneturn, items)
    with pytest.raises(PreparedDataError, match=r"item 4 \(qid='4_fig'\): 'videos' must be a non-empty list"):
        read_sft_items(P.sft_oneturn)
    items[4]["videos"] = ["x.npy"]
    items[4]["messages"] = items[4]["messages"][:2]
    write_json(P.sft_oneturn, items)
    with pytest.raises(PreparedDataError, match="end with assistant"):
        read_sft_items(P.sft_oneturn)


def test_writers_refuse_rows_their_readers_would_reject(tmp_path):
    with pytest.raises(PreparedDataError, match=r"writing .*q\.jsonl row 1: missing required field 'qid'"):
        write_query_meta(tmp_path / "q.jsonl", [QueryMetaRow(qid="a", query="q", pos_doc_id="v"),
                                                {"query": "q", "pos_doc_id": "v"}])
    with pytest.raises(PreparedDataError, match="output_num_frames=3"):
        write_video_npy_meta(tmp_path / "m.jsonl", [VideoNpyMeta(output_num_frames=3, video_id="v")])
