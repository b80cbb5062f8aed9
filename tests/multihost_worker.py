"""One process of a 2-process job on localhost (spawned by tests/test_multihost.py through launch/local.sh-style env:
VSR1_COORDINATOR / VSR1_NUM_PROCESSES / VSR1_PROCESS_ID, 4 simulated CPU devices each, so a global mesh of 8).

Checks the multi-host plumbing piece by piece, without a model: jax.distributed from the environment, the grain
input sharded by process (block layout: the processes' batches together are a single process's), the rows each
process supplies and the global batch assembled with `jax.make_array_from_process_local_data` (per-process batch =
global / process count, VisionBatch token indices moved to global items), host reads of a batch-sharded device
output (`jax.device_get` refuses it; `distributed.host_array` gathers it), process-local copies of global weights,
and the object gather / barrier / stop agreement. Prints "ALL OK" from every process.
"""
import sys

import jax

from vsr1_jax import distributed

distributed.initialize(None)   # from the VSR1_* environment, before any device use

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vsr1_jax import sharding  # noqa: E402
from vsr1_jax.data.pipelines import build_dataset, make_iterator  # noqa: E402
from vsr1_jax.models.qwen3_vl.vision import VisionBatch  # noqa: E402


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


def main():
    P, k = jax.process_count(), jax.process_index()
    check("distributed initialized", P == 2 and jax.device_count() == 8 and jax.local_device_count() == 4,
          f"{P} processes, {jax.device_count()} devices, {jax.local_device_count()} local")
    mesh = sharding.make_mesh({"data": -1})
    check("mesh spans the processes", mesh.devices.size == 8 and
          {d.process_index for d in mesh.devices.flat} == {0, 1})

    # --- grain input sharded by process: the block layout gives each process its devices' rows of every global
    # batch; gathered, the batches are a single process's
    B, A = 8, 2
    lo, hi = sharding.process_rows(mesh, B)
    check("process rows", (lo, hi) == (4 * k, 4 * k + 4), (lo, hi))
    records = [{"i": i} for i in range(37)]
    ds, spec = build_dataset(records, batch_size=A * (hi - lo), seed=3, num_epochs=2,
                             process_index=lo // (hi - lo), process_count=B // (hi - lo), block=hi - lo)
    mine = [[r["i"] for r in batch] for batch in ds]
    ref, _ = build_dataset(records, batch_size=A * B, seed=3, num_epochs=2, process_index=0, process_count=1)
    ref = [[r["i"] for r in batch] for batch in ref]
    parts = distributed.allgather_objects(mine)
    glob = [sum(([x for a in range(A) for x in p[s][a * 4:(a + 1) * 4]] for p in parts), []) for s in range(len(ref))]
    # micro-batch a of step s: process 0's block a then process 1's block a == the single process's rows a*B..
    want = [[x for a in range(A) for x in batch[a * B:(a + 1) * B]] for batch in ref]
    per_micro = [[x for a in range(A) for p in parts for x in p[s][a * 4:(a + 1) * 4]] for s in range(len(ref))]
    check("grain shards by process", len(mine) == len(ref) and per_micro == want and
          sorted(sum(glob, [])) == sorted(sum(ref, [])), (mine[:2], ref[:2]))
    it = make_iterator(ds, spec)
    next(it)
    state = it.position_state()
    check("iterator position is process independent",
          distributed.allgather_objects(state)[0] == distributed.allgather_objects(state)[1], state)

    # --- global batch: local [A, 4, ...] -> global [A, 8, ...] on the mesh
    full = np.arange(A * B * 3, dtype=np.float32).reshape(A, B, 3)
    pos = np.arange(A * 3 * B * 5, dtype=np.int32).reshape(A, 3, B, 5)
    G, HW = 2, 8   # items of 2 groups x 8 patches: 4 merged rows each (merge 2)
    ti_full = np.full((A, B, 6), -1, np.int32)
    for b in range(B):
        ti_full[:, b, :4] = b * G * HW // 4 + np.arange(4)   # row b's placeholder tokens -> item b's merged rows
    vis_full = VisionBatch(pixels=np.zeros((A, B, G, HW, 2), np.float32), pos_index=np.zeros((A, B, HW, 4), np.int32),
                           pos_weight=np.zeros((A, B, HW, 4), np.float32),
                           rope_cos=np.ones((A, B, HW, 2), np.float32), rope_sin=np.zeros((A, B, HW, 2), np.float32),
                           patch_mask=np.ones((A, B, HW), bool), group_mask=np.ones((A, B, G), bool),
                           token_index=ti_full)
    part = ti_full[:, lo:hi]
    local_ti = np.where(part >= 0, part - lo * G * HW // 4, part)   # what this process's packer writes: items from 0
    local = dict(x=full[:, lo:hi], positions=pos[:, :, lo:hi],
                 vision=jax.tree.map(lambda v: v[:, lo:hi], vis_full)._replace(token_index=local_ti))
    dev = sharding.global_batch(mesh, local, B, lo, merge=2)
    check("global batch shapes", dev["x"].shape == (A, B, 3) and dev["positions"].shape == (A, 3, B, 5) and
          dev["vision"].token_index.shape == (A, B, 6) and not dev["x"].is_fully_addressable,
          (dev["x"].shape, dev["positions"].shape))
    got = [distributed.host_array(v) for v in (dev["x"], dev["positions"], dev["vision"].token_index)]
    check("global batch values", all(np.array_equal(g, w) for g, w in zip(got, (full, pos, ti_full))),
          [np.array_equal(g, w) for g, w in zip(got, (full, pos, ti_full))])

    # --- host reads of a batch-sharded output (SFT's q_final) and of replicated scalars (losses)
    out, loss = jax.jit(lambda x: (x * 2, jnp.sum(x)))(dev["x"])
    try:
        jax.device_get(out)
        refused = False
    except Exception:   # noqa: BLE001  (jax raises RuntimeError / ValueError depending on the version)
        refused = True
    check("device_get refuses a non-addressable array", refused)
    check("host_array gathers it", np.array_equal(distributed.host_array(out), full * 2))
    check("replicated scalar", float(distributed.host_array(loss)) == float(full.sum()))

    # --- process-local copies of global weights (rollouts, evaluation)
    w_rep = jax.device_put(np.arange(6.0), sharding.replicated(mesh))
    w_shard = jax.device_put(np.arange(16.0).reshape(8, 2), sharding.batch_sharding(mesh, 2))
    loc = distributed.local_tree({"r": w_rep, "s": w_shard})
    check("local copies", all(v.is_fully_addressable for v in loc.values()) and
          {v.devices().pop() for v in loc.values()} == {jax.local_devices()[0]} and
          np.array_equal(np.asarray(loc["s"]), np.arange(16.0).reshape(8, 2)))
    y = jax.jit(lambda a, b: a.sum() + b.sum())(loc["r"], loc["s"])   # a purely local computation
    check("local computation", float(y) == 15.0 + 120.0)

    # --- object gather, stop agreement, barrier
    check("allgather_objects", distributed.allgather_objects({"k": k, "s": "x" * (10 + k)}) ==
          [{"k": 0, "s": "x" * 10}, {"k": 1, "s": "x" * 11}])
    check("any_process", distributed.any_process(k == 1) is True and distributed.any_process(False) is False)
    distributed.barrier("multihost_worker_end")
    print("ALL OK", flush=True)


if __name__ == "__main__":
    main()
