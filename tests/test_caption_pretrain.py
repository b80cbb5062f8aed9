"""Stage 0c of the demo (vsr1_jax/train/caption_pretrain.py): no test-split tuple in its pool, the attribute spans
name the caption's words, the loss against NumPy on the policy's logits, one compile across steps, the jitted step
lowers the loss on a fixed batch, and Stage 1's policy is the captioning one."""
import copy
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.test_stage0 import tiny_config
from vsr1_jax import demo_models as DM
from vsr1_jax.ckpt import orbax_io
from vsr1_jax.data import synthetic_text as TX
from vsr1_jax.data import synthetic_world as SW
from vsr1_jax.errors import SetupError
from vsr1_jax.train import caption_pretrain as C
from vsr1_jax.train import stage0 as S0


def caption_config(tmp_path, steps=3):
    c = tiny_config(tmp_path)
    c.demo.caption.enabled = True
    k = c.demo.caption
    k.pool_videos, k.val_videos, k.batch_size, k.steps, k.eval_every = 8, 3, 4, steps, 0
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Stages 0 and 0c of a tiny config (2 caption steps)."""
    c = caption_config(tmp_path_factory.mktemp("caption"), steps=2)
    c.demo.stage0.steps = 1
    return c, S0.ensure_engine(c)


def test_pool_spans_loss_and_training(trained):
    c = copy.deepcopy(trained[0])
    k = c.demo.caption
    k.learning_rate, k.warmup_steps, k.steps = 1e-2, 0, 100   # a rate that moves in 8 updates
    models = DM.demo_models(c, DM.demo_embedder(c), captioned=False)
    test_keys = frozenset(SW.split_keys(c.synthetic, "test"))
    task = C.CaptionTask(c, models, test_keys=test_keys)
    for item in task.pool + task.val:
        assert not {SW.event_key(e, item.video.background) for e in item.video.events} & test_keys
    batch = task.make_batch(0)
    rows = [task.pool[int(r)] for r in task.batch_rows(0)]
    tok = task.tokenizer
    lids, lmask = np.asarray(batch["label_ids"]), np.asarray(batch["label_mask"])
    for k, item in enumerate(rows):
        # the labels are the caption's tokens (then the end of the turn), and each span decodes to its word
        cap = tok(TX.caption(item.video))["input_ids"]
        assert list(lids[k, :len(cap)]) == cap and lmask[k, :len(cap)].all()
        words = TX.event_words(item.video.events[0])
        for a, (s, e) in C.attribute_spans(tok, item.video).items():
            assert tok.decode(lids[k, s:e]).strip() == words[a]
    # the token-mean LM loss over the labels, against NumPy on the policy's logits
    jb = jax.tree.map(jnp.asarray, batch)
    loss, hidden = C.caption_loss(task.state.params, task.state.frozen, jb, graphdefs=task.graphdefs,
                                  opts=task.opts, chunk=64)
    policy, _ = task.graphdefs.modules(task.state.params, task.state.frozen)
    h = np.take_along_axis(np.asarray(hidden), np.asarray(batch["label_src"])[..., None], axis=1)
    z = np.asarray(policy.text.logits(jnp.asarray(h)), np.float64)
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    nll = lse - np.take_along_axis(z, lids[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), (nll * lmask).sum() / lmask.sum(), rtol=1e-5)
    # the jitted step trains (8 updates on this batch lower its loss) with one compile across the steps
    state = task.state
    for s in range(8):
        state, _ = task.step(state, task.next_batch() if s == 0 else jb)
    assert task._step._cache_size() == 1
    last = float(C.caption_loss(state.params, state.frozen, jb, graphdefs=task.graphdefs,
                                opts=task.opts, chunk=64)[0])
    assert last < 0.8 * float(loss), (float(loss), last)
    m = task.val_metrics(state)
    assert set(m) == {"loss", "acc_color", "acc_shape", "acc_direction"} and all(0 <= m[a] <= 1 for a in
                                                                                  ("acc_color", "acc_shape"))


def _leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model)))]


def test_stage1_starts_from_the_captioning_policy(trained):
    c, summary = trained
    assert summary["caption_steps"] == 2
    saved = [np.asarray(x) for x in jax.tree.leaves(orbax_io.restore_params(DM.caption_dir(c)))]
    emb = DM.demo_embedder(c)
    before = _leaves(DM.demo_models(c, emb, captioned=False).policy)
    after = _leaves(DM.demo_models(c, emb).policy)
    assert len(saved) == len(after) == len(before)
    for a, b in zip(after, saved):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))   # it trained
    # ensure_engine finds the stages done and trains nothing more
    again = S0.ensure_engine(c)
    assert "caption_steps" not in again and "steps" not in again
    # a missing captioning policy is one error naming the folder and the fix
    other = Path(c.output_dir).parent / "stage0_without_caption"
    shutil.copytree(DM.stage0_dir(c), other, ignore=shutil.ignore_patterns("caption"))
    c2 = copy.deepcopy(c)
    c2.demo.stage0.dir = str(other)
    with pytest.raises(SetupError, match="demo.caption.enabled=False"):
        DM.demo_models(c2, emb)
