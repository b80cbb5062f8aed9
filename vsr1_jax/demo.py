"""The default demo (`python -m vsr1_jax.main --config=configs/toy.py`): the method end to end on the synthetic
corpus with a tiny policy, on a laptop CPU.

0. Stage 0 (train/stage0.py, run by main before any mode): the tiny search engine trained contrastively on
   train-side synthetic videos; its curve (loss, held-out train-side R@1) is read back here;
1. build the corpus with that engine and the tiny models (loading.load_models, demo_models.py);
2. evaluate the untrained policy (its original-query retrieval is the search engine alone);
3. Stage-1 SFT, then evaluate;
4. Stage-2 GRPO from the SFT policy (when `config.demo.grpo`), then evaluate;
5. write `demo_report.md` with the metrics side by side (eval/demo_metrics.py: R@1/R@5 before and after the agent
   with an exact McNemar test over the same queries, SQR-only R@1, VER against its majority baseline, mIoU on the
   accepted videos, refine and turn-2 rates) and the Stage-0 / SFT / GRPO curves (PNG).
"""
from __future__ import annotations

import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax import distributed, loading, runinfo, viewer
from vsr1_jax.agent.evaluate import EvalSettings, run_eval
from vsr1_jax.agent.rollout import EpisodeConfig, refined_query
from vsr1_jax.ckpt.read import Models
from vsr1_jax.demo_models import stage0_dir
from vsr1_jax.data import queries as Q
from vsr1_jax.data import synthetic_text as TX
from vsr1_jax.data import synthetic_world as SW
from vsr1_jax.data.paths import PreparedPaths
from vsr1_jax.eval import demo_metrics as DM
from vsr1_jax.eval.report import plot_curves, read_detail_jsonl
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.processing import chat
from vsr1_jax.train import loop
from vsr1_jax.train.grpo_run import run_grpo
from vsr1_jax.train.settings import GRPOSettings, SFTSettings
from vsr1_jax.train.sft_run import run_sft

log = logging.getLogger(__name__)


def trained_models(models: Models, task, state) -> Models:
    """`models` with the policy and SQR head of a train state."""
    policy, head = task.graphdefs.modules(state.params, state.frozen)
    return models._replace(policy=policy, head=head)


def _last_checkpoint(run_dir: str) -> str:
    """The newest training checkpoint of a run folder (what the demo's trained models are)."""
    ckpts = os.path.join(run_dir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []
    return os.path.abspath(os.path.join(ckpts, str(steps[-1]))) if steps else os.path.abspath(run_dir)


def _check_truth(videos: dict):
    """row -> `synthetic_text.checked_values` of its query, GT video and turn-1 video (None when one is unknown)."""
    def truth(r):
        shown = ((r.get("turns") or [{}])[0]).get("top1_doc_id")
        if r.get("gt_pos_doc_id") not in videos or shown not in videos:
            return None
        return TX.checked_values(r.get("query", ""), videos[r["gt_pos_doc_id"]], videos[shown])
    return truth


def _summary_of(out_dir: str, eval_summary: dict, engine_only: bool = False, videos: dict | None = None,
                sqr_control=None) -> dict:
    """The numbers the demo compares (eval/demo_metrics.py) from one evaluation's detail rows. engine_only: the
    search engine alone (the original query's retrieval; the policy's columns are left empty). videos: the test
    videos by id (`synthetic_world.plan_splits`), for the checks that the policy describes the video it was shown and
    reads each value it checks. sqr_control: rows -> `sqr_random_control`'s chance levels, shown beside SQR-only."""
    if "result_json" not in eval_summary:  # a process other than 0 of a multi-host run: process 0 wrote the files
        return {}
    rows = read_detail_jsonl(eval_summary["detail_jsonl"])
    pr = DM.paired_retrieval(rows)
    if engine_only:
        return {"test queries": len(rows), "R@1 original query": pr["R@1 original"],
                "R@5 original query": pr["R@5 original"]}
    sq = DM.sqr_only(rows)
    ctl = sqr_control(rows) if sqr_control is not None else {}
    ver = DM.verification(rows)
    g = DM.grounding(rows)
    out = {
        "test queries": len(rows),
        "R@1 original query": pr["R@1 original"],
        "R@5 original query": pr["R@5 original"],
        "R@1 final": pr["R@1 final"],
        "R@5 final": pr["R@5 final"],
        "R@1 final - original": pr["lift"],
        "paired test: worse / better": f"{pr['worse (b)']} / {pr['better (c)']}",
        "paired test: p (McNemar exact)": pr["p (McNemar exact)"],
        "R@1 SQR-only (refined query where top-1 is wrong)": sq["R@1 SQR-only"],
        "SQR-only: wrong top-1 rows refined": f"{sq['refined among them']} / {sq['wrong top-1 rows']}",
        "SQR-only: p (McNemar exact)": sq["p (McNemar exact)"],
        "R@1 SQR-only, random latents (chance level, mean of 5 draws)": ctl.get("SQR-only R@1"),
        "R@1 refined query on every row: policy's latents / random latents": (
            f"{sq['R@1 refined, all rows']:.3f} / {ctl['refined R@1, all rows']:.3f}"
            if ctl.get("refined R@1, all rows") is not None else None),
        "VER turn 1 (accept/reject accuracy)": ver["VER turn 1"],
        "VER majority-class baseline": ver["VER majority baseline"],
        "mIoU on accepted videos (0 if wrong video)": g["mIoU accepted"],
        "mIoU on accepted GT videos": g["mIoU accepted GT videos"],
        "accepted turns": g["accepted turns"],
        **DM.rates(rows),
    }
    if videos is not None:
        rv = DM.reads_video(rows, TX.described_event, TX.event_attributes(list(videos.values())))
        out["turn-1 description of the shown video: colour / shape / direction agree"] = (
            f"{rv['color agrees']:.3f} / {rv['shape agrees']:.3f} / {rv['direction agrees']:.3f} "
            f"(n={rv['described']})")
        fc = DM.follows_checks(rows, TX.parse_checks)
        if fc["checked"]:
            out["turn-1 checks: yes iff values equal / verdict follows checks / answer follows verdict"] = (
                f"{fc['yes iff equal']:.3f} / {fc['verdict follows checks']:.3f} / {fc['answer follows verdict']:.3f} "
                f"(n={fc['checked']})")
        rc = DM.reads_checks(rows, TX.parse_checks, _check_truth(videos))
        if any(rc[f"{k} checks"] for k in DM.CHECKED):   # a policy that writes no checks gets "–"
            for side, what in (("seen", "the shown video's"), ("query", "the query's")):
                out[f"turn-1 checks: {what} value right, colour / shape / direction / position / background"] = (
                    " / ".join(f"{rc[f'{k} {side}']:.2f}" for k in DM.CHECKED)
                    + f" (n={' / '.join(str(rc[f'{k} checks']) for k in DM.CHECKED)})")
    return out


def sqr_random_control(config, models: Models, rows, draws: int = 5, seed: int = 0) -> dict:
    """The chance level of the refined query: every row's query refined with random latents instead of the policy's
    (per draw and row, standard-normal latents through the trained append projector into the frozen embedder, as the
    policy's go; the projector's LayerNorm puts every latent at the same norm). SQR-only uses the refined query only
    where the top-1 is wrong, so it counts fixes and never harms: any perturbation of the query lifts it. A policy's
    latents carry information only where its SQR-only R@1 is above the random one, and where its refined query on
    every row ("refined R@1, all rows") is above the random one's.
    Returns the mean over the draws of both R@1s; None for both with several processes (only process 0 writes the
    report, and the embedder's weights live on every process's devices)."""
    if jax.process_count() > 1:
        log.warning("the random-latent control of SQR-only is computed by single-process runs only; the report of "
                    "this %d-process run leaves it empty", jax.process_count())
        return {"SQR-only R@1": None, "refined R@1, all rows": None, "draws": 0}
    corpus, _ = Q.load_retrieval(PreparedPaths(config.data_root, config.dataset), "test")
    rows = [r for r in rows if r.get("gt_pos_doc_id") in corpus.docid2row]
    if not rows:
        return {"SQR-only R@1": None, "refined R@1, all rows": None, "draws": 0}
    ec = EpisodeConfig.from_config(config, "eval")
    toks = [chat.embedder_query_ids(models.embed_tokenizer, r["query"], ec.instruction, ec.embedder_max_length)
            for r in rows]
    arrays = [jnp.asarray(a) for a in S.splice_layout(toks, ec.num_latents, ec.splice_tail, pad_id=0)]
    graphdefs = (nnx.graphdef(models.embedder), nnx.graphdef(models.head))
    emb_params, head_params = nnx.state(models.embedder), nnx.state(models.head)
    gt = np.array([corpus.docid2row[r["gt_pos_doc_id"]] for r in rows])
    right = np.array([r.get("orig_rank") == 1 for r in rows])
    rng, sqr_only, every = np.random.default_rng(seed), [], []
    for _ in range(draws):
        Z = jnp.asarray(rng.standard_normal((len(rows), ec.num_latents, models.head.cfg.retrieval_dim)), jnp.float32)
        q = np.asarray(refined_query(graphdefs, emb_params, head_params, Z, *arrays,
                                     opts=RunOptions.from_config(config.model)), np.float32)
        hit = (q @ corpus.matrix.T).argmax(1) == gt
        sqr_only.append(float((right | hit).mean()))
        every.append(float(hit.mean()))
    return {"SQR-only R@1": float(np.mean(sqr_only)), "refined R@1, all rows": float(np.mean(every)), "draws": draws}


def _table(columns: dict[str, dict]) -> str:
    keys = list(dict.fromkeys(k for col in columns.values() for k in col))
    head = "| metric | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    body = ""
    for k in keys:
        cells = []
        for col in columns.values():
            v = col.get(k)
            if isinstance(v, float):
                cells.append(f"{v:.1e}" if 0 < v < 1e-3 else f"{v:.3f}")  # small p-values stay readable
            else:
                cells.append("–" if v is None else str(v))
        body += f"| {k} | " + " | ".join(cells) + " |\n"
    return head + body


def run_demo(config) -> dict:
    t0 = time.time()
    out = config.output_dir
    os.makedirs(out, exist_ok=True)
    # the boundary: each stage's settings read from the config once (the runners never read it); `record`, the
    # resolved config, goes into every stage's folder as config.json
    record = runinfo.config_dict(config)
    ev_settings, sft_settings = EvalSettings.from_config(config), SFTSettings.from_config(config)
    grpo_settings = GRPOSettings.from_config(config) if config.demo.grpo else None
    if distributed.is_primary():
        runinfo.save_config(record, out)
    models = loading.load_models(config)
    stages, curves, times = {}, {}, {}
    videos = {v.video_id: v for v in SW.plan_splits(config.synthetic)["test"]}  # what each test video shows

    def control(rows):   # with the models of the column being summarised
        return sqr_random_control(config, models, rows)

    t = time.time()
    ev = run_eval(ev_settings, models, record=record, output_dir=os.path.join(out, "eval_untrained"),
                  checkpoint="the demo's untrained tiny models")
    if config.demo.stage0.enabled:  # the engine alone: the original query's retrieval (any policy column has it)
        stages["search engine only (Stage 0)"] = _summary_of(out, ev, engine_only=True)
        rows = loop.read_metrics(stage0_dir(config))
        curves["stage0"] = {"InfoNCE loss": [(r["step"], r["loss"]) for r in rows]}
        curves["stage0_r1"] = {"held-out train-side R@1": [(r["step"], r["val_r1"]) for r in rows if "val_r1" in r]}
    stages["untrained policy"] = _summary_of(out, ev, videos=videos, sqr_control=control)
    times["eval untrained"] = time.time() - t

    t = time.time()
    task, state = run_sft(sft_settings, models, out_dir=os.path.join(out, "sft"),
                          record=record)   # errors.Stopped on SIGINT / SIGTERM
    times["SFT"] = time.time() - t
    models = trained_models(models, task, state)
    rows = loop.read_metrics(os.path.join(out, "sft"))
    curves["sft"] = {k: [(r["step"], r[k]) for r in rows if k in r] for k in ("loss", "lm_loss")}
    # a step without InfoNCE rows logs infonce_loss = 0: not a point of the curve (it would look like a perfect loss)
    curves["sft"]["infonce_loss"] = [(r["step"], r["infonce_loss"]) for r in rows
                                     if "infonce_loss" in r and r.get("infonce_rows", 1) > 0]
    t = time.time()
    stages["after SFT"] = _summary_of(out, run_eval(ev_settings, models, record=record,
                                                  output_dir=os.path.join(out, "eval_sft"),
                                                  checkpoint=_last_checkpoint(os.path.join(out, "sft"))),
                                      videos=videos, sqr_control=control)
    times["eval after SFT"] = time.time() - t

    if config.demo.grpo:
        t = time.time()
        gtask, gstate = run_grpo(grpo_settings, models, out_dir=os.path.join(out, "grpo"),
                                 record=record)
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
        stages["after GRPO"] = _summary_of(out, run_eval(ev_settings, models, record=record,
                                                       output_dir=os.path.join(out, "eval_grpo"),
                                                       checkpoint=_last_checkpoint(os.path.join(out, "grpo"))),
                                           videos=videos, sqr_control=control)
        times["eval after GRPO"] = time.time() - t

    if not distributed.is_primary():  # process 0 writes the report
        return dict(output_dir=os.path.abspath(out), wall_s=time.time() - t0)
    # the last evaluation's episodes as a self-contained page (frames, reasoning, refinement, spans)
    episodes, _ = viewer.write_page(os.path.join(out, "eval_grpo" if config.demo.grpo else "eval_sft"))
    pngs = []
    if "stage0" in curves:
        test_r1 = stages["search engine only (Stage 0)"].get("R@1 original query")
        pngs.append(str(plot_curves(curves["stage0"], os.path.join(out, "stage0.png"),
                                    title="Stage 0 (search engine): symmetric InfoNCE per step", ylabel="loss")))
        pngs.append(str(plot_curves(curves["stage0_r1"], os.path.join(out, "stage0_r1.png"),
                                    title=f"Stage 0: held-out R@1 (test R@1 of the final engine {test_r1:.3f})",
                                    ylabel="R@1")))
    pngs += [str(plot_curves(curves["sft"], os.path.join(out, "sft_loss.png"),
                            title="Stage 1 (SFT) on the synthetic corpus", ylabel="loss"))]
    if "grpo" in curves:
        pngs.append(str(plot_curves(curves["grpo"], os.path.join(out, "grpo_reward.png"),
                                    title="Stage 2 (GRPO): total reward per step", ylabel="reward")))
    report = os.path.join(out, "demo_report.md")
    with open(report, "w") as f:
        f.write("# vsr1_jax demo: the search engine, then the tiny policy before and after training\n\n")
        f.write(f"Synthetic world seed {config.synthetic.seed}; every figure on the same test queries. Paired test: "
                "exact McNemar over the queries whose top-1 changed (worse: right before, wrong after). SQR-only: "
                "the turn-1 refined query used exactly where the original top-1 is wrong (oracle verification), "
                "for the rows where the policy wrote <REFINE>.\n\n")
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
