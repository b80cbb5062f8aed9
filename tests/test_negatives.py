"""InfoNCE candidates of Stage-1 SFT against a plain-Python transcription of sqr_and_sft.md §5 on random cases:
the negative order (retrieved top-1, hard negatives, seeded random fill), the ambiguity filter, the online refresh,
and the checkpointed state (a restored sampler continues identically)."""
import math
import random

import numpy as np

from vsr1_jax.train.negatives import NegativeSampler

K = 24


def spec_select(qid, pos, retrieved, hard, ids, rng):
    """§5 'Negatives', step by step."""
    known = set(ids)
    out, banned = [], {pos}
    if retrieved and retrieved != pos and retrieved in known:
        out.append(retrieved)
        banned.add(retrieved)
    for v in hard.get(qid, []):
        if len(out) == K:
            break
        if v in known and v not in banned:
            out.append(v)
            banned.add(v)
    need = K - len(out)
    tries, max_tries = 0, max(need * 100, 1000)
    while need > 0 and tries < max_tries:
        tries += 1
        v = ids[rng.randrange(len(ids))]
        if v not in banned:
            banned.add(v)
            out.append(v)
            need -= 1
    for v in ids:
        if need <= 0:
            break
        if v not in banned:
            banned.add(v)
            out.append(v)
            need -= 1
    return out


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_selection_filter_refresh_match_spec():
    rng = np.random.RandomState(0)
    for case in range(30):
        n = int(rng.randint(5, 60))
        ids = [f"v{i}" for i in rng.permutation(n)]            # docid2row order != row order
        docid2row = {v: int(v[1:]) for v in ids}
        vecs = rng.randn(n, 8).astype(np.float32)
        if case % 3 == 0:
            vecs[rng.randint(n)] = vecs[rng.randint(n)]        # duplicate vectors: ties
        hard = {f"q{j}": [f"v{k}" for k in rng.randint(0, n + 5, rng.randint(0, 40))] for j in range(5)}
        s = NegativeSampler(docid2row, vecs, hard, pool_size=K, seed=42, ambiguous_margin=0.0005)
        spec_rng = random.Random(42)
        refreshed = {}
        for step in range(6):
            qid = f"q{rng.randint(5)}"
            pos = ids[rng.randint(n)]
            retrieved = [None, pos, ids[rng.randint(n)], "unknown"][rng.randint(4)]
            q_orig = rng.randn(8)
            cur = {**hard, **refreshed}
            expect = spec_select(qid, pos, retrieved, cur, ids, spec_rng)
            got_ids, n_sel = s.candidates(qid, pos, retrieved, q_orig)
            assert n_sel == len(expect)
            unit = [v / np.linalg.norm(v) for v in vecs]
            p = cos(q_orig, unit[docid2row[pos]])
            strict = [v for v in expect if not cos(q_orig, unit[docid2row[v]]) >= p - 0.0005]
            assert got_ids == ([pos] + strict if strict else [])
            # refresh: top-K by cosine with q, the positive excluded (ties: any order among equals)
            q = rng.randn(8)
            s.refresh([qid], [pos], q[None])
            sims = {v: cos(q, unit[docid2row[v]]) for v in ids if v != pos}
            top = sorted(sims, key=lambda v: -sims[v])[:K]
            got = s.hard_negatives(qid)
            assert sorted(got) == sorted(top) or [round(sims[v], 6) for v in got] == [round(sims[v], 6) for v in top]
            refreshed[qid] = got


def test_state_round_trip_continues_identically():
    rng = np.random.RandomState(1)
    ids = {f"v{i}": i for i in range(40)}
    vecs = rng.randn(40, 8).astype(np.float32)
    a = NegativeSampler(ids, vecs, {"q": ["v1", "v2"]})
    for _ in range(3):
        a.candidates("q", "v0", None, rng.randn(8))
    a.refresh(["q"], ["v0"], rng.randn(1, 8))
    b = NegativeSampler(ids, vecs, {"q": ["v1", "v2"]})
    import json
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    q = rng.randn(8)
    assert a.candidates("q", "v3", "v5", q) == b.candidates("q", "v3", "v5", q)
    assert a.select("z", "v0", None) == b.select("z", "v0", None)
