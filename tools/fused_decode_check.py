"""The fused decode layer (vsr1_jax.kernels.fused_decode) on the GPU at the 2B shapes: agreement with the XLA paths
and time of the whole decoder stack of one step (28 layers for the 2B), per kernel, and the bandwidth each achieves.

    python tools/fused_decode_check.py --out docs/bench/fused_decode_h100_<date>.json [--batches 1,8]
        [--prompt 2048] [--iters 50] [--depths 2,8] [--sweep]

Compile time: unrolling all 28 layers of each decoder variant (as production does) is what made the first H100 run
(2026-12-07) print nothing in 240 s. The stacks are therefore timed at two shallower depths (`--depths`, default 2
and 8 layers: random decoders of the 2B's layer shapes with that many layers, each unrolled as in production) and
the full-depth figures extrapolated linearly: per layer = (t(8) - t(2)) / 6, per step = t(2) + per layer x (28 - 2);
the fixed per-step work (rope tables, mask, final norm, dispatch) is the intercept, not scaled. `--depths 28` (or
any single depth >= the model's) times the full stack directly. `stack_ms_measured` keeps the measured times.

For each batch size: random bf16 decoder weights (a TextModel, as the production path), a cache of prompt + 128
slots (prompt slots valid, row b with 37 * (b % 3) left-pad slots masked), the step writing at slot `prompt`.
  * errors (at the deepest depth timed): the production decoder with the fused layers (`TextModel.__call__` with
    decode_layer_impl "fused": `text.fused_decode_layers`, five Pallas kernels and one XLA fusion per layer) and
    with the XLA layers and the flash-decoding attention (decode_attn_impl "pallas"), and the XLA reference stack
    (layers of `fused_ref.decoder_layer_decode_ref`), against `TextModel.__call__` with the XLA layers and attention
    -- output and written cache rows, max abs and max abs relative to the reference's largest magnitude -- and one
    layer of `fused_decoder_layer_decode` against `fused_ref.decoder_layer_decode_ref`;
  * times (jit, warm-up, median of --iters calls each waited for with block_until_ready, cache donated), each
    variant compiled once per depth: the fused decoder, the model's decoder (both attention impls), the XLA
    reference stack;
  * per kernel: the kernel alone over the layers of each depth in one jit (inputs of the right shapes, each
    layer's weights), time per launch = the slope between the depths (or median / layers at a single depth), and
    bytes it must read (its weights; for attention the K/V rows up to the length) / time; the whole stack's bytes
    (weights + cache rows read, at full depth) / time against the HBM read bandwidth measured in the same process
    (benchmarks.common.read_bandwidth);
  * --sweep: each kernel's time for a few block settings (Blocks fields) and the best found;
  * --trace DIR: the fused decoder at the deepest depth under the profiler (10 calls); each Pallas kernel's median
    duration per launch from the trace (`profiling.kernel_times`), launches per step and bandwidth: the per-kernel
    figures without the noise of timing by difference.
Writes one JSON to --out and prints it. Works with jax 0.10.x and 0.11.x (no version-specific API). Off GPUs (a smoke
run: `JAX_PLATFORMS=cpu python tools/fused_decode_check.py --preset tiny --depths 1,2 --batches 2 --prompt 16
--iters 2 --out /tmp/x.json`) the kernels run through the Pallas interpreter.
"""
from __future__ import annotations

import argparse
import functools
import dataclasses
import glob
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
from vsr1_jax.models.qwen3_vl.run_options import decode_layer_path  # noqa: E402
from vsr1_jax.profiling import kernel_times  # noqa: E402
from vsr1_jax.models.qwen3_vl.text import KVCache, TextModel  # noqa: E402

TRACE_STEPS = 10
INTERPRET = jax.default_backend() != "gpu"   # off GPUs (a smoke run of this script) the kernels are interpreted
FUSED_IMPL = "fused_interpret" if INTERPRET else "fused"   # RunOptions.decode_layer_impl of the fused decoder


def err(a, b):
    a, b = np.asarray(jnp.asarray(a, jnp.float32)), np.asarray(jnp.asarray(b, jnp.float32))
    d = float(np.abs(a - b).max())
    return {"max_abs": d, "max_rel": d / max(float(np.abs(b).max()), 1e-30)}


T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress on stderr with the seconds since start: the first GPU run (2026-12-07, H100) printed nothing in
    240 s, so where the time goes (compiles, timing) must show as it runs."""
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def extrapolate(ts: dict, L: int):
    """{depth: seconds} -> (seconds per layer, seconds of the L-layer stack): the line through the two depths (one
    depth: time / depth per layer, the time itself for the stack, which then is the full one)."""
    if len(ts) == 1:
        (n, t), = ts.items()
        return t / n, t
    (a, ta), (b, tb) = sorted(ts.items())
    slope = (tb - ta) / (b - a)
    return slope, ta + slope * (L - a)


def depth_inputs(cfg, B, prompt):
    """A random bf16 decoder of cfg's depth and a step's inputs (cache, x, positions)."""
    L, K, hd = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    S = prompt + 128
    dt = jnp.bfloat16
    model = TextModel(cfg, tie_word_embeddings=True, param_dtype=dt, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(B)
    kc = jnp.asarray(rng.standard_normal((L, B, K, S, hd)), dt)
    vc = jnp.asarray(rng.standard_normal((L, B, K, S, hd)), dt)
    valid = np.zeros((B, S), bool)
    valid[:, :prompt] = True
    for b in range(B):
        valid[b, : 37 * (b % 3)] = False
    cache = KVCache(kc, vc, jnp.asarray(valid), jnp.asarray(prompt, jnp.int32))
    x = jnp.asarray(rng.standard_normal((B, 1, cfg.hidden_size)), dt)
    next_pos = jnp.asarray(prompt - 37 * (np.arange(B) % 3), jnp.int32)
    return model, cache, x, next_pos


def variants(cfg, model, cache, B, fused_ok):
    """name -> jitted step (k cache, v cache, x, positions) -> (k cache, v cache, h [B, 1, D]), caches donated."""
    graph, state = nnx.split(model)
    params = {k: getattr(model, k)[...] for k in F.LAYER_KEYS}
    live = jnp.ones((B,), bool)
    S = cache.k.shape[3]

    # the weights are arguments, never closed over: captured, they become 2.8 GB of HLO constants (the first H100
    # run, 2026-12-07, spent 110 s compiling one stack that way)
    def model_step(attn, layer):
        def f(st, kc, vc, x, pos):
            m = nnx.merge(graph, st)
            pos3 = jnp.broadcast_to(pos[None, :, None], (3, B, 1))
            h, _, new = m(x, pos3, live[:, None], cache=cache._replace(k=kc, v=vc), decode_attn_impl=attn,
                          decode_layer_impl=layer, devices=1)
            return new.k, new.v, h
        jf = jax.jit(f, donate_argnums=(1, 2))
        return lambda kc, vc, x, pos: jf(state, kc, vc, x, pos)

    def reference_stack(params, kc, vc, x, pos):
        index = cache.index
        slot = jnp.full((B,), index, jnp.int32)
        v = jax.lax.dynamic_update_slice(cache.valid, live[:, None], (0, index))
        bias = jnp.where(v & (jnp.arange(S)[None] <= index), 0.0, F.NEG).astype(jnp.float32)
        cos, sin = R.decode_cos_sin(pos, cfg)
        y = x[:, 0]
        for li in range(cfg.num_hidden_layers):
            y, kc, vc = R.decoder_layer_decode_ref(params, y, kc, vc, slot, cos, sin, cfg, layer=li, bias=bias)
        return kc, vc, y[:, None]

    out = {"fused": model_step("xla", FUSED_IMPL)} if fused_ok else {}
    out.update(model_xla=model_step("xla", "xla"), model_pallas=model_step("pallas", "xla"),
               xla_reference=functools.partial(jax.jit(reference_stack, donate_argnums=(1, 2)), params))
    return out, params


# per_kernel's kernels -> the Pallas kernel names they launch (a split QKV launches a partial and a finish kernel)
PALLAS = {"qkv": ("vsr1_qkv",), "qkv_partial+finish": ("vsr1_qkv_partial", "vsr1_qkv_finish"),
          "attention": ("vsr1_attention",), "oproj": ("vsr1_oproj",), "gate_up": ("vsr1_gate_up",),
          "down": ("vsr1_down",)}
KERNEL_NAMES = tuple(n for names in PALLAS.values() for n in names)


def _kernel_bytes(cfg, B, prompt) -> dict:
    """Bytes each of per_kernel's kernels must read per launch: its layer's weights (bf16); attention: the layer's
    K and V rows up to the length."""
    lb = _layer_bytes(cfg)
    qkv = sum(lb[k] for k in ("input_norm", "q_kernel", "k_kernel", "v_kernel", "q_norm", "k_norm"))
    return {"qkv": qkv, "qkv_partial+finish": qkv,
            "attention": 2 * cfg.num_key_value_heads * cfg.head_dim * 2 * B * (prompt + 1),
            "oproj": lb["o_kernel"], "gate_up": lb["post_norm"] + lb["gate_kernel"] + lb["up_kernel"],
            "down": lb["down_kernel"]}


def _profiled(call, kv, steps, trace_dir):
    """call(k cache, v cache) -> (k cache, v cache, ...) run once to warm, then `steps` times under the profiler
    (caches donated from call to call); -> (profiling.kernel_times of KERNEL_NAMES, trace path)."""
    kv = jax.block_until_ready(call(*kv))[:2]
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(steps):
            kv = jax.block_until_ready(call(*kv))[:2]
    files = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))
    if not files:
        raise RuntimeError(f"no perfetto trace under {trace_dir}")
    return kernel_times(files[-1], KERNEL_NAMES), files[-1]


def traced_kernels(fn, kc, vc, x, pos, cfg, B, prompt, steps, trace_dir, bw):
    """The fused decoder `fn` run `steps` times under the profiler; from the trace, per kernel of per_kernel's
    names: the median duration per launch (a split QKV: partial + finish), launches per step and the bytes it must
    read per launch / that duration. The rest of the step (the merge fusion, cos/sin, the bias) is "other"."""
    t, path = _profiled(lambda kc, vc: fn(kc, vc, x, pos), (kc, vc), steps, trace_dir)
    nbytes = _kernel_bytes(cfg, B, prompt)
    out = {"trace": path, "steps": steps, "layers": cfg.num_hidden_layers}
    for name, pallas in PALLAS.items():
        rows = [t[n] for n in pallas if t[n]["count"]]
        if not rows:
            continue
        med = sum(r["median_us"] for r in rows)
        row = {"launches_per_step": rows[0]["count"] / steps, "median_us": med,
               "us_per_step": sum(r["total_us"] for r in rows) / steps, "bytes_per_launch": nbytes[name],
               "TBps": nbytes[name] / (med * 1e-6) / 1e12}
        if bw:
            row["fraction_of_read_bw"] = nbytes[name] / (med * 1e-6) / bw
        out[name] = row
    out["other"] = {"launches_per_step": t["other"]["count"] / steps, "us_per_step": t["other"]["total_us"] / steps,
                    "top_us_per_step": {k: v / steps for k, v in t["other"]["top_us"].items()}}
    return out


def run_depth(cfg, B, prompt, iters, fused_ok, check, trace_dir=None, bw=None):
    """Times (seconds) of every variant at cfg's depth, each compiled once; with check, their errors too; with
    trace_dir (and the fused path), the fused decoder's kernels from a profiler trace (`traced_kernels`)."""
    n = cfg.num_hidden_layers
    log(f"batch {B}, {n} layers: building the random bf16 decoder and a {prompt + 128}-slot cache")
    model, cache, x, next_pos = depth_inputs(cfg, B, prompt)
    fns, params = variants(cfg, model, cache, B, fused_ok)
    fresh = lambda: (jnp.copy(cache.k), jnp.copy(cache.v))  # noqa: E731
    res, outs, times = {}, {}, {}
    for name, fn in fns.items():
        log(f"batch {B}, {n} layers: {name}: compile + first call")
        k0, v0 = fresh()
        nk, nv, h = jax.block_until_ready(fn(k0, v0, x, next_pos))
        if check:
            outs[name] = (nk[:, :, :, prompt], nv[:, :, :, prompt], h)   # the written slot of every layer/row/head
        log(f"batch {B}, {n} layers: {name}: timing {iters} calls")
        times[name] = _median_donated(lambda kc, vc, fn=fn: fn(kc, vc, x, next_pos), nk, nv, iters, copy=False)
        if name == "fused" and trace_dir:
            log(f"batch {B}, {n} layers: fused: profiler trace of {TRACE_STEPS} calls")
            res["traced_kernels"] = traced_kernels(fn, jnp.copy(cache.k), jnp.copy(cache.v), x, next_pos, cfg, B,
                                                   prompt, TRACE_STEPS, f"{trace_dir}/b{B}_d{n}", bw)
    if check:
        ref = outs["model_xla"]
        res["errors_vs_model_xla"] = {
            k: {"out": err(o[2], ref[2]), "cache_k_rows": err(o[0], ref[0]), "cache_v_rows": err(o[1], ref[1])}
            for k, o in outs.items() if k != "model_xla"}
        del outs
        # one layer, fused vs its XLA reference (same inputs)
        S = cache.k.shape[3]
        slot = jnp.full((B,), prompt, jnp.int32)
        v = cache.valid.at[:, prompt].set(True)
        bias = jnp.where(v & (jnp.arange(S)[None] <= prompt), 0.0, F.NEG).astype(jnp.float32)
        cos, sin = R.decode_cos_sin(next_pos, cfg)
        li = min(5, n - 1)
        one_f = jax.jit(lambda *a: F.fused_decoder_layer_decode(*a, cfg, layer=li, bias=bias, interpret=INTERPRET))
        one_r = jax.jit(lambda *a: R.decoder_layer_decode_ref(*a, cfg, layer=li, bias=bias))
        a = (params, x[:, 0], cache.k, cache.v, slot, cos, sin)
        if fused_ok:
            of, orf = one_f(*a), one_r(*a)
            res[f"layer{li}_fused_vs_reference"] = {
                "out": err(of[0], orf[0]), "cache_k_rows": err(of[1][li, :, :, prompt], orf[1][li, :, :, prompt]),
                "cache_v_rows": err(of[2][li, :, :, prompt], orf[2][li, :, :, prompt])}
            del of, orf
    return res, times, (params, cache, x, next_pos)


def run_batch(cfg, B, prompt, iters, depths, sweep, bw, trace_dir=None):
    L, K, hd = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    fused_path, why = decode_layer_path(FUSED_IMPL, cfg, T=1, stacked_cache=True, devices=1)
    fused_ok = fused_path != "xla"
    if not fused_ok:
        log(f"the fused decode layer does not apply here ({why}): only the XLA variants are timed")
    weight_bytes = L * sum(_layer_bytes(cfg).values())
    kv_bytes = 2 * L * K * hd * 2 * B * (prompt + 1)          # K and V rows up to each row's length, bf16
    res = {"B": B, "S": prompt + 128, "length": prompt + 1, "weight_bytes": weight_bytes, "kv_read_bytes": kv_bytes,
           "layers": L, "depths_timed": list(depths), "fused_path": fused_path, "fused_not_applied_why": why}
    measured, kern, held = {}, {}, {}
    for n in depths:
        cn = dataclasses.replace(cfg, num_hidden_layers=n)
        r, times, (params, cache, x, pos) = run_depth(cn, B, prompt, iters, fused_ok, check=n == max(depths),
                                                      trace_dir=trace_dir if n == max(depths) else None, bw=bw)
        res.update(r)
        measured[n] = times
        log(f"batch {B}, {n} layers: stack ms {({k: round(t * 1e3, 3) for k, t in times.items()})}; per-kernel next")
        if fused_ok:
            held[n] = (cn, params, cache.k, cache.v, x[:, 0], pos)
            kern[n] = per_kernel(*held[n], B, prompt, iters, F.Blocks())
        if not sweep:
            held.pop(n, None)
        del params, cache
    res["stack_ms_measured"] = {n: {k: t * 1e3 for k, t in ts.items()} for n, ts in measured.items()}
    times = {k: extrapolate({n: measured[n][k] for n in depths}, L)[1] for k in measured[depths[0]]}
    res["stack_ms"] = {k: t * 1e3 for k, t in times.items()}
    total = weight_bytes + kv_bytes
    res["stack_bandwidth_TBps"] = {k: total / t / 1e12 for k, t in times.items()}
    if bw:
        res["stack_fraction_of_read_bw"] = {k: total / t / bw for k, t in times.items()}
    if fused_ok:
        res["kernels"] = kernel_figures(kern, depths, bw)
    if sweep and fused_ok:
        res["sweep"] = run_sweep(held, B, prompt, iters, bw, trace_dir=trace_dir)
    return res


def _layer_bytes(cfg):
    """Bytes of one layer's weights per LAYER_KEYS name (bf16)."""
    D, I, Hq, K, hd = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                       cfg.head_dim)
    shapes = dict(input_norm=(D,), q_kernel=(D, Hq * hd), k_kernel=(D, K * hd), v_kernel=(D, K * hd),
                  o_kernel=(Hq * hd, D), q_norm=(hd,), k_norm=(hd,), post_norm=(D,), gate_kernel=(D, I),
                  up_kernel=(D, I), down_kernel=(I, D))
    return {k: 2 * int(np.prod(s)) for k, s in shapes.items()}


def kernel_figures(kern, depths, bw):
    """{depth: {kernel: (seconds for the depth's layers, bytes per layer)}} -> per kernel: time per launch (the
    slope between the depths), bytes per layer, bandwidth."""
    out = {}
    for name in kern[depths[0]]:
        t, _ = extrapolate({n: kern[n][name][0] for n in depths}, 1)
        nbytes = kern[depths[0]][name][1]
        out[name] = {"us_per_layer": t * 1e6, "bytes_per_layer": nbytes, "TBps": nbytes / t / 1e12}
        if bw:
            out[name]["fraction_of_read_bw"] = nbytes / t / bw
    return out


def per_kernel(cfg, params, kc, vc, x, pos, B, prompt, iters, blocks, only=None, trace_dir=None):
    """Each kernel alone over cfg's L layers in one jit (unrolled). -> {kernel: (seconds for the L launches, bytes
    it must read per launch)}; with trace_dir: {kernel: (seconds per launch from a profiler trace, bytes)}."""
    L, hd, Hq = cfg.num_hidden_layers, cfg.head_dim, cfg.num_attention_heads
    eps = cfg.rms_norm_eps
    slot = jnp.full((B,), prompt, jnp.int32)
    lengths = slot + 1
    cos, sin = R.decode_cos_sin(pos, cfg)
    q = jnp.asarray(np.random.default_rng(1).standard_normal((B, Hq, hd)), x.dtype)
    o, m, l = jax.jit(lambda: F.attention_partials(q, kc, vc, lengths, layer=0, blocks=blocks,
                                                          interpret=INTERPRET))()
    act = jnp.ones((B, cfg.intermediate_size), x.dtype) * 0.01

    def qkv(kc, vc, params):
        acc = jnp.zeros((B, Hq, hd), jnp.float32)
        for li in range(L):
            qq, kc, vc = F.qkv_rope_cache(x, params, kc, vc, slot, cos, sin, wlayer=li, layer=li, eps=eps,
                                          blocks=blocks, interpret=INTERPRET)
            acc = acc + qq
        return kc, vc, acc

    def loop(fn):
        def f(kc, vc, params):
            acc = 0.0
            for li in range(L):
                acc = acc + fn(li, kc, vc, params).astype(jnp.float32).sum()
            return kc, vc, acc
        return f

    kernels = {
        "qkv" if blocks.qkv_splits == 1 else "qkv_partial+finish":
            qkv,
        "attention": loop(lambda li, kc, vc, params: F.attention_partials(q, kc, vc, lengths, layer=li, blocks=blocks,
                                                                           interpret=INTERPRET)[0]),
        "oproj": loop(lambda li, kc, vc, params: F.oproj_residual(o, m, l, x, params, wlayer=li, blocks=blocks,
                                                                 interpret=INTERPRET)),
        "gate_up": loop(lambda li, kc, vc, params: F.gate_up_silu(x, params, wlayer=li, eps=eps, blocks=blocks,
                                                                 interpret=INTERPRET)),
        "down": loop(lambda li, kc, vc, params: F.down_residual(act, x, params, wlayer=li, blocks=blocks,
                                                                interpret=INTERPRET)),
    }
    nbytes = _kernel_bytes(cfg, B, prompt)
    out = {}
    for name, fn in kernels.items():
        if only and not name.startswith(only):
            continue
        jf = jax.jit(fn, donate_argnums=(0, 1))   # the weights an argument (see variants)
        call = lambda kc, vc, jf=jf: jf(kc, vc, params)  # noqa: E731
        if trace_dir:
            t, path = _profiled(call, (jnp.copy(kc), jnp.copy(vc)), iters, f"{trace_dir}/{name}")
            meds = [t[n]["median_us"] for n in PALLAS[name] if t[n]["count"]]
            if not meds:
                raise RuntimeError(f"none of {PALLAS[name]} in the trace {path}")
            out[name] = (sum(meds) * 1e-6, nbytes[name])
        else:
            out[name] = (_median_donated(call, kc, vc, iters), nbytes[name])
    return out


def _median_donated(f, kc, vc, iters, warmup=3, copy=True):
    """Median seconds of f(k cache, v cache) -> (k cache, v cache, ...), each call fed the caches the last one
    returned (donated; copy=False donates kc/vc themselves)."""
    kv = (jnp.copy(kc), jnp.copy(vc)) if copy else (kc, vc)
    ts = []
    for i in range(warmup + iters):
        t = time.perf_counter()
        out = jax.block_until_ready(f(*kv))
        if i >= warmup:
            ts.append(time.perf_counter() - t)
        kv = out[:2]
    return statistics.median(ts)


def run_sweep(held, B, prompt, iters, bw, trace_dir=None):
    """held: {depth: (cfg, params, k cache, v cache, x, positions)} of the timed depths. With trace_dir each
    candidate's kernel is timed from a profiler trace at the deepest depth (median per launch), not by the slope
    between the depths."""
    depths = sorted(held)
    base = F.Blocks()
    grid = {"qkv": [base._replace(qkv_splits=s, num_warps=w) for s in (1, 2, 4) for w in (4, 8)],
            "attention": [base._replace(attn_splits=n, attn_block_k=k) for n in (0, 4, 16) for k in (32, 64, 128)],
            "oproj": [base._replace(o_n=n, o_k=k, num_warps=w) for n in (16, 32, 64) for k in (128, 256)
                      for w in (4, 8)],
            "gate_up": [base._replace(mlp_n=n, mlp_k=k, num_warps=w) for n in (32, 64, 128) for k in (64, 128)
                        for w in (4, 8)],
            "down": [base._replace(down_n=n, down_k=k, num_warps=w) for n in (16, 32, 64) for k in (128, 256)
                     for w in (4, 8)]}
    out = {}
    for name, cands in grid.items():
        rows = []
        for c, blk in enumerate(cands):
            try:
                if trace_dir:
                    (t, nbytes), = per_kernel(*held[depths[-1]], B, prompt, 10, blk, only=name,
                                              trace_dir=f"{trace_dir}/sweep_b{B}_{name}_{c}").values()
                    fig = {"us_per_layer": t * 1e6, "bytes_per_layer": nbytes, "TBps": nbytes / t / 1e12,
                           "timed_by": "trace"}
                    if bw:
                        fig["fraction_of_read_bw"] = nbytes / t / bw
                    rows.append({"blocks": blk._asdict(), **fig})
                    continue
                kern = {n: per_kernel(*held[n], B, prompt, max(10, iters // 3), blk, only=name) for n in depths}
                rows.append({"blocks": blk._asdict(), **next(iter(kernel_figures(kern, depths, bw).values()))})
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
    ap.add_argument("--depths", default="2,8",
                    help="decoder depths timed (one or two, comma list): the full stack's figures are extrapolated "
                         "linearly from them; a single depth >= the model's layers times the full stack")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--trace", default=None, help="a folder: also profile the fused decoder at the deepest depth "
                                                  "and report each kernel's duration from the trace")
    args = ap.parse_args(argv)
    cfg = get_preset(args.preset).text
    L = cfg.num_hidden_layers
    depths = sorted({min(int(d), L) for d in args.depths.split(",") if d})
    if not 1 <= len(depths) <= 2 or depths[0] < 1:
        raise SystemExit(f"--depths {args.depths!r}: one or two positive depths")
    bw = read_bandwidth() if jax.default_backend() == "gpu" else None
    report = {"device": device_info(), "preset": args.preset, "read_bandwidth_Bps": bw, "blocks": F.Blocks()._asdict(),
              "kernels_per_layer": 6, "depths_timed": depths, "batches": []}
    for B in map(int, args.batches.split(",")):
        report["batches"].append(run_batch(cfg, B, args.prompt, args.iters, depths, args.sweep, bw,
                                           trace_dir=args.trace))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(json.dumps(report["batches"][-1]), flush=True)
    return report


if __name__ == "__main__":
    main()
