"""The SFT and GRPO train steps on 8 simulated CPU devices (two mesh shapes each) equal the unsharded steps (in a
subprocess, since the device count is fixed at jax import): tests/train_sharding_worker.py."""
import os
import subprocess
import sys


def test_sharded_train_steps_equal_unsharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "tests.train_sharding_worker"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0 and "ALL OK" in r.stdout, r.stdout[-3000:] + r.stderr[-6000:]
