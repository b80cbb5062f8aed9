"""One Stage-1 SFT step through the runner: `SFTTask.next_batch` (grain pipeline, collate, InfoNCE candidates) and
`SFTTask.step` (the jitted train step: forward, cached SQR rollout, embedder splice, InfoNCE, backward, AdamW) and
`SFTTask.after_step` (hard-negative refresh), built as `python -m vsr1_jax.main --config.mode=sft` builds it
(`configs/<--config>.py` + overrides, `SFTTask(config, models, mesh)`), on random 2B weights and a minimal synthetic
prepared dataset in a temp folder whose videos give a ~6.5k-token sample (52 frames of 448x512, the SFT pixel
limits set to keep them at that size).

    python -m benchmarks.sft [--steps 3] [--hf eager|none] [--trace DIR]

Figures: step seconds (median of the timed steps after a warm-up step that compiles), tokens/s, MFU against the
measured bf16 peak and the datasheet, the host time of next_batch and after_step beside it, peak memory. Baseline:
the original's step in HF PyTorch on the same GPU (bf16, gradient checkpointing, the 7 latent re-forwards with
gradients, the embedder splice, InfoNCE, AdamW) on a prompt of the same shape. For the HF step to fit beside ours,
give JAX part of the GPU: XLA_PYTHON_CLIENT_MEM_FRACTION=0.55.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from benchmarks import common as C
from vsr1_jax import sharding
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.rope import get_rope_index
from vsr1_jax.processing.resize import PATCH_SIZE, TEMPORAL_PATCH_SIZE
from vsr1_jax.profiling import summarize
from vsr1_jax.train import sft as sft_lib
from vsr1_jax.train.settings import SFTSettings
from vsr1_jax.train.sft_run import SFTTask


def overrides(args, root: str) -> list[str]:
    """The config of the bench's step: the synthetic dataset, and video limits and buckets that keep the bench's
    video at its size (52 frames of 448x512 -> 26 groups of 28x32 patches)."""
    f, h, w = args.frames_hw
    patches, groups = (h // 16) * (w // 16), f // 2
    return [f"data_root={root}", "dataset=bench", "mode=sft", f"sft.max_steps={args.steps + 1}",
            f"video.sft.min_pixels={h * w}", f"video.sft.max_pixels={h * w}", f"video.sft.total_pixels={h * w * f}",
            f"sft.vision_group_buckets=({groups},)", f"sft.vision_patch_buckets=({patches},)",
            "sft.buckets=(1024, 2048, 4096, 6400, 6656, 7168, 8192)",
            # one label bucket: every step of the bench runs the program the warm-up step compiled
            "sft.label_buckets=(512,)", *args.set]


def run(args, report: C.Report) -> None:
    if args.part != "hf":   # the HF-only part leaves the GPU to PyTorch: no JAX ceilings (their arrays stay pooled)
        ceil = C.ceilings()
        report["ceilings"] = ceil
    if args.part == "hf":   # the baseline alone, on a prompt of the bench's shape (see --part)
        f, h, w = args.frames_hw
        cfg = C.tiny_token_config(get_preset(args.preset))
        head = _random_head(cfg, args.preset)
        hf_sft_step(report.data, cfg, (f // 2, h // 16, w // 16), args.answer_tokens, _refine_copies(head))
        return
    models, config = C.runner_inputs(args, report, "sft", overrides)
    head_for_hf = _refine_copies(models.head) if C.hf_impls(args.hf) else None
    t = time.perf_counter()
    settings = SFTSettings.from_config(config)
    task = SFTTask(settings, models, mesh=sharding.mesh_for(settings.mesh))
    report["task_build_s"] = time.perf_counter() - t
    report.code(SFTTask.next_batch, SFTTask.step, SFTTask.after_step, sft_lib.make_train_step)
    report.update(options_remat=settings.run.remat, rollout_layers=settings.run.rollout_layers,
                  param_dtype=settings.param_dtype, steps=[])
    state = task.state
    cfg = models.policy.cfg
    host = None
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        host = task.next_batch()
        t1 = time.perf_counter()
        state, m = task.step(state, host)
        jax.block_until_ready(m["loss"])
        t2 = time.perf_counter()
        out = task.after_step(i, host, m)
        t3 = time.perf_counter()
        row = {"step": i, "warmup": i == 0, "next_batch_s": t1 - t0, "step_s": t2 - t1, "after_step_s": t3 - t2,
               "loss": out.get("loss"), "tokens": out.get("tokens"),
               "label_tokens": int(np.sum(host["label_mask"]))}
        report["steps"].append(row)
        report.save()
        C.log(f"SFT step {i}{' (warm-up: compiles)' if i == 0 else ''}: next_batch {row['next_batch_s']:.3f} s, "
              f"step {row['step_s']:.3f} s, after_step {row['after_step_s']:.3f} s; {row['tokens']:.0f} tokens, "
              f"loss {row['loss']:.3f}")
    timed = [r for r in report["steps"] if not r["warmup"]]
    step_s = statistics.median(r["step_s"] for r in timed)
    T, La = timed[-1]["tokens"], timed[-1]["label_tokens"]
    f, h, w = args.frames_hw   # the overrides keep the video at this size: the grid follows
    ps, tp = PATCH_SIZE, TEMPORAL_PATCH_SIZE   # the processor's (config.video no longer carries them)
    grid = (f // tp, h // ps, w // ps)
    flops = C.train_flops(cfg, int(T), grid, La)
    report.update(step_s=step_s, tokens_per_s=T / step_s, tokens=T, label_tokens=La, grid=list(grid),
                  model_flops=flops, **C.mfu_fields(flops, step_s, ceil),
                  host_s_per_step=statistics.median(r["next_batch_s"] + r["after_step_s"] for r in timed),
                  peak_memory_bytes=C.peak_memory())
    report.save()
    C.log(f"SFT step {step_s:.3f} s ({T / step_s:,.0f} tok/s), {C.mfu_text(report.data)}")
    if args.trace:
        holder = {"s": state}

        def one():
            holder["s"], mm = task.step(holder["s"], host)
            jax.block_until_ready(mm["loss"])
        report["trace_summary"] = trace_steps(one, args.trace, "sft")
        state = holder["s"]
    if head_for_hf is None or args.part == "ours":
        return
    del task, state, models
    hf_sft_step(report.data, cfg, grid, La, head_for_hf)
    report.save()


def _random_head(cfg, preset: str):
    """A random SQR head of the bench's models (the HF-only part has no task)."""
    E = get_preset(C.embedder_preset(preset)).text.hidden_size
    return S.SQRHead(S.SQRConfig(policy_hidden=cfg.text.hidden_size, retrieval_dim=E, embedder_hidden=E,
                                 zero_init_refine=False), rngs=nnx.Rngs(2))


def _refine_copies(head):
    """Host copies of the SQR head's weights (the HF step's refine modules), taken before the step donates them."""
    return type("HeadCopy", (), {k: np.asarray(getattr(head, k)[...], np.float32) for k in
                                 ("proj_fc1_kernel", "proj_fc2_kernel", "latent_kernel", "append_kernel")})


def _hf_refine_modules(head, device):
    """torch copies of the SQR head (the original's nn.Sequential layouts), fp32 as the original creates them."""
    import torch  # lazy: only the HF side of the comparison needs torch
    t = lambda a: torch.tensor(np.asarray(a, np.float32))  # noqa: E731
    H, D = head.proj_fc1_kernel.shape
    He = head.append_kernel.shape[1]
    proj = torch.nn.Sequential(torch.nn.Linear(H, D), torch.nn.LayerNorm(D), torch.nn.GELU(), torch.nn.Linear(D, D))
    lat = torch.nn.Sequential(torch.nn.LayerNorm(D), torch.nn.Linear(D, H))
    app = torch.nn.Sequential(torch.nn.LayerNorm(D), torch.nn.Linear(D, He))
    with torch.no_grad():
        proj[0].weight.copy_(t(head.proj_fc1_kernel).T)
        proj[3].weight.copy_(t(head.proj_fc2_kernel).T)
        lat[1].weight.copy_(t(head.latent_kernel).T)
        app[1].weight.copy_(t(head.append_kernel).T)
    return proj.to(device), lat.to(device), app.to(device)


def trace_steps(fn, out: str, name: str, steps: int = 1) -> dict:
    """Run `fn` `steps` times under the JAX profiler; copy the perfetto trace to `out` and return its summary
    (tools/trace_summary.py: kernels, busy vs idle GPU time, time by kernel kind)."""
    tdir = tempfile.mkdtemp(prefix=f"trace_{name}_")
    with jax.profiler.trace(tdir, create_perfetto_trace=True):
        for _ in range(steps):
            fn()
    for root, _, files in os.walk(tdir):
        for fn_ in files:
            if fn_.endswith(".json.gz"):
                os.makedirs(out, exist_ok=True)
                shutil.copy(os.path.join(root, fn_), os.path.join(out, f"{name}_{fn_}"))
                summ = summarize(os.path.join(root, fn_), steps=steps, top=25)
                for t, v in summ["streams"].items():
                    C.log(f"trace {name} {t}: {v['kernels_per_step']:.0f} kernels, busy "
                          f"{v['busy_us_per_step'] / 1e3:.1f} of {v['span_us_per_step'] / 1e3:.1f} ms; by kind (ms): "
                          + ", ".join(f"{k} {u / 1e3:.1f}" for k, u in v["by_kind_us_per_step"].items()))
                return summ
    return {}


def hf_sft_step(res: dict, cfg, grid, answer: int, head) -> None:
    """The original's Stage-1 step in HF PyTorch on a video prompt of the bench's shape (the same grid and answer
    length; random HF weights of the same config)."""
    import torch  # lazy: only the HF side of the comparison needs torch
    ids, grid, px = C.video_prompt(cfg, *grid, seed=6)
    refine = 151669 if cfg.text.vocab_size > 151669 else cfg.text.vocab_size - 1
    rng = np.random.RandomState(6)
    ans = C.random_text_ids(rng, max(answer - 3, 1), cfg) + [refine, 7, 198]
    full = np.concatenate([ids[0], ans]).astype(np.int64)
    T = len(full)
    pos, _ = get_rope_index(full[None], image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                            video_grid_thw=[grid])
    emb_ids = np.asarray(C.random_text_ids(rng, 40, cfg))
    K, D = 24, head.append_kernel.shape[1]
    cand = rng.randn(K + 1, D).astype(np.float32)
    cand /= np.linalg.norm(cand, axis=-1, keepdims=True)
    hf, _ = C.hf_and_ours(cfg, "bfloat16", with_ours=False)
    refine_torch = _hf_refine_modules(head, C.DEVICE)
    t = res.get("step_s")
    hf.to(C.DEVICE).train()
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    emb = C.frozen_copy(hf)
    proj, lat, app = refine_torch
    params = [p for n, p in hf.named_parameters() if "visual.blocks" not in n and "patch_embed" not in n
              and "pos_embed" not in n] + list(proj.parameters()) + list(lat.parameters()) + list(app.parameters())
    for n, p in hf.named_parameters():
        p.requires_grad_("visual.blocks" not in n and "patch_embed" not in n and "pos_embed" not in n)
    topt = torch.optim.AdamW(params, lr=2e-5, fused=C.DEVICE == "cuda")
    ids_t = torch.tensor(full[None].astype(np.int64), device=C.DEVICE)
    labels = ids_t.clone()
    labels[0, : T - len(ans)] = -100
    px_t = torch.tensor(px, device=C.DEVICE).to(torch.bfloat16)
    grid_t = torch.tensor([grid], device=C.DEVICE)
    pos_t = torch.tensor(pos.astype(np.int64), device=C.DEVICE)
    cand_t = torch.tensor(cand, device=C.DEVICE)
    eids = torch.tensor(emb_ids[None].astype(np.int64), device=C.DEVICE)
    T = len(full)

    def hf_step():
        captured = {}
        hook = hf.model.language_model.norm.register_forward_pre_hook(lambda mo, i: captured.__setitem__("p", i[0]))
        out = hf(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), pixel_values_videos=px_t,
                 video_grid_thw=grid_t, position_ids=pos_t, labels=labels)
        hook.remove()
        r = T - 3
        zs = [proj(captured["p"][0, r].float())]
        E = hf.model.language_model.embed_tokens(ids_t)
        for k in range(1, 8):
            X = lat(torch.stack(zs)).to(E.dtype)[None]
            e = torch.cat([E[:, :r + 1], X, E[:, r + 1:]], 1)
            p2 = torch.cat([pos_t[..., :r + 1], pos_t[..., r:r + 1] + torch.arange(1, k + 1, device=C.DEVICE),
                            pos_t[..., r + 1:] + k], -1)
            hh = hf.model(inputs_embeds=e, pixel_values_videos=px_t, video_grid_thw=grid_t, position_ids=p2,
                          attention_mask=torch.ones(1, e.shape[1], device=C.DEVICE)).last_hidden_state
            zs.append(proj(hh[0, r + k].float()))
        q = emb.model.language_model.embed_tokens(eids)
        e = torch.cat([q[:, :-6], app(torch.stack(zs)).to(q.dtype)[None], q[:, -6:]], 1)
        hq = emb.model.language_model(inputs_embeds=e).last_hidden_state[0, -1].float()
        qf = torch.nn.functional.normalize(hq, dim=-1)
        ret = torch.nn.functional.cross_entropy((cand_t @ qf)[None] / 0.1, torch.zeros(1, dtype=torch.long,
                                                                                         device=C.DEVICE))
        (out.loss + 0.3 * ret).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        topt.step()
        topt.zero_grad(set_to_none=True)
        C.sync()
    torch.cuda.reset_peak_memory_stats() if C.DEVICE == "cuda" else None
    with C.hf_errors(res, "hf_error", "HF SFT step"):
        th = C.timeit(hf_step, n=1, warmup=1)
        res.update(hf_step_s=th, hf_tokens_per_s=T / th, hf_tokens=T,
                   hf_peak_memory_bytes=torch.cuda.max_memory_allocated() if C.DEVICE == "cuda" else None)
        if t:
            res["production_speedup_vs_hf"] = th / t
        C.log(f"HF SFT step: {th:.3f}s" + (f" -> ours x{th / t:.1f}" if t else ""))


def main(argv=None):
    ap = C.parser(__doc__, hf="eager", runner_steps=3,
                  frames_hw=("52,448,512", "FRAMES,HEIGHT,WIDTH of the dataset's videos"))
    ap.add_argument("--trace", default="", help="folder for a profiler trace of one step and its summary")
    ap.add_argument("--answer-tokens", type=int, default=203, help="label tokens of the HF-only part's sample")
    return C.bench_main("sft", ap, argv, run)


if __name__ == "__main__":
    C.cli(main)
