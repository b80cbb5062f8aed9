"""What can latents spliced into the demo's frozen search engine do for retrieval? (issue 23's diagnosis)

    JAX_PLATFORMS=cpu python tools/sqr_capacity.py outputs/toy      # a demo run's output_dir (its data/ is read)

On the engine and corpus of a demo run (configs/toy.py with data_root=<run>/data), three refinements of the
original query through the same splice as the SQR head's (8 latent slots before the embedder prompt's last 6
tokens, `models.sqr.splice_layout`; the frozen embedder pools the last position):
  A. capacity: free vectors at the 8 slots, optimised per wrong-top-1 test row on its own InfoNCE over the test
     corpus (uses the answer: how far the splice can move a query at all);
  B. a query-independent set of 8 latents through a fresh append projector (LayerNorm + identity Linear, as the SQR
     head's), trained on the train split's rows against the train corpus, then applied to the test split;
  C. latents from an MLP of the original query vector and the top-1 video vector (what the policy sees, in
     compressed form), trained and tested the same way;
  D. latents from a linear map of what a perfect reader of the two videos would write in the "compare" text (the
     world's truth: one-hot of the query's five values, of the top-1 video's closest event's five values and of
     which of them differ, `synthetic_text.checked_values`): additive in the attribute values, so it cannot memorise
     a query; whether it lifts the test split says if any refinement conditioned on the policy's reading can;
  E. latents from a linear map of the top-1 video vector alone (what is needed to move the query away from the
     rejected video, as Rocchio's negative feedback does in embedding space);
  F. E's map trained to reproduce Rocchio's query itself (cosine to normalise(q - 0.25 v_top1) on the wrong rows)
     instead of InfoNCE: can the splice carry the refinement that would transfer, when it is told what it is?
  G. no training, an oracle in the engine's own input space: the 8 slots hold the embedder's token embeddings of
     words (the query's words that differ from the top-1 video's, i.e. emphasis on what the rejected video got
     wrong; all five query words; the top-1's differing words), against zeros: does the engine respond to a
     refinement a reader could write?
For B to F it prints the test split's R@1 of the refined query on every row and SQR-only (the refined query only
where the top-1 is wrong) beside the original R@1.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from vsr1_jax import config_files, loading  # noqa: E402
from vsr1_jax.data.paths import PreparedPaths  # noqa: E402
from vsr1_jax.data import synthetic_text as TX  # noqa: E402
from vsr1_jax.data import synthetic_world as SW  # noqa: E402
from vsr1_jax.data.queries import load_retrieval  # noqa: E402
from vsr1_jax.models import sqr as S  # noqa: E402
from vsr1_jax.models.qwen3_vl.layers import layer_norm, linear  # noqa: E402
from vsr1_jax.models.qwen3_vl.run_options import RunOptions  # noqa: E402
from vsr1_jax.processing import chat  # noqa: E402

TAU = 0.1   # the original's InfoNCE temperature (sqr_and_sft.md §5)
ROCCHIO = 0.25   # F's target: q - 0.25 v_top1 (Rocchio's negative feedback; README "The demo")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a demo run's output_dir (its data/ holds the corpus and the Stage-0 engine)")
    ap.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "toy.py"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train-rows", choices=("all", "wrong"), default="all",
                    help="B to E train on every train row or on the wrong-top-1 rows only")
    ap.add_argument("--variants", default="ABCDE", help="which of A to G to run")
    ap.add_argument("--negatives", choices=("corpus", "hard"), default="corpus",
                    help="B to E's InfoNCE over the whole train corpus, or over each row's GT and its 24 hard "
                         "negatives (the top non-GT videos of the original query, as the original's SFT)")
    args = ap.parse_args(argv)
    config = config_files.load(args.config).get_config()
    config.data_root, config.output_dir = os.path.join(args.run, "data"), args.run
    models = loading.load_models(config)
    opts = RunOptions.from_config(config.model)
    D, He, n_lat = models.head.cfg.retrieval_dim, models.head.cfg.embedder_hidden, config.eval.refine_token_count
    paths = PreparedPaths(config.data_root, config.dataset)

    plan = SW.plan_splits(config.synthetic)
    videos = {v.video_id: v for split_videos in plan.values() for v in split_videos}

    def split(name):
        corpus, queries = load_retrieval(paths, name)
        toks = [chat.embedder_query_ids(models.embed_tokenizer, m.query, config.eval.query_embedder_input_prefix,
                                        config.eval.query_embedder_max_length) for m in queries.meta]
        s = dict(V=corpus.matrix, Q=queries.matrix, gt=np.array([corpus.docid2row[m.pos_doc_id] for m in queries.meta]),
                 layout=S.splice_layout(toks, n_lat, 6, pad_id=0), n=len(queries.meta))
        scores = s["Q"] @ s["V"].T
        s["top1"] = scores.argmax(1)
        order = np.argsort(-scores, axis=1)
        s["cand"] = np.stack([np.concatenate([[g], [v for v in o if v != g][:24]]) for g, o in zip(s["gt"], order)])
        row2doc = {r: d for d, r in corpus.docid2row.items()}
        checks = [TX.checked_values(m.query, videos[m.pos_doc_id], videos[row2doc[int(t)]])
                  for m, t in zip(queries.meta, s["top1"])]
        if any(c is None for c in checks):
            raise SystemExit(f"{name}: a query's event was not found in its video (not a synthetic world?)")
        s["checks"] = checks
        print(f"{name}: {s['n']} queries, {len(s['V'])} videos, R@1 of the original query "
              f"{(s['top1'] == s['gt']).mean():.3f}")
        return s

    te, tr = split("test"), split("train")
    # D's features: one-hot of each checked position's value, query's and top-1's, and the positions that differ
    vocab = [sorted({c[side][i] for s in (te, tr) for c in s["checks"] for side in (0, 1)}) for i in range(5)]
    for s in (te, tr):
        F = []
        for seen, asked in s["checks"]:
            row = []
            for i in range(5):
                row += [float(seen[i] == x) for x in vocab[i]] + [float(asked[i] == x) for x in vocab[i]]
            F.append(row + [float(a != b) for a, b in zip(seen, asked)])
        s["F"] = np.asarray(F, np.float32)

    @jax.jit
    def q_from_slots(A, ids, is_lat, lat_idx, mask):
        return S.q_spliced(models.embedder, A, ids, is_lat, lat_idx, mask, opts=opts)

    def infonce(q, V, gt):
        return -jnp.mean(jax.nn.log_softmax(q @ V.T / TAU)[jnp.arange(len(gt)), gt])

    def layout(s, rows):
        return tuple(jnp.asarray(a[rows]) for a in s["layout"])

    def capacity(wrong):   # A: free vectors per wrong test row, each optimised on its own answer
        A = jnp.zeros((len(wrong), n_lat, He)) + 1e-4 * jax.random.normal(jax.random.key(0), (len(wrong), n_lat, He))
        opt = optax.adam(1e-2)
        st, b, V, gt = opt.init(A), layout(te, wrong), jnp.asarray(te["V"]), jnp.asarray(te["gt"][wrong])

        @jax.jit
        def step_a(A, st):
            loss, g = jax.value_and_grad(lambda A: infonce(q_from_slots(A, *b), V, gt))(A)
            u, st = opt.update(g, st)
            return optax.apply_updates(A, u), st, loss

        for _ in range(50):
            A, st, _ = step_a(A, st)
        hit = np.asarray(q_from_slots(A, *b) @ V.T).argmax(1) == te["gt"][wrong]
        print(f"A (free vectors, 50 steps on each row's own answer): GT top-1 on {hit.sum()} of {len(wrong)} wrong "
              f"rows; slot norm {float(jnp.linalg.norm(A, axis=-1).mean()):.2f}")

    if "A" in args.variants:
        capacity(np.flatnonzero(te["top1"] != te["gt"]))

    def words(s, pick):   # G: slots = token embeddings of words, cycled to fill the 8 slots
        E = np.asarray(models.embedder.text.embed[...], np.float32)
        A = np.zeros((s["n"], n_lat, He), np.float32)
        for r, (seen, asked) in enumerate(s["checks"]):
            ids = [i for w in pick(seen, asked) for i in
                   models.embed_tokenizer.encode(" " + w, add_special_tokens=False)]
            if ids:
                A[r] = E[(ids * n_lat)[:n_lat]]
        hit = np.asarray(q_from_slots(jnp.asarray(A), *layout(s, np.arange(s["n"]))) @ s["V"].T).argmax(1) == s["gt"]
        right = s["top1"] == s["gt"]
        return hit.mean(), (hit | right).mean(), right.mean()

    if "G" in args.variants:
        for label, pick in (("zeros", lambda seen, asked: []),
                            ("the query's words that differ from the top-1's",
                             lambda seen, asked: [a for a, b in zip(asked, seen) if a != b]),
                            ("the query's five words", lambda seen, asked: list(asked)),
                            ("the top-1's differing words", lambda seen, asked: [b for a, b in zip(asked, seen)
                                                                                 if a != b])):
            out = {nm: words(s, pick) for nm, s in (("train", tr), ("test", te))}
            what = label if label == "zeros" else f"token embeddings of {label}"
            print(json.dumps({"refinement": f"G: slots = {what}",
                              **{f"{nm} R@1 refined (every row) / SQR-only / original":
                                 " / ".join(f"{x:.3f}" for x in v) for nm, v in out.items()}}))

    # B, C and D: through a fresh append projector, trained on the train split
    def append(p, Z):   # SQRHead.append_input with these parameters
        return linear(layer_norm(Z, p["s"], p["b"], S.LN_EPS), p["W"], p["c"])

    fresh = dict(s=jnp.ones((D,)), b=jnp.zeros((D,)), W=jnp.asarray(S._partial_identity(D, He, jnp.float32)[0]),
                 c=jnp.zeros((He,)))

    def train_and_test(name, params, latents, target=None):
        """target: None = InfoNCE (the original's objective); "rocchio" = cosine to Rocchio's refined query."""
        wrong_only = args.train_rows == "wrong" or target == "rocchio"
        rows_tr = np.flatnonzero(tr["top1"] != tr["gt"]) if wrong_only else np.arange(tr["n"])
        opt = optax.adam(3e-3)
        st, Vtr, rng = opt.init(params), jnp.asarray(tr["V"]), np.random.default_rng(0)

        @jax.jit
        def step(p, st, lay, q, v, f, gt, cand):
            def loss_fn(p):
                qf = q_from_slots(append(p["app"], latents(p, q, v, f)), *lay)
                if target == "rocchio":
                    r = q - ROCCHIO * v
                    r = r / jnp.linalg.norm(r, axis=-1, keepdims=True)
                    return 1.0 - jnp.mean(jnp.sum(qf * r, -1))
                if args.negatives == "corpus":
                    return infonce(qf, Vtr, gt)
                logits = jnp.einsum("bd,bkd->bk", qf, Vtr[cand]) / TAU   # the GT is candidate 0
                return -jnp.mean(jax.nn.log_softmax(logits)[:, 0])
            loss, g = jax.value_and_grad(loss_fn)(p)
            u, st = opt.update(g, st)
            return optax.apply_updates(p, u), st, loss

        t0 = time.time()
        for i in range(args.steps + 1):
            rows = rng.choice(rows_tr, min(32, len(rows_tr)), replace=False)
            params, st, loss = step(params, st, layout(tr, rows), jnp.asarray(tr["Q"][rows]),
                                    jnp.asarray(tr["V"][tr["top1"][rows]]), jnp.asarray(tr["F"][rows]),
                                    jnp.asarray(tr["gt"][rows]), jnp.asarray(tr["cand"][rows]))
            if i % 100 == 0:
                out = {}
                for nm, s in (("train", tr), ("test", te)):
                    Z = latents(params, jnp.asarray(s["Q"]), jnp.asarray(s["V"][s["top1"]]), jnp.asarray(s["F"]))
                    hit = np.asarray(q_from_slots(append(params["app"], Z), *layout(s, np.arange(s["n"]))) @ s["V"].T
                                     ).argmax(1) == s["gt"]
                    right = s["top1"] == s["gt"]
                    out[nm] = (hit.mean(), (hit | right).mean(), right.mean())
                    if target == "rocchio":   # the target itself, for comparison
                        r = s["Q"] - ROCCHIO * s["V"][s["top1"]]
                        out[nm] += (((r @ s["V"].T).argmax(1) == s["gt"]) | right).mean(),
                extra = " / Rocchio's SQR-only" if target == "rocchio" else ""
                print(json.dumps({"refinement": name, "step": i, "loss": round(float(loss), 3),
                                  **{f"{nm} R@1 refined (every row) / SQR-only / original{extra}":
                                     " / ".join(f"{x:.3f}" for x in v) for nm, v in out.items()},
                                  "s": round(time.time() - t0)}))

    k = jax.random.split(jax.random.key(2), 3)
    if "B" in args.variants:
        train_and_test("B: 8 shared latents", dict(app=fresh, Z=0.1 * jax.random.normal(k[0], (n_lat, D))),
                       lambda p, q, v, f: jnp.broadcast_to(p["Z"], (q.shape[0], n_lat, D)))
    De = tr["Q"].shape[1]

    def mlp(p, q, v, f):
        h = jax.nn.gelu(jnp.concatenate([q, v], -1) @ p["W1"] + p["b1"])
        return (h @ p["W2"] + p["b2"]).reshape(q.shape[0], n_lat, D)

    if "C" in args.variants:
        train_and_test("C: MLP(query, top-1 video)",
                       dict(app=fresh, W1=jax.random.normal(k[1], (2 * De, 256)) / np.sqrt(2 * De),
                            b1=jnp.zeros(256), W2=0.01 * jax.random.normal(k[2], (256, n_lat * D)),
                            b2=jnp.zeros(n_lat * D)), mlp)
    nf = tr["F"].shape[1]
    if "D" in args.variants:
        train_and_test("D: linear(perfect reading's one-hot checks)",
                       dict(app=fresh, W=0.01 * jax.random.normal(jax.random.key(3), (nf, n_lat * D)),
                            b=jnp.zeros(n_lat * D)),
                       lambda p, q, v, f: (f @ p["W"] + p["b"]).reshape(f.shape[0], n_lat, D))
    if "E" in args.variants:
        train_and_test("E: linear(top-1 video vector)",
                       dict(app=fresh, W=0.01 * jax.random.normal(jax.random.key(4), (De, n_lat * D)),
                            b=jnp.zeros(n_lat * D)),
                       lambda p, q, v, f: (v @ p["W"] + p["b"]).reshape(v.shape[0], n_lat, D))
    if "F" in args.variants:
        train_and_test("F: linear(top-1 video vector) -> Rocchio's query",
                       dict(app=fresh, W=0.01 * jax.random.normal(jax.random.key(5), (De, n_lat * D)),
                            b=jnp.zeros(n_lat * D)),
                       lambda p, q, v, f: (v @ p["W"] + p["b"]).reshape(v.shape[0], n_lat, D), target="rocchio")


if __name__ == "__main__":
    main()
