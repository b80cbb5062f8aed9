"""Host-side exact-cosine video index: FAISS ``IndexFlatIP`` over L2-normalised corpus vectors plus its id map.

Mirrors the original ``preprocess/annotation_process/build_faiss.py`` L22-37 (spec eval_and_data.md §4.1, §3.6).
``faiss`` is imported lazily, so this module (and ``vsr1_jax.retrieval``) imports on machines without faiss.

Tie contract (ours, not FAISS's): equal scores are ordered by the **lowest row first**, like ``torch.argmax``
and ``jax.lax.top_k`` (eval_and_data.md §1.1, EVAL L3280). FAISS 1.15's flat search keeps the lowest ids of a
tied group at the cut but returns them in *descending* id order (its heap pops ties last-in-first-out), and
older/other FAISS versions make no promise at all. :meth:`FlatIPIndex.search` therefore searches a wider
window, widens it until the tie group at the k-th score is complete, and stable re-sorts by (-score, row).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from vsr1_jax.errors import UserError

INDEX_FILENAME = "index.faiss"
ID_MAP_FILENAME = "id_map.json"


class RetrievalInputError(UserError, ValueError):
    """Bad vectors or arguments given to the retrieval engine (dim mismatch, non-finite, zero norm, bad k/ids)."""


def _faiss():
    try:
        import faiss  # noqa: PLC0415  (lazy: faiss is absent on the accelerator machine, environment.md)
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError(
            "faiss is required for the 'faiss' retrieval engine (pip install faiss-cpu); "
            "use retrieval.engine='device' where faiss is not installed"
        ) from exc
    return faiss


def check_vectors(x, *, name: str, dim: int | None = None) -> np.ndarray:
    """Validate a float matrix [M, D]; return it as C-contiguous float32.

    Raises RetrievalInputError naming ``name`` when it is not 2-D, has the wrong D, is empty in D,
    or holds non-finite values or all-zero rows (which cannot be L2-normalised).
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise RetrievalInputError(f"{name} must be 2-D [M, D], got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise RetrievalInputError(f"{name} has dimension 0")
    if dim is not None and arr.shape[1] != dim:
        raise RetrievalInputError(f"{name} has dimension {arr.shape[1]} but the index has dimension {dim}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise RetrievalInputError(f"{name} has non-finite values in rows {bad[:10].tolist()} ({bad.size} rows)")
    norms = np.linalg.norm(arr, axis=1)
    if not (norms > 0).all():
        bad = np.flatnonzero(~(norms > 0))
        raise RetrievalInputError(f"{name} has zero-norm rows {bad[:10].tolist()} ({bad.size} rows)")
    return arr


def l2_normalize_np(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32, [M, D] -> [M, D]. Rows must be finite and non-zero (see check_vectors).

    One NumPy routine normalises the corpus for both engines, so the FAISS index and the on-device matrix
    hold bit-identical vectors (the original used faiss.normalize_L2 at build and torch at eval; they can
    differ in the last ulp, which only matters for near-ties).
    """
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True).astype(np.float32)
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def id_map_from_docid2row(docid2row: Mapping[str, int], num_rows: int) -> list[str]:
    """``docid2row`` {doc_id: row} -> ``id_map`` = doc ids sorted by row (spec §4.1).

    Must be a bijection onto 0..num_rows-1: a row without a doc id would make a search hit unnamed,
    and a doc id beyond the matrix could never be retrieved.
    """
    if len(docid2row) != num_rows:
        raise RetrievalInputError(
            f"docid2row has {len(docid2row)} entries but the embedding matrix has {num_rows} rows"
        )
    id_map: list[str | None] = [None] * num_rows
    for doc, row in docid2row.items():
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or not 0 <= int(row) < num_rows:
            raise RetrievalInputError(f"docid2row[{doc!r}] = {row!r} is not a row in [0, {num_rows})")
        if id_map[int(row)] is not None:
            raise RetrievalInputError(f"docid2row maps both {id_map[int(row)]!r} and {doc!r} to row {row}")
        id_map[int(row)] = str(doc)
    return id_map  # type: ignore[return-value]  (bijection checked above, no None left)


class FlatIPIndex:
    """Exact inner-product index over unit vectors (cosine) with an id map.

    Attributes:
      index: the ``faiss.IndexFlatIP`` (ntotal = N, d = D).
      id_map: list[str] of length N; ``id_map[row]`` is the doc (video) id of corpus row ``row``.
    """

    def __init__(self, index, id_map: Sequence[str]):
        if int(index.ntotal) != len(id_map):
            raise RetrievalInputError(f"index holds {index.ntotal} vectors but id_map has {len(id_map)} ids")
        if len(set(id_map)) != len(id_map):
            raise RetrievalInputError("id_map has duplicate doc ids")
        self.index = index
        self.id_map = [str(d) for d in id_map]
        self._row_of = {d: i for i, d in enumerate(self.id_map)}

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_vectors(cls, vectors, id_map: Sequence[str] | None = None) -> "FlatIPIndex":
        """Build from a corpus matrix [N, D] (normalised here) and ids (default: "0".."N-1")."""
        vecs = check_vectors(vectors, name="corpus vectors")
        if id_map is None:
            id_map = [str(i) for i in range(vecs.shape[0])]
        if len(id_map) != vecs.shape[0]:
            raise RetrievalInputError(f"id_map has {len(id_map)} ids but the corpus has {vecs.shape[0]} rows")
        faiss = _faiss()
        index = faiss.IndexFlatIP(int(vecs.shape[1]))
        index.add(l2_normalize_np(vecs))
        return cls(index, id_map)

    @classmethod
    def from_embeddings(cls, segment_embeds, docid2row: Mapping[str, int]) -> "FlatIPIndex":
        """Build from ``segment_embeds`` [N, D] and ``docid2row`` {doc_id: row} (spec §3.5 / §4.1)."""
        vecs = np.asarray(segment_embeds)
        if vecs.ndim != 2:
            raise RetrievalInputError(f"segment_embeds must be 2-D [N, D], got shape {vecs.shape}")
        return cls.from_vectors(vecs, id_map_from_docid2row(docid2row, vecs.shape[0]))

    @classmethod
    def from_files(cls, segment_embeds_path: str | os.PathLike, docid2row_path: str | os.PathLike) -> "FlatIPIndex":
        """Build from ``video_embedding_1fps/segment_embeds.npy`` + ``docid2row.json`` (spec §3.5)."""
        for p in (segment_embeds_path, docid2row_path):
            if not Path(p).is_file():
                raise FileNotFoundError(f"retrieval corpus file not found: {p}")
        embeds = np.load(segment_embeds_path)
        with open(docid2row_path, "r", encoding="utf-8") as f:
            docid2row = json.load(f)
        return cls.from_embeddings(embeds, docid2row)

    # ---------------------------------------------------------------- persistence
    def save(self, index_dir: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``<index_dir>/index.faiss`` and ``<index_dir>/id_map.json`` (the original's ``<split>/index/``)."""
        d = Path(index_dir)
        d.mkdir(parents=True, exist_ok=True)
        ipath, mpath = d / INDEX_FILENAME, d / ID_MAP_FILENAME
        _faiss().write_index(self.index, str(ipath))
        mpath.write_text(json.dumps(self.id_map, ensure_ascii=False), encoding="utf-8")
        return ipath, mpath

    @classmethod
    def load(cls, index_dir: str | os.PathLike) -> "FlatIPIndex":
        """Read what :meth:`save` (or the original build_faiss.py) wrote; missing files are named in the error."""
        d = Path(index_dir)
        ipath, mpath = d / INDEX_FILENAME, d / ID_MAP_FILENAME
        missing = [str(p) for p in (ipath, mpath) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"FAISS index files missing: {', '.join(missing)}")
        index = _faiss().read_index(str(ipath))
        if int(index.metric_type) != int(_faiss().METRIC_INNER_PRODUCT):
            raise RetrievalInputError(f"{ipath} is not an inner-product index (metric_type={index.metric_type})")
        with open(mpath, "r", encoding="utf-8") as f:
            id_map = json.load(f)
        if not isinstance(id_map, list):
            raise RetrievalInputError(f"{mpath} must hold a JSON list of doc ids, got {type(id_map).__name__}")
        return cls(index, id_map)

    # ---------------------------------------------------------------- queries
    @property
    def num_docs(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def vectors(self) -> np.ndarray:
        """The stored (normalised) corpus [N, D] float32, e.g. to put the same matrix on device."""
        return np.ascontiguousarray(self.index.reconstruct_n(0, self.num_docs), dtype=np.float32)

    def row_of(self, doc_id: str) -> int:
        """Inverse id map; KeyError names the id when it is not in the corpus."""
        try:
            return self._row_of[str(doc_id)]
        except KeyError:
            raise KeyError(f"doc id {doc_id!r} is not in the index") from None

    def doc_ids(self, rows) -> list[list[str | None]]:
        """rows [B, k] -> doc ids; a -1 (invalid-query sentinel) maps to None."""
        rows = np.asarray(rows)
        return [[self.id_map[int(r)] if int(r) >= 0 else None for r in row] for row in rows.reshape(-1, rows.shape[-1])]

    def _check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= self.num_docs:
            raise RetrievalInputError(f"k must be an int in [1, {self.num_docs}] (corpus size), got {k!r}")
        return int(k)

    def search_normalized(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of already-checked, normalised float32 queries [B, D] with ties to the lowest row.

        Widens the FAISS window until the tie group at the k-th score is complete (see module docstring),
        so the result is exact whatever order FAISS returns ties in.
        """
        n, b = self.num_docs, q.shape[0]
        window = min(n, 2 * k + 8)
        while True:
            scores, rows = self.index.search(q, window)
            if window == n:
                break
            kth, last = scores[:, k - 1], scores[:, window - 1]
            if (last < kth).all():  # every item scoring == kth is inside the window
                break
            window = min(n, 2 * window)
        out_s = np.empty((b, k), np.float32)
        out_r = np.empty((b, k), np.int64)
        for i in range(b):
            order = np.lexsort((rows[i], -scores[i]))[:k]  # primary -score, secondary row (ascending)
            out_s[i], out_r[i] = scores[i][order], rows[i][order]
        return out_s, out_r

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, D] -> (scores [B, k] float32 descending, rows [B, k] int64); ties go to the lowest row.

        Queries are L2-normalised first (build_top1_pool.py L190-208). Raises RetrievalInputError on a dim
        mismatch, non-finite values, zero-norm rows or k outside [1, N].
        """
        q = check_vectors(queries, name="queries", dim=self.dim)
        k = self._check_k(k)
        return self.search_normalized(l2_normalize_np(q), k)
