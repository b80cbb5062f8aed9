"""The evaluation path (episode engine -> detail rows -> report) writes byte-identical detail JSONL and result.json
to the golden files (tests/fixtures/eval_golden, tools/make_eval_golden.py): the demo policy, rigged so that most
episodes refine and run a second turn, on a small toy corpus.

History of the files: written by the evaluation code before the episode engine replaced it (commit efb88d4, on
28a2dcd's code), and reproduced byte for byte by the engine (0564662). The padded vision batch (b1ea502) computes
the position embedding as HF's 4-corner gather instead of a separable product, which moved the latent diagnostics
of the detail rows (rollout_latent_norms / _cos_prev / _head) by at most 4e-6 relative; every rank, answer, span,
text and the whole result.json stayed identical, and detail.jsonl was rewritten then. Any other change of these
bytes is a behaviour change to explain."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "eval_golden")


def test_detail_and_result_are_byte_identical_to_the_old_evaluation(tmp_path):
    # in a subprocess under XLA's default flags: the files were written at the default LLVM optimisation level, and
    # the suite's -O0 (tests/conftest.py) changes the last float bits of the latent diagnostics
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_eval_golden.py"), str(tmp_path)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("detail.jsonl", "result.json"):
        with open(os.path.join(FIXTURE, name), "rb") as f:
            want = f.read()
        with open(tmp_path / name, "rb") as f:
            got = f.read()
        assert got == want, f"{name} differs from the golden file written by the old evaluation code"
