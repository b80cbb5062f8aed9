"""Multi-process JAX: `initialize(config)` joins this process to a multi-host job (`jax.distributed`) before any
device is used, and a no-op for a single process; plus the few cross-process helpers the runs need (gather Python
objects, read a sharded array's value on the host, make a process-local copy of global weights).

Where the job's shape comes from, first match wins (`resolve`):
1. `config.distributed.mode` ("auto" | "off" | "explicit" | "jax"), else the env `VSR1_DISTRIBUTED`;
2. explicit settings: `config.distributed.{coordinator_address, num_processes, process_id, local_device_ids}`, each
   falling back to the env `VSR1_COORDINATOR`, `VSR1_NUM_PROCESSES`, `VSR1_PROCESS_ID`, `VSR1_LOCAL_DEVICE_IDS`
   (what `launch/local.sh` sets);
3. "auto" with none of them: a SLURM job step of several tasks (`srun`) -> JAX's own detection; anything else ->
   one process. "jax" asks JAX's detection directly (Cloud TPU pods, SLURM, Open MPI, Kubernetes:
   `launch/tpu_pod.sh` sets VSR1_DISTRIBUTED=jax).

After `initialize`, `jax.devices()` lists every process's devices, so `sharding.make_mesh` spans the job.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import pickle
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

ENV_MODE = "VSR1_DISTRIBUTED"
ENV_COORDINATOR = "VSR1_COORDINATOR"
ENV_NUM_PROCESSES = "VSR1_NUM_PROCESSES"
ENV_PROCESS_ID = "VSR1_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "VSR1_LOCAL_DEVICE_IDS"
MODES = ("auto", "off", "explicit", "jax")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process starts: "single" (nothing to do), "explicit" (all three of coordinator / count / id known)
    or "jax" (`jax.distributed.initialize` fills what is None from the cluster environment)."""
    kind: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    initialization_timeout: int = 300
    heartbeat_timeout: int = 100


def _get(section, name, default):
    if section is None:
        return default
    try:
        return section[name]
    except (KeyError, AttributeError):
        return getattr(section, name, default)


def _int(value, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}={value!r} is not an integer") from None


def _ids(value, what: str) -> tuple[int, ...] | None:
    if value is None or value == "" or value == ():
        return None
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{what}={value!r}: expected a comma list of device ids such as 0,1") from None
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def slurm_multi_task(environ: Mapping[str, str] = os.environ) -> bool:
    """Inside an `srun` step of more than one task (the variables JAX's SLURM detection reads are all set)."""
    need = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if not all(k in environ for k in need):
        return False
    tasks = _int(environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS"), "SLURM_STEP_NUM_TASKS")
    return bool(tasks and tasks > 1)


def resolve(section=None, environ: Mapping[str, str] = os.environ) -> Plan:
    """The plan for `config.distributed` (`section`, may be None) and the environment (pure: nothing starts)."""
    mode = _get(section, "mode", "auto") or "auto"
    if mode == "auto" and environ.get(ENV_MODE):
        mode = environ[ENV_MODE]
    if mode not in MODES:
        raise ValueError(f"config.distributed.mode (or ${ENV_MODE}) = {mode!r}: expected one of {MODES}")
    coord = _get(section, "coordinator_address", "") or environ.get(ENV_COORDINATOR) or None
    num = _int(_get(section, "num_processes", 0) or environ.get(ENV_NUM_PROCESSES), "num_processes")
    pid = _get(section, "process_id", -1)
    pid = _int(pid if pid is not None and int(pid) >= 0 else environ.get(ENV_PROCESS_ID), "process_id")
    ids = _ids(_get(section, "local_device_ids", "") or environ.get(ENV_LOCAL_DEVICE_IDS), "local_device_ids")
    timeouts = dict(initialization_timeout=int(_get(section, "initialization_timeout_s", 300)),
                    heartbeat_timeout=int(_get(section, "heartbeat_timeout_s", 100)))
    if mode == "off":
        return Plan("single")
    if mode == "jax":
        return Plan("jax", coord, num, pid, ids, **timeouts)
    given = [x is not None for x in (coord, num, pid)]
    if mode == "explicit" or any(given):
        if not all(given):
            missing = [f"config.distributed.{n} (${e})" for n, e, g in zip(
                ("coordinator_address", "num_processes", "process_id"),
                (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID), given) if not g]
            raise ValueError("a multi-process run needs the coordinator address, the process count and this "
                             f"process's id; missing: {', '.join(missing)} (launch/local.sh sets all three)")
        if not 0 <= pid < num:
            raise ValueError(f"process_id {pid} is outside 0..{num - 1} (num_processes {num})")
        if num == 1:
            return Plan("single")
        return Plan("explicit", coord, num, pid, ids, **timeouts)
    if slurm_multi_task(environ):
        return Plan("jax", None, None, None, ids, **timeouts)
    return Plan("single")


def _is_initialized() -> bool:
    fn = getattr(jax.distributed, "is_initialized", None)
    return bool(fn()) if fn is not None else False


def _cpu_collectives() -> None:
    """Cross-process collectives on the CPU backend need an implementation (gloo ships with jaxlib); jax 0.10 and
    0.11 default to gloo, older ones to none. A value the user set (e.g. mpi) is kept."""
    name = "jax_cpu_collectives_implementation"
    try:
        current = jax.config.values[name]
    except (AttributeError, KeyError):  # a jax without the option: nothing to choose
        return
    if current in (None, "", "none"):
        jax.config.update(name, "gloo")


def initialize(config) -> Plan:
    """Join the multi-process job described by `config.distributed` and the environment; call once, first thing,
    before any JAX computation. A single-process plan does nothing. Returns the plan."""
    plan = resolve(_get(config, "distributed", None))
    if plan.kind == "single" or _is_initialized():
        return plan
    _cpu_collectives()
    kwargs = dict(coordinator_address=plan.coordinator_address, num_processes=plan.num_processes,
                  process_id=plan.process_id,
                  local_device_ids=list(plan.local_device_ids) if plan.local_device_ids else None,
                  initialization_timeout=plan.initialization_timeout,
                  heartbeat_timeout_seconds=plan.heartbeat_timeout)
    accepted = inspect.signature(jax.distributed.initialize).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    log.info("jax.distributed.initialize(%s)", ", ".join(f"{k}={v}" for k, v in kwargs.items() if v is not None))
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:
        raise RuntimeError(f"{e}: vsr1_jax.distributed.initialize must run before anything touches a device "
                           "(it is the first call of vsr1_jax.main)") from e
    log.info("process %d of %d: %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return plan


# ---- helpers -----------------------------------------------------------------------------------------------------
def is_primary() -> bool:
    """Process 0: the one that writes metrics, reports and exported folders."""
    return jax.process_index() == 0


def allgather_objects(obj: Any) -> list:
    """Every process's `obj` (any picklable value), in process order, on every process. Collective: all processes
    must call it together. One process: [obj], no communication."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64))).reshape(-1)
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[:data.size] = data
    allb = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(sizes), -1)
    return [pickle.loads(allb[i, :int(n)].tobytes()) for i, n in enumerate(sizes)]


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any one (e.g. a SIGTERM that reached one process)."""
    if jax.process_count() == 1:
        return bool(flag)
    return any(allgather_objects(bool(flag)))


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name`."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def host_array(x) -> np.ndarray:
    """The whole value of an array on this host. A global array sharded over other processes' devices is gathered
    (collective: every process must call this for the same array); a replicated one is read from a local copy."""
    if not isinstance(x, jax.Array):
        return np.asarray(x)
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def host_tree(tree):
    """`host_array` of every leaf (see there: collective when a leaf is sharded across processes)."""
    return jax.tree.map(host_array, tree)


def _local(x, device):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return x
    if x.is_fully_replicated:
        for shard in x.addressable_shards:
            if shard.device == device:
                return shard.data
        return jax.device_put(x.addressable_data(0), device)
    return jax.device_put(np.asarray(multihost_utils.process_allgather(x, tiled=True)), device)


def local_tree(tree):
    """A copy of a pytree whose global (multi-process) arrays become whole arrays on this process's first local
    device, so that per-process work (rollouts, evaluation) can run on them without the other processes. Fully
    addressable leaves are returned as they are; with one process the tree itself is returned."""
    if jax.process_count() == 1:
        return tree
    device = jax.local_devices()[0]
    return jax.tree.map(lambda x: _local(x, device), tree)


def local_module(module):
    """`local_tree` for an nnx module: the same module structure with process-local weights."""
    if jax.process_count() == 1:
        return module
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, local_tree(state))


def split_evenly(items: Sequence, what: str = "items") -> tuple[int, int]:
    """[start, stop) of this process's share of `items` when they split evenly over the processes."""
    n, p, k = len(items), jax.process_count(), jax.process_index()
    if n % p:
        raise ValueError(f"{n} {what} do not split evenly over {p} processes")
    return k * n // p, (k + 1) * n // p
