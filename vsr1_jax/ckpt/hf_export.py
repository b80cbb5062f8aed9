"""In-memory models -> a released-layout HF folder that `transformers` loads (the policy's safetensors with the
refine_* tensors, config.json, the tokenizer, query_embedder/): `export_hf` for parameter dicts (init-stage1 uses
it), `export_train_state` for a train state at the end of SFT / GRPO (`config.{sft,grpo}.export_hf`). Both go
through a converted folder (ckpt/layout.py) and `orbax_to_hf`, the same writer as the command line.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import numpy as np
from flax import nnx

from vsr1_jax import distributed
from vsr1_jax.ckpt import orbax_io
from vsr1_jax.ckpt.layout import (CONFIG_FILE, EMBEDDER_DIR, FORMAT, FORMAT_VERSION, HF_FILES_DIR, META_FILE,
                                  PARAMS_DIR, ConvertError, dtype_names, dump_meta, flatten, layout_rules,
                                  non_weight_files)
from vsr1_jax.ckpt.safetensors_io import NP_TO_ST
from vsr1_jax.ckpt.write import orbax_to_hf
from vsr1_jax.models.qwen3_vl import params as P
from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig


def export_meta(cfg: Qwen3VLConfig, model: dict, sqr: dict | None, sqr_dims: dict | None, files: list[str],
                 with_embedder: bool) -> dict:
    """vsr1_checkpoint.json for params that came from training, not from a source folder: the HF keys in the key
    table's order, each in its parameter's dtype."""
    flat = {**{k: v for k, v in flatten(model).items()},
            **({("sqr",) + k: v for k, v in flatten(sqr).items()} if sqr else {})}
    entries = list(P.expand(layout_rules(cfg, "model."))) + (list(P.expand(P.sqr_rules())) if sqr else [])
    tensors = []
    for e in entries:
        x = flat[e.ours]
        tensors.append({"key": e.hf, "dtype": NP_TO_ST[np.dtype(x.dtype)],
                        "shape": list(P.expected_hf_shape(e, x.shape, cfg))})
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "videosearch_r1" if sqr else "qwen3_vl",
            "source": "training", "key_layout": "Qwen3VLForConditionalGeneration", "key_prefix": "model.",
            "tie_word_embeddings": cfg.tie_word_embeddings, "dropped_tied_lm_head": False,
            "source_dtypes": sorted({t["dtype"] for t in tensors}),
            "param_dtypes": {"model": dtype_names(flatten(model)), **({"sqr": dtype_names(flatten(sqr))}
                                                                       if sqr else {})},
            "sqr": sqr_dims, "hf_tensors": tensors, "hf_files": files,
            "query_embedder": EMBEDDER_DIR if with_embedder else None}


def write_converted(out: str, cfg: Qwen3VLConfig, model: dict, sqr: dict | None, sqr_dims: dict | None, tokenizer,
                     embedder) -> None:
    tree = {"model": model, **({"sqr": sqr} if sqr else {})}
    orbax_io.save_params(os.path.join(out, PARAMS_DIR), jax.tree.map(np.asarray, tree))
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
        write_converted(emb, e_cfg, e_params, None, None, e_tok, None)
    meta = export_meta(cfg, model, sqr, sqr_dims, non_weight_files(files_dir, set()), embedder is not None)
    with open(os.path.join(out, META_FILE), "w") as f:
        f.write(dump_meta(meta))


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
        write_converted(conv, cfg, params, sqr_params, sqr_dims, tokenizer, embedder)
        orbax_to_hf(conv, dst, overwrite=overwrite, quiet=quiet)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def export_train_state(dst: str, state, graphdefs, embedder, tokenizer, embed_tokenizer) -> str:
    """The trained policy + SQR head of a train state (train/state.py: `graphdefs.modules(state.params,
    state.frozen)`), with the frozen query embedder and both tokenizers, as a released-layout HF folder
    (`export_hf`). Process 0 writes it; every process must call this (the parameters are gathered from all hosts
    first)."""
    policy, head = graphdefs.modules(state.params, state.frozen)
    pure = lambda m: distributed.host_tree(nnx.to_pure_dict(nnx.state(m)))  # noqa: E731  whole arrays, every host
    p, h, e = pure(policy), pure(head), pure(embedder)
    if distributed.is_primary():
        export_hf(dst, policy.cfg, p, sqr_params=h, sqr_cfg=head.cfg, tokenizer=tokenizer,
                  embedder=(embedder.cfg, e, embed_tokenizer), overwrite=True)
    return dst
