"""Runs that describe themselves and evaluate what they trained: a training checkpoint (`<run>/checkpoints/<step>`)
loads wherever a checkpoint does, with exactly its weights; a wrong path gets a message naming the config field and
the fix; an evaluation with a missing video counts and names it in report.txt, result.json, run_summary.json and the
console, and records its config, checkpoint and code version."""
import json
import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from configs.toy import get_config
from vsr1_jax import demo_models, loading, runinfo, sharding
from vsr1_jax.ckpt import read
from vsr1_jax.ckpt.orbax_io import CheckpointManager
from vsr1_jax.errors import SetupError
from vsr1_jax.train import optim
from vsr1_jax.train import state as state_lib


def _flat(module):
    return {tuple(str(p) for p in path): np.asarray(v.get_value() if hasattr(v, "get_value") else v)
            for path, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def test_training_checkpoint_loads_with_its_weights(tmp_path):
    """A train state (trainable and frozen leaves of the policy and the SQR head) saved as train/loop.py saves it,
    then applied to fresh demo models: every weight is the saved one, trainable or frozen."""
    c = get_config()
    c.demo.vision.enabled = False   # the random policy (no Stage-0v tower to load here)
    c.demo.caption.enabled = False  # (nor a Stage-0c policy)
    emb = demo_models.tiny_embedder(c.demo.embedder_seed)
    models = demo_models.demo_models(c, emb)
    state, graphdefs = state_lib.create(models.policy, models.head, optim.sft_trainable, optax.sgd(0.1),
                                        sharding.single_device_mesh())
    state = state.replace(params=jax.tree.map(lambda x: x + 0.5, state.params))   # "trained": differs from init
    run = tmp_path / "sft"
    with CheckpointManager(str(run / "checkpoints"), async_save=False) as mngr:
        mngr.save(3, state, extra={"data": {}}, force=True)
    path = str(run / "checkpoints" / "3")
    assert read.is_training_checkpoint(path) and not read.is_training_checkpoint(str(run))
    fresh = demo_models.demo_models(c, emb)
    before = _flat(fresh.policy)
    loaded = read.apply_training_checkpoint(fresh, path)
    trained_policy, trained_head = graphdefs.modules(state.params, state.frozen)
    got, want = _flat(loaded.policy), _flat(trained_policy)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))
    assert any(not np.array_equal(before[k], got[k]) for k in got)     # the trained leaves moved
    assert any(np.array_equal(before[k], got[k]) for k in got)         # the frozen ones (vision tower) did not
    for k, v in _flat(trained_head).items():
        np.testing.assert_array_equal(_flat(loaded.head)[k], v)


def test_checkpoint_paths_get_clear_messages(tmp_path):
    (tmp_path / "model.safetensors").write_text("x")
    with pytest.raises(SetupError, match=r"--config.checkpoint=.*model.safetensors is a file"):
        read.check_checkpoint_path(str(tmp_path / "model.safetensors"))
    run = tmp_path / "grpo"
    (run / "checkpoints" / "10" / "state").mkdir(parents=True)
    (run / "checkpoints" / "24" / "state").mkdir(parents=True)
    for given in (run, run / "checkpoints"):   # a run folder, or its checkpoints/ folder: name the step to pass
        with pytest.raises(SetupError, match=r"pass a step folder, e.g. --config.checkpoint=.*checkpoints/24"):
            read.check_checkpoint_path(str(given))
    read.check_checkpoint_path(str(run / "checkpoints" / "24"))
    with pytest.raises(SetupError, match=r"--config.grpo.init_checkpoint: checkpoint folder .* not found"):
        read.check_checkpoint_path(str(tmp_path / "nope"), "grpo.init_checkpoint")
    c = get_config()   # the demo config with a converted / HF folder: refused with the fix, before any corpus build
    c.checkpoint, c.data_root = str(tmp_path), str(tmp_path / "never_built")
    with pytest.raises(SetupError, match="demo.enabled=False"):
        loading.load_models(c)
    assert not os.path.exists(c.data_root)


def test_eval_names_missing_videos_and_records_itself(tmp_path, capsys):
    """The toy evaluation with the retrieved top-1 video of one query deleted: the query is skipped and named."""
    from vsr1_jax.agent.evaluate import main_eval
    from vsr1_jax.data.paths import PreparedPaths
    from vsr1_jax.data.queries import eval_queries, load_retrieval
    c = get_config()
    c.data_root, c.output_dir = str(tmp_path / "data"), str(tmp_path / "out")
    c.synthetic.train.num_videos, c.synthetic.test.num_videos = 4, 4
    c.synthetic.progress = False
    c.demo.stage0.enabled = False   # the random engine: this test is about the evaluation's bookkeeping
    c.eval.max_new_tokens = 8
    demo_models.ensure_demo_data(c, demo_models.demo_embedder(c))
    paths = PreparedPaths(c.data_root, c.dataset)
    corpus, queries = load_retrieval(paths, "test")
    qset = eval_queries(paths, "test", queries=queries, docid2row=corpus.docid2row)
    scores = queries.matrix[[q.q_row for q in qset.queries]] @ corpus.matrix.T
    top2 = np.sort(scores, axis=1)[:, -2:]
    q = int(np.argmax(top2[:, 1] - top2[:, 0]))     # the query whose top-1 wins by the widest margin
    assert top2[q, 1] - top2[q, 0] > 1e-3
    doc = corpus.doc_ids[int(np.argmax(scores[q]))]
    gone = paths.video_npy("test", doc)
    os.remove(gone)
    summary = main_eval(c)
    n_miss = sum(1 for row in scores.argmax(1) if corpus.doc_ids[row] == doc)
    result = json.load(open(summary["result_json"]))
    sk = result["skipped"]
    assert sk["selected"] == len(qset.queries) + sum(qset.skips.values())
    assert sk["evaluated"] == summary["queries"] == result["num_examples"] == sk["selected"] - sk["not_evaluated"]
    assert sk["counts"]["video_file_missing"] == n_miss >= 1 and sk["video_files_missing"] == [str(gone)]
    report_txt = open(summary["report_txt"]).read()
    assert report_txt.startswith("NOTE: evaluated") and str(gone) in report_txt.splitlines()[0]
    out = capsys.readouterr().out
    assert f"evaluated {sk['evaluated']} of {sk['selected']} queries: {sk['not_evaluated']} skipped" in out
    assert f"video file missing: {gone}" in out
    # the run describes itself
    run_summary = json.load(open(os.path.join(c.output_dir, "run_summary.json")))
    assert run_summary["checkpoint"].startswith("the demo's untrained")
    assert run_summary["code_version"] == runinfo.code_version()
    saved = json.load(open(os.path.join(c.output_dir, runinfo.CONFIG_FILE)))
    assert saved["eval"]["max_new_tokens"] == 8 and saved["data_root"] == c.data_root
