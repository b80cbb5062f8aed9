"""Prefill of 16 text prompts of unequal lengths (4k-8k tokens, the agent's batch) through `Sampler.prefill`: the
fused cudnn kernel on right-padded rows (the GPU default, `Sampler.padding`) vs dense XLA attention on left-padded
rows, same weights (time, first-token agreement). The vision tower is the same in both and left out.

    python -m benchmarks.mixed [--lengths 4096,8192] [--batch 16]
"""
from __future__ import annotations


import numpy as np

from benchmarks import common as C
from vsr1_jax.generate.sampler import Sampler, pack_prompts
from vsr1_jax.models.qwen3_vl.config import get_preset


def run(args, report: C.Report) -> None:
    cfg = get_preset(args.preset)
    lo, hi = args.lengths
    batch, bucket = args.batch, 64
    rng = np.random.RandomState(3)
    lens = np.linspace(lo, hi, batch).astype(int)
    seqs = [list(rng.randint(1, min(5000, cfg.text.vocab_size // 2), size=n)) for n in lens]
    T = -(-int(lens.max()) // bucket) * bucket
    _, ours = C.hf_and_ours(cfg, "bfloat16", with_hf=False)
    report.code(Sampler.prefill)
    report.update(batch=batch, lengths=[int(x) for x in lens], padded_length=T, real_tokens=int(lens.sum()),
                  padded_tokens=batch * T)
    first = {}
    # off GPUs (smoke runs) the fused side is XLA's attention on the same right-padded rows
    fused = "cudnn" if C.GPU else "xla"
    for name, impl, padding in (("fused", fused, "right"), ("dense", "xla", "left")):
        sampler = Sampler(ours, C.bench_opts(attn_impl=impl, vision_attn_impl=impl))
        p = pack_prompts(seqs, cfg=cfg, pad_id=0, length=T, padding=padding)
        rows = batch
        while True:   # dense attention materialises [rows, heads, T, T] scores: halve the rows until it fits
            try:
                chunks = [p._replace(ids=p.ids[i:i + rows], mask=p.mask[i:i + rows],
                                     positions=p.positions[:, i:i + rows], next_pos=p.next_pos[i:i + rows])
                          for i in range(0, batch, rows)]
                run_ = lambda: [sampler.prefill(c, T + 1)[0] for c in chunks]  # noqa: E731
                t = C.timeit(run_, n=3)
                break
            except Exception as e:  # noqa: BLE001 - out of memory: report and retry smaller
                C.log(f"mixed prefill {name}: {rows} rows failed ({type(e).__name__}: {str(e)[:200]})")
                if rows == 1:
                    raise
                rows //= 2
        first[name] = np.concatenate([np.asarray(lg, np.float32) for lg in run_()])
        report[name] = {"attn_impl": impl, "padding": padding, "seconds": t, "rows_per_call": rows,
                        "real_tokens_per_s": report["real_tokens"] / t, "production": name == "fused"}
        report.save()
        C.log(f"mixed prefill {name} ({impl}, {padding}-padded, {rows} rows per call): {t * 1e3:.1f} ms, "
              f"{report['real_tokens'] / t:,.0f} real tok/s")
    a, b = first["fused"], first["dense"]
    report.update(speedup_fused_vs_dense=report["dense"]["seconds"] / report["fused"]["seconds"],
                  first_token_argmax_agreement=float((a.argmax(-1) == b.argmax(-1)).mean()),
                  first_token_max_rel_logit_diff=float(np.abs(a - b).max() / np.abs(b).max()))
    C.log(f"mixed prefill: fused ({fused}) {report['speedup_fused_vs_dense']:.2f}x dense; first-token argmax "
          f"agreement {report['first_token_argmax_agreement']:.3f}")


def main(argv=None):
    ap = C.parser(__doc__)
    ap.add_argument("--lengths", type=C.int_list, default=(4096, 8192), help="prompt lengths LO,HI")
    ap.add_argument("--batch", type=int, default=16)
    return C.bench_main("mixed", ap, argv, run)


if __name__ == "__main__":
    C.cli(main)
