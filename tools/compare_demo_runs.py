"""Do two demo runs of the same settings agree (issue 24: a refactor leaves the eval output and the training losses
unchanged)? Compares each evaluation's detail rows and result.json, every SFT / GRPO metrics.jsonl row (timings,
compile counts and throughputs aside) and demo_report.md (its timing line aside).

    python tools/compare_demo_runs.py RUN_A RUN_B      # two --config.output_dir folders; exit status 1 if they differ

A shortened demo on a Stage 0 both runs share (copy one data_root for each), e.g. from a checkout of each commit:
    python -m vsr1_jax.main --config=configs/toy.py --config.data_root=A/data --config.output_dir=A \\
        --config.eval.max_samples=12 --config.sft.max_steps=3 --config.grpo.max_steps=2
"""
import argparse
import json
import os
import sys

EVALS = ("eval_untrained", "eval_sft", "eval_grpo")
STAGES = ("sft", "grpo")
# what depends on the machine's speed or on how the phases are timed and counted, not on the numbers computed
TIMING = ("compiles", "data_compiles", "tokens_per_s", "rollout_tokens_per_s")


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def compare(a: str, b: str) -> list[str]:
    out = []
    for ev in EVALS:
        da, db = os.path.join(a, ev), os.path.join(b, ev)
        if not os.path.isdir(da) or not os.path.isdir(db):
            out.append(f"{ev}: missing in {a if not os.path.isdir(da) else b}")
            continue
        detail = [f for f in os.listdir(da) if f.startswith("detail_") and f.endswith(".jsonl")]
        for f in detail:
            if _rows(os.path.join(da, f)) != _rows(os.path.join(db, f)):
                out.append(f"{ev}/{f}: detail rows differ")
        ra, rb = (json.load(open(os.path.join(d, "result.json"))) for d in (da, db))
        for r in (ra, rb):
            r.pop("source_jsonl", None)   # the run's own path
        if ra != rb:
            out.append(f"{ev}/result.json differs")
    for st in STAGES:
        pa, pb = os.path.join(a, st, "metrics.jsonl"), os.path.join(b, st, "metrics.jsonl")
        if not (os.path.exists(pa) and os.path.exists(pb)):
            continue
        ma, mb = _rows(pa), _rows(pb)
        if len(ma) != len(mb):
            out.append(f"{st}: {len(ma)} vs {len(mb)} steps")
        for x, y in zip(ma, mb):
            keys = {k for k in set(x) & set(y) if not k.endswith("_s") and k not in TIMING}
            bad = sorted(k for k in keys if x[k] != y[k])
            if bad:
                out.append(f"{st} step {x.get('step')}: {', '.join(f'{k} {x[k]!r} vs {y[k]!r}' for k in bad[:4])}")
    rep = [open(os.path.join(d, "demo_report.md")).read().splitlines() for d in (a, b)]
    if [ln for ln in rep[0] if not ln.startswith("Time (s)")] != [ln for ln in rep[1] if not ln.startswith("Time (s)")]:
        out.append("demo_report.md differs")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args(argv)
    diffs = compare(args.a, args.b)
    print("\n".join(diffs) if diffs else f"same: {', '.join(EVALS)} detail rows and results, {', '.join(STAGES)} "
          "losses and metrics (timings aside), demo_report.md")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
