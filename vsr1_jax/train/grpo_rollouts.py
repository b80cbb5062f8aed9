"""The first piece of GRPO's generation phase (issue 24 item 2): `RolloutProducer` turns the next round of prompts
into trajectories with the agent's own episode engine (agent/rollout.py) and the policy weights it is given, G
samples per prompt. It owns what a round's rollouts depend on: the seeded, resumable iterator over the GRPO rows,
the engine (its own copy of the frozen SQR head and embedder), the sampling keys and the prompts it could not roll
out. The rewards and advantages (train/rewards.py, `grpo.group_advantages`), the scoring batch (train/scoring.py)
and the jitted update (train/grpo.py) are the other pieces; train/grpo_run.py calls them in that order.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax import distributed, sharding
from vsr1_jax.agent.evaluate import video_source_for
from vsr1_jax.agent.rollout import EpisodeEngine, Trajectory
from vsr1_jax.ckpt.read import Models
from vsr1_jax.data.paths import PreparedPaths
from vsr1_jax.data.pipelines import build_dataset, make_iterator
from vsr1_jax.retrieval.topk import make_retriever
from vsr1_jax.train.settings import GRPOSettings


@dataclasses.dataclass
class Round:
    """One round's rollouts on this process: its prompt records (the skipped ones removed), their trajectories (G
    per record, in order), how many prompts were skipped, the seconds and the generated tokens."""
    records: list[dict]
    trajectories: list[Trajectory]
    too_long: int
    seconds: float
    tokens: int


class RolloutProducer:
    """The round's prompts -> trajectories (`produce`). Several processes: each reads the whole round's prompt
    records (small dicts) and rolls out its own share of them on a process-local copy of the weights."""

    def __init__(self, settings: GRPOSettings, models: Models, records: list[dict], *, corpus, queries,
                 mesh: jax.sharding.Mesh, skipped: list[dict]):
        """records: the usable GRPO rows; corpus / queries: the train split's (`data.queries`); skipped: the run's
        list of skipped rows (file, qid, reason), which the prompts this producer cannot roll out are added to."""
        g, d = settings, settings.data
        self.settings, self.queries, self.skipped = settings, queries, skipped
        self.paths = PreparedPaths(g.prepared.data_root, g.prepared.dataset)
        self.G = d.num_generations
        ds, spec = build_dataset(records, batch_size=d.prompts_per_round, seed=g.seed, shuffle=True,
                                 num_epochs=d.num_epochs, process_index=0, process_count=1)
        self.rounds = len(ds)
        self.iterator = make_iterator(ds, spec, read_threads=g.loader.read_threads,
                                      prefetch_buffer_size=g.loader.prefetch_buffer_size)
        retriever = make_retriever(g.retrieval_engine, corpus.matrix, corpus.docid2row) if g.max_turns > 1 \
            else None
        # the train step donates the state, whose frozen head shares buffers with models.head: the engine keeps
        # its own copy of the (frozen) SQR head; the policy weights are passed in every round
        head = nnx.merge(*jax.tree.map(jnp.copy, nnx.split(models.head)))
        head, embedder = distributed.local_module(head), distributed.local_module(models.embedder)
        self.engine = EpisodeEngine(models.policy, head, embedder, models.tokenizer, models.embed_tokenizer,
                                    video_source_for(self.paths, g.prepared.split), g.video, g.episode,
                                    g.rollout_run, retriever=retriever, mesh=sharding.local_mesh(mesh))
        self.sampling = self.engine.sampling_params(g.temperature)
        self.key = jax.random.key(g.seed)

    def _keys(self, round_index: int, n_local: int, first: int) -> dict:
        """Sampling keys of a round: one key (`rollout_keys="batch"`, the engine folds in a batch counter; several
        processes fold in their index) or one key per prompt from its place in the round ("prompt": rollouts that
        do not depend on batching or on the process count)."""
        key = jax.random.fold_in(self.key, round_index)
        if self.settings.rollout_keys == "prompt":
            return dict(query_keys=[jax.random.fold_in(key, first + i) for i in range(n_local)])
        if jax.process_count() > 1:
            key = jax.random.fold_in(key, jax.process_index())
        return dict(key=key)

    def _drop_skipped(self, round_index: int, recs, trajs):
        """The round without the prompts the engine skipped (a prompt longer than config.grpo.max_prompt_length:
        the whole group has no turn), each named in skipped.jsonl; (recs, trajs, how many were dropped)."""
        G = self.G
        keep = [i for i in range(len(recs)) if all(t.turns for t in trajs[i * G:(i + 1) * G])]
        for i in sorted(set(range(len(recs))) - set(keep)):
            r = recs[i]
            self.skipped.append(dict(file=str(self.paths.grpo_rows), problem_id=int(r["problem_id"]), qid=r["qid"],
                                     reason=trajs[i * G].stop_reason, detail=f"round {round_index}: not rolled out"))
        if not keep:
            raise ValueError(f"no prompt of GRPO round {round_index} could be rolled out on process "
                             f"{jax.process_index()} (reasons: {sorted({t.stop_reason for t in trajs})}); raise "
                             "config.grpo.max_prompt_length or lower the GRPO pixel budget (config.video.grpo)")
        return [recs[i] for i in keep], [t for i in keep for t in trajs[i * G:(i + 1) * G]], len(recs) - len(keep)

    def produce(self, policy_params, round_index: int) -> Round:
        """The next round's prompts (this process's share) rolled out with `policy_params` (the policy's nnx state),
        G samples each; the first turn shows the row's pre-computed top-1 video (what the original trains)."""
        recs = next(self.iterator)
        lo, hi = distributed.split_evenly(recs, "prompts of a round")
        recs = recs[lo:hi]
        t0 = time.perf_counter()
        queries = [dict(index=int(r["problem_id"]), qid=r["qid"], query=r["query"], gt_doc_id=r["gt_video"],
                        gt_start=float(r["gt_time"][0]), gt_end=float(r["gt_time"][1]), duration=None)
                   for r in recs]
        qvecs = np.stack([self.queries.matrix[self.queries.lookup(r["query"])[0]] for r in recs])
        gen0 = self.engine.stats["generated_tokens"]
        trajs = self.engine.run(queries, qvecs, self.sampling, group=self.G,
                                first_docs=[r["retrieved_video"] for r in recs],
                                params=distributed.local_tree(policy_params), **self._keys(round_index, len(recs), lo))
        recs, trajs, too_long = self._drop_skipped(round_index, recs, trajs)
        return Round(recs, trajs, too_long, time.perf_counter() - t0,
                     self.engine.stats["generated_tokens"] - gen0)

    def host_state(self) -> dict:
        return self.iterator.get_state()

    def load_host_state(self, state) -> None:
        self.iterator.set_state(state)


__all__ = ["Round", "RolloutProducer"]
