"""The GPU diagnosis tools run end to end on the tiny config (CPU; the flash-decoding kernel through the Pallas
interpreter); tools/compare_demo_runs.py tells equal runs from different ones."""
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


def _fake_demo_run(root: Path, loss: float, seconds: float) -> Path:
    for ev in ("eval_untrained", "eval_sft", "eval_grpo"):
        (root / ev).mkdir(parents=True)
        (root / ev / "detail_toy_test.jsonl").write_text(json.dumps({"qid": "q1", "final_rank": 2}) + "\n")
        (root / ev / "result.json").write_text(json.dumps({"R@1": 0.5, "source_jsonl": str(root / ev)}))
    for st in ("sft", "grpo"):
        (root / st).mkdir()
        (root / st / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": loss, "step_s": seconds,
                                                              "compiles": int(seconds)}) + "\n")
    (root / "demo_report.md").write_text(f"# report\nTime (s): SFT {seconds}\n")
    return root


def test_compare_demo_runs_ignores_timings_and_finds_a_changed_loss(tmp_path):
    """tools/compare_demo_runs.py (issue 24's "behaviour unchanged" evidence): paths, seconds and compile counts
    may differ; a loss may not."""
    tool = [sys.executable, str(ROOT / "tools" / "compare_demo_runs.py")]
    a = _fake_demo_run(tmp_path / "a", 1.25, 3.0)
    same = subprocess.run(tool + [str(a), str(_fake_demo_run(tmp_path / "b", 1.25, 7.0))], capture_output=True,
                          text=True)
    assert same.returncode == 0 and same.stdout.startswith("same"), same.stdout + same.stderr
    other = subprocess.run(tool + [str(a), str(_fake_demo_run(tmp_path / "c", 1.5, 3.0))], capture_output=True,
                           text=True)
    assert other.returncode == 1 and "sft step 1: loss 1.25 vs 1.5" in other.stdout, other.stdout + other.stderr
