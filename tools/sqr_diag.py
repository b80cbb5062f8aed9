"""Where does the 7-step cached SQR rollout spend its time? (run on the GPU machine)

On the bench's ~6.4k-token video prompt (2B, bf16, random weights): the rollout as one jit with the cache donated;
one jitted single-position decode step (no logits) on the same cache; XLA's cost analysis (bytes accessed) of one
step; the byte floor (weights + cache read per step). With --trace, a profiler trace of one rollout (perfetto JSON
under $OUT/trace). Prints JSON.   python tools/sqr_diag.py [PRESET [G,H,W]] [--trace]
"""
import gzip
import json
import os
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks/ beside the package

from benchmarks.common import timeit, timeit_fresh
from benchmarks.sqr import sqr_setup
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.config import get_preset


def main():
    cfg = get_preset(sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "qwen3_vl_2b")
    groups, h, w = (28, 28, 32) if len(sys.argv) < 3 or sys.argv[2].startswith("-") else (
        int(x) for x in sys.argv[2].split(","))
    su = sqr_setup(cfg, groups, h, w)
    model, head, opts, cache0, h_last = su["model"], su["head"], su["opts"], su["cache"], su["h_last"]
    T, slot, rpos = su["ids"].shape[1], jnp.asarray([su["ridx"]], jnp.int32), su["rpos"]
    gd, st = nnx.split(model)
    hgd, hst = nnx.split(head)

    def roll(st, hst, cache, h):
        return S.rollout_cached(nnx.merge(gd, st), nnx.merge(hgd, hst), cache, h, slot, rpos, opts=opts)

    res = {"prompt_tokens": int(T), "device": jax.devices()[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS")}
    out = os.environ.get("OUT", ".")
    fresh = lambda: jax.tree.map(jnp.copy, cache0)  # noqa: E731
    comp = jax.jit(roll, donate_argnums=(2,)).lower(st, hst, fresh(), h_last).compile()
    res["rollout_donated_ms"] = timeit_fresh(lambda c: comp(st, hst, c, h_last)[0], fresh) * 1e3
    hlo = comp.as_text()
    if "--trace" in sys.argv:
        with gzip.open(os.path.join(out, "rollout_hlo.txt.gz"), "wt") as fh:
            fh.write(hlo)
    res["rollout_hlo_fusions"] = hlo.count(" fusion(")
    res["rollout_hlo_weight_sized_loop_fusions"] = hlo.count("bf16[1,2048,2048]{2,1,0} fusion(")
    if "--trace" in sys.argv:
        c = jax.block_until_ready(fresh())
        tdir = "/tmp/sqr_trace"
        with jax.profiler.trace(tdir, create_perfetto_trace=True):
            jax.block_until_ready(comp(st, hst, c, h_last)[0])
        for root, _, files in os.walk(tdir):
            for fn in files:
                if fn.endswith(".json.gz"):
                    shutil.copy(os.path.join(root, fn), os.path.join(out, "rollout_" + fn))

    def step(st, cache, x, ps):
        m = nnx.merge(gd, st)
        pos3 = jnp.broadcast_to(ps[None, :, None], (3, 1, 1))
        out = m.decode(x, pos3, jnp.ones((1, 1), bool), opts=opts, cache=cache, logits="none")
        return out.cache, out.hidden
    f = jax.jit(step, donate_argnums=(1,))
    x = jnp.zeros((1, 1, cfg.text.hidden_size), jnp.bfloat16)
    c = {"c": S.invalidate_after(jax.tree.map(jnp.copy, cache0), slot)}

    def one():
        c["c"], hh = f(st, c["c"], x, rpos)
        hh.block_until_ready()
    res["single_step_ms"] = timeit(one, n=20) * 1e3
    ca = f.lower(st, c["c"], x, rpos).compile().cost_analysis()
    ca = ca[0] if isinstance(ca, list) else ca
    res["single_step_bytes_GB"] = float(ca.get("bytes accessed", 0)) / 1e9
    tm = model.text
    wbytes = sum(getattr(tm, n)[...].nbytes for n in tm._LAYER_KEYS)
    kv = 2 * int(np.prod(cache0.k.shape)) * cache0.k.dtype.itemsize
    res["floor_step_GB"] = (wbytes + kv) / 1e9
    print(json.dumps(res, indent=1), flush=True)
    with open(os.path.join(out, "sqr_diag.json"), "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
