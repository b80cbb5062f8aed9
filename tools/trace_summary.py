"""Summarise a JAX profiler trace (perfetto `*.trace.json.gz`): kernels per step, busy vs idle GPU time, time by
kernel kind and the top kernels (vsr1_jax.profiling.summarize).

    python tools/trace_summary.py TRACE.json.gz [--steps N] [--top 15]

`--steps N` divides the counts and times by N (a trace of N identical decode or train steps)."""
import argparse
import json

from vsr1_jax.profiling import summarize


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    print(json.dumps(summarize(a.trace, a.steps, a.top), indent=1))


if __name__ == "__main__":
    main()
