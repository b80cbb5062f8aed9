"""tfds export: a tiny prepared dataset → ArrayRecord shards → read back through grain, without TensorFlow."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vsr1_jax.data import tfds_builder as TB
from vsr1_jax.data.files import read_video_npy, write_raw_annotation
from vsr1_jax.data.queries import eval_queries, grpo_records, sft_records

# pytest 9 imports test files in importlib mode; reuse test_layout.py's writer of a tiny prepared dataset.
sys.path.insert(0, str(Path(__file__).parent))
from test_layout import write_tiny_dataset  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    tiny = write_tiny_dataset(root)
    data_dir = tmp_path_factory.mktemp("tfds")
    builders = {kind: TB.build(tiny["paths"], data_dir, kind=kind) for kind in TB.KINDS}
    builders["grpo_frames"] = TB.build(tiny["paths"], data_dir, kind="grpo", embed_frames=True)
    return tiny, data_dir, builders


def _read_all(source):
    ds = grain.MapDataset.source(source).map(TB.decode_example)
    return [ds[i] for i in range(len(ds))]


def test_tensorflow_is_not_needed():
    assert importlib.util.find_spec("tensorflow") is None  # the point of the ArrayRecord path (environment.md §5)


def test_sft_shards_read_back_through_grain(built):
    tiny, data_dir, b = built
    got = {r["index"]: r for r in _read_all(b["sft"].as_data_source("train"))}
    want, _ = sft_records(tiny["paths"], require_npy=False)
    assert sorted(got) == [r["index"] for r in want]
    for w in want:
        g = got[w["index"]]
        for k in ("qid", "query", "video_id", "pos_video_id", "gold_label", "pair_id", "hard_negative_ids",
                  "pos_row", "video_row", "messages"):
            assert g[k] == w[k], k
    assert got[0]["messages"][1]["content"].startswith('Query: "')


def test_grpo_and_eval_shards_compare_by_key(built):
    tiny, data_dir, b = built
    want, _ = grpo_records(tiny["paths"], require_npy=False)
    got = {r["problem_id"]: r for r in _read_all(b["grpo"].as_data_source("train"))}
    assert set(got) == {r["problem_id"] for r in want}
    for w in want:
        g = got[w["problem_id"]]
        assert (g["qid"], g["gt_video"], g["retrieved_video"], g["label"]) == (
            w["qid"], w["gt_video"], w["retrieved_video"], w["label"])
        assert g["hard_negative_ids"] == w["hard_negative_ids"] and bool(g["is_augmented"]) == w["is_augmented"]
        np.testing.assert_array_equal(g["hard_negative_rows"], w["hard_negative_rows"])
        np.testing.assert_array_equal(g["gt_time"], w["gt_time"])  # NaN == NaN for the null gt_time row
        assert bool(g["has_gt_time"]) == w["has_gt_time"]

    es = eval_queries(tiny["paths"], "test")
    src = TB.load_data_source(data_dir, tiny["paths"].dataset, "eval", "test")  # from the folder alone
    got = {r["index"]: r for r in _read_all(src)}
    assert set(got) == {q.index for q in es.queries}
    for q in es.queries:
        g = got[q.index]
        assert (g["qid"], g["query"], g["gt_doc_id"], g["gt_start"], g["gt_end"], g["q_row"], g["pos_row"]) == (
            q.qid, q.query, q.gt_doc_id, q.gt_start, q.gt_end, q.q_row, q.pos_row)
        assert (np.isnan(g["duration"]) and q.duration is None) or g["duration"] == q.duration


def test_embedded_frames_and_tfds_data_source(built):
    tiny, data_dir, b = built
    name = f"vsr1_prepared/{TB.config_name(tiny['paths'].dataset, 'grpo', True)}"
    assert name == "vsr1_prepared/charades_sta_grpo_frames"
    src = tfds.data_source(name, data_dir=str(data_dir), split="train")
    for r in _read_all(src):
        want = read_video_npy(tiny["paths"].video_npy("train", r["retrieved_video"]))
        assert r["frames"].dtype == np.uint8
        np.testing.assert_array_equal(r["frames"], want)
    # every row made it (rows are compared by key above: ArrayRecord shards are shuffled on write)
    assert len(src) == len(tiny["grpo"])


def test_bad_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        TB.Vsr1Config(dataset="x", kind="dpo")
    with pytest.raises(ValueError, match="embed_frames is for sft/grpo"):
        TB.Vsr1Config(dataset="x", kind="eval", embed_frames=True)
    with pytest.raises(FileNotFoundError, match="build it with"):
        TB.load_data_source(tmp_path, "didemo", "sft", "train")


def test_rebuild_reuses_unless_overwrite(tmp_path):
    tiny = write_tiny_dataset(tmp_path / "prepared")
    P = tiny["paths"]
    TB.build(P, tmp_path / "tfds", kind="eval")
    write_raw_annotation(P.raw_annotation("test"), tiny["test"]["raw"][:1])
    assert len(TB.build(P, tmp_path / "tfds", kind="eval").as_data_source("test")) == 5  # stale shards reused
    assert len(TB.build(P, tmp_path / "tfds", kind="eval", overwrite=True).as_data_source("test")) == 1
