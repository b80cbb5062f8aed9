"""Host-loop decode step of the 2B model under code variants, in one process (run on the GPU machine).

    python tools/decode_variants.py [--batches 1,8] [--variants base,splits,bcast,splits+bcast] [--tag NAME]

Variants (patched into `vsr1_jax.models.qwen3_vl.text` before each sampler is built, so each compiles afresh):
  base    the code as it is;
  splits  the flash-decoding kernel split over S down to one 64-key block per program (more thread blocks at small
          batch; the default stops at 4 blocks per split);
  bcast   a single row enters each projection as two copies of itself (a broadcast, which the GEMM fusion may take
          in) instead of the row plus a zero row (a pad kernel before every projection);
  plain   a single row enters each projection as it is (meant for XLA_FLAGS that keep vector x matrix a GEMM).
Run the script again under other XLA_FLAGS (--tag names the run) to compare compiler settings. Each figure is the
mean step of `--tokens` decode steps against the roofline of `benchmarks.common` (weights + live cache at the read
bandwidth measured in the same process). Writes $OUT/decode_variants_<tag>.json.
"""
import argparse
import json
import sys
from pathlib import Path
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks/ beside the package

from benchmarks import common as bench
from vsr1_jax.generate.sampler import Sampler, SamplingParams, pack_prompts
from vsr1_jax.kernels import decode_attention as kernel_mod
from vsr1_jax.models.qwen3_vl import layers, text
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.run_options import RunOptions

ORIG = {"linear": text.linear, "decode_attention": text.decode_attention}


def attention_fine_splits(q, k_cache, v_cache, layer, bias, **kw):
    B, K, S = q.shape[0], k_cache.shape[2], k_cache.shape[3]
    splits = max(1, min(math.ceil(S / 64), math.ceil(264 / (B * K))))
    return kernel_mod.decode_attention(q, k_cache, v_cache, layer, bias, num_splits=splits, **kw)


def linear_bcast(x, kernel, bias=None):
    if math.prod(x.shape[:-1]) == 1:
        x2 = jnp.broadcast_to(x.reshape(1, -1), (2, x.shape[-1]))
        y = jnp.einsum("ri,io->ro", x2, kernel.astype(x.dtype))[:1].reshape(*x.shape[:-1], kernel.shape[-1])
        return y if bias is None else y + bias.astype(x.dtype)
    return layers.linear(x, kernel, bias)


def linear_plain(x, kernel, bias=None):
    y = jnp.einsum("...i,io->...o", x, kernel.astype(x.dtype))
    return y if bias is None else y + bias.astype(x.dtype)


def patch(variant: str):
    text.linear = (linear_bcast if "bcast" in variant else linear_plain if "plain" in variant else ORIG["linear"])
    text.decode_attention = attention_fine_splits if "splits" in variant else ORIG["decode_attention"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--variants", default="base,splits,bcast,splits+bcast")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=1912)
    ap.add_argument("--tag", default="default")
    ap.add_argument("--preset", default="qwen3_vl_2b", help="'tiny' for a CPU smoke run")
    args = ap.parse_args()
    out = os.environ.get("OUT", ".")
    os.makedirs(out, exist_ok=True)
    cfg = get_preset(args.preset)
    t0 = time.perf_counter()
    model = nnx.jit(lambda: Qwen3VL(cfg, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))()
    bw = bench.read_bandwidth()
    print(f"[{time.perf_counter() - t0:6.1f}s] model built; HBM read {bw / 1e12:.2f} TB/s "
          f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})", flush=True)
    gpu = jax.devices()[0].platform == "gpu"
    fused = "cudnn" if gpu else "xla"   # off GPUs the kernel runs through the Pallas interpreter (smoke runs)
    opts = RunOptions(dtype="bfloat16", attn_impl=fused, vision_attn_impl=fused, decode_attn_impl="pallas")
    T, N = args.prompt, args.tokens
    res = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "read_TBps": bw / 1e12, "prompt": T, "tokens": N,
           "jax": jax.__version__, "device": jax.devices()[0].device_kind, "rows": []}
    sp = SamplingParams(max_new_tokens=N, eos_ids=(), pad_id=0)
    for B in (int(b) for b in args.batches.split(",")):
        ids = np.random.RandomState(0).randint(1, 5000, T)
        p = pack_prompts([list(ids)] * B, cfg=cfg, pad_id=0)
        logits, cache, _ = Sampler(model, opts).prefill(p, T + N + 8)
        roof = bench.decode_bytes(cfg, B, T + N / 2) / bw
        ref_tokens = None
        # each timed decode starts from a fresh copy of the prefilled cache: its time is taken off
        t_copy = bench.timeit(lambda: jax.block_until_ready(jax.tree.map(jnp.copy, cache)), n=3)
        for variant in args.variants.split(","):
            if B > 1 and ("bcast" in variant or "plain" in variant):
                continue   # the single-row paths: the same program as base at this batch
            patch(variant)
            hs = Sampler(model, opts, loop="host")

            def run():
                g = hs.decode(jax.tree.map(jnp.copy, cache), logits, p.next_pos, sp)
                g.tokens.block_until_ready()
                return g
            tc = time.perf_counter()
            toks = np.asarray(run().tokens)
            compile_s = time.perf_counter() - tc
            step = (bench.timeit(run, n=3, warmup=0) - t_copy) / N
            same = None if ref_tokens is None else float((toks == ref_tokens).mean())
            ref_tokens = toks if ref_tokens is None else ref_tokens
            row = {"batch": B, "variant": variant, "step_ms": step * 1e3, "roofline_ms": roof * 1e3,
                   "fraction": roof / step, "first_call_s": compile_s, "tokens_equal_to_base": same}
            res["rows"].append(row)
            print(f"[{time.perf_counter() - t0:6.1f}s] B={B} {variant:14s} step {step * 1e3:.3f} ms = "
                  f"{roof / step:.0%} of the {roof * 1e3:.2f}-ms roofline (first call {compile_s:.1f} s; "
                  f"tokens equal to base: {same})", flush=True)
            with open(os.path.join(out, f"decode_variants_{args.tag}.json"), "w") as f:
                json.dump(res, f, indent=1)
        patch("base")
        del cache, logits


if __name__ == "__main__":
    main()
