"""Video retrieval: exact cosine over L2-normalised video embeddings, on device or through a host FAISS index.

faiss is imported lazily (it is absent on the accelerator machine), so importing this package never needs it.
"""
from vsr1_jax.retrieval.index import (
    ID_MAP_FILENAME,
    INDEX_FILENAME,
    FlatIPIndex,
    RetrievalInputError,
    check_vectors,
    id_map_from_docid2row,
    l2_normalize_np,
)
from vsr1_jax.retrieval.topk import (
    ENGINES,
    DeviceRetriever,
    FaissRetriever,
    Retriever,
    corpus_scores,
    exact_topk,
    faiss_scores_callback,
    faiss_topk_callback,
    gt_rank,
    gt_rank_from_vectors,
    gt_rank_np,
    l2_normalize,
    make_retriever,
    prepare_corpus,
    retriever_from_config,
)

__all__ = [
    "ENGINES",
    "ID_MAP_FILENAME",
    "INDEX_FILENAME",
    "DeviceRetriever",
    "FaissRetriever",
    "FlatIPIndex",
    "RetrievalInputError",
    "Retriever",
    "check_vectors",
    "corpus_scores",
    "exact_topk",
    "faiss_scores_callback",
    "faiss_topk_callback",
    "gt_rank",
    "gt_rank_from_vectors",
    "gt_rank_np",
    "id_map_from_docid2row",
    "l2_normalize",
    "l2_normalize_np",
    "make_retriever",
    "prepare_corpus",
    "retriever_from_config",
]
