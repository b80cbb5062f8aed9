"""Logit parity of `Qwen3VL.__call__` with HF transformers on a ~1.9k-token video prompt, in fp32 (no TF32 on either
side) and bf16: max relative logit error and argmax agreement, same weights.

    python -m benchmarks.parity [--frames-hw 8,28,32]
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common as C
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.models.qwen3_vl.rope import get_rope_index


def bench_parity(cfg, groups=8, h=28, w=32):
    import torch  # lazy: the HF side of the comparison needs torch
    ids, grid, px = C.video_prompt(cfg, groups, h, w, seed=1)
    pos, _ = get_rope_index(ids, image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                            video_grid_thw=[grid])
    res = {"tokens": int(ids.shape[1]), "grid": list(grid)}
    for dtype in ("float32", "bfloat16"):
        prev = jax.config.jax_default_matmul_precision
        if dtype == "float32":  # full fp32 matmuls on both sides (no TF32)
            jax.config.update("jax_default_matmul_precision", "highest")
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        hf, ours = C.hf_and_ours(cfg, dtype)
        with torch.no_grad():
            ref = hf(**C.hf_inputs(cfg, ids, grid, px, getattr(torch, dtype))).logits.float().cpu().numpy()[0]
        del hf
        C.empty_cache()
        opts = RunOptions(dtype=dtype)
        f = jax.jit(lambda m, i, p, x: m(i, p, opts=opts, video_pixels=x, video_grids=(grid,)).logits)
        out = np.asarray(f(ours, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(px)))[0]
        rel = float(np.abs(out - ref).max() / np.abs(ref).max())
        agree = float((out.argmax(-1) == ref.argmax(-1)).mean())
        res[dtype] = {"max_rel_logit_err": rel, "argmax_agreement": agree}
        C.log(f"parity {dtype}: max|Δ|/max|ref| = {rel:.3e}, argmax agreement {agree:.4f}")
        del ours
        jax.config.update("jax_default_matmul_precision", prev)
    return res


def main(argv=None):
    ap = C.parser(__doc__, frames_hw=("8,28,32", "video size GROUPS,H,W in patches"))

    def run(args, report):
        report.code(Qwen3VL.__call__)
        report.update(**bench_parity(get_preset(args.preset), *args.frames_hw))
    return C.bench_main("parity", ap, argv, run)


if __name__ == "__main__":
    C.cli(main)
