"""Kill and resume: an SFT or GRPO run killed with SIGKILL at a random step and started again with the same command
resumes from its last complete checkpoint and then logs bit-identical losses (and, for GRPO, rewards) to an
uninterrupted run; a half-written checkpoint folder left by the kill is never restored; metrics.jsonl and the
TensorBoard events hold every step once. GRPO is first stopped by SIGTERM (exit 143, "stopped at step N/M — run the
same command to resume"); SFT is then resumed with other settings (a warning names them, and the data position of
another batch size is refused in one `error:` line). Runs the real entry point in subprocesses on a small synthetic
corpus."""
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time

import pytest
from tensorboardX import SummaryWriter
from tensorboardX.proto import event_pb2

from vsr1_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def _cmd(mode, data_root, out):
    common = [sys.executable, "-m", "vsr1_jax.main", "--config=configs/toy.py", f"--config.mode={mode}",
              f"--config.data_root={data_root}", f"--config.output_dir={out}",
              "--config.synthetic.train.num_videos=8", "--config.synthetic.test.num_videos=4",
              "--config.synthetic.progress=False"]
    if mode == "stage0":  # the demo's search engine: 8-video batches from a 16-video pool
        return common + ["--config.demo.stage0.enabled=True", "--config.demo.vision.enabled=False",
                         "--config.demo.caption.enabled=False",
                         f"--config.demo.stage0.steps={STEPS}",
                         "--config.demo.stage0.pool_videos=16",
                         "--config.demo.stage0.val_videos=4", "--config.demo.stage0.batch_size=8",
                         "--config.demo.stage0.eval_every=0", f"--config.demo.stage0.dir={out}/stage0",
                         "--config.demo.stage0.same_background_batches=False",
                         "--config.demo.stage0.checkpoint.every_steps=1", "--config.demo.stage0.checkpoint.keep=10"]
    common.append("--config.demo.stage0.enabled=False")  # the random engine: these runs test the policy stages
    if mode == "sft":
        return common + [f"--config.sft.max_steps={STEPS}", "--config.sft.per_device_batch_size=2",
                         "--config.sft.refine_token_count=2",
                         "--config.sft.checkpoint.every_fraction=0", "--config.sft.checkpoint.every_steps=1",
                         "--config.sft.checkpoint.keep=10"]
    # GRPO from the demo's policy: 1 prompt x 8 samples of 32 tokens per step, 2 micro-batches, 2 latents
    return common + [f"--config.grpo.max_steps={STEPS}", "--config.grpo.generation_batch_size=8",
                     "--config.grpo.per_device_batch_size=4", "--config.grpo.steps_per_generation=2",
                     "--config.grpo.max_completion_length=32", "--config.grpo.refine_token_count=2",
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
            assert r["step"] not in rows, f"step {r['step']} twice in metrics.jsonl"
            rows[r["step"]] = tuple(r[k] for k in KEYS[mode])
    return rows


def _tfrecords(path):
    """A minimal TFRecord reader (length, crc, data, crc; the CRCs are not checked): the records' bytes, and
    whether the file ends inside a record."""
    with open(path, "rb") as f:
        data = f.read()
    out, pos = [], 0
    while pos + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        if pos + 12 + n + 4 > len(data):
            break
        out.append(data[pos + 12:pos + 12 + n])
        pos += 12 + n + 4
    return out, pos != len(data)


def _tb_steps(tb_dir, tag="loss"):
    """Every step at which `tag` was logged, over all event files (a step logged twice appears twice)."""
    steps = []
    for name in sorted(os.listdir(tb_dir)):
        records, truncated = _tfrecords(os.path.join(tb_dir, name))
        assert not truncated, f"{name} ends in a partial record"
        for r in records:
            ev = event_pb2.Event.FromString(r)
            steps += [ev.step for v in ev.summary.value if v.tag == tag]
    return sorted(steps)


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

    metrics = os.path.join(b, mode, "metrics.jsonl")
    if mode == "grpo":   # SIGTERM first: the step finishes, a checkpoint is saved, exit 143 with the resume hint
        proc = _start_and_signal(mode, data_root, b, cache, 1, signal.SIGTERM)
        err = proc.stderr.read()
        assert proc.wait(timeout=300) == 143, err[-3000:]
        last = err.rstrip().splitlines()[-1]
        assert "stopped at step" in last and f"/{STEPS}" in last and "run the same command to resume" in last, last
    kill_at = random.Random().randint(2, STEPS - 2)
    proc = _start_and_signal(mode, data_root, b, cache, kill_at, signal.SIGKILL)
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
    got = _losses(mode, b)   # each step once
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == ref[step], f"step {step} after a kill at step {kill_at} (resumed from {resumed_from})"
    assert _tb_steps(os.path.join(b, mode, "tensorboard")) == list(range(1, STEPS + 1))
    if mode == "sft":   # other settings on resume: named in a warning; another batch size cannot resume
        cmd = _cmd(mode, data_root, b) + ["--config.sft.learning_rate=1e-4",
                                          "--config.sft.per_device_batch_size=1"]
        r = subprocess.run(cmd, cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=600)
        assert r.returncode == 2, r.stderr[-3000:]
        assert "sft.learning_rate" in r.stderr and "sft.per_device_batch_size 2 -> 1" in r.stderr
        last = r.stderr.rstrip().splitlines()[-1]
        assert last.startswith("error: ") and "cannot resume" in last and "Traceback" not in r.stderr, last


def _start_and_signal(mode, data_root, out, cache, at_step, sig):
    """Start the run and send `sig` to its process group once metrics.jsonl holds `at_step` rows."""
    proc = subprocess.Popen(_cmd(mode, data_root, out), cwd=ROOT, env=_env(cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = os.path.join(out, mode, "metrics.jsonl")
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= at_step:
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended before step {at_step}: {proc.stderr.read()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail(f"no step {at_step} within 600 s")
    finally:
        os.killpg(proc.pid, sig)
    return proc


def test_resume_cuts_metrics_and_events_back_to_the_checkpoint(tmp_path):
    """What a run killed after its checkpoint at step 3 leaves: rows and events of steps 4-5 and a half-written last
    event record; resuming from step 3 removes them (the resumed run writes those steps again)."""
    tb = tmp_path / "tensorboard"
    w = SummaryWriter(str(tb))
    for step in range(1, 6):
        w.add_scalar("loss", 1.0 / step, step)
    w.close()
    (name,) = os.listdir(tb)
    with open(tb / name, "ab") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00\x01\x02")   # a record cut by SIGKILL
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    assert loop.truncate_metrics(str(metrics), 3) == 3
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [1, 2, 3]
    assert loop.truncate_events(str(tb), 3) == 2
    assert _tb_steps(str(tb)) == [1, 2, 3]
    assert loop.truncate_events(str(tb), 3) == 0 and loop.truncate_metrics(str(metrics), 3) == 0


class _CountingTask:
    """A loop.Task without a model: the state counts steps; row 3 of a data file is dropped while loading and one
    row is unusable at step 2."""

    def __init__(self, total_steps):
        self.total_steps, self.i = total_steps, 0
        self.skipped = [dict(file="rows.jsonl", line=3, qid="q3", reason="drop_missing_video_npy", detail="x.npy")]

    def next_batch(self, state=None):
        self.i += 1
        return self.i

    def step(self, state, batch):
        return {"w": state["w"] + 1.0}, {"loss": float(batch)}

    def after_step(self, step, batch, metrics):
        if batch == 2:
            self.skipped.append(dict(file="rows.jsonl", line=9, qid="q9", reason="video_unreadable", detail="y"))
        return metrics

    def host_state(self):
        return {"i": self.i}

    def load_host_state(self, state):
        self.i = state.get("i", 0)


def test_skipped_rows_config_and_changed_settings_on_resume(tmp_path, caplog):
    import jax.numpy as jnp
    import ml_collections
    ckpt = ml_collections.ConfigDict(dict(keep=10, async_save=False, every_steps=1, every_fraction=0.0))
    cfg = ml_collections.ConfigDict(dict(sft=dict(learning_rate=1.0, max_steps=2), output_dir="a"))
    out = str(tmp_path / "run")
    _, steps, stopped = loop.run(_CountingTask(2), {"w": jnp.zeros(())}, out_dir=out, ckpt_cfg=ckpt, config=cfg)
    assert (steps, stopped) == (2, 0)
    cfg.sft.learning_rate, cfg.sft.max_steps, cfg.output_dir = 2.0, 4, "b"   # output_dir: not a setting change
    with caplog.at_level("WARNING"):
        state, steps, _ = loop.run(_CountingTask(4), {"w": jnp.zeros(())}, out_dir=out, ckpt_cfg=ckpt, config=cfg)
    assert steps == 4 and float(state["w"]) == 4.0
    warning = " ".join(r.getMessage() for r in caplog.records if "settings that differ" in r.getMessage())
    assert "sft.learning_rate 1.0 -> 2.0" in warning and "sft.max_steps 2 -> 4" in warning
    assert "output_dir" not in warning
    rows = [json.loads(x) for x in open(os.path.join(out, "skipped.jsonl"))]
    # the load-time row once (step 0: the resumed run does not write its own again), the step-2 row once
    assert [(r["step"], r["qid"], r["file"]) for r in rows] == [(0, "q3", "rows.jsonl"), (2, "q9", "rows.jsonl")]
    assert json.load(open(os.path.join(out, "config.json")))["sft"]["learning_rate"] == 2.0
    assert [json.loads(x)["step"] for x in open(os.path.join(out, "metrics.jsonl"))] == [1, 2, 3, 4]


def test_checkpoint_with_the_removed_rng_leaf_restores(tmp_path):
    """Train states once carried `rng` (never read; removed): a checkpoint of that layout resumes, the leaf dropped."""
    import flax.struct
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vsr1_jax.ckpt.orbax_io import CheckpointManager

    @flax.struct.dataclass
    class Old:
        step: jax.Array
        params: dict
        rng: jax.Array
        skipped: jax.Array

    @flax.struct.dataclass
    class New:
        step: jax.Array
        params: dict
        skipped: jax.Array

    with CheckpointManager(str(tmp_path), async_save=False) as m:
        m.save(3, Old(jnp.asarray(3, jnp.int32), {"w": jnp.arange(4.0)}, jax.random.key_data(jax.random.key(0)),
                      jnp.asarray(1, jnp.int32)), force=True)
    new = New(jnp.zeros((), jnp.int32), {"w": jnp.zeros(4)}, jnp.zeros((), jnp.int32))
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), new)
    with CheckpointManager(str(tmp_path), async_save=False) as m:
        got = loop.restore_state(m, 3, target)
    assert isinstance(got, New) and int(got.step) == 3 and int(got.skipped) == 1
    np.testing.assert_array_equal(np.asarray(got.params["w"]), np.arange(4.0))
    with CheckpointManager(str(tmp_path / "new"), async_save=False) as m:   # the current layout: a plain restore
        m.save(1, got, force=True)
        assert int(loop.restore_state(m, 1, target).step) == 3
