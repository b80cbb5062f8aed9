"""The trace summary the bench's --trace and tools/decode_diag.py report: counts, busy/idle and kinds per stream."""
import gzip
import json

import pytest

from vsr1_jax.profiling import kernel_times, kind, summarize


def _trace(tmp_path):
    ev = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream #7(Compute)"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 8, "args": {"name": "XLA Ops"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        # two steps: gemm 10 us, fusion 4 us, a gap of 6 us, then the next step
        {"ph": "X", "pid": 1, "tid": 7, "ts": 0, "dur": 10, "name": "sm90_xmma_gemm_bf16"},
        {"ph": "X", "pid": 1, "tid": 7, "ts": 10, "dur": 4, "name": "loop_add_fusion"},
        {"ph": "X", "pid": 1, "tid": 7, "ts": 20, "dur": 10, "name": "sm90_xmma_gemm_bf16"},
        {"ph": "X", "pid": 1, "tid": 7, "ts": 30, "dur": 4, "name": "loop_add_fusion"},
        {"ph": "X", "pid": 1, "tid": 8, "ts": 0, "dur": 34, "name": "dot.1"},          # derived line: not counted
        {"ph": "X", "pid": 2, "tid": 1, "ts": 0, "dur": 100, "name": "PjitFunction"},  # host: not counted
    ]
    p = tmp_path / "t.trace.json.gz"
    with gzip.open(p, "wt") as fh:
        json.dump({"traceEvents": ev}, fh)
    return str(p)


def test_summary_counts_busy_idle_and_kinds(tmp_path):
    s = summarize(_trace(tmp_path), steps=2)
    assert list(s["streams"]) == ["Stream #7(Compute)"]
    v = s["streams"]["Stream #7(Compute)"]
    assert v["kernels_per_step"] == 2
    assert v["busy_us_per_step"] == 14
    assert v["span_us_per_step"] == 17
    assert v["idle_fraction_of_span"] == pytest.approx(6 / 34)
    assert v["by_kind_us_per_step"] == {"gemm/gemv": 10, "xla fusion": 4}
    assert v["median_gap_us"] == 0


def test_kernel_kinds():
    assert kind("Memcpy DtoD") == "copy/memset"
    assert kind("cudnn_generated_fort_native_sdpa") == "attention"
    assert kind("decode_attention_pallas") == "attention"
    assert kind("triton_softmax") == "triton/pallas"
    assert kind("nvjet_sm90_tst_128x128_64x6_2x1_v_bz_NNT") == "gemm/gemv"   # cuBLASLt on Hopper (SFT trace)


def test_kernel_times_by_name(tmp_path):
    """The fused decode check's --trace figures: durations per named kernel, the longest matching name winning."""
    ev = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream #7(Compute)"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 8, "args": {"name": "XLA Ops"}},
        {"ph": "X", "pid": 1, "tid": 7, "ts": 0, "dur": 20, "name": "vsr1_qkv"},
        {"ph": "X", "pid": 1, "tid": 7, "ts": 20, "dur": 5, "name": "vsr1_qkv_finish"},
        {"ph": "X", "pid": 1, "tid": 7, "ts": 25, "dur": 30, "name": "vsr1_qkv"},
        {"ph": "X", "pid": 1, "tid": 7, "ts": 55, "dur": 3, "name": "loop_divide_fusion"},
        {"ph": "X", "pid": 1, "tid": 8, "ts": 0, "dur": 58, "name": "vsr1_qkv"},   # derived line: not counted
    ]
    p = tmp_path / "k.trace.json.gz"
    with gzip.open(p, "wt") as fh:
        json.dump({"traceEvents": ev}, fh)
    t = kernel_times(str(p), ["vsr1_qkv", "vsr1_qkv_finish", "vsr1_down"])
    assert t["vsr1_qkv"] == {"count": 2, "total_us": 50, "median_us": 30}
    assert t["vsr1_qkv_finish"] == {"count": 1, "total_us": 5, "median_us": 5}
    assert t["vsr1_down"] == {"count": 0, "total_us": 0, "median_us": None}
    assert t["other"] == {"count": 1, "total_us": 3, "top_us": {"loop_divide_fusion": 3}}
