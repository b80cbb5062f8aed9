"""Compare two evaluations' detail rows and result.json the way a CPU-independent regression test must: every decision
(answer, rank, document id, text, turn structure) exactly, every float to a relative tolerance, and rows known to sit
on a near-tie (listed in the golden's `unstable.json`) left out and counted rather than compared.

Why: the golden files are written on one machine and checked on any x86-64 CPU. The tiny random models give
float results whose last bits depend on the CPU's rounding (vector widths, FMA), so bytes differ while no decision
does; and a decision whose two options score within rounding of each other may flip. `tools/make_eval_golden.py`
finds those decisions by re-running the golden setup with every weight perturbed by a relative 1e-6 (far above the
~1e-7 cross-CPU differences) and records the rows whose decisions moved.
"""
from __future__ import annotations

import json
import math

RTOL, ATOL = 1e-4, 1e-6


def _diff(want, got, path: str, out: list[str], rtol: float, atol: float) -> None:
    if isinstance(want, bool) or isinstance(got, bool) or want is None or got is None or isinstance(want, str):
        if want != got or type(want) is not type(got):
            out.append(f"{path}: {want!r} != {got!r}")
    elif isinstance(want, (int, float)) and isinstance(got, (int, float)):
        if isinstance(want, int) and isinstance(got, int):
            if want != got:
                out.append(f"{path}: {want} != {got}")
        elif not math.isclose(float(want), float(got), rel_tol=rtol, abs_tol=atol):
            out.append(f"{path}: {want!r} != {got!r} (beyond rtol {rtol}, atol {atol})")
    elif isinstance(want, dict) and isinstance(got, dict):
        if list(want) != list(got):
            out.append(f"{path}: keys {list(want)} != {list(got)}")
            return
        for k in want:
            _diff(want[k], got[k], f"{path}.{k}", out, rtol, atol)
    elif isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            out.append(f"{path}: length {len(want)} != {len(got)}")
            return
        for i, (a, b) in enumerate(zip(want, got)):
            _diff(a, b, f"{path}[{i}]", out, rtol, atol)
    else:
        out.append(f"{path}: {type(want).__name__} {want!r} != {type(got).__name__} {got!r}")


def diff(want, got, path: str = "", *, rtol: float = RTOL, atol: float = ATOL) -> list[str]:
    """The differences between two JSON values: decisions exactly, floats to `rtol`/`atol`."""
    out: list[str] = []
    _diff(want, got, path, out, rtol, atol)
    return out


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def compare_rows(want: list[dict], got: list[dict], unstable=()) -> tuple[list[str], list[int]]:
    """-> (differences, indices of the unstable rows that were left out). Rows are matched by their `index`."""
    unstable = set(unstable)
    by_index = {r["index"]: r for r in got}
    problems = []
    if sorted(by_index) != sorted(r["index"] for r in want):
        problems.append(f"row indices {sorted(r['index'] for r in want)} != {sorted(by_index)}")
        return problems, []
    skipped = []
    for w in want:
        if w["index"] in unstable:
            skipped.append(w["index"])
            continue
        problems += diff(w, by_index[w["index"]], f"row {w['index']} ({w['qid']})")
    return problems, skipped


def unstable_rows(clean: list[dict], perturbed: list[dict]) -> list[int]:
    """Rows whose content moved beyond the tolerance when the weights were perturbed (near-tied decisions)."""
    by_index = {r["index"]: r for r in perturbed}
    return sorted(r["index"] for r in clean if diff(r, by_index.get(r["index"])))
