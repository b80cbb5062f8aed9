"""grain pipelines: bucketed padding, seeded shuffle, per-process sharding, epochs, repeat_each, resumable state."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from vsr1_jax.data import pipelines as PL
from vsr1_jax.data.queries import eval_queries

# pytest 9 imports test files in importlib mode, so a sibling test module is not importable by default; the tiny
# prepared dataset is written by test_layout.py's helper (only the layout writers are used).
sys.path.insert(0, str(Path(__file__).parent))
from test_layout import write_tiny_dataset  # noqa: E402

PAD = 151643  # Qwen pad id; any value works, the test only checks it is used


def fake_tokenize(rec):
    """Stand-in for vsr1_jax.processing.prompts: a row of len(query)+3 ids, masks and M-RoPE positions [3, L]."""
    n = len(rec["query"]) % 7 + 3
    ids = np.arange(1, n + 1, dtype=np.int32)
    return {
        "qid": rec["qid"],
        "input_ids": ids,
        "attention_mask": np.ones(n, np.int32),
        "loss_mask": (ids > 2).astype(np.int32),
        "position_ids": np.stack([np.arange(n, dtype=np.int32)] * 3),
        "gt_row": np.int32(rec.get("gt_row", -1)),
        "hard_negative_ids": rec.get("hard_negative_ids", []),
    }


def _records(n):
    return [{"qid": f"q{i}", "query": "x" * i, "i": i} for i in range(n)]


def _ids(batch):
    return [ex["i"] for ex in batch]


# ---------------------------------------------------------------------------------------------------------------
def test_bucket_length():
    assert PL.bucket_length(1, (8, 16, 32)) == 8
    assert PL.bucket_length(8, (8, 16, 32)) == 8
    assert PL.bucket_length(9, (8, 16, 32)) == 16
    assert PL.bucket_length(32, (8, 16, 32)) == 32
    with pytest.raises(PL.BucketOverflowError, match="33 exceeds the largest bucket 32"):
        PL.bucket_length(33, (8, 16, 32))
    with pytest.raises(ValueError, match="strictly increasing"):
        PL.bucket_length(3, (16, 8))


def test_collator_pads_to_smallest_bucket_on_the_right():
    col = PL.BucketCollator((4, 8, 16), PL.default_token_fields(PAD), config_field="sft.buckets")
    exs = [fake_tokenize({"qid": "a", "query": "xx"}), fake_tokenize({"qid": "b", "query": "xxxxx"})]
    b = col(exs)  # lengths 5 and 8 → bucket 8
    assert b["input_ids"].shape == (2, 8) and b["position_ids"].shape == (2, 3, 8)
    np.testing.assert_array_equal(b["lengths"], [5, 8])
    np.testing.assert_array_equal(b["input_ids"][0], [1, 2, 3, 4, 5, PAD, PAD, PAD])
    np.testing.assert_array_equal(b["attention_mask"][0], [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(b["loss_mask"][0], [0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(b["position_ids"][0, 2], [0, 1, 2, 3, 4, 0, 0, 0])
    assert b["qid"] == ["a", "b"] and b["gt_row"].shape == (2,) and b["hard_negative_ids"] == [[], []]
    # a short batch is the smallest bucket
    assert col([exs[0]])["input_ids"].shape == (1, 8)
    assert col([fake_tokenize({"qid": "c", "query": ""})])["input_ids"].shape == (1, 4)


def test_collator_overflow_names_row_and_config_field():
    col = PL.BucketCollator((4, 8), PL.default_token_fields(PAD), config_field="sft.buckets")
    long = {"qid": "long_one", "input_ids": np.zeros(9, np.int32), "attention_mask": np.ones(9, np.int32)}
    with pytest.raises(PL.BucketOverflowError,
                       match=r"qid='long_one'.*length 9 > largest bucket 8.*sft\.buckets"):
        col([fake_tokenize({"qid": "ok", "query": ""}) | {}, long])


def test_collator_checks_field_lengths_and_pads_the_batch_dimension():
    col = PL.BucketCollator((8,), PL.default_token_fields(PAD), batch_size=4)
    ex = fake_tokenize({"qid": "a", "query": "xx"})
    b = col([ex, ex])
    assert b["input_ids"].shape == (4, 8)
    np.testing.assert_array_equal(b["valid"], [True, True, False, False])
    bad = dict(ex, loss_mask=np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="field 'loss_mask' has length 3"):
        col([bad])
    # a field with its own buckets (e.g. vision patch rows [P, 1536]) is bucketed on its own axis
    col2 = PL.BucketCollator((8,), {"input_ids": PL.PadSpec(PAD),
                                    "patches": PL.PadSpec(0.0, axis=0, buckets=(16, 32), config_field="data.patches")})
    b2 = col2([{"qid": "a", "input_ids": np.ones(3, np.int32), "patches": np.ones((20, 2), np.float32)},
               {"qid": "b", "input_ids": np.ones(5, np.int32), "patches": np.ones((5, 2), np.float32)}])
    assert b2["patches"].shape == (2, 32, 2) and b2["patches"][1, 5:].sum() == 0
    with pytest.raises(PL.BucketOverflowError, match="data.patches"):
        col2([{"qid": "c", "input_ids": np.ones(3, np.int32), "patches": np.ones((33, 2), np.float32)}])


# ---------------------------------------------------------------------------------------------------------------
def test_two_processes_split_each_epoch_disjointly():
    recs = _records(11)
    epochs = 3
    per_proc = []
    for k in range(2):
        ds, spec = PL.build_dataset(recs, seed=42, num_epochs=epochs, process_index=k, process_count=2)
        assert len(ds) == 5 * epochs  # ⌊11/2⌋ per epoch: every process runs the same number of steps
        per_proc.append([ds[i]["i"] for i in range(len(ds))])
    for e in range(epochs):
        a, b = (p[e * 5:(e + 1) * 5] for p in per_proc)
        assert not set(a) & set(b) and len(set(a) | set(b)) == 10  # one row of each epoch skipped
    epoch_orders = [tuple(per_proc[0][e * 5:(e + 1) * 5]) for e in range(epochs)]
    assert len(set(epoch_orders)) == epochs  # reshuffled each epoch
    # the same seed gives the same order; another seed does not
    again, _ = PL.build_dataset(recs, seed=42, num_epochs=epochs, process_index=0, process_count=2)
    assert [again[i]["i"] for i in range(len(again))] == per_proc[0]
    other, _ = PL.build_dataset(recs, seed=7, num_epochs=epochs, process_index=0, process_count=2)
    assert [other[i]["i"] for i in range(len(other))] != per_proc[0]
    # one process sees the global order whose slices the two processes take
    single, _ = PL.build_dataset(recs, seed=42, num_epochs=1, process_index=0, process_count=1)
    glob = [single[i]["i"] for i in range(11)]
    assert per_proc[0][:5] == glob[0:10:2] and per_proc[1][:5] == glob[1:10:2]


def test_uneven_shards_cover_every_row_once_for_eval():
    recs = _records(7)
    got = []
    for k in range(3):
        ds, _ = PL.build_dataset(recs, shuffle=False, even_shards=False, process_index=k, process_count=3)
        got.append([ds[i]["i"] for i in range(len(ds))])
    assert got == [[0, 3, 6], [1, 4], [2, 5]]  # EVAL L2169-2184: local_pos % num_shards == shard_id


def test_batching_and_epochs_and_map_fn():
    recs = _records(10)
    ds, spec = PL.build_dataset(recs, map_fn=fake_tokenize, batch_size=4, num_epochs=2, process_index=0,
                                process_count=1,
                                collate_fn=PL.BucketCollator((4, 8, 16), PL.default_token_fields(PAD)))
    assert len(ds) == 5  # 20 rows / 4, remainder dropped
    batches = list(PL.make_iterator(ds, spec))
    assert len(batches) == 5 and all(b["input_ids"].shape[0] == 4 for b in batches)
    qids = [q for b in batches for q in b["qid"]]
    assert sorted(qids[:10]) == sorted(r["qid"] for r in recs)  # first epoch complete before the second


def test_repeat_each_puts_g_copies_together_and_maps_once():
    calls = []

    def counting_map(rec):
        calls.append(rec["i"])
        return rec

    ds, spec = PL.build_dataset(_records(6), map_fn=counting_map, batch_size=8, repeat_each=4, process_index=0,
                                process_count=1)
    batches = list(PL.make_iterator(ds, spec))
    assert len(batches) == 3
    for b in batches:
        ids = _ids(b)
        assert len(ids) == 8 and ids[:4] == [ids[0]] * 4 and ids[4:] == [ids[4]] * 4 and ids[0] != ids[4]
    assert sorted(calls) == list(range(6))  # tokenising/video work is done once per prompt, not once per copy
    with pytest.raises(ValueError, match="divisible"):
        PL.build_dataset(_records(6), batch_size=6, repeat_each=4, process_index=0, process_count=1)


def test_iterator_state_restores_mid_epoch_exactly():
    def build():
        return PL.build_dataset(_records(13), map_fn=fake_tokenize, batch_size=3, num_epochs=3, seed=5,
                                process_index=1, process_count=2,
                                collate_fn=PL.BucketCollator((8, 16), PL.default_token_fields(PAD)))

    ds, spec = build()
    it = PL.make_iterator(ds, spec)
    for _ in range(3):  # 2 batches per epoch (6 rows/process/epoch): stop inside epoch 2
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint would store
    rest = [b["qid"] for b in it]
    assert len(rest) == len(ds) - 3 > 0

    ds2, spec2 = build()
    it2 = PL.make_iterator(ds2, spec2)
    it2.set_state(state)
    assert [b["qid"] for b in it2] == rest

    # a state from a differently configured pipeline is refused instead of silently resuming elsewhere
    ds3, spec3 = PL.build_dataset(_records(13), map_fn=fake_tokenize, batch_size=3, num_epochs=3, seed=6,
                                  process_index=1, process_count=2)
    with pytest.raises(ValueError, match="different pipeline"):
        PL.make_iterator(ds3, spec3).set_state(state)


def test_absl_flags_are_parsed_for_grain_workers():
    """grain reads its absl flags when it starts worker processes; unparsed flags raise UnparsedFlagAccessError
    (environment.md §5). make_iterator(worker_count>0) parses them; here the mechanism is checked in-process."""
    from absl import flags
    from grain._src.core.config import config as grain_config

    flags.FLAGS.unparse_flags()  # the state a fresh `python train.py` (no absl.app.run) is in
    with pytest.raises(flags.UnparsedFlagAccessError):
        grain_config.py_debug_mode
    PL.ensure_absl_flags_parsed()
    assert grain_config.py_debug_mode is False
    PL.ensure_absl_flags_parsed()  # idempotent


@pytest.mark.skipif(not os.environ.get("VSR1_SLOW_TESTS"), reason="starts a grain worker process (~4 s); "
                    "set VSR1_SLOW_TESTS=1")
def test_worker_processes_give_the_same_batches():
    from absl import flags

    flags.FLAGS.unparse_flags()
    ds, spec = PL.build_dataset(_records(8), map_fn=fake_tokenize, batch_size=2, seed=3, process_index=0,
                                process_count=1, collate_fn=PL.BucketCollator((16,), PL.default_token_fields(PAD)))
    in_proc = [b["qid"] for b in PL.make_iterator(ds, spec)]
    workers = [b["qid"] for b in PL.make_iterator(ds, spec, worker_count=1)]
    assert workers == in_proc


# ---------------------------------------------------------------------------------------------------------------
def test_pipelines_over_a_prepared_dataset(tmp_path):
    tiny = write_tiny_dataset(tmp_path)
    P = tiny["paths"]
    col = PL.BucketCollator((8, 16), PL.default_token_fields(PAD), config_field="sft.buckets")
    ds, spec, counts = PL.sft_dataset(P, map_fn=fake_tokenize, batch_size=2, collate_fn=col, process_index=0,
                                      process_count=1)
    assert counts["items_kept"] == 6 and len(ds) == 3
    assert sorted(q for b in PL.make_iterator(ds, spec) for q in b["qid"]) == sorted(i.qid for i in tiny["sft"])

    ds, spec, counts = PL.grpo_dataset(P, map_fn=fake_tokenize, batch_size=8, repeat_each=4, collate_fn=col,
                                       process_index=0, process_count=1)
    b = next(PL.make_iterator(ds, spec))
    assert b["input_ids"].shape[0] == 8 and b["qid"][:4] == [b["qid"][0]] * 4
    assert b["gt_row"].dtype == np.int32 and (b["gt_row"] >= 0).all()

    ecol = PL.BucketCollator((8, 16), PL.default_token_fields(PAD), batch_size=3)
    ds, spec, qs = PL.eval_dataset(P, map_fn=fake_tokenize, batch_size=3, collate_fn=ecol, process_index=1,
                                   process_count=2)
    batches = list(PL.make_iterator(ds, spec))
    assert qs.skips["gt_time_invalid"] == 1 and len(qs.queries) == 5
    valid_qids = [q for b in batches for q, v in zip(b["qid"], b["valid"]) if v]
    assert valid_qids == [q.qid for q in qs.queries[1::2]]  # process 1 of 2: rows 1, 3 in file order
    assert len(batches) == 1 and batches[0]["valid"].tolist() == [True, True, False]  # padded to the compiled B


def test_data_config_defaults_drive_the_pipelines(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from configs.base import get_config

    full = c = get_config()  # each stage's data fields live in its section (sft, grpo); evaluation's in eval
    assert full.eval.seed == 42 and c.sft.negative_pool_size == 24 and tuple(full.eval.topk) == (1, 5, 10, 100)
    assert full.eval.max_turn == 2 and c.grpo.num_generations == 8 and c.grpo.hard_negative_topk == 24
    # every bucket list is valid and ends at the original's maximum length
    assert c.sft.buckets[-1] == c.sft.model_max_length
    assert c.grpo.prompt_buckets[-1] == c.grpo.max_prompt_length
    for b in (c.sft.buckets, c.grpo.prompt_buckets):
        assert PL.bucket_length(b[-1], b) == b[-1]
    tiny = write_tiny_dataset(tmp_path)
    ds, spec, _ = PL.grpo_dataset(tiny["paths"], map_fn=fake_tokenize, batch_size=c.grpo.generation_batch_size,
                                  repeat_each=c.grpo.num_generations, seed=full.eval.seed, num_epochs=c.grpo.num_epochs,
                                  hard_negative_k=c.grpo.hard_negative_topk, process_index=0, process_count=1)
    batch = ds[0]
    assert len(batch) == 8 and len({ex["qid"] for ex in batch}) == 1  # 1 prompt × G rollouts per round
    es = eval_queries(tiny["paths"], full.split, max_samples=full.eval.max_samples,
                      limit_ratio=full.eval.eval_limit_ratio, seed=full.eval.seed)
    assert es.rows_total == es.rows_total_before_limit  # the defaults evaluate every row
