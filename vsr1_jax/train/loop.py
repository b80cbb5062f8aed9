"""The generic training loop of both stages: next batch -> jitted step -> host work after the step -> metrics ->
checkpoints, with resume, SIGTERM handling and progress.

A `Task` (train/sft_run.py, train/grpo_run.py) supplies the stage: how to make the next device batch, the step, what
to do with its outputs on the host, and the host state to checkpoint beside the train state (data iterator position,
hard-negative lists, ...). The loop owns everything else:
- resume: the newest complete checkpoint under `<output_dir>/checkpoints` is restored (state into its shardings,
  host state through the task), so a run killed at any point and started again with the same command continues
  where the last checkpoint left it and then produces the same numbers as an uninterrupted run. orbax commits a
  step by renaming its folder at the end; a half-written step is never listed, so never restored.
- checkpoints: async (orbax), every `every_steps` / `every_fraction` of the total, the newest `keep` kept, and
  always at the end and on SIGTERM (the signal finishes the current step, saves, and exits).
- metrics: one JSON line per logged step in `<output_dir>/metrics.jsonl` and TensorBoard scalars in
  `<output_dir>/tensorboard` (tensorboardX); a tqdm bar with rate and ETA. Process 0 writes them.
- multi-host: every process runs the loop in step; orbax writes each process's shards and process 0 the metadata
  and the host state (which the tasks keep identical on every process); the restore target is the current
  state's shardings, so a checkpoint restores on another process count or mesh.
- the XLA compilations of each step are counted and logged (`compiles`): a step that compiles again after the
  first batches means a shape escaped the buckets.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Protocol

import jax
import numpy as np
from tensorboardX import SummaryWriter
from tqdm import tqdm

from vsr1_jax import distributed
from vsr1_jax.checkpoint import CheckpointManager
from vsr1_jax.compiles import CompileCounter

log = logging.getLogger(__name__)


class Task(Protocol):
    """What a training stage plugs into the loop."""
    total_steps: int

    def next_batch(self) -> Any: ...                                     # host -> device batch (or StopIteration)
    def step(self, state, batch) -> tuple[Any, dict]: ...               # the jitted update
    def after_step(self, step: int, batch, metrics: dict) -> dict: ...  # host work; returns scalars to log
    def host_state(self) -> dict: ...                                   # JSON-able, saved with each checkpoint
    def load_host_state(self, state: dict) -> None: ...
    # optional: checkpoint_ok(step) -> bool: False while a step's host state cannot be checkpointed (GRPO between
    # the num_iterations updates of one generation round); saves (and a SIGTERM exit) wait for the next True


class MetricsWriter:
    """JSON lines + TensorBoard scalars (process 0 only)."""

    def __init__(self, out_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard")) if enabled else None

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _py(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _py(v):
    v = np.asarray(v)
    if v.ndim:
        return v.tolist()
    return v.item()


def read_metrics(out_dir: str) -> list[dict]:
    """The rows of `<out_dir>/metrics.jsonl` (last row per step wins: a resumed run rewrites the steps after its
    checkpoint)."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows[r["step"]] = r
    return [rows[k] for k in sorted(rows)]


class _Stop:
    """SIGTERM (and SIGINT) -> finish the current step, save, exit."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        log.warning("signal %d: saving a checkpoint after this step, then exiting", signum)
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def save_interval(total_steps: int, every_steps: int, every_fraction: float) -> int:
    """Steps between checkpoints: `every_steps`, else ceil(fraction x total) (the original's 5 %), at least 1."""
    if every_steps > 0:
        return int(every_steps)
    if every_fraction > 0:
        return max(1, math.ceil(every_fraction * total_steps))
    return max(1, total_steps)


def run(task: Task, state, *, out_dir: str, ckpt_cfg, log_every: int = 1, desc: str = "train",
        abstract_state: Callable[[], Any] | None = None, on_log: Callable[[int, dict], None] | None = None):
    """Train `task` from `state` (or from the newest checkpoint under out_dir/checkpoints). Returns
    (state, steps_done, stopped_early)."""
    os.makedirs(out_dir, exist_ok=True)
    primary = jax.process_index() == 0
    mngr = CheckpointManager(os.path.join(out_dir, "checkpoints"), max_to_keep=ckpt_cfg.keep,
                             async_save=ckpt_cfg.async_save)
    interval = save_interval(task.total_steps, ckpt_cfg.every_steps, ckpt_cfg.every_fraction)
    start = 0
    latest = mngr.latest_step()
    if latest is not None:
        target = abstract_state() if abstract_state is not None else jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        state = mngr.restore(latest, target=target)
        task.load_host_state(mngr.restore_extra(latest) or {})
        start = latest
        log.info("resumed from %s/checkpoints/%d", out_dir, latest)
    writer = MetricsWriter(out_dir, enabled=primary)
    bar = tqdm(total=task.total_steps, initial=start, desc=desc, unit="step", dynamic_ncols=True, disable=not primary)
    step = start
    stopped = False
    try:
        with _Stop() as stop:
            while step < task.total_steps:
                t0 = time.perf_counter()
                try:
                    batch = task.next_batch()
                except StopIteration:
                    break
                t1 = time.perf_counter()
                with CompileCounter() as cc:
                    state, metrics = task.step(state, batch)
                    host = task.after_step(step, batch, metrics)
                step += 1
                t2 = time.perf_counter()
                if step % log_every == 0 or step == task.total_steps:
                    scalars = dict(host, data_s=t1 - t0, step_s=t2 - t1, compiles=cc.count)
                    if "tokens" in host:
                        scalars["tokens_per_s"] = host["tokens"] / max(t2 - t1, 1e-9)
                    writer.write(step, scalars)
                    if on_log is not None:
                        on_log(step, scalars)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()
                                     if k in ("loss", "reward", "grad_norm") and isinstance(v, float)})
                bar.update(1)
                ok = getattr(task, "checkpoint_ok", lambda s: True)(step)
                # a signal may reach one process of a multi-host job: all of them stop together (saving is a
                # collective)
                requested = distributed.any_process(stop.requested)
                if ok and (step % interval == 0 or step == task.total_steps or requested):
                    mngr.save(step, state, extra=task.host_state(), force=True)
                if requested and ok:
                    stopped = True
                    break
    finally:
        bar.close()
        mngr.close()
        writer.close()
    return state, step, stopped
