"""Evaluation run: the test queries of a prepared dataset (or the demo's synthetic corpus) through the episode engine
with a progress bar, then the original's detail JSONL, result.json, the text report and the plots.

Several processes (launch/): process k evaluates queries k, k+P, ... (the original's split, EVAL L2169-2184) with its
own copy of the models and of the retrieval index, and the detail rows are gathered once, in query order, to
process 0, which writes every file."""
from __future__ import annotations

import json
import logging
import os
import time

import jax
from tqdm import tqdm

from vsr1_jax import distributed, loading
from vsr1_jax.agent.detail_rows import detail_rows
from vsr1_jax.agent.rollout import EpisodeConfig, EpisodeEngine
from vsr1_jax.data.files import load_npy_video, read_video_npy_meta
from vsr1_jax.data.paths import PreparedPaths
from vsr1_jax.data.queries import eval_queries, load_corpus, load_queries
from vsr1_jax.eval import report
from vsr1_jax.models.qwen3_vl.model import RunOptions
from vsr1_jax.retrieval.topk import make_retriever

log = logging.getLogger(__name__)


def video_source_for(paths: PreparedPaths, split: str):
    """doc_id -> (npy frames, meta.jsonl row or None) of a prepared split."""
    meta_path = paths.video_npy_meta(split)
    meta = {r.video_id: r.to_json() for r in read_video_npy_meta(meta_path)} if os.path.exists(meta_path) else {}

    def video_source(doc_id):
        path = paths.video_npy(split, doc_id)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} missing (video_npy_with_meta is produced by the npy-extraction step)")
        return load_npy_video(path), meta.get(doc_id)

    return video_source


def _gather_rows(rows: list[dict], trajs, positions: list[int], stats: dict):
    """Every process's detail rows, in the one-process order (query order), and the summed counters. A query the
    engine skipped has no row; the rows follow the trajectories in order."""
    kept = [pos for pos, t in zip(positions, trajs) if t.turns]
    if len(kept) != len(rows):
        raise RuntimeError(f"{len(rows)} detail rows for {len(kept)} evaluated queries")
    parts = distributed.allgather_objects(dict(rows=list(zip(kept, rows)), stats=stats))
    merged = sorted((pr for p in parts for pr in p["rows"]), key=lambda pr: pr[0])
    if len({pos for pos, _ in merged}) != len(merged):
        raise RuntimeError("a query was evaluated by more than one process")
    total = {key: sum(p["stats"][key] for p in parts) for key in stats}
    return [r for _, r in merged], total


def run_eval(config, models: loading.Models | None = None, *, output_dir: str | None = None) -> dict:
    """Evaluate `models` (default: loaded from the config: the demo's, or `config.checkpoint`) on
    `config.split` of the dataset; write the outputs under `output_dir` (default `config.output_dir`)."""
    t0 = time.time()
    out_dir = output_dir or config.output_dir
    os.makedirs(out_dir, exist_ok=True)
    if models is None:
        if not config.demo.enabled:
            if not config.checkpoint:
                raise loading.SetupError(f"--config.checkpoint is empty; {loading.CONVERT_HINT}")
            loading.check_dataset(config)
        models = loading.load_models(config)
    # a trained model may hold global (multi-process) arrays; each process evaluates on a local copy
    models = models._replace(policy=distributed.local_module(models.policy),
                             head=distributed.local_module(models.head),
                             embedder=distributed.local_module(models.embedder))
    paths = PreparedPaths(config.data_root, config.dataset)
    split = config.split
    corpus = load_corpus(paths, split)
    queries = load_queries(paths, split)
    qset = eval_queries(paths, split, max_samples=config.eval.max_samples, limit_ratio=config.eval.eval_limit_ratio,
                        seed=config.eval.seed, queries=queries, docid2row=corpus.docid2row)
    retriever = make_retriever(config.eval.retrieval.engine, corpus.matrix, corpus.docid2row)
    ep_cfg = EpisodeConfig.from_config(config, "eval")
    engine = EpisodeEngine(models.policy, models.head, models.embedder, models.tokenizer, models.embed_tokenizer,
                           video_source_for(paths, split), config.video.eval, ep_cfg,
                           RunOptions.from_config(config.model), retriever=retriever)
    P, k = jax.process_count(), jax.process_index()
    mine = list(range(k, len(qset.queries), P))   # this process's queries (all of them with one process)
    local = [qset.queries[i] for i in mine]
    qvecs = queries.matrix[[q.q_row for q in local]]
    bar = tqdm(total=len(local), desc="episodes", unit="query", dynamic_ncols=True, disable=k != 0)
    ec = config.eval
    sp = engine.sampling_params(ec.temperature, ec.top_p, ec.top_k)
    trajs = engine.run(local, qvecs, sp, key=jax.random.key(ec.seed), progress=bar.update)
    bar.close()
    rows = detail_rows(trajs, ep_cfg.max_turn, ep_cfg.num_latents)
    stats = {key: engine.stats[key] for key in ("video_file_missing", "prompt_too_long", "generate_s", "refine_s")}
    if P > 1:
        rows, stats = _gather_rows(rows, trajs, mine, stats)
    detail = os.path.join(out_dir, f"detail_{config.dataset}_{split}.jsonl")
    if k != 0:   # process 0 writes the files
        return dict(output_dir=os.path.abspath(out_dir), detail_jsonl=detail, queries=len(rows), **stats,
                    wall_s=time.time() - t0)
    report.write_detail_jsonl(rows, detail)
    out = report.write_report(rows, out_dir, detail, ks=tuple(ec.topk), thresholds=tuple(ec.iou_thresholds))
    # where the prepared data is, so that the episode viewer (vsr1_jax/viewer.py) finds the frames by itself
    summary = dict(output_dir=os.path.abspath(out_dir), detail_jsonl=detail, queries=len(rows),
                   data_root=os.path.abspath(config.data_root), dataset=config.dataset, split=split,
                   skips={**qset.skips, "video_file_missing": stats["video_file_missing"],
                          "prompt_too_long": stats["prompt_too_long"]},
                   generate_s=stats["generate_s"], refine_s=stats["refine_s"],
                   wall_s=time.time() - t0, **{k: str(v) for k, v in out.items()})
    with open(os.path.join(out_dir, "run_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
