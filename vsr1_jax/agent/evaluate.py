"""Evaluation run: the test queries of a prepared dataset (or the demo's synthetic corpus) through the episode engine
with a progress bar, then the original's detail JSONL, result.json, the text report and the plots.

Several processes (launch/): process k evaluates queries k, k+P, ... (the original's split, EVAL L2169-2184) with its
own copy of the models and of the retrieval index, and the detail rows are gathered once, in query order, to
process 0, which writes every file."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax
from tqdm import tqdm

from vsr1_jax import distributed, loading, runinfo
from vsr1_jax.agent.detail_rows import detail_rows
from vsr1_jax.agent.rollout import EpisodeConfig, EpisodeEngine
from vsr1_jax.config_files import PixelBudget, Prepared, read_section
from vsr1_jax.ckpt.read import Models
from vsr1_jax.data.files import load_npy_video, read_video_npy_meta
from vsr1_jax.data.paths import PreparedPaths
from vsr1_jax.data.queries import eval_queries, load_retrieval
from vsr1_jax.eval import report
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.retrieval.index import RetrievalInputError
from vsr1_jax.retrieval.topk import make_retriever

log = logging.getLogger(__name__)


def video_source_for(paths: PreparedPaths, split: str, missing: set | None = None):
    """doc_id -> (npy frames, meta.jsonl row or None) of a prepared split; a missing file raises FileNotFoundError
    and is added to `missing` when given."""
    meta_path = paths.video_npy_meta(split)
    meta = {r.video_id: r.to_json() for r in read_video_npy_meta(meta_path)} if os.path.exists(meta_path) else {}

    def video_source(doc_id):
        path = paths.video_npy(split, doc_id)
        if not os.path.exists(path):
            if missing is not None:
                missing.add(str(path))
            raise FileNotFoundError(f"{path} missing (video_npy_with_meta is produced by the npy-extraction step)")
        return load_npy_video(path), meta.get(doc_id)

    return video_source


def missing_videos(paths: PreparedPaths, split: str, doc_ids) -> list[str]:
    """The npy files of `doc_ids` that do not exist (what an evaluation would fail to read)."""
    return [str(p) for p in (paths.video_npy(split, d) for d in doc_ids) if not os.path.exists(p)]


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Everything an evaluation reads, from `config.eval`, `config.video.eval`, the episode settings
    (`EpisodeConfig.from_config(config, "eval")`) and the model options: read once, at the boundary
    (`main_eval`, the demo); `run_eval` never reads the config."""
    prepared: Prepared
    output_dir: str
    checkpoint: str                 # config.checkpoint ("" = the demo's models), named in run_summary.json
    max_samples: int | None         # None: every query (placeholders of configs/_eval.py)
    eval_limit_ratio: float | None
    seed: int
    temperature: float
    top_p: float
    top_k: int
    topk: tuple[int, ...]
    iou_thresholds: tuple[float, ...]
    retrieval_engine: str
    video: PixelBudget
    episode: EpisodeConfig
    run: RunOptions

    @classmethod
    def from_config(cls, config) -> "EvalSettings":
        e = config.eval
        return cls(prepared=Prepared(str(config.data_root), str(config.dataset), str(config.split)),
                   output_dir=str(config.output_dir), checkpoint=str(config.checkpoint),
                   max_samples=None if e.max_samples is None else int(e.max_samples),
                   eval_limit_ratio=None if e.eval_limit_ratio is None else float(e.eval_limit_ratio),
                   seed=int(e.seed),
                   temperature=float(e.temperature), top_p=float(e.top_p), top_k=int(e.top_k),
                   topk=tuple(int(k) for k in e.topk), iou_thresholds=tuple(float(t) for t in e.iou_thresholds),
                   retrieval_engine=str(e.retrieval.engine), video=read_section(PixelBudget, config.video.eval),
                   episode=EpisodeConfig.from_config(config, "eval"), run=RunOptions.from_config(config.model))


def _retrieval(settings: EvalSettings, paths: PreparedPaths, split: str):
    """The split's corpus, queries and the search engine over the corpus (its errors name the embeddings file)."""
    corpus, queries = load_retrieval(paths, split)
    try:
        return corpus, queries, make_retriever(settings.retrieval_engine, corpus.matrix, corpus.docid2row)
    except RetrievalInputError as e:
        raise RetrievalInputError(f"{paths.segment_embeds(split)}: {e}") from None


def _skipped_block(qset, rows: list, stats: dict, missing_files: list[str], limit: int = 20) -> dict:
    """What result.json / report.txt say about the selected queries that were not evaluated."""
    counts = {**qset.skips, "video_file_missing": stats["video_file_missing"],
              "prompt_too_long": stats["prompt_too_long"]}
    files = sorted(missing_files)
    return dict(selected=qset.rows_total, evaluated=len(rows), not_evaluated=qset.rows_total - len(rows),
                counts=counts, video_files_missing=files[:limit], video_files_missing_total=len(files))


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


def main_eval(config) -> dict:
    """`--config.mode=eval`: the settings of `config` (the boundary), the split's data read before the (slow) model
    load so that data errors come first, the models of the config (the demo's, or `config.checkpoint`), then
    `run_eval`."""
    settings = EvalSettings.from_config(config)
    paths = PreparedPaths(settings.prepared.data_root, settings.prepared.dataset)
    data = []
    models = loading.load_models(config, before_load=lambda: data.append(_retrieval(settings, paths,
                                                                                     settings.prepared.split)))
    return run_eval(settings, models, record=runinfo.config_dict(config), data=data[0] if data else None,
                    checkpoint=settings.checkpoint or "the demo's untrained tiny models (config.demo)")


def run_eval(settings: EvalSettings, models: Models, *, output_dir: str | None = None, checkpoint: str | None = None,
             record: dict | None = None, data=None) -> dict:
    """Evaluate `models` on the split of `settings`; write the outputs under `output_dir` (default
    `settings.output_dir`). `checkpoint`: what run_summary.json names as the evaluated model; `record`: the resolved
    config, saved as config.json; `data`: the split's (corpus, queries, retriever) when already read."""
    t0 = time.time()
    out_dir = output_dir or settings.output_dir
    os.makedirs(out_dir, exist_ok=True)
    paths = PreparedPaths(settings.prepared.data_root, settings.prepared.dataset)
    split = settings.prepared.split
    corpus, queries, retriever = data or _retrieval(settings, paths, split)
    checkpoint = checkpoint or settings.checkpoint
    loading.check_embedder_dim(models, corpus.dim, str(paths.segment_embeds(split)), checkpoint)
    if distributed.is_primary() and record is not None:
        runinfo.save_config(record, out_dir)
    # a trained model may hold global (multi-process) arrays; each process evaluates on a local copy
    models = models._replace(policy=distributed.local_module(models.policy),
                             head=distributed.local_module(models.head),
                             embedder=distributed.local_module(models.embedder))
    qset = eval_queries(paths, split, max_samples=settings.max_samples, limit_ratio=settings.eval_limit_ratio,
                        seed=settings.seed, queries=queries, docid2row=corpus.docid2row)
    absent = missing_videos(paths, split, corpus.doc_ids)
    if absent:   # checked up front: a query whose retrieved video is one of these is skipped and named at the end
        log.warning("%d of the %d video files of %s/%s are missing (e.g. %s); queries that retrieve one of them are "
                    "skipped and listed in report.txt / result.json", len(absent), len(corpus.doc_ids),
                    paths.dataset_dir, split, absent[0])
    ep_cfg = settings.episode
    missing_files: set = set()
    engine = EpisodeEngine(models.policy, models.head, models.embedder, models.tokenizer, models.embed_tokenizer,
                           video_source_for(paths, split, missing_files), settings.video, ep_cfg, settings.run,
                           retriever=retriever)
    P, k = jax.process_count(), jax.process_index()
    mine = list(range(k, len(qset.queries), P))   # this process's queries (all of them with one process)
    local = [qset.queries[i] for i in mine]
    qvecs = queries.matrix[[q.q_row for q in local]]
    bar = tqdm(total=len(local), desc="episodes", unit="query", dynamic_ncols=True, disable=k != 0)
    sp = engine.sampling_params(settings.temperature, settings.top_p, settings.top_k)
    trajs = engine.run(local, qvecs, sp, key=jax.random.key(settings.seed), progress=bar.update)
    bar.close()
    rows = detail_rows(trajs, ep_cfg.max_turn, ep_cfg.num_latents)
    stats = {key: engine.stats[key] for key in ("video_file_missing", "prompt_too_long", "generate_s", "refine_s")}
    if P > 1:
        rows, stats = _gather_rows(rows, trajs, mine, stats)
        missing_files = set().union(*distributed.allgather_objects(sorted(missing_files)))
    detail = os.path.join(out_dir, f"detail_{settings.prepared.dataset}_{split}.jsonl")
    if k != 0:   # process 0 writes the files
        return dict(output_dir=os.path.abspath(out_dir), detail_jsonl=detail, queries=len(rows), **stats,
                    wall_s=time.time() - t0)
    report.write_detail_jsonl(rows, detail)
    skipped = _skipped_block(qset, rows, stats, sorted(missing_files))
    out = report.write_report(rows, out_dir, detail, ks=settings.topk, thresholds=settings.iou_thresholds,
                              skipped=skipped if skipped["not_evaluated"] else None)
    print(report.skipped_text(skipped) if skipped["not_evaluated"] else
          f"evaluated {len(rows)} of {skipped['selected']} queries", flush=True)
    summary = dict(output_dir=os.path.abspath(out_dir), detail_jsonl=detail, queries=len(rows),
                   # where the prepared data is, so that the episode viewer (vsr1_jax/viewer.py) finds the frames
                   data_root=os.path.abspath(settings.prepared.data_root), dataset=settings.prepared.dataset,
                   split=split,
                   queries_selected=skipped["selected"], skips=skipped["counts"],
                   video_files_missing=skipped["video_files_missing"],
                   checkpoint=os.path.abspath(checkpoint) if checkpoint and os.path.isdir(checkpoint) else checkpoint,
                   code_version=runinfo.code_version(),
                   generate_s=stats["generate_s"], refine_s=stats["refine_s"],
                   wall_s=time.time() - t0, **{k: str(v) for k, v in out.items()})
    with open(os.path.join(out_dir, "run_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
