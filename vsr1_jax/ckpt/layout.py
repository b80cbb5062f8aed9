"""The converted checkpoint folder (`python -m vsr1_jax.convert hf-to-orbax SRC DST`): its file names, format version,
`vsr1_checkpoint.json` read and written, the `Converted` record every reader returns, `ConvertError`, and the helpers
the readers and writers of vsr1_jax/ckpt share (nested <-> flat parameter dicts, HF key layouts, staging into a
temporary folder so a failure never leaves a half-written DST).

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
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from typing import Iterable

import numpy as np
from tqdm import tqdm

from vsr1_jax.errors import UserError
from vsr1_jax.models.qwen3_vl import params as P
from vsr1_jax.models.qwen3_vl.config import ConfigError, Qwen3VLConfig
from vsr1_jax.models.sqr import SQRConfig

FORMAT = "vsr1_checkpoint"
FORMAT_VERSION = 1
META_FILE = "vsr1_checkpoint.json"
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
HF_FILES_DIR = "hf_files"
EMBEDDER_DIR = "query_embedder"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
DEFAULT_MAX_SHARD_SIZE = "5GB"

CAST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


class ConvertError(UserError):
    """A checkpoint cannot be converted; the message names the file, key or field and what is wrong."""


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


def listing(keys: Iterable[str], n: int = 12) -> str:
    keys = list(keys)
    more = f" … and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def layout_rules(cfg: Qwen3VLConfig, prefix: str) -> list[P.Rule]:
    # params.model_rules spells the Qwen3VLForConditionalGeneration keys; Qwen3VLModel drops the leading "model.".
    rules = P.model_rules(cfg)
    if prefix == "model.":
        return rules
    return [dataclasses.replace(r, hf=r.hf.removeprefix("model.")) for r in rules]


def sqr_config(dims: dict | None):
    if dims is None:
        return None
    return SQRConfig(policy_hidden=dims["policy_hidden"], retrieval_dim=dims["retrieval_dim"],
                     embedder_hidden=dims["embedder_hidden"])


def non_weight_files(src: str, skip: set[str]) -> list[str]:
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


def progress(total: int, desc: str, quiet: bool):
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=quiet, leave=False, dynamic_ncols=True)


def nest(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        for p in path[:-1]:
            d = d.setdefault(p, {})
        d[path[-1]] = v
    return out


def flatten(tree: dict, prefix: tuple = ()) -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def dtype_names(flat: dict) -> str | list[str]:
    names = sorted({str(np.dtype(v.dtype)) for v in flat.values()})
    return names[0] if len(names) == 1 else names


def dump_meta(meta: dict) -> str:
    """Indented JSON with one line per HF tensor (a 4B checkpoint lists ~700), so it stays readable."""
    head = json.dumps({k: v for k, v in meta.items() if k != "hf_tensors"}, indent=1)
    rows = ",\n".join("  " + json.dumps(t) for t in meta["hf_tensors"])
    return head[:-2] + ',\n "hf_tensors": [\n' + rows + "\n ]\n}\n"


def tokenizer_dir(folder: str) -> str | None:
    return folder if any(os.path.exists(os.path.join(folder, n)) for n in TOKENIZER_FILES) else None


def read_meta(folder: str) -> dict:
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


def load_cfg(folder: str) -> Qwen3VLConfig:
    try:
        return Qwen3VLConfig.from_json(os.path.join(folder, CONFIG_FILE))
    except ConfigError as e:
        raise ConvertError(str(e)) from None


# ---- staging: never a half-written DST --------------------------------------------------------------------------

@contextlib.contextmanager
def staging(dst: str, overwrite: bool):
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


def check_dst(src: str, dst: str) -> None:
    # DST inside SRC would be copied into hf_files; SRC inside DST would be deleted by --overwrite.
    s, d = os.path.realpath(src), os.path.realpath(dst)
    if d == s or d.startswith(s + os.sep) or s.startswith(d + os.sep):
        raise ConvertError(f"{dst}: DST must not be SRC, inside SRC, or contain SRC")


def copy_files(src: str, dst: str, files: list[str]) -> None:
    for rel in files:
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(os.path.join(src, rel), os.path.join(dst, rel))
