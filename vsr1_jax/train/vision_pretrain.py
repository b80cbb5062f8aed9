"""Stage 0v of the demo: pretrain the tiny vision tower on the synthetic world's attributes, before Stage 0 trains
the search engine on its features and before the policy is built on it.

Why (issue 23): the real system's search engine and policy read videos through Qwen3-VL's *pretrained* vision
encoder; the demo's tiny models start from a random one. Linear probes of the random tower's merged features (1,024
train-side videos, 256 held out) recover the background (1.00) and the colour (0.71) but hardly the shape (0.48,
chance 0.33) or the direction (0.45, chance 0.25); the engine trained on them stays near R@1 0.15 and the policy
cannot tell a matching video from a near-duplicate. This stage gives both the features a pretrained encoder gives:
the vision tower (patch embedding, blocks, mergers) and one linear head per attribute -- shape, colour, direction
and lane of the event the video is about, and the background -- trained with the summed cross-entropy of the heads
on the masked mean and max of the merged features, on procedurally rendered *train-side* videos (`plan_pool` with
the test split's event tuples excluded; the test split is never read). Its output, the vision tower's parameters
(`demo_models.vision_dir`: `<stage0 dir>/vision`), is loaded into the untrained engine that Stage 0 starts from
and into the policy (`demo_models.demo_embedder`, `demo_models.demo_models`); the heads are dropped. Not part of
the original (whose vision encoder comes pretrained).

Batch s is a pure function of (seed, s), so a killed run resumes bit for bit through the generic loop (checkpoints,
metrics.jsonl, TensorBoard under `<stage0 dir>/vision_run`). Held-out accuracy per attribute every `eval_every`
steps on other train-side videos.
"""
from __future__ import annotations

import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vsr1_jax import demo_models, sharding
from vsr1_jax.ckpt import orbax_io
from vsr1_jax.data import synthetic_world as SW
from vsr1_jax.models.qwen3_vl.vision import VisionBuckets, pack_vision
from vsr1_jax.processing.video import cfg_get
from vsr1_jax.retrieval.encoder import DEFAULT_VIDEO_CFG, TextVideoEmbedder
from vsr1_jax.train import loop, optim
from vsr1_jax.train import state as state_lib

log = logging.getLogger(__name__)

HEADS = ("shape", "color", "direction", "lane", "background")


def attribute_options(syn) -> dict[str, list[str]]:
    """The class names of each head, in the world's config order."""
    a = syn.attributes
    return {"shape": list(a.shapes), "color": list(a.colors.keys()), "direction": list(a.directions),
            "lane": list(a.lanes), "background": list(a.backgrounds.keys())}


def labels_of(item: SW.PoolItem, options: dict[str, list[str]]) -> list[int]:
    ev = item.event
    return [options[h].index(item.video.background if h == "background" else getattr(ev, h)) for h in HEADS]


class AttributeHeads(nnx.Module):
    """One linear classifier per attribute over [mean, max] of a video's merged features."""

    def __init__(self, dim: int, sizes: dict[str, int], *, rngs: nnx.Rngs):
        self.heads = nnx.Dict({h: nnx.Linear(2 * dim, sizes[h], rngs=rngs) for h in HEADS})

    def __call__(self, pooled):
        return {h: self.heads[h](pooled) for h in HEADS}


DENSE = ("shape", "direction", "color")   # per-token heads (with `dense`): the object a merged token shows


def dense_sizes(options: dict[str, list[str]]) -> dict[str, int]:
    """Classes of the per-token heads: the shape, the direction (+ "still": the distractor), the colour, and
    "present" (an object's centre in the token's cell, or not)."""
    return {"shape": len(options["shape"]), "direction": len(options["direction"]) + 1,
            "color": len(options["color"]), "present": 2}


def token_labels(video: SW.SyntheticVideo, grid, syn, options: dict[str, list[str]], max_frames: int,
                 rows: int) -> np.ndarray:
    """int32 [rows, 4]: for each merged token of the engine's view of `video` (`grid` (t, h, w) in patches, `rows`
    merged rows per frame group in the batch layout), the (shape, direction, colour, present) of the object whose
    centre lies in the token's cell in either frame of its group, -1 where no object's does (present 0). Moving
    events win over the still distractor (they are drawn over it). Frames as `TextVideoEmbedder` samples them: at
    most `max_frames` by linspace, padded to even; merged tokens row-major over the (h/2, w/2) grid of each group."""
    t, h, w = (int(x) for x in grid)
    T = video.num_frames
    frames = np.linspace(0, T - 1, max_frames).astype(int) if T > max_frames else np.arange(T)
    if len(frames) % 2:
        frames = np.append(frames, frames[-1])
    mh, mw = h // 2, w // 2
    ch, cw = float(syn.video.height) / mh, float(syn.video.width) / mw
    out = np.full((t * rows, 4), -1, np.int32)
    out[:, 3] = 0
    for g in range(t):
        for k in range(mh * mw):
            r, c = divmod(k, mw)
            inside = lambda x, y: r * ch <= y < (r + 1) * ch and c * cw <= x < (c + 1) * cw  # noqa: E731
            label = None
            for f in frames[2 * g: 2 * g + 2]:
                for ev in video.events:
                    if ev.start <= f <= ev.end and inside(*SW.event_center(ev, int(f), syn)):
                        label = (ev.shape, options["direction"].index(ev.direction), ev.color)
                        break
                if label is not None:
                    break
            d = video.distractor
            if label is None and d is not None and inside(d.cx, d.cy):
                label = (d.shape, len(options["direction"]), d.color)
            if label is not None:
                out[g * rows + k] = (options["shape"].index(label[0]), label[1], options["color"].index(label[2]), 1)
    return out


class DenseHeads(nnx.Module):
    """One linear classifier per `dense_sizes` head over each merged token's features."""

    def __init__(self, dim: int, sizes: dict[str, int], *, rngs: nnx.Rngs):
        self.heads = nnx.Dict({h: nnx.Linear(dim, n, rngs=rngs) for h, n in sizes.items()})

    def __call__(self, merged):
        return {h: head(merged) for h, head in self.heads.items()}


def merged_features(visual, vision_batch, opts):
    merged, _ = visual.encode_batch(vision_batch, dtype=opts.jdtype, attn_impl=opts.vision_attn_impl, remat=False)
    return merged


def pool(merged, token_mask):
    """[B, 2D] masked mean and max of each video's merged features (token_mask [B, R] marks real rows)."""
    m = token_mask[..., None].astype(merged.dtype)
    mean = (merged * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    mx = jnp.max(jnp.where(m > 0, merged, jnp.finfo(merged.dtype).min), axis=1)
    return jnp.concatenate([mean, mx], axis=-1)


def pooled_features(visual, vision_batch, token_mask, opts):
    """[B, 2D] masked mean and max of each video's merged vision features (token_mask [B, R] marks real rows)."""
    return pool(merged_features(visual, vision_batch, opts), token_mask)


def attribute_logits(params, batch, *, graphdefs, opts) -> dict:
    """Each head's logits [B, classes] for a batch of videos; with dense heads also theirs, [B, R, classes], under
    "dense_<head>"."""
    visual = nnx.merge(graphdefs["visual"], params["visual"])
    heads = nnx.merge(graphdefs["heads"], params["heads"])
    merged = merged_features(visual, batch["vision"], opts)
    out = heads(pool(merged, batch["token_mask"]))
    if "dense" in params:
        out.update({f"dense_{h}": v for h, v in nnx.merge(graphdefs["dense"], params["dense"])(merged).items()})
    return out


def _masked_ce(logits, labels, mask):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    hit = (jnp.argmax(logits, -1) == labels)
    n = jnp.maximum(mask.sum(), 1.0)
    return (ce * mask).sum() / n, (hit * mask).sum() / n


def vision_loss(params, batch, *, graphdefs, opts, dense_weight: float = 1.0):
    """The pooled heads' summed cross-entropy; with dense heads plus dense_weight x (their summed cross-entropy: the
    attribute heads over the tokens that show an object, "present" over every real token)."""
    logits = attribute_logits(params, batch, graphdefs=graphdefs, opts=opts)
    losses = {h: optax.softmax_cross_entropy_with_integer_labels(logits[h], batch["labels"][:, j]).mean()
              for j, h in enumerate(HEADS)}
    acc = {f"acc_{h}": (jnp.argmax(logits[h], -1) == batch["labels"][:, j]).mean() for j, h in enumerate(HEADS)}
    loss = sum(losses.values())
    if "dense" in params:
        real = batch["token_mask"].astype(jnp.float32)
        tl = batch["token_labels"]
        obj = real * (tl[..., 3] == 1)
        for j, h in enumerate(DENSE + ("present",)):
            l, a = _masked_ce(logits[f"dense_{h}"], tl[..., j], real if h == "present" else obj)
            loss = loss + dense_weight * l
            acc[f"acc_dense_{h}"] = a
    return loss, acc


def make_train_step(graphdefs, tx, opts, lr_fn, dense_weight: float = 1.0):
    loss_fn = functools.partial(vision_loss, graphdefs=graphdefs, opts=opts, dense_weight=dense_weight)

    def train_step(state: state_lib.TrainState, batch):
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        new, gnorm, _ = state_lib.guarded_update(state, grads, loss, tx)
        return new, dict(loss=loss, grad_norm=gnorm, lr=lr_fn(state.step), **acc)

    return train_step


class _Videos:
    """Pixel rows and grids of a list of pool items (the engine's own preprocessing), packed per batch."""

    def __init__(self, embedder: TextVideoEmbedder, items, syn, options, dense: bool = False):
        prepared = embedder.prepare_videos([SW.render_video(p.video, syn) for p in items])
        # float16 on the host (half the memory of a large pool); packed back to float32 per batch
        self.items = [(vi.pixel_rows.astype(np.float16), tuple(int(x) for x in vi.grid_thw)) for _, vi in prepared]
        self.labels = np.asarray([labels_of(p, options) for p in items], np.int32)
        self.G = max(g[0] for _, g in self.items)
        self.HW = max(g[1] * g[2] for _, g in self.items)
        self.token_labels = None
        if dense:   # per group, the merged rows of the largest grid (the batch layout of `batch`)
            mu = embedder.cfg.vision.spatial_merge_size ** 2
            max_frames = int(cfg_get(embedder.video_cfg, "max_frames", DEFAULT_VIDEO_CFG["max_frames"]))
            self.token_labels = [token_labels(p.video, g, syn, options, max_frames, self.HW // mu)
                                 for p, (_, g) in zip(items, self.items)]

    def batch(self, rows, cfg, G, HW) -> dict:
        items = [(self.items[int(r)][0].astype(np.float32), self.items[int(r)][1]) for r in rows]
        vb = pack_vision(items, cfg, VisionBuckets(items=(len(rows),), groups=(G,), patches=(HW,)))
        mu = cfg.spatial_merge_size ** 2
        mask = np.zeros((len(rows), G * HW // mu), np.float32)
        for k, r in enumerate(rows):
            t, h, w = self.items[int(r)][1]
            for g in range(t):
                mask[k, g * HW // mu: g * HW // mu + h * w // mu] = 1.0
        out = dict(vision=vb, token_mask=mask, labels=self.labels[np.asarray(rows)])
        if self.token_labels is not None:
            tl = np.full((len(rows), G * HW // mu, 4), -1, np.int32)
            tl[..., 3] = 0
            for k, r in enumerate(rows):
                lab = self.token_labels[int(r)]
                tl[k, :len(lab)] = lab
            out["token_labels"] = tl
        return out


class VisionPretrainTask(loop.SteppedTask):
    """loop.Task of Stage 0v (see the module docstring)."""

    def __init__(self, config, embedder: TextVideoEmbedder, *, test_keys: frozenset):
        c = config.demo.vision
        self.config, self.c, self.embedder, self.syn = config, c, embedder, config.synthetic
        self.total_steps = int(c.steps)
        self.B = int(c.batch_size)
        self.options = attribute_options(self.syn)
        self.pool = SW.plan_pool(self.syn, int(c.pool_videos), seed=(int(c.seed), 3), exclude=test_keys)
        self.val = SW.plan_pool(self.syn, int(c.val_videos), seed=(int(c.seed), 4), exclude=test_keys)
        self._videos = None
        model = nnx.merge(embedder.graphdef, embedder.state)
        self.vcfg = model.cfg.vision
        heads = AttributeHeads(self.vcfg.out_hidden_size, {h: len(v) for h, v in self.options.items()},
                               rngs=nnx.Rngs(int(c.seed)))
        gv, pv = nnx.split(model.visual)
        gh, ph = nnx.split(heads)
        self.graphdefs = {"visual": gv, "heads": gh}
        params = {"visual": jax.tree.map(jnp.copy, pv), "heads": ph}   # the step donates; pv is the engine's
        self.dense = bool(c.dense)
        if self.dense:
            gd, pd = nnx.split(DenseHeads(self.vcfg.out_hidden_size, dense_sizes(self.options),
                                          rngs=nnx.Rngs(int(c.seed) + 1)))
            self.graphdefs["dense"], params["dense"] = gd, pd
        sched = optim.linear_decay(float(c.learning_rate), self.total_steps, int(c.warmup_steps))
        self.opt = optim.adamw_groups({"vision": sched}, lambda p: "vision", weight_decay=float(c.weight_decay),
                                      decay_mask=optim.grpo_decays, clip=1.0)
        self.state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen={},
                                          opt_state=jax.jit(self.opt.tx.init)(params),
                                          skipped=jnp.zeros((), jnp.int32))
        # on the engine's mesh, as its weights are: an uncommitted leaf would make step 2 compile again
        self.state = sharding.onto_mesh(self.state, embedder.mesh)
        self._step = jax.jit(make_train_step(self.graphdefs, self.opt.tx, embedder.opts, sched,
                                             float(c.dense_weight)), donate_argnums=(0,))
        logits = functools.partial(attribute_logits, graphdefs=self.graphdefs, opts=embedder.opts)
        self._predict = jax.jit(lambda p, b: {h: jnp.argmax(v, -1) for h, v in logits(p, b).items()})

    def videos(self) -> tuple[_Videos, _Videos]:
        """(pool, held-out) videos, rendered and preprocessed on first use (a run restored at its end skips them)."""
        if self._videos is None:
            t = time.perf_counter()
            self._videos = (_Videos(self.embedder, self.pool, self.syn, self.options, self.dense),
                            _Videos(self.embedder, self.val, self.syn, self.options, self.dense))
            log.info("stage 0v: %d + %d videos rendered and preprocessed in %.0f s", len(self.pool), len(self.val),
                     time.perf_counter() - t)
        return self._videos

    def _shape(self) -> tuple[int, int]:
        """(temporal groups, patches per frame) of every batch: one compiled step and one compiled predict."""
        pool, val = self.videos()
        return max(pool.G, val.G), max(pool.HW, val.HW)

    def batch_rows(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([int(self.c.seed), 5, int(step)])
        return rng.choice(len(self.pool), size=self.B, replace=False)

    def make_batch(self, step: int) -> dict:
        G, HW = self._shape()
        return self.videos()[0].batch(self.batch_rows(step), self.vcfg, G, HW)

    def evaluate(self, state) -> dict:
        return {f"val_{k}": v for k, v in self.val_accuracy(state.params).items()}

    def val_accuracy(self, params) -> dict[str, float]:
        """Accuracy of each head on the held-out train-side videos."""
        G, HW = self._shape()
        v = self.videos()[1]
        n = len(v.items)
        hits = {h: 0 for h in HEADS}
        dense_hits, dense_n = {h: 0 for h in DENSE}, 0
        for lo in range(0, n, self.B):
            rows = np.arange(lo, min(lo + self.B, n))
            padded = np.concatenate([rows, np.full(self.B - len(rows), rows[-1])])
            batch = v.batch(padded, self.vcfg, G, HW)
            pred = self._predict(params, jax.tree.map(jnp.asarray, batch))
            for j, h in enumerate(HEADS):
                hits[h] += int((np.asarray(pred[h])[:len(rows)] == v.labels[rows, j]).sum())
            if self.dense:   # over the tokens that show an object
                tl = batch["token_labels"][:len(rows)]
                obj = (tl[..., 3] == 1) & (batch["token_mask"][:len(rows)] > 0)
                dense_n += int(obj.sum())
                for j, h in enumerate(DENSE):
                    dense_hits[h] += int(((np.asarray(pred[f"dense_{h}"])[:len(rows)] == tl[..., j]) & obj).sum())
        out = {h: hits[h] / n for h in HEADS}
        if self.dense:
            out.update({f"dense_{h}": dense_hits[h] / max(dense_n, 1) for h in DENSE})
        return out



def run_vision_pretrain(config, embedder: TextVideoEmbedder) -> dict:
    """Train (or resume) Stage 0v and write the vision tower's parameters to `vision_dir(config)`."""
    task = VisionPretrainTask(config, embedder, test_keys=frozenset(SW.split_keys(config.synthetic, "test")))
    return loop.run_pretraining(
        task, out_dir=os.path.join(demo_models.stage0_dir(config), "vision_run"),
        ckpt_cfg=config.demo.vision.checkpoint, desc="stage 0v (vision tower)",
        save=lambda state: orbax_io.save_params(demo_models.vision_dir(config), jax.tree.map(
            np.asarray, nnx.to_pure_dict(state.params["visual"])), overwrite=True))


__all__ = ["AttributeHeads", "DENSE", "DenseHeads", "HEADS", "VisionPretrainTask", "attribute_logits",
           "attribute_options", "dense_sizes", "labels_of", "token_labels",
           "make_train_step", "pooled_features", "run_vision_pretrain", "vision_loss"]
