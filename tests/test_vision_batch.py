"""The padded, bucketed vision batch (`vision.VisionBatch`): the host packer against HF's position-embedding gather,
padded features / gradients / logits equal to the unpadded static-grid path (and HF), one compilation for batches of
different grids in the same buckets (model forward and sampler prefill), and the packer's errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from tests.hf_fixtures import IMAGE_ID, VIDEO_ID, random_pixels
from tests.test_qwen3_vl import build_row, hf_forward, make_batch, our_forward
from vsr1_jax.compiles import CompileCounter
from vsr1_jax.generate.sampler import Sampler, pack_prompts
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.rope import get_rope_index
from vsr1_jax.models.qwen3_vl.vision import (VisionBuckets, VisionModel, merged_mask, pack_vision, pos_embed_taps,
                                             split_rows, vision_layout)

REL = 1e-5  # max |padded - static| <= REL * max |static|


def _close(a, b, rel=REL):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    err, scale = np.abs(a - b).max(), np.abs(b).max()
    assert err <= rel * scale, (err, scale)


def _items(grids, seed=0):
    return [(random_pixels(g, seed + i), g) for i, g in enumerate(grids)]


# ---- host packer -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w,side", [(4, 6, 8), (6, 4, 8), (2, 2, 8), (16, 10, 48), (48, 64, 48), (100, 12, 48)])
def test_pos_embed_taps_match_hf(h, w, side):
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights
    idx, wgt = get_vision_interpolation_indices_and_weights(torch.tensor([[1, h, w]]), side, mode="bilinear",
                                                            align_corners=True, spatial_merge_size=2)
    ours_idx, ours_w = pos_embed_taps(h, w, side, 2)
    np.testing.assert_array_equal(ours_idx, idx.numpy())
    np.testing.assert_array_equal(ours_w, wgt.numpy())


def test_layout_shapes_masks_and_padding():
    cfg = get_preset("tiny").vision
    lay = pack_vision(_items([(3, 4, 6), (1, 6, 4)]), cfg, VisionBuckets(items=(1, 4), groups=(2, 4, 8),
                                                                         patches=(16, 32)))
    assert lay.pixels.shape == (4, 4, 32, cfg.patch_dim)
    assert lay.pos_index.shape == lay.pos_weight.shape == (4, 32, 4)
    assert lay.rope_cos.shape == lay.rope_sin.shape == (4, 32, cfg.head_dim)
    np.testing.assert_array_equal(lay.patch_mask.sum(1), [24, 24, 0, 0])
    np.testing.assert_array_equal(lay.group_mask.sum(1), [3, 1, 0, 0])
    assert not lay.pixels[0, 3].any() and not lay.pixels[0, :, 24:].any() and not lay.pixels[2:].any()
    np.testing.assert_array_equal(lay.pixels[1, 0, :24], random_pixels((1, 6, 4), 1))
    assert (lay.pos_weight[:, 24:] == 0).all()
    np.testing.assert_allclose(lay.pos_weight[:2, :24].sum(-1), 1.0, rtol=1e-6)
    mm = merged_mask(lay, cfg.merge_unit)
    assert mm.shape == (4, 4 * 8) and mm.sum() == (3 * 24 + 24) // 4
    exact = pack_vision(_items([(3, 4, 6), (1, 6, 4)]), cfg)       # no buckets: exact sizes
    assert exact.pixels.shape == (2, 3, 24, cfg.patch_dim)


def test_token_index_row_major_per_kind():
    """Placeholders take their kind's items in order, row-major over the batch (HF masked_scatter)."""
    cfg = get_preset("tiny").vision
    I, V = 7, 8
    # row 0: video A (2 groups of 2 merged tokens) then image B (1 token); row 1: video C (1 group of 2 tokens)
    grids = [(2, 2, 4), (1, 2, 2), (1, 4, 2)]        # A video, B image, C video (h*w/4 = 2, 1, 2 tokens / group)
    ids = np.array([[1, V, V, 2, V, V, I, 3, 0],
                    [4, 5, V, V, 6, 0, 0, 0, 0]])
    vb = pack_vision(_items(grids), cfg, VisionBuckets(groups=(4,), patches=(8,)), input_ids=ids,
                     placeholder_ids=[V, I, V])
    per_group, per_item = 8 // 4, 4 * 8 // 4
    A = [0, 1, per_group, per_group + 1]
    B = [per_item]
    C = [2 * per_item, 2 * per_item + 1]
    expect = np.full(ids.shape, -1)
    expect[0, [1, 2, 4, 5]] = A
    expect[0, [6]] = B
    expect[1, [2, 3]] = C
    np.testing.assert_array_equal(vb.token_index, expect)


def test_packer_errors():
    cfg = get_preset("tiny").vision
    items = _items([(3, 4, 6)])
    with pytest.raises(ValueError, match="largest bucket is 2"):
        pack_vision(items, cfg, VisionBuckets(groups=(2,)))
    with pytest.raises(ValueError, match="patches per frame: 24 needed"):
        pack_vision(items, cfg, VisionBuckets(patches=(16,)))
    with pytest.raises(ValueError, match="not a multiple"):
        pack_vision(items, cfg, VisionBuckets(patches=(30,)))
    with pytest.raises(ValueError, match="images/videos per batch"):
        pack_vision(_items([(1, 4, 4)] * 3), cfg, VisionBuckets(items=(2,)))
    with pytest.raises(ValueError, match="do not match grid"):
        pack_vision([(random_pixels((1, 4, 4)), (1, 4, 6))], cfg)
    with pytest.raises(ValueError, match="multiples of 2"):
        vision_layout([(1, 3, 4)], cfg)
    with pytest.raises(ValueError, match="placeholder tokens"):
        pack_vision(items, cfg, input_ids=np.full((1, 17), 5), placeholder_ids=5)   # 18 rows, 17 tokens
    with pytest.raises(ValueError, match="cover 48 pixel rows"):
        split_rows(np.zeros((40, cfg.patch_dim)), [(2, 4, 6)])


# ---- device: features, gradients, logits ---------------------------------------------------------------------------
GRIDS = [(3, 4, 6), (1, 6, 4), (2, 4, 4), (1, 4, 4)]
BUCKETS = VisionBuckets(items=(6,), groups=(4,), patches=(32,))   # extra items, groups and patches


def _real(x, mask):
    """[.., Nv, R, D] features, mask [Nv, R] -> the real rows in item order [.., N, D]."""
    return np.asarray(x)[..., np.asarray(mask), :]


def test_padded_features_equal_static_and_hf(tiny_pair):
    hf, model, cfg = tiny_pair
    items = _items(GRIDS)
    px = np.concatenate([p for p, _ in items])
    vb = pack_vision(items, cfg.vision, BUCKETS)
    merged, deep = jax.jit(lambda b: model.visual.encode_batch(b))(jax.tree.map(jnp.asarray, vb))
    assert merged.shape == (6, 4 * 32 // 4, cfg.vision.out_hidden_size) and deep.shape == (2,) + merged.shape
    mm = merged_mask(vb, cfg.vision.merge_unit)
    ref_m, ref_d = jax.jit(lambda p: model.visual(p, GRIDS))(jnp.asarray(px))        # static path, unpadded
    _close(_real(merged, mm), ref_m)
    _close(_real(deep, mm), ref_d)
    assert not np.asarray(merged)[~mm].any() and not np.asarray(deep)[:, ~mm].any()   # padded rows are zero
    with torch.no_grad():
        ref = hf.model.visual(torch.tensor(px), grid_thw=torch.tensor(GRIDS))
    _close(_real(merged, mm), ref.pooler_output.numpy(), 1e-4)
    for k, f in enumerate(ref.deepstack_features):
        _close(_real(deep[k], mm), f.numpy(), 1e-4)


def test_padded_gradients_equal_static(tiny_pair):
    """Padding does not leak into the real rows' gradients (and remat gives the same ones)."""
    _, model, cfg = tiny_pair
    items = _items(GRIDS, seed=3)
    px = jnp.asarray(np.concatenate([p for p, _ in items]))
    vb = jax.tree.map(jnp.asarray, pack_vision(items, cfg.vision, BUCKETS))
    mm = merged_mask(vb, cfg.vision.merge_unit)
    n = int(mm.sum())
    rng = np.random.RandomState(0)
    wm = jnp.asarray(rng.randn(n, cfg.vision.out_hidden_size), jnp.float32)
    wd = jnp.asarray(rng.randn(2, n, cfg.vision.out_hidden_size), jnp.float32)
    gd, state = nnx.split(model.visual)
    order = np.flatnonzero(np.asarray(mm).reshape(-1))

    def loss_padded(st):
        m, d = nnx.merge(gd, st).encode_batch(vb, remat=True)
        m, d = m.reshape(-1, m.shape[-1])[order], d.reshape(2, -1, d.shape[-1])[:, order]
        return jnp.sum(m * wm) + jnp.sum(d * wd)

    def loss_static(st):
        m, d = nnx.merge(gd, st)(px, GRIDS)
        return jnp.sum(m * wm) + jnp.sum(d * wd)

    lp, gp = jax.jit(jax.value_and_grad(loss_padded))(state)
    ls, gs = jax.jit(jax.value_and_grad(loss_static))(state)
    _close(lp, ls)
    flat_p, flat_s = jax.tree.leaves(gp), jax.tree.leaves(gs)
    assert len(flat_p) == len(flat_s) > 10
    for a, b in zip(flat_p, flat_s):
        assert np.isfinite(np.asarray(a)).all()
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * np.abs(np.asarray(b)).max())


ROWS = {
    "image_and_video_batch": [[30], [4, ("video", (2, 4, 6)), 3],
                              [2, ("image", (1, 4, 6)), 1, ("video", (3, 4, 4)), 2]],
    "two_videos_one_row": [[3, ("video", (2, 4, 4)), 2, ("video", (1, 6, 4)), 4], [5, ("video", (3, 4, 6)), 1]],
}


def _vision_for(batch, cfg, buckets):
    ids, _, images, img_px, videos, vid_px = batch
    items = list(zip(split_rows(img_px, images), images)) + list(zip(split_rows(vid_px, videos), videos))
    pids = [cfg.image_token_id] * len(images) + [cfg.video_token_id] * len(videos)
    return pack_vision(items, cfg.vision, buckets, input_ids=ids, placeholder_ids=pids)


@pytest.mark.parametrize("name", list(ROWS))
def test_logits_with_padded_vision_equal_static(tiny_pair, name):
    hf, model, cfg = tiny_pair
    batch = make_batch(ROWS[name])
    ids, mask, images, _, videos, _ = batch
    vb = _vision_for(batch, cfg, VisionBuckets(items=(8,), groups=(4,), patches=(32,)))
    pos, _ = get_rope_index(ids, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, image_grid_thw=images,
                            video_grid_thw=videos, attention_mask=mask)
    out = jax.jit(lambda i, p, m, v: model(i, p, m, vision=v))(jnp.asarray(ids), jnp.asarray(pos),
                                                             jnp.asarray(mask), jax.tree.map(jnp.asarray, vb))
    ref = our_forward(model, *batch)                                                  # static grids
    valid = mask.astype(bool)
    _close(np.asarray(out.logits)[valid], np.asarray(ref.logits)[valid])
    _close(np.asarray(out.hidden_pre_norm)[valid], np.asarray(ref.hidden_pre_norm)[valid])
    hf_logits = hf_forward(hf, *batch).logits.numpy()
    _close(np.asarray(out.logits)[valid], hf_logits[valid], 1e-4)


def _video_batch(grids, T, seed):
    """One video per row (None: a text-only row), right-padded to T tokens: (ids, mask, positions, items)."""
    rng = np.random.RandomState(seed)
    seqs = [build_row([3, ("video", g), 2] if g else [11], rng) for g in grids]
    grids = [g for g in grids if g]
    ids = np.zeros((len(seqs), T), np.int32)
    mask = np.zeros((len(seqs), T), np.int32)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    pos, _ = get_rope_index(ids, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, video_grid_thw=grids,
                            attention_mask=mask)
    return ids, mask, pos, _items(grids, seed)


def test_one_compilation_for_different_grids(tiny_pair):
    """Two batches with different real grids (and item counts) in the same buckets: one compiled forward (params as
    an argument, as a train step has them), and each batch's logits equal the static-grid forward."""
    _, model, cfg = tiny_pair
    buckets = VisionBuckets(items=(4,), groups=(4,), patches=(32,))
    gd, state = nnx.split(model)

    @jax.jit
    def step(st, ids, pos, mask, vision):
        return nnx.merge(gd, st)(ids, pos, mask, vision=vision, logits="all").logits

    batches = []
    for grids, seed in (([(2, 4, 6), None, (1, 4, 4)], 1), ([(3, 6, 4), (4, 2, 4), (1, 4, 8)], 2)):
        ids, mask, pos, items = _video_batch(grids, 160, seed)
        vb = pack_vision(items, cfg.vision, buckets, input_ids=ids, placeholder_ids=cfg.video_token_id)
        dev = [jnp.asarray(a) for a in (ids, pos, mask)] + [jax.tree.map(jnp.asarray, vb)]   # transfers
        batches.append((ids, mask, pos, items, dev))
    with CompileCounter() as cc:
        outs = [step(state, *dev) for *_, dev in batches]
        jax.block_until_ready(outs)
    assert cc.count == 1, cc.count
    for (ids, mask, pos, items, _), logits in zip(batches, outs):
        px = np.concatenate([p for p, _ in items])
        grids = tuple(g for _, g in items)
        ref = jax.jit(lambda i, p, m, x: model(i, p, m, video_pixels=x, video_grids=grids).logits)(
            jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask), jnp.asarray(px))
        valid = mask.astype(bool)
        _close(np.asarray(logits)[valid], np.asarray(ref)[valid])


def test_sampler_prefill_with_vision_buckets(tiny_pair):
    _, model, cfg = tiny_pair
    sampler = Sampler(model)
    buckets = VisionBuckets(items=(2, 4), groups=(4,), patches=(16, 32))

    def prompts(grids, seed, vision_buckets):
        rng = np.random.RandomState(seed)
        seqs = [build_row([3, ("video", g), 4], rng) for g in grids] + [list(rng.randint(0, 900, 9))]
        px = np.concatenate([random_pixels(g, seed + i) for i, g in enumerate(grids)])
        return pack_prompts(seqs, cfg=cfg, pad_id=0, length=96, video_pixels=px, video_grids=grids,
                            vision_buckets=vision_buckets)

    a = [(2, 4, 6), (1, 4, 4)]
    b = [(3, 6, 4), (2, 4, 8)]
    pa = prompts(a, 1, buckets)
    assert pa.vision is not None and pa.vision.pixels.shape[:3] == (2, 4, 32)
    la, _, ha = sampler.prefill(pa, 128)
    ref_la, _, ref_ha = sampler.prefill(prompts(a, 1, None), 128)                    # static grids
    _close(la, ref_la)
    _close(ha, ref_ha)
    pb = prompts(b, 2, buckets)
    with CompileCounter() as cc:
        lb, _, _ = sampler.prefill(pb, 128)
        jax.block_until_ready(lb)
    assert cc.count == 0, cc.count                                                     # same buckets: no recompile
    ref_lb, _, _ = sampler.prefill(prompts(b, 2, None), 128)
    _close(lb, ref_lb)


def test_embed_rejects_mixed_arguments(tiny_pair):
    _, model, cfg = tiny_pair
    ids, mask, pos, items = _video_batch([(1, 4, 4)], 16, 0)
    vb = pack_vision(items, cfg.vision, input_ids=ids, placeholder_ids=cfg.video_token_id)
    from vsr1_jax.models.qwen3_vl.run_options import RunOptions
    with pytest.raises(ValueError, match="not both"):
        model.embed(jnp.asarray(ids), RunOptions(), vision=vb, video_pixels=jnp.asarray(items[0][0]),
                    video_grids=((1, 4, 4),))
    with pytest.raises(ValueError, match="no token_index"):
        model.embed(jnp.asarray(ids), RunOptions(), vision=vb._replace(token_index=None))


def test_tiny_preset_bf16_bucketed_equals_static():
    """The tiny preset (random init) in bf16 compute: the padded batch equals the static path on the real rows."""
    cfg = get_preset("tiny")
    visual = VisionModel(cfg.vision, rngs=nnx.Rngs(0))
    grids = [(2, 4, 6), (1, 6, 4)]
    items = _items(grids, 5)
    px = jnp.asarray(np.concatenate([p for p, _ in items]))
    vb = jax.tree.map(jnp.asarray, pack_vision(items, cfg.vision, VisionBuckets(items=(3,), groups=(3,),
                                                                                 patches=(32,))))
    mm = merged_mask(vb, cfg.vision.merge_unit)
    m, d = jax.jit(lambda b: visual.encode_batch(b, dtype=jnp.bfloat16))(vb)
    rm, rd = jax.jit(lambda p: visual(p, grids, dtype=jnp.bfloat16))(px)
    assert m.dtype == d.dtype == jnp.bfloat16
    _close(_real(m.astype(jnp.float32), mm), rm.astype(jnp.float32), 2e-2)
    _close(_real(d.astype(jnp.float32), mm), rd.astype(jnp.float32), 2e-2)
