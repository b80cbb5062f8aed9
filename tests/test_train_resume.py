"""Kill and resume: an SFT or GRPO run killed with SIGKILL at a random step and started again with the same command
resumes from its last complete checkpoint and then logs bit-identical losses (and, for GRPO, rewards) to an
uninterrupted run; a half-written checkpoint folder left by the kill is never restored. Runs the real entry point in
subprocesses on a small synthetic corpus."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def _cmd(mode, data_root, out):
    common = [sys.executable, "-m", "vsr1_jax.main", "--config=configs/toy.py", f"--config.mode={mode}",
              f"--config.data_root={data_root}", f"--config.output_dir={out}",
              "--config.synthetic.train.num_videos=8", "--config.synthetic.test.num_videos=4",
              "--config.synthetic.progress=False"]
    if mode == "stage0":  # the demo's search engine: 8-video batches from a 16-video pool
        return common + ["--config.demo.stage0.enabled=True", f"--config.demo.stage0.steps={STEPS}",
                         "--config.demo.stage0.pool_videos=16",
                         "--config.demo.stage0.val_videos=4", "--config.demo.stage0.batch_size=8",
                         "--config.demo.stage0.eval_every=0", f"--config.demo.stage0.dir={out}/stage0",
                         "--config.demo.stage0.same_background_batches=False",
                         "--config.demo.stage0.checkpoint.every_steps=1", "--config.demo.stage0.checkpoint.keep=10"]
    common.append("--config.demo.stage0.enabled=False")  # the random engine: these runs test the policy stages
    if mode == "sft":
        return common + [f"--config.sft.max_steps={STEPS}", "--config.data.sft.per_device_batch_size=2",
                         "--config.sft.refine_token_count=2",
                         "--config.sft.checkpoint.every_fraction=0", "--config.sft.checkpoint.every_steps=1",
                         "--config.sft.checkpoint.keep=10"]
    # GRPO from the demo's policy: 1 prompt x 8 samples of 32 tokens per step, 2 micro-batches, 2 latents
    return common + [f"--config.grpo.max_steps={STEPS}", "--config.data.grpo.generation_batch_size=8",
                     "--config.data.grpo.per_device_batch_size=4", "--config.grpo.steps_per_generation=2",
                     "--config.data.grpo.max_completion_length=32", "--config.eval.refine_token_count=2",
                     "--config.sft.refine_token_count=2", "--config.grpo.checkpoint.every_fraction=0",
                     "--config.grpo.checkpoint.every_steps=1", "--config.grpo.checkpoint.keep=10"]


KEYS = {"stage0": ("loss", "grad_norm", "batch_r1"), "sft": ("loss", "lm_loss", "infonce_loss", "grad_norm"),
        "grpo": ("loss", "grad_norm", "kl", "reward", "reward_std", "completion_length")}


def _env(cache=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    if cache:  # the runs share compiled programs (XLA's persistent cache), so only the first one compiles
        env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _losses(mode, out):
    rows = {}
    with open(os.path.join(out, mode, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            rows[r["step"]] = tuple(r[k] for k in KEYS[mode])
    return rows


def _run(cmd, cache, timeout=600):
    r = subprocess.run(cmd, cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.parametrize("mode", ["stage0", "sft", "grpo"])
def test_sigkill_then_resume_gives_identical_losses(tmp_path, mode):
    data_root, a, b = str(tmp_path / "data"), str(tmp_path / "a"), str(tmp_path / "b")
    cache = str(tmp_path / "xla_cache")
    _run(_cmd(mode, data_root, a), cache)  # builds the corpus too; the other runs reuse it
    ref = _losses(mode, a)
    assert sorted(ref) == list(range(1, STEPS + 1))

    kill_at = random.Random().randint(2, STEPS - 2)
    proc = subprocess.Popen(_cmd(mode, data_root, b), cwd=ROOT, env=_env(cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = os.path.join(b, mode, "metrics.jsonl")
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= kill_at:
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended before step {kill_at}: {proc.stderr.read()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail(f"no step {kill_at} within 600 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    ckpts = os.path.join(b, mode, "checkpoints")
    # what a kill in the middle of a save leaves behind: an uncommitted step folder; it must be ignored
    os.makedirs(os.path.join(ckpts, f"{STEPS + 5}.orbax-checkpoint-tmp-1"), exist_ok=True)
    with open(os.path.join(ckpts, f"{STEPS + 5}.orbax-checkpoint-tmp-1", "garbage"), "w") as f:
        f.write("half written")
    done_before = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
    r = _run(_cmd(mode, data_root, b), cache)
    resumed_from = max(done_before) if done_before else 0
    assert f"resumed from {ckpts}" in r.stderr or resumed_from == 0
    got = _losses(mode, b)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == ref[step], f"step {step} after a kill at step {kill_at} (resumed from {resumed_from})"
