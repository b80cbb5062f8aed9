"""tensorflow-datasets builder: a prepared dataset's SFT items, GRPO rows or eval queries → ArrayRecord shards that
`tfds.data_source` / `builder.as_data_source` and grain read without TensorFlow (environment.md §5)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from vsr1_jax.data.files import read_docid2row, read_video_npy
from vsr1_jax.data.paths import PreparedPaths
from vsr1_jax.data.queries import eval_queries, grpo_records, sft_records

KINDS = ("sft", "grpo", "eval")
DATA_VERSION = "1.0.0"


class Vsr1Config(tfds.core.BuilderConfig):
    """One (dataset, kind, embed_frames) combination. The name, e.g. `charades_sta_grpo`, is also the folder."""

    def __init__(self, *, dataset: str, kind: str, embed_frames: bool = False,
                 eval_splits: Sequence[str] = ("test",), hard_negative_k: int = 24,
                 eval_max_samples: int | None = None,
                 eval_limit_ratio: float | None = None, seed: int = 42):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if embed_frames and kind == "eval":
            raise ValueError("embed_frames is for sft/grpo: an eval query's video is only known after retrieval")
        name = config_name(dataset, kind, embed_frames)
        super().__init__(name=name, version=DATA_VERSION,
                         description=f"vsr1_jax {kind} rows of prepared dataset {dataset!r}")
        self.dataset, self.kind, self.embed_frames = dataset, kind, embed_frames
        self.eval_splits = tuple(eval_splits)
        self.hard_negative_k = hard_negative_k
        self.eval_max_samples, self.eval_limit_ratio, self.seed = eval_max_samples, eval_limit_ratio, seed


def config_name(dataset: str, kind: str, embed_frames: bool = False) -> str:
    """tfds config names are identifiers: `charades-sta` + `sft` → `charades_sta_sft` (+ `_frames`)."""
    base = re.sub(r"[^0-9a-zA-Z]+", "_", dataset).strip("_").lower() or "dataset"
    return f"{base}_{kind}" + ("_frames" if embed_frames else "")


def _text():
    return tfds.features.Text()


def _f64(shape=()):
    # tfds serialises through tf.train.Example, whose float lists are float32; raw bytes keep seconds exact.
    return tfds.features.Tensor(shape=shape, dtype=np.float64, encoding="bytes")


def _features(kind: str, embed_frames: bool) -> tfds.features.FeaturesDict:
    t = _text
    if kind == "sft":
        feats = {
            "index": np.int64, "qid": t(), "query": t(),
            "messages": tfds.features.Sequence({"role": t(), "content": t()}),
            "video_id": t(), "pos_video_id": t(), "gold_label": t(), "pair_id": t(),
            "hard_negative_ids": tfds.features.Sequence(t()),
            "pos_row": np.int64, "video_row": np.int64,
        }
    elif kind == "grpo":
        feats = {
            "problem_id": np.int64, "qid": t(), "query": t(), "gt_video": t(),
            "gt_time": _f64((2,)), "has_gt_time": np.bool_, "gt_duration": _f64(),
            "retrieved_video": t(), "label": t(), "is_augmented": np.bool_,
            "hard_negative_ids": tfds.features.Sequence(t()),
            "gt_row": np.int64, "hard_negative_rows": tfds.features.Tensor(shape=(None,), dtype=np.int64),
        }
    else:
        feats = {
            "index": np.int64, "qid": t(), "query": t(), "gt_doc_id": t(), "gt_start": _f64(), "gt_end": _f64(),
            "duration": _f64(), "q_row": np.int64, "pos_row": np.int64,
        }
    feats = {k: (tfds.features.Scalar(dtype=v) if isinstance(v, type) else v) for k, v in feats.items()}
    if embed_frames:
        feats["frames"] = tfds.features.Tensor(shape=(None, None, None, 3), dtype=np.uint8, encoding="zlib")
    return tfds.features.FeaturesDict(feats)


class Vsr1Prepared(tfds.core.GeneratorBasedBuilder):
    """Builder over one prepared dataset root. Build with `make_builder(...)`; read back with
    `builder.as_data_source(split)`, `tfds.data_source("vsr1_prepared/<config>", data_dir=...)` or `load_data_source`.

    Splits: sft/grpo → "train"; eval → the config's eval_splits (default "test"). Example keys: SFT `index`
    (position in train_oneturn.json), GRPO `problem_id`, eval `index` (row of raw_annotation after limiting).
    ArrayRecord shards are shuffled on write, so read by key, not by position.

    Videos are referenced by id by default (`video_id` / `retrieved_video` name `<split>/video_npy_with_meta/<id>.npy`):
    one video serves many rows, and a 64-frame stack is up to ~38 MB (64 × 200,704 px × 3), so embedding it would
    copy it once per row. `embed_frames=True` (SFT/GRPO) stores the top-1 frames as a zlib-compressed uint8
    [T, H, W, 3] `frames` tensor instead, for self-contained shards.
    """

    VERSION = tfds.core.Version(DATA_VERSION)
    RELEASE_NOTES = {DATA_VERSION: "SFT / GRPO / eval rows of a prepared VideoSearch-R1 dataset."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # tfds locates a builder defined inside a package through `importlib_resources`, which is not installed
        # (not a tfds requirement either); all it uses the path for is an optional checksums.tsv beside it.
        return epath.Path(__file__)

    def __init__(self, *, prepared: PreparedPaths | None = None, config: Vsr1Config, **kwargs):
        self._prepared = prepared
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(builder=self, features=_features(cfg.kind, cfg.embed_frames))

    def _split_generators(self, dl_manager):
        if self._prepared is None:
            raise ValueError("this builder was created without `prepared=`; it can read existing shards only")
        cfg = self.builder_config
        if cfg.kind == "eval":
            return {s: self._generate_examples(s) for s in cfg.eval_splits}
        return {"train": self._generate_examples("train")}

    def _generate_examples(self, split: str):
        cfg, paths = self.builder_config, self._prepared
        if cfg.kind == "sft":
            docid2row = read_docid2row(paths.docid2row("train"))
            records, _ = sft_records(paths, docid2row=docid2row, require_npy=cfg.embed_frames)
            for rec in records:
                i = rec["index"]
                ex = {
                    "index": i, "qid": rec["qid"], "query": rec["query"],
                    "messages": [{"role": m["role"], "content": _as_text(m["content"])} for m in rec["messages"]],
                    "video_id": rec["video_id"], "pos_video_id": rec["pos_video_id"],
                    "gold_label": rec["gold_label"], "pair_id": rec["pair_id"],
                    "hard_negative_ids": rec["hard_negative_ids"], "pos_row": rec["pos_row"],
                    "video_row": rec["video_row"],
                }
                if cfg.embed_frames:
                    ex["frames"] = read_video_npy(paths.video_npy("train", rec["video_id"]))
                yield i, ex
        elif cfg.kind == "grpo":
            docid2row = read_docid2row(paths.docid2row("train"))
            records, _ = grpo_records(paths, docid2row=docid2row, hard_negative_k=cfg.hard_negative_k,
                                      require_npy=cfg.embed_frames)
            for rec in records:
                ex = {k: rec[k] for k in ("problem_id", "qid", "query", "gt_video", "gt_time", "has_gt_time",
                                          "gt_duration", "retrieved_video", "label", "is_augmented",
                                          "hard_negative_ids", "gt_row")}
                ex["hard_negative_rows"] = np.asarray(rec["hard_negative_rows"], dtype=np.int64)
                if cfg.embed_frames:
                    ex["frames"] = read_video_npy(paths.video_npy("train", rec["retrieved_video"]))
                yield rec["problem_id"], ex
        else:
            qs = eval_queries(paths, split, max_samples=cfg.eval_max_samples,
                              limit_ratio=cfg.eval_limit_ratio, seed=cfg.seed)
            for q in qs.queries:
                rec = q.to_record()
                rec["duration"] = float("nan") if rec["duration"] is None else rec["duration"]
                yield q.index, rec


def _as_text(content: Any) -> str:
    # SFT message contents are strings in the original; anything else is stored as its JSON text.
    if isinstance(content, str):
        return content
    return json.dumps(content, ensure_ascii=False)


def make_builder(prepared: PreparedPaths | None, data_dir: str | Path, *, kind: str,
                 dataset: str | None = None, embed_frames: bool = False, **config_kwargs) -> Vsr1Prepared:
    """A builder for `prepared` (or, with prepared=None, for reading shards built earlier) under `data_dir`.

    config_kwargs: eval_splits, hard_negative_k, eval_max_samples, eval_limit_ratio, seed (see Vsr1Config).
    """
    name = dataset or (prepared.dataset if prepared is not None else None)
    if name is None:
        raise ValueError("give `dataset` when `prepared` is None")
    cfg = Vsr1Config(dataset=name, kind=kind, embed_frames=embed_frames, **config_kwargs)
    # ArrayRecord is the one format readable without TensorFlow (environment.md §5); set here, not in
    # download_and_prepare, because tfds refuses a format override once the info of an existing build is loaded.
    return Vsr1Prepared(prepared=prepared, config=cfg, data_dir=str(data_dir), file_format="array_record")


def build(prepared: PreparedPaths, data_dir: str | Path, *, kind: str, embed_frames: bool = False,
          overwrite: bool = False, **config_kwargs) -> Vsr1Prepared:
    """Write the ArrayRecord shards (`download_and_prepare` with file_format='array_record', the one format that
    works without TensorFlow) and return the builder. Existing shards of the same config are reused unless `overwrite`
    (tfds keys them by config name and version, not by the prepared files' content)."""
    builder = make_builder(prepared, data_dir, kind=kind, embed_frames=embed_frames, **config_kwargs)
    mode = tfds.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite else tfds.GenerateMode.REUSE_DATASET_IF_EXISTS
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    return builder


def load_data_source(data_dir: str | Path, dataset: str, kind: str, split: str, *, embed_frames: bool = False):
    """Random-access source over built shards, read from the folder alone (no builder class or prepared data
    needed): `tfds.builder_from_directory(<data_dir>/vsr1_prepared/<config>/<version>)`."""
    d = Path(data_dir) / "vsr1_prepared" / config_name(dataset, kind, embed_frames) / DATA_VERSION
    if not d.is_dir():
        raise FileNotFoundError(f"{d} not found: build it with vsr1_jax.data.tfds_builder.build(...)")
    return tfds.builder_from_directory(str(d)).as_data_source(split=split)


def decode_example(ex: Mapping[str, Any]) -> dict:
    """tfds returns Text as bytes, Sequence({…}) as a dict of lists and float64 scalars as 0-d arrays; give back
    str, a list of dicts and numpy scalars, so a decoded example looks like the layout record it came from."""
    out = {}
    for k, v in ex.items():
        if isinstance(v, bytes):
            out[k] = v.decode("utf-8")
        elif isinstance(v, dict):  # Sequence of FeaturesDict → list of dicts
            keys = list(v)
            n = len(v[keys[0]]) if keys else 0
            out[k] = [{kk: _dec(v[kk][i]) for kk in keys} for i in range(n)]
        elif isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.dtype == object):
            out[k] = [_dec(x) for x in v]
        elif isinstance(v, np.ndarray) and v.ndim == 0:  # bytes-encoded float64 scalars come back 0-d
            out[k] = v[()]
        else:
            out[k] = v
    return out


def _dec(x):
    return x.decode("utf-8") if isinstance(x, bytes) else x
