"""The README's structure and its measured-figures citations (docs/bench/)."""
import itertools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BENCH = ROOT / "docs" / "bench"


def _expand(name: str) -> list[str]:
    """`a_{x,y}_b.json` -> [a_x_b.json, a_y_b.json] (the README's brace shorthand)."""
    parts = re.split(r"\{([^}]*)\}", name)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def _cited() -> set[str]:
    names = re.findall(r"`(?:docs/bench/)?([\w{},.-]+_(?:h100|h200)_\d{4}-\d\d-\d\d\.json)`", README)
    return {n for name in names for n in _expand(name)}


def test_every_section_appears_once():
    heads = re.findall(r"^## (.+)$", README, flags=re.M)
    dup = sorted({h for h in heads if heads.count(h) > 1})
    assert not dup, f"README.md repeats the sections {dup}"
    assert README.count("\n# vsr1_jax") == 0 and README.startswith("# vsr1_jax")


def test_cited_bench_files_exist_and_every_bench_file_is_cited():
    cited = _cited()
    present = {p.name for p in BENCH.glob("*.json")}
    assert cited, "README.md cites no docs/bench/*.json"
    assert not cited - present, f"README.md cites files missing from docs/bench/: {sorted(cited - present)}"
    assert not present - cited, f"docs/bench/ holds files no README row cites: {sorted(present - cited)}"
