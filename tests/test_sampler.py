"""The KV-cache sampler against HF `generate` and against full forwards; sampling, group broadcast, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.hf_fixtures import IMAGE_ID, VIDEO_ID, random_pixels
from tests.test_qwen3_vl import build_row
from vsr1_jax.generate.sampler import SamplingParams, Sampler, pack_prompts
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.models.qwen3_vl.rope import get_rope_index, token_types

EOS = 7
PAD = 0


def _prompts(rows, cfg):
    rng = np.random.RandomState(5)
    seqs = [build_row(r, rng) for r in rows]
    videos = [p[1] for r in rows for p in r if not isinstance(p, int) and p[0] == "video"]
    vpx = np.concatenate([random_pixels(g, 30 + i) for i, g in enumerate(videos)]) if videos else None
    return seqs, pack_prompts(seqs, cfg=cfg, pad_id=PAD, video_pixels=vpx, video_grids=videos)


def _hf_generate(hf, p, n):
    kw = dict(input_ids=torch.tensor(p.ids, dtype=torch.long), attention_mask=torch.tensor(p.mask, dtype=torch.long),
              mm_token_type_ids=torch.tensor(token_types(p.ids, IMAGE_ID, VIDEO_ID)))
    if p.video_grids:
        kw.update(pixel_values_videos=torch.tensor(p.video_pixels), video_grid_thw=torch.tensor(p.video_grids))
    with torch.no_grad():
        out = hf.generate(**kw, max_new_tokens=n, do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
    return out[:, p.ids.shape[1]:].numpy()


MIXED = [
    [[12], [5], [23]],                                       # text, unequal lengths
    [[3, ("video", (3, 4, 6)), 4], [9]],                     # video + text in one batch
]


@pytest.mark.parametrize("rows", MIXED)
def test_greedy_matches_hf_generate(tiny_pair, rows):
    hf, model, cfg = tiny_pair
    _, p = _prompts(rows, cfg)
    _check_against_hf(hf, p, Sampler(model), p, len(rows))


@pytest.mark.parametrize("rows", MIXED)
def test_right_padded_fused_prefill_matches_hf_generate(tiny_pair, cudnn_as_xla, rows):
    """The GPU default for batches of unequal lengths: right-padded prompts on the attn_impl="cudnn" prefill
    (per-row lengths; here JAX's XLA implementation of the same call, see conftest), decode behind the gap."""
    hf, model, cfg = tiny_pair
    seqs, p = _prompts(rows, cfg)
    s = Sampler(model, RunOptions(attn_impl="cudnn"))
    assert s.padding == "right"
    with pytest.raises(ValueError, match="right-padded"):   # the left-padded layout is refused, not silently wrong
        s.prefill(p, 64)
    rp = pack_prompts(seqs, cfg=cfg, pad_id=PAD, video_pixels=p.video_pixels, video_grids=p.video_grids,
                      padding="right")
    assert rp.mask[:, 0].all() and (rp.mask.sum(1) == p.mask.sum(1)).all()
    np.testing.assert_array_equal(rp.next_pos, p.next_pos)
    _check_against_hf(hf, p, s, rp, len(rows))


def _check_against_hf(hf, p, sampler, ours, rows):
    """HF generate on the left-padded `p`; `sampler` on `ours` (the same prompts in its layout)."""
    n = 12
    ref = _hf_generate(hf, p, n)
    gen = sampler.generate(ours, SamplingParams(max_new_tokens=n, eos_ids=(EOS,), pad_id=PAD))
    toks, lens = np.asarray(gen.tokens), np.asarray(gen.lengths)
    for b in range(rows):
        L = int(lens[b])
        assert L >= 1
        np.testing.assert_array_equal(toks[b, :L], ref[b, :L])
        if L < n:  # stopped on EOS exactly where HF did
            assert toks[b, L - 1] == EOS and (toks[b, L:] == PAD).all()


def test_cached_decode_equals_full_forward(tiny_pair):
    _, model, cfg = tiny_pair
    seqs, p = _prompts([[3, ("video", (2, 4, 6)), 5], [14]], cfg)
    sampler = Sampler(model)
    steps = 6
    logits, cache, _ = sampler.prefill(p, p.ids.shape[1] + steps)
    ids, mask = p.ids.copy(), p.mask.copy()
    pos = np.asarray(p.next_pos)
    for _ in range(steps):
        full_pos, _ = get_rope_index(ids, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
                                     video_grid_thw=p.video_grids, attention_mask=mask)
        ref = model(jnp.asarray(ids), jnp.asarray(full_pos), jnp.asarray(mask),
                    video_pixels=None if p.video_pixels is None else jnp.asarray(p.video_pixels),
                    video_grids=p.video_grids).logits[:, -1]
        ref = np.asarray(ref)
        np.testing.assert_array_less(np.abs(np.asarray(logits) - ref).max(), 1e-4 * np.abs(ref).max())
        tok = ref.argmax(-1).astype(np.int32)
        out = sampler.extend(cache, model.text.embed_tokens(jnp.asarray(tok)[:, None], jnp.float32),
                             jnp.broadcast_to(jnp.asarray(pos)[None, :, None], (3, len(tok), 1)))
        logits, cache = out.logits, out.cache
        ids = np.concatenate([ids, tok[:, None]], 1)
        mask = np.concatenate([mask, np.ones((len(tok), 1), mask.dtype)], 1)
        pos = pos + 1


def test_sampling_reproducible_with_key(tiny_pair):
    _, model, cfg = tiny_pair
    _, p = _prompts([[10], [6]], cfg)
    s = Sampler(model)
    sp = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=50, eos_ids=(EOS,), pad_id=PAD)
    a = s.generate(p, sp, jax.random.key(1))
    b = s.generate(p, sp, jax.random.key(1))
    c = s.generate(p, sp, jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.logprobs), np.asarray(b.logprobs))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
    assert (np.asarray(a.logprobs) <= 0).all()


def test_group_broadcast_equals_separate_prefills(tiny_pair):
    _, model, cfg = tiny_pair
    G = 3
    seqs, p = _prompts([[4, ("video", (2, 4, 4)), 3], [11]], cfg)
    s = Sampler(model)
    sp = SamplingParams(max_new_tokens=8, temperature=1.0, eos_ids=(EOS,), pad_id=PAD)
    grouped = s.generate(p, sp, jax.random.key(7), group=G)
    rep_seqs = [q for q in seqs for _ in range(G)]
    rep_grids = [g for g in p.video_grids for _ in range(G)]
    rep_px = np.concatenate([p.video_pixels] * G) if p.video_pixels is not None else None
    # only row 0 has a video: its G copies come first in row order
    rp = pack_prompts(rep_seqs, cfg=cfg, pad_id=PAD, video_pixels=rep_px, video_grids=rep_grids)
    separate = s.generate(rp, sp, jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(grouped.tokens), np.asarray(separate.tokens))
    np.testing.assert_allclose(np.asarray(grouped.logprobs), np.asarray(separate.logprobs), atol=1e-5)


def test_top_k_and_top_p_filtering():
    from vsr1_jax.generate.sampler import sample_logits
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 2000))
    keys = jax.random.key(0)
    tok, _ = sample_logits(logits, keys, SamplingParams(temperature=1.0, top_k=2))
    assert set(np.unique(np.asarray(tok))) == {0, 1}
    tok, _ = sample_logits(logits, keys, SamplingParams(temperature=1.0, top_p=0.7))
    assert set(np.unique(np.asarray(tok))) == {0, 1}  # 0.5 + 0.3 reaches 0.7
    tok, lp = sample_logits(logits, keys, SamplingParams(temperature=0.0))
    assert (np.asarray(tok) == 0).all() and np.allclose(np.asarray(lp), np.log(0.5), atol=1e-6)


def test_bad_inputs_are_named(tiny_pair):
    _, model, cfg = tiny_pair
    _, p = _prompts([[20]], cfg)
    s = Sampler(model)
    with pytest.raises(ValueError, match="exceeds the KV cache size"):
        s.prefill(p, cache_size=5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        s.generate(p, SamplingParams(max_new_tokens=4, eos_ids=(cfg.text.vocab_size + 3,)))
    logits, cache, _ = s.prefill(p, p.ids.shape[1] + 2)
    with pytest.raises(ValueError, match="does not fit"):
        s.decode(cache, logits, p.next_pos, SamplingParams(max_new_tokens=10, eos_ids=(EOS,)))


def test_host_loop_equals_while_loop(tiny_pair):
    _, model, cfg = tiny_pair
    _, p = _prompts([[3, ("video", (2, 4, 4)), 4], [9]], cfg)
    sp = SamplingParams(max_new_tokens=9, temperature=1.0, top_k=20, eos_ids=(EOS,), pad_id=PAD)
    a = Sampler(model).generate(p, sp, jax.random.key(3), capture_id=5)
    b = Sampler(model, loop="host", check_every=4).generate(p, sp, jax.random.key(3), capture_id=5)
    for x, y in zip(a, b):
        if isinstance(x, jax.Array):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    with pytest.raises(ValueError, match="expected 'while' or 'host'"):
        Sampler(model, loop="scan")


def test_new_weights_need_no_new_sampler_and_no_recompile(tiny_pair):
    """The policy changes every GRPO step: generating with new params of the same shapes reuses the compiled prefill
    and decode (one compile in all), and the tokens follow the params passed."""
    from flax import nnx
    from vsr1_jax.compiles import CompileCounter
    _, model, cfg = tiny_pair
    _, p = _prompts([[4, ("video", (2, 4, 4)), 3], [11]], cfg)
    s = Sampler(model)
    sp = SamplingParams(max_new_tokens=6, eos_ids=(EOS,), pad_id=PAD)
    base = s.params
    variants = [jax.tree.map(lambda x, i=i: x * (1.0 + 0.5 * i), base) for i in range(3)]
    refs = [np.asarray(Sampler(nnx.merge(s.graphdef, v)).generate(p, sp).tokens) for v in variants]
    s.generate(p, sp, params=variants[0])  # compile once
    with CompileCounter() as c:
        outs = [np.asarray(s.generate(p, sp, params=v).tokens) for v in variants]
        s.set_params(variants[2])
        outs.append(np.asarray(s.generate(p, sp).tokens))
    assert c.count == 0
    for out, ref in zip(outs, refs + refs[2:]):
        np.testing.assert_array_equal(out, ref)
    assert not np.array_equal(refs[0], refs[2])  # the weights really changed the samples
