"""Stage 0c of the demo: the tiny policy learns to describe the synthetic videos, before Stage 1 teaches it the agent.

Why (issue 23): the real policy is a *pretrained* Qwen3-VL that already says what a video shows; the demo's tiny
policy starts as a random language model over Stage 0v's vision tower. After Stage 1 alone (372 agent items) the
colour, shape and direction its turn-1 sentence names agreed with the shown video at chance (0.226 / 0.326 / 0.296,
`demo_metrics.reads_video`): it wrote the query's words, so it could not verify. This stage is the tiny stand-in for
a VLM's captioning pretraining: on procedurally rendered *train-side* videos (`plan_pool` with the test split's event
tuples excluded; the test split is never read) the policy is trained with the causal-LM loss on one user turn (the
video and `PROMPT`) and an assistant turn that says what the video shows (`synthetic_text.caption`: background,
each moving shape's colour, shape, direction, lane and seconds, the still distractor). The examples and batches are
Stage 1's (`sft_batches.SFTExamples` / `SFTCollate`, the policy's `config.video.sft` preprocessing and chat
template), the trainable leaves Stage 1's policy leaves (text model and vision mergers), the loss Stage 1's LM term.
Its output, the whole policy's parameters (`demo_models.caption_dir`: `<stage0 dir>/caption`), is what
`demo_models.demo_models` builds the policy from; Stage 1 starts there. Not part of the original (whose policy comes
pretrained).

Batch s is a pure function of (seed, s) (the videos are rendered per batch), so a killed run resumes bit for bit
through the generic loop (checkpoints, metrics.jsonl, TensorBoard under `<stage0 dir>/caption_run`). Every
`eval_every` steps: the held-out caption loss and, teacher-forced, how often every token of the first moving shape's
colour, shape and direction words is the policy's top choice, on other train-side videos.
"""
from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax import demo_models, sharding
from vsr1_jax.ckpt import orbax_io
from vsr1_jax.data import synthetic_text as TX
from vsr1_jax.data import synthetic_world as SW
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.processing import prompts as P
from vsr1_jax.processing.special_tokens import special_ids
from vsr1_jax.train import loop, optim, sft, sft_batches
from vsr1_jax.train import state as state_lib

log = logging.getLogger(__name__)

PROMPT = "Describe what moves in the video."
ATTRIBUTES = ("color", "shape", "direction")   # of the first moving shape: the held-out accuracy's words


def trainable(path) -> bool:
    """Stage 1's policy leaves (text model, vision merger and DeepStack mergers); the SQR head is untouched."""
    return path[0] == "policy" and optim.sft_trainable(path)


def attribute_spans(tokenizer, video: SW.SyntheticVideo) -> dict[str, tuple[int, int]]:
    """[start, end) of each ATTRIBUTES word of the first event in the tokens of `TX.caption(video)`: the caption's
    prefix up to a word and through it, tokenized (byte-level BPE splits before a space, so a prefix tokenizes as the
    start of the whole)."""
    text = TX.caption(video)
    words = TX.event_words(video.events[0])
    spans, at = {}, 0
    for name in ATTRIBUTES:
        i = text.index(" " + words[name], at)
        at = i + 1 + len(words[name])
        spans[name] = (len(tokenizer(text[:i])["input_ids"]), len(tokenizer(text[:at])["input_ids"]))
    return spans


def caption_loss(params, frozen, batch, *, graphdefs: state_lib.Graphdefs, opts: RunOptions, chunk: int):
    """Token-mean causal-LM loss over the assistant tokens of one micro-batch (Stage 1's LM term)."""
    policy, _ = graphdefs.modules(params, frozen)
    x, visual = policy.embed(batch["input_ids"], opts, vision=batch["vision"])
    out = policy.decode(x, batch["positions"], batch["attention_mask"], opts=opts, visual=visual, logits="none")
    lp = sft.lm_token_logprobs(policy, out.hidden, batch["label_src"], batch["label_ids"], chunk)
    m = batch["label_mask"].astype(jnp.float32)
    return -(lp * m).sum() / jnp.maximum(m.sum(), 1.0), out.hidden


def make_train_step(graphdefs, tx, opts, lr_fn, chunk: int):
    loss_fn = functools.partial(caption_loss, graphdefs=graphdefs, opts=opts, chunk=chunk)

    def train_step(state: state_lib.TrainState, batch):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.frozen, batch)
        new, gnorm, _ = state_lib.guarded_update(state, grads, loss, tx)
        return new, dict(loss=loss, grad_norm=gnorm, lr=lr_fn(state.step))

    return train_step


def make_predict(graphdefs, opts, chunk: int):
    """(loss, [B, La] top-1 token at every label position) of a batch."""
    def predict(params, frozen, batch):
        loss, hidden = caption_loss(params, frozen, batch, graphdefs=graphdefs, opts=opts, chunk=chunk)
        policy, _ = graphdefs.modules(params, frozen)
        h = jnp.take_along_axis(hidden, batch["label_src"][..., None], axis=1)
        return loss, jnp.argmax(policy.text.logits(h), axis=-1)

    return predict


class CaptionTask(loop.SteppedTask):
    """loop.Task of Stage 0c (see the module docstring)."""

    def __init__(self, config, models, *, test_keys: frozenset):
        c = config.demo.caption
        self.config, self.c, self.syn = config, c, config.synthetic
        self.total_steps, self.B = int(c.steps), int(c.batch_size)
        self.pool = SW.plan_pool(self.syn, int(c.pool_videos), seed=(int(c.seed), 6), exclude=test_keys)
        self.val = SW.plan_pool(self.syn, int(c.val_videos), seed=(int(c.seed), 7), exclude=test_keys)
        tok, policy = models.tokenizer, models.policy
        self.tokenizer = tok
        self.examples = sft_batches.SFTExamples(tok, tok, policy.cfg, config.video.sft,
                                                timestamps_mode=config.video.timestamps_mode,
                                                outer_vision_tokens=config.prompts.outer_vision_tokens)
        # one shape for every batch (one compile): the world's longest video and a caption bucket that holds the
        # longest caption (the rows are checked against them)
        self.collate = sft_batches.SFTCollate(policy.cfg, special_ids(tok, config.eval.refine_token).pad, 1,
                                              (int(c.max_tokens),), (int(c.max_caption_tokens),), None, None,
                                              num_latents=1)
        self.mesh = sharding.mesh_for(config.mesh.to_dict())
        self.opts = opts = RunOptions.from_config(config.model, remat="none")
        sched = optim.linear_decay(float(c.learning_rate), self.total_steps, int(c.warmup_steps))
        self.opt = optim.adamw_groups({"policy": sched}, lambda p: "policy", weight_decay=float(c.weight_decay),
                                      decay_mask=optim.grpo_decays, clip=1.0)
        self.state, self.graphdefs = state_lib.create(policy, models.head, trainable, self.opt.tx, self.mesh)
        chunk = int(config.sft.logprob_chunk)
        self._step = jax.jit(make_train_step(self.graphdefs, self.opt.tx, opts, sched, chunk), donate_argnums=(0,))
        self._predict = jax.jit(make_predict(self.graphdefs, opts, chunk))
        self._shape = None

    def _example(self, item: SW.PoolItem) -> dict:
        rec = {"index": -1, "qid": item.video.video_id, "query": "", "pos_video_id": "",
               "video_id": item.video.video_id, "frames": SW.render_video(item.video, self.syn),
               "messages": [{"role": "user", "content": P.VIDEO_MARKER + PROMPT},
                            {"role": "assistant", "content": TX.caption(item.video)}]}
        return self.examples(rec)

    def shape(self) -> tuple[int, int]:
        """(frame groups, patches per group) every batch is padded to: the largest the world renders."""
        if self._shape is None:
            frames = int(self.syn.video.max_frames)
            longest = next((p for p in self.pool + self.val if p.video.num_frames == frames), self.pool[0])
            grid = self._example(longest)["grid"]
            self._shape = (max(int(grid[0]), (frames + 1) // 2), int(grid[1] * grid[2]))
        return self._shape

    def batch_of(self, items) -> dict:
        examples = [self._example(p) for p in items]
        G, HW = self.shape()
        host = self.collate(examples, min_sizes=(0, 0, G, HW))
        keep = ("input_ids", "attention_mask", "positions", "label_src", "label_ids", "label_mask", "vision")
        return jax.tree.map(lambda a: a[0], {k: host[k] for k in keep})   # the one micro-batch

    def batch_rows(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([int(self.c.seed), 8, int(step)])
        return rng.choice(len(self.pool), size=self.B, replace=False)

    def make_batch(self, step: int) -> dict:
        return self.batch_of([self.pool[int(r)] for r in self.batch_rows(step)])

    def evaluate(self, state) -> dict:
        return {f"val_{k}": v for k, v in self.val_metrics(state).items()}

    def val_metrics(self, state) -> dict[str, float]:
        """Held-out caption loss (mean over batches) and, teacher-forced, the fraction of videos whose first moving
        shape's colour / shape / direction words are the policy's top-1 tokens, every token of the word."""
        hits, losses, n = {a: 0 for a in ATTRIBUTES}, [], len(self.val)
        for lo in range(0, n, self.B):
            items = self.val[lo:lo + self.B]
            padded = items + [items[-1]] * (self.B - len(items))
            batch = self.batch_of(padded)
            loss, top = self._predict(state.params, state.frozen, jax.tree.map(jnp.asarray, batch))
            top, labels = np.asarray(top), batch["label_ids"]
            losses.append(float(loss))
            for k, item in enumerate(items):
                for a, (s, e) in attribute_spans(self.tokenizer, item.video).items():
                    hits[a] += bool((top[k, s:e] == labels[k, s:e]).all())
        return {"loss": float(np.mean(losses)), **{f"acc_{a}": hits[a] / n for a in ATTRIBUTES}}


def run_caption_pretrain(config, models) -> dict:
    """Train (or resume) Stage 0c on `models.policy` and write the policy's parameters to `caption_dir(config)`."""
    task = CaptionTask(config, models, test_keys=frozenset(SW.split_keys(config.synthetic, "test")))

    def save(state):
        policy, _ = task.graphdefs.modules(state.params, state.frozen)
        orbax_io.save_params(demo_models.caption_dir(config),
                             jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(policy))), overwrite=True)

    return loop.run_pretraining(task, out_dir=os.path.join(demo_models.stage0_dir(config), "caption_run"),
                                ckpt_cfg=config.demo.caption.checkpoint, desc="stage 0c (policy captions)", save=save)


__all__ = ["ATTRIBUTES", "CaptionTask", "PROMPT", "attribute_spans", "caption_loss", "make_predict",
           "make_train_step", "run_caption_pretrain", "trainable"]
