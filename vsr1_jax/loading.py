"""The models of a config: `load_models` is the one function every mode calls (eval, sft, grpo, demo) for its
policy, SQR head, query embedder and tokenizers. With `config.demo.enabled` they are the demo's tiny models
(demo_models.py, building its corpus on first use), else a checkpoint read by the runtime reader (ckpt/read.py) after
the cheap checks (the path is set, the prepared dataset exists). `check_embedder_dim` and `check_dataset` are the
other setup checks a run makes before it starts.

(`RunOptions.from_config` sits beside RunOptions in models/qwen3_vl/model.py and `EpisodeConfig.from_config` beside
EpisodeConfig in agent/rollout.py: each config-to-dataclass conversion lives with its dataclass.)
"""
from __future__ import annotations

import os
from typing import Callable

import jax.numpy as jnp

from vsr1_jax.ckpt.read import (CONVERT_HINT, Models, apply_training_checkpoint, check_checkpoint_path,
                                is_training_checkpoint, load_checkpoint)
from vsr1_jax.data import paths as data_paths
from vsr1_jax.demo_models import demo_embedder, demo_models, ensure_demo_data
from vsr1_jax.errors import SetupError


def load_models(config, path: str | None = None, field: str = "checkpoint", *, empty_message: str | None = None,
                before_load: Callable[[], None] | None = None) -> Models:
    """The models a run uses, in `config.model.dtype`:

    - with `config.demo.enabled`, the demo's (building its corpus if needed), with the weights of a training
      checkpoint of a demo run when `path` names one (any other checkpoint is refused before the corpus is built);
    - else the checkpoint at `path`, once what is cheap to check is checked: `path` is set (else a SetupError with
      `empty_message`, default "--config.<field> is empty" and how to convert one) and the prepared dataset folder
      exists; `before_load` then runs, before the (slow) model load: the evaluation reads its corpus there, so data
      errors come first.

    path: default `config.checkpoint`; field: the config field `path` came from (named in errors)."""
    path = config.checkpoint if path is None else path
    dtype = jnp.dtype(config.model.dtype)
    if config.demo.enabled:
        if path:   # checked before the demo corpus is built
            check_checkpoint_path(path, field)
        if path and not is_training_checkpoint(path):
            raise SetupError(f"--config.{field}={path}: the demo config (config.demo.enabled) runs the tiny demo "
                             "models and takes only their training checkpoints "
                             "(<output_dir>/{sft,grpo}/checkpoints/<step>); "
                             "for a released or converted model pass --config.demo.enabled=False with a dataset "
                             "config (configs/charades.py, ...)")
        emb = demo_embedder(config)
        ensure_demo_data(config, emb)
        models = demo_models(config, emb)
        return apply_training_checkpoint(models, path, dtype) if path else models
    if not path:
        raise SetupError(empty_message or f"--config.{field} is empty; {CONVERT_HINT}")
    check_dataset(config)
    if before_load is not None:
        before_load()
    return load_checkpoint(path, dtype=dtype, field=field)


def check_embedder_dim(models: Models, dim: int, corpus_file: str, checkpoint: str | None) -> None:
    """The query embedder's vectors must have the corpus's dimension (else every refined query fails to
    retrieve): a SetupError naming both."""
    got = models.embedder.cfg.text.hidden_size
    if got != dim:
        raise SetupError(f"{checkpoint or 'the models'}: the query embedder gives {got}-d vectors but {corpus_file} "
                         f"holds {dim}-d ones; evaluate with the checkpoint whose embedder built this corpus, or "
                         "rebuild the corpus with this embedder")


def check_dataset(config) -> data_paths.PreparedPaths:
    """The prepared dataset folder of `config`, or a SetupError naming it and what produces it."""
    folder = os.path.join(config.data_root or "<data_root>", config.dataset)
    if not config.data_root or not os.path.isdir(folder):
        raise SetupError(f"prepared dataset folder {folder} not found: pass --config.data_root=<folder holding "
                         f"{config.dataset}/> laid out as in README 'Prepared data' (the original's download_data.bash "
                         "produces it)")
    return data_paths.PreparedPaths(config.data_root, config.dataset)
