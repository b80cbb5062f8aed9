"""Config or path -> ready models: a converted orbax folder or a released HF folder into the policy, the SQR head,
the query embedder and both tokenizers; the tiny demo models and the demo's synthetic corpus. Evaluation,
training and the benchmarks all load through here.

(`RunOptions.from_config` sits beside RunOptions in models/qwen3_vl/model.py and `EpisodeConfig.from_config` beside
EpisodeConfig in agent/rollout.py: each config-to-dataclass conversion lives with its dataclass.)
"""
from __future__ import annotations

import json
import logging
import os
from typing import NamedTuple

import jax.numpy as jnp
from flax import nnx

from vsr1_jax import checkpoint, convert, distributed
from vsr1_jax.data import paths as data_paths
from vsr1_jax.data.synthetic import build_synthetic_dataset
from vsr1_jax.data.tiny_tokenizer import build_tiny_tokenizer
from vsr1_jax.errors import UserError
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig, get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.models.qwen3_vl.params import load_flat
from vsr1_jax.processing.tokenizer import load_tokenizer
from vsr1_jax.retrieval.encoder import TextVideoEmbedder

log = logging.getLogger(__name__)

CONVERT_HINT = ("convert a released checkpoint first: python -m vsr1_jax.convert hf-to-orbax <hf_folder> <dst>, "
                "then pass --config.checkpoint=<dst>")


class SetupError(UserError, RuntimeError):
    """A missing folder or checkpoint; the message names it and the command that produces it."""


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


CHECKPOINT_KINDS = ("a converted folder (python -m vsr1_jax.convert hf-to-orbax), a released HF folder, or a "
                    "training checkpoint <output_dir>/{sft,grpo}/checkpoints/<step>")
TRAIN_STATE_DIR = "state"    # what train/loop.py's CheckpointManager writes in <run>/checkpoints/<step>/
RUN_CONFIG = "config.json"   # the resolved config a training run saves in its folder (runinfo.save_config)


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
    meta = checkpoint.params_metadata(state_dir)
    if not all(k in meta for k in ("params", "frozen")):
        raise SetupError(f"{state_dir}: not a train state of vsr1_jax.train (it has {sorted(meta)})")
    tree = checkpoint.restore_params(state_dir, target={k: meta[k] for k in ("params", "frozen")}, partial=True)
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
    if os.path.exists(os.path.join(path, convert.META_FILE)):
        ck = convert.load_converted(path)
    elif os.path.exists(os.path.join(path, convert.CONFIG_FILE)):
        ck = convert.load_hf_folder(path)
    else:
        raise SetupError(f"--config.{field}={path} holds neither {convert.META_FILE} nor {convert.CONFIG_FILE} nor "
                         f"{TRAIN_STATE_DIR}/: it is not a checkpoint; pass {CHECKPOINT_KINDS}")
    if ck.sqr_params is None or ck.embedder is None:
        raise SetupError(f"{path} is not a VideoSearch-R1 checkpoint (it needs refine_* tensors and a "
                         f"{convert.EMBEDDER_DIR}/ sub-folder)")
    policy = module_from_params(ck.cfg, ck.params, dtype)
    head = S.SQRHead(ck.sqr_cfg, rngs=None)
    nnx.update(head, nnx.State(ck.sqr_params))
    embedder = module_from_params(ck.embedder.cfg, ck.embedder.params, dtype)
    tok, _ = load_tokenizer(ck.tokenizer_dir)
    etok, _ = load_tokenizer(ck.embedder.tokenizer_dir, add_refine=False)
    return Models(policy, head, embedder, tok, etok)


# ---- the demo: tiny models built in memory, a synthetic corpus built on first use ---------------------------------
def tiny_embedder(seed: int = 0, *, video_cfg=None, opts: RunOptions = RunOptions(), mesh=None) -> TextVideoEmbedder:
    """The tiny tokenizer + a tiny *random* Qwen3-VL (preset "tiny", 64-d) as the search engine, for tests and the
    demo (nothing is downloaded). Its vectors carry little meaning: retrieval over them is near chance, which
    exercises every data path but not retrieval quality."""
    model = Qwen3VL(get_preset("tiny"), rngs=nnx.Rngs(seed))
    return TextVideoEmbedder(model, build_tiny_tokenizer(), video_cfg=video_cfg, opts=opts, mesh=mesh)


def stage0_dir(config) -> str:
    """Where Stage 0 (vsr1_jax/train/stage0.py) keeps its checkpoints, metrics and the trained engine (`engine/`):
    `config.demo.stage0.dir`, else beside the corpus built with it."""
    return config.demo.stage0.dir or os.path.join(config.data_root, f"{config.dataset}_stage0")


def demo_embedder(config, opts: RunOptions | None = None, mesh=None, *, untrained: bool = False) -> TextVideoEmbedder:
    """The demo's search engine: `tiny_embedder` with the demo's seed and video settings, holding the Stage-0
    trained parameters when `config.demo.stage0.enabled` (untrained=True: the random engine Stage 0 starts from)."""
    opts = RunOptions.from_config(config.model) if opts is None else opts
    emb = tiny_embedder(config.demo.embedder_seed, video_cfg=config.demo.embed_video.to_dict(), opts=opts,
                        mesh=None if config.demo.stage0.enabled and not untrained else mesh)
    if untrained or not config.demo.stage0.enabled:
        return emb
    engine = os.path.join(stage0_dir(config), "engine")
    if not os.path.isdir(engine):
        raise SetupError(f"{engine} not found: the demo's search engine is trained by Stage 0 first (any "
                         "--config.mode with configs/toy.py runs it), or pass --config.demo.stage0.enabled=False")
    model = nnx.merge(emb.graphdef, emb.state)
    params = checkpoint.restore_params(engine, target=nnx.to_pure_dict(nnx.state(model)))
    nnx.update(model, nnx.State(params))
    return TextVideoEmbedder(model, emb.tokenizer, video_cfg=config.demo.embed_video.to_dict(), opts=opts, mesh=mesh)


def demo_models(config, embedder: TextVideoEmbedder) -> Models:
    """The tiny random policy and SQR head of the demo, with `embedder`'s model as the query embedder."""
    tok = build_tiny_tokenizer()
    policy = Qwen3VL(get_preset("tiny"), rngs=nnx.Rngs(config.demo.policy_seed))
    D = embedder.dim
    head = S.SQRHead(S.SQRConfig(policy_hidden=policy.cfg.text.hidden_size, retrieval_dim=D, embedder_hidden=D,
                                 zero_init_refine=config.demo.zero_init_refine), rngs=nnx.Rngs(config.demo.policy_seed))
    return Models(policy, head, nnx.merge(embedder.graphdef, embedder.state), tok, tok)


def ensure_demo_data(config, embedder: TextVideoEmbedder) -> data_paths.PreparedPaths:
    """The synthetic corpus of the demo under `config.data_root`, built (once) with `embedder` as the search
    engine."""
    paths = data_paths.PreparedPaths(config.data_root, config.dataset)
    if distributed.is_primary() and not os.path.exists(paths.segment_embeds("test")):
        log.info("building the synthetic corpus under %s", paths.dataset_dir)
        build_synthetic_dataset(config.data_root, config.dataset, config.synthetic, embedder=embedder,
                                overwrite=True)
    distributed.barrier("vsr1_demo_data")   # several processes: process 0 builds, the others wait for it
    if not os.path.exists(paths.segment_embeds("test")):
        raise SetupError(f"{paths.dataset_dir}: process 0 built the synthetic corpus on its own disk; build it on "
                         "every host first (run the same command once without launch/) or use a shared folder")
    return paths


def load_models(config, path: str | None = None, field: str = "checkpoint") -> Models:
    """The models a run uses, in `config.model.dtype`: with `config.demo.enabled`, the demo's (building its corpus if
    needed), with the weights of a training checkpoint of a demo run when `path` (default `config.checkpoint`)
    names one; else the checkpoint at `path`. `field`: the config field `path` came from (named in errors)."""
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
        raise SetupError(f"--config.{field} is empty; {CONVERT_HINT}")
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
