"""Config or path -> ready models: a converted orbax folder or a released HF folder into the policy, the SQR head,
the query embedder and both tokenizers; the tiny demo models and the demo's synthetic corpus. Evaluation,
training and the benchmarks all load through here.

(`RunOptions.from_config` sits beside RunOptions in models/qwen3_vl/model.py and `EpisodeConfig.from_config` beside
EpisodeConfig in agent/rollout.py: each config-to-dataclass conversion lives with its dataclass.)
"""
from __future__ import annotations

import logging
import os
from typing import NamedTuple

import jax.numpy as jnp
from flax import nnx

from vsr1_jax import convert, distributed
from vsr1_jax.checkpoint import restore_params
from vsr1_jax.data import paths as data_paths
from vsr1_jax.data.synthetic import build_synthetic_dataset
from vsr1_jax.data.tiny_tokenizer import build_tiny_tokenizer
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig, get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL, RunOptions
from vsr1_jax.models.qwen3_vl.params import load_flat
from vsr1_jax.processing.tokenizer import load_tokenizer
from vsr1_jax.retrieval.encoder import TextVideoEmbedder

log = logging.getLogger(__name__)

CONVERT_HINT = ("convert a released checkpoint first: python -m vsr1_jax.convert hf-to-orbax <hf_folder> <dst>, "
                "then pass --config.checkpoint=<dst>")


class SetupError(RuntimeError):
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


def load_checkpoint(path: str, dtype=None) -> Models:
    """The models of a converted checkpoint folder (`python -m vsr1_jax.convert hf-to-orbax`) or, converting in
    memory, of a released VideoSearch-R1 HF folder."""
    if not os.path.isdir(path):
        raise SetupError(f"checkpoint folder {path!r} not found; {CONVERT_HINT}")
    if os.path.exists(os.path.join(path, convert.META_FILE)):
        ck = convert.load_converted(path)
    elif os.path.exists(os.path.join(path, convert.CONFIG_FILE)):
        ck = convert.load_hf_folder(path)
    else:
        raise SetupError(f"{path} holds neither {convert.META_FILE} nor {convert.CONFIG_FILE}; {CONVERT_HINT}")
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
    params = restore_params(engine, target=nnx.to_pure_dict(nnx.state(model)))
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


def load_models(config) -> Models:
    """The models a run uses: the demo's (building its corpus if needed) when `config.demo.enabled`, else the
    checkpoint at `config.checkpoint` in `config.model.dtype`."""
    if config.demo.enabled:
        emb = demo_embedder(config)
        ensure_demo_data(config, emb)
        return demo_models(config, emb)
    if not config.checkpoint:
        raise SetupError(f"--config.checkpoint is empty; {CONVERT_HINT}")
    return load_checkpoint(config.checkpoint, dtype=jnp.dtype(config.model.dtype))


def check_dataset(config) -> data_paths.PreparedPaths:
    """The prepared dataset folder of `config`, or a SetupError naming it and what produces it."""
    folder = os.path.join(config.data_root or "<data_root>", config.dataset)
    if not config.data_root or not os.path.isdir(folder):
        raise SetupError(f"prepared dataset folder {folder} not found: pass --config.data_root=<folder holding "
                         f"{config.dataset}/> laid out as in README 'Prepared data' (the original's download_data.bash "
                         "produces it)")
    return data_paths.PreparedPaths(config.data_root, config.dataset)
