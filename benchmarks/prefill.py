"""Prefill of a ~8k-token video prompt at batch 1 (bf16): tokens/s and MFU of `Qwen3VL.__call__` (the forward every
prefill, scoring and embedding runs) under the production attention (fused cudnn on NVIDIA GPUs) and dense XLA
attention, beside the HF PyTorch forward (sdpa) on the same weights in the same process.

    python -m benchmarks.prefill [--frames-hw 36,28,32] [--hf eager|none]
"""
from __future__ import annotations


import jax
import jax.numpy as jnp

from benchmarks import common as C
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.rope import get_rope_index


def run(args, report: C.Report) -> None:
    import torch  # lazy: only the HF side of the comparison needs torch
    cfg = get_preset(args.preset)
    ids, grid, px = C.video_prompt(cfg, *args.frames_hw)
    T = int(ids.shape[1])
    pos, _ = get_rope_index(ids, image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                            video_grid_thw=[grid])
    with_hf = bool(C.hf_impls(args.hf))
    hf, ours = C.hf_and_ours(cfg, "bfloat16", with_hf=with_hf)
    ceil = C.ceilings()
    prod = C.bench_opts()
    report.code(Qwen3VL.__call__)
    report.update(tokens=T, grid=list(grid), flops=C.prefill_flops(cfg, T, grid), ceilings=ceil, rows=[])
    impls = [prod.attn_impl] + [i for i in ("xla",) if i != prod.attn_impl]
    for impl in impls:
        opts = C.bench_opts(attn_impl=impl, vision_attn_impl=impl)
        f = jax.jit(lambda m, i, p, x: m(i, p, opts=opts, video_pixels=x, video_grids=(grid,), logits="last").logits)
        a = (ours, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(px, jnp.bfloat16))
        row = {"impl": "ours", "attn_impl": impl, "production": impl == prod.attn_impl}
        with C.hf_errors(row, "error", f"ours ({impl})"):   # report and go on with the other kernel
            t = C.timeit(lambda: f(*a).block_until_ready())
            row.update(seconds=t, tokens_per_s=T / t, **C.mfu_fields(report["flops"], t, ceil))
            C.log(f"ours ({impl}): {t * 1e3:.1f} ms, {T / t:,.0f} tok/s, {C.mfu_text(row)}")
        report["rows"].append(row)
        report.save()
    if hf is not None:
        inp = C.hf_inputs(cfg, ids, grid, px, torch.bfloat16)

        def fwd():
            with torch.no_grad():
                hf(**inp, logits_to_keep=1)
            C.sync()
        t = C.timeit(fwd)
        row = {"impl": "hf_eager", "attn_impl": "sdpa", "production": False, "seconds": t, "tokens_per_s": T / t,
               **C.mfu_fields(report["flops"], t, ceil)}
        ours_t = next((r["seconds"] for r in report["rows"] if r.get("production") and "seconds" in r), None)
        if ours_t:
            row["production_speedup"] = t / ours_t
        report["rows"].append(row)
        C.log(f"HF sdpa: {t * 1e3:.1f} ms, {T / t:,.0f} tok/s, {C.mfu_text(row)}")


def main(argv=None):
    ap = C.parser(__doc__, hf="eager", frames_hw=("36,28,32", "video size GROUPS,H,W in patches (8,268 tokens)"))
    return C.bench_main("prefill", ap, argv, run)


if __name__ == "__main__":
    C.cli(main)
