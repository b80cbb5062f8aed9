"""Host-side InfoNCE candidates of Stage-1 SFT (sqr_and_sft.md §5; TRN `_select_negative_ids` L1059-1089,
`_select_strict_negative_indices` L1091-1128, online refresh L1130-1243):

- negatives, in the original's order: the retrieved top-1 if it is not the positive, then the qid's hard-negative
  list (unknown ids, the positive and duplicates skipped), then uniform random corpus videos from one seeded
  `random.Random(42)` stream, up to K = 24;
- the ambiguity filter: drop a negative whose cosine with the *stored* original query is >= cos(q_orig, pos) - 0.0005
  (a row left with none contributes no InfoNCE term);
- the online refresh: after a step > 0, each row's qid list is replaced by the top-K corpus videos by cosine with
  its (detached) refined query, the positive excluded. Only later visits of the qid see it.

Everything here depends only on stored vectors, so the candidate set of a step is fixed before the step runs; the
device computes the logits against q_final. The refreshed lists and the random stream are the sampler's state
(`state_dict`), checkpointed with the run.
"""
from __future__ import annotations

import random
from typing import Mapping, Sequence

import numpy as np


def l2_normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """x / max(||x||, eps) row-wise, float32 (torch F.normalize)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


class NegativeSampler:
    """The candidate selection and the refreshed hard-negative lists of one training run.

    video_ids: corpus ids in docid2row order (the random fill indexes this list); vectors: the corpus matrix rows in
    docid2row row order; hard_negatives: {qid: [doc_id, ...]} from train/hard_negatives.json.
    """

    def __init__(self, docid2row: Mapping[str, int], vectors: np.ndarray,
                 hard_negatives: Mapping[str, Sequence[str]], *, pool_size: int = 24, seed: int = 42,
                 ambiguous_margin: float = 0.0005, filter_ambiguous: bool = True):
        self.row_of = {str(k): int(v) for k, v in docid2row.items()}
        self.video_ids = list(self.row_of)
        self.id_by_row = [""] * (max(self.row_of.values(), default=-1) + 1)
        for vid, row in self.row_of.items():
            if not self.id_by_row[row]:
                self.id_by_row[row] = vid
        self.vectors = l2_normalize_rows(vectors)
        self.base = {str(k): list(v) for k, v in hard_negatives.items()}
        self.overrides: dict[str, list[str]] = {}   # refreshed lists (what the checkpoint must carry)
        self.pool_size = int(pool_size)
        self.margin = float(ambiguous_margin)
        self.filter_ambiguous = bool(filter_ambiguous)
        self.rng = random.Random(int(seed))

    def hard_negatives(self, qid: str) -> list[str]:
        return self.overrides.get(qid, self.base.get(qid, []))

    # ---- selection ---------------------------------------------------------------------------------------------
    def _random_fill(self, banned: set[str], need: int) -> list[str]:
        picked: list[str] = []
        attempts, max_attempts = 0, max(need * 100, 1000)
        while len(picked) < need and attempts < max_attempts:
            vid = self.video_ids[self.rng.randrange(len(self.video_ids))]
            attempts += 1
            if vid not in banned:
                banned.add(vid)
                picked.append(vid)
        for vid in self.video_ids:  # a tiny corpus: take what is left, in order
            if len(picked) >= need:
                break
            if vid not in banned:
                banned.add(vid)
                picked.append(vid)
        return picked

    def select(self, qid: str, pos_id: str, retrieved_id: str | None) -> list[str]:
        """Up to K negative ids for one row, in the original's order."""
        out: list[str] = []
        banned = {pos_id}
        if retrieved_id and retrieved_id != pos_id and retrieved_id in self.row_of:
            out.append(retrieved_id)
            banned.add(retrieved_id)
        for vid in self.hard_negatives(qid):
            if len(out) >= self.pool_size:
                break
            if vid in self.row_of and vid not in banned:
                out.append(vid)
                banned.add(vid)
        if len(out) < self.pool_size and self.video_ids:
            out.extend(self._random_fill(banned, self.pool_size - len(out)))
        return out[:self.pool_size]

    def strict(self, q_orig: np.ndarray, pos_id: str, neg_ids: Sequence[str]) -> list[str]:
        """The negatives kept by the ambiguity filter (all of them when the filter is off)."""
        if not self.filter_ambiguous or not neg_ids:
            return list(neg_ids)
        q = l2_normalize_rows(np.asarray(q_orig)[None])[0]
        pos = float(self.vectors[self.row_of[pos_id]] @ q)
        sims = self.vectors[[self.row_of[n] for n in neg_ids]] @ q
        return [n for n, s in zip(neg_ids, sims) if not s >= pos - self.margin]

    def candidates(self, qid: str, pos_id: str, retrieved_id: str | None, q_orig: np.ndarray | None):
        """(ids [1 + m]: positive first then the strict negatives, selected count before the filter). Empty ids when
        the row has no InfoNCE term (no positive in the corpus, no stored query vector, no negative)."""
        if pos_id not in self.row_of or q_orig is None:
            return [], 0
        negs = self.select(qid, pos_id, retrieved_id)
        if not negs:
            return [], 0
        strict = self.strict(q_orig, pos_id, negs)
        return ([pos_id] + strict if strict else []), len(negs)

    def candidate_vectors(self, ids: Sequence[str], size: int) -> tuple[np.ndarray, np.ndarray]:
        """(vectors [size, D] unit rows, mask [size] bool) of candidate ids padded to `size` = 1 + K."""
        out = np.zeros((size, self.vectors.shape[1]), np.float32)
        mask = np.zeros((size,), bool)
        if ids:
            out[:len(ids)] = self.vectors[[self.row_of[i] for i in ids]]
            mask[:len(ids)] = True
        return out, mask

    # ---- online refresh ----------------------------------------------------------------------------------------
    def mine(self, q: np.ndarray, banned: set[str], k: int) -> list[str]:
        """Top-k corpus ids by cosine with q, `banned` excluded (TRN `_mine_online_hard_negatives`)."""
        q = np.asarray(q, np.float32).reshape(-1)
        n = float(np.linalg.norm(q))
        if n > 0:
            q = q / n
        sims = np.asarray(self.vectors @ q, np.float32).reshape(-1)
        for vid in banned:
            row = self.row_of.get(vid)
            if row is not None:
                sims[row] = -np.inf
        valid = int(np.isfinite(sims).sum())
        if valid <= 0 or k <= 0:
            return []
        k = min(max(1, k), valid)
        if k >= sims.shape[0]:
            top = np.argsort(-sims)[:k]
        else:
            part = np.argpartition(-sims, kth=k - 1)[:k]
            top = part[np.argsort(-sims[part])]
        out = []
        for row in top:
            vid = self.id_by_row[int(row)] if int(row) < len(self.id_by_row) else ""
            if vid and vid not in banned:
                out.append(vid)
            if len(out) >= k:
                break
        return out

    def refresh(self, qids: Sequence[str], pos_ids: Sequence[str], q_final: np.ndarray) -> int:
        """Replace each qid's list by the top-K ids of its refined query (first row of a repeated qid wins).
        Returns the number of lists replaced."""
        seen, updated = set(), 0
        for qid, pos, q in zip(qids, pos_ids, np.asarray(q_final, np.float32)):
            if not qid or not pos or qid in seen:
                continue
            seen.add(qid)
            mined = self.mine(q, {pos}, self.pool_size)
            if mined:
                self.overrides[qid] = mined
                updated += 1
        return updated

    # ---- checkpointed state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"overrides": self.overrides, "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: Mapping) -> None:
        self.overrides = {str(k): list(v) for k, v in state["overrides"].items()}
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
