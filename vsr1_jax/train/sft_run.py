"""Stage-1 SFT run: the prepared layout's train_oneturn.json through the grain pipeline, the InfoNCE candidates on
the host, the jitted step on the mesh, and the loop (train/loop.py) with checkpoints, metrics and resume.

    python -m vsr1_jax.main --config=configs/<dataset>.py --config.mode=sft --config.checkpoint=<stage-0 model>
"""
from __future__ import annotations

import logging
import os
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax import distributed, loading, runinfo, sharding
from vsr1_jax.ckpt.hf_export import export_train_state
from vsr1_jax.ckpt.read import CONVERT_HINT, Models
from vsr1_jax.data.files import read_hard_negatives, read_video_meta
from vsr1_jax.data.paths import PreparedDataError, PreparedPaths
from vsr1_jax.data.pipelines import build_dataset, make_iterator
from vsr1_jax.data.queries import load_corpus, load_queries, sft_records
from vsr1_jax.processing.special_tokens import special_ids
from vsr1_jax.train import loop, optim, sft, sft_batches
from vsr1_jax.train import state as state_lib
from vsr1_jax.train.negatives import NegativeSampler
from vsr1_jax.train.settings import SFTSettings

log = logging.getLogger(__name__)


class SFTTask:
    """Everything of Stage 1 that is not the generic loop (see loop.Task)."""

    def __init__(self, settings: SFTSettings, models: Models, *, mesh: jax.sharding.Mesh):
        """settings: `SFTSettings.from_config(config)`; mesh: the run's (`sharding.mesh_for(settings.mesh)`): the
        batch is split over its data-parallel axes."""
        c, d = settings, settings.data
        self.settings, self.mesh, self.data = settings, mesh, d
        paths = PreparedPaths(c.prepared.data_root, c.prepared.dataset)
        split = c.prepared.split
        corpus = load_corpus(paths, split)
        queries = load_queries(paths, split)
        self.q_orig = {m.qid.strip(): queries.matrix[i] for i, m in enumerate(queries.meta)}
        hard = read_hard_negatives(paths.hard_negatives) if paths.hard_negatives.exists() else {}
        self.negatives = NegativeSampler(corpus.docid2row, corpus.matrix, hard, pool_size=d.negative_pool_size,
                                         seed=d.random_negative_seed, ambiguous_margin=d.ambiguous_negative_margin,
                                         filter_ambiguous=c.filter_ambiguous_negatives)
        self.skipped = []   # rows the loop writes to skipped.jsonl: dropped items now, unusable examples per step
        records, counts = sft_records(paths, docid2row=corpus.docid2row, only_neg=d.only_neg, dropped=self.skipped)
        if not records:
            raise PreparedDataError(f"{paths.sft_oneturn}: no usable SFT items ({dict(counts)})")
        self.counts = Counter({f"data_{k}": v for k, v in counts.items()})
        tok = models.tokenizer
        self.ids = special_ids(tok, c.refine_token)
        meta_path = paths.video_npy_meta(split)
        examples = sft_batches.SFTExamples(tok, models.embed_tokenizer, models.policy.cfg, c.video,
                                           video_meta=read_video_meta(meta_path) if meta_path.exists() else None,
                                           timestamps_mode=c.timestamps_mode,
                                           outer_vision_tokens=c.outer_vision_tokens,
                                           instruction=c.embedder_instruction,
                                           embedder_max_length=c.embedder_max_length, refine_token=c.refine_token)
        self.B = d.per_device_batch_size * sharding.batch_divisor(mesh)
        self.A = d.gradient_accumulation_steps
        collate = sft_batches.SFTCollate(models.policy.cfg, self.ids.pad, self.A, d.buckets, c.label_buckets,
                                         c.vision_group_buckets or None, c.vision_patch_buckets or None,
                                         num_latents=c.loss.num_latents, embedder_max_length=c.embedder_max_length)
        # multi-host: this process reads the rows its devices hold ([lo, hi) of each global micro-batch of B rows,
        # the block layout of data/pipelines.py), so the global batches are those of a single process
        lo, hi = sharding.process_rows(mesh, self.B)
        self.rows, b = (lo, hi), hi - lo
        self.collate, self._multi = collate, jax.process_count() > 1
        self.models_merge = models.policy.cfg.vision.spatial_merge_size
        # several processes agree on the bucket shapes before collating (next_batch), so grain yields example lists
        ds, spec = build_dataset(records, map_fn=examples, batch_size=self.A * b,
                                 collate_fn=None if self._multi else collate, seed=c.seed, shuffle=d.shuffle,
                                 num_epochs=c.num_epochs, process_index=lo // b, process_count=self.B // b,
                                 block=b)
        self.iterator = make_iterator(ds, spec, worker_count=c.loader.worker_count,
                                      worker_buffer_size=c.loader.worker_buffer_size,
                                      read_threads=c.loader.read_threads,
                                      prefetch_buffer_size=c.loader.prefetch_buffer_size)
        self.total_steps = len(ds) if not c.max_steps else min(len(ds), c.max_steps)
        # model, optimizer, state
        sharding.cast_params(models.policy, jnp.dtype(c.param_dtype))
        opt = optim.sft_optimizer(c.optimizer, self.total_steps)
        self.state, self.graphdefs = state_lib.create(models.policy, models.head, optim.sft_trainable, opt.tx,
                                                      mesh)
        self.embedder_graphdef, self.embedder_params = nnx.split(sharding.shard_module(models.embedder, mesh))
        step = sft.make_train_step(self.graphdefs, self.embedder_graphdef, opt.tx, c.run, c.loss, opt.schedules)
        self._step = step
        self._jit = None
        self.params_total = state_lib.count_params(self.state.params)
        log.info("SFT: %d items, %d steps of %d x %d rows; %d trainable parameters", len(records), self.total_steps,
                 self.A, self.B, self.params_total)

    # ---- loop.Task ---------------------------------------------------------------------------------------------
    def _collate(self):
        """The next host batch: this process's rows [A, hi - lo] (with several processes: collated here with the
        buckets of the largest row of any process)."""
        if not self._multi:
            return next(self.iterator)
        examples = next(self.iterator)
        sizes = np.max(distributed.allgather_objects(self.collate.sizes(examples)), axis=0)
        return self.collate(examples, min_sizes=sizes)

    def next_batch(self, state=None):   # loop.Task: the batch does not depend on the state
        host = self._collate()
        for detail, reason in zip(host.pop("skipped"), host["skip_reasons"]):
            log.warning("skipped: %s", detail)
            self.skipped.append(dict(reason=reason, detail=detail))
        # the InfoNCE candidates come from one seeded stream over the rows of the global batch in order (and the
        # refresh after the step updates the lists from all rows), so every process computes them for every row of
        # the step, keeps its own, and holds the same sampler state as a single process would
        lo, hi = self.rows
        use = host["has_refine"] & host["row_valid"]
        mine = dict(lo=lo, qid=host["qid"], pos=host["pos_video_id"], top1=host["video_id"], use=use,
                    skips=host.pop("skip_reasons"), tokens=float(np.sum(host["attention_mask"])))
        parts = {}
        for p in distributed.allgather_objects(mine):
            parts.setdefault(p["lo"], p)   # processes holding the same rows sent the same rows
        parts = [parts[k] for k in sorted(parts)]
        for p in parts:
            for reason in p["skips"]:
                self.counts[f"skipped_{reason}"] += 1
        rows = {k: [sum((p[k][a] for p in parts), []) for a in range(self.A)] for k in ("qid", "pos", "top1")}
        use = np.concatenate([p["use"] for p in parts], axis=1)
        if use.shape != (self.A, self.B):
            raise ValueError(f"the processes' rows add up to {use.shape}, expected {(self.A, self.B)}")
        cand, cmask, valid, refresh = [], [], [], []
        K = self.negatives.pool_size
        for a in range(self.A):
            for b in range(self.B):
                qid, pos, top1 = rows["qid"][a][b], rows["pos"][a][b], rows["top1"][a][b]
                ids, n_sel = ([], 0)
                if use[a, b]:
                    ids, n_sel = self.negatives.candidates(qid, pos, top1, self.q_orig.get(qid))
                    if n_sel == 0:
                        self.counts["infonce_no_positive_or_query" if pos not in self.negatives.row_of
                                    or qid not in self.q_orig else "infonce_no_negatives"] += 1
                    elif not ids:
                        self.counts["infonce_all_negatives_ambiguous"] += 1
                if lo <= b < hi:
                    v, m = self.negatives.candidate_vectors(ids, K + 1)
                    cand.append(v)
                    cmask.append(m)
                valid.append(bool(ids))
                refresh.append(n_sel > 0)
        shape = (self.A, self.B)
        host["candidates"] = np.stack(cand).reshape(self.A, hi - lo, K + 1, -1)
        host["candidate_mask"] = np.stack(cmask).reshape(self.A, hi - lo, K + 1)
        host["ret_valid"] = np.asarray(valid).reshape(shape)[:, lo:hi]
        host["_refresh"] = np.asarray(refresh).reshape(shape)
        host["_qid"], host["_pos"] = rows["qid"], rows["pos"]
        host["_tokens"] = sum(p["tokens"] for p in parts)
        return host

    def _device(self, host):
        arrays = {k: v for k, v in host.items() if not isinstance(v, list) and not k.startswith("_")}
        return sharding.global_batch(self.mesh, arrays, self.B, self.rows[0], self.models_merge)

    def step(self, state, host):
        if self._jit is None:
            st = state_lib.shardings_of(state)
            self._jit = jax.jit(self._step, donate_argnums=(0,), out_shardings=(st, None),
                                in_shardings=(st, state_lib.shardings_of(self.embedder_params), None))
        return self._jit(state, self.embedder_params, self._device(host))

    def after_step(self, step: int, host, metrics) -> dict:
        q = np.asarray(distributed.host_array(metrics.pop("q_final")), np.float32)  # [A, B, D] all processes' rows
        out = {k: float(distributed.host_array(v)) for k, v in metrics.items()}
        refreshed = 0
        # the original refreshes from the second optimizer step on (global_step > 0), every step (VS L141)
        every = self.data.hard_negative_refresh_steps
        if every > 0 and step > 0 and step % every == 0:
            sel = host["_refresh"]
            qids = [host["_qid"][a][b] for a in range(self.A) for b in range(self.B) if sel[a, b]]
            pos = [host["_pos"][a][b] for a in range(self.A) for b in range(self.B) if sel[a, b]]
            refreshed = self.negatives.refresh(qids, pos, q[sel])
        # the counters are running totals since step 1 (data_* counted while loading): named total_* so that they
        # are not read as this step's values
        out.update(hard_negatives_refreshed=refreshed, tokens=float(host["_tokens"]),
                   **{f"total_{k}": float(v) for k, v in self.counts.items()})
        return out

    def host_state(self) -> dict:
        """The same on every process (what process 0 saves), and valid on another process count."""
        return {"data": self.iterator.position_state(), "negatives": self.negatives.state_dict(),
                "counts": dict(self.counts)}

    def load_host_state(self, state: dict) -> None:
        if "data" in state:
            self.iterator.set_position_state(state["data"])
        if "negatives" in state:
            self.negatives.load_state_dict(state["negatives"])
        self.counts = Counter(state.get("counts", {}))


def main_sft(config) -> dict:
    """`--config.mode=sft`: load the starting models (the demo's, or `config.checkpoint`), train, and write the
    final model as a released-layout HF folder under `<output_dir>/sft/hf` (`config.sft.export_hf`)."""
    settings = SFTSettings.from_config(config)   # the boundary: nothing below reads the config
    models = loading.load_models(config, empty_message="--config.checkpoint is empty: Stage 1 starts from a Qwen3-VL "
                                 f"policy with an SQR head and a query embedder; {CONVERT_HINT}")
    out_dir = os.path.join(settings.output_dir, "sft")
    task, state = run_sft(settings, models, out_dir=out_dir, record=runinfo.config_dict(config))  # Stopped: a signal
    summary = dict(output_dir=os.path.abspath(out_dir), metrics_jsonl=os.path.abspath(os.path.join(out_dir,
                                                                                                    "metrics.jsonl")),
                   checkpoints=os.path.abspath(os.path.join(out_dir, "checkpoints")), steps=int(state.step),
                   total_steps=task.total_steps)
    if settings.export_hf:
        summary["hf_folder"] = os.path.abspath(export_train_state(os.path.join(out_dir, "hf"), state,
                                                                  task.graphdefs, models.embedder,
                                                                  models.tokenizer, models.embed_tokenizer))
    return summary


def run_sft(settings: SFTSettings, models: Models, *, out_dir: str | None = None, record: dict | None = None):
    """Train Stage 1; returns (task, final state); raises errors.Stopped when a signal stopped it early.
    Checkpoints, metrics.jsonl and TensorBoard go to out_dir (default `<output_dir>/sft`); `record` (the resolved
    config, `runinfo.config_dict(config)`) is saved there as config.json."""
    out_dir = out_dir or os.path.join(settings.output_dir, "sft")
    task = SFTTask(settings, models, mesh=sharding.mesh_for(settings.mesh))
    state, steps, stopped = loop.run(task, task.state, out_dir=out_dir, ckpt_cfg=settings.checkpoint,
                                     log_every=settings.log_every, desc="sft", config=record)
    if stopped:
        raise loop.stopped_error("sft", out_dir, steps, task.total_steps, stopped)
    task.state = state
    return task, state
