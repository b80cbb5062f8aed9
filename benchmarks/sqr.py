"""The SQR latent rollout: `models.sqr.rollout_cached` (7 steps continuing the generation's KV cache, what
`agent.rollout.refine_latents` runs) vs the original's 7 full VLM re-forwards with the video re-encoded, on a
~6.4k-token video prompt ending in <REFINE>.

    python -m benchmarks.sqr [--frames-hw 28,28,32] [--decode-attn config|xla|pallas]
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import common as C
from vsr1_jax.generate.sampler import Sampler, pack_prompts
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.rope import get_rope_index
from vsr1_jax.models.qwen3_vl.text import Visual


def sqr_setup(cfg, groups=28, h=28, w=32, decode_attn="config"):
    """The SQR bench's starting point: a video prompt ending in <REFINE>, prefilled into a cache with 8 free slots.
    Returns a dict: model, head, opts, ids, grid, px, pos, ridx (the <REFINE> index), rpos [1] (its position),
    cache, h_last (the pre-norm hidden state at <REFINE>)."""
    ids, grid, px = C.video_prompt(cfg, groups, h, w, seed=3)
    refine = 151669 if cfg.text.vocab_size > 151669 else cfg.text.vocab_size - 1
    ids = np.concatenate([ids, [[9, 10, refine]]], 1).astype(np.int32)
    T = ids.shape[1]
    pos, _ = get_rope_index(ids, image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                            video_grid_thw=[grid])
    _, model = C.hf_and_ours(cfg, "bfloat16", with_hf=False)
    opts = C.bench_opts(**({} if decode_attn == "config" else {"decode_attn_impl": decode_attn}))
    head = S.SQRHead(S.SQRConfig(policy_hidden=cfg.text.hidden_size, zero_init_refine=False), rngs=nnx.Rngs(0))
    p = pack_prompts([list(ids[0])], cfg=cfg, pad_id=0, video_pixels=px, video_grids=[grid])
    _, cache, h_last = Sampler(model, opts).prefill(p, T + 8)
    jax.block_until_ready(cache)
    # text positions are equal on the three M-RoPE axes: the temporal one locates <REFINE>
    return dict(model=model, head=head, opts=opts, ids=ids, grid=grid, px=px, pos=pos, ridx=T - 1,
                rpos=jnp.asarray(pos[0, :, T - 1], jnp.int32), cache=cache, h_last=h_last)


def bench_sqr(cfg, groups=28, h=28, w=32, reps=3, decode_attn="config"):
    su = sqr_setup(cfg, groups, h, w, decode_attn)
    ours, head, opts, cache, h_last = su["model"], su["head"], su["opts"], su["cache"], su["h_last"]
    ids, grid, px, pos, ridx, rpos = su["ids"], su["grid"], su["px"], su["pos"], su["ridx"], su["rpos"]
    T = ids.shape[1]
    # the generation's cache is donated to the rollout, as in the agent (agent/episode.py)
    cached = jax.jit(lambda m, hd, c, h: S.rollout_cached(m, hd, c, h, jnp.asarray([ridx]), rpos, opts=opts),
                     donate_argnums=(2,))
    t_cached = C.timeit_fresh(lambda c: cached(ours, head, c, h_last)[0], lambda: jax.tree.map(jnp.copy, cache),
                            n=reps)

    # The original runs 7 full VLM forwards (video re-encoded each time) on the sequence with k = 1..7 latents
    # spliced after <REFINE>; time one such forward at the mean length (k = 4) and count it 7 times.
    k = 4

    def spliced_forward(m, hd, i, pp, x):
        e, vis = m.embed(i, opts, video_pixels=x, video_grids=(grid,))
        X = hd.latent_input(jnp.ones((1, k, hd.cfg.retrieval_dim), jnp.float32)).astype(e.dtype)
        e = jnp.concatenate([e, X], 1)
        pp = jnp.concatenate([pp, pp[..., -1:] + jnp.arange(1, k + 1)], -1)
        vis = Visual(jnp.pad(vis.idx, ((0, 0), (0, k))), jnp.pad(vis.mask, ((0, 0), (0, k))), vis.feats)
        return m.decode(e, pp, jnp.ones(e.shape[:2], bool), opts=opts, visual=vis, logits="none").hidden[:, -1]
    ref_fn = jax.jit(spliced_forward)
    args = (ours, head, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(px, jnp.bfloat16))
    t_one = C.timeit(lambda: jax.block_until_ready(ref_fn(*args)), n=reps)
    t_orig = 7 * t_one
    res = {"prompt_tokens": int(T), "cached_rollout_s": t_cached, "one_full_forward_s": t_one,
           "reforward_rollout_s": t_orig, "speedup": t_orig / t_cached}
    C.log(f"SQR rollout: cached {t_cached * 1e3:.1f} ms vs 7 re-forwards {t_orig * 1e3:.1f} ms "
          f"(x{t_orig / t_cached:.1f})")
    return res


def main(argv=None):
    ap = C.parser(__doc__, frames_hw=("28,28,32", "video size GROUPS,H,W in patches"))
    ap.add_argument("--decode-attn", default="config", choices=("config", "xla", "pallas"))

    def run(args, report):
        report.code(S.rollout_cached)
        report.update(decode_attn=args.decode_attn,
                      **bench_sqr(get_preset(args.preset), *args.frames_hw, decode_attn=args.decode_attn))
    return C.bench_main("sqr", ap, argv, run)


if __name__ == "__main__":
    C.cli(main)
