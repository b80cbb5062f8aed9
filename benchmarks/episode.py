"""Episode latency end to end: `EpisodeEngine.run` (vsr1_jax/agent/rollout.py), built as evaluation builds it
(`EpisodeConfig.from_config(config, "eval")`, `RunOptions.from_config(config.model)`, the configured retrieval
engine), over a corpus and index of `--corpus` random unit vectors of the query embedder's width, B queries per
run call with the agent batch size B (`config.agent.batch_size`), each query's ground-truth video in the corpus.
Every video the retriever returns is the same synthetic clip (`--frames-hw`: 52 frames of 448x512 = 26 groups of
28x32 patches, a ~6.3k-token eval prompt); the policy (random 2B weights), the SQR head and the query embedder
(random Qwen3-VL-Embedding-2B) run on the tiny tokenizer (the accelerator machine holds no Qwen tokenizer; only the
few text tokens of the prompt differ).

    python -m benchmarks.episode [--batches 1,16] [--new-tokens 1024] [--hf eager,static]

The figure is the wall time of `run` (median of `--reps` calls after a warm-up call that compiles), per query =
run / B. The engine's own counters (`engine.stats`: generate and refine seconds, generated tokens) and what the
trajectories did (turns, stop reasons) are logged beside it, not summed into it. By default (`--policy refine`)
the random policy is steered to write <REFINE> at every step (`steer_to_refine`: same shapes, same cost per token),
so every episode refines and runs `config.eval.max_turn` = 2 turns (generate, latent rollout, q_final, top-1 over
the index, twice); `--policy random` keeps the weights as initialised (they rarely refine: mostly one turn).
Baseline: HF `generate` of one turn's prompts (the engine's own prompt ids and video rows, B rows, the same
number of new tokens), eager and static cache + torch.compile, on HF random weights of the same config.
"""
from __future__ import annotations

import collections
import dataclasses
import statistics
import time

import numpy as np

from benchmarks import common as C
from vsr1_jax.agent.rollout import EpisodeConfig, EpisodeEngine, refine_latents, refined_query
from vsr1_jax.generate.sampler import Sampler
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.processing.special_tokens import REFINE_TOKEN
from vsr1_jax.retrieval.topk import make_retriever


def synthetic_frames(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [frames, height, width, 3]: smooth random colour fields (what the npy reader returns for a video)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (frames, max(height // 32, 1), max(width // 32, 1), 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 32, axis=1), 32, axis=2)[:, :height, :width]


def steer_to_refine(policy, refine_id: int, dim: int = 0, boost: float = 64.0) -> None:
    """Make greedy decoding of the random policy write <REFINE> at every step, so every episode takes the refine path
    (rollout, q_final, re-retrieval) and runs all its turns; a step's cost is unchanged (same shapes, same kernels).
    Residual dimension `dim` carries a positive constant at text positions (every token's embedding holds 1 there,
    <REFINE>'s holds `boost`, and no layer writes to it), the final norm scales it by `boost`, and the LM head
    (tied to the embedding, or its own) reads it with weight 1 for every token but `boost` for <REFINE>: its logit
    leads every other by orders of magnitude."""
    t = policy.text
    e = t.embed[...]
    t.embed.set_value(e.at[:, dim].set(1).at[refine_id, dim].set(boost))
    t.o_kernel.set_value(t.o_kernel[...].at[..., dim].set(0))
    t.down_kernel.set_value(t.down_kernel[...].at[..., dim].set(0))
    t.final_norm.set_value(t.final_norm[...].at[dim].set(boost))
    if t.lm_head is not None:
        t.lm_head.set_value(t.lm_head[...].at[dim, :].set(1).at[dim, refine_id].set(boost))


def make_engine(config, models, corpus: np.ndarray, doc_ids: list[str], frames: np.ndarray) -> EpisodeEngine:
    """The engine as `agent.evaluate.run_eval` builds it, on the bench's corpus and video source."""
    retriever = make_retriever(config.eval.retrieval.engine, corpus, {d: i for i, d in enumerate(doc_ids)})
    return EpisodeEngine(models.policy, models.head, models.embedder, models.tokenizer, models.embed_tokenizer,
                         lambda doc: (frames, None), config.video.eval, EpisodeConfig.from_config(config, "eval"),
                         RunOptions.from_config(config.model), retriever=retriever)


def run(args, report: C.Report) -> None:
    models = C.random_models(args.preset)
    if args.policy == "refine":
        steer_to_refine(models.policy, models.tokenizer.convert_tokens_to_ids(REFINE_TOKEN))
    E = models.embedder.cfg.text.hidden_size
    corpus = C.unit_vectors(args.corpus, E, seed=1)
    doc_ids = [f"v{i:05d}" for i in range(args.corpus)]
    frames = synthetic_frames(*args.frames_hw)
    report.code(EpisodeEngine.run, Sampler.generate, refine_latents, refined_query)
    report.update(corpus_size=args.corpus, embed_dim=E, frames_hw=list(args.frames_hw), new_tokens=args.new_tokens,
                  reps=args.reps, policy=args.policy, batches={})
    rng = np.random.default_rng(2)
    engines, prompts = {}, {}
    for B in args.batches:
        config = C.load_config(args.config, [f"agent.batch_size={B}", f"eval.max_new_tokens={args.new_tokens}",
                                             *args.set])
        engine = make_engine(config, models, corpus, doc_ids, frames)
        engines[B] = engine
        gt = rng.choice(args.corpus, size=B, replace=False)
        queries = [dict(index=i, qid=f"q{i}", query=f"a person picks up the {i}th box and walks to the door",
                        gt_doc_id=doc_ids[g], gt_start=1.0, gt_end=5.0, duration=float(args.frames_hw[0]))
                   for i, g in enumerate(gt)]
        qvecs = C.unit_vectors(B, E, seed=10 + B)
        r = {"agent_batch_size": B, "episode_config": dataclasses.asdict(engine.cfg),
             "options": dataclasses.asdict(engine.opts), "decode_loop": engine.sampler.loop,
             "decode_attn": engine.opts.decode_attn_impl}
        report["batches"][str(B)] = r
        C.log(f"episode B={B}: warm-up run (compiles; decode loop {engine.sampler.loop!r}, "
              f"attention {engine.opts.attn_impl}/{engine.opts.decode_attn_impl})")
        t = time.perf_counter()
        trajs = engine.run(queries, qvecs)
        r["first_run_s"] = time.perf_counter() - t
        C.log(f"episode B={B}: first run {r['first_run_s']:.1f} s")
        times, parts = [], []
        for _ in range(args.reps):
            before = dict(engine.stats)
            t = time.perf_counter()
            trajs = engine.run(queries, qvecs)
            times.append(time.perf_counter() - t)
            parts.append({k: engine.stats[k] - before[k] for k in ("generate_s", "refine_s", "generated_tokens")})
        run_s = statistics.median(times)
        turns = [len(tr.turns) for tr in trajs]
        first = trajs[0].turns[0]
        prompts[B] = first
        r.update(run_s=run_s, run_s_all=times, per_query_s=run_s / B, queries_per_s=B / run_s,
                 engine_stats_per_run=parts, turns_mean=float(np.mean(turns)), turns_max=int(max(turns)),
                 refined_turns=sum(t.refined for tr in trajs for t in tr.turns),
                 stop_reasons=dict(collections.Counter(tr.stop_reason for tr in trajs)),
                 prompt_tokens=int(len(first.prompt_ids)), video_grid=list(map(int, first.video.grid_thw)),
                 generated_tokens_per_turn=[int(len(t.sampled_ids)) for tr in trajs for t in tr.turns])
        report.save()
        C.log(f"episode B={B}: run {run_s:.2f} s = {run_s / B:.3f} s per query ({B / run_s:.2f} queries/s); engine "
              f"stats per run: generate {parts[-1]['generate_s']:.2f} s, refine {parts[-1]['refine_s']:.3f} s, "
              f"{parts[-1]['generated_tokens']} tokens; turns {r['turns_mean']:.2f}, prompt {r['prompt_tokens']} "
              f"tokens")
    impls = C.hf_impls(args.hf)
    if not impls:
        return
    import torch  # lazy: only the HF side of the comparison needs torch
    del engines
    hf, _ = C.hf_and_ours(models.policy.cfg, "bfloat16", with_ours=False)
    cfg = models.policy.cfg
    for B in args.batches:
        r = report["batches"][str(B)]
        ids = np.asarray([prompts[B].prompt_ids])
        vin = prompts[B].video
        inp = C.hf_inputs(cfg, ids, tuple(map(int, vin.grid_thw)), vin.pixel_rows, torch.bfloat16, rows=B)
        r["hf_turn"] = []
        for impl in impls:
            g = C.HFGenerate(hf, impl)
            row = {**g.describe(), "rows": B, "new_tokens": args.new_tokens}
            with C.hf_errors(row, "error", f"HF {impl} B={B}"):
                t = g.seconds(inp, args.new_tokens)
                row.update(g.describe(), generate_s=t,
                           ours_generate_s=statistics.median(p["generate_s"] for p in r["engine_stats_per_run"])
                           / max(r["turns_mean"], 1.0))
                row["ours_turn_speedup"] = t / row["ours_generate_s"]
                C.log(f"HF {impl} B={B}: one turn's generate {t:.2f} s vs ours {row['ours_generate_s']:.2f} s "
                      f"(x{row['ours_turn_speedup']:.1f})")
            r["hf_turn"].append(row)
            report.save()


def main(argv=None):
    ap = C.parser(__doc__, hf="eager,static",
                  frames_hw=("52,448,512", "FRAMES,HEIGHT,WIDTH of the video every doc shows"))
    ap.add_argument("--config", default="base", help="configs/<name>.py the engine's settings come from")
    ap.add_argument("--set", action="append", default=[], help="config override a.b.c=value (repeatable)")
    ap.add_argument("--batches", type=C.int_list, default=(1, 16), help="queries per run call = agent batch size")
    ap.add_argument("--new-tokens", type=int, default=1024, help="config.eval.max_new_tokens")
    ap.add_argument("--corpus", type=int, default=10000, help="vectors in the corpus and index")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--policy", default="refine", choices=("refine", "random"),
                    help="refine: the random policy steered to write <REFINE> every step (every episode refines and "
                         "runs config.eval.max_turn turns, as a refining policy does); random: as initialised (it "
                         "rarely refines, so most episodes end after turn 1)")
    return C.bench_main("episode", ap, argv, run)


if __name__ == "__main__":
    C.cli(main)
