"""Convert Qwen3-VL / Qwen3-VL-Embedding / released VideoSearch-R1 HF folders to orbax and back, bit-exactly
(spec README decision 8). Safetensors are streamed tensor by tensor through a memory map, both ways.

CLI:  python -m vsr1_jax.convert hf-to-orbax SRC DST [--dtype float32|bfloat16|float16] [--overwrite] [-q]
      python -m vsr1_jax.convert orbax-to-hf SRC DST [--max-shard-size 5GB] [--dtype ...] [--overwrite] [-q]
      python -m vsr1_jax.convert init-stage1 POLICY EMBEDDER DST [--seed 0] [--overwrite] [-q]   (the Stage-1 start)

DST layout (one folder per model; the query embedder nests the same layout):
  vsr1_checkpoint.json  format + version, kind ("qwen3_vl" | "videosearch_r1"), source path, key layout and prefix
                        ("model." for Qwen3VLForConditionalGeneration, "" for Qwen3VLModel), tie_word_embeddings,
                        whether a redundant tied lm_head.weight was dropped, dtypes (source and in params/), SQR dims
                        {policy_hidden H, retrieval_dim D, embedder_hidden He}, every HF tensor {key, dtype (safetensors
                        code), shape} in the source order, the copied non-weight files.
  config.json           the source config.json, verbatim.
  params/               orbax StandardSave of {"model": Qwen3VL params, "sqr": SQRHead params (released only)}:
                        nested dicts as `nnx.state(...)` paths, layers stacked, kernels (in, out).
  hf_files/             every other non-weight file of SRC, verbatim (tokenizer, chat template, generation_config,
                        preprocessor configs, ...), sub-folders included except query_embedder/.
  query_embedder/       the released checkpoint's query embedder, converted recursively.
orbax-to-hf rebuilds every tensor from params/ through the same key table (`models/qwen3_vl/params.py`), in the
recorded order and dtype, and writes safetensors (sharded with an index above --max-shard-size) plus the files.
Everything is written into a temporary folder next to DST and renamed at the end; failures leave nothing behind.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections import defaultdict
from typing import Iterable

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from vsr1_jax import checkpoint
from vsr1_jax.errors import UserError, run_cli
from vsr1_jax.models.qwen3_vl import params as P
from vsr1_jax.models.qwen3_vl.config import ConfigError, Qwen3VLConfig
from vsr1_jax.models.qwen3_vl.model import abstract_model
from vsr1_jax.models.sqr import SQRConfig, SQRHead
from vsr1_jax.processing.special_tokens import REFINE_TOKEN
from vsr1_jax.processing.tokenizer import load_tokenizer
from vsr1_jax.safetensors_io import (INDEX_FILE, NP_TO_ST, ST_DTYPES, SafetensorsError, SafetensorsFolder,
                                     parse_size, write_safetensors)

log = logging.getLogger(__name__)

FORMAT = "vsr1_checkpoint"
FORMAT_VERSION = 1
META_FILE = "vsr1_checkpoint.json"
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
HF_FILES_DIR = "hf_files"
EMBEDDER_DIR = "query_embedder"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
DEFAULT_MAX_SHARD_SIZE = "5GB"

_CAST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


class ConvertError(UserError):
    """A checkpoint cannot be converted; the message names the file, key or field and what is wrong."""


# ---- what a source folder holds ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Converted:
    """A checkpoint in our layout. params / sqr_params are nested dicts of numpy (or jax) arrays shaped like
    `nnx.state(Qwen3VL)` / `nnx.state(SQRHead)`, ready for `nnx.update` (device_put them first to place/shard)."""
    cfg: Qwen3VLConfig
    params: dict
    sqr_params: dict | None
    sqr_cfg: object | None            # vsr1_jax.models.sqr.SQRConfig
    embedder: "Converted | None"
    tokenizer_dir: str | None
    meta: dict = dataclasses.field(default_factory=dict)  # the vsr1_checkpoint.json content


@dataclasses.dataclass
class _Source:
    src: str
    cfg: Qwen3VLConfig
    tensors: SafetensorsFolder
    prefix: str                       # "model." | ""
    entries: list[P.Entry]            # model entries in source-key order
    sqr_entries: list[P.Entry]
    shapes: dict                      # ours path (model: plain; sqr: ("sqr", ...)) -> (shape, dtype)
    sqr_dims: dict | None
    dropped_lm_head: bool
    files: list[str]                  # non-weight files, relative
    embedder: "_Source | None"

    @property
    def kind(self) -> str:
        return "videosearch_r1" if self.sqr_entries else "qwen3_vl"


def _listing(keys: Iterable[str], n: int = 12) -> str:
    keys = list(keys)
    more = f" … and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _layout_rules(cfg: Qwen3VLConfig, prefix: str) -> list[P.Rule]:
    # params.model_rules spells the Qwen3VLForConditionalGeneration keys; Qwen3VLModel drops the leading "model.".
    rules = P.model_rules(cfg)
    if prefix == "model.":
        return rules
    return [dataclasses.replace(r, hf=r.hf.removeprefix("model.")) for r in rules]


def _sqr_shapes(dims: dict) -> dict:
    cfg = SQRConfig(policy_hidden=dims["policy_hidden"], retrieval_dim=dims["retrieval_dim"],
                    embedder_hidden=dims["embedder_hidden"])
    head = nnx.eval_shape(lambda: SQRHead(cfg, rngs=nnx.Rngs(0)))
    return {("sqr",) + k: v for k, v in P.flat_shapes(head).items()}


def _sqr_config(dims: dict | None):
    if dims is None:
        return None
    return SQRConfig(policy_hidden=dims["policy_hidden"], retrieval_dim=dims["retrieval_dim"],
                     embedder_hidden=dims["embedder_hidden"])


def _non_weight_files(src: str, skip: set[str]) -> list[str]:
    out = []
    for root, dirs, files in os.walk(src):
        rel_root = os.path.relpath(root, src)
        if rel_root == ".":
            dirs[:] = [d for d in dirs if d != EMBEDDER_DIR]
        dirs.sort()
        for name in sorted(files):
            rel = os.path.normpath(os.path.join(rel_root, name))
            if rel not in skip:
                out.append(rel)
    return out


def _check_refine_token(src: str, cfg: Qwen3VLConfig) -> None:
    """The released tokenizer adds <REFINE> and the embedding was resized to hold it (sqr_and_sft.md §3)."""
    path = os.path.join(src, "tokenizer.json")
    if not os.path.exists(path):
        log.warning("%s: no tokenizer.json next to the refine_* tensors; <REFINE> cannot be checked", src)
        return
    try:
        with open(path) as f:
            added = json.load(f).get("added_tokens") or []
    except (OSError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: cannot read ({e})") from None
    ids = [t.get("id") for t in added if t.get("content") == REFINE_TOKEN]
    if not ids:
        log.warning("%s: the tokenizer has no %s token although refine_* tensors are present", path, REFINE_TOKEN)
    elif ids[0] >= cfg.text.vocab_size:
        raise ConvertError(f"{path}: {REFINE_TOKEN} has id {ids[0]} but the embedding has only "
                           f"{cfg.text.vocab_size} rows (config.json text_config.vocab_size)")


def _inspect(src: str) -> _Source:
    """Open an HF folder and check everything that can be checked from headers, before any data is read."""
    src = os.path.abspath(src)
    if not os.path.isdir(src):
        raise ConvertError(f"{src}: no such folder")
    if not os.path.exists(os.path.join(src, CONFIG_FILE)):
        raise ConvertError(f"{src}: no config.json (not a Hugging Face model folder)")
    try:
        cfg = Qwen3VLConfig.from_json(src)
    except ConfigError as e:
        raise ConvertError(str(e)) from None
    try:
        tensors = SafetensorsFolder(src)
    except SafetensorsError as e:
        raise ConvertError(str(e)) from None
    try:
        keys = tensors.keys
        if any(k.startswith(("model.language_model.", "model.visual.")) for k in keys):
            prefix = "model."
        elif any(k.startswith(("language_model.", "visual.")) for k in keys):
            prefix = ""
        else:
            raise ConvertError(f"{src}: no Qwen3-VL tensors (model.language_model.* / language_model.*) among "
                               f"the keys: {_listing(keys, 8)}")
        rules = _layout_rules(cfg, prefix)
        shapes = dict(P.flat_shapes(abstract_model(cfg)))
        present = set(keys)
        by_hf = {e.hf: e for e in P.expand(rules)}

        dropped = False
        if cfg.tie_word_embeddings and "lm_head.weight" in present:
            embed_key = prefix + "language_model.embed_tokens.weight"
            if embed_key in present and not _same_bytes(tensors, "lm_head.weight", embed_key):
                raise ConvertError(f"{src}: tie_word_embeddings is true but lm_head.weight differs from {embed_key}")
            log.warning("%s: tied checkpoint stores lm_head.weight (equal to the embedding); dropped, and written "
                        "back as a copy of the embedding", src)
            dropped = True

        sqr_by_hf: dict[str, P.Entry] = {}
        sqr_dims = None
        if any(k.startswith("refine_") for k in keys):
            sqr_by_hf = {e.hf: e for e in P.expand(P.sqr_rules())}
            missing = [k for k in sqr_by_hf if k not in present]
            if missing:
                raise ConvertError(f"{src}: refine_* tensors are incomplete; missing keys: {_listing(missing)}")
            p0 = tensors.info("refine_projector.0.weight").shape
            sqr_dims = {"policy_hidden": p0[1] if len(p0) == 2 else -1, "retrieval_dim": p0[0],
                        "embedder_hidden": tensors.info("refine_append_input_projector.1.weight").shape[0]}
            if sqr_dims["policy_hidden"] != cfg.text.hidden_size:
                raise ConvertError(f"{src}: shape mismatch: refine_projector.0.weight expected (D, "
                                   f"{cfg.text.hidden_size}) (policy hidden size), got {p0}")
            shapes.update(_sqr_shapes(sqr_dims))

        known = set(by_hf) | set(sqr_by_hf) | ({"lm_head.weight"} if dropped else set())
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise ConvertError(f"{src}: {len(unknown)} unknown tensor keys (not Qwen3-VL "
                               f"{'Qwen3VLForConditionalGeneration' if prefix else 'Qwen3VLModel'} layout or "
                               f"refine_*): {_listing(unknown)}")
        missing = [k for k in by_hf if k not in present]
        if missing:
            raise ConvertError(f"{src}: {len(missing)} tensors missing from the checkpoint: {_listing(missing)}")
        bad = []
        for hf, e in list(by_hf.items()) + list(sqr_by_hf.items()):
            want = P.expected_hf_shape(e, shapes[e.ours][0], cfg)
            got = tensors.info(hf).shape
            if tuple(want) != tuple(got):
                bad.append(f"{hf}: expected {tuple(want)}, got {tuple(got)}")
        if bad:
            raise ConvertError(f"{src}: shape mismatch: " + "; ".join(bad[:8]) +
                               (f" … and {len(bad) - 8} more" if len(bad) > 8 else ""))

        order = {k: i for i, k in enumerate(keys)}
        entries = sorted(by_hf.values(), key=lambda e: order[e.hf])
        sqr_entries = sorted(sqr_by_hf.values(), key=lambda e: order[e.hf])
        if sqr_entries:
            _check_refine_token(src, cfg)
        skip = {CONFIG_FILE} | set(tensors.file_names) | {INDEX_FILE}
        files = _non_weight_files(src, skip)
        embedder = None
        emb_dir = os.path.join(src, EMBEDDER_DIR)
        if os.path.isdir(emb_dir):
            embedder = _inspect(emb_dir)
            if sqr_dims and embedder.cfg.text.hidden_size != sqr_dims["embedder_hidden"]:
                raise ConvertError(f"{src}: refine_append_input_projector.1.weight outputs "
                                   f"{sqr_dims['embedder_hidden']} dims but {EMBEDDER_DIR}/ has hidden_size "
                                   f"{embedder.cfg.text.hidden_size}")
        elif sqr_entries:
            log.warning("%s: refine_* tensors but no %s/ folder; converting the policy alone", src, EMBEDDER_DIR)
        return _Source(src, cfg, tensors, prefix, entries, sqr_entries, shapes, sqr_dims, dropped, files, embedder)
    except BaseException:
        tensors.close()
        raise


def _same_bytes(tensors: SafetensorsFolder, a: str, b: str) -> bool:
    ia, ib = tensors.info(a), tensors.info(b)
    if ia.shape != ib.shape:
        return False
    x, y = tensors.get(a), tensors.get(b)
    if ia.dtype == ib.dtype:
        return bool(np.array_equal(x.view(np.uint8), y.view(np.uint8)))
    return bool(np.array_equal(x.astype(np.float32), y.astype(np.float32)))


def _progress(total: int, desc: str, quiet: bool):
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=quiet, leave=False, dynamic_ncols=True)


def _read(s: _Source, dtype: str | None, quiet: bool) -> tuple[dict, dict]:
    """Assemble our (layer-stacked) arrays tensor by tensor. Returns (model flat, sqr flat) {path: array}."""
    cast = None if dtype is None else ST_DTYPES[_CAST_DTYPES[dtype]]
    all_entries = s.entries + s.sqr_entries
    groups: dict[tuple, list[P.Entry]] = defaultdict(list)
    for e in all_entries:
        groups[e.ours].append(e)
    out: dict = {}
    total = sum(s.tensors.info(e.hf).nbytes for e in all_entries)
    with _progress(total, os.path.basename(s.src) or s.src, quiet) as bar:
        def tick(e):
            bar.update(s.tensors.info(e.hf).nbytes)

        for path, group in groups.items():
            dt = cast
            if dt is None:
                kinds = {s.tensors.info(e.hf).dtype for e in group}
                # A stacked array mixing dtypes (rare) is widened so the way back can restore each one exactly.
                dt = None if len(kinds) == 1 else np.dtype(np.float64 if "F64" in kinds else np.float32)
            try:
                got = P.assemble(group, s.shapes, s.tensors.get, dtype=dt, on_tensor=tick)
            except ValueError as e:
                raise ConvertError(f"{s.src}: {e}") from None
            out.update(got)
            if got[path].flags.owndata:  # copied (stacked / transposed / cast): the file pages are not needed
                for e in group:
                    s.tensors.release(e.hf)
    model = {k: v for k, v in out.items() if k[0] != "sqr"}
    sqr = {k[1:]: v for k, v in out.items() if k[0] == "sqr"}
    return model, sqr


def _nest(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        for p in path[:-1]:
            d = d.setdefault(p, {})
        d[path[-1]] = v
    return out


def _flatten(tree: dict, prefix: tuple = ()) -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _dtype_names(flat: dict) -> str | list[str]:
    names = sorted({str(np.dtype(v.dtype)) for v in flat.values()})
    return names[0] if len(names) == 1 else names


def _meta(s: _Source, model: dict, sqr: dict) -> dict:
    keys = [e.hf for e in s.entries + s.sqr_entries] + (["lm_head.weight"] if s.dropped_lm_head else [])
    order = {k: i for i, k in enumerate(s.tensors.keys)}
    keys.sort(key=order.__getitem__)
    tensors = [{"key": k, "dtype": s.tensors.info(k).dtype, "shape": list(s.tensors.info(k).shape)} for k in keys]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": s.kind,
        "source": s.src,
        "key_layout": "Qwen3VLForConditionalGeneration" if s.prefix else "Qwen3VLModel",
        "key_prefix": s.prefix,
        "tie_word_embeddings": s.cfg.tie_word_embeddings,
        "dropped_tied_lm_head": s.dropped_lm_head,
        "source_dtypes": sorted({t["dtype"] for t in tensors}),
        "param_dtypes": {"model": _dtype_names(model), **({"sqr": _dtype_names(sqr)} if sqr else {})},
        "sqr": s.sqr_dims,
        "hf_tensors": tensors,
        "hf_files": s.files,
        "query_embedder": EMBEDDER_DIR if s.embedder is not None else None,
    }


def _dump_meta(meta: dict) -> str:
    """Indented JSON with one line per HF tensor (a 4B checkpoint lists ~700), so it stays readable."""
    head = json.dumps({k: v for k, v in meta.items() if k != "hf_tensors"}, indent=1)
    rows = ",\n".join("  " + json.dumps(t) for t in meta["hf_tensors"])
    return head[:-2] + ',\n "hf_tensors": [\n' + rows + "\n ]\n}\n"


def _tokenizer_dir(folder: str) -> str | None:
    return folder if any(os.path.exists(os.path.join(folder, n)) for n in TOKENIZER_FILES) else None


def _close(s: _Source | None) -> None:
    while s is not None:
        s.tensors.close()
        s = s.embedder


# ---- staging: never a half-written DST --------------------------------------------------------------------------

@contextlib.contextmanager
def _staging(dst: str, overwrite: bool):
    """Yield a temp folder next to DST; on success it replaces DST, on any error it (and nothing else) is removed."""
    dst = os.path.abspath(dst)
    if os.path.lexists(dst) and not overwrite:
        raise ConvertError(f"{dst} already exists; pass --overwrite (overwrite=True) to replace it")
    parent = os.path.dirname(dst)
    created = parent
    while not os.path.exists(os.path.dirname(created)):
        created = os.path.dirname(created)
    made_parent = not os.path.exists(parent)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; DST should get the usual permissions
    try:
        yield tmp
        if os.path.lexists(dst):
            old = tmp + ".old"
            os.rename(dst, old)
            try:
                os.rename(tmp, dst)
            except BaseException:
                os.rename(old, dst)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_parent:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _check_dst(src: str, dst: str) -> None:
    # DST inside SRC would be copied into hf_files; SRC inside DST would be deleted by --overwrite.
    s, d = os.path.realpath(src), os.path.realpath(dst)
    if d == s or d.startswith(s + os.sep) or s.startswith(d + os.sep):
        raise ConvertError(f"{dst}: DST must not be SRC, inside SRC, or contain SRC")


def _copy_files(src: str, dst: str, files: list[str]) -> None:
    for rel in files:
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(os.path.join(src, rel), os.path.join(dst, rel))


# ---- HF -> orbax ------------------------------------------------------------------------------------------------

def _write_orbax(s: _Source, out: str, dtype: str | None, quiet: bool) -> None:
    model, sqr = _read(s, dtype, quiet)
    tree = {"model": _nest(model)}
    if sqr:
        tree["sqr"] = _nest(sqr)
    checkpoint.save_params(os.path.join(out, PARAMS_DIR), tree)
    meta = _meta(s, model, sqr)
    del model, sqr, tree
    shutil.copyfile(os.path.join(s.src, CONFIG_FILE), os.path.join(out, CONFIG_FILE))
    os.makedirs(os.path.join(out, HF_FILES_DIR))
    _copy_files(s.src, os.path.join(out, HF_FILES_DIR), s.files)
    if s.embedder is not None:
        emb = os.path.join(out, EMBEDDER_DIR)
        os.makedirs(emb)
        _write_orbax(s.embedder, emb, dtype, quiet)
    # Written last: a folder with vsr1_checkpoint.json is complete.
    with open(os.path.join(out, META_FILE), "w") as f:
        f.write(_dump_meta(meta))


def hf_to_orbax(src: str, dst: str, *, dtype: str | None = None, overwrite: bool = False,
                quiet: bool = False) -> str:
    """Convert an HF folder (plain Qwen3-VL, Qwen3-VL-Embedding or released VideoSearch-R1) into DST. Returns DST.

    dtype: cast every parameter ("float32" | "bfloat16" | "float16"); None keeps the checkpoint's dtypes.
    """
    if dtype is not None and dtype not in _CAST_DTYPES:
        raise ConvertError(f"dtype {dtype!r} not supported; choose one of {sorted(_CAST_DTYPES)}")
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    _check_dst(src, dst)
    if os.path.lexists(dst) and not overwrite:  # fail before reading anything
        raise ConvertError(f"{dst} already exists; pass --overwrite (overwrite=True) to replace it")
    s = _inspect(src)
    try:
        with _staging(dst, overwrite) as tmp:
            _write_orbax(s, tmp, dtype, quiet)
    finally:
        _close(s)
    return dst


def load_hf_folder(src: str, *, dtype: str | None = None, quiet: bool = True) -> Converted:
    """Read an HF folder straight into our layout (in memory, no orbax); the embedder sub-folder too."""
    if dtype is not None and dtype not in _CAST_DTYPES:
        raise ConvertError(f"dtype {dtype!r} not supported; choose one of {sorted(_CAST_DTYPES)}")
    s = _inspect(src)
    try:
        return _load_source(s, dtype, quiet)
    finally:
        _close(s)


def _load_source(s: _Source, dtype: str | None, quiet: bool) -> Converted:
    model, sqr = _read(s, dtype, quiet)
    # Untransposed tensors are still views of the memory-mapped files; give the caller arrays it owns.
    own = lambda flat: {k: v if v.flags.owndata else np.array(v) for k, v in flat.items()}  # noqa: E731
    model, sqr = own(model), own(sqr)
    emb = _load_source(s.embedder, dtype, quiet) if s.embedder is not None else None
    return Converted(cfg=s.cfg, params=_nest(model), sqr_params=_nest(sqr) if sqr else None,
                     sqr_cfg=_sqr_config(s.sqr_dims), embedder=emb, tokenizer_dir=_tokenizer_dir(s.src),
                     meta=_meta(s, model, sqr))


# ---- orbax -> HF ------------------------------------------------------------------------------------------------

def _read_meta(folder: str) -> dict:
    path = os.path.join(folder, META_FILE)
    if not os.path.isdir(folder):
        raise ConvertError(f"{folder}: no such folder")
    if not os.path.exists(path):
        raise ConvertError(f"{folder}: not a converted vsr1 checkpoint (no {META_FILE}; incomplete or not ours)")
    try:
        with open(path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT or not isinstance(meta.get("format_version"), int):
        raise ConvertError(f"{path}: not a {FORMAT} file")
    if meta["format_version"] > FORMAT_VERSION:
        raise ConvertError(f"{path}: format_version {meta['format_version']} is newer than this code "
                           f"({FORMAT_VERSION})")
    for name in (CONFIG_FILE, PARAMS_DIR):
        if not os.path.exists(os.path.join(folder, name)):
            raise ConvertError(f"{folder}: {name} is missing")
    return meta


def _hf_entries(meta: dict, cfg: Qwen3VLConfig) -> dict[str, P.Entry]:
    entries = {e.hf: e for e in P.expand(_layout_rules(cfg, meta["key_prefix"]))}
    if meta.get("sqr"):
        entries.update({e.hf: e for e in P.expand(P.sqr_rules())})
    if meta.get("dropped_tied_lm_head"):
        entries["lm_head.weight"] = P.Entry("lm_head.weight", ("text", "embed"), "copy", None)
    return entries


def _load_cfg(folder: str) -> Qwen3VLConfig:
    try:
        return Qwen3VLConfig.from_json(os.path.join(folder, CONFIG_FILE))
    except ConfigError as e:
        raise ConvertError(str(e)) from None


def _write_hf(src: str, out: str, max_shard: int, dtype: str | None, quiet: bool) -> None:
    meta = _read_meta(src)
    cfg = _load_cfg(src)
    entries = _hf_entries(meta, cfg)
    items = []
    for t in meta["hf_tensors"]:
        if t["key"] not in entries:
            raise ConvertError(f"{src}/{META_FILE}: tensor {t['key']!r} has no rule in the key table")
        dt = t["dtype"] if dtype is None or t["dtype"] not in ("F32", "F16", "BF16", "F64") else _CAST_DTYPES[dtype]
        items.append((t["key"], dt, tuple(t["shape"])))
    tree = checkpoint.restore_params(os.path.join(src, PARAMS_DIR))
    flat = {("model",) + k: v for k, v in _flatten(tree["model"]).items()}
    flat.update({("sqr",) + k: v for k, v in _flatten(tree.get("sqr", {})).items()})
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
    with _progress(total, os.path.basename(src) or src, quiet) as bar:
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
        _copy_files(files_dir, out, _non_weight_files(files_dir, set()))
    if meta.get("query_embedder"):
        emb = os.path.join(out, meta["query_embedder"])
        os.makedirs(emb, exist_ok=True)
        _write_hf(os.path.join(src, meta["query_embedder"]), emb, max_shard, dtype, quiet)


def orbax_to_hf(src: str, dst: str, *, max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
                dtype: str | None = None, overwrite: bool = False, quiet: bool = False) -> str:
    """Write a converted checkpoint back as an HF folder (the original keys, order and dtypes). Returns DST.

    dtype: write floating tensors in this dtype instead of their recorded ones.
    """
    if dtype is not None and dtype not in _CAST_DTYPES:
        raise ConvertError(f"dtype {dtype!r} not supported; choose one of {sorted(_CAST_DTYPES)}")
    try:
        max_shard = parse_size(max_shard_size)
    except SafetensorsError as e:
        raise ConvertError(str(e)) from None
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    _check_dst(src, dst)
    meta = _read_meta(src)
    if meta.get("query_embedder"):
        _read_meta(os.path.join(src, meta["query_embedder"]))
    with _staging(dst, overwrite) as tmp:
        _write_hf(src, tmp, max_shard, dtype, quiet)
    return dst


def load_converted(dst: str, *, target=None) -> Converted:
    """Read a converted folder: config, params, SQR head, embedder, tokenizer folder (DST/hf_files).

    Params come back as numpy (as written) unless `target` is given: a tree {"model": ..., "sqr": ...} of
    `jax.ShapeDtypeStruct` (with shardings) as `checkpoint.restore_params` takes; it applies to this model, the
    embedder is restored as written.
    """
    dst = os.path.abspath(dst)
    meta = _read_meta(dst)
    cfg = _load_cfg(dst)
    tree = checkpoint.restore_params(os.path.join(dst, PARAMS_DIR), target=target)
    emb = None
    if meta.get("query_embedder"):
        emb = load_converted(os.path.join(dst, meta["query_embedder"]))
    return Converted(cfg=cfg, params=tree["model"], sqr_params=tree.get("sqr"), sqr_cfg=_sqr_config(meta.get("sqr")),
                     embedder=emb, tokenizer_dir=_tokenizer_dir(os.path.join(dst, HF_FILES_DIR)), meta=meta)


# ---- in-memory models -> a released-layout HF folder ----------------------------------------------------------

def _export_meta(cfg: Qwen3VLConfig, model: dict, sqr: dict | None, sqr_dims: dict | None, files: list[str],
                 with_embedder: bool) -> dict:
    """vsr1_checkpoint.json for params that came from training, not from a source folder: the HF keys in the key
    table's order, each in its parameter's dtype."""
    flat = {**{k: v for k, v in _flatten(model).items()},
            **({("sqr",) + k: v for k, v in _flatten(sqr).items()} if sqr else {})}
    entries = list(P.expand(_layout_rules(cfg, "model."))) + (list(P.expand(P.sqr_rules())) if sqr else [])
    tensors = []
    for e in entries:
        x = flat[e.ours]
        tensors.append({"key": e.hf, "dtype": NP_TO_ST[np.dtype(x.dtype)],
                        "shape": list(P.expected_hf_shape(e, x.shape, cfg))})
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "videosearch_r1" if sqr else "qwen3_vl",
            "source": "training", "key_layout": "Qwen3VLForConditionalGeneration", "key_prefix": "model.",
            "tie_word_embeddings": cfg.tie_word_embeddings, "dropped_tied_lm_head": False,
            "source_dtypes": sorted({t["dtype"] for t in tensors}),
            "param_dtypes": {"model": _dtype_names(_flatten(model)), **({"sqr": _dtype_names(_flatten(sqr))}
                                                                       if sqr else {})},
            "sqr": sqr_dims, "hf_tensors": tensors, "hf_files": files,
            "query_embedder": EMBEDDER_DIR if with_embedder else None}


def _write_converted(out: str, cfg: Qwen3VLConfig, model: dict, sqr: dict | None, sqr_dims: dict | None, tokenizer,
                     embedder) -> None:
    tree = {"model": model, **({"sqr": sqr} if sqr else {})}
    checkpoint.save_params(os.path.join(out, PARAMS_DIR), jax.tree.map(np.asarray, tree))
    with open(os.path.join(out, CONFIG_FILE), "w") as f:
        json.dump(cfg.to_hf_dict(), f, indent=2)
    files_dir = os.path.join(out, HF_FILES_DIR)
    os.makedirs(files_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(files_dir)
    if embedder is not None:
        e_cfg, e_params, e_tok = embedder
        emb = os.path.join(out, EMBEDDER_DIR)
        os.makedirs(emb)
        _write_converted(emb, e_cfg, e_params, None, None, e_tok, None)
    meta = _export_meta(cfg, model, sqr, sqr_dims, _non_weight_files(files_dir, set()), embedder is not None)
    with open(os.path.join(out, META_FILE), "w") as f:
        f.write(_dump_meta(meta))


def export_hf(dst: str, cfg: Qwen3VLConfig, params: dict, *, sqr_params: dict | None = None, sqr_cfg=None,
              tokenizer=None, embedder: tuple | None = None, overwrite: bool = False, quiet: bool = True) -> str:
    """Write in-memory models (e.g. a trained policy) as a released-layout HF folder that `transformers` loads: the
    policy's safetensors with the `refine_*` tensors, config.json, the tokenizer, and `query_embedder/` from
    embedder = (cfg, params, tokenizer). params are nested dicts shaped like `nnx.state(...)` (numpy or jax
    arrays), written in their own dtypes. Goes through a converted folder and `orbax_to_hf`, the same writer as
    the CLI."""
    sqr_dims = None
    if sqr_params is not None:
        sqr_dims = {"policy_hidden": sqr_cfg.policy_hidden, "retrieval_dim": sqr_cfg.retrieval_dim,
                    "embedder_hidden": sqr_cfg.embedder_hidden}
    dst = os.path.abspath(dst)
    if os.path.lexists(dst) and not overwrite:
        raise ConvertError(f"{dst} already exists; pass overwrite=True to replace it")
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.export-", dir=parent)
    try:
        conv = os.path.join(tmp, "converted")
        os.makedirs(conv)
        _write_converted(conv, cfg, params, sqr_params, sqr_dims, tokenizer, embedder)
        orbax_to_hf(conv, dst, overwrite=overwrite, quiet=quiet)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


# ---- the Stage-1 start: base policy + base embedder -> released layout --------------------------------------------

def resize_vocab(params: dict, cfg: Qwen3VLConfig, vocab_size: int) -> tuple[dict, Qwen3VLConfig]:
    """`model.resize_token_embeddings(vocab_size)` of transformers on our params (sqr_and_sft.md §3, MAIN L1159):
    the embedding (and an untied lm_head) keep their first min(old, new) rows; rows added by growing are the mean of
    the old rows (transformers samples them around that mean; the Qwen3 + <REFINE> case shrinks 151,936 -> 151,670
    rows, so no row is added there). Returns (params, config with the new text vocab_size)."""
    old = cfg.text.vocab_size
    if vocab_size == old:
        return params, cfg

    def rows(w, axis):
        w = np.asarray(w)
        keep = np.take(w, np.arange(min(old, vocab_size)), axis=axis)
        if vocab_size <= old:
            return keep
        mean = w.astype(np.float64).mean(axis=axis, keepdims=True).astype(w.dtype)
        return np.concatenate([keep, np.repeat(mean, vocab_size - old, axis=axis)], axis=axis)

    text = dict(params["text"])
    text["embed"] = rows(text["embed"], 0)                 # [V, D]
    if "lm_head" in text and text["lm_head"] is not None:
        text["lm_head"] = rows(text["lm_head"], 1)         # [D, V]
    new_cfg = cfg.with_vocab_size(vocab_size)
    too_big = {k: v for k, v in (("image_token_id", cfg.image_token_id), ("video_token_id", cfg.video_token_id),
                                 ("vision_start_token_id", cfg.vision_start_token_id),
                                 ("vision_end_token_id", cfg.vision_end_token_id)) if v is not None and v >= vocab_size}
    if too_big:
        raise ConvertError(f"resizing the vocabulary to {vocab_size} rows drops the ids {too_big} of config.json")
    return {**params, "text": text}, new_cfg


def init_stage1(policy_src: str, embedder_src: str, dst: str, *, seed: int = 0, zero_init_refine: bool = True,
                overwrite: bool = False, quiet: bool = False) -> str:
    """The original's Stage-1 starting point as a released-layout HF folder (what `--config.mode=sft` starts from):

    - the policy: a plain Qwen3-VL HF folder (e.g. Qwen3-VL-4B-Instruct); `<REFINE>` added to its tokenizer as one
      special token, the embedding (and an untied lm_head) resized to len(tokenizer) (`resize_vocab`);
    - the SQR head created as the launcher does (sqr_and_sft.md §2.1): refine_projector with PyTorch's default init
      and its last Linear zeroed (`zero_init_refine`, the Stage-1 default), the gate zeroed, LayerNorms 1/0, the
      latent and append input projectors partial identities; D = He = the embedder's hidden size (the original's
      `query_embedder_head` is Identity only then, and only that case is ported); float32;
    - the query embedder: a plain Qwen3-VL-Embedding HF folder, copied under `query_embedder/` with its tokenizer.
    """
    pol = load_hf_folder(policy_src, quiet=quiet)
    if pol.sqr_params is not None:
        raise ConvertError(f"{policy_src}: already a VideoSearch-R1 checkpoint (it has refine_* tensors); "
                           "train from it directly")
    emb = load_hf_folder(embedder_src, quiet=quiet)
    if emb.sqr_params is not None:
        raise ConvertError(f"{embedder_src}: has refine_* tensors; the query embedder is a plain Qwen3-VL-Embedding")
    for src, ck in ((policy_src, pol), (embedder_src, emb)):
        if ck.tokenizer_dir is None:
            raise ConvertError(f"{src}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    tok, info = load_tokenizer(pol.tokenizer_dir, add_refine=True)
    etok, _ = load_tokenizer(emb.tokenizer_dir, add_refine=False)
    params, cfg = resize_vocab(pol.params, pol.cfg, info.required_vocab_size)
    He = emb.cfg.text.hidden_size
    head = SQRHead(SQRConfig(policy_hidden=cfg.text.hidden_size, retrieval_dim=He, embedder_hidden=He,
                             zero_init_refine=zero_init_refine), rngs=nnx.Rngs(seed))
    sqr = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(head)))
    log.info("%s: <REFINE> = id %s, vocabulary %d -> %d rows; SQR head H=%d D=He=%d", policy_src, info.refine_id,
             pol.cfg.text.vocab_size, cfg.text.vocab_size, cfg.text.hidden_size, He)
    return export_hf(dst, cfg, params, sqr_params=sqr, sqr_cfg=head.cfg, tokenizer=tok,
                     embedder=(emb.cfg, emb.params, etok), overwrite=overwrite, quiet=quiet)


# ---- CLI --------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """The command line; a ConvertError (any UserError) is one `error: ...` line and exit status 2 (--verbose adds
    the traceback), a failed write (disk full, permissions) exit status 1, Ctrl-C 130."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vsr1_jax.convert",
                                     description="Convert Qwen3-VL / VideoSearch-R1 checkpoints between HF "
                                                 "safetensors folders and vsr1_jax orbax folders. --verbose: "
                                                 "print the traceback of an error.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf-to-orbax", help="HF folder (safetensors) -> orbax folder")
    b = sub.add_parser("orbax-to-hf", help="orbax folder written by hf-to-orbax -> HF folder")
    for p in (a, b):
        p.add_argument("src")
        p.add_argument("dst")
        p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
        p.add_argument("--dtype", choices=sorted(_CAST_DTYPES), default=None,
                       help="cast parameters (default: keep each tensor's dtype)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE,
                   help="largest safetensors file before sharding with an index (default 5GB)")
    c = sub.add_parser("init-stage1", help="plain Qwen3-VL policy + Qwen3-VL-Embedding -> the Stage-1 start (HF "
                                           "folder in the released layout: <REFINE> added, fresh SQR head)")
    c.add_argument("policy", help="Qwen3-VL HF folder (e.g. Qwen3-VL-4B-Instruct)")
    c.add_argument("embedder", help="Qwen3-VL-Embedding HF folder (e.g. Qwen3-VL-Embedding-2B)")
    c.add_argument("dst")
    c.add_argument("--seed", type=int, default=0, help="seed of the SQR head's random init")
    c.add_argument("--no-zero-init-refine", action="store_true",
                   help="keep refine_projector's last Linear and the gate at PyTorch's default init")
    c.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "init-stage1":
            out = init_stage1(args.policy, args.embedder, args.dst, seed=args.seed,
                              zero_init_refine=not args.no_zero_init_refine, overwrite=args.overwrite,
                              quiet=args.quiet)
        elif args.cmd == "hf-to-orbax":
            out = hf_to_orbax(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite, quiet=args.quiet)
        else:
            out = orbax_to_hf(args.src, args.dst, max_shard_size=args.max_shard_size, dtype=args.dtype,
                              overwrite=args.overwrite, quiet=args.quiet)
    except OSError as e:  # disk full, permissions: the staging folder is already gone
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    if not args.quiet:
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    sys.exit(main())
