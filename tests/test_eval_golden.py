"""The evaluation path (episode engine -> detail rows -> report) writes byte-identical detail JSONL and result.json
to the files the evaluation code wrote before the engine was rewritten (tests/fixtures/eval_golden, made by
tools/make_eval_golden.py on commit 28a2dcd's code): the demo policy, rigged so that most episodes refine and run a
second turn, on a small toy corpus."""
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
