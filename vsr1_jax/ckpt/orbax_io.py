"""Orbax helpers: save/restore one parameter pytree (numpy or jax arrays, optionally straight into shardings), and
a small keep-N, async `CheckpointManager` for training. Works on orbax-checkpoint 0.12.4 .. 0.12.8 (same API here).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class _HostNoCopy(np.ndarray):
    """A numpy view that orbax's NumpyHandler will not deep-copy before writing.

    orbax copies every host array before an (async-capable) save so that later mutation cannot corrupt the write;
    for a synchronous save of arrays nobody mutates, that copy only doubles peak host memory (a 4B model in bf16
    would briefly need 16 GB). `copy.deepcopy` of this view returns the view itself. Restores give plain ndarrays.
    """

    def __deepcopy__(self, memo):
        return self


def _no_copy(x):
    return x.view(_HostNoCopy) if type(x) is np.ndarray else x


def _abs(directory) -> str:
    # Absolute, so error messages and orbax's temporary-folder names are unambiguous.
    return os.path.abspath(os.fspath(directory))


# Large arrays are written in chunks of about this size. With one chunk per array (orbax's default) tensorstore
# holds a compressed copy of every array at once, i.e. close to a second copy of the model; chunks of 64 MiB
# written to per-array files (no OCDBT, which batches everything until commit) bound that transient.
_CHUNK_BYTES = 64 << 20


def _no_ocdbt_merge_note(record: logging.LogRecord) -> bool:
    # orbax warns that it found no OCDBT data to merge, which is what use_ocdbt=False means.
    return "Skipping merge of OCDBT" not in record.getMessage()


def _process_local(*trees) -> dict:
    """orbax options for a save/restore that one process does alone in a multi-process job (e.g. process 0
    exporting a model, or every process reading a converted checkpoint into host memory): its barriers then wait
    for this process only. Empty (orbax's defaults, every process takes part) with one process, or when a leaf is a
    global array (or restores into one)."""
    if jax.process_count() == 1:
        return {}
    for leaf in jax.tree.leaves(trees):
        sh = getattr(leaf, "sharding", None)
        if sh is not None and not sh.is_fully_addressable:
            return {}
    k = jax.process_index()
    return {"multiprocessing_options": ocp.options.MultiprocessingOptions(
        primary_host=k, active_processes={k}, barrier_sync_key_prefix=f"vsr1_process_{k}")}


def save_params(directory, tree, *, overwrite: bool = False) -> None:
    """Write a pytree of numpy / jax arrays to `directory` (synchronously; numpy leaves stay on the host).

    The directory must not exist unless `overwrite`. Peak extra host memory is a few chunks, not a model copy.
    In a multi-process job, host arrays are written by the calling process alone (see `_process_local`).
    """
    path = _abs(directory)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists")
    tree = jax.tree.map(_no_copy, tree)
    save_args = jax.tree.map(
        lambda x: ocp.SaveArgs(chunk_byte_size=_CHUNK_BYTES) if getattr(x, "nbytes", 0) > _CHUNK_BYTES
        else ocp.SaveArgs(), tree)
    mp = _process_local(tree)
    ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False, **mp), **mp)
    absl_log = logging.getLogger("absl")
    absl_log.addFilter(_no_ocdbt_merge_note)
    try:
        ckptr.save(path, args=ocp.args.PyTreeSave(tree, save_args=save_args), force=overwrite)
    finally:
        ckptr.close()
        absl_log.removeFilter(_no_ocdbt_merge_note)


def params_metadata(directory):
    """The saved tree with `jax.ShapeDtypeStruct` leaves (no sharding): what `restore_params` would return."""
    mp = _process_local()
    ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler(**mp), **mp)
    try:
        meta = ckptr.metadata(_abs(directory))
    finally:
        ckptr.close()
    return _to_shape_dtype(getattr(meta, "item_metadata", meta))


def _to_shape_dtype(meta):
    # 0.12.x gives StepMetadata(item_metadata=TreeMetadata(tree=...)) from a Checkpointer and the TreeMetadata
    # from a manager's item_metadata; both unwrap to a tree of ArrayMetadata.
    meta = getattr(meta, "tree", meta)
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype)), meta,
                        is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))


def _default_sharding():
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process's (devices()[0] is process 0's)


def _restore_target(directory, target, shardings):
    """Normalise (target, shardings) into what StandardRestore wants, or None for 'as saved'."""
    if shardings is not None:
        if target is None:
            target = params_metadata(directory)
        if isinstance(shardings, jax.sharding.Sharding):
            target = jax.tree.map(lambda t: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=shardings), target)
        else:
            target = jax.tree.map(lambda t, s: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=s), target,
                                  shardings)
    if target is None:
        return None
    dev = None

    def fill(t):
        # A ShapeDtypeStruct without sharding would come back as numpy when the checkpoint was written from numpy;
        # the caller asked for device arrays, so put them on the default device.
        nonlocal dev
        if isinstance(t, jax.ShapeDtypeStruct) and t.sharding is None:
            dev = dev or _default_sharding()
            return jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=dev)
        return t

    return jax.tree.map(fill, target)


def restore_params(directory, target=None, shardings=None, *, partial: bool = False):
    """Read a tree written by `save_params` (or any StandardSave checkpoint).

    target None: leaves come back as saved (numpy for numpy, jax arrays on the default device for jax).
    target: a pytree of `jax.ShapeDtypeStruct` (restored straight into `.sharding`, default device if None; dtype
    is cast) or of numpy arrays (restored as numpy in their dtype). shardings: one `Sharding` for every leaf, or a
    pytree of them matching the saved tree (or `target`). partial: `target` may name a subset of the saved tree.
    """
    path = _abs(directory)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    tgt = _restore_target(path, target, shardings)
    mp = _process_local(tgt)
    if partial and tgt is not None:
        # StandardRestore cannot omit saved subtrees; PyTreeRestore can (same on-disk format).
        ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(**mp), **mp)
        args = ocp.args.PyTreeRestore(item=tgt, restore_args=ocp.checkpoint_utils.construct_restore_args(tgt),
                                      partial_restore=True)
    else:
        ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler(**mp), **mp)
        args = ocp.args.StandardRestore() if tgt is None else ocp.args.StandardRestore(tgt)
    try:
        return ckptr.restore(path, args=args)
    finally:
        ckptr.close()


class CheckpointManager:
    """Numbered training checkpoints under one directory: async saves, keep the newest `max_to_keep`.

    Each step holds `state` (any pytree of arrays, e.g. `nnx.state(model)` and optimizer state) and optionally
    `extra` (a JSON-able dict: data-iterator position, RNG seeds, config echo).
    """

    def __init__(self, directory, *, max_to_keep: int | None = 3, save_interval_steps: int = 1,
                 async_save: bool = True):
        self.directory = _abs(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
                                               enable_async_checkpointing=async_save, create=True)
        # Naming the handlers lets a fresh manager (after a restart) read metadata and restore without args.
        self._mngr = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()})

    def save(self, step: int, state, *, extra: dict | None = None, force: bool = False) -> bool:
        """Start saving `step` (returns at once when async). False when skipped by `save_interval_steps`."""
        items: dict[str, Any] = {"state": ocp.args.StandardSave(state)}
        if extra is not None:
            items["extra"] = ocp.args.JsonSave(extra)
        return bool(self._mngr.save(int(step), args=ocp.args.Composite(**items), force=force))

    def _step(self, step):
        if step is None:
            self._mngr.wait_until_finished()
            step = self._mngr.latest_step()
            if step is None:
                raise FileNotFoundError(f"{self.directory}: no checkpoints to restore")
        return int(step)

    def restore(self, step: int | None = None, target=None, shardings=None):
        """The `state` of `step` (latest if None); target/shardings as in `restore_params`."""
        step = self._step(step)
        if shardings is not None and target is None:
            target = _to_shape_dtype(self._mngr.item_metadata(step)["state"])
        tgt = _restore_target(None, target, shardings)
        args = ocp.args.StandardRestore() if tgt is None else ocp.args.StandardRestore(tgt)
        return self._mngr.restore(step, args=ocp.args.Composite(state=args))["state"]

    def restore_extra(self, step: int | None = None) -> dict | None:
        step = self._step(step)
        if not os.path.isdir(os.path.join(self.directory, str(step), "extra")):
            return None
        return self._mngr.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))["extra"]

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
