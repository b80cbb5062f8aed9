"""Decode throughput: a ~2k-token video prompt, `--new-tokens` greedy tokens at batch 1/8/64, through
`Sampler.generate` as production builds it (`Sampler(model, RunOptions.from_config(config.model))`: the production
decode loop and decode attention), beside HF `generate` (eager, and static cache + torch.compile) on the same
weights in the same process.

    python -m benchmarks.decode [--batches 1,8,64] [--new-tokens 256] [--hf eager,static] [--loops all]
        [--decode-layer xla,fused]

A row per (batch, implementation): tokens/s, step time and its fraction of the decode roofline (weights + live KV
cache at the HBM read bandwidth measured in this process). `"production": true` marks the rows that time the loop
production runs; `--loops all` adds the other loop (production false). The decode step is (generate - prefill) /
new tokens: `generate` of one prompt broadcast to B rows (the GRPO group path), the prefill of the prompt timed
alone.

`--decode-layer xla,fused` times the production loop once per decoder-layer implementation of the decode steps
(`RunOptions.decode_layer_impl`: the XLA layers, or the fused Pallas kernels of issue 25 item 1) in the same process;
`decode_layers` in the JSON gives, per implementation, the path that ran (`run_options.decode_layer_path`: an
implementation that does not apply here -- CPU, a preset whose dims Triton does not take -- is reported and not timed),
the functions it runs (`code_path`), and its step ms and fraction of the read roofline per batch. Rows carry
`decode_layer`; the production rows are those of the config's implementation.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from benchmarks import common as C
from vsr1_jax.generate.sampler import SamplingParams, Sampler, pack_prompts
from vsr1_jax.kernels import fused_decode
from vsr1_jax.models.qwen3_vl import text
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.run_options import DECODE_LAYER_IMPLS, decode_layer_path

LOOPS = ("host", "while")
# what a decode step's layers run, per decode_layer path (the rest of the step is the same Sampler code)
LAYER_CODE = {"xla": (text.TextModel.__call__, text.decoder_layer),
              "fused": (text.TextModel.__call__, text.fused_decode_layers, fused_decode.fused_decoder_layer_decode)}
LAYER_CODE["interpret"] = LAYER_CODE["fused"]


def decode_layers(arg: str) -> tuple[str, ...]:
    """--decode-layer: "config" or a comma list of RunOptions.decode_layer_impl values."""
    impls = tuple(x for x in arg.split(",") if x)
    bad = [x for x in impls if x not in DECODE_LAYER_IMPLS + ("config",)]
    if bad or not impls:
        raise ValueError(f"--decode-layer {arg!r}: expected 'config' or a comma list of {DECODE_LAYER_IMPLS}")
    return impls


def run(args, report: C.Report) -> None:
    cfg = get_preset(args.preset)
    ids, grid, px = C.video_prompt(cfg, *args.frames_hw, seed=2)
    T, N = int(ids.shape[1]), args.new_tokens
    impls = C.hf_impls(args.hf)
    hf, ours = C.hf_and_ours(cfg, "bfloat16", with_hf=bool(impls))
    ceil = C.ceilings()
    opts = C.bench_opts(**({"decode_attn_impl": args.decode_attn} if args.decode_attn != "config" else {}))
    prod = Sampler(ours, opts)        # what production builds: the loop and kernels come from the options
    layer_impls = dict.fromkeys(opts.decode_layer_impl if x == "config" else x for x in args.decode_layer)
    report.code(Sampler.generate, Sampler.prefill, Sampler.decode)
    layers = {}
    samplers = {}                     # (decode_layer, loop) -> Sampler
    primary = {}                      # decode_layer -> its Sampler on the production loop
    for impl in layer_impls:
        path, why = decode_layer_path(impl, cfg.text, T=1, stacked_cache=opts.unroll_decode, devices=prod.mesh.size)
        layers[impl] = {"path": path, "why": why, "code_path": [C.qualname(f) for f in LAYER_CODE[path]],
                        "step_ms": {}, "fraction_of_roofline": {}}
        if impl != "xla" and path == "xla":
            C.log(f"decode layer {impl!r} not timed: the XLA layers would run ({why})")
            continue
        report.code(*LAYER_CODE[path])
        iopts = dataclasses.replace(opts, decode_layer_impl=impl)
        base = prod if iopts == opts else Sampler(ours, iopts)
        samplers[impl, base.loop] = primary[impl] = base
        if args.loops == "all":
            for lp in LOOPS:
                if lp == base.loop:
                    continue
                try:
                    samplers[impl, lp] = Sampler(ours, iopts, loop=lp)
                except ValueError as e:   # a loop the sampler no longer offers
                    C.log(f"loop {lp!r} not timed: {e}")
    # the production rows: the production loop under the config's options (an overridden kernel is not production)
    is_prod = lambda smp: smp is prod and args.decode_attn == "config"  # noqa: E731
    report.update(prompt_tokens=T, new_tokens=N, grid=list(grid), options=dataclasses.asdict(opts),
                  production_loop=prod.loop, decode_layers=layers, ceilings=ceil, rows=[])
    report.save()
    p = pack_prompts([list(ids[0])], cfg=cfg, pad_id=0, video_pixels=px, video_grids=[grid], padding=prod.padding)
    sp = SamplingParams(max_new_tokens=N, eos_ids=(), pad_id=0)
    if hf is not None:  # keep the GPU for our run; HF comes back for its own
        hf.to("cpu")
        C.empty_cache()
    t_pre = C.timeit(lambda: jax.block_until_ready(prod.prefill(p, T + N + 8)[0]), n=3)
    report["prefill_s"] = t_pre
    for B in args.batches:
        for (layer, loop), smp in samplers.items():
            def gen():
                g = smp.generate(p, sp, group=B, capture_id=cfg.vision_end_token_id, extra_slots=8)
                g.tokens.block_until_ready()
                return g
            try:
                g = gen()  # compile
                if int(np.asarray(g.lengths).min()) != N:
                    raise RuntimeError(f"rows stopped before {N} tokens")
                del g
                t = C.timeit(gen, n=3, warmup=0)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory for one loop: report it, go on
                report["rows"].append({"batch": B, "impl": "ours", "loop": loop, "decode_layer": layer,
                                       "production": is_prod(smp), "error": f"{type(e).__name__}: {str(e)[:300]}"})
                C.log(f"ours B={B} loop={loop} layer={layer}: {report['rows'][-1]['error']}")
                continue
            step = max(t - t_pre, 1e-9) / N
            row = {"batch": B, "impl": "ours", "loop": loop, "production": is_prod(smp),
                   "decode_attn": smp.opts.decode_attn_impl, "decode_layer": layer,
                   "decode_layer_path": layers[layer]["path"], "generate_s": t,
                   **C.decode_row(step, cfg, B, T + N / 2, ceil)}
            row["tokens_per_s"] = B * N / (t - t_pre) if t > t_pre else None
            report["rows"].append(row)
            if smp is primary[layer]:
                layers[layer]["step_ms"][B] = row["step_ms"]
                layers[layer]["fraction_of_roofline"][B] = row["fraction_of_roofline"]
            report.save()
            C.log(f"ours B={B} loop={loop} layer={layer}{' (production)' if is_prod(smp) else ''}: "
                  f"{row['tokens_per_s'] or 0:,.0f} "
                  f"tok/s, step {row['step_ms']:.2f} ms = {row['fraction_of_roofline']:.0%} of the "
                  f"{row['roofline_step_ms']:.2f}-ms roofline")
        if hf is None:
            continue
        import torch  # lazy: only the HF side of the comparison needs torch
        hf.to(C.DEVICE)
        inp = C.hf_inputs(cfg, ids, grid, px, torch.bfloat16, rows=B)
        try:
            tp = C.hf_prefill_seconds(hf, inp)
        except Exception as e:  # noqa: BLE001 - a failing baseline (out of memory, a compile error) is recorded
            tp = None
            C.log(f"HF B={B}: prefill failed: {e}"[:300])
        for impl in impls:
            g = C.HFGenerate(hf, impl)
            row = {"batch": B, **g.describe(), "production": False}
            with C.hf_errors(row, "error", f"HF {impl} B={B}"):
                if tp is None:
                    raise RuntimeError("the prefill did not fit")
                tg = g.seconds(inp, N)
                row.update(g.describe(), generate_s=tg, prefill_s=tp,
                           **C.decode_row(max(tg - tp, 1e-9) / N, cfg, B, T + N / 2, ceil))
                row["tokens_per_s"] = B * N / max(tg - tp, 1e-9)
                C.log(f"HF {impl} B={B}: generate {tg:.2f} s (prefill {tp:.2f} s), step {row['step_ms']:.2f} ms = "
                      f"{row['fraction_of_roofline']:.0%} of the roofline")
            report["rows"].append(row)
            report.save()
        hf.to("cpu")
        C.empty_cache()
    for B in args.batches:  # speedups of the production row over each baseline at the same batch
        ours_row = next((r for r in report["rows"] if r["batch"] == B and r.get("production") and "step_ms" in r), None)
        for r in report["rows"]:
            if ours_row and r["batch"] == B and r["impl"].startswith("hf_") and "step_ms" in r:
                r["production_speedup"] = r["step_ms"] / ours_row["step_ms"]


def main(argv=None):
    ap = C.parser(__doc__, hf="eager,static",
                  frames_hw=("8,28,32", "video size GROUPS,H,W in patches (8,28,32: 1,912 tokens)"))
    ap.add_argument("--batches", type=C.int_list, default=(1, 8, 64))
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--loops", default="all", choices=("production", "all"),
                    help="time the production loop only, or every loop (the others marked production: false)")
    ap.add_argument("--decode-attn", default="config", choices=("config", "xla", "pallas"),
                    help="single-position attention; 'config' = what configs/base.py gives on this platform")
    ap.add_argument("--decode-layer", type=decode_layers, default=("config",),
                    help="comma list of decoder-layer implementations of the decode steps, each timed through the "
                         f"production loop: {', '.join(DECODE_LAYER_IMPLS)} or config (configs/base.py's)")
    return C.bench_main("decode", ap, argv, run)


if __name__ == "__main__":
    C.cli(main)
