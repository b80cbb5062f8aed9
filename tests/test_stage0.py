"""Stage 0 of the demo (vsr1_jax/train/stage0.py): the contrastive loss against NumPy, the precomputed-feature
forward against the engine's own embed_texts / embed_videos, one compiled step across steps, and no test-split data
in any training stage. (Kill/resume: tests/test_train_resume.py, mode "stage0".)"""
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.toy import get_config
from vsr1_jax import demo_models
from vsr1_jax.data import synthetic as SY
from vsr1_jax.data import synthetic_text as TX
from vsr1_jax.data import synthetic_world as SW
from vsr1_jax.data.files import read_grpo_rows, read_query_meta, read_sft_items
from vsr1_jax.train import stage0 as S0


def tiny_config(tmp_path):
    c = get_config()
    c.data_root, c.output_dir = str(tmp_path / "data"), str(tmp_path / "out")
    s = c.synthetic
    s.train.num_videos, s.test.num_videos = 6, 4
    s.video.min_frames, s.video.max_frames = 8, 10
    s.progress = False
    st = c.demo.stage0
    st.pool_videos, st.val_videos, st.batch_size, st.steps, st.eval_every = 8, 4, 4, 3, 0
    st.same_background_batches = False  # 4 twins cannot fill a batch on each background
    c.demo.vision.enabled = False  # Stage 0 alone here (Stage 0v: tests/test_vision_pretrain.py)
    c.demo.caption.enabled = False  # (Stage 0c: tests/test_caption_pretrain.py)
    return c


def np_infonce(q, v, neg, tau, symmetric):
    """Independent NumPy InfoNCE: row i's positive is v[i]; negatives are the j != i with neg[i, j]."""
    B = len(q)
    s = (q.astype(np.float64) @ v.astype(np.float64).T) / tau

    def ce(logits, mask):
        out = []
        for i in range(B):
            cols = [i] + [j for j in range(B) if j != i and mask[i, j]]
            z = logits[i, cols]
            out.append(np.log(np.sum(np.exp(z - z.max()))) + z.max() - z[0])
        return np.array(out)

    l_qv = ce(s, neg)
    if not symmetric:
        return l_qv.mean()
    return 0.5 * (l_qv.mean() + ce(s.T, neg.T).mean())


@pytest.mark.parametrize("symmetric", [True, False])
def test_infonce_matrix_against_numpy(symmetric):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((6, 8)).astype(np.float32)
    v = rng.standard_normal((6, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    neg = rng.random((6, 6)) > 0.3          # some pairs are not negatives (the same event tuple)
    loss, _ = S0.infonce_matrix(jnp.asarray(q), jnp.asarray(v), jnp.asarray(neg), 0.05, symmetric)
    np.testing.assert_allclose(float(loss), np_infonce(q, v, neg, 0.05, symmetric), rtol=1e-5)
    # masking matters: the same vectors with every pair a negative give another loss
    full, _ = S0.infonce_matrix(jnp.asarray(q), jnp.asarray(v), jnp.ones((6, 6), bool), 0.05, symmetric)
    assert abs(float(full) - float(loss)) > 1e-3


def test_stage0_loss_equals_engine_forward_and_numpy(tmp_path):
    """The step's loss (precomputed frozen vision features, padded prompts) equals NumPy InfoNCE over the vectors of
    the engine's public path (TextVideoEmbedder.embed_texts / embed_videos on the rendered frames); one compiled
    step serves every step."""
    c = tiny_config(tmp_path)
    emb = demo_models.demo_embedder(c, untrained=True)
    task = S0.Stage0Task(c, emb, test_keys=frozenset())
    rows, texts = task.batch_rows(0)
    batch = task.make_batch(0)
    loss, aux = S0.stage0_loss(task.params, task.frozen, jax.tree.map(jnp.asarray, batch), graphdef=task.graphdef,
                               opts=emb.opts, temperature=float(c.demo.stage0.temperature), symmetric=True)
    q = emb.embed_texts(texts)
    v = emb.embed_videos([SW.render_video(task.pool[int(r)].video, c.synthetic) for r in rows])
    keys = [task.pool[int(r)].key for r in rows]
    neg = np.array([[a != b for b in keys] for a in keys])
    np.testing.assert_allclose(float(loss), np_infonce(q, v, neg, c.demo.stage0.temperature, True), rtol=2e-4)
    assert task.pool[int(rows[0])].key != task.pool[int(rows[1])].key  # twins differ (in one attribute)

    state = task.state
    for step in range(3):
        state, m = task.step(state, task.next_batch())
        assert np.isfinite(float(m["loss"]))
    assert task._step._cache_size() == 1


def test_same_background_batches(tmp_path):
    """Batches of twins whose first videos share one background; deterministic in (seed, step)."""
    c = tiny_config(tmp_path)
    c.demo.stage0.pool_videos, c.demo.stage0.batch_size, c.demo.stage0.same_background_batches = 96, 8, True
    task = S0.Stage0Task(c, demo_models.demo_embedder(c, untrained=True), test_keys=frozenset())
    seen = set()
    for step in range(6):
        rows, texts = task.batch_rows(step)
        assert len({task.pool[int(r)].video.background for r in rows[::2]}) == 1
        assert np.all(rows[0::2] % 2 == 0) and np.all(rows[1::2] == rows[0::2] + 1)  # whole twins
        seen.add(task.pool[int(rows[0])].video.background)
        again, _ = task.batch_rows(step)
        assert np.array_equal(rows, again)
    assert len(seen) > 1


def test_no_test_split_data_reaches_training(tmp_path):
    """With disjoint splits: the Stage-0 pool and the train split (SFT items, GRPO rows) show no event tuple, video
    or query text of the test split."""
    c = tiny_config(tmp_path)
    cfg = c.synthetic
    cfg.difficulty.disjoint_splits = True
    cfg.train.num_videos, cfg.test.num_videos = 12, 12

    class HashEmbedder:  # no model: unit vectors from hashes (the data flow is what is tested)
        def _vec(self, data):
            v = np.random.default_rng(int.from_bytes(hashlib.sha256(data).digest()[:8], "little")).standard_normal(8)
            return (v / np.linalg.norm(v)).astype(np.float32)

        def embed_texts(self, texts, batch_size=32):
            return np.stack([self._vec(t.encode()) for t in texts])

        def embed_videos(self, videos, batch_size=8):
            return np.stack([self._vec(np.ascontiguousarray(v).tobytes()) for v in videos])

    b = SY.build_synthetic_dataset(c.data_root, "synthetic", cfg, embedder=HashEmbedder())
    test = b.plans["test"]
    test_keys = SW.split_keys(cfg, "test")
    assert test_keys == {SW.event_key(e, v.background) for v in test for e in v.events}
    assert not SW.split_keys(cfg, "train", b.plans["train"]) & test_keys
    test_frames = {hashlib.sha256(SW.render_video(v, cfg).tobytes()).hexdigest() for v in test}
    test_texts = {m.query for m in read_query_meta(b.paths.query_meta("test"))}
    test_ids = {v.video_id for v in test}

    # Stage 0's pool, planned exactly as Stage0Task plans it (excluding the test split's tuples)
    task = S0.Stage0Task(c, demo_models.demo_embedder(c, untrained=True),
                         test_keys=frozenset(SW.split_keys(cfg, "test")))
    for item in task.pool + task.val:
        assert not {SW.event_key(e, item.video.background) for e in item.video.events} & test_keys
        assert hashlib.sha256(SW.render_video(item.video, cfg).tobytes()).hexdigest() not in test_frames
        assert all(TX.pool_query(item, k) not in test_texts for k in range(len(TX.QUERY_TEMPLATES)))
    rows, texts = task.batch_rows(0)
    assert not set(texts) & test_texts

    # Stages 1 and 2 read the train split only
    sft = read_sft_items(b.paths.sft_oneturn)
    grpo = read_grpo_rows(b.paths.grpo_rows)
    assert sft and grpo
    for it in sft:
        assert it.query not in test_texts
        assert not any(t in v for v in it.videos for t in test_ids)
    for r in grpo:
        assert r.query not in test_texts
        assert {r.gt_video, r.retrieved_video, *r.hard_negative_ids}.isdisjoint(test_ids)
