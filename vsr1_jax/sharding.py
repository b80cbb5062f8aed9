"""Device mesh from config and logical-axis sharding rules for every parameter and main activation; the batch
helpers the stage runners share (a host batch -> global arrays on the mesh).

Mesh axes are (data, fsdp, tensor), GSPMD-style (`AxisType.Auto`): parameters carry logical axis names (set where
they are created, see `models/qwen3_vl/layers.make_param`); `RULES` maps each logical name to a mesh axis. A dim
whose size the mesh axis does not divide is left replicated, so one rule set serves every model size and mesh.

There is one code path: everything sharded takes a mesh, and one device is a one-device mesh (`mesh_for` builds
the run's mesh where a run starts; `single_device_mesh` / `mesh_of` give the default of a component built
without one). Replicated `NamedSharding`s on a one-device mesh cost nothing.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
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


def single_device_mesh(device=None) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh of one device (default: this process's first device, where JAX puts an
    unplaced array)."""
    device = jax.local_devices()[0] if device is None else device
    return jax.sharding.Mesh(np.asarray([device]).reshape(1, 1, 1), AXES,
                             axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def mesh_for(spec: Mapping[str, int] | None = None) -> jax.sharding.Mesh:
    """The run's mesh: `make_mesh(spec)` (`config.mesh`) over every device of the job, or a one-device mesh when
    there is one device (whatever `spec` asks: a config written for many devices runs on one)."""
    if jax.device_count() == 1:
        return single_device_mesh()
    return make_mesh(spec)


def mesh_of(tree) -> jax.sharding.Mesh:
    """The mesh a pytree of placed arrays lives on: the mesh of its first `NamedSharding` leaf, else a one-device
    mesh of its first array's device (an unplaced module: the default device)."""
    device = None
    for x in jax.tree.leaves(tree):
        s = getattr(x, "sharding", None)
        if isinstance(s, NamedSharding) and isinstance(s.mesh, jax.sharding.Mesh):
            return s.mesh
        if device is None and s is not None and len(s.device_set) == 1:
            device = next(iter(s.device_set))
    return single_device_mesh(device)


def resolve_mesh(mesh: jax.sharding.Mesh | None, tree=None) -> jax.sharding.Mesh:
    """The default of a component's `mesh=` argument: `mesh` when given, else where `tree` (its weights) lives
    (`mesh_of`)."""
    return mesh_of(tree) if mesh is None else mesh


def local_mesh(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
    """The mesh of `distributed.local_tree`'s copies of arrays on `mesh`: `mesh` itself with one process, else a
    one-device mesh of this process's first device (per-process work: rollouts, evaluation)."""
    return mesh if jax.process_count() == 1 else single_device_mesh()


def spec_for(axes: Sequence[str | None], shape: Sequence[int], mesh: jax.sharding.Mesh,
             rules: Mapping = RULES) -> P:
    """PartitionSpec for one array from its logical axes; undivisible dims and reused mesh axes stay replicated
    (trailing replicated dims are left out)."""
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
    while out and out[-1] is None:  # as jit writes its outputs' specs (P() when replicated): a step's second call
        out.pop()                   # then matches its first in jit's dispatch cache
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


def _put(x, s: NamedSharding):
    """device_put onto `s`. An array committed to this process's devices (a one-device mesh: the weights a process
    evaluated with) cannot move onto a mesh spanning several processes -- the CPU and GPU clients have no
    cross-host transfer -- so it goes through the host: every process holds the same value, as `device_put` of a
    host array onto a global sharding requires."""
    if (isinstance(x, jax.Array) and not s.is_fully_addressable and x.sharding.is_fully_addressable
            and x.sharding.device_set != s.device_set):
        x = np.asarray(x)
    return jax.device_put(x, s)


def shard_module(module, mesh, rules: Mapping = RULES):
    """Place every Param of `module` on the mesh per the rules (in place)."""
    shard = param_shardings(module, mesh, rules)
    flat = _flat_params(module)
    for path, var in flat:
        var.set_value(_put(_value(var), shard[tuple(str(p) for p in path)]))
    nnx.update(module, nnx.from_flat_state(flat))
    return module


def cast_params(module, dtype) -> None:
    """Store every floating Param of `module` in `dtype` (in place)."""
    for _, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        v = var.get_value()
        if jnp.issubdtype(v.dtype, jnp.floating):
            var.set_value(v.astype(dtype))


def _batch_names(mesh):
    """The PartitionSpec entry of a batch axis: the data-parallel axes of size > 1 (None: not split)."""
    names = tuple(n for n in BATCH if mesh.shape[n] > 1)
    return names if len(names) > 1 else (names[0] if names else None)


def batch_sharding(mesh, ndim: int, batch_axis: int = 0, *, split: bool = True) -> NamedSharding:
    """An array whose `batch_axis` is split over the mesh's data-parallel axes (split=False: held whole by every
    device)."""
    spec = [None] * ndim
    spec[batch_axis] = _batch_names(mesh) if split else None
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


def batch_shardings(mesh, batch: dict):
    """Shard every array of a host batch on its B axis (axis 1 of [A, B, ...]; axis 2 of positions [A, 3, B, T])
    over the mesh's data-parallel axes; Python lists stay on the host."""
    b = _batch_names(mesh)

    def spec(key, x):
        axis = 2 if key == "positions" else 1
        s = [None] * np.ndim(x)
        s[axis] = b
        return NamedSharding(mesh, P(*s))

    return {k: (jax.tree.map(lambda x, k=k: spec(k, x), v) if not isinstance(v, list) else None)
            for k, v in batch.items()}


def global_batch(mesh, arrays: dict, rows: int, first_row: int = 0, merge: int = 2) -> dict:
    """This process's rows of every array (B axis as in `batch_shardings`; rows first_row .. of each global
    micro-batch, `process_rows`) -> global arrays of `rows` rows on the mesh
    (`jax.make_array_from_process_local_data`). A VisionBatch's `token_index` points into the features of the
    micro-batch's items flattened in order, so this process's indices move past the items of the rows before it
    (`merge`: the vision spatial merge size)."""
    vision = arrays.get("vision")
    if first_row and vision is not None and vision.token_index is not None:
        per_item = vision.group_mask.shape[-1] * vision.patch_mask.shape[-1] // (merge * merge)
        ti = np.asarray(vision.token_index)
        arrays = dict(arrays, vision=vision._replace(
            token_index=np.where(ti >= 0, ti + first_row * per_item, ti).astype(ti.dtype)))
    shardings = batch_shardings(mesh, arrays)

    def put(key, x, s):
        axis = 2 if key == "positions" else 1
        shape = list(np.shape(x))
        shape[axis] = rows
        return jax.make_array_from_process_local_data(s, np.asarray(x), tuple(shape))

    return {k: jax.tree.map(lambda x, s, k=k: put(k, x, s), v, shardings[k]) for k, v in arrays.items()}


def cache_shardings(mesh, num_kv_heads: int, *, split_batch: bool = True):
    """(k/v [L, B, K, S, hd], valid [B, S]) shardings: batch over data/fsdp (split_batch=False: every device holds
    every row), KV heads over tensor when they divide."""
    b = batch_sharding(mesh, 5, batch_axis=1, split=split_batch).spec[1]
    t = "tensor" if mesh.shape["tensor"] > 1 and num_kv_heads % mesh.shape["tensor"] == 0 else None
    return NamedSharding(mesh, P(None, b, t, None, None)), NamedSharding(mesh, P(b, None))


def replicated(mesh) -> NamedSharding:
    """Every device of the mesh holds the whole array (scalars, small tables)."""
    return NamedSharding(mesh, P())


def onto_mesh(tree, mesh):
    """`tree` with every array leaf that is not on `mesh` yet (e.g. a fresh optimizer state's moments and counters:
    jit gives them back uncommitted) replicated on it. A jitted step's second call then sees the shardings of its
    first call's outputs, not uncommitted inputs, and does not compile again."""
    def put(x):
        s = getattr(x, "sharding", None)
        return x if isinstance(s, NamedSharding) and s.mesh == mesh else _put(x, replicated(mesh))
    return jax.tree.map(put, tree)
