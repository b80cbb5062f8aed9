"""Retrieval engines: FAISS index, on-device exact top-k and the FAISS host callback agree, ties go to the lowest row."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs._eval import get_eval_config
from vsr1_jax.retrieval import topk as topk_mod
from vsr1_jax.retrieval import (
    DeviceRetriever,
    FaissRetriever,
    FlatIPIndex,
    RetrievalInputError,
    Retriever,
    exact_topk,
    faiss_scores_callback,
    faiss_topk_callback,
    gt_rank,
    gt_rank_from_vectors,
    gt_rank_np,
    id_map_from_docid2row,
    make_retriever,
    prepare_corpus,
    retriever_from_config,
)

# Unit vectors with four ±0.5 entries: norms are exactly 1 and every dot product is a multiple of 0.25, so scores are
# exact in any summation order (numpy BLAS, XLA, FAISS) and ties are genuine ties in every engine.
A = 0.5 * np.array([1, 1, 1, 1, 0, 0, 0, 0], np.float32)
B = 0.5 * np.array([1, 1, -1, -1, 0, 0, 0, 0], np.float32)
C = 0.5 * np.array([1, 1, 1, -1, 0, 0, 0, 0], np.float32)
E = 0.5 * np.array([0, 0, 0, 0, 1, 1, 1, 1], np.float32)


def _numpy_topk(corpus, queries, k):
    """Reference: float64 brute force, stable sort on -score so equal scores keep ascending row order."""
    c = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    s = q.astype(np.float64) @ c.astype(np.float64).T
    rows = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, rows, axis=1), rows


def _sign_vectors(rng, n):
    """n random vectors with ±0.5 on 4 of 8 coordinates (exact unit norm, exact scores, many ties)."""
    out = np.zeros((n, 8), np.float32)
    for i in range(n):
        pos = rng.choice(8, size=4, replace=False)
        out[i, pos] = 0.5 * rng.choice([-1.0, 1.0], size=4)
    return out


def _all_engines_topk(corpus, queries, k):
    index = FlatIPIndex.from_vectors(corpus)
    dev = prepare_corpus(corpus)
    s_idx, r_idx = index.search(queries, k)
    s_dev, r_dev = jax.jit(exact_topk, static_argnums=2)(dev, jnp.asarray(queries), k)
    s_cb, r_cb = jax.jit(lambda q: faiss_topk_callback(index, q, k))(jnp.asarray(queries))
    return (s_idx, r_idx), (np.asarray(s_dev), np.asarray(r_dev)), (np.asarray(s_cb), np.asarray(r_cb))


# ------------------------------------------------------------------------------------------ top-k and ties
def test_hand_made_ties_go_to_lowest_row():
    # scores of A against [B, A, C, A, C, B, A] are [0, 1, .5, 1, .5, 0, 1] (computed by hand from the vectors)
    corpus = np.stack([B, A, C, A, C, B, A])
    q = A[None]
    expect_rows = [1, 3, 6, 2, 4]
    expect_scores = [1.0, 1.0, 1.0, 0.5, 0.5]
    for (s, r) in _all_engines_topk(corpus, q, 5):
        assert r.tolist() == [expect_rows]
        np.testing.assert_array_equal(s, np.array([expect_scores], np.float32))
        assert r.dtype in (np.int32, np.int64) and s.dtype == np.float32


def test_callback_dtypes_are_f32_i32():
    corpus = np.stack([B, A, C, A])
    s, r = jax.jit(lambda q: faiss_topk_callback(FlatIPIndex.from_vectors(corpus), q, 2))(jnp.asarray(A[None]))
    assert s.dtype == jnp.float32 and r.dtype == jnp.int32 and s.shape == (1, 2)


def test_lax_top_k_breaks_ties_by_lowest_index():
    x = jnp.array([[0.0, 1.0, 1.0, 0.5, 1.0, 1.0]])
    _, idx = jax.jit(lambda v: jax.lax.top_k(v, 4))(x)
    assert idx.tolist() == [[1, 2, 4, 5]]


@pytest.mark.parametrize("k", [1, 7, 40])
def test_random_exact_ties_identical_across_engines(k):
    rng = np.random.default_rng(0)
    corpus = _sign_vectors(rng, 40)
    corpus[[5, 17, 33]] = corpus[2]  # guaranteed duplicate rows
    queries = np.concatenate([corpus[[2, 9]], _sign_vectors(rng, 23)])  # 25 queries: FAISS's BLAS path (nq >= 20)
    ref_s, ref_r = _numpy_topk(corpus, queries, k)
    for (s, r) in _all_engines_topk(corpus, queries, k):
        np.testing.assert_array_equal(r, ref_r)
        np.testing.assert_array_equal(s, ref_s.astype(np.float32))


def test_tie_group_larger_than_search_window():
    # 60 identical best rows scattered among 140 worse ones: the first FAISS window (2k+8) cannot hold the tie
    # group, so search must widen it; the answer is the 5 lowest rows of the group.
    rng = np.random.default_rng(1)
    corpus = np.tile(E, (200, 1))
    best = np.sort(rng.choice(200, size=60, replace=False))
    corpus[best] = A
    for (s, r) in _all_engines_topk(corpus, A[None], 5):
        assert r.tolist() == [best[:5].tolist()]
        assert s.tolist() == [[1.0] * 5]


def test_random_gaussian_identical_across_engines():
    rng = np.random.default_rng(2)
    corpus = rng.normal(size=(300, 32)).astype(np.float32)
    queries = rng.normal(size=(25, 32)).astype(np.float32)
    ref_s, ref_r = _numpy_topk(corpus, queries, 10)
    for (s, r) in _all_engines_topk(corpus, queries, 10):
        np.testing.assert_array_equal(r, ref_r)
        np.testing.assert_allclose(s, ref_s, atol=1e-6)


def test_callback_under_vmap_is_one_host_call(monkeypatch):
    rng = np.random.default_rng(3)
    corpus = rng.normal(size=(50, 16)).astype(np.float32)
    index = FlatIPIndex.from_vectors(corpus)
    q = rng.normal(size=(3, 4, 16)).astype(np.float32)
    calls = []
    host = topk_mod._faiss_topk_host

    def counting(*a):
        calls.append(a[-1].shape)
        return host(*a)

    monkeypatch.setattr(topk_mod, "_faiss_topk_host", counting)
    s, r = jax.jit(jax.vmap(lambda x: faiss_topk_callback(index, x, 5)))(jnp.asarray(q))
    assert calls == [(3, 4, 16)]  # broadcast_all: the stacked batch in one FAISS search
    ref_s, ref_r = _numpy_topk(corpus, q.reshape(12, 16), 5)
    np.testing.assert_array_equal(np.asarray(r).reshape(12, 5), ref_r)
    s_dev, r_dev = jax.vmap(lambda x: exact_topk(prepare_corpus(corpus), x, 5))(jnp.asarray(q))
    np.testing.assert_array_equal(np.asarray(r_dev), np.asarray(r))


# ------------------------------------------------------------------------------------------ GT rank
def test_gt_rank_counts_strictly_higher_scores():
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.9]], np.float32)
    # rank = 1 + #{s_j > s_gt}: equal scores never push the positive down
    expected = {0: 3, 1: 1, 2: 3, 3: 5, 4: 1}
    for gt, want in expected.items():
        assert gt_rank_np(scores, [gt]).tolist() == [want]
        assert jax.jit(gt_rank)(jnp.asarray(scores), jnp.array([gt])).tolist() == [want]


def test_gt_rank_invalid_gives_minus_one():
    scores = np.array([[0.5, 0.9], [np.nan, np.nan], [0.1, 0.2]], np.float32)
    gt = [0, 0, 2]  # row 1: NaN scores (invalid query), row 2: out-of-range gt
    assert gt_rank_np(scores, gt).tolist() == [2, -1, -1]
    assert gt_rank(jnp.asarray(scores), jnp.array(gt)).tolist() == [2, -1, -1]
    assert gt_rank(jnp.asarray(scores[:1]), jnp.array([-1])).tolist() == [-1]  # jnp would otherwise wrap -1


def test_gt_rank_from_vectors_matches_hand_count():
    corpus = np.stack([B, A, C, A, C, B, A])  # scores vs A: [0, 1, .5, 1, .5, 0, 1]
    r = gt_rank_from_vectors(prepare_corpus(corpus), jnp.asarray(np.stack([A] * 3)), jnp.array([2, 3, 5]))
    assert r.tolist() == [4, 1, 6]


# ------------------------------------------------------------------------------------------ Retriever
def _both(corpus, docid2row=None):
    return make_retriever("device", corpus, docid2row), make_retriever("faiss", corpus, docid2row)


def test_retrievers_agree_eager_and_jit():
    rng = np.random.default_rng(4)
    corpus = np.concatenate([_sign_vectors(rng, 30), np.stack([A, A, C])])
    queries = np.concatenate([np.stack([A, C]), _sign_vectors(rng, 4)])
    gt = np.array([31, 32, 0, 5, 7, 30])
    dev, fai = _both(corpus)
    assert isinstance(dev, Retriever) and isinstance(fai, Retriever)
    ref_s, ref_r = _numpy_topk(corpus, queries, 6)
    ref_full = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        corpus / np.linalg.norm(corpus, axis=1, keepdims=True)).T
    ref_rank = gt_rank_np(ref_full, gt)

    @jax.jit
    def run(ret, q):  # the retriever is a pytree: passed as an argument, not closed over
        return ret.topk(q, 6), ret.rank(q, jnp.asarray(gt)), ret.scores(q)

    for ret in (dev, fai):
        for (s, r), rank, full in ((ret.topk(queries, 6), ret.rank(queries, gt), ret.scores(queries)),
                                   run(ret, jnp.asarray(queries))):
            np.testing.assert_array_equal(np.asarray(r), ref_r)
            np.testing.assert_array_equal(np.asarray(s), ref_s.astype(np.float32))
            assert np.asarray(rank).tolist() == ref_rank.tolist()
            np.testing.assert_array_equal(np.asarray(full), ref_full.astype(np.float32))


def test_invalid_queries_flagged_not_raised_under_jit():
    corpus = np.stack([A, B, C, E])
    q = np.stack([A, np.zeros(8, np.float32), np.full(8, np.nan, np.float32)])
    for ret in _both(corpus):
        (s, r), rank = jax.jit(lambda x, ret=ret: (ret.topk(x, 2), ret.rank(x, jnp.array([0, 0, 0]))))(jnp.asarray(q))
        assert np.asarray(r).tolist() == [[0, 2], [-1, -1], [-1, -1]]
        assert np.isnan(np.asarray(s)[1:]).all() and np.asarray(s)[0].tolist() == [1.0, 0.5]
        assert np.asarray(rank).tolist() == [1, -1, -1]


def test_docid2row_id_map_and_doc_ids():
    corpus = np.stack([B, A, C])
    docid2row = {"vC": 2, "vA": 0, "vB": 1}
    assert id_map_from_docid2row(docid2row, 3) == ["vA", "vB", "vC"]
    for ret in _both(corpus, docid2row):
        _, rows = ret.topk(A[None], 2)
        assert ret.doc_ids(rows) == [["vB", "vC"]]
        assert ret.doc_ids(np.array([[-1]])) == [[None]]


def test_retriever_from_config_engine():
    cfg = get_eval_config()
    assert cfg.retrieval.engine == "device"
    assert isinstance(retriever_from_config(cfg, np.stack([A, B])), DeviceRetriever)
    cfg.retrieval.engine = "faiss"
    assert isinstance(retriever_from_config(cfg, np.stack([A, B])), FaissRetriever)
    cfg.retrieval.engine = "annoy"
    with pytest.raises(ValueError, match="retrieval.engine"):
        retriever_from_config(cfg, np.stack([A, B]))


def test_device_retriever_from_index_uses_same_vectors():
    rng = np.random.default_rng(5)
    index = FlatIPIndex.from_vectors(rng.normal(size=(20, 8)).astype(np.float32))
    dev = DeviceRetriever.from_index(index)
    np.testing.assert_array_equal(np.asarray(dev.corpus), index.vectors())
    np.testing.assert_allclose(np.linalg.norm(index.vectors(), axis=1), 1.0, atol=1e-6)


# ------------------------------------------------------------------------------------------ persistence
def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    emb = rng.normal(size=(12, 16)).astype(np.float32)
    docid2row = {f"v{i:02d}": (i * 5) % 12 for i in range(12)}
    np.save(tmp_path / "segment_embeds.npy", emb)
    (tmp_path / "docid2row.json").write_text(json.dumps(docid2row))
    index = FlatIPIndex.from_files(tmp_path / "segment_embeds.npy", tmp_path / "docid2row.json")
    ipath, mpath = index.save(tmp_path / "index")
    assert ipath.name == "index.faiss" and mpath.name == "id_map.json"
    assert json.loads(mpath.read_text()) == sorted(docid2row, key=docid2row.get)
    loaded = FlatIPIndex.load(tmp_path / "index")
    q = rng.normal(size=(3, 16)).astype(np.float32)
    for a, b in zip(index.search(q, 12), loaded.search(q, 12)):
        np.testing.assert_array_equal(a, b)
    assert loaded.id_map == index.id_map
    assert loaded.row_of("v01") == 5
    np.testing.assert_array_equal(loaded.vectors(), index.vectors())


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.faiss"):
        FlatIPIndex.load(tmp_path)
    FlatIPIndex.from_vectors(np.stack([A, B])).save(tmp_path)
    (tmp_path / "id_map.json").unlink()
    with pytest.raises(FileNotFoundError, match="id_map.json"):
        FlatIPIndex.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="segment_embeds.npy"):
        FlatIPIndex.from_files(tmp_path / "segment_embeds.npy", tmp_path / "docid2row.json")


# ------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_raise_named_errors():
    index = FlatIPIndex.from_vectors(np.stack([A, B, C]))
    dev = prepare_corpus(np.stack([A, B, C]))
    with pytest.raises(RetrievalInputError, match="dimension 4 but the index has dimension 8"):
        index.search(np.ones((1, 4), np.float32), 1)
    with pytest.raises(RetrievalInputError, match="dimension"):
        exact_topk(dev, jnp.ones((1, 4)), 1)
    with pytest.raises(RetrievalInputError, match="dimension"):
        faiss_topk_callback(index, jnp.ones((1, 4)), 1)
    with pytest.raises(RetrievalInputError, match="dimension"):
        faiss_scores_callback(index, jnp.ones((2, 5)))
    with pytest.raises(RetrievalInputError, match="non-finite"):
        index.search(np.array([A, A * np.nan]), 1)
    with pytest.raises(RetrievalInputError, match="zero-norm rows \\[1\\]"):
        index.search(np.array([A, np.zeros(8, np.float32)]), 1)
    with pytest.raises(RetrievalInputError, match="non-finite"):
        FlatIPIndex.from_vectors(np.array([A, [np.inf] * 8], np.float32))
    with pytest.raises(RetrievalInputError, match="zero-norm"):
        make_retriever("device", np.array([A, np.zeros(8)], np.float32))
    with pytest.raises(RetrievalInputError, match="k must be"):
        index.search(A[None], 4)
    with pytest.raises(RetrievalInputError, match="k must be"):
        exact_topk(dev, jnp.asarray(A[None]), 0)
    with pytest.raises(RetrievalInputError, match="2-D"):
        index.search(A, 1)


def test_bad_docid2row_raises():
    with pytest.raises(RetrievalInputError, match="2 entries but the embedding matrix has 3 rows"):
        id_map_from_docid2row({"a": 0, "b": 1}, 3)
    with pytest.raises(RetrievalInputError, match="both 'a' and 'b' to row 0"):
        id_map_from_docid2row({"a": 0, "b": 0}, 2)
    with pytest.raises(RetrievalInputError, match="not a row"):
        id_map_from_docid2row({"a": 0, "b": 2}, 2)
