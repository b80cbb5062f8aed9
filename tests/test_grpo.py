"""GRPO end to end on tiny models: rollouts come from the episode engine, the scorer sees exactly the sampler's
context (its log-probs of the sampled ids equal the sampler's), a multi-turn trajectory's loss weights cover only
the tokens the policy sampled, and an update leaves the frozen parameters (vision tower, mergers, SQR head) and the
reference bit-identical."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.test_episode import setup  # noqa: F401  (the module-scoped corpus + tiny models fixture)
from vsr1_jax import sharding
from vsr1_jax.agent.rollout import EpisodeConfig, EpisodeEngine
from vsr1_jax.generate.sampler import Sampler
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.models.qwen3_vl.vision import VisionBuckets
from vsr1_jax.processing.special_tokens import special_ids
from vsr1_jax.train import grpo, optim
from vsr1_jax.train import state as state_lib
from vsr1_jax.train.scoring import scoring_batch

G = 4
OPTS = RunOptions()


def _copy(m):
    return nnx.merge(*jax.tree.map(jnp.copy, nnx.split(m)))


def _engine(s, policy, max_turn=1, retriever=None, opts=OPTS):
    cfg = EpisodeConfig(max_turn=max_turn, max_new_tokens=24, prompt_style="grpo", refine_matched=True,
                        batch_size=8, vision_buckets=VisionBuckets(groups=(4, 8), patches=(16, 64)))
    return EpisodeEngine(policy, s["head"], s["embedder"], s["tok"], s["tok"], s["video_source"], s["vcfg"], cfg,
                         opts, retriever=retriever)


def _batch(trajs, adv, cfg, A=2, m=8, C=24):
    return scoring_batch(trajs, adv, cfg=cfg, pad_id=0, micro_batches=A, rows_per_micro=m, prompt_buckets=(512, 1024),
                         completion_length=C, group_buckets=(4, 8), patch_buckets=(16, 64), loss_type="grpo")


@pytest.mark.parametrize("attn", ["xla", "cudnn"])
def test_scorer_log_probs_equal_the_samplers(setup, attn, request):
    """Also under attn_impl="cudnn" (on CPU through JAX's XLA implementation of the same call, see conftest): the
    sampler right-pads its prompts and the scorer's rows are right-padded, the layout the fused kernel takes."""
    s = setup
    policy = s["policy"]
    opts = RunOptions(attn_impl=attn)
    if attn == "cudnn":
        request.getfixturevalue("cudnn_as_xla")
    eng = _engine(s, policy, opts=opts)
    qs = s["queries"][:2]
    trajs = eng.run(qs, s["qvecs"][:2], eng.sampling_params(1.0), key=jax.random.key(0), group=G,
                    first_docs=[q.gt_doc_id for q in qs])
    assert len(trajs) == 2 * G and all(len(t.turns) == 1 for t in trajs)
    batch = _batch(trajs, np.zeros(len(trajs), np.float32), policy.cfg)
    dev = jax.tree.map(jnp.asarray, {k: v for k, v in batch.items()})
    lp = np.asarray(jax.lax.map(lambda mb: grpo.score(policy, mb, opts=opts, temperature=1.0, chunk=8), dev))
    lp = lp.reshape(-1, lp.shape[-1])
    for r, tr in enumerate(trajs):
        t = tr.turns[0]
        n = len(t.sampled_ids)
        np.testing.assert_allclose(lp[r, :n], t.logprobs, atol=2e-4, rtol=1e-4)
        assert batch["completion_mask"].reshape(-1, 24)[r].sum() == n


class RefineFirstSampler(Sampler):
    """The real sampler, with every completion's first token replaced by <REFINE>: every episode refines (the
    rollout then reads a hidden state that was not captured at <REFINE>, which is fine for layout tests)."""

    refine_id = None

    def generate(self, prompts, sp, key=None, **kw):
        g = super().generate(prompts, sp, key, **kw)
        return g._replace(tokens=g.tokens.at[:, 0].set(self.refine_id))


def test_multi_turn_loss_weights_cover_only_sampled_tokens(setup):
    s = setup
    policy = s["policy"]
    eng = _engine(s, policy, max_turn=2, retriever=s["retriever"])
    eng.sampler = RefineFirstSampler(policy)
    eng.sampler.refine_id = special_ids(s["tok"]).refine
    qs = s["queries"][:2]
    trajs = eng.run(qs, s["qvecs"][:2], eng.sampling_params(1.0), key=jax.random.key(1), group=2,
                    first_docs=[q.gt_doc_id for q in qs])
    assert all(len(t.turns) == 2 for t in trajs), [(t.stop_reason, [u.text[:40] for u in t.turns]) for t in trajs]
    assert all(t.turns[1].doc_id == t.turns[0].next_doc_id for t in trajs)  # turn 2 shows the re-retrieved video
    batch = _batch(trajs, np.arange(len(trajs), dtype=np.float32), policy.cfg)
    w = batch["token_weight"].reshape(-1, 24)
    mask = batch["completion_mask"].reshape(-1, 24)
    rows = [(i, t) for i, tr in enumerate(trajs) for t in tr.turns]
    for r, (i, t) in enumerate(rows):
        n = len(t.sampled_ids)
        assert mask[r, :n].all() and not mask[r, n:].any()
        assert (w[r] > 0).sum() == n and np.all(w[r, n:] == 0)   # only the sampled tokens carry loss
        np.testing.assert_array_equal(batch["completion_ids"].reshape(-1, 24)[r, :n], t.sampled_ids)
    assert np.all(w[len(rows):] == 0)                              # padding rows
    per_traj = [w[[r for r, (i, _) in enumerate(rows) if i == k]].sum() for k in range(len(trajs))]
    np.testing.assert_allclose(per_traj, 1.0 / len(trajs), rtol=1e-6)  # one sequence per trajectory ("grpo")
    # the prompt side holds the environment (retrieved video, information text): never in the loss by layout
    ids = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1])
    for r, (_, t) in enumerate(rows):
        n = batch["prompt_lengths"].reshape(-1)[r]
        np.testing.assert_array_equal(ids[r, :n], t.prompt_ids)
        np.testing.assert_array_equal(ids[r, n:n + len(t.sampled_ids)], t.sampled_ids)


def test_update_keeps_frozen_and_reference_bit_identical(setup):
    s = setup
    policy, head = _copy(s["policy"]), _copy(s["head"])
    eng = _engine(s, _copy(s["policy"]))
    qs = s["queries"][:2]
    trajs = eng.run(qs, s["qvecs"][:2], eng.sampling_params(1.0), key=jax.random.key(2), group=G,
                    first_docs=[q.gt_doc_id for q in qs])
    adv, _ = grpo.group_advantages(np.random.RandomState(0).randn(len(trajs)), G)
    batch = jax.tree.map(jnp.asarray, _batch(trajs, adv, policy.cfg))
    cfg = type("C", (), dict(learning_rate=1e-3, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                             weight_decay=0.01, max_grad_norm=1.0))
    opt = optim.grpo_optimizer(cfg)
    state, gd = state_lib.create(policy, head, optim.grpo_trainable, opt.tx, sharding.single_device_mesh())
    ref = jax.tree.map(jnp.copy, state.params)
    lc = grpo.LossConfig(logprob_chunk=8)
    batch["ref_logprobs"] = jax.jit(grpo.make_score_fn(gd, OPTS, lc))(ref, state.frozen, batch)
    frozen0, ref0, params0 = (jax.tree.map(np.asarray, x) for x in (state.frozen, ref, state.params))
    assert set(state.frozen["head"].keys()) and not list(jax.tree.leaves(state.params["head"]))
    assert "visual" not in state.params["policy"]   # vision tower + mergers frozen in Stage 2
    state, m = jax.jit(grpo.make_train_step(gd, opt.tx, OPTS, lc, opt.schedules), donate_argnums=0)(state, batch)
    assert np.isfinite(float(m["loss"])) and float(m["kl"]) == pytest.approx(0.0, abs=1e-6)  # policy == reference
    for a, b in zip(jax.tree.leaves(frozen0), jax.tree.leaves(state.frozen)):
        np.testing.assert_array_equal(a, np.asarray(b))
    for a, b in zip(jax.tree.leaves(ref0), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(params0),
                                                                    jax.tree.leaves(state.params)))
