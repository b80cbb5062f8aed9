"""The flash-decoding kernel on the GPU: agreement with the XLA cached attention and time of both, at the 2B model's
attention shapes (16 query heads, 8 kv heads, head_dim 128, bf16 cache of 28 layers), for a few batch sizes and
cache lengths. Prints one JSON line per case.   python tools/decode_attn_check.py
"""
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks/ beside the package

from benchmarks.common import timeit
from vsr1_jax.kernels.decode_attention import NEG, decode_attention
from vsr1_jax.models.qwen3_vl.text import cached_attention


def main():
    L, K, Hq, hd = 28, 8, 16, 128
    for B, S in ((1, 2176), (1, 6463), (16, 7484)):
        rng = np.random.default_rng(B * S)
        kc = jnp.asarray(rng.standard_normal((L, B, K, S, hd)), jnp.bfloat16)
        vc = jnp.asarray(rng.standard_normal((L, B, K, S, hd)), jnp.bfloat16)
        q = jnp.asarray(rng.standard_normal((B, 1, Hq, hd)), jnp.bfloat16)
        mask = np.ones((B, S), bool)
        mask[:, S - 200:] = False                          # unwritten tail
        for b in range(B):
            mask[b, : 37 * (b % 3 + 1)] = False            # left padding of varying length
        maskj = jnp.asarray(mask)
        bias = jnp.where(maskj, 0.0, NEG)

        # all 28 layers, as in one decode step
        def xla(q, kc, vc):
            return sum(cached_attention(q, kc[l], vc[l], maskj[:, None, :]).astype(jnp.float32) for l in range(L))

        def pal(q, kc, vc):
            return sum(decode_attention(q, kc, vc, l, bias).astype(jnp.float32) for l in range(L))
        fx, fp = jax.jit(xla), jax.jit(pal)
        ox, op = fx(q, kc, vc), fp(q, kc, vc)
        one_x = cached_attention(q, kc[5], vc[5], maskj[:, None, :]).astype(jnp.float32)
        one_p = decode_attention(q, kc, vc, 5, bias).astype(jnp.float32)
        res = {"B": B, "S": S, "max_abs_diff_layer5": float(jnp.abs(one_x - one_p).max()),
               "max_abs_layer5": float(jnp.abs(one_x).max()),
               "sum28_max_abs_diff": float(jnp.abs(ox - op).max()),
               "xla_28_layers_ms": timeit(lambda: fx(q, kc, vc).block_until_ready(), n=10) * 1e3,
               "pallas_28_layers_ms": timeit(lambda: fp(q, kc, vc).block_until_ready(), n=10) * 1e3,
               "cache_read_floor_ms_at_3TBps": 2 * kc.nbytes / 3e12 * 1e3}
        print(json.dumps(res), flush=True)
        del kc, vc


if __name__ == "__main__":
    main()
