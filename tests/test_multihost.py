"""Multi-host on one machine: 2 processes on localhost (launch/local.sh, jax.distributed with gloo collectives), each
with 4 simulated CPU devices (a global mesh of 8), against 1 process with 8 devices.

- the real entry point in demo mode (eval -> SFT -> eval -> GRPO -> eval) with tiny settings: 2 processes log the
  same SFT and GRPO losses as 1 process and write the same result.json and detail rows (each query once); the
  corpus (8 train / 4 test videos) is each run's own, built by process 0 and read by every process (per host);
- checkpoints written by 2 processes restore in 1 process and vice versa, and the next step's loss is the
  uninterrupted run's; the exported HF folder is written once (by process 0) and equals the 1-process export;
- only process 0 writes metrics, TensorBoard, reports;
- tests/multihost_worker.py: the plumbing piece by piece (grain sharding by process, per-process rows of the global
  batch, host reads of sharded outputs, process-local weight copies, object gathers);
- distributed.resolve, the block data layout, and the launch scripts (local.sh reaps its processes when one fails or
  on SIGTERM; slurm.sbatch and tpu_pod.sh build the right commands) without JAX processes.

Every subprocess runs under a deadline in its own session and is killed with it, so a hung peer fails the test with
the tail of its log. The runs share one XLA compilation cache.
"""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from vsr1_jax import distributed
from vsr1_jax.data.pipelines import build_dataset, make_iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
DEADLINE_S = 480       # one phase (a run or runs started together)
SFT_STEPS = 3

COMMON = [
    "--config=configs/toy.py", "--config.synthetic.train.num_videos=8", "--config.synthetic.test.num_videos=4",
    "--config.synthetic.progress=False", "--config.demo.stage0.enabled=False",  # the random engine (Stage 0 aside)
    # SFT: 8 rows per step (1 per device), 2 latents (half the compile time of 8), a checkpoint every step
    f"--config.sft.max_steps={SFT_STEPS}", "--config.sft.per_device_batch_size=1",
    "--config.sft.refine_token_count=2", "--config.sft.checkpoint.every_fraction=0",
    "--config.sft.checkpoint.every_steps=1", "--config.sft.checkpoint.keep=10",
    # evaluation: short answers, 2 latents
    "--config.eval.max_new_tokens=32", "--config.eval.refine_token_count=2",
    # GRPO: 2 rounds of 2 prompts x 8 samples (one prompt per process), keys per prompt (rollouts independent of
    # the process count), 2 micro-batches of 8 rows
    "--config.grpo.max_steps=2", "--config.grpo.generation_batch_size=16",
    "--config.grpo.per_device_batch_size=1", "--config.grpo.steps_per_generation=2",
    "--config.grpo.max_completion_length=32", "--config.grpo.rollout_keys=prompt", "--config.grpo.refine_token_count=2",
]


def _env(cache: str, devices: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSR1_")}
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", VSR1_KILL_GRACE="10", JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    # LLVM at -O0: a fifth less compile time; every run here compiles the same way, so they stay comparable
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    if devices:
        env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
    return env


class Job:
    """One command (1 process, or launch/local.sh and its 2) in its own session, output to a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_dir: str):
        self.name, self.log_dir = name, log_dir
        os.makedirs(log_dir, exist_ok=True)
        self.log = os.path.join(log_dir, "launcher.log")
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def tails(self) -> str:
        out = []
        for fn in sorted(os.listdir(self.log_dir)):
            if fn.endswith(".log"):
                with open(os.path.join(self.log_dir, fn), errors="replace") as f:
                    lines = [ln for ln in f.read().splitlines() if not ln.startswith("[Gloo]")]
                out.append(f"--- {self.name}: {fn}\n" + "\n".join(lines[-30:]))
        return "\n".join(out)

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def run_jobs(*jobs: Job, deadline_s: float = DEADLINE_S):
    """Wait for every job; any failure or the deadline kills them all and fails the test with their logs."""
    end = time.time() + deadline_s
    try:
        while any(j.proc.poll() is None for j in jobs):
            bad = [j for j in jobs if j.proc.poll() not in (None, 0)]
            if bad:
                pytest.fail(f"{bad[0].name} exited with {bad[0].proc.returncode}\n" + bad[0].tails())
            if time.time() > end:
                hung = [j.name for j in jobs if j.proc.poll() is None]
                pytest.fail(f"{hung} still running after {deadline_s:.0f} s (a hung peer?); killed\n" +
                            "\n".join(j.tails() for j in jobs))
            time.sleep(0.2)
        bad = [j for j in jobs if j.proc.returncode != 0]
        if bad:
            pytest.fail(f"{bad[0].name} exited with {bad[0].proc.returncode}\n" + bad[0].tails())
    finally:
        for j in jobs:
            if j.proc.poll() is None:
                j.kill()


def one_process(name, args, cache, log_dir):
    return Job(name, [sys.executable, "-m", "vsr1_jax.main", *args], _env(cache, 8), log_dir)


def two_processes(name, args, cache, log_dir, module=None):
    cmd = ["bash", os.path.join(LAUNCH, "local.sh"), "-n", "2", "--cpu-devices", "4", "--log-dir", log_dir,
           "--python", sys.executable]
    if module:
        cmd += ["--module", module]
    return Job(name, cmd + ["--", *args], _env(cache, None), log_dir)


# ---- the end-to-end runs ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("multihost")
    cache = str(base / "xla_cache")
    one, two = str(base / "one"), str(base / "two")
    # the two demos run side by side, each building its own copy of the corpus (same seed: identical files)
    args = {d: COMMON + [f"--config.data_root={d}/data", "--config.mode=demo", f"--config.output_dir={d}"]
            for d in (one, two)}
    run_jobs(one_process("demo, 1 process", args[one], cache, os.path.join(one, "logs")),
             two_processes("demo, 2 processes", args[two], cache, os.path.join(two, "logs")))
    # restore across process counts: drop the last checkpoint of each run and continue it with the other count
    resumed = {}
    for src, dst in ((one, str(base / "one_to_two")), (two, str(base / "two_to_one"))):
        shutil.copytree(os.path.join(src, "sft"), os.path.join(dst, "sft"))
        shutil.rmtree(os.path.join(dst, "sft", "checkpoints", str(SFT_STEPS)))
        resumed[dst] = COMMON + [f"--config.data_root={src}/data", "--config.mode=sft", f"--config.output_dir={dst}",
                                 "--config.sft.export_hf=True"]
    a, b = list(resumed)
    run_jobs(two_processes("sft resumed by 2 processes", resumed[a], cache, os.path.join(a, "logs")),
             one_process("sft resumed by 1 process", resumed[b], cache, os.path.join(b, "logs")))
    return dict(one=one, two=two, one_to_two=a, two_to_one=b, cache=cache)


def _metrics(out_dir: str) -> dict[int, dict]:
    rows = {}
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            rows[r["step"]] = r
    return rows


def _close(a, b, path="", rtol=1e-4, atol=1e-6):
    """Equal JSON values, floats to a tolerance; returns the first difference or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path}: keys {sorted(set(a) ^ set(b))}"
        return next((d for k in a if (d := _close(a[k], b[k], f"{path}.{k}", rtol, atol))), None)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} vs {len(b)} items"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _close(x, y, f"{path}[{i}]", rtol, atol))),
                    None)
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and np.isclose(a, b, rtol=rtol, atol=atol):
            return None
        return f"{path}: {a} vs {b}"
    return None if a == b else f"{path}: {a!r} vs {b!r}"


SFT_KEYS = ("loss", "lm_loss", "infonce_loss", "grad_norm", "label_tokens", "infonce_rows", "tokens",
            "hard_negatives_refreshed")
GRPO_KEYS = ("loss", "grad_norm", "kl", "clip_fraction", "reward", "reward_std", "completion_length",
             "refine_rate", "answered_rate", "update_skipped")


def test_sft_two_processes_log_the_losses_of_one(runs):
    one, two = _metrics(os.path.join(runs["one"], "sft")), _metrics(os.path.join(runs["two"], "sft"))
    assert sorted(one) == sorted(two) == list(range(1, SFT_STEPS + 1))
    for step in one:
        for k in SFT_KEYS:
            np.testing.assert_allclose(two[step][k], one[step][k], rtol=1e-5, atol=1e-7, err_msg=f"step {step} {k}")


def test_grpo_two_processes_log_the_losses_of_one(runs):
    one, two = _metrics(os.path.join(runs["one"], "grpo")), _metrics(os.path.join(runs["two"], "grpo"))
    assert sorted(one) == sorted(two) == [1, 2]
    for step in one:
        for k in GRPO_KEYS:
            np.testing.assert_allclose(two[step][k], one[step][k], rtol=1e-4, atol=1e-6, err_msg=f"step {step} {k}")


@pytest.mark.parametrize("stage", ["eval_untrained", "eval_sft", "eval_grpo"])
def test_eval_two_processes_write_the_result_of_one(runs, stage):
    def load(root):
        with open(os.path.join(root, stage, "result.json")) as f:
            res = json.load(f)
        res.pop("source_jsonl")
        with open(os.path.join(root, stage, "detail_synthetic_test.jsonl")) as f:
            return res, [json.loads(line) for line in f]

    (r1, d1), (r2, d2) = load(runs["one"]), load(runs["two"])
    assert r2 == r1 if stage == "eval_untrained" else _close(r2, r1) is None, _close(r2, r1)
    q1, q2 = [r["qid"] for r in d1], [r["qid"] for r in d2]
    assert q2 == q1 and len(set(q2)) == len(q2) == r1["num_examples"], (q1, q2)   # none lost, no duplicate
    assert _close(d2, d1) is None, _close(d2, d1)   # latent diagnostics differ in the last float bits after training


def test_checkpoints_restore_on_another_process_count(runs):
    ref = _metrics(os.path.join(runs["one"], "sft"))
    for name in ("one_to_two", "two_to_one"):
        root = runs[name]
        with open(os.path.join(root, "logs", "launcher.log" if name == "two_to_one" else "process_0.log")) as f:
            assert f"resumed from {os.path.join(root, 'sft')}/checkpoints/{SFT_STEPS - 1}" in f.read(), name
        got = _metrics(os.path.join(root, "sft"))[SFT_STEPS]
        for k in SFT_KEYS:
            np.testing.assert_allclose(got[k], ref[SFT_STEPS][k], rtol=1e-5, atol=1e-7, err_msg=f"{name} {k}")


def test_exported_hf_folder_written_once_equals_one_process(runs):
    from safetensors.numpy import load_file  # only this test reads safetensors

    def tensors(root):
        hf = os.path.join(root, "sft", "hf")
        files = sorted(f for f in os.listdir(hf) if f.endswith(".safetensors"))
        assert files, os.listdir(hf)
        out = {}
        for fn in files:
            out.update({f"{fn}:{k}": v for k, v in load_file(os.path.join(hf, fn)).items()})
        sub = os.path.join(hf, "query_embedder")
        for fn in sorted(f for f in os.listdir(sub) if f.endswith(".safetensors")):
            out.update({f"query_embedder/{fn}:{k}": v for k, v in load_file(os.path.join(sub, fn)).items()})
        return out

    two, one = tensors(runs["one_to_two"]), tensors(runs["two_to_one"])
    assert sorted(two) == sorted(one)
    for k in one:
        # Adam moves every element by about the learning rate (3e-3) whatever its gradient, so last-bit gradient
        # differences show as ~1e-5 in elements whose gradient is near zero
        np.testing.assert_allclose(two[k].astype(np.float32), one[k].astype(np.float32), rtol=1e-4, atol=1e-4,
                                   err_msg=k)
    with open(os.path.join(runs["one_to_two"], "logs", "process_1.log")) as f:
        assert "hf_folder" not in f.read()   # process 1 neither wrote nor reported the folder


def test_only_process_zero_writes(runs):
    two = runs["two"]
    for stage, steps in (("sft", SFT_STEPS), ("grpo", 2)):
        with open(os.path.join(two, stage, "metrics.jsonl")) as f:
            assert len(f.read().splitlines()) == steps, stage   # one row per step, not one per process
        assert len(os.listdir(os.path.join(two, stage, "tensorboard"))) == 1, stage
    assert os.path.exists(os.path.join(two, "demo_report.md"))
    with open(os.path.join(two, "logs", "process_1.log")) as f:
        log1 = f.read()
    with open(os.path.join(two, "logs", "process_0.log")) as f:
        log0 = f.read()
    assert "demo: outputs under" in log0 and "outputs under" not in log1
    assert "episodes:" not in log1 and "sft:" not in log1   # progress bars on process 0 only


def test_multihost_plumbing_worker(runs, tmp_path):
    job = two_processes("tests.multihost_worker", [], runs["cache"], str(tmp_path / "logs"),
                        module="tests.multihost_worker")
    run_jobs(job, deadline_s=240)
    for k in (0, 1):
        with open(tmp_path / "logs" / f"process_{k}.log") as f:
            assert "ALL OK" in f.read(), job.tails()


# ---- without JAX processes -------------------------------------------------------------------------------------
def test_resolve_the_job_from_config_and_environment():
    r = distributed.resolve
    assert r(None, {}).kind == "single"
    p = r(None, {"VSR1_COORDINATOR": "h:1", "VSR1_NUM_PROCESSES": "4", "VSR1_PROCESS_ID": "2",
                 "VSR1_LOCAL_DEVICE_IDS": "2,3"})
    assert (p.kind, p.coordinator_address, p.num_processes, p.process_id, p.local_device_ids) == (
        "explicit", "h:1", 4, 2, (2, 3))
    cfg = dict(mode="auto", coordinator_address="c:9", num_processes=2, process_id=1, local_device_ids="",
               initialization_timeout_s=30, heartbeat_timeout_s=20)
    p = r(cfg, {"VSR1_COORDINATOR": "h:1", "VSR1_NUM_PROCESSES": "4", "VSR1_PROCESS_ID": "2"})
    assert (p.coordinator_address, p.num_processes, p.process_id, p.initialization_timeout) == ("c:9", 2, 1, 30)
    assert r(None, {"VSR1_COORDINATOR": "h:1", "VSR1_NUM_PROCESSES": "1", "VSR1_PROCESS_ID": "0"}).kind == "single"
    with pytest.raises(ValueError, match="VSR1_PROCESS_ID"):
        r(None, {"VSR1_COORDINATOR": "h:1", "VSR1_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="outside"):
        r(None, {"VSR1_COORDINATOR": "h:1", "VSR1_NUM_PROCESSES": "2", "VSR1_PROCESS_ID": "2"})
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "16", "SLURM_PROCID": "3",
             "SLURM_LOCALID": "3", "SLURM_STEP_NUM_TASKS": "16"}
    assert r(None, slurm).kind == "jax"                                   # JAX's SLURM detection
    assert r(None, {**slurm, "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1"}).kind == "single"
    assert r(None, {**slurm, "VSR1_DISTRIBUTED": "off"}).kind == "single"
    assert r(None, {"VSR1_DISTRIBUTED": "jax"}).kind == "jax"              # Cloud TPU pods (launch/tpu_pod.sh)
    with pytest.raises(ValueError, match="mode"):
        r(dict(mode="mpi"), {})


def test_block_layout_gives_every_process_count_the_same_global_batches():
    records = [{"i": i} for i in range(29)]
    for epochs in (1, 3):
        ref, _ = build_dataset(records, batch_size=8, seed=5, num_epochs=epochs, process_index=0, process_count=1)
        ref = [[r["i"] for r in b] for b in ref]
        for P in (1, 2, 4, 8):
            parts = [build_dataset(records, batch_size=8 // P, seed=5, num_epochs=epochs, process_index=k,
                                   process_count=P, block=8 // P)[0] for k in range(P)]
            got = [sum(([r["i"] for r in part[s]] for part in parts), []) for s in range(len(parts[0]))]
            assert got == ref, (P, epochs)
    # a position saved by 2 processes continues a 1-process iterator at the same global batch
    ds2, spec2 = build_dataset(records, batch_size=4, seed=5, num_epochs=2, process_index=1, process_count=2, block=4)
    it2 = make_iterator(ds2, spec2)
    next(it2), next(it2)
    ds1, spec1 = build_dataset(records, batch_size=8, seed=5, num_epochs=2, process_index=0, process_count=1, block=8)
    it1 = make_iterator(ds1, spec1)
    it1.set_position_state(it2.position_state())
    assert [r["i"] for r in next(it1)][4:] == [r["i"] for r in next(it2)]


def _stub(path, text):
    with open(path, "w") as f:
        f.write("#!/usr/bin/env bash\n" + text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return str(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(path, timeout=20):
    end = time.time() + timeout
    while not os.path.exists(path) or not open(path).read().strip():
        assert time.time() < end, f"{path} not written"
        time.sleep(0.05)
    return int(open(path).read())


def test_local_launcher_stops_the_others_when_one_fails(tmp_path):
    py = _stub(tmp_path / "py", f'echo "$VSR1_COORDINATOR $VSR1_NUM_PROCESSES $VSR1_PROCESS_ID $*" > '
                                f'{tmp_path}/args_$VSR1_PROCESS_ID\n'
                                f'if [ "$VSR1_PROCESS_ID" = 1 ]; then sleep 0.5; exit 3; fi\n'
                                f'echo $$ > {tmp_path}/pid_0\nexec sleep 600\n')
    t = time.time()
    r = subprocess.run(["bash", os.path.join(LAUNCH, "local.sh"), "-n", "2", "--port", "4321", "--cpu-devices", "2",
                        "--python", py, "--", "--config=configs/toy.py", "--config.mode=sft"],
                       env={**os.environ, "VSR1_KILL_GRACE": "5"}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and time.time() - t < 30, r.stderr
    assert not _alive(_wait_for(tmp_path / "pid_0"))
    assert open(tmp_path / "args_0").read().split() == ["127.0.0.1:4321", "2", "0", "-m", "vsr1_jax.main",
                                                        "--config=configs/toy.py", "--config.mode=sft"]
    assert open(tmp_path / "args_1").read().split()[:3] == ["127.0.0.1:4321", "2", "1"]


def test_local_launcher_reaps_its_processes_on_sigterm(tmp_path):
    py = _stub(tmp_path / "py", f'trap "echo term > {tmp_path}/term_$VSR1_PROCESS_ID; exit 0" TERM\n'
                                f'echo $$ > {tmp_path}/pid_$VSR1_PROCESS_ID\nwhile true; do sleep 0.1; done\n')
    proc = subprocess.Popen(["bash", os.path.join(LAUNCH, "local.sh"), "-n", "2", "--port", "4322",
                             "--cpu-devices", "2", "--python", py, "--", "--config=x"],
                            env={**os.environ, "VSR1_KILL_GRACE": "5"}, start_new_session=True)
    try:
        pids = [_wait_for(tmp_path / f"pid_{k}") for k in (0, 1)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) != 0
        assert not any(_alive(p) for p in pids)
        assert all(os.path.exists(tmp_path / f"term_{k}") for k in (0, 1))   # SIGTERM first (checkpoint, exit)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_slurm_and_tpu_scripts_build_the_launch(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "scontrol", 'printf "gpu-node-07\\ngpu-node-08\\n"\n')
    # srun runs the task command twice, as tasks 0 and 1 of 2 on one node (one GPU each)
    _stub(bin_dir / "srun", 'shift\nfor i in 0 1; do SLURM_NTASKS=2 SLURM_PROCID=$i SLURM_LOCALID=$i '
                            'SLURM_NTASKS_PER_NODE=2 "$@"; done\n')
    py = _stub(tmp_path / "py", f'echo "$VSR1_COORDINATOR $VSR1_NUM_PROCESSES $VSR1_PROCESS_ID '
                                f'${{VSR1_LOCAL_DEVICE_IDS:-none}} $PWD $*" >> {tmp_path}/slurm_args\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu-node-[07-08]", "PYTHON": py, "VSR1_REPO": ROOT}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    r = subprocess.run(["bash", os.path.join(LAUNCH, "slurm.sbatch"), "--config=configs/didemo.py", "--config.mode=sft"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    port = 20000 + 4242 % 20000
    assert open(tmp_path / "slurm_args").read().splitlines() == [
        f"gpu-node-07:{port} 2 {k} {k} {ROOT} -m vsr1_jax.main --config=configs/didemo.py --config.mode=sft"
        for k in (0, 1)]
    _stub(bin_dir / "gcloud", f'printf "%s\\n" "$@" > {tmp_path}/gcloud_args\n')
    r = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_pod.sh"), "my-tpu", "us-central2-b", "--", "--config=a b.py",
                        "--config.mode=grpo"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    g = open(tmp_path / "gcloud_args").read().splitlines()
    assert g[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"] and "--worker=all" in g
    cmd = g[g.index("--command") + 1]
    assert "VSR1_DISTRIBUTED=jax" in cmd and "-m vsr1_jax.main --config=a\\ b.py --config.mode=grpo" in cmd, cmd
