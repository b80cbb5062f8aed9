"""Stage-1 SFT: the loss and its gradients against an independent PyTorch computation of the original's formula on
HF's model (HF causal-LM loss + the 7 full re-forwards with the latents spliced after <REFINE> + the splice into
the HF embedder + InfoNCE), frozen parameters left bit-identical by the optimizer, and one compilation across
batches of different videos and lengths inside the same buckets."""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from tests.hf_fixtures import VIDEO_ID, random_pixels
from tests.test_qwen3_vl import build_row
from tests.test_sqr import random_head
from vsr1_jax import sharding
from vsr1_jax.compiles import CompileCounter
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.models.qwen3_vl.rope import get_rope_index
from vsr1_jax.train import optim, sft, sft_batches
from vsr1_jax.train import state as state_lib

REFINE, IM_END, NL = 950, 951, 952
D, K, TAU, LAM = 64, 4, 0.1, 0.3  # D = retrieval dim = the embedder hidden size (as 2048 in the original)
OPTS = RunOptions()


def _example(rng, grid, n_before, n_after, n_answer, qid):
    ids = build_row([n_before, ("video", grid), n_after], rng)
    answer = list(rng.randint(0, 900, size=n_answer)) + [REFINE, IM_END, NL]
    ids = np.asarray(ids + answer, np.int32)
    loss_mask = np.zeros(len(ids), bool)
    loss_mask[len(ids) - len(answer):] = True
    pos, _ = get_rope_index(ids[None], image_token_id=1000, video_token_id=VIDEO_ID, video_grid_thw=[grid])
    return dict(input_ids=ids, loss_mask=loss_mask, positions=pos[:, 0].astype(np.int32),
                refine_index=int(len(ids) - 3), pixel_rows=random_pixels(grid, qid), grid=grid,
                emb_ids=np.asarray(rng.randint(0, 900, size=10 + 3 * qid), np.int32), index=qid, qid=f"q{qid}",
                query="q", pos_video_id="p", video_id="v")


def _batch(cfg, examples, rng, buckets=(96, 128), label_buckets=(16,)):
    col = sft_batches.SFTCollate(cfg, 0, 1, buckets, label_buckets, None, None, num_latents=8, embedder_max_length=24)
    host = col(examples)
    B = len(examples)
    cand = rng.randn(1, B, K + 1, D).astype(np.float32)
    cand /= np.linalg.norm(cand, axis=-1, keepdims=True)
    cmask = np.ones((1, B, K + 1), bool)
    cmask[0, 0, K] = False                      # row 0 has one negative fewer
    host.update(candidates=cand, candidate_mask=cmask, ret_valid=np.ones((1, B), bool))
    return host


def _device(host, a=0):
    return jax.tree.map(lambda x: jnp.asarray(x[a]), {k: v for k, v in host.items() if not isinstance(v, list)})


def _torch_head(head):
    """The original's refine modules (nn.Sequential layouts) with the head's weights."""
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    H = head.proj_fc1_kernel.shape[0]
    proj = torch.nn.Sequential(torch.nn.Linear(H, D), torch.nn.LayerNorm(D), torch.nn.GELU(),
                               torch.nn.Linear(D, D))
    lat = torch.nn.Sequential(torch.nn.LayerNorm(D), torch.nn.Linear(D, H))
    app = torch.nn.Sequential(torch.nn.LayerNorm(D), torch.nn.Linear(D, head.append_kernel.shape[1]))
    with torch.no_grad():
        proj[0].weight.copy_(t(head.proj_fc1_kernel[...]).T), proj[0].bias.copy_(t(head.proj_fc1_bias[...]))
        proj[1].weight.copy_(t(head.proj_norm_scale[...])), proj[1].bias.copy_(t(head.proj_norm_bias[...]))
        proj[3].weight.copy_(t(head.proj_fc2_kernel[...]).T), proj[3].bias.copy_(t(head.proj_fc2_bias[...]))
        lat[0].weight.copy_(t(head.latent_norm_scale[...])), lat[0].bias.copy_(t(head.latent_norm_bias[...]))
        lat[1].weight.copy_(t(head.latent_kernel[...]).T), lat[1].bias.copy_(t(head.latent_bias[...]))
        app[0].weight.copy_(t(head.append_norm_scale[...])), app[0].bias.copy_(t(head.append_norm_bias[...]))
        app[1].weight.copy_(t(app_w := head.append_kernel[...]).T), app[1].bias.copy_(t(head.append_bias[...]))
    del app_w
    return proj, lat, app


def _torch_row_loss(hf, emb, proj, lat, app, ex, cand, cmask):
    """One row as the original computes it (TRN compute_loss / _compute_retrieval_loss, per-device batch 1)."""
    ids = torch.tensor(ex["input_ids"][None].astype(np.int64))
    labels = ids.clone()
    labels[0, ~torch.tensor(ex["loss_mask"])] = -100
    px, grid = torch.tensor(ex["pixel_rows"]), torch.tensor([ex["grid"]])
    pos = torch.tensor(ex["positions"][:, None].astype(np.int64))
    captured = {}
    hook = hf.model.language_model.norm.register_forward_pre_hook(lambda m, i: captured.__setitem__("pre", i[0]))
    try:
        out = hf(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=px, video_grid_thw=grid,
                 position_ids=pos, labels=labels)
    finally:
        hook.remove()
    lm = out.loss
    r = ex["refine_index"]
    zs = [proj(captured["pre"][0, r])]
    E = hf.model.language_model.embed_tokens(ids)
    ins = r + 1
    for k in range(1, 8):
        X = lat(torch.stack(zs))[None]
        e = torch.cat([E[:, :ins], X, E[:, ins:]], 1)
        p = torch.cat([pos[..., :ins], pos[..., ins - 1:ins] + torch.arange(1, k + 1), pos[..., ins:] + k], -1)
        h = hf.model(inputs_embeds=e, pixel_values_videos=px, video_grid_thw=grid, position_ids=p,
                     attention_mask=torch.ones(1, e.shape[1])).last_hidden_state
        zs.append(proj(h[0, ins + k - 1]))
    q = emb.model.language_model.embed_tokens(torch.tensor(ex["emb_ids"][None].astype(np.int64)))
    cut = q.shape[1] - 6
    e = torch.cat([q[:, :cut], app(torch.stack(zs))[None], q[:, cut:]], 1)
    h = emb.model.language_model(inputs_embeds=e, attention_mask=torch.ones(1, e.shape[1])).last_hidden_state
    qf = torch.nn.functional.normalize(h[0, -1], dim=-1)
    c = torch.tensor(cand[cmask])
    logits = (c @ qf) / TAU
    ret = torch.nn.functional.cross_entropy(logits[None], torch.zeros(1, dtype=torch.long))
    return lm, ret


@pytest.fixture(scope="module")
def setup(tiny_pair):
    hf, model, cfg = tiny_pair
    head = random_head(cfg.text.hidden_size, D=D, He=cfg.text.hidden_size, seed=5)
    rng = np.random.RandomState(0)
    examples = [_example(rng, (2, 4, 6), 5, 3, 6, 0), _example(rng, (2, 4, 4), 9, 2, 4, 1)]
    return hf, model, cfg, head, examples, _batch(cfg, examples, rng)


def test_sft_loss_and_gradients_equal_torch(setup):
    hf, model, cfg, head, examples, host = setup
    graphdefs, params, frozen = state_lib.split_models(model, head, optim.sft_trainable)
    emb_gd, emb_params = nnx.split(model)   # the tiny model doubles as the (frozen) query embedder
    lc = sft.LossConfig(retrieval_loss_weight=LAM, temperature=TAU, num_latents=8, group_size=1, logprob_chunk=16)
    fn = lambda p: sft.sft_loss(p, frozen, emb_params, _device(host), graphdefs=graphdefs,  # noqa: E731
                                embedder_graphdef=emb_gd, opts=OPTS, lc=lc)
    (loss, aux), grads = jax.value_and_grad(fn, has_aux=True)(params)

    proj, lat, app = _torch_head(head)
    emb = copy.deepcopy(hf).requires_grad_(False)  # the frozen embedder: back-propagated through, not trained
    hf.zero_grad()
    total = 0.0
    for b, ex in enumerate(examples):
        lm, ret = _torch_row_loss(hf, emb, proj, lat, app, ex, host["candidates"][0, b], host["candidate_mask"][0, b])
        total = total + (lm + LAM * ret) / len(examples)
    total.backward()
    assert float(loss) == pytest.approx(float(total), rel=1e-5, abs=1e-5)
    assert int(aux["infonce_rows"]) == 2
    g = {k: np.asarray(v) for k, v in nnx.to_flat_state(grads["policy"])}
    gh = {k: np.asarray(v) for k, v in nnx.to_flat_state(grads["head"])}
    pairs = [
        (g[("text", "lm_head")], hf.lm_head.weight.grad.numpy().T),
        (g[("text", "q_kernel")][0], hf.model.language_model.layers[0].self_attn.q_proj.weight.grad.numpy().T),
        (g[("text", "embed")], hf.model.language_model.embed_tokens.weight.grad.numpy()),
        (g[("visual", "merger", "fc1_kernel")], hf.model.visual.merger.linear_fc1.weight.grad.numpy().T),
        (gh[("proj_fc1_kernel",)], proj[0].weight.grad.numpy().T),
        (gh[("latent_kernel",)], lat[1].weight.grad.numpy().T),
        (gh[("append_kernel",)], app[1].weight.grad.numpy().T),
    ]
    for ours, ref in pairs:
        scale = max(np.abs(ref).max(), 1e-8)
        np.testing.assert_allclose(ours, ref, atol=2e-5 * scale + 1e-7, rtol=1e-3)
    assert ("visual", "qkv_kernel") not in g and ("gate_kernel",) not in gh  # frozen: not differentiated


def test_frozen_params_bit_identical_and_one_compile(setup):
    _, model, cfg, head, examples, host = setup
    copy_of = lambda m: nnx.merge(*jax.tree.map(jnp.copy, nnx.split(m)))  # noqa: E731 (the step donates its state)
    model, head = copy_of(model), copy_of(head)
    opt = optim.adamw_groups({"backbone": optim.linear_decay(1e-3, 10), "refine": optim.linear_decay(1e-3, 10)},
                             optim.sft_label)
    state, graphdefs = state_lib.create(model, head, optim.sft_trainable, opt.tx, sharding.single_device_mesh())
    frozen0 = jax.tree.map(np.asarray, state.frozen)
    params0 = jax.tree.map(np.asarray, state.params)
    emb_gd, emb_params = nnx.split(copy_of(model))
    lc = sft.LossConfig(num_latents=8, logprob_chunk=16)
    step = jax.jit(sft.make_train_step(graphdefs, emb_gd, opt.tx, OPTS, lc, opt.schedules), donate_argnums=0)
    rng = np.random.RandomState(3)
    state, m = step(state, emb_params, jax.tree.map(jnp.asarray, {k: v for k, v in host.items()
                                                                   if not isinstance(v, list)}))
    # other videos, lengths and answers inside the same buckets: no new compilation
    others = [_example(rng, (2, 4, 4), 3, 2, 9, 2), _example(rng, (1, 4, 6), 7, 4, 3, 3)]
    with CompileCounter() as cc:
        for _ in range(2):
            h = _batch(cfg, others, rng)
            state, m = step(state, emb_params, jax.tree.map(jnp.asarray, {k: v for k, v in h.items()
                                                                           if not isinstance(v, list)}))
        jax.block_until_ready(state)
    assert cc.count == 0
    assert int(state.step) == 3 and np.isfinite(float(m["loss"]))
    for a, b in zip(jax.tree.leaves(frozen0), jax.tree.leaves(state.frozen)):
        np.testing.assert_array_equal(a, np.asarray(b))
    moved = [not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(params0),
                                                                  jax.tree.leaves(state.params))]
    assert all(moved)


def _scan_ops_of_shape(jaxpr, shape, inside=False, acc=None):
    """Primitive names (with counts) of the ops inside scan bodies whose output has `shape`."""
    acc = {} if acc is None else acc
    for e in jaxpr.eqns:
        if e.primitive.name == "scan":
            _scan_ops_of_shape(e.params["jaxpr"].jaxpr, shape, True, acc)
            continue
        for v in e.params.values():
            sub = getattr(v, "jaxpr", v)
            if hasattr(sub, "eqns"):
                _scan_ops_of_shape(sub, shape, inside, acc)
        if inside and any(tuple(getattr(o.aval, "shape", ())) == shape for o in e.outvars):
            acc[e.primitive.name] = acc.get(e.primitive.name, 0) + 1
    return acc


def test_rollout_backward_touches_the_cache_per_layer_and_runs_with_gpu_defaults(setup):
    """The SQR rollout's backward must not build whole-cache arrays per layer (indexing a carried stacked cache
    transposes into zeros + add of the whole cache: 2 x L x 7 full-cache copies per step, 70 ms of the 2B step on
    the H200); the GPU default options (Pallas decode attention, which has no VJP) must still train, with the
    same loss and gradients; and so must the unrolled rollout (`rollout_layers="unrolled"`: every rollout step's
    layer scan unrolled, each layer's weights a static slice)."""
    _, model, cfg, head, _, host = setup
    graphdefs, params, frozen = state_lib.split_models(model, head, optim.sft_trainable)
    emb_gd, emb_params = nnx.split(model)
    lc = sft.LossConfig(num_latents=8, logprob_chunk=16)
    batch = _device(host)
    res = {}
    variants = dict(xla=RunOptions(), pallas=RunOptions(decode_attn_impl="pallas"),
                    unrolled=RunOptions(rollout_layers="unrolled"))
    for decode, opts in variants.items():
        fn = lambda p, o=opts: sft.sft_loss(p, frozen, emb_params, batch, graphdefs=graphdefs,  # noqa: E731
                                            embedder_graphdef=emb_gd, opts=o, lc=lc)[0]
        res[decode] = jax.jit(jax.value_and_grad(fn))(params)
        if decode == "xla":
            B, T = batch["input_ids"].shape
            t = cfg.text
            full = (t.num_hidden_layers, B, t.num_key_value_heads, T + lc.num_latents - 1, t.head_dim)
            assert _scan_ops_of_shape(jax.make_jaxpr(jax.grad(fn))(params).jaxpr, full) == {}
        # the rollout's 7 single-position steps (a cache of T + 7 slots): rolled or unrolled layer scans
        unrolls = _rollout_scan_unrolls(jax.make_jaxpr(fn)(params).jaxpr, cfg.text.num_hidden_layers)
        assert unrolls == [cfg.text.num_hidden_layers if decode == "unrolled" else 1] * (lc.num_latents - 1), unrolls
    assert float(res["pallas"][0]) == float(res["xla"][0])
    for a, b in zip(jax.tree.leaves(res["xla"][1]), jax.tree.leaves(res["pallas"][1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(res["unrolled"][0]) == pytest.approx(float(res["xla"][0]), rel=1e-6)
    for a, b in zip(jax.tree.leaves(res["xla"][1]), jax.tree.leaves(res["unrolled"][1])):
        scale = max(float(np.abs(np.asarray(a)).max()), 1e-8)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5 * scale, rtol=1e-4)


def _rollout_scan_unrolls(jaxpr, layers: int) -> list[int]:
    """The `unroll` of every layer scan (length `layers`) that carries no hidden state of several positions: the
    single-position steps' scans, in program order (the forward's scan of T positions is the first layer scan)."""
    out = []
    for e in jaxpr.eqns:
        if e.primitive.name == "scan" and e.params["length"] == layers:
            h = e.outvars[0].aval.shape          # the carried hidden state [B, T, D]
            if len(h) == 3 and h[1] == 1:
                out.append(int(e.params["unroll"]))
        for v in e.params.values():
            sub = getattr(v, "jaxpr", v)
            if hasattr(sub, "eqns") and e.primitive.name != "scan":
                out += _rollout_scan_unrolls(sub, layers)
    return out
