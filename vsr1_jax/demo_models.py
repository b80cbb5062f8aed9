"""The demo's models and corpus, built in memory and on first use (nothing is downloaded): the tiny search engine
(`tiny_embedder`; `demo_embedder` with the Stage-0 trained weights of `stage0_dir(config)/engine`), the tiny random
policy and SQR head (`demo_models`) and the synthetic corpus (`ensure_demo_data`). loading.load_models builds them for
a config with `demo.enabled`; the demo's run itself (eval, SFT, GRPO, the report) is vsr1_jax/demo.py.
"""
from __future__ import annotations

import logging
import os

from flax import nnx

from vsr1_jax import distributed
from vsr1_jax.ckpt import orbax_io
from vsr1_jax.ckpt.read import Models
from vsr1_jax.data import paths as data_paths
from vsr1_jax.data.synthetic import build_synthetic_dataset
from vsr1_jax.data.tiny_tokenizer import build_tiny_tokenizer
from vsr1_jax.errors import SetupError
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.retrieval.encoder import TextVideoEmbedder

log = logging.getLogger(__name__)


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


def vision_dir(config) -> str:
    """Where Stage 0v (vsr1_jax/train/vision_pretrain.py) writes the pretrained vision tower: `<stage0 dir>/vision`."""
    return os.path.join(stage0_dir(config), "vision")


def pretrained_vision(config) -> bool:
    """Whether the demo's engine and policy start from Stage 0v's vision tower: `config.demo.vision.enabled` with
    Stage 0 on (Stage 0v runs as its first part; with `demo.stage0.enabled=False` every demo model is random)."""
    return bool(config.demo.vision.enabled and config.demo.stage0.enabled)


def load_vision(config, model: Qwen3VL) -> Qwen3VL:
    """`model` with Stage 0v's vision tower (`vision_dir(config)`) in place of its own."""
    path = vision_dir(config)
    if not os.path.isdir(path):
        raise SetupError(f"{path} not found: Stage 0v pretrains the demo's vision tower first (any --config.mode with "
                         "configs/toy.py runs it), or pass --config.demo.vision.enabled=False")
    params = orbax_io.restore_params(path, target=nnx.to_pure_dict(nnx.state(model.visual)))
    nnx.update(model.visual, nnx.State(params))
    return model


def caption_dir(config) -> str:
    """Where Stage 0c (vsr1_jax/train/caption_pretrain.py) writes the captioning policy: `<stage0 dir>/caption`."""
    return os.path.join(stage0_dir(config), "caption")


def pretrained_policy(config) -> bool:
    """Whether the demo's policy starts from Stage 0c's captioning policy: `config.demo.caption.enabled` with Stage 0
    on (Stage 0c runs after the engine is trained)."""
    return bool(config.demo.caption.enabled and config.demo.stage0.enabled)


def demo_embedder(config, opts: RunOptions | None = None, mesh=None, *, untrained: bool = False,
                  vision: bool = True) -> TextVideoEmbedder:
    """The demo's search engine: `tiny_embedder` with the demo's seed and video settings, holding the Stage-0
    trained parameters when `config.demo.stage0.enabled` (untrained=True: the engine Stage 0 starts from -- with
    Stage 0v's vision tower when `config.demo.vision.enabled`, unless vision=False: the random one Stage 0v trains)."""
    opts = RunOptions.from_config(config.model) if opts is None else opts
    emb = tiny_embedder(config.demo.embedder_seed, video_cfg=config.demo.embed_video.to_dict(), opts=opts,
                        mesh=None if config.demo.stage0.enabled and not untrained else mesh)
    if untrained and vision and pretrained_vision(config):
        model = load_vision(config, nnx.merge(emb.graphdef, emb.state))
        return TextVideoEmbedder(model, emb.tokenizer, video_cfg=config.demo.embed_video.to_dict(), opts=opts)
    if untrained or not config.demo.stage0.enabled:
        return emb
    engine = os.path.join(stage0_dir(config), "engine")
    if not os.path.isdir(engine):
        raise SetupError(f"{engine} not found: the demo's search engine is trained by Stage 0 first (any "
                         "--config.mode with configs/toy.py runs it), or pass --config.demo.stage0.enabled=False")
    model = nnx.merge(emb.graphdef, emb.state)
    params = orbax_io.restore_params(engine, target=nnx.to_pure_dict(nnx.state(model)))
    nnx.update(model, nnx.State(params))
    return TextVideoEmbedder(model, emb.tokenizer, video_cfg=config.demo.embed_video.to_dict(), opts=opts, mesh=mesh)


def demo_models(config, embedder: TextVideoEmbedder, *, captioned: bool = True) -> Models:
    """The tiny policy and SQR head of the demo, with `embedder`'s model as the query embedder. With
    `config.demo.vision.enabled` the policy's vision tower is Stage 0v's pretrained one (the engine's starting point),
    as the real policy and engine both read videos through a pretrained Qwen3-VL vision encoder; with
    `config.demo.caption.enabled` the whole policy is Stage 0c's captioning one (unless captioned=False: the policy
    Stage 0c starts from), as the real policy is a pretrained VLM. The SQR head is random."""
    tok = build_tiny_tokenizer()
    policy = Qwen3VL(get_preset("tiny"), rngs=nnx.Rngs(config.demo.policy_seed))
    if pretrained_vision(config):
        load_vision(config, policy)
    if captioned and pretrained_policy(config):
        path = caption_dir(config)
        if not os.path.isdir(path):
            raise SetupError(f"{path} not found: Stage 0c trains the demo's policy to describe videos first (any "
                             "--config.mode with configs/toy.py runs it), or pass --config.demo.caption.enabled=False")
        nnx.update(policy, nnx.State(orbax_io.restore_params(path, target=nnx.to_pure_dict(nnx.state(policy)))))
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
