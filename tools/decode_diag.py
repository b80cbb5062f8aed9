"""Where does a batch-1 decode step of the 2B model spend its time? (run on the GPU machine)

Times: the sampler's while-loop and host-loop decode per step; one jitted decode step (with and without the LM
head); the weights-only GEMV chain of one step; and the copy bandwidth. Prints a table.

    python tools/decode_diag.py [B] [--attn pallas] [--trace]

--trace: a profiler trace of 32 decode steps of each loop (host and while), summarised by tools/trace_summary.py (kernels per step, busy
vs idle GPU time, time by kernel kind) into $OUT/decode_trace_summary_<loop>_B<B>_<attn>.json.
"""
import json
import os
import sys
from pathlib import Path
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks/ beside the package

from benchmarks.common import timeit
from vsr1_jax.generate.sampler import SamplingParams, Sampler, pack_prompts
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.profiling import summarize


def main():
    B = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 1
    attn = sys.argv[sys.argv.index("--attn") + 1] if "--attn" in sys.argv else "xla"
    out = os.environ.get("OUT", ".")
    cfg = get_preset("qwen3_vl_2b")
    t = time.perf_counter()
    model = nnx.jit(lambda: Qwen3VL(cfg, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))()
    print(f"init {time.perf_counter() - t:.1f}s", flush=True)
    opts = RunOptions(dtype="bfloat16", attn_impl="cudnn", vision_attn_impl="cudnn", decode_attn_impl=attn)
    s = Sampler(model, opts, loop="while")
    hs = Sampler(model, opts, loop="host")
    T, N = 2048, 64
    p = pack_prompts([list(np.random.RandomState(0).randint(1, 5000, T))] * B, cfg=cfg, pad_id=0)
    logits, cache, _ = s.prefill(p, T + 4 * N)
    sp = SamplingParams(max_new_tokens=N, eos_ids=(), pad_id=0)

    def loop():
        c = jax.tree.map(jnp.copy, cache)
        g = s.decode(c, logits, p.next_pos, sp)
        g.tokens.block_until_ready()
    t_loop = timeit(loop, n=3, warmup=1)
    t_copy = timeit(lambda: jax.block_until_ready(jax.tree.map(jnp.copy, cache)), n=3)
    res = {"while_loop_step_ms": (t_loop - t_copy) / N * 1e3}

    def hloop():
        c = jax.tree.map(jnp.copy, cache)
        g = hs.decode(c, logits, p.next_pos, sp)
        g.tokens.block_until_ready()
    res["host_loop_step_ms"] = (timeit(hloop, n=3, warmup=1) - t_copy) / N * 1e3
    if "--trace" in sys.argv:   # both loops, 32 steps each: where the while loop loses its time
        sp32 = SamplingParams(max_new_tokens=32, eos_ids=(), pad_id=0)
        for name, smp in (("host", hs), ("while", s)):
            tdir = f"/tmp/decode_trace_{name}"
            smp.decode(jax.tree.map(jnp.copy, cache), logits, p.next_pos, sp32).tokens.block_until_ready()
            c = jax.block_until_ready(jax.tree.map(jnp.copy, cache))
            with jax.profiler.trace(tdir, create_perfetto_trace=True):
                smp.decode(c, logits, p.next_pos, sp32).tokens.block_until_ready()
            for root, _, files in os.walk(tdir):
                for fn in files:
                    if fn.endswith(".json.gz"):
                        summ = summarize(os.path.join(root, fn), steps=32)
                        with open(os.path.join(out, f"decode_trace_summary_{name}_B{B}_{attn}.json"), "w") as fh:
                            json.dump(summ, fh, indent=1)
                        for t, v in summ["streams"].items():
                            print(name, t, json.dumps({k: v[k] for k in ("kernels_per_step", "busy_us_per_step",
                                                                         "span_us_per_step", "by_kind_us_per_step")}),
                                  flush=True)
                            print(name, "top", json.dumps(dict(list(v["top_kernels_us_per_step"].items())[:12])),
                                  flush=True)

    gd, st = nnx.split(model)

    def step(state, cache, tok, pos, logits_mode):
        m = nnx.merge(gd, state)
        x = m.text.embed_tokens(tok[:, None], jnp.bfloat16)
        pos3 = jnp.broadcast_to(pos[None, :, None], (3, B, 1))
        out = m.decode(x, pos3, jnp.ones((B, 1), bool), opts=opts, cache=cache, logits=logits_mode)
        return out.cache, out.hidden
    for mode in ("last", "none"):
        f = jax.jit(lambda st_, c, tk, ps: step(st_, c, tk, ps, mode), donate_argnums=(1,))
        tok = jnp.zeros((B,), jnp.int32)
        pos = jnp.asarray(p.next_pos)
        state = {"c": jax.tree.map(jnp.copy, cache)}

        def one():
            state["c"], h = f(st, state["c"], tok, pos)
            h.block_until_ready()
        res[f"single_step_logits_{mode}_ms"] = timeit(one, n=20) * 1e3
        mem = f.lower(st, state["c"], tok, pos).compile().memory_analysis()
        res[f"single_step_{mode}_temp_MB"] = mem.temp_size_in_bytes / 2**20
        res[f"single_step_{mode}_alias_MB"] = mem.alias_size_in_bytes / 2**20

    # weights-only: one GEMV per decoder matrix + the LM head
    tc = cfg.text
    mats = [model.text.q_kernel[...], model.text.k_kernel[...], model.text.v_kernel[...], model.text.o_kernel[...],
            model.text.gate_kernel[...], model.text.up_kernel[...], model.text.down_kernel[...]]

    def gemvs(mats, emb):
        acc = jnp.zeros((B,), jnp.float32)
        for l in range(tc.num_hidden_layers):
            for w in mats:
                x = jnp.full((B, w.shape[1]), 0.01, jnp.bfloat16) + acc[:, None].astype(jnp.bfloat16)
                acc = acc + jnp.einsum("bi,io->bo", x, w[l])[:, 0].astype(jnp.float32)
        h = jnp.full((B, emb.shape[1]), 0.01, jnp.bfloat16) + acc[:, None].astype(jnp.bfloat16)
        return acc + jnp.einsum("bd,vd->bv", h, emb)[:, 0].astype(jnp.float32)
    g = jax.jit(gemvs)
    res["gemv_chain_ms"] = timeit(lambda: g(mats, model.text.embed[...]).block_until_ready(), n=10) * 1e3
    wbytes = sum(int(np.prod(m.shape)) * 2 for m in mats) + int(np.prod(model.text.embed.shape)) * 2
    x = jnp.ones((1024, 1024, 1024), jnp.bfloat16)
    cp = jax.jit(lambda a: a + 1)
    bw = 2 * x.nbytes / timeit(lambda: cp(x).block_until_ready(), n=10)
    res["weight_bytes_GB"] = wbytes / 1e9
    res["weights_roofline_ms"] = wbytes / bw * 1e3
    res["copy_TBps"] = bw / 1e12
    res["B"] = B
    for k, v in res.items():
        print(f"{k:32s} {v:10.3f}", flush=True)
    res["attn"] = attn
    with open(os.path.join(out, f"decode_diag_B{B}_{attn}.json"), "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
