"""Top-k retrieval and GT rank from jitted code: exact on-device matmul, or the host FAISS index via pure_callback.

Both engines return identical top-k on the same vectors (spec README decision 9): scores are cosines against an
L2-normalised corpus, ties go to the lowest row (``jax.lax.top_k`` documents this; FlatIPIndex.search enforces it),
and an invalid query (non-finite or zero norm) yields rows -1 / scores NaN / rank -1 instead of raising, because
raising inside a ``pure_callback`` is undefined behaviour under jit.
"""
from __future__ import annotations

import functools
from typing import Protocol, Sequence, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from vsr1_jax.retrieval.index import (
    FlatIPIndex,
    RetrievalInputError,
    check_vectors,
    id_map_from_docid2row,
    l2_normalize_np,
)

ENGINES = ("device", "faiss")

# TF32/bf16-pass matmuls (the GPU default for f32) perturb cosines by ~1e-3 and would reorder near neighbours
# relative to FAISS's f32 sgemm; full f32 keeps the two engines' top-k identical.
_PRECISION = jax.lax.Precision.HIGHEST


# ------------------------------------------------------------------------------------------ on-device math
def l2_normalize(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[..., D] -> (x / ||x|| [..., D], valid [...] bool). Invalid rows (non-finite or zero norm) come back as 0."""
    x = jnp.asarray(x, jnp.float32)
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    valid = jnp.all(jnp.isfinite(x), axis=-1) & (norm[..., 0] > 0)
    safe = jnp.where(valid[..., None], norm, 1.0)
    return jnp.where(valid[..., None], x / safe, 0.0), valid


def corpus_scores(corpus: jax.Array, queries: jax.Array) -> jax.Array:
    """Cosine scores ``s = V q`` (EVAL L2758): corpus [N, D] (unit rows), queries [..., D] (unit) -> [..., N] f32."""
    return jnp.einsum("...d,nd->...n", queries.astype(jnp.float32), corpus.astype(jnp.float32), precision=_PRECISION)


def _check_dims(corpus_dim: int, queries, k: int | None = None, num_docs: int | None = None) -> None:
    if queries.ndim < 1 or queries.shape[-1] != corpus_dim:
        raise RetrievalInputError(
            f"queries have dimension {queries.shape[-1] if queries.ndim else None} (shape {queries.shape}) "
            f"but the corpus has dimension {corpus_dim}"
        )
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_docs):
        raise RetrievalInputError(f"k must be an int in [1, {num_docs}] (corpus size), got {k!r}")


@functools.partial(jax.jit, static_argnames=("k",))
def _exact_topk(corpus, queries, k):
    q, valid = l2_normalize(queries)
    scores, rows = jax.lax.top_k(corpus_scores(corpus, q), k)  # lax.top_k: equal values -> lower index first
    scores = jnp.where(valid[..., None], scores, jnp.nan)
    rows = jnp.where(valid[..., None], rows, -1).astype(jnp.int32)
    return scores, rows


def exact_topk(corpus: jax.Array, queries: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """On-device exact top-k. corpus [N, D] L2-normalised (see prepare_corpus), queries [B, D] (any leading dims).

    Queries are normalised here. Returns (scores [B, k] f32 descending, rows [B, k] i32); ties -> lowest row;
    invalid queries -> rows -1, scores NaN. k is static. Works eagerly, under jit and under vmap.
    """
    _check_dims(corpus.shape[-1], queries, k, corpus.shape[0])
    return _exact_topk(corpus, queries, int(k))


@jax.jit
def gt_rank(scores: jax.Array, gt_rows: jax.Array) -> jax.Array:
    """GT rank ``1 + #{j : s_j > s_gt}`` (EVAL L652-654; ties favour the positive).

    scores [..., N] f32, gt_rows [...] int -> rank [...] i32. A NaN GT score (invalid query) or an out-of-range
    gt_row gives -1, which the metrics drop (only ranks > 0 count, WTR L29-30).
    """
    gt_rows = jnp.asarray(gt_rows, jnp.int32)
    # Explicit range check: jnp would wrap a negative index to the last row instead of failing.
    in_range = (gt_rows >= 0) & (gt_rows < scores.shape[-1])
    s_gt = jnp.take_along_axis(scores, jnp.where(in_range, gt_rows, 0)[..., None], axis=-1)
    rank = 1 + jnp.sum(scores > s_gt, axis=-1, dtype=jnp.int32)
    return jnp.where(in_range & ~jnp.isnan(s_gt[..., 0]), rank, -1).astype(jnp.int32)


def gt_rank_np(scores: np.ndarray, gt_rows) -> np.ndarray:
    """NumPy twin of :func:`gt_rank`: scores [..., N], gt_rows [...] -> int64 ranks (-1 for NaN / out of range)."""
    scores = np.asarray(scores)
    gt = np.asarray(gt_rows, dtype=np.int64)
    n = scores.shape[-1]
    in_range = (gt >= 0) & (gt < n)
    s_gt = np.take_along_axis(scores, np.where(in_range, gt, 0)[..., None], axis=-1)
    rank = 1 + np.sum(scores > s_gt, axis=-1)
    return np.where(in_range & ~np.isnan(s_gt[..., 0]), rank, -1).astype(np.int64)


@jax.jit
def _gt_rank_from_vectors(corpus, queries, gt_rows):
    q, valid = l2_normalize(queries)
    r = gt_rank(corpus_scores(corpus, q), gt_rows)
    return jnp.where(valid, r, -1)


@jax.jit
def _device_scores(corpus, queries):
    q, valid = l2_normalize(queries)
    return jnp.where(valid[..., None], corpus_scores(corpus, q), jnp.nan)


def gt_rank_from_vectors(corpus: jax.Array, queries: jax.Array, gt_rows: jax.Array) -> jax.Array:
    """GT rank from corpus [N, D] (unit rows) + queries [B, D] (normalised here) + gt_rows [B] -> [B] i32."""
    _check_dims(corpus.shape[-1], queries)
    return _gt_rank_from_vectors(corpus, queries, gt_rows)


def prepare_corpus(vectors) -> jax.Array:
    """Validate + L2-normalise a host corpus [N, D] (same NumPy routine as the FAISS index) and put it on device."""
    return jnp.asarray(l2_normalize_np(check_vectors(vectors, name="corpus vectors")))


# ------------------------------------------------------------------------------------------ FAISS via callback
def _host_queries(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten [..., D] host queries; return (normalised valid rows [M, D], valid mask [B_flat])."""
    flat = np.asarray(q, dtype=np.float32).reshape(-1, q.shape[-1])
    with np.errstate(invalid="ignore", over="ignore"):
        valid = np.isfinite(flat).all(axis=1) & (np.linalg.norm(flat, axis=1) > 0)
    return (l2_normalize_np(flat[valid]) if valid.any() else flat[:0]), valid


def _faiss_topk_host(index: FlatIPIndex, k: int, q: np.ndarray):
    lead = q.shape[:-1]
    qn, valid = _host_queries(q)
    scores = np.full((valid.size, k), np.nan, np.float32)
    rows = np.full((valid.size, k), -1, np.int32)
    if qn.shape[0]:
        s, r = index.search_normalized(qn, k)
        scores[valid], rows[valid] = s, r.astype(np.int32)
    return scores.reshape(*lead, k), rows.reshape(*lead, k)


def _faiss_scores_host(index: FlatIPIndex, q: np.ndarray):
    lead = q.shape[:-1]
    qn, valid = _host_queries(q)
    out = np.full((valid.size, index.num_docs), np.nan, np.float32)
    if qn.shape[0]:
        s, r = index.index.search(qn, index.num_docs)
        full = np.empty_like(s)
        np.put_along_axis(full, r, s, axis=1)
        out[valid] = full
    return out.reshape(*lead, index.num_docs)


def faiss_topk_callback(index: FlatIPIndex, queries: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Host FAISS top-k reachable from jitted code: queries [B, D] (any leading dims) -> (scores [B, k] f32, rows [B, k] i32).

    ``jax.pure_callback`` with static k. ``vmap_method="broadcast_all"``: under vmap the callback receives the
    stacked queries [V, B, D] and answers with one FAISS search (it flattens leading dims), instead of V calls.
    Queries are normalised on the host; invalid ones give rows -1 / scores NaN (raising in a callback is
    undefined behaviour). Ties -> lowest row (FlatIPIndex.search_normalized).
    """
    _check_dims(index.dim, queries, k, index.num_docs)
    k = int(k)
    lead = tuple(queries.shape[:-1])
    out = (jax.ShapeDtypeStruct(lead + (k,), jnp.float32), jax.ShapeDtypeStruct(lead + (k,), jnp.int32))
    return jax.pure_callback(
        functools.partial(_faiss_topk_host, index, k), out, queries.astype(jnp.float32), vmap_method="broadcast_all"
    )


def faiss_scores_callback(index: FlatIPIndex, queries: jax.Array) -> jax.Array:
    """Host FAISS scores against every row, from jitted code: queries [B, D] -> [B, N] f32 in row order (NaN rows for invalid queries)."""
    _check_dims(index.dim, queries)
    out = jax.ShapeDtypeStruct(tuple(queries.shape[:-1]) + (index.num_docs,), jnp.float32)
    return jax.pure_callback(
        functools.partial(_faiss_scores_host, index), out, queries.astype(jnp.float32), vmap_method="broadcast_all"
    )


# ------------------------------------------------------------------------------------------ Retriever
@runtime_checkable
class Retriever(Protocol):
    """What the agent needs from a retrieval engine. All methods work eagerly and under jit/vmap.

    queries [B, D] (normalised inside), k static int, gt_rows [B] int.
    """

    engine: str

    @property
    def num_docs(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def topk(self, queries, k: int) -> tuple[jax.Array, jax.Array]:
        """-> (scores [B, k] f32, rows [B, k] i32)."""

    def scores(self, queries) -> jax.Array:
        """-> cosine scores [B, N] f32 in row order."""

    def rank(self, queries, gt_rows) -> jax.Array:
        """-> GT rank [B] i32 = 1 + #{j: s_j > s_gt}; -1 for invalid queries."""

    def doc_ids(self, rows) -> list[list[str | None]]:
        """Host-side: rows [B, k] -> doc ids (None for -1)."""


class _HostRef:
    """Hashes/compares by identity, so a host object can sit in pytree aux data without hashing its contents."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _HostRef) and other.obj is self.obj


def _doc_ids(id_map: Sequence[str], rows) -> list[list[str | None]]:
    return [[id_map[int(r)] if int(r) >= 0 else None for r in row] for row in np.asarray(rows).reshape(-1, np.shape(rows)[-1])]


@jax.tree_util.register_pytree_node_class
class DeviceRetriever:
    """Exact on-device engine over an L2-normalised corpus [N, D] f32.

    A pytree whose only leaf is the corpus: pass it as a jit argument (rather than closing over it) so the
    matrix is not baked into the compiled program as a constant.
    """

    engine = "device"

    def __init__(self, corpus, id_map: Sequence[str] | None = None):
        self.corpus = corpus
        self._ids = _HostRef(list(id_map) if id_map is not None else [str(i) for i in range(corpus.shape[0])])

    @classmethod
    def from_vectors(cls, vectors, id_map: Sequence[str] | None = None) -> "DeviceRetriever":
        """Host corpus [N, D] (any scale) -> normalised on host (same routine as FlatIPIndex) and moved to device."""
        corpus = prepare_corpus(vectors)
        if id_map is not None and len(id_map) != corpus.shape[0]:
            raise RetrievalInputError(f"id_map has {len(id_map)} ids but the corpus has {corpus.shape[0]} rows")
        return cls(corpus, id_map)

    @classmethod
    def from_index(cls, index: FlatIPIndex) -> "DeviceRetriever":
        """Put the exact vectors stored in a FAISS index on device (bit-identical corpus for both engines)."""
        return cls(jnp.asarray(index.vectors()), index.id_map)

    def tree_flatten(self):
        return (self.corpus,), self._ids

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.corpus, obj._ids = children[0], aux
        return obj

    @property
    def id_map(self) -> list[str]:
        return self._ids.obj

    @property
    def num_docs(self) -> int:
        return int(self.corpus.shape[0])

    @property
    def dim(self) -> int:
        return int(self.corpus.shape[1])

    def topk(self, queries, k: int):
        return exact_topk(self.corpus, jnp.asarray(queries), k)

    def scores(self, queries):
        queries = jnp.asarray(queries)
        _check_dims(self.dim, queries)
        return _device_scores(self.corpus, queries)

    def rank(self, queries, gt_rows):
        return gt_rank_from_vectors(self.corpus, jnp.asarray(queries), gt_rows)

    def doc_ids(self, rows):
        return _doc_ids(self.id_map, rows)


@jax.tree_util.register_pytree_node_class
class FaissRetriever:
    """Host FAISS engine (IndexFlatIP) reached through pure_callback; a leaf-less pytree, safe to pass to jit."""

    engine = "faiss"

    def __init__(self, index: FlatIPIndex):
        self.index = index

    @classmethod
    def from_vectors(cls, vectors, id_map: Sequence[str] | None = None) -> "FaissRetriever":
        return cls(FlatIPIndex.from_vectors(vectors, id_map))

    def tree_flatten(self):
        return (), _HostRef(self.index)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux.obj)

    @property
    def id_map(self) -> list[str]:
        return self.index.id_map

    @property
    def num_docs(self) -> int:
        return self.index.num_docs

    @property
    def dim(self) -> int:
        return self.index.dim

    def topk(self, queries, k: int):
        return faiss_topk_callback(self.index, jnp.asarray(queries), k)

    def scores(self, queries):
        return faiss_scores_callback(self.index, jnp.asarray(queries))

    def rank(self, queries, gt_rows):
        # gt_rank maps the NaN rows of invalid queries to -1, matching DeviceRetriever.rank.
        return gt_rank(self.scores(queries), jnp.asarray(gt_rows))

    def doc_ids(self, rows):
        return self.index.doc_ids(rows)


def make_retriever(engine: str, segment_embeds, docid2row=None) -> Retriever:
    """Build the engine named by ``retrieval.engine`` ("device" | "faiss") from segment_embeds [N, D] + docid2row.

    docid2row None -> ids "0".."N-1". Both engines see the same host-normalised vectors.
    """
    vecs = np.asarray(segment_embeds)
    if vecs.ndim != 2:
        raise RetrievalInputError(f"segment_embeds must be 2-D [N, D], got shape {vecs.shape}")
    id_map = id_map_from_docid2row(docid2row, vecs.shape[0]) if docid2row is not None else None
    if engine == "device":
        return DeviceRetriever.from_vectors(vecs, id_map)
    if engine == "faiss":
        return FaissRetriever.from_vectors(vecs, id_map)
    raise ValueError(f"retrieval.engine must be one of {ENGINES}, got {engine!r}")


def retriever_from_config(config, segment_embeds, docid2row=None) -> Retriever:
    """``make_retriever(config.retrieval.engine, ...)`` for an eval ConfigDict (configs/_eval.py)."""
    return make_retriever(str(config.retrieval.engine), segment_embeds, docid2row)
