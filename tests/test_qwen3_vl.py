"""Parity of the Flax Qwen3-VL port with HF transformers' Qwen3VLForConditionalGeneration (fp32, CPU, tiny random
weights): logits, vision tower + DeepStack features, M-RoPE position ids and rope deltas, the embedder's pooling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.hf_fixtures import IMAGE_ID, VEND_ID, VIDEO_ID, VSTART_ID, random_pixels
from vsr1_jax.models import embedder
from vsr1_jax.models.qwen3_vl.rope import get_rope_index, token_types

TOL = 1e-4  # max |Δ| <= TOL * max |logit|


def build_row(parts, rng):
    """parts: ints (that many random text tokens) or ("image", grid) / ("video", grid).

    Videos are laid out as the processor does: per temporal group a timestamp token, then
    <vision_start> <video_pad> x (h*w/4) <vision_end>.
    """
    ids = []
    for p in parts:
        if isinstance(p, int):
            ids += list(rng.randint(0, 900, size=p))
        elif p[0] == "image":
            _, (t, h, w) = p
            ids += [VSTART_ID] + [IMAGE_ID] * (t * h * w // 4) + [VEND_ID]
        else:
            _, (t, h, w) = p
            for g in range(t):
                ids += [900 + g, VSTART_ID] + [VIDEO_ID] * (h * w // 4) + [VEND_ID]
    return ids


def make_batch(rows, pad_side="right"):
    rng = np.random.RandomState(0)
    seqs = [build_row(r, rng) for r in rows]
    T = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), T), np.int64)
    mask = np.zeros((len(seqs), T), np.int64)
    for i, s in enumerate(seqs):
        if pad_side == "right":
            ids[i, :len(s)], mask[i, :len(s)] = s, 1
        else:
            ids[i, T - len(s):], mask[i, T - len(s):] = s, 1
    images = [p[1] for r in rows for p in r if not isinstance(p, int) and p[0] == "image"]
    videos = [p[1] for r in rows for p in r if not isinstance(p, int) and p[0] == "video"]
    img_px = np.concatenate([random_pixels(g, 10 + i) for i, g in enumerate(images)]) if images else None
    vid_px = np.concatenate([random_pixels(g, 20 + i) for i, g in enumerate(videos)]) if videos else None
    return ids, mask, images, img_px, videos, vid_px


def hf_forward(hf, ids, mask, images, img_px, videos, vid_px):
    kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
              mm_token_type_ids=torch.tensor(token_types(ids, IMAGE_ID, VIDEO_ID)))
    if images:
        kw.update(pixel_values=torch.tensor(img_px), image_grid_thw=torch.tensor(images))
    if videos:
        kw.update(pixel_values_videos=torch.tensor(vid_px), video_grid_thw=torch.tensor(videos))
    # The residual stream entering the final norm: what transformers 4.57.1 (the original's pin) returns as
    # hidden_states[-1] (5.x returns the normed state there, so read it with a hook). It differs from the last
    # layer's output only when DeepStack reaches the last layer, as in this 2-layer tiny model.
    captured = {}
    hook = hf.model.language_model.norm.register_forward_pre_hook(
        lambda mod, inp: captured.__setitem__("pre", inp[0]))
    try:
        with torch.no_grad():
            out = hf(**kw)
    finally:
        hook.remove()
    out.pre_norm = captured["pre"]
    return out


def our_forward(model, ids, mask, images, img_px, videos, vid_px):
    pos, deltas = get_rope_index(ids, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, image_grid_thw=images,
                                 video_grid_thw=videos, attention_mask=mask)
    fwd = jax.jit(lambda i, p, m, ip, vp: model(i, p, m, image_pixels=ip, image_grids=tuple(images),
                                                 video_pixels=vp, video_grids=tuple(videos)))
    return fwd(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask),
               None if img_px is None else jnp.asarray(img_px), None if vid_px is None else jnp.asarray(vid_px))


CASES = {
    "text_only": [[17]],
    "one_image": [[5, ("image", (1, 6, 4)), 7]],
    "video_6_frames_non_square": [[4, ("video", (3, 4, 6)), 6]],
    "image_and_video": [[3, ("image", (1, 4, 4)), 2, ("video", (4, 6, 4)), 5]],
    "batch3_padded": [[30], [4, ("video", (2, 4, 6)), 3], [2, ("image", (1, 4, 6)), 1, ("video", (3, 4, 4)), 2]],
    "long_prompt_600": [[300, ("video", (2, 6, 4)), 280]],
}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_hf(tiny_pair, name):
    hf, model, _ = tiny_pair
    batch = make_batch(CASES[name])
    ids, mask = batch[0], batch[1]
    if name == "long_prompt_600":
        assert ids.shape[1] >= 512
    ref = hf_forward(hf, *batch)
    out = our_forward(model, *batch)
    valid = mask.astype(bool)
    ref_logits = ref.logits.numpy()
    err = np.abs(np.asarray(out.logits) - ref_logits)[valid].max()
    assert err <= TOL * np.abs(ref_logits[valid]).max(), err
    # hidden_pre_norm is the original's hidden_states[-1] (SQR z1 readout).
    pre = ref.pre_norm.numpy()
    np.testing.assert_allclose(np.asarray(out.hidden_pre_norm)[valid], pre[valid], rtol=1e-4,
                               atol=1e-4 * np.abs(pre).max())


def test_left_padded_batch_matches_hf(tiny_pair):
    hf, model, _ = tiny_pair
    batch = make_batch([[9], [3, ("video", (2, 4, 4)), 4], [40]], pad_side="left")
    ref = hf_forward(hf, *batch).logits.numpy()
    out = np.asarray(our_forward(model, *batch).logits)
    valid = batch[1].astype(bool)
    assert np.abs(out - ref)[valid].max() <= TOL * np.abs(ref[valid]).max()


def test_vision_tower_and_deepstack_match_hf(tiny_pair):
    hf, model, _ = tiny_pair
    grids = [(3, 4, 6), (1, 6, 4)]
    px = np.concatenate([random_pixels(g, i) for i, g in enumerate(grids)])
    with torch.no_grad():
        ref = hf.model.visual(torch.tensor(px), grid_thw=torch.tensor(grids))
    merged, deep = model.visual(jnp.asarray(px), grids)
    r = ref.pooler_output.numpy()
    np.testing.assert_allclose(np.asarray(merged), r, atol=1e-5 * np.abs(r).max(), rtol=1e-4)
    assert len(ref.deepstack_features) == deep.shape[0] == 2
    for k, f in enumerate(ref.deepstack_features):
        f = f.numpy()
        np.testing.assert_allclose(np.asarray(deep[k]), f, atol=1e-5 * np.abs(f).max(), rtol=1e-4)


ROPE_CASES = {
    "text": ([[11]], "right"),
    "video": ([[3, ("video", (3, 4, 6)), 5]], "right"),
    "image_video_batch_left": ([[2, ("image", (1, 6, 4)), 2], [3, ("video", (2, 4, 4)), 1, ("image", (1, 4, 4)), 3],
                                [20]], "left"),
    "image_video_batch_right": ([[2, ("image", (1, 6, 4)), 2], [3, ("video", (2, 6, 4)), 9]], "right"),
}


@pytest.mark.parametrize("name", list(ROPE_CASES))
def test_rope_index_matches_hf(tiny_pair, name):
    hf, _, _ = tiny_pair
    rows, side = ROPE_CASES[name]
    ids, mask, images, _, videos, _ = make_batch(rows, side)
    tt = token_types(ids, IMAGE_ID, VIDEO_ID)
    ref_pos, ref_delta = hf.model.get_rope_index(
        torch.tensor(ids), torch.tensor(tt), image_grid_thw=torch.tensor(images) if images else None,
        video_grid_thw=torch.tensor(videos) if videos else None, attention_mask=torch.tensor(mask))
    pos, delta = get_rope_index(ids, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, image_grid_thw=images,
                                video_grid_thw=videos, attention_mask=mask)
    np.testing.assert_array_equal(pos, ref_pos.numpy())
    np.testing.assert_array_equal(delta, ref_delta.numpy().ravel())


def test_rope_index_rejects_grid_mismatch():
    ids = np.array([[1, VSTART_ID] + [VIDEO_ID] * 5 + [VEND_ID]])
    with pytest.raises(ValueError, match="does not match grid"):
        get_rope_index(ids, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, video_grid_thw=[(1, 4, 4)])


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.parametrize("rows", [[[12], [5], [30]], [[4, ("video", (2, 4, 6)), 6], [9]]])
def test_embedder_pooling_matches_hf(tiny_pair, rows):
    hf, model, _ = tiny_pair
    ids, mask, images, img_px, videos, vid_px = make_batch(rows, "right")
    with torch.no_grad():
        kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  mm_token_type_ids=torch.tensor(token_types(ids, IMAGE_ID, VIDEO_ID)))
        if videos:
            kw.update(pixel_values_videos=torch.tensor(vid_px), video_grid_thw=torch.tensor(videos))
        h = hf.model(**kw).last_hidden_state
        last = torch.tensor(mask).sum(1) - 1
        ref = torch.nn.functional.normalize(h[torch.arange(len(ids)), last], p=2, dim=-1).numpy()
    pos, _ = get_rope_index(ids, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, video_grid_thw=videos,
                            attention_mask=mask)
    ours = embedder.embed(model, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask),
                          video_pixels=None if vid_px is None else jnp.asarray(vid_px), video_grids=tuple(videos))
    assert np.all(_cos(ours, ref) >= 0.99999)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(ours), axis=-1), 1.0, atol=1e-5)


def test_tied_embeddings_match_hf():
    from tests.hf_fixtures import tiny_hf_model
    from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig
    from vsr1_jax.models.qwen3_vl.params import model_from_hf_state_dict
    hf = tiny_hf_model(seed=3, tie=True)
    cfg = Qwen3VLConfig.from_hf_dict(hf.config.to_dict())
    assert cfg.tie_word_embeddings
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    model = model_from_hf_state_dict(cfg, sd)
    assert model.text.lm_head is None
    batch = make_batch([[3, ("video", (2, 4, 4)), 8]])
    ref = hf_forward(hf, *batch).logits.numpy()
    out = np.asarray(our_forward(model, *batch).logits)
    assert np.abs(out - ref).max() <= TOL * np.abs(ref).max()


@pytest.mark.parametrize("preset,layers,hidden,tied", [("qwen3_vl_2b", 28, 2048, True), ("qwen3_vl_4b", 36, 2560, True),
                                                      ("qwen3_vl_8b", 36, 4096, False),
                                                      ("qwen3_vl_embedding_2b", 28, 2048, True)])
def test_presets_round_trip_through_hf_config(preset, layers, hidden, tied):
    """Each preset's HF config.json loads in transformers and reads back to the same preset."""
    from transformers import Qwen3VLConfig as HFConfig
    from configs.models import get_config
    from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig, get_preset
    d = get_config(preset).to_dict()
    hf = HFConfig(**d)
    assert hf.text_config.num_hidden_layers == layers and hf.text_config.hidden_size == hidden
    assert Qwen3VLConfig.from_hf_dict(hf.to_dict()) == get_preset(preset)
    assert get_preset(preset).tie_word_embeddings == tied
