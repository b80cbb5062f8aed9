"""The fused decode layer (vsr1_jax.kernels.fused_decode) on the GPU at the 2B shapes: agreement with the XLA paths
and time of the whole 28-layer decoder stack of one step, per kernel, and the bandwidth each achieves.

    python tools/fused_decode_check.py --out docs/bench/fused_decode_h100_<date>.json [--batches 1,8]
        [--prompt 2048] [--iters 50] [--sweep]

For each batch size: random bf16 2B decoder weights (a TextModel, as the production path), a cache of prompt +
128 slots (prompt slots valid, row b with 37 * (b % 3) left-pad slots masked), the step writing at slot `prompt`.
  * errors: the fused stack (28 layers of `fused_decoder_layer_decode`) against `TextModel.__call__` (the production
    decode step's decoder, decode_attn_impl "xla" and "pallas") -- output and written cache rows, max abs and max abs
    relative to the reference's largest magnitude -- and one layer against `fused_ref.decoder_layer_decode_ref`;
  * times (jit, warm-up, median of --iters calls each waited for with block_until_ready, cache donated):
    the fused stack, the model's decoder (both attention impls), the XLA reference stack;
  * per kernel: the kernel alone over the 28 layers in one jit (inputs of the right shapes, each layer's weights),
    median / 28 = time per launch, and bytes it must read (its weights; for attention the K/V rows up to the length)
    / time; the whole stack's bytes (weights + cache rows read) / time against the HBM read bandwidth measured in the
    same process (benchmarks.common.read_bandwidth);
  * --sweep: each kernel's time for a few block settings (Blocks fields) and the best found.
Writes one JSON to --out and prints it. Works with jax 0.10.x and 0.11.x (no version-specific API).
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks/ beside the package

from benchmarks.common import device_info, read_bandwidth  # noqa: E402
from vsr1_jax.kernels import fused_decode as F  # noqa: E402
from vsr1_jax.models.qwen3_vl import fused_ref as R  # noqa: E402
from vsr1_jax.models.qwen3_vl.config import get_preset  # noqa: E402
from vsr1_jax.models.qwen3_vl.text import KVCache, TextModel  # noqa: E402

INTERPRET = jax.default_backend() != "gpu"   # off GPUs (a smoke run of this script) the kernels are interpreted


def err(a, b):
    a, b = np.asarray(jnp.asarray(a, jnp.float32)), np.asarray(jnp.asarray(b, jnp.float32))
    d = float(np.abs(a - b).max())
    return {"max_abs": d, "max_rel": d / max(float(np.abs(b).max()), 1e-30)}


T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress on stderr with the seconds since start: the first GPU run (2026-12-07, H100) printed nothing in
    240 s, so where the time goes (Triton/XLA compiles of the four 28-layer stacks, timing) must show as it runs."""
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def run_batch(cfg, B, prompt, iters, sweep, bw):
    log(f"batch {B}: building the random bf16 decoder and a {prompt + 128}-slot cache")
    L, K, hd, D, I, Hq = (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size,
                          cfg.intermediate_size, cfg.num_attention_heads)
    S = prompt + 128
    dt = jnp.bfloat16
    model = TextModel(cfg, tie_word_embeddings=True, param_dtype=dt, rngs=nnx.Rngs(0))
    graph, state = nnx.split(model)
    params = {k: getattr(model, k)[...] for k in F.LAYER_KEYS}
    rng = np.random.default_rng(B)
    kc = jnp.asarray(rng.standard_normal((L, B, K, S, hd)), dt)
    vc = jnp.asarray(rng.standard_normal((L, B, K, S, hd)), dt)
    valid = np.zeros((B, S), bool)
    valid[:, :prompt] = True
    for b in range(B):
        valid[b, : 37 * (b % 3)] = False
    cache = KVCache(kc, vc, jnp.asarray(valid), jnp.asarray(prompt, jnp.int32))
    x = jnp.asarray(rng.standard_normal((B, 1, D)), dt)
    next_pos = jnp.asarray(prompt - 37 * (np.arange(B) % 3), jnp.int32)
    live = jnp.ones((B,), bool)
    weight_bytes = sum(int(np.prod(v.shape)) * v.dtype.itemsize for v in params.values())
    lens = np.full((B,), prompt + 1)
    kv_bytes = 2 * L * K * hd * 2 * int(lens.sum())          # K and V rows up to each row's length, bf16
    res = {"B": B, "S": S, "length": prompt + 1, "weight_bytes": weight_bytes, "kv_read_bytes": kv_bytes}

    def model_step(impl):
        def f(kc, vc, x, pos):
            m = nnx.merge(graph, state)
            c = cache._replace(k=kc, v=vc)
            pos3 = jnp.broadcast_to(pos[None, :, None], (3, B, 1))
            h, _, new = m(x, pos3, live[:, None], cache=c, decode_attn_impl=impl)
            return new.k, new.v, h
        return jax.jit(f, donate_argnums=(0, 1))

    def inputs(kc, vc, pos):
        index = cache.index
        slot = jnp.full((B,), index, jnp.int32)
        v = jax.lax.dynamic_update_slice(cache.valid, live[:, None], (0, index))
        bias = jnp.where(v & (jnp.arange(S)[None] <= index), 0.0, F.NEG).astype(jnp.float32)
        cos, sin = R.decode_cos_sin(pos, cfg)
        return slot, bias, cos, sin

    def stack(layer_fn, blocks=None):
        def f(kc, vc, x, pos):
            slot, bias, cos, sin = inputs(kc, vc, pos)
            y = x[:, 0]
            for li in range(L):
                kw = {} if blocks is None else {"blocks": blocks}
                y, kc, vc = layer_fn(params, y, kc, vc, slot, cos, sin, cfg, layer=li, bias=bias, **kw)
            return kc, vc, y[:, None]
        return jax.jit(f, donate_argnums=(0, 1))

    fresh = lambda: (jnp.copy(kc), jnp.copy(vc))  # noqa: E731
    fused = stack(functools.partial(F.fused_decoder_layer_decode, interpret=INTERPRET), F.Blocks())
    outs = {}
    for name, fn in (("fused", fused), ("model_xla", model_step("xla")), ("model_pallas", model_step("pallas")),
                     ("xla_reference", stack(R.decoder_layer_decode_ref))):
        k0, v0 = fresh()
        log(f"batch {B}: {name}: compile + first call")
        nk, nv, h = jax.block_until_ready(fn(k0, v0, x, next_pos))
        outs[name] = (nk[:, :, :, prompt], nv[:, :, :, prompt], h)   # the written slot of every layer/row/head
        del nk, nv
    ref = outs["model_xla"]
    res["errors_vs_model_xla"] = {
        n: {"out": err(o[2], ref[2]), "cache_k_rows": err(o[0], ref[0]), "cache_v_rows": err(o[1], ref[1])}
        for n, o in outs.items() if n != "model_xla"}
    del outs
    # one layer, fused vs its XLA reference (same inputs)
    slot, bias, cos, sin = jax.jit(inputs)(kc, vc, next_pos)
    li = min(5, L - 1)
    one_f = jax.jit(lambda *a: F.fused_decoder_layer_decode(*a, cfg, layer=li, bias=bias, interpret=INTERPRET))
    one_r = jax.jit(lambda *a: R.decoder_layer_decode_ref(*a, cfg, layer=li, bias=bias))
    a = (params, x[:, 0], kc, vc, slot, cos, sin)
    of, orf = one_f(*a), one_r(*a)
    res[f"layer{li}_fused_vs_reference"] = {"out": err(of[0], orf[0]), "cache_k_rows": err(
        of[1][li, :, :, prompt], orf[1][li, :, :, prompt]), "cache_v_rows": err(of[2][li, :, :, prompt],
                                                                                orf[2][li, :, :, prompt])}
    del of, orf

    times = {}
    for name, fn in (("fused", fused), ("model_xla", model_step("xla")), ("model_pallas", model_step("pallas")),
                     ("xla_reference", stack(R.decoder_layer_decode_ref))):
        k0, v0 = fresh()
        log(f"batch {B}: {name}: timing {iters} calls")
        g = lambda kv, fn=fn: fn(kv[0], kv[1], x, next_pos)  # noqa: E731
        ts = []
        kv = (k0, v0)
        for i in range(3 + iters):
            t = time.perf_counter()
            out = jax.block_until_ready(g(kv))
            if i >= 3:
                ts.append(time.perf_counter() - t)
            kv = out[:2]
        times[name] = statistics.median(ts)
        del kv, out
    res["stack_ms"] = {n: t * 1e3 for n, t in times.items()}
    total = weight_bytes + kv_bytes
    res["stack_bandwidth_TBps"] = {n: total / t / 1e12 for n, t in times.items()}
    if bw:
        res["stack_fraction_of_read_bw"] = {n: total / t / bw for n, t in times.items()}

    log(f"batch {B}: stack ms {res['stack_ms']}; per-kernel timings next")
    res["kernels"] = per_kernel(cfg, params, kc, vc, x[:, 0], next_pos, B, S, prompt, iters, F.Blocks(), bw)
    if sweep:
        res["sweep"] = run_sweep(cfg, params, kc, vc, x[:, 0], next_pos, B, S, prompt, iters, bw)
    return res


def per_kernel(cfg, params, kc, vc, x, pos, B, S, prompt, iters, blocks, bw, only=None):
    """Each kernel alone over the L layers in one jit; time per launch and bandwidth of the bytes it reads."""
    L, K, hd, Hq = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, cfg.num_attention_heads
    eps = cfg.rms_norm_eps
    nb = lambda *ks: sum(int(np.prod(params[k].shape[1:])) * params[k].dtype.itemsize for k in ks)  # noqa: E731
    slot = jnp.full((B,), prompt, jnp.int32)
    lengths = slot + 1
    cos, sin = R.decode_cos_sin(pos, cfg)
    q = jnp.asarray(np.random.default_rng(1).standard_normal((B, Hq, hd)), x.dtype)
    o, m, l = jax.jit(lambda: F.attention_partials(q, kc, vc, lengths, layer=0, blocks=blocks,
                                                          interpret=INTERPRET))()
    act = jnp.ones((B, cfg.intermediate_size), x.dtype) * 0.01
    kv_layer = 2 * K * hd * 2 * B * (prompt + 1)

    def qkv(kc, vc):
        acc = jnp.zeros((B, Hq, hd), jnp.float32)
        for li in range(L):
            qq, kc, vc = F.qkv_rope_cache(x, params, kc, vc, slot, cos, sin, wlayer=li, layer=li, eps=eps,
                                          blocks=blocks, interpret=INTERPRET)
            acc = acc + qq
        return kc, vc, acc

    def loop(fn):
        def f(kc, vc):
            acc = 0.0
            for li in range(L):
                acc = acc + fn(li, kc, vc).astype(jnp.float32).sum()
            return kc, vc, acc
        return f

    kernels = {
        "qkv" if blocks.qkv_splits == 1 else "qkv_partial+finish":
            (qkv, nb("input_norm", "q_kernel", "k_kernel", "v_kernel", "q_norm", "k_norm")),
        "attention": (loop(lambda li, kc, vc: F.attention_partials(q, kc, vc, lengths, layer=li, blocks=blocks,
                                                                            interpret=INTERPRET)[0]),
                      kv_layer),
        "oproj": (loop(lambda li, kc, vc: F.oproj_residual(o, m, l, x, params, wlayer=li, blocks=blocks,
                                                                  interpret=INTERPRET)),
                  nb("o_kernel")),
        "gate_up": (loop(lambda li, kc, vc: F.gate_up_silu(x, params, wlayer=li, eps=eps, blocks=blocks,
                                                                  interpret=INTERPRET)),
                    nb("post_norm", "gate_kernel", "up_kernel")),
        "down": (loop(lambda li, kc, vc: F.down_residual(act, x, params, wlayer=li, blocks=blocks,
                                                                 interpret=INTERPRET)),
                 nb("down_kernel")),
    }
    out = {}
    for name, (fn, nbytes) in kernels.items():
        if only and not name.startswith(only):
            continue
        t = _median_donated(jax.jit(fn, donate_argnums=(0, 1)), kc, vc, iters) / L
        out[name] = {"us_per_layer": t * 1e6, "bytes_per_layer": nbytes, "TBps": nbytes / t / 1e12}
        if bw:
            out[name]["fraction_of_read_bw"] = nbytes / t / bw
    return out


def _median_donated(f, kc, vc, iters, warmup=3):
    kv = (jnp.copy(kc), jnp.copy(vc))
    ts = []
    for i in range(warmup + iters):
        t = time.perf_counter()
        out = jax.block_until_ready(f(*kv))
        if i >= warmup:
            ts.append(time.perf_counter() - t)
        kv = out[:2]
    return statistics.median(ts)


def run_sweep(cfg, params, kc, vc, x, pos, B, S, prompt, iters, bw):
    base = F.Blocks()
    grid = {"qkv": [base._replace(qkv_splits=s, num_warps=w) for s in (1, 2, 4) for w in (4, 8)],
            "attention": [base._replace(attn_splits=n, attn_block_k=k) for n in (0, 4, 16) for k in (32, 64, 128)],
            "oproj": [base._replace(o_n=n, num_warps=w) for n in (16, 32, 64) for w in (4, 8)],
            "gate_up": [base._replace(mlp_n=n, mlp_k=k, num_warps=w) for n in (32, 64, 128) for k in (64, 128)
                        for w in (4, 8)],
            "down": [base._replace(down_n=n, down_k=k, num_warps=w) for n in (16, 32, 64) for k in (128, 256)
                     for w in (4, 8)]}
    out = {}
    for name, cands in grid.items():
        rows = []
        for blk in cands:
            try:
                r = per_kernel(cfg, params, kc, vc, x, pos, B, S, prompt, max(10, iters // 3), blk, bw, only=name)
                rows.append({"blocks": blk._asdict(), **next(iter(r.values()))})
            except Exception as e:  # noqa: BLE001 -- a block setting Triton refuses is a result, not a failure
                rows.append({"blocks": blk._asdict(), "error": f"{type(e).__name__}: {str(e)[:300]}"})
        ok = [r for r in rows if "us_per_layer" in r]
        out[name] = {"candidates": rows, "best": min(ok, key=lambda r: r["us_per_layer"]) if ok else None}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="qwen3_vl_2b")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt", type=int, default=2048, help="cache slots already written (the step attends to "
                                                             "prompt + 1)")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args(argv)
    cfg = get_preset(args.preset).text
    bw = read_bandwidth() if jax.default_backend() == "gpu" else None
    report = {"device": device_info(), "preset": args.preset, "read_bandwidth_Bps": bw, "blocks": F.Blocks()._asdict(),
              "kernels_per_layer": 5, "batches": []}
    for B in map(int, args.batches.split(",")):
        report["batches"].append(run_batch(cfg, B, args.prompt, args.iters, args.sweep, bw))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(json.dumps(report["batches"][-1]), flush=True)
    return report


if __name__ == "__main__":
    main()
