"""Stage 0 of the demo: train the tiny Qwen3-VL-Embedding (the search engine) contrastively on synthetic *train-side*
videos, so the demo's retrieval works, imperfectly, before the policy learns to refine queries.

The engine keeps the real one's input format: the instruction template of `retrieval.encoder.TextVideoEmbedder`
(system instruction, user content, generation prompt) and last-token pooling of the final-normed hidden states,
L2-normalised (`models.embedder`). What trains is the language model (embeddings, decoder, final norm; not the LM
head, which the embedder never uses); the random vision tower is frozen, so each video's vision features (merged and
DeepStack) are computed once and every step runs the language model only (the vision tower would be most of a
step's time on a CPU and, trained on its own, memorises the training videos: issue 23).

Data: a pool of procedurally generated videos (`data.synthetic_world.plan_pool`) in near-duplicate twins (one attribute
changed), whose attribute combinations exclude every combination of the test split, so the engine must compose
colour, shape, direction, lane and background to find a test video. A batch is B/2 random twins: each query's twin
is a hard negative, the other videos are in-batch negatives; videos that show the same event tuple as a row's query
(another rendering of the same description) are masked out of that row's negatives. The loss is symmetric InfoNCE
(query -> video and video -> query), temperature `stage0.temperature`.

Batch s is a pure function of (stage0.seed, s), so a killed run resumes bit for bit from its last checkpoint with
no host state but the step. A held-out set of train-side videos (another seed stream, same exclusion) measures
R@1 during training; the test split is never read here.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vsr1_jax import demo_models, sharding
from vsr1_jax.buckets import round_up
from vsr1_jax.ckpt import orbax_io
from vsr1_jax.data import synthetic_text as TX
from vsr1_jax.data import synthetic_world as SW
from vsr1_jax.errors import SetupError
from vsr1_jax.models import embedder as E
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.models.qwen3_vl.rope import get_rope_index, text_positions
from vsr1_jax.models.qwen3_vl.vision import VisionBuckets, pack_vision
from vsr1_jax.retrieval.encoder import TextVideoEmbedder
from vsr1_jax.train import loop, optim
from vsr1_jax.train import state as state_lib
from vsr1_jax.train import caption_pretrain, vision_pretrain

log = logging.getLogger(__name__)


# ---- device: the loss ------------------------------------------------------------------------------------------
def infonce_matrix(q, v, negative_mask, temperature: float, symmetric: bool = True):
    """Contrastive loss of B (query, video) pairs: q, v [B, D] unit rows, row i's positive is v[i]. negative_mask
    [B, B] bool marks the pairs (i, j), j != i, that may serve as negatives (the diagonal is always kept). Returns
    (loss, per-row query->video losses [B])."""
    logits = (q.astype(jnp.float32) @ v.astype(jnp.float32).T) / temperature
    keep = negative_mask | jnp.eye(q.shape[0], dtype=bool)
    logits = jnp.where(keep, logits, -jnp.inf)
    l_qv = -jnp.diagonal(jax.nn.log_softmax(logits, axis=1))
    if not symmetric:
        return l_qv.mean(), l_qv
    l_vq = -jnp.diagonal(jax.nn.log_softmax(logits, axis=0))
    return 0.5 * (l_qv.mean() + l_vq.mean()), l_qv


def embed_text_rows(model: Qwen3VL, ids, positions, mask, opts: RunOptions):
    """Pooled unit vectors [B, D] of right-padded text prompts (`TextVideoEmbedder.embed_texts`' forward)."""
    return E.embed(model, ids, positions, mask, opts=opts)


def embed_video_rows(model: Qwen3VL, ids, positions, mask, vis_index, merged, deep, opts: RunOptions):
    """Pooled unit vectors [B, D] of right-padded video prompts whose placeholders take precomputed vision features:
    vis_index [B, T] rows of merged [N, D] / deep [n, N, D] (-1: a text token). The same forward as
    `TextVideoEmbedder.embed_videos` with the vision tower's output given."""
    x = model.text.embed_tokens(ids, opts.jdtype)
    x, visual = model._fill(x, vis_index, merged, deep)
    out = model.decode(x, positions, mask, opts=opts, visual=visual, logits="none")
    return E.l2_normalize(E.last_token_pool(out.hidden, mask))


def stage0_loss(params, frozen, batch, *, graphdef, opts: RunOptions, temperature: float, symmetric: bool):
    model = nnx.merge(graphdef, params, frozen)
    q = embed_text_rows(model, batch["q_ids"], batch["q_pos"], batch["q_mask"], opts)
    v = embed_video_rows(model, batch["v_ids"], batch["v_pos"], batch["v_mask"], batch["v_index"],
                         batch["merged"], batch["deep"], opts)
    loss, rows = infonce_matrix(q, v, batch["negative_mask"], temperature, symmetric)
    hits = jnp.argmax(q @ v.T, axis=1) == jnp.arange(q.shape[0])
    return loss, dict(batch_r1=hits.mean())


def make_train_step(graphdef, tx: optax.GradientTransformation, opts: RunOptions, temperature: float,
                    symmetric: bool, lr_fn):
    """train_step(state, batch) -> (state, metrics); a non-finite loss or gradient skips the update."""
    loss_fn = functools.partial(stage0_loss, graphdef=graphdef, opts=opts, temperature=temperature,
                                symmetric=symmetric)

    def train_step(state: state_lib.TrainState, batch):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.frozen, batch)
        new, gnorm, ok = state_lib.guarded_update(state, grads, loss, tx)
        return new, dict(loss=loss, grad_norm=gnorm, batch_r1=aux["batch_r1"], lr=lr_fn(state.step))

    return train_step


def engine_trainable(path) -> bool:
    """The language model of the engine minus its LM head (pooled hidden states never reach it)."""
    return path[0] == "text" and path[-1] != "lm_head"


# ---- host: the videos as precomputed vision features -------------------------------------------------------------
@dataclasses.dataclass
class VideoSet:
    """Prompts and frozen vision features of a list of videos, padded to common shapes (one compiled step)."""
    ids: np.ndarray        # [N, L] int32 right-padded prompt ids
    positions: np.ndarray  # [3, N, L] int32 M-RoPE positions
    mask: np.ndarray       # [N, L] int32
    index: np.ndarray      # [N, L] int32 row of the video's own features (< R), -1 for text tokens
    merged: np.ndarray     # [N, R, D] float32 merged vision features (zero rows past the video's tokens)
    deep: np.ndarray       # [n, N, R, D] float32 DeepStack features

    def batch(self, rows: np.ndarray) -> dict:
        R = self.merged.shape[1]
        idx = self.index[rows]
        glob = np.where(idx >= 0, idx + (np.arange(len(rows)) * R)[:, None], -1).astype(np.int32)
        return dict(v_ids=self.ids[rows], v_pos=self.positions[:, rows], v_mask=self.mask[rows], v_index=glob,
                    merged=self.merged[rows].reshape(-1, self.merged.shape[-1]),
                    deep=self.deep[:, rows].reshape(self.deep.shape[0], -1, self.deep.shape[-1]))


def video_features(embedder: TextVideoEmbedder, frames: Sequence[np.ndarray], *, chunk: int = 32,
                   log_every: int = 0) -> VideoSet:
    """Prompt ids and the frozen vision tower's features of each video (the engine's own preprocessing)."""
    model = nnx.merge(embedder.graphdef, embedder.state)
    cfg = model.cfg
    prepared = embedder.prepare_videos(list(frames))
    grids = [tuple(vi.grid_thw) for _, vi in prepared]
    G = max(g[0] for g in grids)
    HW = max(g[1] * g[2] for g in grids)
    mu = cfg.vision.spatial_merge_size ** 2
    R = G * HW // mu
    L = round_up(max(len(ids) for ids, _ in prepared), 16)
    N = len(prepared)
    D = cfg.vision.out_hidden_size
    n_deep = len(cfg.vision.deepstack_visual_indexes)
    out = VideoSet(ids=np.full((N, L), embedder.ids.pad, np.int32), positions=np.zeros((3, N, L), np.int32),
                   mask=np.zeros((N, L), np.int32), index=np.full((N, L), -1, np.int32),
                   merged=np.zeros((N, R, D), np.float32), deep=np.zeros((n_deep, N, R, D), np.float32))
    encode = jax.jit(lambda st, vb: nnx.merge(embedder.graphdef, st).encode_vision(vb, embedder.opts))
    buckets = VisionBuckets(items=(chunk,), groups=(G,), patches=(HW,))
    t0 = time.perf_counter()
    for lo in range(0, N, chunk):
        part = list(range(lo, min(lo + chunk, N)))
        vb = pack_vision([(prepared[i][1].pixel_rows, grids[i]) for i in part], cfg.vision, buckets)
        merged, deep = encode(embedder.state, vb)
        merged, deep = np.asarray(merged, np.float32), np.asarray(deep, np.float32)
        for k, i in enumerate(part):
            ids = prepared[i][0]
            n = len(ids)
            out.ids[i, :n] = ids
            out.mask[i, :n] = 1
            pos, _ = get_rope_index(ids[None], image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                                    spatial_merge_size=cfg.vision.spatial_merge_size, video_grid_thw=[grids[i]],
                                    attention_mask=np.ones((1, n), np.int32))
            out.positions[:, i, :n] = pos[:, 0]
            ph = np.flatnonzero(ids == cfg.video_token_id)
            out.index[i, ph] = np.arange(len(ph), dtype=np.int32)  # merged rows in placeholder order
            out.merged[i] = merged[k]
            out.deep[:, i] = deep[:, k]
        if log_every and (lo // chunk + 1) % log_every == 0:
            log.info("stage 0: vision features of %d/%d videos (%.0f s)", part[-1] + 1, N, time.perf_counter() - t0)
    return out


def text_batch(embedder: TextVideoEmbedder, texts: Sequence[str], length: int) -> dict:
    """Right-padded query prompts of the engine (`TextVideoEmbedder.text_ids`) at a fixed length."""
    ids = np.full((len(texts), length), embedder.ids.pad, np.int32)
    mask = np.zeros((len(texts), length), np.int32)
    for i, t in enumerate(texts):
        s = embedder.text_ids(t)
        if len(s) > length:
            raise ValueError(f"stage 0: query {t!r} has {len(s)} prompt tokens, more than "
                             f"config.demo.stage0.query_length = {length}; raise it")
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return dict(q_ids=ids, q_pos=text_positions(mask), q_mask=mask)


# ---- the loop task ---------------------------------------------------------------------------------------------
class Stage0Task(loop.SteppedTask):
    """loop.Task of Stage 0 (see the module docstring)."""

    def __init__(self, config, embedder: TextVideoEmbedder, *, test_keys: frozenset):
        c = config.demo.stage0
        self.config, self.c, self.embedder = config, c, embedder
        self.syn = config.synthetic
        self.total_steps = int(c.steps)
        self.B = int(c.batch_size)
        if self.B % 2:
            raise ValueError(f"config.demo.stage0.batch_size must be even (twins), got {self.B}")
        self.test_keys = test_keys
        self.pool = SW.plan_pool(self.syn, int(c.pool_videos), seed=(int(c.seed), 0), exclude=test_keys)
        self.val = SW.plan_pool(self.syn, int(c.val_videos), seed=(int(c.seed), 1), exclude=test_keys)
        self._feats: VideoSet | None = None
        self._val_feats: VideoSet | None = None
        model = nnx.merge(embedder.graphdef, embedder.state)
        graphdef, params, frozen = nnx.split(model, lambda path, _: engine_trainable(tuple(str(p) for p in path)),
                                             ...)
        # copies: the step donates its state, and these arrays are also the untrained engine's
        self.graphdef, self.params, self.frozen = graphdef, jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy,
                                                                                                           frozen)
        sched = optim.linear_decay(float(c.learning_rate), self.total_steps, int(c.warmup_steps))
        self.opt = optim.adamw_groups({"engine": sched}, lambda p: "engine", weight_decay=float(c.weight_decay),
                                      decay_mask=optim.grpo_decays, clip=1.0)
        opt_state = jax.jit(self.opt.tx.init)(self.params)
        self.state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=self.params, frozen=self.frozen,
                                          opt_state=opt_state, skipped=jnp.zeros((), jnp.int32))
        # on the engine's mesh, as its weights are: an uncommitted leaf would make step 2 compile again
        self.state = sharding.onto_mesh(self.state, embedder.mesh)
        self._step = jax.jit(make_train_step(self.graphdef, self.opt.tx, embedder.opts, float(c.temperature),
                                             bool(c.symmetric), sched), donate_argnums=(0,))
        self._embed_t = jax.jit(lambda st, b: embed_text_rows(nnx.merge(self.graphdef, st["p"], st["f"]), b["q_ids"],
                                                              b["q_pos"], b["q_mask"], embedder.opts))
        self._embed_v = jax.jit(lambda st, b: embed_video_rows(nnx.merge(self.graphdef, st["p"], st["f"]),
                                                               b["v_ids"], b["v_pos"], b["v_mask"], b["v_index"],
                                                               b["merged"], b["deep"], embedder.opts))

    # features are computed on first use, so a finished run that only restores its engine skips them
    def features(self) -> VideoSet:
        if self._feats is None:
            t = time.perf_counter()
            self._feats = video_features(self.embedder, [SW.render_video(p.video, self.syn) for p in self.pool],
                                         log_every=16)
            log.info("stage 0: %d pool videos rendered and encoded in %.0f s", len(self.pool),
                     time.perf_counter() - t)
        return self._feats

    def batch_rows(self, step: int) -> tuple[np.ndarray, list[str]]:
        """Pool rows and query texts of batch `step` (a pure function of the seed and the step)."""
        rng = np.random.default_rng([int(self.c.seed), 2, int(step)])
        n_twins = len(self.pool) // 2
        if self.c.same_background_batches:
            # every first twin of a batch on one background: the background (the easiest attribute, learnt first)
            # then tells no pair apart, so the gradient is about colour, shape, direction and lane from step 1
            bgs = sorted({self.pool[2 * k].video.background for k in range(n_twins)})
            bg = bgs[int(rng.integers(len(bgs)))]
            cand = np.array([k for k in range(n_twins) if self.pool[2 * k].video.background == bg])
            twins = rng.choice(cand, size=min(self.B // 2, len(cand)), replace=False)
            if len(twins) < self.B // 2:
                raise ValueError(f"config.demo.stage0.pool_videos={len(self.pool)} leaves {len(cand)} twins on "
                                 f"background {bg!r}, fewer than batch_size/2 = {self.B // 2}; raise pool_videos")
        else:
            twins = rng.choice(n_twins, size=self.B // 2, replace=False)
        rows = np.stack([2 * twins, 2 * twins + 1], axis=1).reshape(-1)
        texts = [TX.pool_query(self.pool[int(r)], int(rng.integers(len(TX.QUERY_TEMPLATES)))) for r in rows]
        return rows, texts

    def make_batch(self, step: int) -> dict:
        rows, texts = self.batch_rows(step)
        keys = [self.pool[int(r)].key for r in rows]
        same = np.array([[a == b for b in keys] for a in keys])
        return dict(**text_batch(self.embedder, texts, int(self.c.query_length)), **self.features().batch(rows),
                    negative_mask=~same)

    def embed(self, state, texts: Sequence[str], videos: VideoSet, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        st = {"p": state.params, "f": state.frozen}
        q = np.concatenate([np.asarray(self._embed_t(st, text_batch(self.embedder, _pad(texts[i:i + chunk], chunk),
                                                                       int(self.c.query_length))))[:len(texts[i:i + chunk])]
                            for i in range(0, len(texts), chunk)])
        n = videos.ids.shape[0]
        v = np.concatenate([np.asarray(self._embed_v(st, videos.batch(_pad_rows(np.arange(i, min(i + chunk, n)),
                                                                                chunk))))[:min(chunk, n - i)]
                            for i in range(0, n, chunk)])
        return q, v

    def val_r1(self, state) -> float:
        """R@1 of the held-out train-side videos' queries (one per video, template 0) over those videos."""
        if self._val_feats is None:
            self._val_feats = video_features(self.embedder, [SW.render_video(p.video, self.syn) for p in self.val])
        texts = [TX.pool_query(p, 0) for p in self.val]
        q, v = self.embed(state, texts, self._val_feats)
        return float(np.mean(np.argmax(q @ v.T, axis=1) == np.arange(len(texts))))

    def evaluate(self, state) -> dict:
        return {"val_r1": self.val_r1(state)}


def _pad(texts: Sequence[str], n: int) -> list[str]:
    texts = list(texts)
    return texts + [texts[-1]] * (n - len(texts))


def _pad_rows(rows: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([rows, np.full(n - len(rows), rows[-1])]) if len(rows) < n else rows


def run_stage0(config, embedder: TextVideoEmbedder) -> tuple[TextVideoEmbedder, dict]:
    """Train (or resume, or just restore) Stage 0 under `stage0_dir(config)`; returns the trained engine as a
    `TextVideoEmbedder` and a summary. The engine's parameters are also written to `<dir>/engine` (what
    `demo_models.demo_embedder` loads)."""
    out = demo_models.stage0_dir(config)
    test_keys = frozenset(SW.split_keys(config.synthetic, "test"))
    task = Stage0Task(config, embedder, test_keys=test_keys)
    t0 = time.perf_counter()
    state, steps, stopped = loop.run(task, task.state, out_dir=out, ckpt_cfg=config.demo.stage0.checkpoint,
                                     log_every=1, desc="stage 0 (search engine)")
    if stopped:
        return None, dict(stopped=True, steps=steps)
    model = nnx.merge(task.graphdef, state.params, state.frozen)
    engine = os.path.join(out, "engine")
    if not os.path.isdir(engine):
        orbax_io.save_params(engine, nnx.to_pure_dict(nnx.state(model)))
    trained = TextVideoEmbedder(model, embedder.tokenizer, instruction=embedder.instruction,
                                max_length=embedder.max_length, video_cfg=embedder.video_cfg, opts=embedder.opts)
    return trained, dict(stopped=False, steps=steps, wall_s=time.perf_counter() - t0, dir=out,
                         pool_videos=len(task.pool), val_videos=len(task.val))


__all__ = ["Stage0Task", "VideoSet", "embed_text_rows", "embed_video_rows", "engine_trainable", "infonce_matrix",
           "ensure_engine", "main_stage0", "make_train_step", "run_stage0", "stage0_loss", "text_batch", "video_features"]


def ensure_engine(config) -> dict | None:
    """Stage 0 for a run of the demo's models: train the search engine (or resume it, or find it trained) before
    anything loads it (`demo_models.demo_embedder`). None when `config.demo.enabled` or `config.demo.stage0.enabled` is
    off. One process only: a multi-process run needs the engine trained beforehand."""
    if not (config.demo.enabled and config.demo.stage0.enabled):
        return None
    out = demo_models.stage0_dir(config)
    engine = os.path.join(out, "engine")
    summary = dict(output_dir=os.path.abspath(out), engine=os.path.abspath(engine))
    if jax.process_count() > 1:  # the loop's collectives would wait for processes that are not training
        if not os.path.isdir(engine):
            raise SetupError(f"{engine} not found: train the demo's search engine in one process first "
                             "(the same command with --config.mode=stage0, without launch/)")
        return summary
    if not os.path.isdir(engine) and demo_models.pretrained_vision(config) and not os.path.isdir(
            demo_models.vision_dir(config)):
        v = vision_pretrain.run_vision_pretrain(config, demo_models.demo_embedder(config, untrained=True, vision=False))
        if v["stopped"]:
            raise SystemExit(f"stopped during Stage 0v at step {v['steps']}/{config.demo.vision.steps}: run the "
                             "same command to resume")
        summary.update(vision_steps=v["steps"], vision_wall_s=v["wall_s"])
    if not os.path.isdir(engine):
        _, s = run_stage0(config, demo_models.demo_embedder(config, untrained=True))
        if s["stopped"]:
            raise SystemExit(f"stopped during Stage 0 at step {s['steps']}/{config.demo.stage0.steps}: run the same "
                             "command to resume")
        summary.update(steps=s["steps"], wall_s=s["wall_s"])
    if demo_models.pretrained_policy(config) and not os.path.isdir(demo_models.caption_dir(config)):
        models = demo_models.demo_models(config, demo_models.demo_embedder(config), captioned=False)
        cap = caption_pretrain.run_caption_pretrain(config, models)
        if cap["stopped"]:
            raise SystemExit(f"stopped during Stage 0c at step {cap['steps']}/{config.demo.caption.steps}: run the "
                             "same command to resume")
        summary.update(caption_steps=cap["steps"], caption_wall_s=cap["wall_s"])
    return summary


def main_stage0(config) -> dict:
    """`--config.mode=stage0`: train the demo's search engine only (configs/toy.py)."""
    if not (config.demo.enabled and config.demo.stage0.enabled):
        raise SetupError("--config.mode=stage0 trains the demo's search engine: it needs "
                         "--config.demo.enabled=True and --config.demo.stage0.enabled=True (configs/toy.py)")
    return ensure_engine(config)
