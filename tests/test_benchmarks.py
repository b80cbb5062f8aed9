"""The benchmarks (benchmarks/) run end to end on the tiny preset on CPU and write their JSON report (command, device,
`code_path` = the production functions timed, figures, complete), and the static-cache HF baseline generates the
eager baseline's greedy tokens."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _report(path, name):
    r = json.loads((path / f"bench_{name}.json").read_text())
    assert r["complete"] and r["bench"] == name and r["command"].startswith(f"python -m benchmarks.{name} ")
    assert r["device"]["platform"] == "cpu" and r["device"]["jax"]
    assert r["code_path"] and all(n.startswith("vsr1_jax.") for n in r["code_path"])
    return r


def test_every_benchmark_runs_as_a_module():
    """`python -m benchmarks.<name> --help` for each benchmark file (the command the README gives)."""
    code = ("import runpy, sys\nfor n in sys.argv[1:]:\n    sys.argv = [n, '--help']\n    try:\n"
            "        runpy.run_module('benchmarks.' + n, run_name='__main__')\n    except SystemExit as e:\n"
            "        assert e.code == 0, n\n")
    names = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in ("__init__", "common"))
    assert names == ["build", "decode", "episode", "grpo", "mixed", "parity", "prefill", "sft", "sqr"]
    proc = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("usage: ") == len(names)


def test_decode_bench_marks_the_production_rows_and_runs_both_hf_baselines(tmp_path):
    from benchmarks import decode
    decode.main(["--preset=tiny", "--batches=2", "--new-tokens=3", "--frames-hw=2,4,4", "--hf=eager,static",
                 "--decode-layer=xla,fused", f"--out={tmp_path}"])
    r = _report(tmp_path, "decode")
    assert "vsr1_jax.generate.sampler.Sampler.generate" in r["code_path"]
    # the fused decode layer does not apply on a CPU: reported with its reason, not timed (its rows would be XLA's)
    xla, fused = r["decode_layers"]["xla"], r["decode_layers"]["fused"]
    assert fused["path"] == "xla" and "NVIDIA" in fused["why"] and not fused["step_ms"]
    assert "vsr1_jax.models.qwen3_vl.text.decoder_layer" in xla["code_path"] and xla["step_ms"]["2"] > 0
    assert {x["decode_layer"] for x in r["rows"] if x["impl"] == "ours"} == {"xla"}
    for B in (2,):
        rows = [x for x in r["rows"] if x["batch"] == B]
        prod = [x for x in rows if x["production"]]
        # one production row, on the loop production runs; the other loop is timed beside it, marked false
        assert len(prod) == 1 and prod[0]["loop"] == r["production_loop"] and prod[0]["impl"] == "ours"
        assert {x["loop"] for x in rows if x["impl"] == "ours"} == {"host", "while"}
        assert {x["impl"] for x in rows if not x["production"]} >= {"hf_eager", "hf_static"}
        for x in rows:
            assert "error" not in x and x["step_ms"] > 0 and x["roofline_step_ms"] > 0


def test_static_cache_baseline_generates_the_eager_greedy_tokens(tiny_pair):
    """`cache_implementation="static"` (uncompiled on CPU) against the dynamic cache on the same tiny HF model: equal
    greedy tokens up to the first step whose top-2 logit margin is a near-tie (fp32, random weights)."""
    import torch
    from benchmarks import common as C
    hf, _, cfg = tiny_pair
    ids, grid, px = C.video_prompt(cfg, 2, 4, 4, seed=3)
    inp = C.hf_inputs(cfg, ids, grid, px, torch.float32, rows=2)
    kw = dict(max_new_tokens=12, do_sample=False, return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        eager = hf.generate(**inp, **kw, **C.hf_generate_kwargs("eager"))
        static = hf.generate(**inp, **kw, **C.hf_generate_kwargs("static"))
    T = ids.shape[1]
    a, b = eager.sequences[:, T:].numpy(), static.sequences[:, T:].numpy()
    scores = torch.stack(eager.scores, 1).numpy()             # [rows, steps, vocab]
    top2 = np.sort(scores, -1)[..., -2:]
    margin = top2[..., 1] - top2[..., 0]
    for row in range(a.shape[0]):
        tie = np.flatnonzero(margin[row] < 1e-4)
        n = int(tie[0]) + 1 if len(tie) else a.shape[1]
        assert n >= 4, f"row {row}: a near-tie at step {n - 1}: the comparison would test nothing"
        np.testing.assert_array_equal(a[row, :n], b[row, :n])


def test_prefill_bench(tmp_path):
    from benchmarks import prefill
    prefill.main(["--preset=tiny", "--frames-hw=2,4,4", "--hf=eager", f"--out={tmp_path}"])
    r = _report(tmp_path, "prefill")
    assert r["code_path"] == ["vsr1_jax.models.qwen3_vl.model.Qwen3VL.__call__"]
    assert [x["impl"] for x in r["rows"]] == ["ours", "hf_eager"] and r["rows"][0]["production"]
    assert all(x["seconds"] > 0 and x["mfu_measured_peak"] > 0 for x in r["rows"])


def test_mixed_bench_runs_and_the_layouts_agree(tmp_path):
    """benchmarks.mixed (the GPU figure: cudnn right-padded vs dense left-padded) on the tiny preset: off GPUs both
    sides are XLA attention, so the right- and left-padded first-token logits must agree."""
    import subprocess
    import sys
    # as users run it (python -m): the exit status is 0 once the report is written
    proc = subprocess.run([sys.executable, "-m", "benchmarks.mixed", "--preset=tiny", "--lengths=40,90",
                           f"--out={tmp_path}"], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = _report(tmp_path, "mixed")
    assert r["batch"] == 16 and r["lengths"][0] == 40 and r["lengths"][-1] == 90 and r["padded_length"] == 128
    assert (r["fused"]["padding"], r["dense"]["padding"]) == ("right", "left")
    assert r["first_token_argmax_agreement"] == 1.0 and r["first_token_max_rel_logit_diff"] < 1e-2


def test_episode_bench_times_engine_run(tmp_path):
    from benchmarks import episode
    episode.main(["--preset=tiny", "--batches=1,2", "--new-tokens=4", "--corpus=64", "--frames-hw=4,32,32",
                  "--reps=1", "--hf=none", f"--out={tmp_path}"])
    r = _report(tmp_path, "episode")
    assert r["code_path"][0] == "vsr1_jax.agent.rollout.EpisodeEngine.run" and r["corpus_size"] == 64
    for B in ("1", "2"):
        b = r["batches"][B]
        assert b["agent_batch_size"] == int(B) and b["episode_config"]["batch_size"] == int(B)
        assert b["decode_loop"] in ("host", "while") and b["run_s"] > 0 and b["per_query_s"] == b["run_s"] / int(B)
        # the engine's counters are logged beside the figure: every turn generated 4 tokens per row
        assert b["engine_stats_per_run"][0]["generated_tokens"] == sum(b["generated_tokens_per_turn"])
        # the steered policy refines every turn: each episode runs the eval config's 2 turns, both refined
        assert b["turns_mean"] == 2 and b["refined_turns"] == 2 * int(B)
        assert b["stop_reasons"] == {"max_turn_reached_with_refine": int(B)}


def test_grpo_bench_times_the_runner_step(tmp_path):
    from benchmarks import grpo
    grpo.main(["--preset=tiny", "--steps=1", "--new-tokens=4", "--frames-hw=4,32,32", "--hf=none",
               "--set=grpo.remat=none", f"--out={tmp_path}"])
    r = _report(tmp_path, "grpo")
    assert r["code_path"][:2] == ["vsr1_jax.train.grpo_run.GRPOTask.next_batch",
                                  "vsr1_jax.train.grpo_run.GRPOTask.step"]
    assert r["samples"] == 8 and r["prompts_per_step"] == 1 and len(r["steps"]) == 2
    for s in r["steps"]:   # the runner's own per-phase seconds
        assert all(s[k] >= 0 for k in ("rollout_s", "rewards_s", "batch_s", "score_s", "update_s"))
        assert s["step_s"] >= s["rollout_s"] + s["update_s"]
    assert r["decode"]["step_ms"] > 0 and r["update"]["mfu_measured_peak"] > 0


def test_sft_bench_times_the_runner_step(tmp_path):
    from benchmarks import sft
    sft.main(["--preset=tiny", "--steps=1", "--frames-hw=4,32,32", "--hf=none", "--set=sft.remat=none",
              f"--out={tmp_path}"])
    r = _report(tmp_path, "sft")
    assert r["code_path"][:2] == ["vsr1_jax.train.sft_run.SFTTask.next_batch", "vsr1_jax.train.sft_run.SFTTask.step"]
    assert len(r["steps"]) == 2 and r["step_s"] > 0 and r["label_tokens"] > 0 and r["mfu_measured_peak"] > 0
    assert np.isfinite(r["steps"][-1]["loss"])
