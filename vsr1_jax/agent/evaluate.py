"""Evaluation run: the test queries of a prepared dataset (or the demo's synthetic corpus) through the episode engine
with a progress bar, then the original's detail JSONL, result.json, the text report and the plots."""
from __future__ import annotations

import json
import logging
import os
import time

import jax
from tqdm import tqdm

from vsr1_jax import loading
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
    qvecs = queries.matrix[[q.q_row for q in qset.queries]]
    bar = tqdm(total=len(qset.queries), desc="episodes", unit="query", dynamic_ncols=True)
    ec = config.eval
    sp = engine.sampling_params(ec.temperature, ec.top_p, ec.top_k)
    trajs = engine.run(qset.queries, qvecs, sp, key=jax.random.key(ec.seed), progress=bar.update)
    bar.close()
    rows = detail_rows(trajs, ep_cfg.max_turn, ep_cfg.num_latents)
    detail = os.path.join(out_dir, f"detail_{config.dataset}_{split}.jsonl")
    report.write_detail_jsonl(rows, detail)
    out = report.write_report(rows, out_dir, detail, ks=tuple(ec.topk), thresholds=tuple(ec.iou_thresholds))
    summary = dict(output_dir=os.path.abspath(out_dir), detail_jsonl=detail, queries=len(rows),
                   skips={**qset.skips, "video_file_missing": engine.stats["video_file_missing"],
                          "prompt_too_long": engine.stats["prompt_too_long"]},
                   generate_s=engine.stats["generate_s"], refine_s=engine.stats["refine_s"],
                   wall_s=time.time() - t0, **{k: str(v) for k, v in out.items()})
    with open(os.path.join(out_dir, "run_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
