"""Evaluation run: load (or, for the demo, build) the prepared data and the models, run the search agent over the
test queries with a progress bar, and write the detail JSONL, result.json, the text report and the plots."""
from __future__ import annotations

import json
import logging
import os
import time

import jax
import jax.numpy as jnp
from flax import nnx
from tqdm import tqdm

from vsr1_jax import convert
from vsr1_jax.agent.embedding import default_embedder
from vsr1_jax.agent.episode import EpisodeConfig, SearchAgent
from vsr1_jax.data.files import load_npy_video, read_video_npy_meta
from vsr1_jax.data.paths import PreparedPaths
from vsr1_jax.data.queries import eval_queries, load_corpus, load_queries
from vsr1_jax.data.synthetic import build_synthetic_dataset
from vsr1_jax.data.tiny_tokenizer import build_tiny_tokenizer
from vsr1_jax.eval import report
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL, RunOptions
from vsr1_jax.models.qwen3_vl.params import load_flat
from vsr1_jax.processing.tokenizer import load_tokenizer
from vsr1_jax.retrieval.topk import make_retriever

log = logging.getLogger(__name__)

CONVERT_HINT = ("convert a released checkpoint first: python -m vsr1_jax.convert hf-to-orbax <hf_folder> <dst>, "
                "then pass --config.checkpoint=<dst>")


class SetupError(RuntimeError):
    """A missing folder or checkpoint; the message names it and the command that produces it."""


def _opts(config) -> RunOptions:
    m = config.model
    decode = m.decode_attn_impl
    if decode == "auto":
        dev = jax.devices()[0]
        decode = "pallas" if dev.platform == "gpu" and "NVIDIA" in dev.device_kind else "xla"
    return RunOptions(dtype=m.dtype, attn_impl=m.attn_impl, vision_attn_impl=m.vision_attn_impl,
                      decode_attn_impl=decode, remat="none")


def _module_from(cfg, params, dtype):
    """A Qwen3VL holding converted params (nested dict), cast to `dtype` when given."""
    model = Qwen3VL(cfg, rngs=None)
    flat = {tuple(str(p) for p in path): v for path, v in nnx.to_flat_state(nnx.State(params))}
    load_flat(model, {k: (v.get_value() if hasattr(v, "get_value") else v) for k, v in flat.items()}, dtype=dtype)
    return model


def load_checkpoint(path: str, dtype=None):
    """(policy, sqr head, embedder model, policy tokenizer, embedder tokenizer) from a converted checkpoint folder
    (`python -m vsr1_jax.convert hf-to-orbax`) or, converting in memory, a released HF folder."""
    if not os.path.isdir(path):
        raise SetupError(f"checkpoint folder {path!r} not found; {CONVERT_HINT}")
    if os.path.exists(os.path.join(path, "vsr1_checkpoint.json")):
        ck = convert.load_converted(path)
    elif os.path.exists(os.path.join(path, "config.json")):
        ck = convert.load_hf_folder(path)
    else:
        raise SetupError(f"{path} holds neither vsr1_checkpoint.json nor config.json; {CONVERT_HINT}")
    if ck.sqr_params is None or ck.embedder is None:
        raise SetupError(f"{path} is not a VideoSearch-R1 checkpoint (it needs refine_* tensors and a "
                         "query_embedder/ sub-folder)")
    policy = _module_from(ck.cfg, ck.params, dtype)
    head = S.SQRHead(ck.sqr_cfg, rngs=None)
    nnx.update(head, nnx.State(ck.sqr_params))
    embedder = _module_from(ck.embedder.cfg, ck.embedder.params, dtype)
    tok, _ = load_tokenizer(ck.tokenizer_dir)
    etok, _ = load_tokenizer(ck.embedder.tokenizer_dir, add_refine=False)
    return policy, head, embedder, tok, etok


def build_demo(config):
    """The toy: tiny tokenizer, tiny random policy + embedder + SQR head, and the synthetic corpus (built once)."""
    emb = default_embedder(seed=config.demo.embedder_seed, video_cfg=config.demo.embed_video.to_dict(),
                           opts=_opts(config))
    paths = PreparedPaths(config.data_root, config.dataset)
    if not os.path.exists(paths.segment_embeds(config.split)):
        log.info("building the synthetic corpus under %s", paths.dataset_dir)
        build_synthetic_dataset(config.data_root, config.dataset, config.synthetic, embedder=emb, overwrite=True)
    tok = build_tiny_tokenizer()
    policy = Qwen3VL(get_preset("tiny"), rngs=nnx.Rngs(config.demo.policy_seed))
    D = emb.dim
    head = S.SQRHead(S.SQRConfig(policy_hidden=policy.cfg.text.hidden_size, retrieval_dim=D, embedder_hidden=D,
                                 zero_init_refine=config.demo.zero_init_refine), rngs=nnx.Rngs(config.demo.policy_seed))
    return policy, head, nnx.merge(emb.graphdef, emb.state), tok, tok


def run_eval(config) -> dict:
    t0 = time.time()
    os.makedirs(config.output_dir, exist_ok=True)
    if config.demo.enabled:
        policy, head, embedder, tok, etok = build_demo(config)
    else:
        if not config.checkpoint:
            raise SetupError(f"--config.checkpoint is empty; {CONVERT_HINT}")
        if not config.data_root or not os.path.isdir(os.path.join(config.data_root, config.dataset)):
            raise SetupError(f"prepared dataset folder {os.path.join(config.data_root or '<data_root>', config.dataset)}"
                             f" not found: pass --config.data_root=<folder holding {config.dataset}/> laid out as in "
                             "README 'Prepared data' (the original's download_data.bash produces it)")
        policy, head, embedder, tok, etok = load_checkpoint(config.checkpoint, dtype=jnp.dtype(config.model.dtype))
    paths = PreparedPaths(config.data_root, config.dataset)
    split = config.split
    corpus = load_corpus(paths, split)
    queries = load_queries(paths, split)
    qset = eval_queries(paths, split, max_samples=config.eval.max_samples, limit_ratio=config.eval.eval_limit_ratio,
                        seed=config.eval.seed, queries=queries, docid2row=corpus.docid2row)
    retriever = make_retriever(config.eval.retrieval.engine, corpus.matrix, corpus.docid2row)
    meta = {}
    meta_path = paths.video_npy_meta(split)
    if os.path.exists(meta_path):
        meta = {r.video_id: r.to_json() for r in read_video_npy_meta(meta_path)}

    def video_source(doc_id):
        path = paths.video_npy(split, doc_id)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} missing (video_npy_with_meta is produced by the npy-extraction step)")
        return load_npy_video(path), meta.get(doc_id)

    ec = config.eval
    ep_cfg = EpisodeConfig(max_turn=ec.max_turn, max_new_tokens=ec.max_new_tokens, num_latents=ec.refine_token_count,
                           embedder_max_length=ec.query_embedder_max_length,
                           instruction=ec.query_embedder_input_prefix, refine_token=ec.refine_token,
                           outer_vision_tokens=config.prompts.outer_vision_tokens,
                           timestamps_mode=config.video.timestamps_mode, batch_size=config.agent.batch_size,
                           length_bucket=config.agent.length_bucket)
    agent = SearchAgent(policy, head, embedder, tok, etok, retriever, video_source, config.video.eval, ep_cfg,
                        _opts(config))
    qvecs = queries.matrix[[q.q_row for q in qset.queries]]
    bar = tqdm(total=len(qset.queries), desc="episodes", unit="query", dynamic_ncols=True)
    rows = agent.run(qset.queries, qvecs, progress=bar.update)
    bar.close()
    detail = os.path.join(config.output_dir, f"detail_{config.dataset}_{split}.jsonl")
    report.write_detail_jsonl(rows, detail)
    out = report.write_report(rows, config.output_dir, detail)
    summary = dict(output_dir=os.path.abspath(config.output_dir), detail_jsonl=detail, queries=len(rows),
                   skips={**qset.skips, "video_file_missing": agent.stats["video_file_missing"]},
                   generate_s=agent.stats["generate_s"], refine_s=agent.stats["refine_s"],
                   wall_s=time.time() - t0, **{k: str(v) for k, v in out.items()})
    with open(os.path.join(config.output_dir, "run_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
