"""Check the import graph of the vsr1_jax package by parsing it (nothing is imported): no import cycles, no arrow
to a layer a module may not use, no function-level imports of vsr1_jax modules, a comment on every
function-level third-party import saying why it is lazy, no import of the repo's own folders that the installed
package does not ship (`configs/`: config files are loaded by path, `vsr1_jax.config_files`), and no module over
MAX_MODULE_LINES lines without the reason in its docstring.

    python tools/check_imports.py            # prints every violation; exit status 1 if there is any

Module-level imports (`if TYPE_CHECKING:` ones included) and function-level imports all count as arrows. The layer
table below is data: change it there when the package's shape changes.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
from pathlib import Path

# A component is the first name under the package (`vsr1_jax.data.files` -> "data", `vsr1_jax.main` -> "main").
# Each maps to (rank, what it may import besides itself). Ranks order the layers low -> high and only document the
# shape; the allow-lists decide. BELOW = every component of a lower rank.
BELOW = "below"
LAYERS: dict[str, tuple[int, tuple[str, ...] | str]] = {
    # the error base class and the CLI error style: every component may derive its errors from it
    "errors": (-1, ()),
    # base layers: no other vsr1_jax component but errors
    "kernels": (0, ()),
    "processing": (0, ()),
    "sharding": (0, ()),
    "eval": (0, ()),
    "compiles": (0, ()),
    "buckets": (0, ()),
    "runinfo": (0, ()),       # the resolved config, code version and resume diffs a run folder records
    "profiling": (0, ()),     # profiler-trace summaries for benchmarks/ and tools
    "distributed": (0, ()),   # jax.distributed setup + cross-process helpers; main calls it first
    "config_files": (0, ()),  # loads config files by path; main's default config (the repo's configs/toy.py)
    "models": (1, ("kernels", "buckets", "errors")),
    "data": (2, ("processing", "buckets", "errors", "config_files")),  # config_files: read_section (data/settings.py)
    "retrieval": (2, ("models", "processing", "sharding", "buckets", "errors")),
    "generate": (2, ("models", "sharding", "kernels", "buckets")),
    # checkpoint I/O (safetensors, orbax, the converter's readers and writers, HF export, init-stage1, the CLI) and
    # the runtime reader (a checkpoint path -> Models)
    "ckpt": (2, ("models", "processing", "distributed", "errors")),
    "convert": (3, ("ckpt",)),  # `python -m vsr1_jax.convert`: the entry point of ckpt/cli.py
    "viewer": (3, ("data", "eval")),  # episode page: reads eval outputs and prepared videos, no model code
    # the demo's tiny models and synthetic corpus
    "demo_models": (3, ("ckpt", "models", "data", "retrieval", "distributed", "errors")),
    "loading": (4, BELOW),    # the models of a config: the demo's or a checkpoint's
    "agent": (5, BELOW),
    "train": (6, BELOW),
    "prepare": (6, BELOW),
    "demo": (7, BELOW),
    "main": (8, BELOW),
}
# Components that only the listed ones may import (on top of the rules above).
ONLY_IMPORTED_BY: dict[str, tuple[str, ...]] = {"train": ("main", "demo")}

# A module longer than this is split by concern or says in its docstring why it is one ("One module because ...").
MAX_MODULE_LINES = 650

# Top-level packages of the repo that setup.py does not ship: the package never imports them (at any level).
REPO_ONLY = ("configs", "tests", "tools", "benchmarks", "scripts", "launch")

_FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


@dataclasses.dataclass(frozen=True, order=True)
class Violation:
    path: str  # relative to the package's parent folder
    line: int
    kind: str  # cycle | layer | lazy-vsr1-import | uncommented-lazy-import | unknown-component | missing-module
    #            | repo-import | module-size
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.kind}] {self.message}"


@dataclasses.dataclass(frozen=True)
class _Import:
    target: str  # the imported module (`from m import name` -> m, or m.name when that is a module)
    line: int
    end_line: int
    in_function: bool
    first_party: bool


def allowed_imports(component: str, layers=LAYERS) -> set[str]:
    rank, allowed = layers[component]
    if allowed == BELOW:
        return {c for c, (r, _) in layers.items() if r < rank}
    return set(allowed)


def _module_name(package_dir: Path, path: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.Module, module: str, is_package: bool, package: str, modules: set[str]) -> list[_Import]:
    out: list[_Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, _FUNCTION_NODES)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    out.append(_Import(alias.name, child.lineno, child.end_lineno or child.lineno, in_function,
                                       alias.name.split(".")[0] == package))
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: up from this module's package
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                first = source.split(".")[0] == package
                for alias in child.names:
                    # `from pkg import sub` imports the submodule when there is one
                    sub = f"{source}.{alias.name}"
                    target = sub if first and sub in modules else source
                    out.append(_Import(target, child.lineno, child.end_lineno or child.lineno, in_function, first))
            visit(child, inside)

    visit(tree, False)
    return out


def _commented(imp: _Import, lines: list[str], lazy_spans: dict[int, int]) -> bool:
    """A trailing comment on the statement, or a comment line right above it or above the run of lazy imports it
    belongs to."""
    if any("#" in lines[i - 1] for i in range(imp.line, imp.end_line + 1)):
        return True
    above = imp.line - 1
    while above >= 1:
        text = lines[above - 1].strip()
        if text.startswith("#"):
            return True
        if above in lazy_spans:  # the end line of another lazy import: keep looking above that run
            above = lazy_spans[above] - 1
            continue
        return False
    return False


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle per strongly connected component with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in sccs:
        members = set(comp)
        start = comp[0]
        if len(comp) == 1 and start not in graph.get(start, ()):
            continue
        # shortest path start -> ... -> start inside the component (BFS)
        prev: dict[str, str] = {}
        frontier, seen, end = [start], {start}, None
        while frontier and end is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph.get(v, ())):
                    if w == start:
                        end = v
                        break
                    if w in members and w not in seen:
                        seen.add(w)
                        prev[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        path = [end]
        while path[-1] != start:
            path.append(prev[path[-1]])
        cycles.append(list(reversed(path)) + [start])
    return cycles


def check(package_dir: str | Path, layers=LAYERS, only_imported_by=ONLY_IMPORTED_BY) -> list[Violation]:
    """Every violation in the package folder `package_dir` (e.g. `<repo>/vsr1_jax`), sorted by file and line."""
    package_dir = Path(package_dir).resolve()
    package = package_dir.name
    files = {_module_name(package_dir, p): p for p in sorted(package_dir.rglob("*.py"))}
    modules = set(files)
    violations: list[Violation] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    edge_line: dict[tuple[str, str], int] = {}

    def rel(module: str) -> str:
        return str(files[module].relative_to(package_dir.parent))

    def component(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else None  # None: the package's own __init__

    for module, path in files.items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        try:
            tree = ast.parse(text, filename=str(path))
        except SyntaxError as exc:
            violations.append(Violation(rel(module), exc.lineno or 0, "syntax", str(exc)))
            continue
        doc = ast.get_docstring(tree) or ""
        if len(lines) > MAX_MODULE_LINES and "One module because" not in doc:
            violations.append(Violation(rel(module), 1, "module-size",
                                        f"{len(lines)} lines (> {MAX_MODULE_LINES}): split it by concern, or say "
                                        "why it is one module in its docstring ('One module because ...')"))
        imports = _imports(tree, module, path.name == "__init__.py", package, modules)
        lazy_spans = {imp.end_line: imp.line for imp in imports if imp.in_function}
        src = component(module)
        if src is not None and src not in layers:
            violations.append(Violation(rel(module), 1, "unknown-component",
                                        f"component {src!r} is not in the layer table (LAYERS in "
                                        "tools/check_imports.py): add it with what it may import"))
        for imp in imports:
            if not imp.first_party:
                top = imp.target.split(".")[0]
                if top in REPO_ONLY:
                    violations.append(Violation(rel(module), imp.line, "repo-import",
                                                f"imports {imp.target}: the repo's {top}/ is not part of the "
                                                f"installed {package} (setup.py); take the values as arguments "
                                                "(config files load by path: vsr1_jax.config_files)"))
                    continue
                if (imp.in_function and top not in sys.stdlib_module_names and top != "__future__"
                        and not _commented(imp, lines, lazy_spans)):
                    violations.append(Violation(rel(module), imp.line, "uncommented-lazy-import",
                                                f"function-level import of {imp.target} without a comment saying "
                                                "why it is lazy (trailing, or on the line above)"))
                continue
            target = imp.target
            if target not in modules:
                violations.append(Violation(rel(module), imp.line, "missing-module",
                                            f"imports {target}, which is not a module of {package}"))
                continue
            if imp.in_function:
                violations.append(Violation(rel(module), imp.line, "lazy-vsr1-import",
                                            f"function-level import of {target}: {package} modules are imported at "
                                            "module top"))
            if target != module:
                graph[module].add(target)
                edge_line.setdefault((module, target), imp.line)
            dst = component(target)
            if src is None or dst is None or dst == src or src not in layers:
                continue
            allowed = allowed_imports(src, layers)
            if dst not in allowed:
                rank_src, rank_dst = layers[src][0], layers.get(dst, (None,))[0]
                violations.append(Violation(
                    rel(module), imp.line, "layer",
                    f"{src} (layer {rank_src}) imports {dst} (layer {rank_dst}) via {target}; {src} may import "
                    f"only: {', '.join(sorted(allowed)) or 'nothing of ' + package}"))
            elif dst in only_imported_by and src not in only_imported_by[dst]:
                violations.append(Violation(
                    rel(module), imp.line, "layer",
                    f"{src} imports {dst} via {target}; only {', '.join(only_imported_by[dst])} may import {dst}"))

    for cycle in _cycles(graph):
        hops = " -> ".join(f"{a} (line {edge_line[(a, b)]})" for a, b in zip(cycle, cycle[1:]))
        violations.append(Violation(rel(cycle[0]), edge_line[(cycle[0], cycle[1])], "cycle",
                                    f"import cycle: {hops} -> {cycle[-1]}"))
    return sorted(set(violations))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", default=str(Path(__file__).resolve().parents[1] / "vsr1_jax"),
                    help="package folder to check (default: this repository's vsr1_jax/)")
    args = ap.parse_args(argv)
    violations = check(args.package)
    for v in violations:
        print(v)
    print(f"{len(violations)} violation(s)" if violations else "import graph clean")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
