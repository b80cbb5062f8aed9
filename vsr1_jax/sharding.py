"""Device mesh from config and logical-axis sharding rules for every parameter and main activation.

Mesh axes are (data, fsdp, tensor), GSPMD-style (`AxisType.Auto`): parameters carry logical axis names (set where
they are created, see `models/qwen3_vl/layers.make_param`); `RULES` maps each logical name to a mesh axis. A dim
whose size the mesh axis does not divide is left replicated, so one rule set serves every model size and mesh.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # activations: the batch is split over data and fsdp

# logical name -> mesh axis (or None = replicated)
RULES: dict[str, str | tuple | None] = {
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vis_embed": "fsdp",
    "vis_heads": "tensor",
    "vis_mlp": "tensor",
    "layers": None,
    "stack": None,
    "norm": None,
    "patch": None,
    # activations
    "batch": BATCH,
    "length": None,
    "cache_heads": "tensor",
}

log = logging.getLogger(__name__)


def mesh_shape(spec: Mapping[str, int], n_devices: int) -> tuple[int, ...]:
    """Resolve a {data, fsdp, tensor} size dict where one size may be -1 (takes the rest)."""
    sizes = [int(spec.get(a, 1)) for a in AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(spec)}: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n_devices % known:
            raise ValueError(f"mesh {dict(spec)}: {n_devices} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = n_devices // known
    if int(np.prod(sizes)) != n_devices:
        raise ValueError(f"mesh {dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} devices, have {n_devices}")
    return tuple(sizes)


def make_mesh(spec: Mapping[str, int] | None = None, devices: Sequence | None = None) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh over all devices of all processes (multi-host aware: jax.devices() is global)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(spec or {"data": -1}, len(devices))
    try:
        arr = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # e.g. odd CPU device counts
        arr = np.asarray(devices).reshape(shape)
    return jax.sharding.Mesh(arr, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def spec_for(axes: Sequence[str | None], shape: Sequence[int], mesh: jax.sharding.Mesh,
             rules: Mapping = RULES) -> P:
    """PartitionSpec for one array from its logical axes; undivisible dims and reused mesh axes stay replicated."""
    used, out = set(), []
    for name, dim in zip(axes, shape):
        target = rules.get(name) if name is not None else None
        names = (target,) if isinstance(target, str) else tuple(target or ())
        names = tuple(n for n in names if n not in used and mesh.shape[n] > 1)
        size = int(np.prod([mesh.shape[n] for n in names])) if names else 1
        if not names or dim % size:
            if names:
                log.debug("dim %d (%s) not divisible by %s; replicated", dim, name, names)
            out.append(None)
            continue
        used.update(names)
        out.append(names[0] if len(names) == 1 else names)
    return P(*out)


def _flat_params(module):
    return nnx.to_flat_state(nnx.state(module, nnx.Param))


def _value(var):
    return var.get_value() if hasattr(var, "get_value") else var.value


def param_shardings(module, mesh, rules: Mapping = RULES) -> dict[tuple[str, ...], NamedSharding]:
    """{param path: NamedSharding} for every Param of a (possibly abstract) module."""
    out = {}
    for path, var in _flat_params(module):
        v = _value(var)
        axes = var.get_metadata().get("logical_axes", (None,) * v.ndim)
        out[tuple(str(p) for p in path)] = NamedSharding(mesh, spec_for(axes, v.shape, mesh, rules))
    return out


def abstract_params(module, mesh, rules: Mapping = RULES) -> dict:
    """Nested {name: jax.ShapeDtypeStruct(sharding=...)} of a module's params: a restore target for orbax."""
    shard = param_shardings(module, mesh, rules)
    nested: dict = {}
    for path, var in _flat_params(module):
        v = _value(var)
        key = tuple(str(p) for p in path)
        d = nested
        for k in key[:-1]:
            d = d.setdefault(k, {})
        d[key[-1]] = jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shard[key])
    return nested


def shard_module(module, mesh, rules: Mapping = RULES):
    """Place every Param of `module` on the mesh per the rules (in place)."""
    shard = param_shardings(module, mesh, rules)
    flat = _flat_params(module)
    for path, var in flat:
        var.set_value(jax.device_put(_value(var), shard[tuple(str(p) for p in path)]))
    nnx.update(module, nnx.from_flat_state(flat))
    return module


def batch_sharding(mesh, ndim: int, batch_axis: int = 0) -> NamedSharding:
    spec = [None] * ndim
    names = tuple(n for n in BATCH if mesh.shape[n] > 1)
    spec[batch_axis] = names if len(names) > 1 else (names[0] if names else None)
    return NamedSharding(mesh, P(*spec))


def batch_divisor(mesh) -> int:
    return int(np.prod([mesh.shape[n] for n in BATCH]))


def check_batch(batch: int, mesh, what: str = "batch") -> None:
    d = batch_divisor(mesh)
    if batch % d:
        raise ValueError(f"{what} size {batch} is not divisible by the data-parallel size {d} "
                         f"(mesh {dict(mesh.shape)}); pad the batch or change config.mesh")


def process_rows(mesh, rows: int, process_index: int | None = None) -> tuple[int, int]:
    """[start, stop) of a batch of `rows` (split over the data-parallel axes, `batch_sharding`) that this process's
    devices hold: the rows its host must supply to `jax.make_array_from_process_local_data`. One process: (0, rows).
    A mesh that gives one process a non-contiguous set of rows is refused."""
    check_batch(rows, mesh)
    k = jax.process_index() if process_index is None else process_index
    spans = set()
    for dev, idx in batch_sharding(mesh, 1).devices_indices_map((rows,)).items():
        if dev.process_index == k:
            sl = idx[0]
            spans.add((sl.start or 0, rows if sl.stop is None else sl.stop))
    if not spans:
        raise ValueError(f"process {k} holds no device of the mesh {dict(mesh.shape)}")
    spans = sorted(spans)
    start, stop = spans[0][0], spans[-1][1]
    covered = start
    for a, b in spans:
        if a > covered:
            raise ValueError(f"process {k} holds rows {spans} of the batch: not one contiguous block; order the "
                             "mesh so that each host's devices are adjacent on the data/fsdp axes")
        covered = max(covered, b)
    return start, stop


def cache_shardings(mesh, num_kv_heads: int):
    """(k/v [L, B, K, S, hd], valid [B, S]) shardings: batch over data/fsdp, KV heads over tensor when they divide."""
    b = batch_sharding(mesh, 5, batch_axis=1).spec[1]
    t = "tensor" if mesh.shape["tensor"] > 1 and num_kv_heads % mesh.shape["tensor"] == 0 else None
    return NamedSharding(mesh, P(None, b, t, None, None)), NamedSharding(mesh, P(b, None))


def replicated(mesh) -> NamedSharding:
    """Every device of the mesh holds the whole array (scalars, small tables)."""
    return NamedSharding(mesh, P())
