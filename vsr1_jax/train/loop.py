"""The generic training loop of both stages: next batch -> jitted step -> host work after the step -> metrics ->
checkpoints, with resume, SIGTERM handling and progress.

A `Task` (train/sft_run.py, train/grpo_run.py) supplies the stage: how to make the next device batch, the step, what
to do with its outputs on the host, and the host state to checkpoint beside the train state (data iterator position,
hard-negative lists, ...). The loop owns everything else:
- resume: the newest complete checkpoint under `<output_dir>/checkpoints` is restored (state into its shardings,
  host state through the task), so a run killed at any point and started again with the same command continues
  where the last checkpoint left it and then produces the same numbers as an uninterrupted run. orbax commits a
  step by renaming its folder at the end; a half-written step is never listed, so never restored. A checkpoint of an
  older state layout (with the since-removed `TrainState.rng`) restores with that leaf dropped (`restore_state`).
- checkpoints: async (orbax), every `every_steps` / `every_fraction` of the total, the newest `keep` kept, and
  always at the end and on SIGTERM (the signal finishes the current step, saves, and exits).
- metrics: one JSON line per logged step in `<output_dir>/metrics.jsonl` and TensorBoard scalars in
  `<output_dir>/tensorboard` (tensorboardX); a tqdm bar with rate and ETA ("compiling (first step)" until the first
  step is done). Process 0 writes them. On resume from step N both are cut back to steps <= N first (rows and event
  records a killed run wrote after its last checkpoint, and a record half-written by SIGKILL), so every step appears
  once.
- the run folder records the resolved config (`config.json`); a resume with other settings logs a warning naming
  them. A stop by SIGINT / SIGTERM returns the signal as `stopped` (the entry point exits 130 / 143).
- multi-host: every process runs the loop in step; orbax writes each process's shards and process 0 the metadata
  and the host state (which the tasks keep identical on every process); the restore target is the current
  state's shardings, so a checkpoint restores on another process count or mesh.
- the XLA compilations of each step are counted and logged (`compiles`): a step that compiles again after the
  first batches means a shape escaped the buckets.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import struct
import time
from typing import Any, Protocol

import jax
import numpy as np
from tqdm import tqdm

from vsr1_jax import distributed, runinfo
from vsr1_jax.ckpt.orbax_io import CheckpointManager, params_metadata
from vsr1_jax.compiles import CompileCounter
from vsr1_jax.data.pipelines import PipelineStateError
from vsr1_jax.errors import Stopped

log = logging.getLogger(__name__)


class Task(Protocol):
    """What a training stage plugs into the loop."""
    total_steps: int

    def next_batch(self, state) -> Any: ...                              # the step's batch (or StopIteration);
    #   state: the current train state (GRPO rolls out with its weights; SFT and the pretraining stages ignore it)
    def step(self, state, batch) -> tuple[Any, dict]: ...               # the jitted update
    def after_step(self, step: int, batch, metrics: dict) -> dict: ...  # host work; returns scalars to log
    def host_state(self) -> dict: ...                                   # JSON-able, saved with each checkpoint
    def load_host_state(self, state: dict) -> None: ...
    # optional: skipped: list of dicts (file, item / line / qid, reason, detail) of the rows it could not use; the
    # loop moves them to skipped.jsonl beside metrics.jsonl after each step (step 0: dropped while loading)
    # optional: checkpoint_ok(step) -> bool: False while a step's host state cannot be checkpointed (GRPO between
    # the num_iterations updates of one generation round); saves (and a SIGTERM exit) wait for the next True


class SteppedTask:
    """The plumbing the demo's pretraining stages share (Stage 0v, Stage 0): batch s is a pure function of s, so the
    host state is the next batch's index; the jitted `self._step` keeps the latest state; after a step its metrics are
    logged and, every `eval_every` steps (`self.c.eval_every`) and at the last one, `evaluate(state)`'s scalars."""
    _next = 0
    _latest = None

    def make_batch(self, step: int) -> dict:
        """Host arrays of batch `step` (a pure function of the step)."""
        raise NotImplementedError

    def evaluate(self, state) -> dict:
        """Held-out scalars of a state, logged beside the step's metrics."""
        raise NotImplementedError

    def next_batch(self, state=None):
        step = self._next
        self._next += 1
        return jax.tree.map(jax.numpy.asarray, self.make_batch(step))

    def step(self, state, batch):
        new, metrics = self._step(state, batch)
        self._latest = new
        return new, metrics

    def after_step(self, step: int, batch, metrics) -> dict:
        out = {k: float(v) for k, v in metrics.items()}
        every = int(self.c.eval_every)
        if every > 0 and (step + 1) % every == 0 or step + 1 == self.total_steps:
            out.update(self.evaluate(self._latest))
        return out

    def host_state(self) -> dict:
        return {"next": self._next}

    def load_host_state(self, state: dict) -> None:
        self._next = int(state.get("next", 0))


def run_pretraining(task: SteppedTask, *, out_dir: str, ckpt_cfg, desc: str, save) -> dict:
    """Train (or resume) one of the demo's pretraining stages to its end and hand the final state to `save`; the
    summary the stages report (stopped early by a signal: {stopped, steps} only, nothing saved)."""
    t0 = time.perf_counter()
    state, steps, stopped = run(task, task.state, out_dir=out_dir, ckpt_cfg=ckpt_cfg, log_every=1, desc=desc)
    if stopped:
        return dict(stopped=True, steps=steps)
    save(state)
    return dict(stopped=False, steps=steps, wall_s=time.perf_counter() - t0, dir=out_dir,
                pool_videos=len(task.pool), val_videos=len(task.val))


class MetricsWriter:
    """JSON lines + TensorBoard scalars (process 0 only)."""

    def __init__(self, out_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.skipped_path = os.path.join(out_dir, "skipped.jsonl")
        self._tb = None
        if enabled:
            open(self.skipped_path, "a").close()   # present (empty) when every row was used
            # lazy: tensorboardX imports torch (~3 s of every CLI start, errors and --help included)
            from tensorboardX import SummaryWriter  # noqa: PLC0415
            self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard"))

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _py(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)

    def flush(self) -> None:
        """Put the buffered TensorBoard events on disk (before a checkpoint: a later SIGKILL must not lose the
        events of the steps the checkpoint holds, which a resume does not log again)."""
        if self._tb is not None:
            self._tb.flush()

    def skipped(self, step: int, rows: list) -> None:
        """Append the rows a task could not use (each names its file and item / line / qid) to skipped.jsonl, and
        empty `rows`."""
        if self.enabled and rows:
            with open(self.skipped_path, "a") as f:
                for r in rows:
                    f.write(json.dumps({"step": int(step), **r}, default=str) + "\n")
        del rows[:]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def truncate_metrics(path: str, step: int) -> int:
    """Keep the rows of a metrics.jsonl with "step" <= `step` (and drop an unparseable last line, e.g. cut by
    SIGKILL); returns the number of rows removed."""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if int(row.get("step", 0)) <= step:
                kept.append(json.dumps(row) + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


def read_event_records(path: str) -> list[bytes]:
    """The records of a TFRecord (TensorBoard event) file, up to the first truncated or corrupt one."""
    from tensorboardX.record_writer import masked_crc32c  # noqa: PLC0415  lazy: tensorboardX imports torch
    out = []
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        (len_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        end = pos + 12 + n + 4
        if masked_crc32c(data[pos:pos + 8]) != len_crc or end > len(data):
            break
        body = data[pos + 12:pos + 12 + n]
        if masked_crc32c(body) != struct.unpack("<I", data[end - 4:end])[0]:
            break
        out.append(body)
        pos = end
    return out


def truncate_events(tb_dir: str, step: int) -> int:
    """Rewrite every event file under `tb_dir` without the events of steps > `step` and without a trailing
    half-written record (the resumed run writes those steps again, into a new file); returns the events removed."""
    if not os.path.isdir(tb_dir):
        return 0
    from tensorboardX.proto import event_pb2  # noqa: PLC0415  lazy: tensorboardX imports torch
    from tensorboardX.record_writer import masked_crc32c  # noqa: PLC0415  (same)
    removed = 0
    for name in sorted(os.listdir(tb_dir)):
        path = os.path.join(tb_dir, name)
        if "tfevents" not in name or not os.path.isfile(path):
            continue
        records = read_event_records(path)
        keep = [r for r in records if event_pb2.Event.FromString(r).step <= step]
        whole = sum(12 + len(r) + 4 for r in records) == os.path.getsize(path)
        if len(keep) == len(records) and whole:
            continue
        removed += len(records) - len(keep)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            for r in keep:
                header = struct.pack("<Q", len(r))
                f.write(header + struct.pack("<I", masked_crc32c(header)) + r + struct.pack("<I", masked_crc32c(r)))
        os.replace(tmp, path)
    return removed


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
        self.signum = 0
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
        self.signum = signum

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


def stopped_error(stage: str, out_dir: str, step: int, total: int, signum: int) -> Stopped:
    """What the entry point reports for a run stopped by a signal (exit status 128 + signum)."""
    return Stopped(f"{stage} stopped at step {step}/{total} (checkpoint {out_dir}/checkpoints/{step}) — run the "
                   "same command to resume", signum)


def _warn_changed_settings(config, out_dir: str, resume_from: int) -> None:
    """On a resume, warn about the settings that differ from the run folder's config.json."""
    old = runinfo.load_saved_config(out_dir)
    if old is not None:
        changes = runinfo.changed_settings(old, runinfo.config_dict(config))
        if changes:
            log.warning("resuming from %s/checkpoints/%d with settings that differ from the run that wrote it: %s",
                        out_dir, resume_from, runinfo.describe_changes(changes))


# Top-level leaves that train states no longer have but older checkpoints hold: TrainState.rng (sampling key data,
# written and checkpointed, never read). Restoring such a checkpoint reads them and drops them.
LEGACY_STATE_LEAVES = ("rng",)


def restore_state(mngr: CheckpointManager, step: int, target):
    """The train state of checkpoint `step`, restored into `target` (`jax.ShapeDtypeStruct` leaves with shardings).
    A checkpoint written before a leaf of `LEGACY_STATE_LEAVES` was removed from the state still restores: the old
    leaf is read beside the others and dropped."""
    if not dataclasses.is_dataclass(target):
        return mngr.restore(step, target=target)
    saved = params_metadata(os.path.join(mngr.directory, str(step), "state"))
    fields = [f.name for f in dataclasses.fields(target)]
    old = [k for k in LEGACY_STATE_LEAVES if isinstance(saved, dict) and k in saved and k not in fields]
    if not old:
        return mngr.restore(step, target=target)
    restored = mngr.restore(step, target={**{k: getattr(target, k) for k in fields}, **{k: saved[k] for k in old}})
    return type(target)(**{k: restored[k] for k in fields})


def run(task: Task, state, *, out_dir: str, ckpt_cfg, log_every: int = 1, desc: str = "train", config=None):
    """Train `task` from `state` (or from the newest checkpoint under out_dir/checkpoints). Returns
    (state, steps_done, stopped): stopped = the number of the signal that stopped the run early (SIGINT 2, SIGTERM
    15), 0 when it ran to the end. `config`: the resolved config, saved as out_dir/config.json."""
    os.makedirs(out_dir, exist_ok=True)
    primary = jax.process_index() == 0
    mngr = CheckpointManager(os.path.join(out_dir, "checkpoints"), max_to_keep=ckpt_cfg.keep,
                             async_save=ckpt_cfg.async_save)
    interval = save_interval(task.total_steps, ckpt_cfg.every_steps, ckpt_cfg.every_fraction)
    start = 0
    latest = mngr.latest_step()
    if latest is not None:
        if primary and config is not None:
            _warn_changed_settings(config, out_dir, latest)
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        state = restore_state(mngr, latest, target)
        try:
            task.load_host_state(mngr.restore_extra(latest) or {})
        except PipelineStateError as e:
            raise PipelineStateError(
                f"{out_dir}/checkpoints/{latest}: cannot resume: {e}. Run with the settings of that run "
                f"({out_dir}/{runinfo.CONFIG_FILE}), or start a new run with another --config.output_dir") from None
        start = latest
        log.info("resumed from %s/checkpoints/%d", out_dir, latest)
    if primary:
        if config is not None:
            runinfo.save_config(config, out_dir)
        cut = truncate_metrics(os.path.join(out_dir, "metrics.jsonl"), start)
        cut += truncate_metrics(os.path.join(out_dir, "skipped.jsonl"), start)
        cut += truncate_events(os.path.join(out_dir, "tensorboard"), start)
        if cut:
            log.info("dropped %d metric rows / events after step %d (written after the last checkpoint)", cut, start)
    writer = MetricsWriter(out_dir, enabled=primary)
    skipped = getattr(task, "skipped", None)   # optional: rows the task could not use, drained after each step
    if skipped is not None:
        if start > 0:
            del skipped[:]   # the rows dropped while loading (step 0) were written by the run that saved the checkpoint
        writer.skipped(0, skipped)
    bar = tqdm(total=task.total_steps, initial=start, desc=desc, unit="step", dynamic_ncols=True, disable=not primary)
    if step_is_first := start < task.total_steps:
        bar.set_postfix_str("compiling (first step)")
        bar.refresh()
    step = start
    stopped = 0
    try:
        with _Stop() as stop:
            while step < task.total_steps:
                t0 = time.perf_counter()
                try:
                    with CompileCounter() as cd:   # GRPO: the generation round (rollouts, rewards, scoring)
                        batch = task.next_batch(state)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                with CompileCounter() as cc:
                    state, metrics = task.step(state, batch)
                    host = task.after_step(step, batch, metrics)
                step += 1
                t2 = time.perf_counter()
                if skipped is not None:
                    writer.skipped(step, skipped)
                if step_is_first:
                    bar.set_postfix_str("")
                    step_is_first = False
                if step % log_every == 0 or step == task.total_steps:
                    scalars = dict(host, data_s=t1 - t0, step_s=t2 - t1, compiles=cc.count, data_compiles=cd.count)
                    if "tokens" in host:
                        scalars["tokens_per_s"] = host["tokens"] / max(t2 - t1, 1e-9)
                    writer.write(step, scalars)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()
                                     if k in ("loss", "reward", "grad_norm") and isinstance(v, float)})
                bar.update(1)
                ok = getattr(task, "checkpoint_ok", lambda s: True)(step)
                # a signal may reach one process of a multi-host job: all of them stop together (saving is a
                # collective)
                requested = distributed.any_process(stop.requested)
                if ok and (step % interval == 0 or step == task.total_steps or requested):
                    writer.flush()
                    mngr.save(step, state, extra=task.host_state(), force=True)
                if requested and ok:
                    stopped = stop.signum or int(signal.SIGTERM)   # another process's signal: SIGTERM
                    break
    finally:
        bar.close()
        mngr.close()
        writer.close()
    return state, step, stopped
