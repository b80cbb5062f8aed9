"""Sharded execution on 8 simulated CPU devices (in a subprocess, since the device count is fixed at jax import)."""
import os
import subprocess
import sys

import pytest

from vsr1_jax import sharding


def test_mesh_shape_resolution():
    assert sharding.mesh_shape({"data": -1}, 8) == (8, 1, 1)
    assert sharding.mesh_shape({"data": 2, "fsdp": -1}, 8) == (2, 4, 1)
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.mesh_shape({"data": 2, "tensor": 3}, 8)
    with pytest.raises(ValueError, match="at most one axis"):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)


def test_sharded_forward_decode_and_restore_on_8_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "tests.sharding_worker"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0 and "ALL OK" in r.stdout, r.stdout[-3000:] + r.stderr[-6000:]
