"""GRPO's pure pieces against independent computations: group advantages (NumPy), the clipped token objective
with k3 KL and both aggregations (PyTorch, as TRL writes it), mu = 1 and mu = 2 with clipping active, KL = 0 when the
policy is the reference, and the chunked log-probs against full-logit log-softmax."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vsr1_jax.train import grpo as G
from vsr1_jax.train.logprobs import token_logprobs


def test_group_advantages_unbiased_std():
    rng = np.random.RandomState(0)
    r = rng.randn(32).astype(np.float32)
    r[8:16] = 0.5  # a zero-std group (0.5 sums exactly in float32)
    adv, zero = G.group_advantages(r, 8)
    t = torch.tensor(r).view(-1, 8)
    ref = (t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + 1e-4)  # torch.std is unbiased
    np.testing.assert_allclose(adv, ref.reshape(-1).numpy(), rtol=1e-5, atol=1e-5)
    assert zero.tolist() == [False, True, False, False]
    assert np.all(adv[8:16] == 0)


def _torch_trl_loss(logp, old, ref, adv, mask, el, eh, beta, loss_type):
    """TRL's GRPO loss on one batch (compute_loss), written in PyTorch."""
    logp, old, ref, adv, mask = (torch.tensor(x, dtype=torch.float64) for x in (logp, old, ref, adv, mask))
    coef_1 = torch.exp(logp - old)
    coef_2 = torch.clamp(coef_1, 1 - el, 1 + eh)
    l1, l2 = coef_1 * adv[:, None], coef_2 * adv[:, None]
    per_tok = -torch.min(l1, l2)
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    per_tok = per_tok + beta * kl
    if loss_type == "grpo":
        return ((per_tok * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean().item()
    return ((per_tok * mask).sum() / mask.sum().clamp(min=1.0)).item()


@pytest.mark.parametrize("loss_type", ["grpo", "token_mean"])
@pytest.mark.parametrize("mu2", [False, True])
def test_objective_equals_trl(loss_type, mu2):
    rng = np.random.RandomState(1 + mu2)
    B, C = 12, 20
    logp = -rng.rand(B, C) * 3
    # mu = 1: old = logp exactly (ratio 1); mu = 2: the policy moved since generation, clipping is active
    old = logp + (rng.randn(B, C) * 0.5 if mu2 else 0.0)
    ref = logp + rng.randn(B, C) * 0.3
    adv = rng.randn(B)
    lengths = rng.randint(1, C + 1, B)
    mask = (np.arange(C)[None] < lengths[:, None]).astype(np.float64)
    seq = np.arange(B)
    w = G.token_weights(mask, seq, loss_type)
    per_tok, kl, clipped = G.per_token_objective(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32),
                                                 jnp.asarray(ref, jnp.float32), jnp.asarray(adv, jnp.float32),
                                                 epsilon_low=0.2, epsilon_high=0.2, beta=0.01)
    ours = float(jnp.sum(per_tok * w))
    ref_loss = _torch_trl_loss(logp, old, ref, adv, mask, 0.2, 0.2, 0.01, loss_type)
    assert ours == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    frac = float((np.asarray(clipped) * mask).sum() / mask.sum())
    assert (frac > 0.05) if mu2 else (frac == 0.0)


def test_micro_batched_weights_equal_whole_batch():
    """GA over micro-batches (sum of weighted token sums) == the whole generation batch's aggregation; rows of one
    multi-turn trajectory form one sequence; padding rows weigh nothing."""
    rng = np.random.RandomState(3)
    B, C = 8, 10
    mask = (rng.rand(B, C) > 0.3).astype(np.float64)
    seq = np.array([0, 0, 1, 2, 2, 3, -1, -1])
    per_tok = rng.randn(B, C)
    w = G.token_weights(mask, seq, "grpo")
    expect = np.mean([(per_tok[seq == s] * mask[seq == s]).sum() / mask[seq == s].sum() for s in range(4)])
    got = sum((per_tok[i:i + 2] * w[i:i + 2]).sum() for i in range(0, B, 2))
    assert got == pytest.approx(expect, rel=1e-6)
    assert np.all(w[6:] == 0)


def _ref_bnpo_micro_loss(per_token_loss, action_mask):
    """TR:5669-5672, transcribed: the original's "bnpo" loss of one micro-batch on one rank."""
    per_token_loss, action_mask = torch.tensor(per_token_loss), torch.tensor(action_mask)
    loss = (
        per_token_loss * action_mask
    ).sum() / action_mask.sum().clamp(min=1.0)
    return loss.item()


def test_bnpo_weights_equal_the_originals_per_micro_batch_token_means():
    """loss_type="bnpo": each device's micro-batch token mean (TR:5669-5672), divided by GA (TR:1231) and averaged
    over the ranks (DeepSpeed), equals sum(w * per_token_loss) with w from `token_weights`; the rows of micro-batch a
    on device d are rows [(a * W + d) * pdbs, ... + pdbs) of the scoring layout. "token_mean" differs from it when
    micro-batches hold different token counts."""
    rng = np.random.RandomState(5)
    GA, W, pdbs, C = 3, 2, 2, 9
    B = GA * W * pdbs
    lengths = rng.randint(0, C + 1, B)
    lengths[:pdbs] = 0                                     # an all-empty micro-batch: clamp(min=1), still counted
    mask = (np.arange(C)[None] < lengths[:, None]).astype(np.float64)
    seq = np.arange(B)
    per_tok = rng.randn(B, C)
    ref = sum(_ref_bnpo_micro_loss(per_tok[g * pdbs:(g + 1) * pdbs], mask[g * pdbs:(g + 1) * pdbs])
              for g in range(GA * W)) / GA / W
    w = G.token_weights(mask, seq, "bnpo", group_rows=pdbs)
    assert float((per_tok * w).sum()) == pytest.approx(ref, rel=1e-6)
    # one process of two holding half of every micro-batch: the same weights with the job's group count
    half = np.concatenate([np.arange(a * W * pdbs, a * W * pdbs + pdbs) for a in range(GA)])
    w_half = G.token_weights(mask[half], seq[half], "bnpo", group_rows=pdbs, groups_total=GA * W)
    np.testing.assert_allclose(w_half, w[half], rtol=1e-6)
    token_mean = float((per_tok * G.token_weights(mask, seq, "token_mean")).sum())
    assert abs(token_mean - ref) > 1e-3
    with pytest.raises(ValueError, match="group_rows"):
        G.token_weights(mask, seq, "bnpo", group_rows=5)


def test_kl_is_zero_when_policy_is_reference():
    logp = -jnp.asarray(np.random.RandomState(4).rand(3, 7), jnp.float32)
    _, kl, _ = G.per_token_objective(logp, logp, logp, jnp.ones(3), epsilon_low=0.2, epsilon_high=0.2, beta=0.01)
    assert np.all(np.asarray(kl) == 0.0)


@pytest.mark.parametrize("chunk,temp", [(4, 1.0), (7, 0.7), (64, 1.0)])
def test_chunked_logprobs_equal_full(chunk, temp):
    rng = np.random.RandomState(5)
    B, T, D, V = 2, 23, 16, 50
    h = jnp.asarray(rng.randn(B, T, D), jnp.float32)
    W = jnp.asarray(rng.randn(D, V), jnp.float32)
    tgt = jnp.asarray(rng.randint(0, V, (B, T)))
    fn = lambda x: x @ W  # noqa: E731
    full = jax.nn.log_softmax((h @ W) / temp, -1)
    ref = jnp.take_along_axis(full, tgt[..., None], -1)[..., 0]
    got = token_logprobs(fn, h, tgt, chunk=chunk, temperature=temp)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)
    # and the gradient through the rematerialised chunks
    g1 = jax.grad(lambda W: token_logprobs(lambda x: x @ W, h, tgt, chunk=chunk, temperature=temp).sum())(W)
    g2 = jax.grad(lambda W: jnp.take_along_axis(jax.nn.log_softmax((h @ W) / temp, -1), tgt[..., None],
                                                -1).sum())(W)
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=1e-4, atol=1e-5)
