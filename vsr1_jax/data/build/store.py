"""How the build steps write: every file through a temporary name renamed at the end, a marker per finished step
(`<dataset>/.build/<step>.json`, holding its stats) so a rerun skips it, chunked partial results so an interrupted
long step continues where it stopped, and a progress bar with rate and ETA."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from vsr1_jax.data.paths import PreparedPaths

BUILD_DIR = ".build"


def tmp_path(path: str | os.PathLike) -> Path:
    """A hidden sibling with the same suffix (np.save appends ".npy" to names without it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic(path: str | os.PathLike) -> Iterator[Path]:
    """Write to the yielded temporary path; it replaces `path` only when the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """`writer(tmp)` (e.g. a files.py writer) then rename onto `path`."""
    with atomic(path) as tmp:
        writer(tmp)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    def w(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
    return write_atomic(path, w)


# ---------------------------------------------------------------------------------------------------------------
# Step markers
# ---------------------------------------------------------------------------------------------------------------
def build_dir(paths: PreparedPaths) -> Path:
    return paths.dataset_dir / BUILD_DIR


def marker_path(paths: PreparedPaths, step: str) -> Path:
    return build_dir(paths) / f"{step}.json"


def read_marker(paths: PreparedPaths, step: str) -> dict | None:
    p = marker_path(paths, step)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # a torn marker means the step did not finish


def step_complete(paths: PreparedPaths, step: str) -> dict | None:
    """The marker of a finished step whose listed outputs all still exist, else None."""
    m = read_marker(paths, step)
    if m is None:
        return None
    if not all((paths.dataset_dir / rel).exists() for rel in m.get("outputs", [])):
        return None
    return m


def write_marker(paths: PreparedPaths, step: str, stats: Mapping[str, Any], outputs: Sequence[Path]) -> dict:
    rel = sorted(str(Path(p).relative_to(paths.dataset_dir)) for p in outputs)
    marker = {"step": step, "stats": dict(stats), "outputs": rel}
    write_json_atomic(marker_path(paths, step), marker)
    return marker


def clear_marker(paths: PreparedPaths, step: str) -> None:
    p = marker_path(paths, step)
    if p.exists():
        p.unlink()


# ---------------------------------------------------------------------------------------------------------------
# Chunked partial results
# ---------------------------------------------------------------------------------------------------------------
class ChunkStore:
    """Results of a long step in fixed chunks of its input (chunk i always covers the same items, so a resumed
    run computes exactly what an uninterrupted one would). Chunk i is `chunk_<i>.json` (a JSON object: rows,
    failures, ...) plus an optional `chunk_<i>.npy` matrix; the JSON is written last and marks the chunk done."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def _json(self, i: int) -> Path:
        return self.folder / f"chunk_{i:06d}.json"

    def _npy(self, i: int) -> Path:
        return self.folder / f"chunk_{i:06d}.npy"

    def done(self, i: int) -> bool:
        return self._json(i).exists()

    def write(self, i: int, record: Mapping[str, Any], matrix: np.ndarray | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if matrix is not None:
            with atomic(self._npy(i)) as tmp:
                np.save(tmp, np.asarray(matrix), allow_pickle=False)
        write_json_atomic(self._json(i), dict(record))

    def read(self, i: int) -> tuple[dict, np.ndarray | None]:
        record = json.loads(self._json(i).read_text(encoding="utf-8"))
        npy = self._npy(i)
        return record, (np.load(npy, allow_pickle=False) if npy.exists() else None)

    def remove(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk of `size` over n items."""
    size = max(1, int(size))
    return [(s, min(s + size, n)) for s in range(0, n, size)]


# ---------------------------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------------------------
class Progress:
    """A tqdm bar (rate, ETA) on stderr; silent (counting only) when `enabled` is False or tqdm is missing."""

    def __init__(self, total: int, desc: str, unit: str = "it", *, enabled: bool = True, initial: int = 0):
        self.total, self.desc, self.unit, self.n = int(total), desc, unit, int(initial)
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm  # lazy: progress bars are optional (tests turn them off)
                self.bar = tqdm(total=self.total, desc=desc, unit=unit, initial=self.n, file=sys.stderr,
                                dynamic_ncols=True, leave=True)
            except ImportError:
                self.bar = None

    def update(self, k: int = 1) -> None:
        self.n += int(k)
        if self.bar is not None:
            self.bar.update(int(k))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = [
    "BUILD_DIR", "ChunkStore", "Progress", "atomic", "build_dir", "chunks", "clear_marker", "marker_path",
    "read_marker", "step_complete", "tmp_path", "write_atomic", "write_json_atomic", "write_marker",
]
