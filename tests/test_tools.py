"""The GPU diagnosis tools run end to end on the tiny config (CPU; the flash-decoding kernel through the Pallas
interpreter)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_decode_variants_tool_runs_each_variant(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "OUT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "tools" / "decode_variants.py"), "--preset", "tiny", "--prompt", "24",
           "--tokens", "4", "--batches", "1,2", "--variants", "base,splits,bcast,plain", "--tag", "t"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "decode_variants_t.json").read_text())["rows"]
    got = [(r["batch"], r["variant"]) for r in rows]
    # the single-row variants are skipped at batch 2 (the same program as base there)
    assert got == [(1, "base"), (1, "splits"), (1, "bcast"), (1, "plain"), (2, "base"), (2, "splits")]
    for r in rows:
        assert r["step_ms"] > 0 and r["roofline_ms"] > 0
    # feeding one row as two copies changes no row's arithmetic: the greedy tokens are the base's
    assert {r["variant"]: r["tokens_equal_to_base"] for r in rows if r["batch"] == 1}["bcast"] == 1.0
