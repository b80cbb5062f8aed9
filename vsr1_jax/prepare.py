"""Build the prepared data from raw videos with the project's own models: `run_build(config)` runs the original's
ordered steps (vsr1_jax/data/build/pipeline.py) with the search-engine embedder and the teacher built here.

    python -m vsr1_jax.main --config=configs/activitynet.py --config.mode=build --config.data_root=/data \\
        --config.data.build.raw_videos=/raw/activitynet/videos --config.data.build.annotations=/raw/activitynet-fig \\
        --config.data.build.embedder_checkpoint=/ckpt/Qwen3-VL-Embedding-2B \\
        --config.data.build.teacher_checkpoint=/ckpt/Qwen3-VL-8B-Thinking

The embedder is a Qwen3-VL-Embedding checkpoint (HF folder or `vsr1_jax.convert` output) behind
`retrieval.encoder.TextVideoEmbedder`; the teacher is any Qwen3-VL checkpoint sampled with `generate.sampler`
(temperature 0.4, top-p 0.9). `build.embedder="tiny"` / `build.teacher="tiny"` use the demo's tiny random models.
Not reproduced: the original teacher is Qwen3-VL-30B-A3B-Thinking, a mixture-of-experts model; the port has no MoE
layers, so a dense Qwen3-VL (2B/4B/8B, Instruct or Thinking) stands in for it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax import demo_models, sharding
from vsr1_jax.buckets import round_up
from vsr1_jax.ckpt.hf_read import load_hf_folder
from vsr1_jax.ckpt.layout import META_FILE, ConvertError
from vsr1_jax.ckpt.read import load_converted, module_from_params
from vsr1_jax.data.build import pipeline as PL
from vsr1_jax.data.build import store as ST
from vsr1_jax.data.paths import PreparedPaths
from vsr1_jax.data.settings import BuildSettings, GRPORows
from vsr1_jax.data.tiny_tokenizer import build_tiny_tokenizer
from vsr1_jax.data.validate import validate_dataset
from vsr1_jax.errors import SetupError
from vsr1_jax.generate.sampler import SamplingParams, Sampler, pack_prompts
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.processing import chat
from vsr1_jax.processing.special_tokens import special_ids
from vsr1_jax.processing.tokenizer import load_tokenizer
from vsr1_jax.processing.video import preprocess_video
from vsr1_jax.retrieval.encoder import TextVideoEmbedder

log = logging.getLogger(__name__)

# The original embeds queries without truncation (qwen3_vl_embedding.py Qwen3VLEmbedder max_length=None).
NO_TRUNCATION = 1 << 20


def _load_plain(path: str, dtype: str, what: str, field: str):
    """(config, params, tokenizer folder) of a plain Qwen3-VL(-Embedding) checkpoint: a converted folder or an HF
    folder (converted in memory)."""
    if not path or not os.path.isdir(path):
        raise SetupError(f"{what} checkpoint folder {path or '<empty>'!r} not found: set "
                         f"--config.data.build.{field}=<HF or converted Qwen3-VL folder> (or "
                         f"--config.data.build.{field.split('_')[0]}=tiny for the demo's tiny model)")
    try:
        if os.path.exists(os.path.join(path, META_FILE)):
            ck = load_converted(path)
        else:
            ck = load_hf_folder(path)
    except ConvertError as exc:
        raise SetupError(f"{what} checkpoint {path}: {exc} (mixture-of-experts Qwen3-VL models such as "
                         "the original's 30B-A3B teacher are not ported; use a dense Qwen3-VL)") from None
    if ck.tokenizer_dir is None:
        raise SetupError(f"{what} checkpoint {path} has no tokenizer files")
    return module_from_params(ck.cfg, ck.params, jnp.dtype(dtype) if dtype else None), ck.tokenizer_dir


def make_embedder(config, b: BuildSettings) -> TextVideoEmbedder:
    """The search engine of the build: `b.embedder` "tiny" = the demo's (so the eval demo can run on the result),
    else the Qwen3-VL-Embedding checkpoint at `b.embedder_checkpoint` (b: `BuildSettings.from_config(config)`;
    config: the model options, the mesh, the embedder's video limits and the demo's models)."""
    # several devices: every embedding batch is split over config.mesh's data-parallel axes
    mesh = sharding.mesh_for(config.mesh.to_dict())
    if b.embedder == "tiny":
        return demo_models.demo_embedder(config, mesh=mesh)
    # model.attn_impl "auto" (the default) = the fused cudnn kernel on NVIDIA GPUs in bf16: the embedder right-pads
    # its batches (per-row lengths); dense attention over a batch of 8 video prompts of ~7k tokens needs ~70 GB
    opts = RunOptions.from_config(config.model)
    model, tok_dir = _load_plain(b.embedder_checkpoint, config.model.dtype, "embedder", "embedder_checkpoint")
    tok, _ = load_tokenizer(tok_dir, add_refine=False)
    return TextVideoEmbedder(model, tok, instruction=b.embed_instruction, max_length=NO_TRUNCATION,
                             video_cfg=config.video.embedder.to_dict(), opts=opts, mesh=mesh,
                             prep_workers=b.decode_workers)


class SamplerTeacher:
    """The teacher as a batch function over `pipeline.teacher_request`s: the npy frames through the policy's video
    pipeline (real-second timestamps from the meta row, as the original teacher got them), the chat prompt, and
    categorical sampling with the project's sampler. Requests are grouped by video grid; each batch's PRNG key is
    the seed folded with its first request's pool index, so a resumed build draws the same samples."""

    def __init__(self, model: Qwen3VL, tokenizer, *, video_cfg: Mapping[str, Any], temperature: float, top_p: float,
                 max_new_tokens: int, max_model_len: int, batch_size: int, seed: int, opts: RunOptions,
                 length_bucket: int = 64, outer_vision_tokens: bool = False):
        self.tok, self.cfg = tokenizer, model.cfg
        self.ids = special_ids(tokenizer)
        self.video_cfg = dict(video_cfg)
        self.sp = SamplingParams(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                 top_p=float(top_p), eos_ids=tuple(self.ids.eos_ids), pad_id=self.ids.pad)
        self.max_model_len, self.batch_size = int(max_model_len), max(1, int(batch_size))
        self.seed, self.length_bucket, self.outer = int(seed), int(length_bucket), bool(outer_vision_tokens)
        self.sampler = Sampler(model, opts)

    def _prompt(self, req: Mapping[str, Any]):
        meta = req.get("meta") or {}
        mode = "meta" if meta.get("sampled_indices_src") is not None and meta.get("raw_fps") else "index"
        vin = preprocess_video(req["frames"], self.video_cfg, mode, meta)
        ids = chat.encode_prompt(self.tok, req["messages"], video_grid_thw=[vin.grid_thw], timestamps=[vin.timestamps],
                                 outer_vision_tokens=self.outer)
        return [int(x) for x in ids], vin

    def __call__(self, requests: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str | None]]:
        out: list[tuple[str, str, str | None] | None] = [None] * len(requests)
        by_grid: dict[tuple, list[tuple[int, list[int], Any]]] = {}
        for i, req in enumerate(requests):
            ids, vin = self._prompt(req)
            if len(ids) + self.sp.max_new_tokens > self.max_model_len:
                out[i] = ("", "", f"prompt of {len(ids)} tokens + {self.sp.max_new_tokens} new tokens exceeds "
                                  f"max_model_len {self.max_model_len}")
                continue
            by_grid.setdefault(tuple(vin.grid_thw), []).append((i, ids, vin))
        eos = set(self.ids.eos_ids)
        for items in by_grid.values():
            for s in range(0, len(items), self.batch_size):
                batch = items[s:s + self.batch_size]
                seqs = [ids for _, ids, _ in batch]
                p = pack_prompts(seqs, cfg=self.cfg, pad_id=self.ids.pad,
                                 length=round_up(max(map(len, seqs)), self.length_bucket),
                                 video_pixels=np.concatenate([v.pixel_rows for _, _, v in batch]),
                                 video_grids=[tuple(v.grid_thw) for _, _, v in batch],
                                 padding=self.sampler.padding)
                first = int(requests[batch[0][0]].get("index", batch[0][0]))
                key = jax.random.fold_in(jax.random.key(self.seed), first)
                gen = self.sampler.generate(p, self.sp, key)
                toks, lens = np.asarray(gen.tokens), np.asarray(gen.lengths)
                for b, (i, _, _) in enumerate(batch):
                    ids = [int(t) for t in toks[b, :lens[b]]]
                    stopped = bool(ids) and ids[-1] in eos
                    text = self.tok.decode(ids[:-1] if stopped else ids, skip_special_tokens=True)
                    out[i] = (text, "stop" if stopped else "length", None)
        return [o if o is not None else ("", "", "not generated") for o in out]


def make_teacher(config, b: BuildSettings) -> SamplerTeacher:
    """`b.teacher` "tiny" = the demo's tiny random policy; else the Qwen3-VL at `b.teacher_checkpoint` (b:
    `BuildSettings.from_config(config)`)."""
    opts = RunOptions.from_config(config.model)
    if b.teacher == "tiny":
        model, tok = Qwen3VL(get_preset("tiny"), rngs=nnx.Rngs(config.demo.policy_seed)), build_tiny_tokenizer()
    else:
        model, tok_dir = _load_plain(b.teacher_checkpoint, config.model.dtype, "teacher", "teacher_checkpoint")
        tok, _ = load_tokenizer(tok_dir, add_refine=False)
    return SamplerTeacher(model, tok, video_cfg=dataclasses.asdict(b.teacher_video), temperature=b.teacher_temperature,
                          top_p=b.teacher_top_p, max_new_tokens=b.teacher_max_new_tokens,
                          max_model_len=b.teacher_max_model_len, batch_size=b.teacher_batch_size,
                          seed=b.teacher_seed, opts=opts,
                          outer_vision_tokens=bool(config.prompts.outer_vision_tokens))


def run_build(config, *, embedder=None, teacher=None) -> dict[str, Any]:
    """Run `config.data.build.steps` over `<data_root>/<dataset>/` and return the summary (per step: status,
    seconds, rows in/out, drops by reason, the original's stats); after a build whose every step is complete the
    dataset is validated (`summary["validation"]`). `embedder` / `teacher` replace the configured models (tests
    reuse compiled ones)."""
    if not config.data_root:
        raise SetupError("--config.data_root is empty: the build writes <data_root>/<dataset>/")
    b = BuildSettings.from_config(config)   # the boundary: the build reads no config field after this
    paths = PreparedPaths(config.data_root, config.dataset)
    paths.dataset_dir.mkdir(parents=True, exist_ok=True)
    ctx = PL.BuildContext(paths=paths, cfg=b, grpo=GRPORows.from_config(config),
                          embedder=(lambda: embedder) if embedder is not None else (lambda: make_embedder(config, b)),
                          teacher=(lambda: teacher) if teacher is not None else (lambda: make_teacher(config, b)))
    try:
        summary = PL.run_steps(ctx, b.steps, overwrite=b.overwrite)
    except PL.BuildError as exc:
        raise SetupError(str(exc)) from None
    summary["output_dir"] = str(paths.dataset_dir.resolve())  # what main.py prints
    if all(ST.step_complete(paths, s) for s in PL.STEPS):
        report = validate_dataset(paths)
        summary["validation"] = {"ok": report.ok, "errors": report.errors,
                                 "counts": {k: int(v) for k, v in sorted(report.counts.items()) if v}}
    print(PL.format_summary(summary), file=sys.stderr, flush=True)
    if "validation" in summary:
        v = summary["validation"]
        print(f"validation: {'ok' if v['ok'] else 'FAILED'}" + "".join(f"\n  {e}" for e in v["errors"]),
              file=sys.stderr, flush=True)
    return summary


__all__ = ["SamplerTeacher", "make_embedder", "make_teacher", "run_build"]
