"""Fast generation for Qwen3-VL: multimodal prefill into a preallocated KV cache and a jitted decode (one donated
step per token driven from the host, or one `lax.while_loop`: `RunOptions.decode_loop`) with greedy / temperature /
top-k / top-p sampling, per-row EOS stop, and M-RoPE decode positions.

Prompts are left-padded (as HF `generate` does) or, for the fused cudnn prefill, right-padded (`Sampler.padding`):
either way every row writes its next token into the same cache slot T (a right-padded row's gap [len, T) is masked
out by the cache's `valid`), the first token is sampled from each row's last prompt position, and the decode
position of a row is its own max prompt position + 1 + step (HF: cache position + rope delta); positions are
explicit, so the two layouts attend over the same keys at the same positions.
The loop also keeps, per row, the pre-norm hidden state of the last generated occurrence of a chosen token
(the SQR `<REFINE>` readout) together with its cache slot and position, and hands back the cache so a caller
can continue from input embeddings (the latent rollout).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax import sharding
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.models.qwen3_vl.rope import get_rope_index
from vsr1_jax.models.qwen3_vl.text import KVCache
from vsr1_jax.models.qwen3_vl.vision import VisionBatch, VisionBuckets, pack_vision, split_rows

Grid = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 1024       # eval default (eval_and_data.md §2.2); GRPO uses 768
    temperature: float = 0.0         # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                   # 0 = off
    eos_ids: tuple[int, ...] = ()    # stop tokens (e.g. <|im_end|>, <|endoftext|>)
    pad_id: int = 0                  # written after a row stopped


class Prompts(NamedTuple):
    """A padded batch ready for prefill (host arrays; left-padded unless packed with padding="right")."""
    ids: np.ndarray          # [B, T] int32
    mask: np.ndarray         # [B, T] int32
    positions: np.ndarray    # [3, B, T] int32
    next_pos: np.ndarray     # [B] int32: M-RoPE position of the first generated token
    image_pixels: np.ndarray | None
    image_grids: tuple
    video_pixels: np.ndarray | None
    video_grids: tuple
    # the same images/videos as one padded VisionBatch (pack_prompts(vision_buckets=...)): prefill then compiles once
    # per bucket shape instead of once per grid combination
    vision: VisionBatch | None = None


class Generation(NamedTuple):
    tokens: jax.Array        # [B, N] sampled ids (pad after a row stopped)
    logprobs: jax.Array      # [B, N] log-prob of each sampled token under the (temperature-scaled) model
    lengths: jax.Array       # [B] generated tokens, the stop token included
    cache: KVCache           # prompt + fed tokens
    next_pos: jax.Array      # [B] position the next token would take
    capture_hidden: jax.Array  # [B, D] pre-norm hidden at the last generated `capture_id` (zeros if none)
    capture_slot: jax.Array    # [B] its cache slot (-1 if none)
    capture_pos: jax.Array     # [B] its M-RoPE position (-1 if none)


def pack_prompts(seqs: Sequence[Sequence[int]], *, cfg, pad_id: int, length: int | None = None,
                 image_pixels=None, image_grids=(), video_pixels=None, video_grids=(),
                 vision_buckets: VisionBuckets | None = None, padding: str = "left") -> Prompts:
    """Pad token lists to `length` (default: the longest) and compute M-RoPE positions host-side.

    padding: "left" (HF `generate`'s layout) or "right" (what the fused cudnn prefill takes: per-row lengths,
    `Sampler.padding` says which a sampler wants).

    vision_buckets: also pack the images and videos into a padded `VisionBatch` of these bucket sizes
    (`Prompts.vision`, with its token index), which `Sampler.prefill` then uses: one compilation per bucket shape
    (and prompt length) however the grids vary. VisionBuckets() pads nothing (exact sizes)."""
    T = max(len(s) for s in seqs) if length is None else length
    if any(len(s) > T for s in seqs):
        raise ValueError(f"a prompt of {max(len(s) for s in seqs)} tokens is longer than the padded length {T}")
    if padding not in ("left", "right"):
        raise ValueError(f"padding={padding!r}: expected 'left' or 'right'")
    ids = np.full((len(seqs), T), pad_id, np.int32)
    mask = np.zeros((len(seqs), T), np.int32)
    for i, s in enumerate(seqs):
        if len(s):
            cols = slice(T - len(s), T) if padding == "left" else slice(0, len(s))
            ids[i, cols] = s
            mask[i, cols] = 1
    pos, deltas = get_rope_index(ids, image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                                 spatial_merge_size=cfg.vision.spatial_merge_size, image_grid_thw=image_grids,
                                 video_grid_thw=video_grids, attention_mask=mask)
    next_pos = (mask.sum(1) + deltas).astype(np.int32)   # = max position + 1
    vision = None
    if vision_buckets is not None:
        items = list(zip(split_rows(image_pixels, image_grids), image_grids))
        items += list(zip(split_rows(video_pixels, video_grids), video_grids))
        pids = [cfg.image_token_id] * len(image_grids) + [cfg.video_token_id] * len(video_grids)
        if items:
            vision = pack_vision(items, cfg.vision, vision_buckets, input_ids=ids, placeholder_ids=pids)
    return Prompts(ids, mask, pos, next_pos, image_pixels, tuple(map(tuple, image_grids)), video_pixels,
                   tuple(map(tuple, video_grids)), vision)


def _per_row(key) -> bool:
    """A batch of typed keys [B] (one stream per row) rather than one key for the whole batch."""
    return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 1


def sample_logits(logits, key, sp: SamplingParams):
    """logits [B, V] float32 -> (token [B], logprob [B]). Log-probs are of the temperature-scaled distribution.
    key: one key for the batch, or typed keys [B] (row b draws from key[b] alone, whatever else is in the batch)."""
    if sp.temperature == 0.0:
        tok = jnp.argmax(logits, axis=-1)
        lp = jax.nn.log_softmax(logits, axis=-1)
        return tok.astype(jnp.int32), jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]
    scaled = logits / sp.temperature
    lp = jax.nn.log_softmax(scaled, axis=-1)
    filt = scaled
    if sp.top_k:
        kth = jax.lax.top_k(filt, sp.top_k)[0][:, -1:]
        filt = jnp.where(filt < kth, -jnp.inf, filt)
    if sp.top_p < 1.0:
        order = jnp.argsort(-filt, axis=-1)
        sorted_logits = jnp.take_along_axis(filt, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        remove = (jnp.cumsum(probs, axis=-1) - probs) > sp.top_p
        sorted_logits = jnp.where(remove, -jnp.inf, sorted_logits)
        filt = jnp.full_like(filt, -jnp.inf).at[jnp.arange(filt.shape[0])[:, None], order].set(sorted_logits)
    if _per_row(key):
        tok = jax.vmap(lambda k, f: jax.random.categorical(k, f, axis=-1))(key, filt).astype(jnp.int32)
    else:
        tok = jax.random.categorical(key, filt, axis=-1).astype(jnp.int32)
    return tok, jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]


class Sampler:
    """Jitted prefill / decode around one model architecture. The model is split once; its params travel as jit
    arguments, so a policy whose weights change every step (GRPO) passes `params=` to `generate` (or calls
    `set_params`) and reuses the compiled functions: new weights of the same shapes, dtypes and shardings never
    recompile."""

    def __init__(self, model: Qwen3VL, opts: RunOptions = RunOptions(), mesh=None, *, loop: str | None = None,
                 check_every: int = 16, split_batch: bool = True):
        """loop: None = `opts.decode_loop` (config.model.decode_loop: every production generation takes its loop from
        there); "host" dispatches one jitted, donated step per token from Python (asynchronously; rows' stop state
        is read every `check_every` steps); "while" runs the decode as one jitted `lax.while_loop`. Same results;
        "host" is the faster on GPUs: XLA's while loop copies its loop-carried buffers (the KV cache among them) in
        every iteration and syncs the predicate to the host before each one (H100 trace, README "Measured
        figures"), where the host loop queues donated steps ahead of the GPU.

        Pack prompts with `padding=sampler.padding` (`RunOptions.padding`: the padding rule of the attention kernel).

        mesh: where the batches run (`sharding.make_mesh`; default: the mesh of the model's weights,
        `sharding.mesh_of`, a one-device mesh for an unplaced model). Batches are split over its data and fsdp axes
        (their size must divide the batch), or with split_batch=False held whole by every device (the agent's
        batches of any size, on whatever devices the weights it is given live). The fused decode layer
        (`opts.decode_layer_impl`) runs only on a mesh of one device; on larger meshes the steps keep the XLA layers
        (`run_options.decode_layer_path`)."""
        loop = opts.decode_loop if loop is None else loop
        if loop not in ("while", "host"):
            raise ValueError(f"loop={loop!r}: expected 'while' or 'host'")
        self.graphdef, self.params = nnx.split(model)
        self.mesh = sharding.resolve_mesh(mesh, self.params)
        self.split_batch = bool(split_batch)
        if self.split_batch and self.mesh.size > 1 and opts.decode_attn_impl == "pallas":
            raise ValueError("decode_attn_impl='pallas' runs unsharded: under a mesh of several devices XLA would "
                             "gather the whole KV cache onto each one; use decode_attn_impl='xla' with a mesh")
        self.loop, self.check_every = loop, int(check_every)
        self.padding = opts.padding
        self.cfg = model.cfg
        self.opts = opts
        self._prefill = jax.jit(self._prefill_impl, static_argnames=("image_grids", "video_grids", "cache_size"))
        self._decode = jax.jit(self._decode_impl, static_argnames=("sp", "capture_id"), donate_argnames=("cache",))
        self._init = jax.jit(self._init_impl, static_argnames=("sp",), donate_argnames=("cache",))
        self._step = jax.jit(self._step_impl, static_argnames=("sp", "capture_id"), donate_argnames=("s",))
        self._extend = jax.jit(self._extend_impl, donate_argnames=("cache",))

    # ---- pure pieces ----------------------------------------------------------------------------------------------
    def _prefill_impl(self, state, ids, positions, mask, image_pixels, video_pixels, vision, *, image_grids,
                      video_grids, cache_size):
        model = nnx.merge(self.graphdef, state)
        B = ids.shape[0]
        cache = KVCache.zeros(self.cfg.text, B, cache_size, self.opts.jdtype)
        kv, valid = sharding.cache_shardings(self.mesh, self.cfg.text.num_key_value_heads,
                                             split_batch=self.split_batch)
        wsc = jax.lax.with_sharding_constraint
        cache = cache._replace(k=wsc(cache.k, kv), v=wsc(cache.v, kv), valid=wsc(cache.valid, valid))
        x, visual = model.embed(ids, self.opts, vision=vision, image_pixels=image_pixels, image_grids=image_grids,
                                video_pixels=video_pixels, video_grids=video_grids)
        out = model.decode(x, positions, mask, opts=self.opts, cache=cache, visual=visual, logits="none",
                           devices=self.mesh.size)
        # each row's last prompt token: T - 1 when left-padded (or unpadded), its length - 1 when right-padded
        T = ids.shape[1]
        last = (T - 1 - jnp.argmax(mask[:, ::-1].astype(bool), axis=1))[:, None, None]
        pick = lambda h: jnp.take_along_axis(h, last, axis=1)[:, 0]
        return model.text.logits(pick(out.hidden)), out.cache, pick(out.hidden_pre_norm)

    def _extend_impl(self, state, cache, x, positions, mask):
        model = nnx.merge(self.graphdef, state)
        return model.decode(x, positions, mask, opts=self.opts, cache=cache, logits="last", devices=self.mesh.size)

    def _init_impl(self, cache, logits, next_pos, key, *, sp: SamplingParams):
        B, N, D = logits.shape[0], sp.max_new_tokens, self.cfg.text.hidden_size
        return dict(step=jnp.zeros((), jnp.int32), cache=cache, logits=logits, pos=next_pos.astype(jnp.int32),
                    key=key, tokens=jnp.full((B, N), sp.pad_id, jnp.int32), logprobs=jnp.zeros((B, N), jnp.float32),
                    done=jnp.zeros((B,), bool), lengths=jnp.zeros((B,), jnp.int32),
                    cap_h=jnp.zeros((B, D), self.opts.jdtype), cap_slot=jnp.full((B,), -1, jnp.int32),
                    cap_pos=jnp.full((B,), -1, jnp.int32))

    def _step_impl(self, state, s, *, sp: SamplingParams, capture_id: int):
        """One decode step: sample from the current logits, record, feed the token, get the next logits."""
        model = nnx.merge(self.graphdef, state)
        B = s["logits"].shape[0]
        eos = jnp.asarray(sp.eos_ids if sp.eos_ids else (-1,), jnp.int32)
        if _per_row(s["key"]):
            ks = jax.vmap(jax.random.split)(s["key"])
            key, sub = ks[:, 0], ks[:, 1]
        else:
            key, sub = jax.random.split(s["key"])
        tok, lp = sample_logits(s["logits"], sub, sp)
        live = ~s["done"]
        tok = jnp.where(live, tok, sp.pad_id)
        step = s["step"]
        tokens = jax.lax.dynamic_update_slice(s["tokens"], tok[:, None], (0, step))
        logprobs = jax.lax.dynamic_update_slice(s["logprobs"], jnp.where(live, lp, 0.0)[:, None], (0, step))
        lengths = jnp.where(live, step + 1, s["lengths"])
        done = s["done"] | jnp.isin(tok, eos)
        slot = s["cache"].index
        x = model.text.embed_tokens(tok[:, None], self.opts.jdtype)
        pos3 = jnp.broadcast_to(s["pos"][None, :, None], (3, B, 1))
        out = model.decode(x, pos3, live[:, None], opts=self.opts, cache=s["cache"], logits="last",
                           devices=self.mesh.size)
        hit = live & (tok == capture_id)
        return dict(step=step + 1, cache=out.cache, logits=out.logits, pos=s["pos"] + 1, key=key, tokens=tokens,
                    logprobs=logprobs, done=done, lengths=lengths,
                    cap_h=jnp.where(hit[:, None], out.hidden_pre_norm[:, 0], s["cap_h"]),
                    cap_slot=jnp.where(hit, slot, s["cap_slot"]), cap_pos=jnp.where(hit, s["pos"], s["cap_pos"]))

    def _decode_impl(self, state, cache, logits, next_pos, key, *, sp: SamplingParams, capture_id: int):
        """The whole decode as one jitted `lax.while_loop` (stops when every row hit a stop token or at N)."""
        init = self._init_impl(cache, logits, next_pos, key, sp=sp)
        s = jax.lax.while_loop(lambda s: (s["step"] < sp.max_new_tokens) & ~jnp.all(s["done"]),
                               lambda s: self._step_impl(state, s, sp=sp, capture_id=capture_id), init)
        return _generation(s)

    # ---- public API ---------------------------------------------------------------------------------------------
    def set_params(self, params) -> None:
        """Use these weights from now on (an `nnx.State` of the same model, e.g. the train state's params)."""
        self.params = params

    def prefill(self, prompts: Prompts, cache_size: int, *, params=None):
        """-> (logits of the first new token [B, V], cache, pre-norm hidden of the last prompt token [B, D]).

        With `prompts.vision` (a padded VisionBatch) the vision tower runs on it and the static pixels/grids are
        not used, so the compiled prefill depends on the bucket shapes only."""
        T = prompts.ids.shape[1]
        self.opts.check_rows(prompts.mask)
        if T > cache_size:
            raise ValueError(f"prompt length {T} exceeds the KV cache size {cache_size}; raise max_cache_length "
                             "(or lower max_new_tokens / the video pixel budget)")
        whole = sharding.replicated(self.mesh)
        f = lambda a: None if a is None else jax.device_put(a, whole)
        if self.split_batch:
            sharding.check_batch(prompts.ids.shape[0], self.mesh)
        ids, mask = self._put(prompts.ids, 2), self._put(prompts.mask, 2)
        pos = self._put(prompts.positions, 3, batch_axis=1)
        vision = prompts.vision
        if vision is not None:
            vision = jax.device_put(vision._replace(token_index=None), whole)._replace(
                token_index=self._put(vision.token_index, 2))
            return self._prefill(self.weights(params), ids, pos, mask, None, None, vision, image_grids=(),
                                 video_grids=(), cache_size=cache_size)
        return self._prefill(self.weights(params), ids, pos, mask, f(prompts.image_pixels), f(prompts.video_pixels), None,
                             image_grids=prompts.image_grids, video_grids=prompts.video_grids, cache_size=cache_size)

    def decode(self, cache, logits, next_pos, sp: SamplingParams, key=None, capture_id: int = -1, *,
               params=None) -> Generation:
        self._check(sp, cache, logits.shape[0])
        key = jax.random.key(0) if key is None else key
        params = self.weights(params)
        if self.loop == "while":
            return self._decode(params, cache, logits, jnp.asarray(next_pos), key, sp=sp, capture_id=capture_id)
        s = self._init(cache, logits, jnp.asarray(next_pos), key, sp=sp)
        for i in range(sp.max_new_tokens):
            s = self._step(params, s, sp=sp, capture_id=capture_id)
            if (i + 1) % self.check_every == 0 and bool(jnp.all(s["done"])):
                break
        return _generation(s)

    def generate(self, prompts: Prompts, sp: SamplingParams, key=None, *, group: int = 1, capture_id: int = -1,
                 extra_slots: int = 0, params=None) -> Generation:
        """Prefill once, broadcast to `group` samples per prompt (rows p*G .. p*G+G-1), then decode.

        params: the weights to sample with (default: the current ones, see `set_params`)."""
        cache_size = prompts.ids.shape[1] + sp.max_new_tokens + extra_slots
        logits, cache, _ = self.prefill(prompts, cache_size, params=params)
        next_pos = jnp.asarray(prompts.next_pos)
        if group > 1:
            logits, cache, next_pos = broadcast_group(logits, cache, next_pos, group)
        return self.decode(cache, logits, next_pos, sp, key, capture_id, params=params)

    def extend(self, cache: KVCache, x, positions, mask=None, *, params=None):
        """Continue from input embeddings x [B, T, D] at explicit positions [3, B, T] (e.g. SQR latents)."""
        if mask is None:
            mask = jnp.ones(x.shape[:2], bool)
        self.opts.check_rows(mask, start=int(cache.index))
        if x.shape[1] + int(cache.index) > cache.k.shape[3]:
            raise ValueError(f"{x.shape[1]} more positions do not fit in the KV cache "
                             f"({int(cache.index)} of {cache.k.shape[3]} slots used)")
        return self._extend(self.weights(params), cache, x, positions, mask)

    def weights(self, params=None):
        """The weights a call runs with: `params` when given, else the current ones (`set_params`)."""
        return self.params if params is None else params

    def _put(self, x, ndim: int, batch_axis: int = 0):
        """A host batch array on the mesh: its rows split over the data-parallel axes (or, split_batch=False, whole
        on every device)."""
        return jax.device_put(x, sharding.batch_sharding(self.mesh, ndim, batch_axis, split=self.split_batch))

    def _check(self, sp: SamplingParams, cache: KVCache, batch: int):
        V = self.cfg.text.vocab_size
        bad = [e for e in sp.eos_ids if not 0 <= e < V]
        if bad:
            raise ValueError(f"stop token ids {bad} are outside the vocabulary (size {V})")
        if not 0 <= sp.pad_id < V:
            raise ValueError(f"pad_id {sp.pad_id} is outside the vocabulary (size {V})")
        if sp.temperature < 0 or not 0 < sp.top_p <= 1 or sp.top_k < 0:
            raise ValueError(f"invalid sampling parameters {sp}")
        free = cache.k.shape[3] - int(cache.index)
        if sp.max_new_tokens > free:
            raise ValueError(f"max_new_tokens={sp.max_new_tokens} does not fit: the KV cache has {free} free slots")


def _generation(s) -> Generation:
    return Generation(s["tokens"], s["logprobs"], s["lengths"], s["cache"], s["pos"], s["cap_h"], s["cap_slot"],
                      s["cap_pos"])


def broadcast_group(logits, cache: KVCache, next_pos, group: int):
    """Repeat each prompt's prefill state `group` times along the batch (a prompt's samples are adjacent)."""
    # jnp.copy keeps group == 1 from aliasing buffers that the decode step donates
    rep = lambda x, axis: jnp.copy(jnp.repeat(x, group, axis=axis))
    return (rep(logits, 0), cache._replace(k=rep(cache.k, 1), v=rep(cache.v, 1), valid=rep(cache.valid, 0),
                                           index=jnp.copy(cache.index)), rep(next_pos, 0))
