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
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from make_eval_golden import write_golden  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "eval_golden")


def test_detail_and_result_are_byte_identical_to_the_old_evaluation(tmp_path):
    write_golden(str(tmp_path))
    for name in ("detail.jsonl", "result.json"):
        with open(os.path.join(FIXTURE, name), "rb") as f:
            want = f.read()
        with open(tmp_path / name, "rb") as f:
            got = f.read()
        assert got == want, f"{name} differs from the golden file written by the old evaluation code"
