"""grain input pipelines for SFT, GRPO and eval: seeded shuffle, per-process sharding, epochs, bucketed padding and
checkpointable iterator state. Tokenising / video preprocessing are injected callables (numpy only, no JAX)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from typing import Any, Callable, Mapping, Sequence

import grain
import numpy as np
from absl import flags

from vsr1_jax.buckets import BucketOverflowError, bucket_length
from vsr1_jax.data.paths import PreparedPaths
from vsr1_jax.data.queries import eval_queries, grpo_records, sft_records
from vsr1_jax.errors import UserError

# ---------------------------------------------------------------------------------------------------------------
# absl flags (grain's multiprocessing reads them)
# ---------------------------------------------------------------------------------------------------------------


def ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; without `absl.app.run` they raise UnparsedFlagAccessError
    (environment.md §5). Parse only argv[0] so the caller's own CLI arguments are never interpreted as absl flags."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1] or ["vsr1_jax"])


# ---------------------------------------------------------------------------------------------------------------
# Buckets and collation
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PadSpec:
    """How one array field is padded: `pad_value` along `axis` (right padding). `buckets=None` means the
    collator's main buckets, and the field must have the row's length on that axis (ids, label masks, M-RoPE
    positions [3, L], …). A field with its own buckets (e.g. vision patch rows) is bucketed independently."""

    pad_value: float | int | bool = 0
    axis: int = -1
    buckets: tuple[int, ...] | None = None
    config_field: str | None = None


def default_token_fields(pad_id: int) -> dict[str, PadSpec]:
    """The token arrays every text model step takes: ids [L] (pad id), label/attention masks [L] (0), and
    M-RoPE positions [3, L] (0; padded positions are masked so their value does not matter)."""
    return {
        "input_ids": PadSpec(pad_id),
        "attention_mask": PadSpec(0),
        "loss_mask": PadSpec(0),
        "position_ids": PadSpec(0),
    }


def _pad_to(arr: np.ndarray, axis: int, size: int, value) -> np.ndarray:
    pad = [(0, 0)] * arr.ndim
    pad[axis] = (0, size - arr.shape[axis])
    return np.pad(arr, pad, constant_values=value)


class BucketCollator:
    """Collate a list of per-example dicts into one batch dict with few distinct shapes.

    Fields in `fields` are right-padded to the smallest bucket ≥ the longest row in the batch, giving
    [B, …, L_bucket]; `lengths` int32 [B] holds each row's true length (of `length_field`). Other numpy fields with
    equal shapes are stacked, scalars become arrays [B], everything else (strings, id lists) becomes a list.
    With `batch_size`, a short (last) batch is padded with copies of row 0 and `valid` bool [B] marks real rows, so an
    eval step compiled for B keeps its shape. Picklable (grain workers pickle it).
    """

    def __init__(self, buckets: Sequence[int], fields: Mapping[str, PadSpec], *, length_field: str = "input_ids",
                 id_field: str = "qid", config_field: str = "data.buckets", batch_size: int | None = None):
        bucket_length(1, buckets)  # validates the bucket list now rather than at the first batch
        if length_field not in fields:
            raise ValueError(f"length_field {length_field!r} must be one of the padded fields {sorted(fields)}")
        self.buckets = tuple(int(b) for b in buckets)
        self.fields = dict(fields)
        self.length_field = length_field
        self.id_field = id_field
        self.config_field = config_field
        self.batch_size = batch_size

    def _overflow(self, example: Mapping, n: int, buckets: Sequence[int], field: str, cfg: str) -> BucketOverflowError:
        rid = example.get(self.id_field, "<no id>")
        return BucketOverflowError(
            f"row {self.id_field}={rid!r}: field {field!r} has length {n} > largest bucket {buckets[-1]}; "
            f"raise `{cfg}` (currently {tuple(buckets)}) or drop/truncate this row")

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        examples = list(examples)
        n_real = len(examples)
        if self.batch_size is not None:
            if n_real > self.batch_size:
                raise ValueError(f"batch has {n_real} rows > batch_size {self.batch_size}")
            examples += [examples[0]] * (self.batch_size - n_real)
        out: dict[str, Any] = {}
        lengths = []
        for ex in examples:
            arr = np.asarray(ex[self.length_field])
            lengths.append(arr.shape[self.fields[self.length_field].axis])
        for ex, n in zip(examples, lengths):
            try:
                bucket_length(n, self.buckets)
            except BucketOverflowError:
                raise self._overflow(ex, n, self.buckets, self.length_field, self.config_field) from None
        main_len = bucket_length(max(lengths), self.buckets)
        for name, spec in self.fields.items():
            present = [name in ex for ex in examples]
            if not any(present):
                continue
            if not all(present):
                raise ValueError(f"field {name!r} is present in some rows of the batch but not all")
            arrs = [np.asarray(ex[name]) for ex in examples]
            if spec.buckets is None:
                for ex, a, n in zip(examples, arrs, lengths):
                    if a.shape[spec.axis] != n:
                        raise ValueError(
                            f"row {self.id_field}={ex.get(self.id_field, '<no id>')!r}: field {name!r} has length "
                            f"{a.shape[spec.axis]} on axis {spec.axis} but {self.length_field!r} has {n}")
                size = main_len
            else:
                own = [a.shape[spec.axis] for a in arrs]
                for ex, n in zip(examples, own):
                    try:
                        bucket_length(n, spec.buckets)
                    except BucketOverflowError:
                        cfg = spec.config_field or self.config_field
                        raise self._overflow(ex, n, spec.buckets, name, cfg) from None
                size = bucket_length(max(own), spec.buckets)
            out[name] = np.stack([_pad_to(a, spec.axis, size, spec.pad_value) for a in arrs])
        out["lengths"] = np.asarray(lengths, dtype=np.int32)
        for name in examples[0]:
            if name in self.fields:
                continue
            vals = [ex[name] for ex in examples]
            out[name] = _stack_or_list(vals)
        if self.batch_size is not None:
            out["valid"] = np.arange(self.batch_size) < n_real
        return out


def _stack_or_list(vals: list) -> Any:
    first = vals[0]
    if isinstance(first, np.ndarray) and first.dtype != object:
        if all(isinstance(v, np.ndarray) and v.shape == first.shape and v.dtype == first.dtype for v in vals):
            return np.stack(vals)
        return vals
    if isinstance(first, np.generic) and all(isinstance(v, np.generic) and v.dtype == first.dtype for v in vals):
        return np.asarray(vals, dtype=first.dtype)  # keep numpy scalar dtypes (int32 rows stay int32)
    if isinstance(first, (bool, np.bool_)) and all(isinstance(v, (bool, np.bool_)) for v in vals):
        return np.asarray(vals, dtype=bool)
    if isinstance(first, (int, np.integer)) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                     for v in vals):
        return np.asarray(vals, dtype=np.int64)
    if isinstance(first, (float, np.floating)) and all(isinstance(v, (int, float, np.number)) for v in vals):
        return np.asarray(vals, dtype=np.float64)
    return vals


class _RepeatEachCollate:
    """Repeat each example G times consecutively before collating: TRL RepeatSampler's mini_repeat_count
    (TR:1284-1318), so the G rollouts of a prompt sit together in one batch. The per-example map (tokenising,
    video decoding) still runs once per prompt."""

    def __init__(self, collate: Callable, repeat_each: int):
        self.collate = collate
        self.repeat_each = repeat_each

    def __call__(self, examples):
        return self.collate([ex for ex in examples for _ in range(self.repeat_each)])


def _list_batch(examples):
    return list(examples)


# ---------------------------------------------------------------------------------------------------------------
# Shuffle / shard / epochs
# ---------------------------------------------------------------------------------------------------------------
class ShardedEpochsDataset(grain.MapDataset):
    """`num_epochs` passes over `parent`, each pass in a seeded order, keeping this process's share.

    Epoch e's global order is `parent.shuffle(seed)` at epoch e (grain reseeds each epoch); process k of P takes
    positions k, k+P, k+2P, … of it, so the P processes split every epoch disjointly and together cover it. With
    `even_shards` each process keeps ⌊N/P⌋ per epoch (up to P-1 rows of each epoch are skipped, a different subset
    each epoch when shuffling) so all processes run the same number of steps — required when a step is a collective.
    Without it process k keeps ⌈(N-k)/P⌉ (eval: every row is evaluated once, EVAL L2169-2184 `local_pos % P == k`).
    num_epochs=None repeats forever.

    With `block` = b (multi-host training), the epochs form one global stream (epoch 0's order, then epoch 1's, …)
    cut into global micro-batches of b·P rows, and process k takes rows k·b … k·b+b-1 of each: its local batches of
    whole blocks are its devices' part of the global batches a single process would form from the same stream,
    whatever P is (only whole global micro-batches are kept; `even_shards` does not apply).
    """

    def __init__(self, parent: grain.MapDataset, *, seed: int, shuffle: bool, num_epochs: int | None,
                 shard_index: int, shard_count: int, even_shards: bool, block: int | None = None):
        super().__init__(parent)
        if shard_count < 1 or not 0 <= shard_index < shard_count:
            raise ValueError(f"need 0 <= process_index < process_count, got {shard_index}/{shard_count}")
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
        self._n = len(parent)
        self._ordered = parent.shuffle(seed=seed) if shuffle else parent
        self._shuffle = shuffle
        self._k, self._p = shard_index, shard_count
        self._per_epoch = self._n // shard_count if even_shards else len(range(shard_index, self._n, shard_count))
        self._epochs = num_epochs
        if block is not None and block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self._block = block

    def __len__(self) -> int:
        if self._block is not None:
            if self._n == 0:
                return 0
            if self._epochs is None:
                return sys.maxsize
            return (self._n * self._epochs) // (self._block * self._p) * self._block
        if self._per_epoch == 0:
            return 0
        return sys.maxsize if self._epochs is None else self._per_epoch * self._epochs

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        if self._block is not None:
            b = self._block
            g = (index // b) * b * self._p + self._k * b + index % b   # position in the global stream
            epoch, pos = divmod(g, self._n)
            return self._ordered[epoch * self._n + pos if self._shuffle else pos]
        epoch, j = divmod(index, self._per_epoch)
        pos = j * self._p + self._k
        # ShuffleMapDataset maps index epoch·N + pos to epoch e's permutation (it reseeds per epoch).
        return self._ordered[epoch * self._n + pos if self._shuffle else pos]

    def __str__(self) -> str:
        return (f"ShardedEpochsDataset(shard={self._k}/{self._p}, per_epoch={self._per_epoch}, "
                f"epochs={self._epochs}, shuffle={self._shuffle}, block={self._block})")


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only when the caller did not say; tests and tools pass both explicitly

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return int(process_index), int(process_count)


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """Everything that decides which batches come out; its fingerprint guards iterator-state restores."""

    records_digest: str
    batch_size: int | None
    seed: int
    shuffle: bool
    num_epochs: int | None
    process_index: int
    process_count: int
    even_shards: bool
    drop_remainder: bool
    repeat_each: int
    block: int | None = None   # the multi-host block layout (ShardedEpochsDataset); None: interleaved shards

    def fingerprint(self) -> str:
        d = dataclasses.asdict(self)
        if d["block"] is None:  # specs without blocks keep the fingerprints they always had
            del d["block"]
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def process_independent(self) -> bool:
        """Batch n holds the same global rows whatever the process count (one process, or the block layout)."""
        return self.process_count == 1 or self.block is not None

    def global_fingerprint(self) -> str:
        """What decides the global batches, without the process layout: equal for the same run on any number of
        processes (see `DataIterator.position_state`)."""
        d = dataclasses.asdict(self)
        for k in ("process_index", "process_count", "block", "batch_size", "even_shards"):
            del d[k]
        d["global_batch_size"] = None if self.batch_size is None else self.batch_size * self.process_count
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def records_digest(records: Sequence[Any]) -> str:
    """Content hash of the records (order included), so a restored iterator state is known to index the same rows."""
    h = hashlib.sha1()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, default=_json_default).encode())
        h.update(b"\n")
    return f"{len(records)}:{h.hexdigest()[:16]}"


def build_dataset(records: Sequence[Any], *, map_fn: Callable[[Any], Any] | None = None,
                  batch_size: int | None = None, collate_fn: Callable[[list], Any] | None = None,
                  seed: int = 42, shuffle: bool = True, num_epochs: int | None = 1,
                  process_index: int | None = None, process_count: int | None = None,
                  even_shards: bool = True, drop_remainder: bool = True,
                  repeat_each: int = 1, block: int | None = None) -> tuple[grain.MapDataset, PipelineSpec]:
    """records → (shuffled, sharded, repeated) → map_fn per example → batches of `batch_size` rows.

    `batch_size` counts rows after `repeat_each` (what the jitted step sees), so with repeat_each=G each batch holds
    batch_size/G prompts × G copies. len(dataset) is this process's number of steps. `block`: the multi-host layout
    of ShardedEpochsDataset (batch_size a multiple of it). Returns the grain MapDataset and the spec (pass both to
    `make_iterator`).
    """
    k, p = _process(process_index, process_count)
    if repeat_each < 1:
        raise ValueError(f"repeat_each must be >= 1, got {repeat_each}")
    if repeat_each > 1 and (batch_size is None or batch_size % repeat_each):
        raise ValueError(f"repeat_each={repeat_each} needs a batch_size divisible by it, got {batch_size}")
    ds = grain.MapDataset.source(list(records))
    if block is not None and (batch_size is None or batch_size % block or repeat_each != 1):
        raise ValueError(f"block={block} needs a batch_size that is a multiple of it (got {batch_size}) and "
                         f"repeat_each=1 (got {repeat_each})")
    ds = ShardedEpochsDataset(ds, seed=seed, shuffle=shuffle, num_epochs=num_epochs, shard_index=k,
                              shard_count=p, even_shards=even_shards, block=block)
    if map_fn is not None:
        ds = ds.map(map_fn)
    if batch_size is not None:
        collate = collate_fn or _list_batch
        if repeat_each > 1:
            collate = _RepeatEachCollate(collate, repeat_each)
        ds = ds.batch(batch_size // repeat_each, drop_remainder=drop_remainder, batch_fn=collate)
    spec = PipelineSpec(records_digest=records_digest(records), batch_size=batch_size, seed=seed, shuffle=shuffle,
                        num_epochs=num_epochs, process_index=k, process_count=p, even_shards=even_shards,
                        drop_remainder=drop_remainder, repeat_each=repeat_each, block=block)
    return ds, spec


class PipelineStateError(UserError, ValueError):
    """A saved iterator state (a checkpoint's data position) belongs to a pipeline with other records, seed, batch
    size, epochs or process sharding; resuming from it would not continue the same run."""


class DataIterator:
    """Iterator over a built dataset with a checkpointable state.

    get_state() → a small JSON-serialisable dict (grain's state + the pipeline fingerprint); set_state() refuses a
    state saved by a pipeline with different records/seed/batching/sharding, which would otherwise resume silently
    on different batches. position_state() / set_position_state() are the process-count independent alternative
    that training checkpoints use (a batch count); use one pair or the other on an iterator, not both.
    """

    def __init__(self, dataset: grain.MapDataset, spec: PipelineSpec, *, worker_count: int = 0,
                 worker_buffer_size: int = 1, read_threads: int = 1, prefetch_buffer_size: int = 8):
        self.spec = spec
        self.steps = len(dataset)
        self._dataset = dataset
        self._options = dict(worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                             read_threads=read_threads, prefetch_buffer_size=prefetch_buffer_size)
        self.position = 0  # batches taken so far (restores included)
        self._it = self._open(dataset)

    def _open(self, dataset):
        o = self._options
        ids = dataset.to_iter_dataset(grain.ReadOptions(num_threads=o["read_threads"],
                                                        prefetch_buffer_size=o["prefetch_buffer_size"]))
        if o["worker_count"] > 0:
            ensure_absl_flags_parsed()
            ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=o["worker_count"],
                                                               per_worker_buffer_size=o["worker_buffer_size"]))
        return iter(ids)

    def __iter__(self):
        return self

    def __next__(self):
        out = next(self._it)
        self.position += 1
        return out

    def position_state(self) -> dict:
        """The iterator's place as the number of batches taken: the same on every process of a multi-host run and
        valid for the same run on another process count (needs a process-independent layout: one process or
        `block`). JSON-serialisable."""
        if not self.spec.process_independent:
            raise ValueError("position_state needs one process or the block layout (build_dataset(block=...))")
        return {"global_fingerprint": self.spec.global_fingerprint(), "batches": int(self.position)}

    def set_position_state(self, state: Mapping) -> None:
        """Continue after `state["batches"]` batches (see `position_state`)."""
        if state.get("global_fingerprint") != self.spec.global_fingerprint():
            raise PipelineStateError(
                f"iterator state was saved by a different pipeline (global fingerprint "
                f"{state.get('global_fingerprint')!r} != {self.spec.global_fingerprint()!r}); records, seed, global "
                "batch size or epochs changed")
        n = int(state["batches"])
        self._it = self._open(self._dataset[n:])
        self.position = n

    def get_state(self) -> dict:
        return {"fingerprint": self.spec.fingerprint(), "grain": self._it.get_state()}

    def set_state(self, state: Mapping) -> None:
        if state.get("fingerprint") != self.spec.fingerprint():
            raise PipelineStateError(
                f"iterator state was saved by a different pipeline (fingerprint {state.get('fingerprint')!r} != "
                f"{self.spec.fingerprint()!r}); records, seed, batch size, epochs or process sharding changed")
        self._it.set_state(state["grain"])


def make_iterator(dataset: grain.MapDataset, spec: PipelineSpec, **kwargs) -> DataIterator:
    """kwargs: worker_count (0 = in-process), worker_buffer_size, read_threads, prefetch_buffer_size."""
    return DataIterator(dataset, spec, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# The three pipelines
# ---------------------------------------------------------------------------------------------------------------
def sft_dataset(paths: PreparedPaths, *, map_fn: Callable, batch_size: int, collate_fn: Callable | None = None,
                seed: int = 42, num_epochs: int | None = 1, process_index: int | None = None,
                process_count: int | None = None, require_npy: bool = True):
    """Stage-1 SFT: train_oneturn.json records (sft_records), shuffled with `seed`, one epoch by default
    (VS L55), all matched and not-matched items (`only_neg=False`, VS L126-129).
    Returns (dataset, spec, drop counts)."""
    records, counts = sft_records(paths, require_npy=require_npy)
    ds, spec = build_dataset(records, map_fn=map_fn, batch_size=batch_size, collate_fn=collate_fn, seed=seed,
                             shuffle=True, num_epochs=num_epochs, process_index=process_index,
                             process_count=process_count, even_shards=True, drop_remainder=True)
    return ds, spec, counts


def grpo_dataset(paths: PreparedPaths, *, map_fn: Callable, batch_size: int, repeat_each: int = 1,
                 collate_fn: Callable | None = None, seed: int = 42, num_epochs: int | None = 1,
                 hard_negative_k: int = 24, process_index: int | None = None, process_count: int | None = None,
                 require_npy: bool = True):
    """Stage-2 GRPO prompts: train.minimal_top1.jsonl records with ≤K hard negatives (grpo_records).
    `repeat_each=G` puts the G copies of a prompt together (TRL RepeatSampler mini_repeat); leave it at 1 when the
    trainer replicates prompts itself. Returns (dataset, spec, counts)."""
    records, counts = grpo_records(paths, hard_negative_k=hard_negative_k, require_npy=require_npy)
    ds, spec = build_dataset(records, map_fn=map_fn, batch_size=batch_size, collate_fn=collate_fn, seed=seed,
                             shuffle=True, num_epochs=num_epochs, process_index=process_index,
                             process_count=process_count, even_shards=True, drop_remainder=True,
                             repeat_each=repeat_each)
    return ds, spec, counts


def eval_dataset(paths: PreparedPaths, *, map_fn: Callable | None, batch_size: int,
                 collate_fn: Callable | None = None, split: str = "test", max_samples: int | None = None,
                 limit_ratio: float | None = None, seed: int = 42, process_index: int | None = None,
                 process_count: int | None = None):
    """Eval queries in raw_annotation order (eval_queries), no shuffle, one pass, process k taking rows
    k, k+P, … (EVAL L2169-2184); the last batch is kept (give the collator `batch_size` to pad it to a fixed shape).
    Returns (dataset, spec, EvalQuerySet)."""
    qs = eval_queries(paths, split, max_samples=max_samples, limit_ratio=limit_ratio, seed=seed)
    ds, spec = build_dataset([q.to_record() for q in qs.queries], map_fn=map_fn, batch_size=batch_size,
                             collate_fn=collate_fn, seed=seed, shuffle=False, num_epochs=1,
                             process_index=process_index, process_count=process_count, even_shards=False,
                             drop_remainder=False)
    return ds, spec, qs
