"""The converter's two directions, each bit-exact (spec README decision 8) and streamed tensor by tensor:
`hf_to_orbax` (an HF folder -> a converted folder, ckpt/layout.py) and `orbax_to_hf` (back: every tensor rebuilt from
params/ through the key table of models/qwen3_vl/params.py in the recorded order and dtype, written as safetensors,
sharded with an index above max_shard_size, plus the copied files). Both write into a temporary folder next to DST
and rename it at the end; a failure leaves nothing behind.
"""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np

from vsr1_jax.ckpt import orbax_io
from vsr1_jax.ckpt.hf_read import Source, close_source, inspect_hf, read_arrays, source_meta
from vsr1_jax.ckpt.layout import (CAST_DTYPES, CONFIG_FILE, DEFAULT_MAX_SHARD_SIZE, EMBEDDER_DIR, HF_FILES_DIR,
                                  META_FILE, PARAMS_DIR, ConvertError, check_dst, copy_files, dump_meta, flatten,
                                  layout_rules, load_cfg, nest, non_weight_files, progress, read_meta, staging)
from vsr1_jax.ckpt.safetensors_io import INDEX_FILE, ST_DTYPES, SafetensorsError, parse_size, write_safetensors
from vsr1_jax.models.qwen3_vl import params as P
from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig


# ---- HF -> orbax ------------------------------------------------------------------------------------------------

def _write_orbax(s: Source, out: str, dtype: str | None, quiet: bool) -> None:
    model, sqr = read_arrays(s, dtype, quiet)
    tree = {"model": nest(model)}
    if sqr:
        tree["sqr"] = nest(sqr)
    orbax_io.save_params(os.path.join(out, PARAMS_DIR), tree)
    meta = source_meta(s, model, sqr)
    del model, sqr, tree
    shutil.copyfile(os.path.join(s.src, CONFIG_FILE), os.path.join(out, CONFIG_FILE))
    os.makedirs(os.path.join(out, HF_FILES_DIR))
    copy_files(s.src, os.path.join(out, HF_FILES_DIR), s.files)
    if s.embedder is not None:
        emb = os.path.join(out, EMBEDDER_DIR)
        os.makedirs(emb)
        _write_orbax(s.embedder, emb, dtype, quiet)
    # Written last: a folder with vsr1_checkpoint.json is complete.
    with open(os.path.join(out, META_FILE), "w") as f:
        f.write(dump_meta(meta))


def hf_to_orbax(src: str, dst: str, *, dtype: str | None = None, overwrite: bool = False,
                quiet: bool = False) -> str:
    """Convert an HF folder (plain Qwen3-VL, Qwen3-VL-Embedding or released VideoSearch-R1) into DST. Returns DST.

    dtype: cast every parameter ("float32" | "bfloat16" | "float16"); None keeps the checkpoint's dtypes.
    """
    if dtype is not None and dtype not in CAST_DTYPES:
        raise ConvertError(f"dtype {dtype!r} not supported; choose one of {sorted(CAST_DTYPES)}")
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    check_dst(src, dst)
    if os.path.lexists(dst) and not overwrite:  # fail before reading anything
        raise ConvertError(f"{dst} already exists; pass --overwrite (overwrite=True) to replace it")
    s = inspect_hf(src)
    try:
        with staging(dst, overwrite) as tmp:
            _write_orbax(s, tmp, dtype, quiet)
    finally:
        close_source(s)
    return dst


# ---- orbax -> HF ------------------------------------------------------------------------------------------------

def _hf_entries(meta: dict, cfg: Qwen3VLConfig) -> dict[str, P.Entry]:
    entries = {e.hf: e for e in P.expand(layout_rules(cfg, meta["key_prefix"]))}
    if meta.get("sqr"):
        entries.update({e.hf: e for e in P.expand(P.sqr_rules())})
    if meta.get("dropped_tied_lm_head"):
        entries["lm_head.weight"] = P.Entry("lm_head.weight", ("text", "embed"), "copy", None)
    return entries


def _write_hf(src: str, out: str, max_shard: int, dtype: str | None, quiet: bool) -> None:
    meta = read_meta(src)
    cfg = load_cfg(src)
    entries = _hf_entries(meta, cfg)
    items = []
    for t in meta["hf_tensors"]:
        if t["key"] not in entries:
            raise ConvertError(f"{src}/{META_FILE}: tensor {t['key']!r} has no rule in the key table")
        dt = t["dtype"] if dtype is None or t["dtype"] not in ("F32", "F16", "BF16", "F64") else CAST_DTYPES[dtype]
        items.append((t["key"], dt, tuple(t["shape"])))
    tree = orbax_io.restore_params(os.path.join(src, PARAMS_DIR))
    flat = {("model",) + k: v for k, v in flatten(tree["model"]).items()}
    flat.update({("sqr",) + k: v for k, v in flatten(tree.get("sqr", {})).items()})
    del tree
    dtypes = {k: d for k, d, _ in items}
    shapes = {k: s for k, _, s in items}

    def get(key: str) -> np.ndarray:
        e = entries[key]
        path = e.ours if e.ours[0] == "sqr" else ("model",) + e.ours
        if path not in flat:
            raise ConvertError(f"{src}/{PARAMS_DIR}: no parameter {'/'.join(path)} (needed for {key})")
        x = np.asarray(flat[path])
        if e.index is not None:
            x = x[e.index]
        y = P.ours_to_hf(x, e.kind, shapes[key])
        if tuple(y.shape) != shapes[key]:
            raise ConvertError(f"{src}/{PARAMS_DIR}: {'/'.join(path)} gives {key} of shape {tuple(y.shape)}, "
                               f"expected {shapes[key]}")
        return y.astype(ST_DTYPES[dtypes[key]], copy=False)

    # Shards as transformers makes them: fill in order, start a new file when the next tensor would not fit.
    shards: list[list] = [[]]
    size = 0
    for it in items:
        n = math.prod(it[2]) * ST_DTYPES[it[1]].itemsize
        if shards[-1] and size + n > max_shard:
            shards.append([])
            size = 0
        shards[-1].append(it)
        size += n
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    total = sum(math.prod(s) * ST_DTYPES[d].itemsize for _, d, s in items)
    with progress(total, os.path.basename(src) or src, quiet) as bar:
        for name, shard in zip(names, shards):
            write_safetensors(os.path.join(out, name), shard, get, bar.update)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k, _, _ in shard}}
        with open(os.path.join(out, INDEX_FILE), "w") as f:
            json.dump(index, f, indent=2)
    del flat
    shutil.copyfile(os.path.join(src, CONFIG_FILE), os.path.join(out, CONFIG_FILE))
    files_dir = os.path.join(src, HF_FILES_DIR)
    if os.path.isdir(files_dir):
        copy_files(files_dir, out, non_weight_files(files_dir, set()))
    if meta.get("query_embedder"):
        emb = os.path.join(out, meta["query_embedder"])
        os.makedirs(emb, exist_ok=True)
        _write_hf(os.path.join(src, meta["query_embedder"]), emb, max_shard, dtype, quiet)


def orbax_to_hf(src: str, dst: str, *, max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
                dtype: str | None = None, overwrite: bool = False, quiet: bool = False) -> str:
    """Write a converted checkpoint back as an HF folder (the original keys, order and dtypes). Returns DST.

    dtype: write floating tensors in this dtype instead of their recorded ones.
    """
    if dtype is not None and dtype not in CAST_DTYPES:
        raise ConvertError(f"dtype {dtype!r} not supported; choose one of {sorted(CAST_DTYPES)}")
    try:
        max_shard = parse_size(max_shard_size)
    except SafetensorsError as e:
        raise ConvertError(str(e)) from None
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    check_dst(src, dst)
    meta = read_meta(src)
    if meta.get("query_embedder"):
        read_meta(os.path.join(src, meta["query_embedder"]))
    with staging(dst, overwrite) as tmp:
        _write_hf(src, tmp, max_shard, dtype, quiet)
    return dst
