"""Stage 0v of the demo (vsr1_jax/train/vision_pretrain.py): labels from the plan, no test-split tuple in its pool,
the loss against NumPy on the heads' logits, the jitted step lowers the loss on a fixed batch, and the pretrained
tower is what the engine (Stage 0's start) and the policy are built with."""
import jax
import numpy as np
from flax import nnx
import pytest

from tests.test_stage0 import tiny_config
from vsr1_jax import demo_models as DM
from vsr1_jax.ckpt import orbax_io
from vsr1_jax.errors import SetupError
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.data import synthetic_world as SW
from vsr1_jax.train import stage0 as S0
from vsr1_jax.train import vision_pretrain as V


def vision_config(tmp_path, steps=3):
    c = tiny_config(tmp_path)
    c.demo.vision.enabled = True
    c.demo.vision.dense = False   # the pooled heads alone (the per-token heads: test_dense_token_labels_sit_...)
    v = c.demo.vision
    v.pool_videos, v.val_videos, v.batch_size, v.steps, v.eval_every = 8, 4, 4, steps, 0
    return c


def test_labels_pool_loss_and_training(tmp_path):
    c = vision_config(tmp_path)
    c.demo.vision.learning_rate, c.demo.vision.warmup_steps = 1e-2, 0
    test_keys = frozenset(SW.split_keys(c.synthetic, "test"))
    task = V.VisionPretrainTask(c, DM.demo_embedder(c, untrained=True, vision=False), test_keys=test_keys)
    opts = V.attribute_options(c.synthetic)
    for item in task.pool + task.val:
        assert not {SW.event_key(e, item.video.background) for e in item.video.events} & test_keys
        lab = V.labels_of(item, opts)
        assert [opts[h][k] for h, k in zip(V.HEADS, lab)] == [
            item.event.shape, item.event.color, item.event.direction, item.event.lane, item.video.background]
    # the summed cross-entropy of the heads, against NumPy on the same logits
    batch = task.next_batch()
    p = task.state.params
    visual = nnx.merge(task.graphdefs["visual"], p["visual"])
    heads = nnx.merge(task.graphdefs["heads"], p["heads"])
    logits = heads(V.pooled_features(visual, batch["vision"], batch["token_mask"], task.embedder.opts))
    want = 0.0
    for j, h in enumerate(V.HEADS):
        z = np.asarray(logits[h], np.float64)
        lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
        want += float(np.mean(lse - z[np.arange(len(z)), np.asarray(batch["labels"])[:, j]]))
    loss, _ = V.vision_loss(p, batch, graphdefs=task.graphdefs, opts=task.embedder.opts)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    # the mask covers exactly each video's merged rows
    mu = task.vcfg.spatial_merge_size ** 2
    rows = task.batch_rows(0)
    for k, r in enumerate(rows):
        t, h, w = task.videos()[0].items[int(r)][1]
        assert int(np.asarray(batch["token_mask"])[k].sum()) == t * h * w // mu
    # the jitted step trains: 8 updates on this batch lower its loss
    state = task.state
    for _ in range(8):
        state, _ = task.step(state, batch)
    last = float(V.vision_loss(state.params, batch, graphdefs=task.graphdefs, opts=task.embedder.opts)[0])
    assert last < 0.8 * float(loss), (float(loss), last)


def _visual_leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model.visual)))]


def test_engine_and_policy_start_from_the_pretrained_tower(tmp_path):
    c = vision_config(tmp_path, steps=2)
    c.demo.stage0.steps = 1
    summary = S0.ensure_engine(c)
    assert summary["vision_steps"] == 2
    rand = DM.demo_embedder(c, untrained=True, vision=False)
    random = _visual_leaves(nnx.merge(rand.graphdef, rand.state))
    saved = [np.asarray(x) for x in jax.tree.leaves(orbax_io.restore_params(DM.vision_dir(c)))]
    assert len(saved) == len(random) and any(not np.array_equal(a, b) for a, b in zip(saved, random))  # it trained
    # the engine Stage 0 starts from and the policy both hold the pretrained tower
    emb = DM.demo_embedder(c, untrained=True)
    policy = DM.demo_models(c, emb).policy
    for got in (_visual_leaves(nnx.merge(emb.graphdef, emb.state)), _visual_leaves(policy)):
        for a, b in zip(got, saved):
            np.testing.assert_array_equal(a, b)
    # Stage 0v is part of Stage 0: without it the policy's tower is the random one
    c.demo.stage0.enabled = False
    fresh = Qwen3VL(get_preset("tiny"), rngs=nnx.Rngs(c.demo.policy_seed))
    for a, b in zip(_visual_leaves(DM.demo_models(c, rand).policy), _visual_leaves(fresh)):
        np.testing.assert_array_equal(a, b)
    # a missing tower is one error naming the folder and the fix
    c.demo.stage0.enabled = True
    c.demo.stage0.dir = str(tmp_path / "elsewhere")
    with pytest.raises(SetupError, match="demo.vision.enabled=False"):
        DM.demo_models(c, rand)


def test_dense_token_labels_sit_on_the_objects(tmp_path):
    """The per-token labels name the object drawn in the token's cell: a labelled token's pixels are not the plain
    background, an unlabelled one whose cell no object touches is (the frames and token order of the engine's view),
    and the dense heads add their cross-entropy to the loss and train."""
    c = vision_config(tmp_path)
    c.demo.vision.dense = True
    c.demo.vision.learning_rate, c.demo.vision.warmup_steps = 1e-2, 0
    task = V.VisionPretrainTask(c, DM.demo_embedder(c, untrained=True, vision=False),
                                test_keys=frozenset(SW.split_keys(c.synthetic, "test")))
    pool = task.videos()[0]
    mu = task.vcfg.spatial_merge_size ** 2
    checked, plain, unlabelled = 0, 0, 0
    for item, (rows, grid), labels in zip(task.pool, pool.items, pool.token_labels):
        t, h, w = grid
        px = rows.astype(np.float32).reshape(t, h // 2, w // 2, mu, -1)   # merged-token order: 2x2 blocks
        per_group = (h // 2) * (w // 2)
        assert labels.shape == (t * (pool.HW // mu), 4)
        for g in range(t):
            for k in range(per_group):
                lab = labels[g * (pool.HW // mu) + k]
                patch = px[g, k // (w // 2), k % (w // 2)]
                if lab[3] == 1:
                    assert float(patch.std()) > 1e-3, (item.video.video_id, g, k)   # an object is drawn there
                    checked += 1
                    assert lab[2] in range(len(V.attribute_options(c.synthetic)["color"]))
                else:
                    unlabelled += 1
                    plain += float(patch.std()) < 1e-3
    # most cells without an object's centre show only background (a shape's edge may reach into some): a wrong
    # token order or frame mapping would put the labels on plain cells and fail the assertion above
    assert checked > 0 and plain > 0.5 * unlabelled, (checked, plain, unlabelled)
    batch = task.next_batch()
    p = task.state.params
    pooled_only = {k: v for k, v in p.items() if k != "dense"}
    loss, acc = V.vision_loss(p, batch, graphdefs=task.graphdefs, opts=task.embedder.opts)
    base, _ = V.vision_loss(pooled_only, batch, graphdefs=task.graphdefs, opts=task.embedder.opts)
    assert float(loss) > float(base) and "acc_dense_shape" in acc
    state = task.state
    for _ in range(8):
        state, _ = task.step(state, batch)
    last = float(V.vision_loss(state.params, batch, graphdefs=task.graphdefs, opts=task.embedder.opts)[0])
    assert last < 0.8 * float(loss), (float(loss), last)
    assert set(task.val_accuracy(state.params)) >= {"dense_shape", "dense_direction", "dense_color"}
