"""Throughput and parity figures on whatever accelerator is present: `python -m vsr1_jax.bench --what=...`.

  forward  prefill of a ~8k-token video prompt (tokens/s, MFU), next to HF PyTorch (sdpa) on the same GPU
  decode   ~2k-token video prompt, 256 new tokens, batch 1/8/64: tokens/s, step latency, HF generate, HBM roofline
  sqr      the 7-step cached latent rollout vs the original's 7 full re-forwards (video re-encoded each time)
  parity   max relative logit error vs HF on a video prompt, fp32 and bf16
  episode  per-query latency of a 2-turn episode (generate + rollout + q_final + retrieval, twice) at batch B
  sft      one Stage-1 step (~6.5k-token video sample, InfoNCE on): tokens/s, MFU, peak memory, vs the original's
           step in HF PyTorch (the 7 latent re-forwards with gradients, gradient checkpointing)
  grpo     one Stage-2 step (1 prompt x 8 samples, --new-tokens): rollout tokens/s and its fraction of the measured
           HBM read roofline, scoring, update, total, vs HF PyTorch generate + forward/backward
  mixed    prefill of 16 prompts of unequal lengths (4k-8k tokens, the agent's batch): the fused cudnn kernel on
           right-padded rows vs dense XLA attention on left-padded rows (time, first-token agreement)
  build    the data build's per-video cost: PyAV decode (npy frames + search-engine frames) and the
           Qwen3-VL-Embedding-2B forward (random weights), plus the query-embedding rate

Models are the real configs with random weights (HF initialises, both sides use the same tensors). Imports stay
off grain/faiss/ml_collections so this runs on a bare accelerator machine with jax + torch + transformers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax.agent.rollout import Trajectory, Turn
from vsr1_jax.data.build import frames as FR
from vsr1_jax.data.tiny_tokenizer import build_tiny_tokenizer
from vsr1_jax.errors import UserError, run_cli
from vsr1_jax.generate.sampler import SamplingParams, Sampler, broadcast_group, pack_prompts
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig, get_preset
from vsr1_jax.models.qwen3_vl.model import RunOptions
from vsr1_jax.models.qwen3_vl.params import model_from_hf_state_dict
from vsr1_jax.models.qwen3_vl.rope import get_rope_index, token_types
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.text import Visual
from vsr1_jax.retrieval.encoder import TextVideoEmbedder
from vsr1_jax.processing.video import VideoInputs
from vsr1_jax.profiling import summarize
from vsr1_jax.retrieval.topk import exact_topk
from vsr1_jax.train import grpo, optim, sft
from vsr1_jax.train import state as state_lib
from vsr1_jax.train.scoring import scoring_batch


def _torch_device():
    try:
        import torch  # lazy and optional: without torch the bench runs with no HF comparison
        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


DEVICE = _torch_device()
# fused attention where the platform has it
ATTN = "cudnn" if jax.default_backend() == "gpu" else "xla"


def gen_opts(decode_attn="xla"):
    """Options of the decode, sqr and episode benches: bf16, fused prefill attention, the chosen decode attention."""
    return RunOptions(dtype="bfloat16", attn_impl=ATTN, vision_attn_impl=ATTN, decode_attn_impl=decode_attn)


_T0 = time.perf_counter()


def log(*a):
    """A progress line on stderr, stamped with the seconds since the bench started (where a time limit struck)."""
    print(f"[{time.perf_counter() - _T0:7.1f}s]", *a, flush=True, file=sys.stderr)


PARTIAL_DIR: str | None = None   # main sets it to --out


def save_partial(what: str, res: dict) -> None:
    """Write what a long bench has measured so far (bench_<what>.partial.json): a run stopped by a time limit still
    leaves its finished parts."""
    if PARTIAL_DIR:
        os.makedirs(PARTIAL_DIR, exist_ok=True)
        with open(os.path.join(PARTIAL_DIR, f"bench_{what}.partial.json"), "w") as f:
            json.dump(res, f, indent=2)


# ---- inputs ----------------------------------------------------------------------------------------------------
def video_prompt(cfg: Qwen3VLConfig, groups: int, h: int, w: int, text_before=64, text_after=32, seed=0):
    """Token ids laid out like a processed video prompt (timestamp, vision_start, pads, vision_end per 2-frame
    group) and random pixel rows. h, w in patches (multiples of 2)."""
    rng = np.random.RandomState(seed)
    per = h * w // cfg.vision.merge_unit
    hi = min(5000, cfg.text.vocab_size // 2)
    ids = list(rng.randint(1, hi, size=text_before))
    for g in range(groups):
        ids += [int(rng.randint(1, hi)), cfg.vision_start_token_id] + [cfg.video_token_id] * per + [
            cfg.vision_end_token_id]
    ids += list(rng.randint(1, hi, size=text_after))
    grid = (groups, h, w)
    px = rng.randn(groups * h * w, cfg.vision.patch_dim).astype(np.float32)
    return np.asarray([ids], np.int32), grid, px


def timeit_fresh(fn, fresh, n=5, warmup=1):
    """Median seconds of `fn(fresh())`, waiting for its result; `fresh()` (untimed) makes the argument, so a call
    that consumes (donates) it gets a new one each time."""
    ts = []
    for i in range(warmup + n):
        a = jax.block_until_ready(fresh())
        t = time.perf_counter()
        jax.block_until_ready(fn(a))
        if i >= warmup:
            ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def timeit(fn, n=5, warmup=1):
    """Median seconds of `fn()`, waiting for its result."""
    return timeit_fresh(lambda _: fn(), lambda: None, n=n, warmup=warmup)


# ---- models ----------------------------------------------------------------------------------------------------
def hf_and_ours(cfg: Qwen3VLConfig, dtype: str, seed=0, with_hf=True):
    """A random HF model on the GPU and our model with the same tensors."""
    # lazy: torch and transformers are only needed for the HF side of a comparison
    import torch
    from transformers import Qwen3VLConfig as HFConfig, Qwen3VLForConditionalGeneration
    torch.manual_seed(seed)
    tdt = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    hcfg = HFConfig(**cfg.to_hf_dict())
    t = time.perf_counter()
    with torch.device(DEVICE):
        hf = Qwen3VLForConditionalGeneration._from_config(hcfg, dtype=tdt, attn_implementation="sdpa").eval()
    sd = {k: v.detach().float().cpu().numpy() for k, v in hf.state_dict().items()}
    ours = model_from_hf_state_dict(cfg, sd, dtype=jnp.dtype(dtype))
    del sd
    log(f"built HF + ours ({dtype}) in {time.perf_counter() - t:.1f}s")
    if not with_hf:
        del hf
        _empty_cache()
        hf = None
    return hf, ours


def _empty_cache():
    import torch  # lazy: only the HF side of the comparison needs torch
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def _sync():
    import torch  # lazy: only the HF side of the comparison needs torch
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def hf_inputs(cfg, ids, grid, px, dtype):
    import torch  # lazy: only the HF side of the comparison needs torch
    return dict(input_ids=torch.tensor(ids, dtype=torch.long, device=DEVICE),
                mm_token_type_ids=torch.tensor(token_types(ids, cfg.image_token_id, cfg.video_token_id),
                                               device=DEVICE),
                pixel_values_videos=torch.tensor(px, device=DEVICE).to(dtype),
                video_grid_thw=torch.tensor([grid], device=DEVICE))


# ---- FLOPs -----------------------------------------------------------------------------------------------------
def prefill_flops(cfg: Qwen3VLConfig, T: int, grid) -> float:
    """Matmul FLOPs of one prefill (causal attention counted at half), vision included, LM head on 1 token."""
    t, v = cfg.text, cfg.vision
    D, I, L, hd, Hq, K = t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.head_dim, t.num_attention_heads, \
        t.num_key_value_heads
    per_tok = 2 * (D * Hq * hd + 2 * D * K * hd + Hq * hd * D + 3 * D * I)
    text = L * (per_tok * T + 2 * T * T * Hq * hd)  # QK^T and PV, causal half: 2 * (2 T^2 Hq hd) / 2
    gt, gh, gw = grid
    n, hw, d, vi = gt * gh * gw, gh * gw, v.hidden_size, v.intermediate_size
    vis = 2 * n * v.patch_dim * d + v.depth * (2 * n * (4 * d * d + 2 * d * vi) + 4 * gt * hw * hw * d)
    d4 = d * v.merge_unit
    mergers = (1 + len(v.deepstack_visual_indexes)) * 2 * (n // v.merge_unit) * (d4 * d4 + d4 * D)
    return float(text + vis + mergers + 2 * D * t.vocab_size)


# ---- benchmarks --------------------------------------------------------------------------------------------------
def bench_parity(cfg, groups=8, h=28, w=32):
    import torch  # lazy: only the HF side of the comparison needs torch
    ids, grid, px = video_prompt(cfg, groups, h, w, seed=1)
    pos, _ = get_rope_index(ids, image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                            video_grid_thw=[grid])
    res = {"tokens": int(ids.shape[1]), "grid": list(grid)}
    for dtype in ("float32", "bfloat16"):
        prev = jax.config.jax_default_matmul_precision
        if dtype == "float32":  # full fp32 matmuls on both sides (no TF32)
            jax.config.update("jax_default_matmul_precision", "highest")
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        hf, ours = hf_and_ours(cfg, dtype)
        with torch.no_grad():
            ref = hf(**hf_inputs(cfg, ids, grid, px, getattr(torch, dtype))).logits.float().cpu().numpy()[0]
        del hf
        _empty_cache()
        opts = RunOptions(dtype=dtype)
        f = jax.jit(lambda m, i, p, x: m(i, p, opts=opts, video_pixels=x, video_grids=(grid,)).logits)
        out = np.asarray(f(ours, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(px)))[0]
        rel = float(np.abs(out - ref).max() / np.abs(ref).max())
        agree = float((out.argmax(-1) == ref.argmax(-1)).mean())
        res[dtype] = {"max_rel_logit_err": rel, "argmax_agreement": agree}
        log(f"parity {dtype}: max|Δ|/max|ref| = {rel:.3e}, argmax agreement {agree:.4f}")
        del ours
        jax.config.update("jax_default_matmul_precision", prev)
    return res


def bench_forward(cfg, groups=36, h=28, w=32, with_hf=True):
    import torch  # lazy: only the HF side of the comparison needs torch
    ids, grid, px = video_prompt(cfg, groups, h, w)
    T = ids.shape[1]
    pos, _ = get_rope_index(ids, image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                            video_grid_thw=[grid])
    hf, ours = hf_and_ours(cfg, "bfloat16", with_hf=with_hf)
    res = {"tokens": int(T), "grid": list(grid), "flops": prefill_flops(cfg, T, grid), **ceilings()}

    def mfu(t):
        return mfu_fields(res["flops"], t, res)
    for impl in ("cudnn", "xla"):
        opts = RunOptions(dtype="bfloat16", attn_impl=impl, vision_attn_impl=impl)
        f = jax.jit(lambda m, i, p, x: m(i, p, opts=opts, video_pixels=x, video_grids=(grid,), logits="last").logits)
        args = (ours, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(px, jnp.bfloat16))
        try:
            t = timeit(lambda: f(*args).block_until_ready())
        except Exception as e:  # noqa: BLE001 - report and go on with the other kernel
            log(f"forward {impl}: failed: {type(e).__name__}: {str(e)[:300]}")
            continue
        res[f"ours_{impl}"] = {"seconds": t, "tokens_per_s": T / t, **mfu(t)}
        log(f"ours ({impl}): {t * 1e3:.1f} ms, {T / t:,.0f} tok/s, {mfu_text(res[f'ours_{impl}'])}")
    if hf is not None:
        inp = hf_inputs(cfg, ids, grid, px, torch.bfloat16)

        def run():
            with torch.no_grad():
                hf(**inp, logits_to_keep=1)
            _sync()
        t = timeit(run)
        res["hf_sdpa"] = {"seconds": t, "tokens_per_s": T / t, **mfu(t)}
        log(f"HF sdpa: {t * 1e3:.1f} ms, {T / t:,.0f} tok/s, {mfu_text(res['hf_sdpa'])}")
        best = min(v["seconds"] for k, v in res.items() if k.startswith("ours_"))
        res["speedup_vs_hf"] = t / best
    return res


def bench_decode(cfg, batches=(1, 8, 64), new_tokens=256, groups=8, h=28, w=32, with_hf=True,
                 decode_attn="xla"):
    import torch  # lazy: only the HF side of the comparison needs torch
    ids, grid, px = video_prompt(cfg, groups, h, w, seed=2)
    T = ids.shape[1]
    hf, ours = hf_and_ours(cfg, "bfloat16", with_hf=with_hf)
    ceil = ceilings()
    bw = ceil["read_bandwidth_Bps"]
    res = {"prompt_tokens": int(T), "new_tokens": new_tokens, **ceil}
    opts = gen_opts(decode_attn)
    samplers = {loop: Sampler(ours, opts, loop=loop) for loop in ("host", "while")}
    sampler = samplers["host"]
    p = pack_prompts([list(ids[0])], cfg=cfg, pad_id=0, video_pixels=px.astype(np.float32), video_grids=[grid])
    sp = SamplingParams(max_new_tokens=new_tokens, eos_ids=(), pad_id=0)
    if hf is not None:  # keep the GPU for our run; HF comes back for its own
        hf.to("cpu")
        _empty_cache()
    for B in batches:
        logits, cache, _ = sampler.prefill(p, T + new_tokens)
        r = {}
        bcast = timeit(lambda: jax.block_until_ready(broadcast_group(logits, cache, jnp.asarray(p.next_pos), B)), n=3)
        for loop, smp in samplers.items():
            def run():
                lg2, c2, np2 = broadcast_group(logits, cache, jnp.asarray(p.next_pos), B)
                g = smp.decode(c2, lg2, np2, sp)
                g.tokens.block_until_ready()
                return g
            try:
                g = run()  # compile
                assert int(np.asarray(g.lengths).min()) == new_tokens
                del g
                t = max(timeit(run, n=3, warmup=0) - bcast, 1e-9)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory for one loop kind
                r[f"{loop}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                log(f"ours B={B} loop={loop}: {r[f'{loop}_error']}")
                continue
            step = t / new_tokens
            # the bytes a step must read: weights once + every row's live KV cache (mean length over the decode)
            roof = decode_bytes(cfg, B, T + new_tokens / 2) / bw
            r[loop] = {"tokens_per_s": B * new_tokens / t, "step_ms": step * 1e3, "roofline_step_ms": roof * 1e3,
                       "fraction_of_roofline": roof / step}
            log(f"ours B={B} loop={loop}: {B * new_tokens / t:,.0f} tok/s, step {step * 1e3:.2f} ms, "
                f"roofline {roof * 1e3:.2f} ms ({roof / step:.0%})")
        best = max((r[k] for k in ("host", "while") if k in r), key=lambda v: v["tokens_per_s"], default=None)
        if best is not None:
            r.update(best)
        del cache
        if hf is not None and "tokens_per_s" in r:
            hf.to(DEVICE)
            inp = hf_inputs(cfg, np.repeat(ids, B, 0), (grid[0] * 1, grid[1], grid[2]), np.concatenate([px] * B),
                            torch.bfloat16)
            inp["video_grid_thw"] = inp["video_grid_thw"].repeat(B, 1)

            def gen():
                with torch.no_grad():
                    hf.generate(**inp, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
                _sync()

            def pre():
                with torch.no_grad():
                    hf(**inp, logits_to_keep=1)
                _sync()
            try:
                tg = timeit(gen, n=1, warmup=1)
                tp = timeit(pre, n=2, warmup=0)
                r["hf_generate_s"] = tg
                r["hf_decode_tokens_per_s"] = B * new_tokens / max(tg - tp, 1e-9)
                r["speedup_vs_hf_decode"] = r["tokens_per_s"] / r["hf_decode_tokens_per_s"]
                log(f"HF B={B}: generate {tg:.1f}s (prefill {tp:.2f}s), decode {r['hf_decode_tokens_per_s']:,.0f} tok/s"
                    f" -> ours x{r['speedup_vs_hf_decode']:.1f}")
            except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
                r["hf_error"] = f"OOM: {str(e)[:200]}"
                log(f"HF B={B}: OOM")
            hf.to("cpu")
            _empty_cache()
        res[f"batch_{B}"] = r
        save_partial("decode", res)
    return res


def sqr_setup(cfg, groups=28, h=28, w=32, decode_attn="xla"):
    """The SQR bench's starting point: a video prompt ending in <REFINE>, prefilled into a cache with 8 free slots.
    Returns a dict: model, head, opts, ids, grid, px, pos, ridx (the <REFINE> index), rpos [1] (its position),
    cache, h_last (the pre-norm hidden state at <REFINE>)."""
    ids, grid, px = video_prompt(cfg, groups, h, w, seed=3)
    refine = 151669 if cfg.text.vocab_size > 151669 else cfg.text.vocab_size - 1
    ids = np.concatenate([ids, [[9, 10, refine]]], 1).astype(np.int32)
    T = ids.shape[1]
    pos, _ = get_rope_index(ids, image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                            video_grid_thw=[grid])
    _, model = hf_and_ours(cfg, "bfloat16", with_hf=False)
    opts = gen_opts(decode_attn)
    head = S.SQRHead(S.SQRConfig(policy_hidden=cfg.text.hidden_size, zero_init_refine=False), rngs=nnx.Rngs(0))
    p = pack_prompts([list(ids[0])], cfg=cfg, pad_id=0, video_pixels=px, video_grids=[grid])
    _, cache, h_last = Sampler(model, opts).prefill(p, T + 8)
    jax.block_until_ready(cache)
    # text positions are equal on the three M-RoPE axes: the temporal one locates <REFINE>
    return dict(model=model, head=head, opts=opts, ids=ids, grid=grid, px=px, pos=pos, ridx=T - 1,
                rpos=jnp.asarray(pos[0, :, T - 1], jnp.int32), cache=cache, h_last=h_last)


def bench_sqr(cfg, groups=28, h=28, w=32, reps=3, decode_attn="xla"):
    su = sqr_setup(cfg, groups, h, w, decode_attn)
    ours, head, opts, cache, h_last = su["model"], su["head"], su["opts"], su["cache"], su["h_last"]
    ids, grid, px, pos, ridx, rpos = su["ids"], su["grid"], su["px"], su["pos"], su["ridx"], su["rpos"]
    T = ids.shape[1]
    # the generation's cache is donated to the rollout, as in the agent (agent/episode.py)
    cached = jax.jit(lambda m, hd, c, h: S.rollout_cached(m, hd, c, h, jnp.asarray([ridx]), rpos, opts=opts),
                     donate_argnums=(2,))
    t_cached = timeit_fresh(lambda c: cached(ours, head, c, h_last)[0], lambda: jax.tree.map(jnp.copy, cache),
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
    t_one = timeit(lambda: jax.block_until_ready(ref_fn(*args)), n=reps)
    t_orig = 7 * t_one
    res = {"prompt_tokens": int(T), "cached_rollout_s": t_cached, "one_full_forward_s": t_one,
           "reforward_rollout_s": t_orig, "speedup": t_orig / t_cached}
    log(f"SQR rollout: cached {t_cached * 1e3:.1f} ms vs 7 re-forwards {t_orig * 1e3:.1f} ms (x{t_orig / t_cached:.1f})")
    return res


def bench_mixed_prefill(cfg, batch=16, lo=4096, hi=8192, bucket=64):
    """Prefill of `batch` text prompts with lengths spread over [lo, hi] (padded to a multiple of `bucket`): cudnn
    on right-padded rows (the GPU default, `Sampler.padding`) vs dense XLA attention on left-padded rows, same
    weights. The decoder's attention is what differs; the vision tower is the same in both and left out."""
    rng = np.random.RandomState(3)
    lens = np.linspace(lo, hi, batch).astype(int)
    seqs = [list(rng.randint(1, min(5000, cfg.text.vocab_size // 2), size=n)) for n in lens]
    T = -(-int(lens.max()) // bucket) * bucket
    _, ours = hf_and_ours(cfg, "bfloat16", with_hf=False)
    res = {"batch": batch, "lengths": [int(x) for x in lens], "padded_length": T,
           "real_tokens": int(lens.sum()), "padded_tokens": batch * T}
    first = {}
    # off GPUs (smoke runs) the fused side is XLA's attention on the same right-padded rows
    fused = "cudnn" if ATTN == "cudnn" else "xla"
    for name, impl, padding in (("fused", fused, "right"), ("dense", "xla", "left")):
        sampler = Sampler(ours, RunOptions(dtype="bfloat16", attn_impl=impl, vision_attn_impl=impl))
        p = pack_prompts(seqs, cfg=cfg, pad_id=0, length=T, padding=padding)
        rows = batch
        while True:   # dense attention materialises [rows, heads, T, T] scores: halve the rows until it fits
            try:
                chunks = [p._replace(ids=p.ids[i:i + rows], mask=p.mask[i:i + rows],
                                     positions=p.positions[:, i:i + rows], next_pos=p.next_pos[i:i + rows])
                          for i in range(0, batch, rows)]
                run = lambda: [sampler.prefill(c, T + 1)[0] for c in chunks]  # noqa: E731
                t = timeit(run, n=3)
                break
            except Exception as e:  # noqa: BLE001 - out of memory: report and retry smaller
                log(f"mixed prefill {name}: {rows} rows failed ({type(e).__name__}: {str(e)[:200]})")
                if rows == 1:
                    raise
                rows //= 2
        first[name] = np.concatenate([np.asarray(lg, np.float32) for lg in run()])
        res[name] = {"attn_impl": impl, "padding": padding, "seconds": t, "rows_per_call": rows,
                     "real_tokens_per_s": res["real_tokens"] / t}
        log(f"mixed prefill {name} ({impl}, {padding}-padded, {rows} rows per call): {t * 1e3:.1f} ms, "
            f"{res['real_tokens'] / t:,.0f} real tok/s")
    a, b = first["fused"], first["dense"]
    res["speedup_fused_vs_dense"] = res["dense"]["seconds"] / res["fused"]["seconds"]
    res["first_token_argmax_agreement"] = float((a.argmax(-1) == b.argmax(-1)).mean())
    res["first_token_max_rel_logit_diff"] = float(np.abs(a - b).max() / np.abs(b).max())
    log(f"mixed prefill: fused ({fused}) {res['speedup_fused_vs_dense']:.2f}x dense; first-token argmax "
        f"agreement {res['first_token_argmax_agreement']:.3f}")
    return res


def bench_episode(cfg, batches=(1, 16), groups=28, h=28, w=32, new_tokens=1024, turns=2, corpus_size=10000,
                  reps=2, decode_attn="xla"):
    """Per-query latency of a 2-turn episode at batch B, composed from its parts measured at that batch: per turn,
    prefill + decode of B distinct video prompts (all `new_tokens`: random weights never stop early), the cached
    latent rollout, q_final through the embedder, and top-1 retrieval over `corpus_size` vectors."""
    _, ours = hf_and_ours(cfg, "bfloat16", with_hf=False)
    opts = gen_opts(decode_attn)
    H = cfg.text.hidden_size
    head = S.SQRHead(S.SQRConfig(policy_hidden=H, retrieval_dim=H, embedder_hidden=H, zero_init_refine=False),
                     rngs=nnx.Rngs(0))
    sampler = Sampler(ours, opts, loop="host")
    sp = SamplingParams(max_new_tokens=new_tokens, eos_ids=(), pad_id=0)
    rng = np.random.RandomState(4)
    corpus = jnp.asarray(rng.randn(corpus_size, H).astype(np.float32))
    corpus = corpus / jnp.linalg.norm(corpus, axis=-1, keepdims=True)
    rollout = jax.jit(lambda m, hd, c, hh, sl, ps: S.rollout_cached(m, hd, c, hh, sl, ps, opts=opts),
                      donate_argnums=(2,))
    qfinal = jax.jit(lambda m, hd, Z, i, il, li, mk: S.q_final(m, hd, Z, i, il, li, mk, opts=opts))
    res = {"new_tokens": new_tokens, "turns": turns, "corpus_size": corpus_size}
    for B in batches:
        ids, grid, _ = video_prompt(cfg, groups, h, w, seed=5)
        px = np.random.default_rng(B).standard_normal((B * int(np.prod(grid)), cfg.vision.patch_dim), np.float32)
        log(f"episode B={B}: {B} prompts of {ids.shape[1]} tokens")
        p = pack_prompts([list(ids[0])] * B, cfg=cfg, pad_id=0, video_pixels=px, video_grids=[grid] * B)
        state = {}

        def gen():
            g = sampler.generate(p, sp, extra_slots=8)
            g.tokens.block_until_ready()
            state["g"] = g
        t_gen = timeit(gen, n=reps, warmup=1)
        log(f"episode B={B}: generate {t_gen:.2f} s")
        save_partial("episode", {**res, f"batch_{B}": {"generate_s": t_gen}})
        g = state["g"]
        log(f"episode B={B}: timing the latent rollout")
        slot = jnp.full((B,), int(g.cache.index) - 1, jnp.int32)
        args = (g.capture_hidden, slot, g.next_pos - 1)
        t_roll = timeit_fresh(lambda c: rollout(ours, head, c, *args)[0], lambda: jax.tree.map(jnp.copy, g.cache),
                              n=reps)
        Z = rollout(ours, head, g.cache, *args)[0]
        q_ids = [list(rng.randint(1, 5000, size=24)) for _ in range(B)]
        lay = [jnp.asarray(a) for a in S.splice_layout(q_ids, 8, 6)]
        log(f"episode B={B}: rollout {t_roll * 1e3:.1f} ms; timing q_final and retrieval")
        t_qf = timeit(lambda: jax.block_until_ready(qfinal(ours, head, Z, *lay)), n=reps)
        q = qfinal(ours, head, Z, *lay)
        t_ret = timeit(lambda: jax.block_until_ready(exact_topk(corpus, q, 1)), n=reps)
        per_turn = t_gen + t_roll + t_qf + t_ret
        r = {"prompt_tokens": int(p.ids.shape[1]), "generate_s": t_gen, "rollout_s": t_roll, "q_final_s": t_qf,
             "retrieval_s": t_ret, "episode_s": turns * per_turn, "per_query_s": turns * per_turn / B}
        res[f"batch_{B}"] = r
        save_partial("episode", res)
        log(f"episode B={B}: per turn generate {t_gen:.2f}s + rollout {t_roll * 1e3:.1f} ms + q_final "
            f"{t_qf * 1e3:.1f} ms + retrieval {t_ret * 1e3:.2f} ms -> {r['per_query_s']:.2f} s per query")
        del g, state
    return res


# ---- measured ceilings ------------------------------------------------------------------------------------------
DATASHEET = {  # dense bf16 FLOP/s and HBM bandwidth (B/s) by device kind
    "H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12),
}


def datasheet(kind: str):
    for k, v in DATASHEET.items():
        if k in kind:
            return v
    return (None, None)


def _async_seconds(fn, n: int = 20, warmup: int = 3, wait=jax.block_until_ready) -> float:
    """Mean seconds per call of `n` calls queued back to back, waiting (`wait(result)`) only for the last: the
    launch and the result's allocation overlap the previous call's kernel, as in a stream of work."""
    for _ in range(warmup):
        wait(fn())
    t = time.perf_counter()
    for _ in range(n):
        r = fn()
    wait(r)
    return (time.perf_counter() - t) / n


def read_bandwidth(gib: float = 8.0) -> float:
    """HBM read bandwidth (B/s) of a large reduction: every byte is read once and almost nothing is written."""
    n = int(gib * (1 << 30)) // 2
    x = jnp.ones((n // 4096, 4096), jnp.bfloat16)
    f = jax.jit(lambda a: jnp.sum(a, axis=0, dtype=jnp.float32))
    t = _async_seconds(lambda: f(x), n=10)
    del x
    return n * 2 / t


def matmul_peak(n: int = 8192) -> float:
    """bf16 FLOP/s of an n x n x n matrix product of random data through XLA, calls queued back to back."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    return 2 * n ** 3 / _async_seconds(lambda: f(a, b))


def torch_matmul_peak(n: int = 8192) -> float | None:
    """The same product through PyTorch (cuBLAS) on the same GPU, or None without torch on a GPU: the bf16
    ceiling is the faster of the two libraries, not the one our code happens to use."""
    if DEVICE != "cuda":
        return None
    import torch  # lazy and optional: only the ceiling's second opinion needs torch
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = _async_seconds(lambda: a @ b, wait=lambda _: torch.cuda.synchronize())
    del a, b
    _empty_cache()
    return 2 * n ** 3 / t


def ceilings() -> dict:
    """The measured ceilings of this run: HBM read bandwidth, and the bf16 matrix peak as the faster of XLA's and
    PyTorch's 8192^3 product (`matmul_peak_flops`, what MFU is reported against), with the datasheet figures."""
    kind = jax.devices()[0].device_kind
    peak_ds, bw_ds = datasheet(kind)
    bw, xla_peak, torch_peak = read_bandwidth(), matmul_peak(), torch_matmul_peak()
    peak = max(xla_peak, torch_peak or 0.0)
    out = {"read_bandwidth_Bps": bw, "matmul_peak_flops": peak, "xla_matmul_flops": xla_peak,
           "torch_matmul_flops": torch_peak, "datasheet_bf16_flops": peak_ds, "datasheet_hbm_Bps": bw_ds}
    log(f"measured: HBM read {bw / 1e12:.2f} TB/s" + (f" ({bw / bw_ds:.0%} of the {bw_ds / 1e12:.1f} TB/s datasheet)"
                                                      if bw_ds else "")
        + f", bf16 matmul {xla_peak / 1e12:.0f} TFLOP/s through XLA"
        + (f", {torch_peak / 1e12:.0f} through PyTorch" if torch_peak else "")
        + (f"; peak {peak / 1e12:.0f} = {peak / peak_ds:.0%} of datasheet" if peak_ds else ""))
    return out


def peak_memory() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def compiled_memory(compiled) -> dict:
    """XLA's own account of a compiled step's device memory (arguments, outputs, aliased/donated, temporaries) and
    the peak it implies: available whatever the allocator (XLA_PYTHON_CLIENT_ALLOCATOR=platform reports no
    memory_stats)."""
    ma = compiled.memory_analysis()
    if ma is None:
        return {}
    out = {k: int(getattr(ma, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
    out["peak_estimate"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def decode_bytes(cfg: Qwen3VLConfig, rows: int, mean_len: float, dtype_bytes: int = 2) -> float:
    """Bytes one decode step must read: the decoder and LM-head weights once, plus the live KV cache of every
    row (mean_len slots each)."""
    tc = cfg.text
    weights = dtype_bytes * (tc.num_hidden_layers * (tc.hidden_size * (tc.num_attention_heads
                                                                        + 2 * tc.num_key_value_heads) * tc.head_dim
                                                      + tc.num_attention_heads * tc.head_dim * tc.hidden_size
                                                      + 3 * tc.hidden_size * tc.intermediate_size)
                             + tc.vocab_size * tc.hidden_size)
    kv_per_tok = dtype_bytes * tc.num_hidden_layers * 2 * tc.num_key_value_heads * tc.head_dim
    return weights + rows * mean_len * kv_per_tok


def vision_encoder_flops(cfg: Qwen3VLConfig, grid) -> float:
    v = cfg.vision
    gt, gh, gw = grid
    n, hw, d, vi = gt * gh * gw, gh * gw, v.hidden_size, v.intermediate_size
    return float(2 * n * v.patch_dim * d + v.depth * (2 * n * (4 * d * d + 2 * d * vi) + 4 * gt * hw * hw * d))


def forward_flops(cfg: Qwen3VLConfig, T: int, grid, head_tokens: int) -> float:
    """Model FLOPs of one row's forward with the LM head over `head_tokens` positions (the labelled or scored ones)."""
    tc = cfg.text
    return prefill_flops(cfg, T, grid) + 2 * tc.hidden_size * tc.vocab_size * (head_tokens - 1)


def train_flops(cfg: Qwen3VLConfig, T: int, grid, label_tokens: int) -> float:
    """Model FLOPs of one SFT/GRPO row: forward of everything, backward (2x) of everything but the frozen vision
    encoder, the LM head over the label tokens only (rematerialisation not counted, as MFU usually is)."""
    fwd = forward_flops(cfg, T, grid, label_tokens)
    return fwd + 2 * (fwd - vision_encoder_flops(cfg, grid))


def mfu_fields(flops: float, seconds: float, ceil: dict) -> dict:
    """MFU of `flops` done in `seconds` against this run's measured bf16 peak and the device's datasheet peak."""
    ds = ceil["datasheet_bf16_flops"]
    return {"mfu_measured_peak": flops / seconds / ceil["matmul_peak_flops"],
            "mfu_datasheet": flops / seconds / ds if ds else None}


def mfu_text(r: dict) -> str:
    return f"MFU {r['mfu_measured_peak']:.1%} of the measured peak" + (
        f", {r['mfu_datasheet']:.1%} of the datasheet" if r["mfu_datasheet"] else "")


def _train_opts():
    return RunOptions(dtype="bfloat16", attn_impl=ATTN, vision_attn_impl=ATTN, decode_attn_impl="xla",
                      remat="dots")


def _cast(module, dtype):
    for _, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        var.set_value(var.get_value().astype(dtype))


def _hf_refine_modules(head, device):
    """torch copies of the SQR head (the original's nn.Sequential layouts), fp32 as the original creates them."""
    import torch  # lazy: only the HF side of the comparison needs torch
    t = lambda a: torch.tensor(np.asarray(a, np.float32))  # noqa: E731
    H, D = head.proj_fc1_kernel.shape
    He = head.append_kernel.shape[1]
    proj = torch.nn.Sequential(torch.nn.Linear(H, D), torch.nn.LayerNorm(D), torch.nn.GELU(), torch.nn.Linear(D, D))
    lat = torch.nn.Sequential(torch.nn.LayerNorm(D), torch.nn.Linear(D, H))
    app = torch.nn.Sequential(torch.nn.LayerNorm(D), torch.nn.Linear(D, He))
    with torch.no_grad():
        proj[0].weight.copy_(t(head.proj_fc1_kernel[...]).T)
        proj[3].weight.copy_(t(head.proj_fc2_kernel[...]).T)
        lat[1].weight.copy_(t(head.latent_kernel[...]).T)
        app[1].weight.copy_(t(head.append_kernel[...]).T)
    return proj.to(device), lat.to(device), app.to(device)


def trace_steps(fn, out: str, name: str, steps: int = 1) -> dict:
    """Run `fn` `steps` times under the JAX profiler; copy the perfetto trace to `out` and return its summary
    (tools/trace_summary.py: kernels, busy vs idle GPU time, time by kernel kind)."""
    import shutil  # noqa: PLC0415
    tdir = tempfile.mkdtemp(prefix=f"trace_{name}_")
    with jax.profiler.trace(tdir, create_perfetto_trace=True):
        for _ in range(steps):
            fn()
    for root, _, files in os.walk(tdir):
        for fn_ in files:
            if fn_.endswith(".json.gz"):
                os.makedirs(out, exist_ok=True)
                shutil.copy(os.path.join(root, fn_), os.path.join(out, f"{name}_{fn_}"))
                summ = summarize(os.path.join(root, fn_), steps=steps, top=25)
                for t, v in summ["streams"].items():
                    log(f"trace {name} {t}: {v['kernels_per_step']:.0f} kernels, busy {v['busy_us_per_step'] / 1e3:.1f}"
                        f" of {v['span_us_per_step'] / 1e3:.1f} ms; by kind (ms): "
                        + ", ".join(f"{k} {u / 1e3:.1f}" for k, u in v["by_kind_us_per_step"].items()))
                return summ
    return {}


def bench_sft(cfg, groups=28, h=28, w=32, answer=200, reps=2, with_hf=True, trace_dir=None):
    """One Stage-1 step on one ~6.5k-token video sample with the InfoNCE branch on: ours (jitted, bf16 weights,
    fp32 refine modules, remat "dots", cached latent rollout) vs the original's step in HF PyTorch on the same GPU
    (bf16, gradient checkpointing, the 7 latent re-forwards with gradients, the embedder splice, AdamW)."""
    ids, grid, px = video_prompt(cfg, groups, h, w, seed=6)
    refine = 151669 if cfg.text.vocab_size > 151669 else cfg.text.vocab_size - 1
    im_end = 151645 if cfg.text.vocab_size > 151645 else 7
    rng = np.random.RandomState(6)
    hi = min(5000, cfg.text.vocab_size // 2)   # ordinary text ids (no control or placeholder tokens)
    ans = list(rng.randint(1, hi, size=answer)) + [refine, im_end, 198]
    full = np.concatenate([ids[0], ans]).astype(np.int32)
    T = len(full)
    loss_mask = np.zeros(T, bool)
    loss_mask[T - len(ans):] = True
    pos, _ = get_rope_index(full[None], image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                            video_grid_thw=[grid])
    emb_ids = rng.randint(1, hi, size=40).astype(np.int32)
    ex = dict(input_ids=full, loss_mask=loss_mask, positions=pos[:, 0].astype(np.int32), refine_index=T - 3,
              pixel_rows=px, grid=grid, emb_ids=emb_ids, index=0, qid="q", query="q", pos_video_id="p", video_id="v")
    Tb = -(-T // 512) * 512
    host = sft.SFTCollate(cfg, 0, 1, (Tb,), (256,), None, None, num_latents=8, embedder_max_length=128)([ex])
    K, D = 24, cfg.text.hidden_size
    cand = rng.randn(1, 1, K + 1, D).astype(np.float32)
    host.update(candidates=cand / np.linalg.norm(cand, axis=-1, keepdims=True),
                candidate_mask=np.ones((1, 1, K + 1), bool), ret_valid=np.ones((1, 1), bool))
    batch = jax.tree.map(jnp.asarray, {k: v for k, v in host.items() if not isinstance(v, list)})
    hf, ours = hf_and_ours(cfg, "bfloat16", with_hf=with_hf)
    if hf is not None:
        hf.to("cpu")
        _empty_cache()
    head = S.SQRHead(S.SQRConfig(policy_hidden=D, retrieval_dim=D, embedder_hidden=D, zero_init_refine=False),
                     rngs=nnx.Rngs(0))
    embedder = nnx.merge(*jax.tree.map(jnp.copy, nnx.split(ours)))   # a frozen copy as the query embedder
    refine_torch = _hf_refine_modules(head, "cpu") if hf is not None else None  # before the step donates the head
    egd, eparams = nnx.split(embedder)
    opts = _train_opts()
    opt = optim.adamw_groups({"backbone": optim.linear_decay(2e-5, 100), "refine": optim.linear_decay(5e-5, 100)},
                             optim.sft_label)
    state, gd = state_lib.create(ours, head, optim.sft_trainable, opt.tx, 0)
    step = jax.jit(sft.make_train_step(gd, egd, opt.tx, opts, sft.LossConfig(logprob_chunk=256), opt.schedules),
                   donate_argnums=0)
    holder = {"s": state}
    t0 = time.perf_counter()
    compiled = step.lower(holder["s"], eparams, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled_memory(compiled)
    if mem:
        log(f"ours SFT step: compiled in {compile_s:.1f} s; XLA's memory account: peak ≈ "
            f"{mem['peak_estimate'] / 1e9:.1f} GB (temporaries {mem['temp'] / 1e9:.1f} GB)")

    def run():
        holder["s"], m = compiled(holder["s"], eparams, batch)
        jax.block_until_ready(m["loss"])
        return m
    m = run()
    t = timeit(run, n=reps, warmup=1)
    flops = train_flops(cfg, T, grid, answer + 3)
    ceil = ceilings()
    res = {"tokens": int(T), "step_s": t, "compile_s": compile_s, "tokens_per_s": T / t, "loss": float(m["loss"]),
           "model_flops": flops, **mfu_fields(flops, t, ceil), "peak_memory_bytes": peak_memory(),
           "compiled_memory_bytes": mem, **ceil}
    log(f"ours SFT step: {t:.3f}s ({T / t:,.0f} tok/s), {mfu_text(res)}")
    if trace_dir:  # where the step's time goes: one traced step, summarised per kernel kind
        res["trace_summary"] = trace_steps(run, trace_dir, "sft")
    del holder, state, embedder, eparams, batch
    if hf is None:
        return res
    import torch  # lazy: only the HF side of the comparison needs torch
    hf.to(DEVICE).train()
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    emb = _frozen_copy(hf, cfg)
    proj, lat, app = (m.to(DEVICE) for m in refine_torch)
    params = [p for n, p in hf.named_parameters() if "visual.blocks" not in n and "patch_embed" not in n
              and "pos_embed" not in n] + list(proj.parameters()) + list(lat.parameters()) + list(app.parameters())
    for n, p in hf.named_parameters():
        p.requires_grad_("visual.blocks" not in n and "patch_embed" not in n and "pos_embed" not in n)
    topt = torch.optim.AdamW(params, lr=2e-5, fused=True)
    ids_t = torch.tensor(full[None].astype(np.int64), device=DEVICE)
    labels = ids_t.clone()
    labels[0, : T - len(ans)] = -100
    px_t = torch.tensor(px, device=DEVICE).to(torch.bfloat16)
    grid_t = torch.tensor([grid], device=DEVICE)
    pos_t = torch.tensor(pos.astype(np.int64), device=DEVICE)
    cand_t = torch.tensor(cand[0, 0], device=DEVICE)
    eids = torch.tensor(emb_ids[None].astype(np.int64), device=DEVICE)

    def hf_step():
        captured = {}
        hook = hf.model.language_model.norm.register_forward_pre_hook(lambda mo, i: captured.__setitem__("p", i[0]))
        out = hf(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), pixel_values_videos=px_t,
                 video_grid_thw=grid_t, position_ids=pos_t, labels=labels)
        hook.remove()
        r = T - 3
        zs = [proj(captured["p"][0, r].float())]
        E = hf.model.language_model.embed_tokens(ids_t)
        for k in range(1, 8):
            X = lat(torch.stack(zs)).to(E.dtype)[None]
            e = torch.cat([E[:, :r + 1], X, E[:, r + 1:]], 1)
            p2 = torch.cat([pos_t[..., :r + 1], pos_t[..., r:r + 1] + torch.arange(1, k + 1, device=DEVICE),
                            pos_t[..., r + 1:] + k], -1)
            hh = hf.model(inputs_embeds=e, pixel_values_videos=px_t, video_grid_thw=grid_t, position_ids=p2,
                          attention_mask=torch.ones(1, e.shape[1], device=DEVICE)).last_hidden_state
            zs.append(proj(hh[0, r + k].float()))
        q = emb.model.language_model.embed_tokens(eids)
        e = torch.cat([q[:, :-6], app(torch.stack(zs)).to(q.dtype)[None], q[:, -6:]], 1)
        hq = emb.model.language_model(inputs_embeds=e).last_hidden_state[0, -1].float()
        qf = torch.nn.functional.normalize(hq, dim=-1)
        ret = torch.nn.functional.cross_entropy((cand_t @ qf)[None] / 0.1, torch.zeros(1, dtype=torch.long,
                                                                                         device=DEVICE))
        (out.loss + 0.3 * ret).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        topt.step()
        topt.zero_grad(set_to_none=True)
        _sync()
    torch.cuda.reset_peak_memory_stats() if DEVICE == "cuda" else None
    try:
        th = timeit(hf_step, n=1, warmup=1)
        res.update(hf_step_s=th, hf_tokens_per_s=T / th, speedup_vs_hf=th / t,
                   hf_peak_memory_bytes=torch.cuda.max_memory_allocated() if DEVICE == "cuda" else None)
        log(f"HF SFT step: {th:.3f}s -> ours x{th / t:.1f}")
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        res["hf_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        log(f"HF SFT step failed: {res['hf_error']}")
    return res


def _frozen_copy(hf, cfg):
    """A frozen copy of the HF model on the same device, used as the query embedder in the HF step."""
    import copy  # lazy: only the HF side of the comparison needs it
    e = copy.deepcopy(hf).eval()
    e.requires_grad_(False)
    return e


def bench_grpo(cfg, groups=28, h=28, w=32, G=8, new_tokens=768, micro=2, with_hf=True):
    """One Stage-2 step: 1 prompt (~6.4k-token video) x G samples of `new_tokens` (random weights never stop, so
    every row runs to the limit), the reference log-probs, and the update over G rows in G/micro micro-batches;
    ours vs HF PyTorch doing the same work (`generate` of the G rows, a reference forward, forward/backward with
    gradient checkpointing, AdamW) on the same GPU."""
    ids, grid, px = video_prompt(cfg, groups, h, w, seed=7)
    T = ids.shape[1]
    hf, ours = hf_and_ours(cfg, "bfloat16", with_hf=with_hf)
    if hf is not None:
        hf.to("cpu")
        _empty_cache()
    D = cfg.text.hidden_size
    head = S.SQRHead(S.SQRConfig(policy_hidden=D, retrieval_dim=D, embedder_hidden=D), rngs=nnx.Rngs(0))
    opts = _train_opts()
    ocfg = type("C", (), dict(learning_rate=5e-7, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                              weight_decay=0.01, max_grad_norm=1.0))
    opt = optim.grpo_optimizer(ocfg)
    state, gd = state_lib.create(ours, head, optim.grpo_trainable, opt.tx, 0)
    ref = jax.tree.map(jnp.copy, state.params)
    sampler = Sampler(gd.modules(state.params, state.frozen)[0], gen_opts("pallas" if ATTN == "cudnn" else "xla"),
                      loop="host")
    p = pack_prompts([list(ids[0])], cfg=cfg, pad_id=0, video_pixels=px, video_grids=[grid])
    sp = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, eos_ids=(), pad_id=0)
    holder = {}

    def rollout():
        pol = nnx.state(gd.modules(holder.get("s", state).params, holder.get("s", state).frozen)[0])
        g = sampler.generate(p, sp, jax.random.key(len(holder)), group=G, extra_slots=8, params=pol)
        g.tokens.block_until_ready()
        holder["g"] = g
    t_roll = timeit(rollout, n=2, warmup=1)
    t_prefill = timeit(lambda: jax.block_until_ready(sampler.prefill(p, T + new_tokens + 8)), n=2)
    step_s = (t_roll - t_prefill) / new_tokens
    ceil = ceilings()
    roof = decode_bytes(cfg, G, T + new_tokens / 2) / ceil["read_bandwidth_Bps"]
    g = holder["g"]
    toks, lps = np.asarray(g.tokens), np.asarray(g.logprobs)
    vin = VideoInputs(px, grid, [0.5] * grid[0], 2 * grid[0], (h * 16, w * 16))
    trajs = [Trajectory(query={}, sample=i, qvec=np.zeros(1), orig_rank=0, turns=[Turn(
        turn=1, doc_id="v", rank=0, prompt_ids=ids[0], video=vin, sampled_ids=toks[i], logprobs=lps[i], text="",
        answer="unknown", span=None, has_refine=False)]) for i in range(G)]
    adv, _ = grpo.group_advantages(np.random.RandomState(0).randn(G), G)
    Pb = -(-T // 512) * 512
    host = scoring_batch(trajs, adv, cfg=cfg, pad_id=0, micro_batches=G // micro, rows_per_micro=micro,
                         prompt_buckets=(Pb,), completion_length=new_tokens, group_buckets=(grid[0],),
                         patch_buckets=(grid[1] * grid[2],), loss_type="grpo")
    batch = jax.tree.map(jnp.asarray, host)
    lc = grpo.LossConfig(logprob_chunk=256)
    score = jax.jit(grpo.make_score_fn(gd, opts, lc))
    step = jax.jit(grpo.make_train_step(gd, opt.tx, opts, lc, opt.schedules), donate_argnums=0)
    holder["s"] = state

    inputs = dict(batch)

    def scoring():
        batch["ref_logprobs"] = score(ref, holder["s"].frozen, inputs)
        jax.block_until_ready(batch["ref_logprobs"])

    def update():
        holder["s"], m = step(holder["s"], batch)
        jax.block_until_ready(m["loss"])
    t_score = timeit(scoring, n=2, warmup=1)
    t_update = timeit(update, n=2, warmup=1)
    total = t_roll + t_score + t_update
    # scoring: the reference forward of the G rows (prompt + completion, LM head over the completion); update: their
    # forward and backward
    score_flops = G * forward_flops(cfg, T + new_tokens, grid, new_tokens)
    update_flops = G * train_flops(cfg, T + new_tokens, grid, new_tokens)
    res = {"prompt_tokens": int(T), "samples": G, "new_tokens": new_tokens, "rollout_s": t_roll,
           "rollout_tokens_per_s": G * new_tokens / t_roll, "decode_step_ms": step_s * 1e3,
           "decode_roofline_step_ms": roof * 1e3, "decode_fraction_of_read_roofline": roof / step_s,
           "scoring_s": t_score, "scoring": mfu_fields(score_flops, t_score, ceil), "update_s": t_update,
           "update": mfu_fields(update_flops, t_update, ceil), "step_s": total, "peak_memory_bytes": peak_memory(),
           **ceil}
    log(f"ours GRPO step: rollout {t_roll:.2f}s ({G * new_tokens / t_roll:,.0f} tok/s, decode step {step_s * 1e3:.2f}"
        f" ms = {roof / step_s:.0%} of the read roofline), scoring {t_score:.2f}s ({mfu_text(res['scoring'])}), "
        f"update {t_update:.2f}s ({mfu_text(res['update'])}), total {total:.2f}s")
    del holder, state, ref, batch, sampler
    if hf is None:
        return res
    import torch  # lazy: only the HF side of the comparison needs torch
    hf.to(DEVICE)
    ref_hf = _frozen_copy(hf, cfg)
    inp = hf_inputs(cfg, np.repeat(ids, G, 0), grid, np.concatenate([px] * G), torch.bfloat16)
    inp["video_grid_thw"] = inp["video_grid_thw"].repeat(G, 1)
    params = [pp for n, pp in hf.named_parameters() if "language_model" in n or n.startswith("lm_head")]
    for n, pp in hf.named_parameters():
        pp.requires_grad_("language_model" in n or n.startswith("lm_head"))
    topt = torch.optim.AdamW(params, lr=5e-7, weight_decay=0.01, fused=True)
    hold = {}

    def hf_rollout():
        hf.eval()
        with torch.no_grad():
            hold["seq"] = hf.generate(**inp, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                                      temperature=1.0, top_k=0, top_p=1.0)
        _sync()

    def hf_logp(model, rows):
        seq = hold["seq"][rows]
        out = model(input_ids=seq, attention_mask=torch.ones_like(seq), pixel_values_videos=torch.cat(
            [inp["pixel_values_videos"][: int(np.prod(grid))]] * len(rows)), video_grid_thw=inp["video_grid_thw"][rows],
            mm_token_type_ids=torch.cat([inp["mm_token_type_ids"][rows], torch.zeros(
                len(rows), new_tokens, dtype=inp["mm_token_type_ids"].dtype, device=DEVICE)], 1),
            logits_to_keep=new_tokens + 1)
        lg = out.logits[:, :-1].float()
        return torch.log_softmax(lg, -1).gather(-1, seq[:, T:, None])[..., 0]

    def hf_update():
        hf.train()
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        a = torch.tensor(adv, device=DEVICE)
        for s0 in range(0, G, micro):
            rows = list(range(s0, s0 + micro))
            with torch.no_grad():
                rl = hf_logp(ref_hf, rows)
            lp = hf_logp(hf, rows)
            d = rl - lp
            kl = torch.exp(d) - d - 1
            ratio = torch.exp(lp - lp.detach())
            loss = (-(ratio * a[rows, None]) + 0.01 * kl).mean(-1).mean() / (G // micro)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        topt.step()
        topt.zero_grad(set_to_none=True)
        _sync()
    try:
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        th_roll = timeit(hf_rollout, n=1, warmup=0)
        th_upd = timeit(hf_update, n=1, warmup=1)
        res.update(hf_rollout_s=th_roll, hf_update_s=th_upd, hf_step_s=th_roll + th_upd,
                   hf_rollout_tokens_per_s=G * new_tokens / th_roll, speedup_vs_hf=(th_roll + th_upd) / total,
                   hf_peak_memory_bytes=torch.cuda.max_memory_allocated() if DEVICE == "cuda" else None)
        log(f"HF GRPO step: generate {th_roll:.1f}s + reference/forward/backward {th_upd:.1f}s -> ours "
            f"x{res['speedup_vs_hf']:.1f}")
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        res["hf_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        log(f"HF GRPO step failed: {res['hf_error']}")
    return res


def bench_build(videos=4, seconds=120, fps=30, width=640, height=360, batch=8, queries=256, workers=8, reps=2,
                preset="qwen3_vl_embedding_2b"):
    """Per-video seconds of the build's two costly steps on this machine: decoding (npy frames at 1 fps <= 64,
    resized to <= 200704 px, and the search engine's <= 64 frames at full size; `workers` threads as the build
    runs them) and embedding a batch of `batch` videos with Qwen3-VL-Embedding-2B (random weights, bf16), plus
    queries/s of the text embedding. Videos are synthetic (mpeg4, moving squares) of the given size and length; the
    tiny tokenizer stands in for Qwen's (only the few text tokens differ, so the cost is the same)."""
    folder = tempfile.mkdtemp(prefix="bench_build_")
    paths = []
    t0 = time.perf_counter()
    for k in range(videos):
        def frames(k=k):
            for i in range(seconds * fps):
                f = np.empty((height, width, 3), np.uint8)
                f[:] = np.asarray([40 * k % 255, 90, 160], np.uint8)
                x = (i * 4) % (width - 32)
                f[40:72, x:x + 32] = 255
                yield f
        paths.append(FR.write_test_video(os.path.join(folder, f"v{k}.mp4"), frames(), fps=fps))
    log(f"build: wrote {videos} videos of {seconds} s at {fps} fps, {width}x{height} "
        f"in {time.perf_counter() - t0:.1f} s")
    dur = float(seconds)

    def npy(p):
        return FR.extract_npy_frames(p, extract_utc="bench")

    def emb(p):
        return FR.embedder_frames(p, duration=dur)

    t = time.perf_counter()
    npys = [npy(p) for p in paths]
    t_npy = (time.perf_counter() - t) / videos
    t = time.perf_counter()
    embs = [emb(p)[0] for p in paths]
    t_emb_dec = (time.perf_counter() - t) / videos
    with ThreadPoolExecutor(max_workers=workers) as pool:
        t = time.perf_counter()
        list(pool.map(npy, paths))
        list(pool.map(emb, paths))
        t_dec_par = (time.perf_counter() - t) / videos
    npy_bytes = int(npys[0][0].nbytes)
    log(f"build: decode per video npy {t_npy:.2f} s + embed frames {t_emb_dec:.2f} s (serial); "
        f"{t_dec_par:.2f} s with {workers} threads; npy {npys[0][0].shape} = {npy_bytes / 1e6:.1f} MB")
    part = {"videos": videos, "seconds": seconds, "fps": fps, "size": [width, height], "workers": workers,
            "decode_npy_s_per_video": t_npy, "decode_embed_frames_s_per_video": t_emb_dec,
            "decode_parallel_s_per_video": t_dec_par, "npy_shape": list(npys[0][0].shape), "npy_bytes": npy_bytes}
    save_partial("build", part)

    base = get_preset(preset)
    tok = build_tiny_tokenizer()
    ids = {"image_token_id": 780, "video_token_id": 781, "vision_start_token_id": 777, "vision_end_token_id": 778}
    cfg = dataclasses.replace(base, **ids)
    t = time.perf_counter()
    model = Qwen3VL(cfg, rngs=nnx.Rngs(0))
    # the build's embedder options on this platform (prepare.make_embedder): fused attention on GPUs, where dense
    # attention over a batch of 8 ~7k-token video prompts needs ~70 GB
    opts = RunOptions(dtype="bfloat16", attn_impl=ATTN, vision_attn_impl=ATTN)
    embedder = TextVideoEmbedder(model, tok, opts=opts, max_length=1 << 20, prep_workers=workers)
    log(f"build: random {preset} in {time.perf_counter() - t:.1f} s")
    vids = [embs[i % videos] for i in range(batch)]
    t = time.perf_counter()
    grid = embedder.video_inputs(vids[0])[1]
    t_prep = time.perf_counter() - t
    t = time.perf_counter()
    embedder.prepare_videos(vids)   # what embed_videos runs: pixels in prep_workers threads, prompts here
    t_prep_par = (time.perf_counter() - t) / len(vids)
    log(f"build: embedder input preparation (resize, patchify, prompt) {t_prep:.2f} s per video on the host, "
        f"{t_prep_par:.2f} s with {workers} threads")
    part.update(embed_host_prep_s_per_video=t_prep, embed_host_prep_parallel_s_per_video=t_prep_par)
    t = time.perf_counter()
    embedder.embed_videos(vids[:1], batch_size=1)
    log(f"build: first embedding of one video (compile + run) {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    embedder.embed_videos(vids[:1], batch_size=1)
    part["embed_s_per_video_batch1"] = time.perf_counter() - t
    log(f"build: one video embedded in {part['embed_s_per_video_batch1']:.2f} s (batch 1, host preparation included)")
    save_partial("build", part)
    t = time.perf_counter()
    embedder.embed_videos(vids, batch_size=batch)
    t_first = time.perf_counter() - t
    log(f"build: first embedding batch (compile + run) {t_first:.1f} s")
    t_batch = timeit(lambda: embedder.embed_videos(vids, batch_size=batch), n=reps, warmup=0)
    embed_s = t_batch / batch
    log(f"build: embed {embed_s:.3f} s per video (batch {batch})")
    part.update(batch=batch, embed_first_call_s=t_first, embed_s_per_video=embed_s)
    save_partial("build", part)
    texts = [f"a person in a red shirt picks up the {i}th box and walks to the door" for i in range(queries)]
    embedder.embed_texts(texts[:32], batch_size=32)
    t_txt = timeit(lambda: embedder.embed_texts(texts, batch_size=32), n=reps, warmup=0)
    per_video = t_dec_par + embed_s
    res = {"embedder_preset": preset, **part, "embed_frames": int(embs[0].shape[0]),
           "embed_grid_thw": list(grid.grid_thw), "embed_video_tokens": int(grid.num_tokens),
           "embed_queries_per_s": queries / t_txt, "decode_plus_embed_s_per_video": per_video,
           "videos_per_hour_serial": 3600.0 / per_video,
           "videos_per_hour_overlapped": 3600.0 / max(t_dec_par, embed_s)}
    log(f"build: embed {embed_s:.3f} s per video (batch {batch}, first call {t_first:.1f} s), "
        f"{queries / t_txt:.0f} queries/s; decode + embed {per_video:.2f} s per video")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", default="forward",
                    help="comma list of forward,decode,sqr,parity,episode,sft,grpo,mixed,build (or all)")
    ap.add_argument("--preset", default="qwen3_vl_2b")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF PyTorch baselines")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for bench_<what>.json")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--frames-hw", default="", help="override video size as GROUPS,H,W in patches (smoke tests)")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--decode-attn", default="xla", choices=("xla", "pallas"),
                    help="attention of single-position steps (RunOptions.decode_attn_impl)")
    ap.add_argument("--mixed-lengths", default="4096,8192", help="prompt lengths LO,HI of --what=mixed")
    ap.add_argument("--trace", default="", help="folder for a profiler trace of one step (sft) and its summary")
    ap.add_argument("--verbose", action="store_true", help="print the traceback of an error (run_cli reads it)")
    args = ap.parse_args(argv)
    global PARTIAL_DIR
    PARTIAL_DIR = args.out
    cfg = get_preset(args.preset)
    whats = ["parity", "forward", "decode", "sqr", "episode"] if args.what == "all" else args.what.split(",")
    known = ("forward", "decode", "sqr", "parity", "build", "mixed", "sft", "grpo", "episode")
    if set(whats) - set(known):   # before any bench runs: a typo does not cost the benches before it
        raise UserError(f"--what={args.what}: unknown {sorted(set(whats) - set(known))}; known: {', '.join(known)}")
    log(f"devices: {jax.devices()}")
    for what in whats:
        t = time.perf_counter()
        size = {}
        if args.frames_hw:
            g, h, w = (int(x) for x in args.frames_hw.split(","))
            size = dict(groups=g, h=h, w=w)
        if what == "forward":
            res = bench_forward(cfg, with_hf=not args.no_hf, **size)
        elif what == "decode":
            res = bench_decode(cfg, batches=tuple(int(b) for b in args.batches.split(",")), with_hf=not args.no_hf,
                               new_tokens=args.new_tokens, decode_attn=args.decode_attn, **size)
        elif what == "sqr":
            res = bench_sqr(cfg, decode_attn=args.decode_attn, **size)
        elif what == "parity":
            res = bench_parity(cfg, **size)
        elif what == "build":
            res = bench_build()
        elif what == "mixed":
            lo, hi = (int(x) for x in args.mixed_lengths.split(","))
            res = bench_mixed_prefill(cfg, lo=lo, hi=hi)
        elif what == "sft":
            res = bench_sft(cfg, with_hf=not args.no_hf, trace_dir=args.trace or None, **size)
        elif what == "grpo":
            res = bench_grpo(cfg, with_hf=not args.no_hf, new_tokens=args.new_tokens, **size)
        elif what == "episode":
            res = bench_episode(cfg, batches=tuple(int(b) for b in args.batches.split(",")),
                                new_tokens=args.new_tokens, decode_attn=args.decode_attn, **size)
        else:
            raise AssertionError(what)   # checked above
        res.update(decode_attn=args.decode_attn, preset=args.preset, device=str(jax.devices()[0].device_kind),
                   wall_s=time.perf_counter() - t,
                   jax=jax.__version__)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"bench_{what}.json"), "w") as f:
            json.dump(res, f, indent=2)
        print(json.dumps({what: res}, indent=1), flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))   # the project's errors as one `error: ...` line (vsr1_jax/errors.py)
