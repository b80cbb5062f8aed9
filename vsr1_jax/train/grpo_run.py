"""Stage-2 GRPO run (grpo.md): rollouts with the agent's own episode engine and the policy's current weights
(`RolloutProducer`, train/grpo_rollouts.py), the six rewards and group advantages (`round_rewards`), the scoring
batch with reference (and, for num_iterations > 1, old) log-probs once per generation, and the jitted update inside
the generic loop (train/loop.py), which times and counts the generation phase (`next_batch`) apart from the update
(`step`).

    python -m vsr1_jax.main --config=configs/<dataset>.py --config.mode=grpo --config.checkpoint=<Stage-1 model>

One generation round = P prompts x G samples (`config.grpo.generation_batch_size` rows; P = rows / G): the
first turn shows the pre-computed top-1 video of `train.minimal_top1.jsonl` (what the original trains); with
`config.grpo.max_turns > 1` the engine runs the paper's loop (refine -> re-retrieve over the train corpus -> verify
and ground again) and every turn's sampled tokens are scored with the trajectory's advantage. A round is scored as
`steps_per_generation` micro-batches of `per_device_batch_size` x data-parallel rows and used for
`num_iterations` optimizer steps.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax import distributed, loading, runinfo, sharding
from vsr1_jax.agent.rollout import Trajectory
from vsr1_jax.ckpt.hf_export import export_train_state
from vsr1_jax.ckpt.read import CHECKPOINT_KINDS, Models
from vsr1_jax.data.paths import PreparedDataError, PreparedPaths
from vsr1_jax.data.queries import grpo_records, load_corpus, load_queries
from vsr1_jax.processing.parsing import parse_answer_reward
from vsr1_jax.train import grpo, loop, optim
from vsr1_jax.train import rewards as R
from vsr1_jax.train import state as state_lib
from vsr1_jax.train.grpo_rollouts import RolloutProducer
from vsr1_jax.train.scoring import scoring_batch, scoring_sizes
from vsr1_jax.train.settings import GRPOSettings

log = logging.getLogger(__name__)


# ---- host: trajectories -> rewards (the scoring batch: train/scoring.py) ---------------------------------------
def reward_samples(trajs: list[Trajectory], records: list[dict], group: int, vectors) -> list[R.RewardSample]:
    """The final turn of each trajectory as the rewards see it (grpo.md §4). `vectors(rec, traj)` gives
    (q_orig, pos_vec, neg_vecs) or Nones."""
    out = []
    for i, t in enumerate(trajs):
        rec = records[i // group]
        last = t.turns[-1]
        q_orig, pos, negs = vectors(rec, t)
        gt_time = rec["gt_time"] if rec["has_gt_time"] else None
        text = R.completion_text([turn.text for turn in t.turns])  # minus pure <search> calls (TR:4559-4570)
        out.append(R.RewardSample(text=text, retrieved_id=last.doc_id, gt_id=rec["gt_video"], gt_time=gt_time,
                                  has_refine=last.has_refine, q_final=last.q_next, q_orig=q_orig, pos_vec=pos,
                                  neg_vecs=negs))
    return out


def reward_vectors(corpus, queries, rec: dict, traj: Trajectory):
    """(q_orig, pos_vec, neg_vecs) of one trajectory for the refine-quality reward (TR:3838-3846, TR:3977-3991):
    the stored query vector, the GT video's vector, and the row's hard negatives plus every turn's retrieved video
    other than the GT."""
    hit = queries.lookup(rec["query"])
    q_orig = None if hit is None else queries.matrix[hit[0]]
    row = corpus.docid2row.get(rec["gt_video"])
    pos = None if row is None else corpus.matrix[row]
    negs = list(dict.fromkeys(rec["hard_negative_ids"]))
    for t in traj.turns:
        for doc in (t.doc_id, t.next_doc_id):
            if doc and doc != rec["gt_video"] and doc not in negs and doc in corpus.docid2row:
                negs.append(doc)
    nv = corpus.matrix[[corpus.docid2row[x] for x in negs]] if negs else None
    return q_orig, pos, nv


def round_rewards(trajs: list[Trajectory], records: list[dict], group: int, vectors, weights: R.RewardWeights):
    """The reward/advantage piece of a round: each sample's six rewards and total (grpo.md §4) and the group
    advantages (§3.2); (scores by name, advantages, per-group zero-std flags)."""
    scores = R.score_samples(reward_samples(trajs, records, group, vectors), weights)
    adv, zero_std = grpo.group_advantages(scores["total"], group)
    return scores, adv, zero_std


class GRPOTask:
    """Everything of Stage 2 that is not the generic loop (see loop.Task)."""

    def __init__(self, settings: GRPOSettings, models: Models, *, mesh: jax.sharding.Mesh):
        """settings: `GRPOSettings.from_config(config)`; mesh: the run's (`sharding.mesh_for(settings.mesh)`): the
        scored batch is split over its data-parallel axes; rollouts run on it too, or with several processes on
        each process's first device."""
        g = settings
        d = g.data
        self.settings, self.mesh, self.data = settings, mesh, d
        self.paths = paths = PreparedPaths(g.prepared.data_root, g.prepared.dataset)
        split = g.prepared.split
        corpus = load_corpus(paths, split)
        queries = load_queries(paths, split)
        self.skipped = []   # rows the loop writes to skipped.jsonl (file, line, qid, reason)
        records, counts = grpo_records(paths, docid2row=corpus.docid2row, hard_negative_k=d.hard_negative_topk,
                                       dropped=self.skipped)
        kept = []
        for r in records:   # the reward needs the stored query vector and the GT video vector (TR:3838-3846)
            reason = ("drop_query_missing_meta" if queries.lookup(r["query"]) is None else
                      "drop_gt_not_in_corpus" if r["gt_video"] not in corpus.docid2row else None)
            if reason is None:
                kept.append(r)
                continue
            counts[reason] += 1
            where = paths.query_meta(split) if reason == "drop_query_missing_meta" else paths.docid2row(split)
            self.skipped.append(dict(file=str(paths.grpo_rows), problem_id=int(r["problem_id"]), qid=r["qid"],
                                     reason=reason, detail=f"not in {where}"))
        counts["rows_used"] = len(kept)
        self.stats = dict(counts)
        if not kept:
            raise PreparedDataError(f"{paths.grpo_rows}: no usable GRPO rows ({self.stats})")
        self.corpus, self.queries = corpus, queries
        self.G = d.num_generations
        self.prompts_per_round = d.prompts_per_round   # of the whole job (all processes)
        self.mu = g.num_iterations
        self.m = d.per_device_batch_size * sharding.batch_divisor(mesh)
        self.A = g.steps_per_generation * g.max_turns
        P = jax.process_count()
        if self.prompts_per_round % P:
            raise ValueError(f"{self.prompts_per_round} prompts per round (generation_batch_size / num_generations) "
                             f"do not split evenly over {P} processes")
        # each process scores its own rollouts: the rows of every micro-batch that its devices hold
        spans = sorted(sharding.process_rows(mesh, self.m, k) for k in range(P))
        if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
            raise ValueError(f"GRPO needs each process to hold its own batch rows; the mesh {dict(mesh.shape)} puts "
                             "processes on the same rows (a tensor axis across hosts)")
        self.rows = sharding.process_rows(mesh, self.m)
        self.m_local = self.rows[1] - self.rows[0]
        self.merge = models.policy.cfg.vision.spatial_merge_size
        if self.A * self.m < d.generation_batch_size:
            raise ValueError(f"steps_per_generation x per_device_batch_size x data-parallel = "
                             f"{g.steps_per_generation * self.m} rows < generation_batch_size "
                             f"{d.generation_batch_size}: the round would not fit")
        # models
        self.opts = g.run
        sharding.cast_params(models.policy, jnp.dtype(g.param_dtype))
        opt = optim.grpo_optimizer(g.optimizer)
        self.state, self.graphdefs = state_lib.create(models.policy, models.head, optim.grpo_trainable, opt.tx,
                                                      mesh)
        self.ref_params = jax.tree.map(jnp.copy, self.state.params)   # the frozen Stage-1 reference
        self.models = models
        self.rollouts = RolloutProducer(settings, models, kept, corpus=corpus, queries=queries, mesh=mesh,
                                        skipped=self.skipped)
        self.rounds = self.rollouts.rounds
        self.total_steps = self.rounds * self.mu if not g.max_steps else min(self.rounds * self.mu, g.max_steps)
        self.weights, self.lc = g.rewards, g.loss
        self._train = grpo.make_train_step(self.graphdefs, opt.tx, self.opts, self.lc, opt.schedules)
        self._score = grpo.make_score_fn(self.graphdefs, self.opts, self.lc)
        self._jit_train = self._jit_score = None
        self.round = 0
        self._pending = None      # (batch, host metrics, iterations left) of the current generation round
        log.info("GRPO: %d prompts, %d rounds of %d x %d, %d optimizer steps", len(kept), self.rounds,
                 self.prompts_per_round, self.G, self.total_steps)

    # ---- the generation phase ---------------------------------------------------------------------------------
    def _device(self, batch):
        return sharding.global_batch(self.mesh, batch, self.m, self.rows[0], self.merge)

    def _generate(self, state):
        """One generation round: rollouts -> rewards -> advantages -> scored batch (+ reference / old log-probs).
        Several processes: each rolls out its share of the round's prompts; bucket shapes, weight normalisation and
        the logged means are agreed over all of them."""
        policy, _ = self.graphdefs.modules(state.params, state.frozen)
        rnd = self.rollouts.produce(nnx.state(policy), self.round)
        recs, trajs = rnd.records, rnd.trajectories
        t1 = time.perf_counter()
        scores, adv, zero_std = round_rewards(trajs, recs, self.G,
                                              functools.partial(reward_vectors, self.corpus, self.queries),
                                              self.weights)
        g = self.settings
        seq = np.asarray([i for i, t in enumerate(trajs) for _ in t.turns])
        cm = np.zeros((len(seq), self.data.max_completion_length), bool)
        for r, turn in enumerate(turn for t in trajs for turn in t.turns):
            cm[r, :len(turn.sampled_ids)] = True
        answers = [parse_answer_reward(tr.turns[-1].text) for tr in trajs]
        mine = dict(sizes=scoring_sizes(trajs), totals=grpo.weight_totals(cm, seq),
                    scores={k: np.asarray(v) for k, v in scores.items()}, zero_std=np.asarray(zero_std),
                    lens=[len(t.sampled_ids) for tr in trajs for t in tr.turns],
                    truncated=[t.truncated for tr in trajs for t in tr.turns],
                    refine=[tr.turns[-1].has_refine for tr in trajs],
                    answered=[a in ("matched", "not_matched") for a in answers],
                    turns=[len(tr.turns) for tr in trajs], rollout_s=rnd.seconds, too_long=rnd.too_long,
                    tokens=rnd.tokens)
        rewards_s = time.perf_counter() - t1
        parts = distributed.allgather_objects(mine)
        t1 = time.perf_counter()
        batch = scoring_batch(trajs, adv, cfg=policy.cfg, pad_id=self.rollouts.engine.ids.pad, micro_batches=self.A,
                              rows_per_micro=self.m_local,
                              prompt_buckets=self.data.scoring_prompt_buckets,
                              completion_length=self.data.max_completion_length,
                              group_buckets=tuple(g.vision_group_buckets),
                              patch_buckets=tuple(g.vision_patch_buckets), loss_type=g.loss_type,
                              min_sizes=np.max([p["sizes"] for p in parts], axis=0),
                              totals=tuple(np.sum([p["totals"] for p in parts], axis=0)),
                              device_rows=self.data.per_device_batch_size,
                              device_batches=self.A * self.m // self.data.per_device_batch_size)
        dev = self._device(batch)
        batch_s = time.perf_counter() - t1
        if self._jit_score is None:
            self._jit_score = jax.jit(self._score)
        t1 = time.perf_counter()
        dev["ref_logprobs"] = self._jit_score(self.ref_params, state.frozen, dev)
        if self.mu > 1:
            dev["old_logprobs"] = self._jit_score(state.params, state.frozen, dev)
        # the update needs these log-probs next: waiting here only moves that wait, and times the scoring
        jax.block_until_ready((dev["ref_logprobs"], dev.get("old_logprobs")))
        score_s = time.perf_counter() - t1
        cat = lambda k: np.concatenate([np.asarray(p[k]) for p in parts])  # noqa: E731  the whole round's values
        total = {k: np.concatenate([p["scores"][k] for p in parts]) for k in scores}
        lens = cat("lens")
        rollout_s = max(p["rollout_s"] for p in parts)
        host = {f"reward_{k}": float(np.mean(total[k])) for k in R.REWARD_NAMES}
        host.update(reward=float(np.mean(total["total"])), reward_std=float(np.std(total["total"])),
                    frac_reward_zero_std=float(np.mean(cat("zero_std"))), completion_length=float(lens.mean()),
                    completion_length_max=float(lens.max()), truncated_rate=float(np.mean(cat("truncated"))),
                    refine_rate=float(np.mean(cat("refine"))),
                    accept_reject_accuracy=float(np.mean(total["answer"] > 0)),
                    answered_rate=float(np.mean(cat("answered"))), turns_mean=float(np.mean(cat("turns"))),
                    prompts_too_long=sum(p["too_long"] for p in parts),
                    rollout_s=rollout_s, rewards_s=rewards_s, batch_s=batch_s, score_s=score_s,
                    rollout_tokens_per_s=sum(p["tokens"] for p in parts) / max(rollout_s, 1e-9))
        return dev, host

    # ---- loop.Task ---------------------------------------------------------------------------------------------
    def next_batch(self, state):
        """The generation phase: a new round with the state's current weights (rollouts -> rewards -> advantages ->
        the scored batch with its reference / old log-probs) when the last one has served its num_iterations
        updates, else the last one again. The loop times it (data_s) and counts its compiles (data_compiles) apart
        from the update (step_s, compiles). Returns (device batch, the round's host metrics)."""
        if self._pending is None or self._pending[2] == 0:
            dev, host = self._generate(state)
            self.round += 1
            self._pending = [dev, host, self.mu]
        self._pending[2] -= 1
        return self._pending[0], self._pending[1]

    def step(self, state, batch):
        """The update phase: one jitted, donated optimizer step on the round's batch."""
        dev, host = batch
        if self._jit_train is None:
            st = state_lib.shardings_of(state)
            self._jit_train = jax.jit(self._train, donate_argnums=(0,), in_shardings=(st, None),
                                      out_shardings=(st, None))
        t0 = time.perf_counter()
        state, metrics = self._jit_train(state, dev)
        metrics = {k: float(distributed.host_array(v)) for k, v in metrics.items()}
        # per-phase seconds: the round's rollout_s, rewards_s (rewards + advantages), batch_s (the scoring batch on the
        # device), score_s (reference / old log-probs), and this step's update_s
        metrics.update(host, update_s=time.perf_counter() - t0)
        return state, metrics

    def after_step(self, step: int, batch, metrics: dict) -> dict:
        return metrics

    def checkpoint_ok(self, step: int) -> bool:
        """Only between generation rounds: a round's rollouts are not part of the checkpoint."""
        return self._pending is None or self._pending[2] == 0

    def host_state(self) -> dict:
        return {"data": self.rollouts.host_state(), "round": self.round}

    def load_host_state(self, state: dict) -> None:
        if "data" in state:
            self.rollouts.load_host_state(state["data"])
        self.round = int(state.get("round", 0))


def run_grpo(settings: GRPOSettings, models: Models, *, out_dir: str | None = None, record: dict | None = None):
    """Train Stage 2 from `models` (the Stage-1 policy); returns (task, final state); raises errors.Stopped when a
    signal stopped it early. `record` (the resolved config) is saved in out_dir as config.json."""
    out_dir = out_dir or os.path.join(settings.output_dir, "grpo")
    task = GRPOTask(settings, models, mesh=sharding.mesh_for(settings.mesh))
    os.makedirs(out_dir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "grpo_data_stats.json"), "w") as f:
            json.dump(task.stats, f, indent=2)
    state, steps, stopped = loop.run(task, task.state, out_dir=out_dir, ckpt_cfg=settings.checkpoint,
                                     log_every=settings.log_every, desc="grpo", config=record)
    if stopped:
        raise loop.stopped_error("grpo", out_dir, steps, task.total_steps, stopped)
    task.state = state
    return task, state


def main_grpo(config) -> dict:
    """`--config.mode=grpo`: start from the Stage-1 model (`config.grpo.init_checkpoint`, else
    `config.checkpoint`; the demo's SFT output in the demo), train, export the final model."""
    settings = GRPOSettings.from_config(config)   # the boundary: nothing below reads the config
    field = "grpo.init_checkpoint" if settings.init_checkpoint else "checkpoint"
    path = settings.init_checkpoint or config.checkpoint
    models = loading.load_models(config, path, field, empty_message="GRPO starts from a Stage-1 model: pass "
                                 f"--config.grpo.init_checkpoint=<{CHECKPOINT_KINDS}> (or --config.checkpoint)")
    out_dir = os.path.join(settings.output_dir, "grpo")
    task, state = run_grpo(settings, models, out_dir=out_dir, record=runinfo.config_dict(config))  # Stopped: a signal
    summary = dict(output_dir=os.path.abspath(out_dir), metrics_jsonl=os.path.abspath(os.path.join(out_dir,
                                                                                                    "metrics.jsonl")),
                   checkpoints=os.path.abspath(os.path.join(out_dir, "checkpoints")), steps=int(state.step),
                   total_steps=task.total_steps)
    if settings.export_hf:
        summary["hf_folder"] = os.path.abspath(export_train_state(os.path.join(out_dir, "hf"), state,
                                                                  task.graphdefs, models.embedder,
                                                                  models.tokenizer, models.embed_tokenizer))
    return summary


__all__ = ["GRPOTask", "main_grpo", "reward_samples", "reward_vectors", "round_rewards", "run_grpo"]
