"""The runtime reader every run goes through: a checkpoint path -> `Models` (the policy, its SQR head, the query
embedder and both tokenizers). `load_checkpoint` takes a converted folder (`load_converted`), a released
VideoSearch-R1 HF folder (converted in memory by ckpt/hf_read.py) or a training checkpoint `<run>/checkpoints/<step>`
(the models its run started from with the trained weights, `apply_training_checkpoint`); `check_checkpoint_path`
names the config field and the fix when a path is none of these. Which models a config means (the demo's or a
checkpoint) is loading.load_models.
"""
from __future__ import annotations

import json
import logging
import os
from typing import NamedTuple

from flax import nnx

from vsr1_jax.ckpt import orbax_io
from vsr1_jax.ckpt.hf_read import load_hf_folder
from vsr1_jax.ckpt.layout import (CONFIG_FILE, EMBEDDER_DIR, HF_FILES_DIR, META_FILE, PARAMS_DIR, Converted, load_cfg,
                                  read_meta, sqr_config, tokenizer_dir)
from vsr1_jax.errors import SetupError
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.params import load_flat
from vsr1_jax.processing.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

CONVERT_HINT = ("convert a released checkpoint first: python -m vsr1_jax.convert hf-to-orbax <hf_folder> <dst>, "
                "then pass --config.checkpoint=<dst>")
CHECKPOINT_KINDS = ("a converted folder (python -m vsr1_jax.convert hf-to-orbax), a released HF folder, or a "
                    "training checkpoint <output_dir>/{sft,grpo}/checkpoints/<step>")
TRAIN_STATE_DIR = "state"    # what train/loop.py's CheckpointManager writes in <run>/checkpoints/<step>/
RUN_CONFIG = "config.json"   # the resolved config a training run saves in its folder (runinfo.save_config)


class Models(NamedTuple):
    """Everything an episode needs besides data: the policy, its SQR head, the frozen query embedder (a Qwen3-VL
    whose pooled, normalised last hidden state is the query vector) and the two tokenizers."""
    policy: Qwen3VL
    head: S.SQRHead
    embedder: Qwen3VL
    tokenizer: object
    embed_tokenizer: object


def module_from_params(cfg: Qwen3VLConfig, params: dict, dtype=None) -> Qwen3VL:
    """A Qwen3VL holding converted params (a nested dict of arrays shaped like `nnx.state(Qwen3VL)`), cast to
    `dtype` when given."""
    model = Qwen3VL(cfg, rngs=None)
    flat = {tuple(str(p) for p in path): v for path, v in nnx.to_flat_state(nnx.State(params))}
    load_flat(model, {k: (v.get_value() if hasattr(v, "get_value") else v) for k, v in flat.items()}, dtype=dtype)
    return model


def load_converted(dst: str, *, target=None) -> Converted:
    """Read a converted folder: config, params, SQR head, embedder, tokenizer folder (DST/hf_files).

    Params come back as numpy (as written) unless `target` is given: a tree {"model": ..., "sqr": ...} of
    `jax.ShapeDtypeStruct` (with shardings) as `orbax_io.restore_params` takes; it applies to this model, the
    embedder is restored as written.
    """
    dst = os.path.abspath(dst)
    meta = read_meta(dst)
    cfg = load_cfg(dst)
    tree = orbax_io.restore_params(os.path.join(dst, PARAMS_DIR), target=target)
    emb = None
    if meta.get("query_embedder"):
        emb = load_converted(os.path.join(dst, meta["query_embedder"]))
    return Converted(cfg=cfg, params=tree["model"], sqr_params=tree.get("sqr"), sqr_cfg=sqr_config(meta.get("sqr")),
                     embedder=emb, tokenizer_dir=tokenizer_dir(os.path.join(dst, HF_FILES_DIR)), meta=meta)


def is_training_checkpoint(path: str) -> bool:
    """A step folder of a training run (`<run>/checkpoints/<step>`, written by train/loop.py)."""
    return os.path.basename(os.path.normpath(path)).isdigit() and os.path.isdir(os.path.join(path, TRAIN_STATE_DIR))


def check_checkpoint_path(path: str, field: str = "checkpoint") -> None:
    """A SetupError naming `--config.<field>` and the fix when `path` is not a checkpoint folder (a file, a run's
    checkpoints/ folder instead of one of its steps, or nothing)."""
    if os.path.isfile(path):
        raise SetupError(f"--config.{field}={path} is a file; a checkpoint is a folder: {CHECKPOINT_KINDS}")
    if os.path.isdir(path):
        ckpts = path if os.path.basename(os.path.normpath(path)) == "checkpoints" else os.path.join(path, "checkpoints")
        steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []
        if steps and not is_training_checkpoint(path):
            raise SetupError(f"--config.{field}={path} is a training run, not one of its checkpoints: pass a step "
                             f"folder, e.g. --config.{field}={os.path.join(ckpts, str(steps[-1]))} (steps: {steps})")
        return
    hint = (f"convert a released checkpoint first: python -m vsr1_jax.convert hf-to-orbax <hf_folder> <dst>, then "
            f"pass --config.{field}=<dst>")
    raise SetupError(f"--config.{field}: checkpoint folder {path!r} not found; {hint}")


def _flat(tree, prefix=()) -> dict:
    """A restored nnx.State ({name: ... {"value": array}}) as {module path: array}."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, prefix + (str(k),)))
        return out
    return {prefix[:-1] if prefix and prefix[-1] == "value" else prefix: tree}


def apply_training_checkpoint(models: Models, path: str, dtype=None) -> Models:
    """`models` with the policy and SQR head weights of a training checkpoint (`<run>/checkpoints/<step>`): its
    trainable and frozen leaves together are every weight of both; `models` supplies the architecture, the query
    embedder and the tokenizers (the optimizer state is not read)."""
    state_dir = os.path.join(path, TRAIN_STATE_DIR)
    meta = orbax_io.params_metadata(state_dir)
    if not all(k in meta for k in ("params", "frozen")):
        raise SetupError(f"{state_dir}: not a train state of vsr1_jax.train (it has {sorted(meta)})")
    tree = orbax_io.restore_params(state_dir, target={k: meta[k] for k in ("params", "frozen")}, partial=True)
    for name, module in (("policy", models.policy), ("head", models.head)):
        flat = {**_flat(tree["params"][name]), **_flat(tree["frozen"][name])}
        try:
            load_flat(module, flat, dtype=dtype)
        except (KeyError, ValueError, TypeError) as e:
            raise SetupError(f"{path}: its {name} weights do not fit the models of this config ({e}); evaluate it "
                             "with the config it was trained with") from None
    log.info("loaded the policy and SQR head of the training checkpoint %s", path)
    return models


def _training_base(path: str, field: str) -> str:
    """The checkpoint a (non-demo) training run started from, read from the run's saved config."""
    run = os.path.dirname(os.path.dirname(os.path.normpath(path)))
    cfg_path = os.path.join(run, RUN_CONFIG)
    try:
        with open(cfg_path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SetupError(f"--config.{field}={path}: a training checkpoint needs its run's {cfg_path} to know the model "
                         f"it started from ({e}); evaluate the exported model <run>/hf instead") from None
    base = ((saved.get("grpo") or {}).get("init_checkpoint") if os.path.basename(run) == "grpo" else "") \
        or saved.get("checkpoint")
    if not base:
        raise SetupError(f"{cfg_path}: the run started from the demo models; evaluate it with the demo config "
                         f"(--config=configs/toy.py --config.mode=eval --config.{field}={path})")
    return base


def load_checkpoint(path: str, dtype=None, *, field: str = "checkpoint") -> Models:
    """The models of a converted checkpoint folder (`python -m vsr1_jax.convert hf-to-orbax`), of a released
    VideoSearch-R1 HF folder (converted in memory), or of a training checkpoint `<run>/checkpoints/<step>` (the
    models of the checkpoint its run started from, with the trained weights). `field`: the config field the path
    came from, named in the errors."""
    check_checkpoint_path(path, field)
    if is_training_checkpoint(path):
        return apply_training_checkpoint(load_checkpoint(_training_base(path, field), dtype, field=field), path,
                                         dtype)
    if os.path.exists(os.path.join(path, META_FILE)):
        ck = load_converted(path)
    elif os.path.exists(os.path.join(path, CONFIG_FILE)):
        ck = load_hf_folder(path)
    else:
        raise SetupError(f"--config.{field}={path} holds neither {META_FILE} nor {CONFIG_FILE} nor "
                         f"{TRAIN_STATE_DIR}/: it is not a checkpoint; pass {CHECKPOINT_KINDS}")
    if ck.sqr_params is None or ck.embedder is None:
        raise SetupError(f"{path} is not a VideoSearch-R1 checkpoint (it needs refine_* tensors and a "
                         f"{EMBEDDER_DIR}/ sub-folder)")
    policy = module_from_params(ck.cfg, ck.params, dtype)
    head = S.SQRHead(ck.sqr_cfg, rngs=None)
    nnx.update(head, nnx.State(ck.sqr_params))
    embedder = module_from_params(ck.embedder.cfg, ck.embedder.params, dtype)
    tok, _ = load_tokenizer(ck.tokenizer_dir)
    etok, _ = load_tokenizer(ck.embedder.tokenizer_dir, add_refine=False)
    return Models(policy, head, embedder, tok, etok)
