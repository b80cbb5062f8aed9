"""One Stage-2 GRPO step through the runner, as the loop runs it: `GRPOTask.next_batch(state)` (vsr1_jax/train/
grpo_run.py, the generation phase: rollout with the episode engine -> rewards -> advantages -> scoring batch ->
reference log-probs) then `GRPOTask.step` (the update), built as `python -m vsr1_jax.main --config.mode=grpo`
builds it (`configs/<--config>.py` + overrides, `GRPOTask(GRPOSettings.from_config(config), models, mesh)`), on
random 2B weights and a minimal synthetic prepared dataset written to a temp folder: 1 prompt x 8 samples (the
config's generation batch), a ~6.3k-token video prompt (52 frames of 448x512, the GRPO pixel limits raised to keep
them at that size), 768 new tokens (random weights rarely stop early).

    python -m benchmarks.grpo [--steps 2] [--hf eager,static]

Per step: the wall time of `next_batch` + `step` and the phases the runner itself reports (rollout_s, rewards_s,
batch_s, score_s, update_s); MFU of scoring and update against the measured peak; the decode step of the rollout against
the read roofline ((rollout - prefill) / new tokens, the prefill timed alone through the engine's sampler).
Baselines: HF PyTorch `generate` of the same 8 rows (eager, and static cache + torch.compile) and an HF update
(reference forward, forward/backward with gradient checkpointing, AdamW), on HF random weights of the same config.
"""
from __future__ import annotations

import gc
import statistics
import time

import jax
import numpy as np
from flax import nnx

from benchmarks import common as C
from vsr1_jax import sharding
from vsr1_jax.agent.rollout import EpisodeEngine, Trajectory, Turn
from vsr1_jax.data.paths import PreparedPaths
from vsr1_jax.data.queries import grpo_records
from vsr1_jax.generate.sampler import Sampler, pack_prompts
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.train import grpo as grpo_lib
from vsr1_jax.train.grpo_run import GRPOTask
from vsr1_jax.train.settings import GRPOSettings


def overrides(args, root: str) -> list[str]:
    """The config of the bench's step: the synthetic dataset, max_steps, and video limits and buckets that keep the
    bench's video at its size (52 frames of 448x512 -> 26 groups of 28x32 patches)."""
    f, h, w = args.frames_hw
    patches, groups = (h // 16) * (w // 16), f // 2
    return [f"data_root={root}", "dataset=bench", "mode=grpo", f"grpo.max_steps={args.steps + 1}",
            f"grpo.max_completion_length={args.new_tokens}",
            f"video.grpo.min_pixels={h * w}", f"video.grpo.max_pixels={h * w}", f"video.grpo.total_pixels={h * w * f}",
            f"grpo.vision_group_buckets=({groups},)", f"grpo.vision_patch_buckets=({patches},)",
            "grpo.prompt_buckets=(1024, 2048, 4096, 6400, 6656, 7168, 8192)", "grpo.max_prompt_length=8192",
            *args.set]


def run(args, report: C.Report) -> None:
    if args.part != "hf":   # the HF-only part leaves the GPU to PyTorch: no JAX ceilings (their arrays stay pooled)
        ceil = C.ceilings()
        report["ceilings"] = ceil
    if args.part == "hf":   # the baseline alone, on a prompt of the bench's shape (see --part)
        cfg = C.tiny_token_config(get_preset(args.preset))
        f, h, w = args.frames_hw
        ids, grid, px = C.video_prompt(cfg, f // 2, h // 16, w // 16, seed=7)
        report.update(prompt_tokens=int(ids.shape[1]), grid=list(grid), new_tokens=args.new_tokens, samples=8)
        hf_baseline(report, cfg, ids, grid, px, 8, args.new_tokens, C.hf_impls(args.hf))
        return
    models, config = C.runner_inputs(args, report, "grpo", overrides)
    t = time.perf_counter()
    settings = GRPOSettings.from_config(config)
    task = GRPOTask(settings, models, mesh=sharding.mesh_for(settings.mesh))
    report["task_build_s"] = time.perf_counter() - t
    report.code(GRPOTask.next_batch, GRPOTask.step, EpisodeEngine.run, Sampler.generate, grpo_lib.make_score_fn,
                grpo_lib.make_train_step)
    eng = task.rollouts.engine
    report.update(decode_loop=eng.sampler.loop, decode_attn=eng.opts.decode_attn_impl, attn=eng.opts.attn_impl,
                  samples=task.G, prompts_per_step=task.prompts_per_round, new_tokens=args.new_tokens,
                  micro_batches=task.A, rows_per_micro=task.m, steps=[])
    state = task.state
    for i in range(args.steps + 1):
        t = time.perf_counter()
        state, m = task.step(state, task.next_batch(state))
        m = task.after_step(i, None, m)
        wall = time.perf_counter() - t
        row = {"step": i, "warmup": i == 0, "step_s": wall,
               **{k: m[k] for k in ("rollout_s", "rewards_s", "batch_s", "score_s", "update_s", "rollout_tokens_per_s",
                                    "completion_length", "truncated_rate", "loss") if k in m}}
        report["steps"].append(row)
        report.save()
        C.log(f"GRPO step {i}{' (warm-up: compiles)' if i == 0 else ''}: {wall:.2f} s = rollout "
              f"{row['rollout_s']:.2f} + rewards {row['rewards_s']:.3f} + batch {row['batch_s']:.3f} + scoring "
              f"{row['score_s']:.2f} + update {row['update_s']:.2f} s; {row['rollout_tokens_per_s']:,.0f} rollout "
              f"tok/s, mean completion {row['completion_length']:.0f} tokens")
    timed = [r for r in report["steps"] if not r["warmup"]]
    med = {k: statistics.median(r[k] for r in timed) for k in ("step_s", "rollout_s", "score_s", "update_s")}
    cfg = models.policy.cfg
    turn = first_prompt(task, config)
    T, grid = int(len(turn.prompt_ids)), tuple(int(x) for x in turn.video.grid_thw)
    G, N = task.G, args.new_tokens
    p = pack_prompts([list(turn.prompt_ids)], cfg=cfg, pad_id=eng.ids.pad, video_pixels=turn.video.pixel_rows,
                     video_grids=[grid], padding=eng.sampler.padding, length=-(-T // 64) * 64)
    # the policy's current weights, as the runner passes them (the sampler's own were donated to the update)
    pol = nnx.state(task.graphdefs.modules(state.params, state.frozen)[0])
    t_pre = C.timeit(lambda: jax.block_until_ready(eng.sampler.prefill(p, p.ids.shape[1] + N + 8, params=pol)[0]), n=2)
    step_s = max(med["rollout_s"] - t_pre, 1e-9) / N
    score_flops = G * C.forward_flops(cfg, T + N, grid, N)
    update_flops = G * C.train_flops(cfg, T + N, grid, N)
    report.update(prompt_tokens=T, grid=list(grid), median=med, prefill_s=t_pre,
                  decode=C.decode_row(step_s, cfg, G, T + N / 2, ceil),
                  scoring=C.mfu_fields(score_flops, med["score_s"], ceil),
                  update=C.mfu_fields(update_flops, med["update_s"], ceil), peak_memory_bytes=C.peak_memory())
    report.save()
    C.log(f"GRPO step {med['step_s']:.2f} s: rollout {med['rollout_s']:.2f} s (decode step "
          f"{report['decode']['step_ms']:.2f} ms = {report['decode']['fraction_of_roofline']:.0%} of the read "
          f"roofline), scoring {med['score_s']:.2f} s ({C.mfu_text(report['scoring'])}), update "
          f"{med['update_s']:.2f} s ({C.mfu_text(report['update'])})")
    impls = C.hf_impls(args.hf)
    if not impls or args.part == "ours":
        return
    ids, px = np.asarray([turn.prompt_ids]), turn.video.pixel_rows
    del task, state, models, eng
    gc.collect()
    hf_baseline(report, cfg, ids, grid, px, G, N, impls)


def first_prompt(task: GRPOTask, config):
    """The prompt (ids, video inputs) of the dataset's first GRPO row, built by the task's engine as a rollout
    builds it: the shape every step of the bench works on (rows differ only in a few query tokens)."""
    recs, _ = grpo_records(PreparedPaths(config.data_root, config.dataset), docid2row=task.corpus.docid2row,
                           hard_negative_k=config.grpo.hard_negative_topk)
    r = recs[0]
    traj = Trajectory(query=dict(index=0, qid=r["qid"], query=r["query"], gt_doc_id=r["gt_video"], gt_start=0.0,
                                 gt_end=1.0, duration=None), sample=0, qvec=np.zeros(1, np.float32), orig_rank=-1)
    ids, vin = task.rollouts.engine._prompt(traj, r["retrieved_video"])
    return Turn(turn=1, doc_id=r["retrieved_video"], rank=-1, prompt_ids=np.asarray(ids, np.int32), video=vin,
                sampled_ids=np.zeros(0, np.int32), logprobs=np.zeros(0, np.float32), text="", answer="unknown",
                span=None, has_refine=False)


def hf_baseline(report, cfg, ids, grid, px, G: int, N: int, impls, micro: int = 2) -> None:
    """HF PyTorch doing the step's work on the same GPU: `generate` of the G rows (each baseline), then the
    reference log-probs and the forward/backward of the G rows in micro-batches (gradient checkpointing, AdamW)."""
    import torch  # lazy: only the HF side of the comparison needs torch
    hf, _ = C.hf_and_ours(cfg, "bfloat16", with_ours=False)
    ref_hf = C.frozen_copy(hf)
    T = ids.shape[1]
    inp = C.hf_inputs(cfg, ids, grid, px, torch.bfloat16, rows=G)
    hold, rows_out = {}, []
    for impl in impls:
        g = C.HFGenerate(hf, impl)
        row = {**g.describe(), "rows": G, "new_tokens": N}
        with C.hf_errors(row, "error", f"HF {impl} GRPO rollout"):
            hf.eval()
            g.warmup(inp, N, do_sample=True)
            t = time.perf_counter()
            hold["seq"] = g(inp, N, do_sample=True)
            row.update(g.describe(), rollout_s=time.perf_counter() - t)
            row["rollout_tokens_per_s"] = G * N / row["rollout_s"]
            C.log(f"HF {impl} GRPO rollout: {row['rollout_s']:.1f} s ({row['rollout_tokens_per_s']:,.0f} tok/s)")
        rows_out.append(row)
        report["hf_rollout"] = rows_out
        report.save()
    if "seq" not in hold:
        return
    params = [pp for n, pp in hf.named_parameters() if "language_model" in n or n.startswith("lm_head")]
    for n, pp in hf.named_parameters():
        pp.requires_grad_("language_model" in n or n.startswith("lm_head"))
    topt = torch.optim.AdamW(params, lr=5e-7, weight_decay=0.01, fused=C.DEVICE == "cuda")
    adv = torch.tensor(np.random.RandomState(0).randn(G).astype(np.float32), device=C.DEVICE)
    n_px = int(np.prod(grid))

    def logp(model, rows):
        seq = hold["seq"][rows]
        out = model(input_ids=seq, attention_mask=torch.ones_like(seq),
                    pixel_values_videos=torch.cat([inp["pixel_values_videos"][:n_px]] * len(rows)),
                    video_grid_thw=inp["video_grid_thw"][rows],
                    mm_token_type_ids=torch.cat([inp["mm_token_type_ids"][rows], torch.zeros(
                        len(rows), N, dtype=inp["mm_token_type_ids"].dtype, device=C.DEVICE)], 1),
                    logits_to_keep=N + 1)
        lg = out.logits[:, :-1].float()
        return torch.log_softmax(lg, -1).gather(-1, seq[:, T:, None])[..., 0]

    def update():
        hf.train()
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for s0 in range(0, G, micro):
            rows = list(range(s0, s0 + micro))
            with torch.no_grad():
                rl = logp(ref_hf, rows)
            lp = logp(hf, rows)
            d = rl - lp
            loss = (-(torch.exp(lp - lp.detach()) * adv[rows, None]) + 0.01 * (torch.exp(d) - d - 1)).mean(-1).mean()
            (loss / (G // micro)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        topt.step()
        topt.zero_grad(set_to_none=True)
        C.sync()
    with C.hf_errors(report.data, "hf_update_error", "HF update"):
        if C.DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t_upd = C.timeit(update, n=1, warmup=1)
        best = min(r["rollout_s"] for r in rows_out if "rollout_s" in r)
        report.update(hf_update_s=t_upd, hf_step_s_best_rollout=best + t_upd,
                      hf_peak_memory_bytes=torch.cuda.max_memory_allocated() if C.DEVICE == "cuda" else None)
        if "median" in report.data:
            report["production_speedup_vs_best_hf"] = (best + t_upd) / report["median"]["step_s"]
        C.log(f"HF update {t_upd:.2f} s; HF step with its best rollout {best + t_upd:.1f} s"
              + (f" -> ours x{report['production_speedup_vs_best_hf']:.1f}" if "median" in report.data else ""))


def main(argv=None):
    ap = C.parser(__doc__, hf="eager,static", runner_steps=2,
                  frames_hw=("52,448,512", "FRAMES,HEIGHT,WIDTH of the dataset's videos"))
    ap.add_argument("--new-tokens", type=int, default=768, help="grpo.max_completion_length")
    return C.bench_main("grpo", ap, argv, run)


if __name__ == "__main__":
    C.cli(main)
