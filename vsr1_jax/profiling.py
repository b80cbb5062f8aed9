"""Summarise a JAX profiler trace (the perfetto `*.trace.json.gz` that `jax.profiler.trace(create_perfetto_trace=True)`
writes): per GPU stream, the kernels launched, the time they kept the GPU busy, the idle gaps between them, and the
kernels that took the most time, grouped by a coarse kind (gemm, attention, fusion, copy, ...).

The bench (`--trace`) and tools/decode_diag.py call `summarize`; tools/trace_summary.py is its command line.
`kernel_times` gives the durations of named kernels (tools/fused_decode_check.py --trace: each Pallas kernel of the
fused decode layer as the GPU ran it, without timing-by-difference noise)."""
import collections
import gzip
import json


def kind(name: str) -> str:
    n = name.lower()
    if "memcpy" in n or "memset" in n or "copy" in n:
        return "copy/memset"
    # nvjet_*: cuBLASLt's GEMM kernels on Hopper
    if ("gemm" in n or "cublas" in n or "cutlass" in n or "sm90_xmma" in n or "gemv" in n or "matmul" in n
            or n.startswith("nvjet")):
        return "gemm/gemv"
    if "flash" in n or "cudnn" in n or "attention" in n or "attn" in n or "fmha" in n or "sdpa" in n:
        return "attention"
    if "triton" in n or "pallas" in n:
        return "triton/pallas"
    if "reduce" in n or "argmax" in n or "topk" in n:
        return "reduction"
    if "fusion" in n or "loop_" in n or "input_" in n:
        return "xla fusion"
    return "other"


def _load(path: str):
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as fh:
        return json.load(fh)


def _gpu_lines(tr) -> dict:
    """{line name: [(ts, dur, name)]} of every GPU line of a trace."""
    ev = tr["traceEvents"] if isinstance(tr, dict) else tr
    pname, tname = {}, {}
    for e in ev:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            pname[e["pid"]] = e["args"]["name"]
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            tname[(e["pid"], e["tid"])] = e["args"]["name"]
    gpu = {p for p, n in pname.items() if "gpu" in n.lower() or "/device:" in n.lower()}
    lines = collections.defaultdict(list)
    for e in ev:
        if e.get("ph") == "X" and e.get("pid") in gpu:
            t = tname.get((e["pid"], e.get("tid")), str(e.get("tid")))
            lines[t].append((float(e["ts"]), float(e.get("dur", 0.0)), e.get("name", "?")))
    return lines


def _stream_kernels(lines: dict) -> dict:
    """The kernel lines of `_gpu_lines`: the "Stream #N" lines (the derived "XLA Ops" / "XLA Modules" / "Steps"
    lines repeat them at op level and are left out)."""
    streams = {t: ks for t, ks in lines.items() if t.lower().startswith("stream")}
    if not streams:
        streams = {t: ks for t, ks in lines.items()
                   if not any(w in t.lower() for w in ("xla", "ops", "modules", "steps", "launch"))}
    return streams


def kernel_times(path: str, names) -> dict:
    """Durations of the kernels whose name contains one of `names` (the longest matching name wins, so
    "vsr1_qkv_finish" is not counted as "vsr1_qkv"), over every GPU stream: {name: {"count", "total_us",
    "median_us"}}, plus "other": the kernels matching none (their count, total and the five largest by total)."""
    order = sorted(names, key=len, reverse=True)
    durs = collections.defaultdict(list)
    other = collections.Counter()
    for ks in _stream_kernels(_gpu_lines(_load(path))).values():
        for _, d, n in ks:
            hit = next((x for x in order if x in n), None)
            if hit is None:
                other[n] += d
                durs[None].append(d)
            else:
                durs[hit].append(d)
    out = {}
    for x in names:
        ds = sorted(durs.get(x, []))
        out[x] = {"count": len(ds), "total_us": sum(ds), "median_us": ds[len(ds) // 2] if ds else None}
    out["other"] = {"count": len(durs[None]), "total_us": sum(durs[None]),
                    "top_us": {n[:120]: v for n, v in other.most_common(5)}}
    return out


def summarize(path: str, steps: int = 1, top: int = 15) -> dict:
    lines = _gpu_lines(_load(path))
    streams = _stream_kernels(lines)
    out = {"trace": path, "steps": steps, "gpu_lines": sorted(lines), "streams": {}}
    for t, ks in sorted(streams.items(), key=lambda kv: -len(kv[1])):
        ks.sort()
        busy = sum(d for _, d, _ in ks)
        span = ks[-1][0] + ks[-1][1] - ks[0][0]
        by_kind = collections.Counter()
        n_kind = collections.Counter()
        by_name = collections.Counter()
        for _, d, n in ks:
            by_kind[kind(n)] += d
            n_kind[kind(n)] += 1
            by_name[n] += d
        gaps = [max(0.0, ks[i + 1][0] - (ks[i][0] + ks[i][1])) for i in range(len(ks) - 1)]
        out["streams"][t] = {
            "kernels_per_step": len(ks) / steps,
            "busy_us_per_step": busy / steps,
            "span_us_per_step": span / steps,
            "idle_fraction_of_span": 1.0 - busy / span if span else 0.0,
            "median_kernel_us": sorted(d for _, d, _ in ks)[len(ks) // 2],
            "median_gap_us": sorted(gaps)[len(gaps) // 2] if gaps else 0.0,
            "by_kind_us_per_step": {k: v / steps for k, v in by_kind.most_common()},
            "by_kind_kernels_per_step": {k: n_kind[k] / steps for k, _ in by_kind.most_common()},
            "top_kernels_us_per_step": {n[:120]: v / steps for n, v in by_name.most_common(top)},
        }
    return out

