"""SQR: init rules, the KV-cached latent rollout vs the original's re-forward formulation, and q_final vs a torch
reimplementation of the original splice on HF's model."""
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from tests.hf_fixtures import VIDEO_ID, IMAGE_ID, random_pixels
from tests.test_qwen3_vl import build_row
from vsr1_jax.generate.sampler import SamplingParams, Sampler, pack_prompts
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.models.qwen3_vl.rope import get_rope_index
from vsr1_jax.models.qwen3_vl.text import Visual

REFINE = 950
OPTS = RunOptions()


def rollout_reference(model, head: S.SQRHead, embeds, positions, mask, refine_index: int, *, opts, visual=None,
                      num_latents: int = 8):
    """The original's formulation for one row (TRN L481-656): N-1 full forwards with the latents spliced into the
    sequence right after <REFINE> and later tokens shifted by k. embeds [1, T, H] (with visual features already
    scattered), positions [3, 1, T], refine_index = position of the last <REFINE> in the row."""
    ins = refine_index + 1
    pre = model.decode(embeds, positions, mask, opts=opts, visual=visual, logits="none").hidden_pre_norm
    zs = [head.project(pre[:, refine_index])]
    for k in range(1, num_latents):
        X = head.latent_input(jnp.stack(zs, 1)).astype(embeds.dtype)            # [1, k, H]
        e = jnp.concatenate([embeds[:, :ins], X, embeds[:, ins:]], 1)
        base = positions[..., ins - 1:ins]
        lat_pos = base + jnp.arange(1, k + 1)[None, None, :]
        p = jnp.concatenate([positions[..., :ins], lat_pos, positions[..., ins:] + k], -1)
        m = jnp.concatenate([mask[:, :ins], jnp.ones((1, k), mask.dtype), mask[:, ins:]], 1)
        vis = None
        if visual is not None:  # shift visual bookkeeping with the tail
            pad_i = jnp.zeros((1, k), visual.idx.dtype)
            vis = Visual(jnp.concatenate([visual.idx[:, :ins], pad_i, visual.idx[:, ins:]], 1),
                         jnp.concatenate([visual.mask[:, :ins], jnp.zeros((1, k), bool), visual.mask[:, ins:]], 1),
                         visual.feats)
        h = model.decode(e, p, m, opts=opts, visual=vis, logits="none").hidden
        zs.append(head.project(h[:, ins + k - 1]))
    return jnp.stack(zs, 1)


def random_head(H, D=48, He=64, seed=0):
    """An SQR head with every tensor random (the init rules would make the latents trivially zero)."""
    head = S.SQRHead(S.SQRConfig(policy_hidden=H, retrieval_dim=D, embedder_hidden=He, zero_init_refine=False),
                     rngs=nnx.Rngs(seed))
    rng = np.random.RandomState(seed)
    for path, var in nnx.to_flat_state(nnx.state(head, nnx.Param)):
        v = np.asarray(var.get_value())
        var.set_value(jnp.asarray(v + 0.3 * rng.randn(*v.shape).astype(np.float32)))
    return head


def test_init_rules():
    head = S.SQRHead(S.SQRConfig(policy_hidden=40, retrieval_dim=32, embedder_hidden=24), rngs=nnx.Rngs(0))
    assert not np.any(np.asarray(head.proj_fc2_kernel[...])) and not np.any(np.asarray(head.proj_fc2_bias[...]))
    assert np.any(np.asarray(head.proj_fc1_kernel[...]))
    assert not np.any(np.asarray(head.gate_kernel[...]))
    wl = np.asarray(head.latent_kernel[...])           # [D=32, H=40]: identity on the first 32 dims
    np.testing.assert_array_equal(wl, np.eye(32, 40, dtype=np.float32))
    wa = np.asarray(head.append_kernel[...])           # [32, 24]
    np.testing.assert_array_equal(wa, np.eye(32, 24, dtype=np.float32))
    z = head.project(jnp.ones((2, 40)))
    assert z.shape == (2, 32) and not np.any(np.asarray(z))  # zero last layer => zero latents at init


def _refine_sequence(cfg, rng):
    """A prompt with a video, then a 'completion' that ends with <REFINE>, <|im_end|>-like tokens."""
    grid = (2, 4, 6)
    ids = build_row([5, ("video", grid), 4], rng) + [11, 12, REFINE, 13, 14]
    return np.array([ids]), grid, len(ids) - 3


def test_cached_rollout_equals_refordward_formulation(tiny_pair):
    _, model, cfg = tiny_pair
    head = random_head(cfg.text.hidden_size)
    ids, grid, ridx = _refine_sequence(cfg, np.random.RandomState(0))
    px = jnp.asarray(random_pixels(grid, 3))
    mask = np.ones_like(ids)
    pos, _ = get_rope_index(ids, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, video_grid_thw=[grid])
    embeds, visual = model.embed(jnp.asarray(ids), OPTS, video_pixels=px, video_grids=(grid,))
    ref = rollout_reference(model, head, embeds, jnp.asarray(pos), jnp.asarray(mask), ridx, opts=OPTS,
                              visual=visual)
    # cached: prefill the whole sequence (tokens after <REFINE> included, as after generation), then roll out
    p = pack_prompts([list(ids[0])], cfg=cfg, pad_id=0, video_pixels=np.asarray(px), video_grids=[grid])
    sampler = Sampler(model)
    _, cache, _ = sampler.prefill(p, ids.shape[1] + 8)
    h = model(jnp.asarray(ids), jnp.asarray(pos), video_pixels=px, video_grids=(grid,)).hidden_pre_norm[:, ridx]
    Z, _ = S.rollout_cached(model, head, cache, h, jnp.asarray([ridx]), jnp.asarray(pos[0, :, ridx]), opts=OPTS)
    assert Z.shape == (1, 8, 48)
    assert np.abs(np.asarray(ref)).max() > 1e-2
    np.testing.assert_allclose(np.asarray(Z), np.asarray(ref), atol=1e-5, rtol=1e-5)


def test_sampler_captures_prenorm_hidden_of_token(tiny_pair):
    _, model, cfg = tiny_pair
    rng = np.random.RandomState(2)
    seqs = [build_row([6], rng), build_row([3, ("video", (2, 4, 4)), 2], rng)]
    grid = (2, 4, 4)
    px = random_pixels(grid, 1)
    p = pack_prompts(seqs, cfg=cfg, pad_id=0, video_pixels=px, video_grids=[grid])
    s = Sampler(model)
    first = s.generate(p, SamplingParams(max_new_tokens=3, eos_ids=(7,)))
    target = int(np.asarray(first.tokens)[1, 1])     # capture the 2nd generated token of row 1
    g = s.generate(p, SamplingParams(max_new_tokens=3, eos_ids=(7,)), capture_id=target)
    toks = np.asarray(g.tokens)
    full = np.concatenate([p.ids, toks[:, :2]], 1)
    mask = np.concatenate([p.mask, np.ones((2, 2), np.int32)], 1)
    pos, _ = get_rope_index(full, image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                            video_grid_thw=[grid], attention_mask=mask)
    out = model(jnp.asarray(full), jnp.asarray(pos), jnp.asarray(mask), video_pixels=jnp.asarray(px),
                video_grids=(grid,))
    last = 1 if toks[1, 1] == target else 0
    np.testing.assert_allclose(np.asarray(g.capture_hidden[1]), np.asarray(out.hidden_pre_norm[1, p.ids.shape[1] + last]),
                               atol=1e-5, rtol=1e-4)
    assert int(g.capture_pos[1]) == int(pos[0, 1, p.ids.shape[1] + last])
    assert int(g.capture_slot[1]) == p.ids.shape[1] + last


def test_q_final_matches_torch_splice_on_hf(tiny_pair):
    hf, model, cfg = tiny_pair
    He = cfg.text.hidden_size
    head = random_head(H=He, D=48, He=He, seed=4)
    rng = np.random.RandomState(9)
    rows = [list(rng.randint(0, 900, size=n)) for n in (14, 9, 4)]
    Z = jnp.asarray(rng.randn(3, 8, 48).astype(np.float32))
    ids, is_lat, lat_idx, mask = S.splice_layout(rows, 8, 6)
    ours = np.asarray(S.q_final(model, head, Z, jnp.asarray(ids), jnp.asarray(is_lat), jnp.asarray(lat_idx),
                                jnp.asarray(mask), opts=OPTS))
    # torch reimplementation of TRN L695-737 with the same weights, one row at a time as the original
    ln = torch.nn.LayerNorm(48)
    lin = torch.nn.Linear(48, He)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor(np.asarray(head.append_norm_scale[...])))
        ln.bias.copy_(torch.tensor(np.asarray(head.append_norm_bias[...])))
        lin.weight.copy_(torch.tensor(np.asarray(head.append_kernel[...]).T))
        lin.bias.copy_(torch.tensor(np.asarray(head.append_bias[...])))
        for b, row in enumerate(rows):
            q = hf.model.language_model.embed_tokens(torch.tensor([row]))
            A = lin(ln(torch.tensor(np.asarray(Z[b]))))[None]
            cut = len(row) - min(6, len(row))
            e = torch.cat([q[:, :cut], A, q[:, cut:]], 1)
            h = hf.model.language_model(inputs_embeds=e, attention_mask=torch.ones(1, e.shape[1])).last_hidden_state
            ref = torch.nn.functional.normalize(h[:, -1], p=2, dim=-1)[0].numpy()
            cos = float(ours[b] @ ref / np.linalg.norm(ours[b]) / np.linalg.norm(ref))
            assert cos >= 0.99999, (b, cos)
            np.testing.assert_allclose(ours[b], ref, atol=1e-5)
