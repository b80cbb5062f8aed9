"""The default demo (`python -m vsr1_jax.main --config=configs/toy.py`): the method end to end on the synthetic
corpus with a tiny policy, on a laptop CPU.

1. build the corpus and the tiny models (loading.load_models);
2. evaluate the untrained policy;
3. Stage-1 SFT, then evaluate;
4. Stage-2 GRPO from the SFT policy (when `config.demo.grpo`), then evaluate;
5. write `demo_report.md` with the metrics side by side and the SFT loss / GRPO reward curves (PNG).
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter

from vsr1_jax import distributed, loading, runinfo, viewer
from vsr1_jax.agent.evaluate import run_eval
from vsr1_jax.eval.report import plot_curves, read_detail_jsonl
from vsr1_jax.train import loop
from vsr1_jax.train.grpo_run import run_grpo
from vsr1_jax.train.sft_run import run_sft

log = logging.getLogger(__name__)


def trained_models(models: loading.Models, task, state) -> loading.Models:
    """`models` with the policy and SQR head of a train state."""
    policy, head = task.graphdefs.modules(state.params, state.frozen)
    return models._replace(policy=policy, head=head)


def _last_checkpoint(run_dir: str) -> str:
    """The newest training checkpoint of a run folder (what the demo's trained models are)."""
    ckpts = os.path.join(run_dir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []
    return os.path.abspath(os.path.join(ckpts, str(steps[-1]))) if steps else os.path.abspath(run_dir)


def _summary_of(out_dir: str, eval_summary: dict) -> dict:
    """The numbers the demo compares: answers, how often turn 2 ran, and the original's result.json metrics."""
    if "result_json" not in eval_summary:  # a process other than 0 of a multi-host run: process 0 wrote the files
        return {}
    rows = read_detail_jsonl(eval_summary["detail_jsonl"])
    with open(eval_summary["result_json"]) as f:
        res = json.load(f)
    n = max(len(rows), 1)
    answers = Counter(r["turn1_answer"] for r in rows)
    return {
        "queries": len(rows),
        "answer unknown (turn 1)": answers.get("unknown", 0) / n,
        "answer matched (turn 1)": answers.get("matched", 0) / n,
        "answer not_matched (turn 1)": answers.get("not_matched", 0) / n,
        "<REFINE> generated (turn 1)": sum(1 for r in rows if r["turns"][0]["refine_token_generated"]) / n,
        "turn 2 ran": sum(1 for r in rows if len(r["turns"]) >= 2) / n,
        "VER turn 1 (accept/reject accuracy, answered rows)": res["verification"]["turn1"]["overall_acc"],
        "R@1 original query": res["original_retrieval"]["R@1"],
        "R@1 final": res["final_retrieval"]["R@1"],
        "mIoU@R1 final": res["final_temporal"]["mIoU@R1"],
    }


def _table(columns: dict[str, dict]) -> str:
    keys = list(next(iter(columns.values())))
    head = "| metric | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    body = ""
    for k in keys:
        cells = []
        for col in columns.values():
            v = col.get(k)
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        body += f"| {k} | " + " | ".join(cells) + " |\n"
    return head + body


def run_demo(config) -> dict:
    t0 = time.time()
    out = config.output_dir
    os.makedirs(out, exist_ok=True)
    if distributed.is_primary():
        runinfo.save_config(config, out)
    models = loading.load_models(config)
    stages, curves, times = {}, {}, {}

    t = time.time()
    stages["untrained"] = _summary_of(out, run_eval(config, models, output_dir=os.path.join(out, "eval_untrained"),
                                                  checkpoint="the demo's untrained tiny models"))
    times["eval untrained"] = time.time() - t

    t = time.time()
    task, state = run_sft(config, models, out_dir=os.path.join(out, "sft"))   # errors.Stopped on SIGINT / SIGTERM
    times["SFT"] = time.time() - t
    models = trained_models(models, task, state)
    rows = loop.read_metrics(os.path.join(out, "sft"))
    curves["sft"] = {k: [(r["step"], r[k]) for r in rows if k in r] for k in ("loss", "lm_loss")}
    # a step without InfoNCE rows logs infonce_loss = 0: not a point of the curve (it would look like a perfect loss)
    curves["sft"]["infonce_loss"] = [(r["step"], r["infonce_loss"]) for r in rows
                                     if "infonce_loss" in r and r.get("infonce_rows", 1) > 0]
    t = time.time()
    stages["after SFT"] = _summary_of(out, run_eval(config, models, output_dir=os.path.join(out, "eval_sft"),
                                                  checkpoint=_last_checkpoint(os.path.join(out, "sft"))))
    times["eval after SFT"] = time.time() - t

    if config.demo.grpo:
        t = time.time()
        gtask, gstate = run_grpo(config, models, out_dir=os.path.join(out, "grpo"))
        times["GRPO"] = time.time() - t
        models = trained_models(models, gtask, gstate)
        rows = loop.read_metrics(os.path.join(out, "grpo"))
        rewards = [(r["step"], r["reward"]) for r in rows]
        smooth = [(s, sum(v for _, v in rewards[max(0, i - 4):i + 1]) / len(rewards[max(0, i - 4):i + 1]))
                  for i, (s, _) in enumerate(rewards)]
        curves["grpo"] = {"total reward": rewards, "moving mean (5 steps)": smooth}
        q = max(len(rewards) // 4, 1)
        grpo_change = (sum(v for _, v in rewards[:q]) / q, sum(v for _, v in rewards[-q:]) / q)
        t = time.time()
        stages["after GRPO"] = _summary_of(out, run_eval(config, models, output_dir=os.path.join(out, "eval_grpo"),
                                                       checkpoint=_last_checkpoint(os.path.join(out, "grpo"))))
        times["eval after GRPO"] = time.time() - t

    if not distributed.is_primary():  # process 0 writes the report
        return dict(output_dir=os.path.abspath(out), wall_s=time.time() - t0)
    # the last evaluation's episodes as a self-contained page (frames, reasoning, refinement, spans)
    episodes, _ = viewer.write_page(os.path.join(out, "eval_grpo" if config.demo.grpo else "eval_sft"))
    pngs = [str(plot_curves(curves["sft"], os.path.join(out, "sft_loss.png"),
                            title="Stage 1 (SFT) on the synthetic corpus", ylabel="loss"))]
    if "grpo" in curves:
        pngs.append(str(plot_curves(curves["grpo"], os.path.join(out, "grpo_reward.png"),
                                    title="Stage 2 (GRPO): total reward per step", ylabel="reward")))
    report = os.path.join(out, "demo_report.md")
    with open(report, "w") as f:
        f.write("# vsr1_jax demo: the tiny policy before and after training\n\n")
        f.write(_table(stages) + "\n")
        if "grpo" in curves:
            f.write(f"GRPO mean total reward per step: first quarter {grpo_change[0]:.3f} -> last quarter "
                    f"{grpo_change[1]:.3f}\n\n")
        f.write("Time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + "\n\n")
        for p in pngs:
            f.write(f"![{os.path.basename(p)}]({os.path.basename(p)})\n\n")
        f.write(f"Episodes of the last evaluation, in a browser: [episodes.html]({os.path.relpath(episodes, out)})\n")
    print(open(report).read())
    return dict(output_dir=os.path.abspath(out), report=os.path.abspath(report),
                **{os.path.basename(p): os.path.abspath(p) for p in pngs}, episodes_html=os.path.abspath(episodes),
                wall_s=time.time() - t0)
