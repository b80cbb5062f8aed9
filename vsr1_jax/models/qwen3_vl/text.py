"""Qwen3-VL text decoder in Flax NNX (HF `Qwen3VLTextModel`): RMSNorm, per-head q/k RMSNorm before interleaved
M-RoPE, GQA, SwiGLU, and DeepStack visual features added at visual positions after the first decoder layers.

Three pieces, each explicit about what it does:

- `decoder_layer`: one layer, pure: that layer's params + hidden + its view of the KV cache -> hidden + the updated
  view (and this call's keys/values). `fused_decode_layers` (the Pallas kernels of `kernels.fused_decode`) replaces
  the scan of it for single-position steps where `run_options.decode_layer_path` says so.
- `attend`: the attention dispatcher; the path (`AttnPath`) is chosen once per call by `attention_path` from the
  run options, the number of new positions and the cache mode.
- `TextModel.__call__`: embeddings in, the layers scanned (stacked on a leading axis), DeepStack added after the
  first layers, the final norm. DeepStack features enter the scan as a closed-over [n_deepstack, N_visual, D] array
  indexed by the layer number (layers past the last tap add nothing), so every layer runs the same scanned body.

The KV cache ([L, B, K, S, hd]: heads before slots, the layout the decode-step attention reads without a transpose)
is what the sampler and the SQR latent rollout use; how it travels through the layer scan is the `CacheMode`.
"""
from __future__ import annotations

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax.kernels.decode_attention import NEG, decode_attention
from vsr1_jax.kernels.fused_decode import fused_decoder_layer_decode
from vsr1_jax.models.qwen3_vl.config import TextConfig
from vsr1_jax.models.qwen3_vl.layers import attention, linear, make_param, rms_norm
from vsr1_jax.models.qwen3_vl.rope import apply_rope, mrope_cos_sin
from vsr1_jax.models.qwen3_vl.run_options import (ATTN_IMPLS, DECODE_ATTN_IMPLS, ROLLOUT_LAYERS, decode_layer_path,
                                                  fused_attention)


def cached_attention(q, k, v, mask):
    """q [B, T, H, hd] against a cache k/v [B, K, S, hd] with mask [B, T, S]; fp32 softmax."""
    B, T, H, D = q.shape
    K = k.shape[1]
    qg = q.reshape(B, T, K, H // K, D)
    logits = jnp.einsum("btkgd,bksd->bkgts", qg, k, preferred_element_type=jnp.float32) / np.sqrt(D)
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bksd->btkgd", probs, v).reshape(B, T, H, D)


class KVCache(NamedTuple):
    """k, v: [L, B, K, S, hd]; valid: [B, S] bool (a written, non-pad slot); index: scalar int32 next slot."""
    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array

    @classmethod
    def zeros(cls, cfg: TextConfig, batch: int, size: int, dtype) -> "KVCache":
        shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, size, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, size), bool),
                   jnp.zeros((), jnp.int32))


class Visual(NamedTuple):
    """Where visual tokens sit and their DeepStack features: idx/mask [B, T]; feats [n_deepstack, N_visual, D]."""
    idx: jax.Array
    mask: jax.Array
    feats: jax.Array


class CacheMode(enum.Enum):
    """How the KV cache travels through the layer scan (`cache_mode` picks it)."""
    NONE = "none"          # no cache: the call's own T tokens, causal (training forwards, scoring, the embedder);
                           # `kv_extra_slots` then collects each layer's new keys/values into a fresh cache
    STACKED = "stacked"    # the whole [L, B, K, S, hd] cache is the scan carry, layer li updated in place at
                           # `cache.index` (prefill, multi-position extends, the unrolled single-token decode)
    SLICED = "sliced"      # each layer's [B, K, S, hd] slice is a scan input and its update a scan output (rolled
                           # single-position steps: the SQR rollout in training, differentiated)


class AttnPath(enum.Enum):
    """Which attention computation a call runs (`attention_path` picks it; `attend` runs it)."""
    DENSE = "dense"                # XLA, causal over this call's tokens (`layers.attention`), no cache
    CACHED = "cached"              # XLA, the new queries against every valid cache slot (`cached_attention`)
    FUSED_CAUSAL = "fused_causal"  # cudnn flash kernel with per-row lengths over this call's tokens (run_options'
                                   # padding rule: right-padded rows written from slot 0)
    FLASH_DECODE = "flash_decode"  # one position against the stacked cache in place (`kernels.decode_attention`)


def cache_mode(has_cache: bool, T: int, unroll_decode: bool) -> CacheMode:
    """Rolled single-position steps with a cache take each layer's slice as a scan input and return the updated slice
    as a scan output: indexing a carried stacked cache instead transposes, per layer, into a zeros array of the whole
    cache plus a full-size add, so the backward of one rollout step would move the whole cache 2 x L times (the
    largest item of the H200 SFT profile). Prefill and the unrolled inference decode carry the stacked cache,
    updated in place."""
    if not has_cache:
        return CacheMode.NONE
    return CacheMode.SLICED if T == 1 and not unroll_decode else CacheMode.STACKED


def attention_path(attn_impl: str, decode_attn_impl: str, T: int, mode: CacheMode) -> AttnPath:
    """attn_impl (multi-token calls) / decode_attn_impl (single-position steps with a cache): RunOptions' names."""
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl={attn_impl!r}: expected one of {ATTN_IMPLS}")
    if decode_attn_impl not in DECODE_ATTN_IMPLS:
        raise ValueError(f"decode_attn_impl={decode_attn_impl!r}: expected one of {DECODE_ATTN_IMPLS}")
    if fused_attention(attn_impl) and T > 1:
        return AttnPath.FUSED_CAUSAL
    if mode is CacheMode.NONE:
        return AttnPath.DENSE
    if decode_attn_impl == "pallas" and T == 1:
        return AttnPath.FLASH_DECODE
    return AttnPath.CACHED


class LayerCache(NamedTuple):
    """One layer's view of the KV cache. k, v: the layer's slice [B, K, S, hd] (layer None, `CacheMode.SLICED`) or
    the whole stacked cache [L, B, K, S, hd] with `layer` (a traced int) naming this layer's row
    (`CacheMode.STACKED`: written in place, read in place by the flash-decoding kernel)."""
    k: jax.Array
    v: jax.Array
    layer: jax.Array | None = None

    def write(self, k, v, start) -> "LayerCache":
        """This call's keys/values k, v [B, T, K, hd] written at slot `start`."""
        kt, vt = k.astype(self.k.dtype).transpose(0, 2, 1, 3), v.astype(self.v.dtype).transpose(0, 2, 1, 3)
        if self.layer is None:
            return self._replace(k=jax.lax.dynamic_update_slice(self.k, kt, (0, 0, start, 0)),
                                 v=jax.lax.dynamic_update_slice(self.v, vt, (0, 0, start, 0)))
        return self._replace(k=jax.lax.dynamic_update_slice(self.k, kt[None], (self.layer, 0, 0, start, 0)),
                             v=jax.lax.dynamic_update_slice(self.v, vt[None], (self.layer, 0, 0, start, 0)))

    def layer_kv(self):
        """(k, v) of this layer, [B, K, S, hd] each."""
        if self.layer is None:
            return self.k, self.v
        return (jax.lax.dynamic_index_in_dim(self.k, self.layer, 0, keepdims=False),
                jax.lax.dynamic_index_in_dim(self.v, self.layer, 0, keepdims=False))

    def stacked(self):
        """(k_cache, v_cache [L', B, K, S, hd], layer): what the flash-decoding kernel reads."""
        if self.layer is None:
            return self.k[None], self.v[None], 0
        return self.k, self.v, self.layer


class AttnInputs(NamedTuple):
    """What every layer's attention needs besides q/k/v, built once per call (`TextModel.__call__`)."""
    cos: jax.Array                 # [B, T, 1, hd] M-RoPE tables in the activation dtype
    sin: jax.Array
    attention_mask: jax.Array      # [B, T] bool: real (non-pad) tokens of this call
    mask: jax.Array | None         # [B, T, T] (no cache) or [B, T, S] bool (True = attend); DENSE / CACHED
    start: jax.Array | None        # cache slot of this call's first token (None without a cache)
    bias: jax.Array | None = None  # [B, S] float32 additive mask (FLASH_DECODE)
    q_len: jax.Array | None = None  # [B] int32 tokens per (right-padded) row (FUSED_CAUSAL)


def attend(path: AttnPath, q, k, v, cache: LayerCache | None, inputs: AttnInputs):
    """Attention of this call's queries q [B, T, H, hd] (keys/values k, v [B, T, K, hd], already written into
    `cache` when there is one) -> [B, T, H, hd]."""
    if path is AttnPath.FUSED_CAUSAL:
        # Fused causal kernel with per-row lengths: skips the masked half instead of applying a dense mask. Rows
        # follow the padding rule (run_options), so the new keys are all the keys there are.
        o = jax.nn.dot_product_attention(q, k, v, is_causal=True, query_seq_lengths=inputs.q_len,
                                         key_value_seq_lengths=inputs.q_len, implementation="cudnn")
        # padded query rows: zeros (finite whatever the kernel leaves there; their keys are masked later)
        return jnp.where(inputs.attention_mask[:, :, None, None], o, jnp.zeros_like(o))
    if path is AttnPath.FLASH_DECODE:
        return decode_attention(q, *cache.stacked(), inputs.bias, interpret=jax.default_backend() != "gpu")
    if path is AttnPath.CACHED:
        k_all, v_all = cache.layer_kv()
        return cached_attention(q, k_all.astype(q.dtype), v_all.astype(q.dtype), inputs.mask)
    return attention(q, k, v, inputs.mask, impl="xla")


def decoder_layer(p: dict, h, cache: LayerCache | None, inputs: AttnInputs, *, cfg: TextConfig, path: AttnPath):
    """One decoder layer, pure. p: this layer's params (`TextModel._LAYER_KEYS`, unstacked); h [B, T, D] hidden in;
    cache: this layer's view of the KV cache (None without one); inputs: the call's rope tables and masks.

    Returns (h [B, T, D], the updated cache view (None without one), (k, v) [B, T, K, hd] this call's rotated keys
    and values). A fused single-position decode-layer kernel (T == 1, a cache) takes the same arguments and returns
    the same values; everything the layer needs from outside is in `inputs` and `path`.
    """
    B, T, _ = h.shape
    Hq, K, hd, eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps
    y = rms_norm(h, p["input_norm"], eps)
    q = rms_norm(linear(y, p["q_kernel"]).reshape(B, T, Hq, hd), p["q_norm"], eps)
    k = rms_norm(linear(y, p["k_kernel"]).reshape(B, T, K, hd), p["k_norm"], eps)
    v = linear(y, p["v_kernel"]).reshape(B, T, K, hd)
    q, k = apply_rope(q, inputs.cos, inputs.sin), apply_rope(k, inputs.cos, inputs.sin)
    if cache is not None:
        cache = cache.write(k, v, inputs.start)
    o = attend(path, q, k, v, cache, inputs)
    h = h + linear(o.reshape(B, T, Hq * hd), p["o_kernel"])
    y = rms_norm(h, p["post_norm"], eps)
    y = jax.nn.silu(linear(y, p["gate_kernel"])) * linear(y, p["up_kernel"])
    h = h + linear(y, p["down_kernel"])
    return h, cache, (k, v)


def fused_decode_layers(layers: dict, h, cache: KVCache, inputs: AttnInputs, cos, sin, *, cfg: TextConfig,
                        visual: Visual | None, interpret: bool):
    """Every decoder layer of a single-position step with the stacked cache as the fused Pallas kernels
    (`kernels.fused_decode.fused_decoder_layer_decode`, five Pallas kernels and one XLA fusion per layer), unrolled:
    what the scan of `decoder_layer` computes, where `run_options.decode_layer_path` chooses it. layers: the stacked
    [L, ...] weights (each kernel reads its layer in place: no per-layer slice is materialised); h [B, 1, D];
    inputs.bias [B, S]: the step's mask; cos/sin [B, hd] float32 rotary rows of the step (shared by all layers).
    Every row writes slot `inputs.start`.
    -> (h [B, 1, D], k cache, v cache) (the caches updated in place where the caller donates them)."""
    slot = jnp.full((h.shape[0],), inputs.start, jnp.int32)
    kc, vc = cache.k, cache.v
    for li in range(cfg.num_hidden_layers):
        h, kc, vc = fused_decoder_layer_decode(layers, h, kc, vc, slot, cos, sin, cfg, layer=li, bias=inputs.bias,
                                               interpret=interpret)
        h = add_deepstack(h, visual, li)
    return h, kc, vc


def add_deepstack(h, visual: Visual | None, li):
    """DeepStack: add tap `li` at the visual positions after decoder layer li (li < n_deepstack; later layers add
    nothing)."""
    if visual is None or not visual.feats.shape[0]:
        return h
    n_ds = visual.feats.shape[0]
    f = jax.lax.dynamic_index_in_dim(visual.feats, jnp.minimum(li, n_ds - 1), 0, keepdims=False)
    add = jnp.take(f, visual.idx, axis=0).astype(h.dtype)
    return h + jnp.where((visual.mask & (li < n_ds))[..., None], add, jnp.zeros_like(add))


class TextModel(nnx.Module):
    _LAYER_KEYS = ("input_norm", "q_kernel", "k_kernel", "v_kernel", "o_kernel", "q_norm", "k_norm",
                   "post_norm", "gate_kernel", "up_kernel", "down_kernel")

    def __init__(self, cfg: TextConfig, *, tie_word_embeddings: bool, param_dtype=jnp.float32,
                 rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        D, L, I, hd = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.head_dim
        Hq, K = cfg.num_attention_heads, cfg.num_key_value_heads
        p = lambda shape, axes, init="normal": make_param(rngs, shape, axes, param_dtype, init,
                                                          cfg.initializer_range)
        self.embed = p((cfg.vocab_size, D), ("vocab", "embed"))
        self.input_norm = p((L, D), ("layers", "norm"), "ones")
        self.q_kernel = p((L, D, Hq * hd), ("layers", "embed", "q_heads"))
        self.k_kernel = p((L, D, K * hd), ("layers", "embed", "kv_heads"))
        self.v_kernel = p((L, D, K * hd), ("layers", "embed", "kv_heads"))
        self.o_kernel = p((L, Hq * hd, D), ("layers", "q_heads", "embed"))
        self.q_norm = p((L, hd), ("layers", "norm"), "ones")
        self.k_norm = p((L, hd), ("layers", "norm"), "ones")
        self.post_norm = p((L, D), ("layers", "norm"), "ones")
        self.gate_kernel = p((L, D, I), ("layers", "embed", "mlp"))
        self.up_kernel = p((L, D, I), ("layers", "embed", "mlp"))
        self.down_kernel = p((L, I, D), ("layers", "mlp", "embed"))
        self.final_norm = p((D,), ("norm",), "ones")
        self.lm_head = None if tie_word_embeddings else p((D, cfg.vocab_size), ("embed", "vocab"))

    def embed_tokens(self, ids, dtype):
        return jnp.take(self.embed[...], ids, axis=0).astype(dtype)

    def logits(self, h):
        """h [..., D] (final-normed) -> logits [..., V] in float32."""
        w = self.embed[...].T if self.lm_head is None else self.lm_head[...]
        return jnp.einsum("...d,dv->...v", h, w.astype(h.dtype), preferred_element_type=jnp.float32)

    def __call__(self, x, positions, attention_mask=None, *, cache: KVCache | None = None,
                 visual: Visual | None = None, attn_impl: str = "xla", decode_attn_impl: str = "xla",
                 decode_layer_impl: str = "xla", devices: int | None = None, remat: str = "none",
                 kv_extra_slots: int | None = None, unroll_decode: bool = True, rollout_layers: str = "rolled"):
        """x [B, T, D] input embeddings; positions [3, B, T]; attention_mask [B, T] (1 = real token).

        Returns (pre_norm [B, T, D] = last decoder layer output, normed [B, T, D], new cache or None).
        With a cache the T new tokens are written at `cache.index` and attend to every valid earlier slot.
        Without one, `kv_extra_slots=n` also returns a cache of T + n slots holding this call's keys and values
        (the T tokens valid where attention_mask is set, index T): a differentiable prefix to continue from (the SQR
        rollout in training), built from the scan's per-layer outputs rather than a carried cache.
        decode_layer_impl / devices (the caller's mesh size): `run_options.decode_layer_path` (the fused layer).
        rollout_layers: "unrolled" unrolls the layer loop of `CacheMode.SLICED` steps too (RunOptions).
        """
        cfg = self.cfg
        B, T, _ = x.shape
        dtype = x.dtype
        if kv_extra_slots is not None and cache is not None:
            raise ValueError("kv_extra_slots builds a new cache; it cannot be combined with an input cache")
        mode = cache_mode(cache is not None, T, unroll_decode)
        path = attention_path(attn_impl, decode_attn_impl, T, mode)
        layer_path, _ = decode_layer_path(decode_layer_impl, cfg, T=T, stacked_cache=mode is CacheMode.STACKED,
                                          devices=devices)
        if attention_mask is None:
            attention_mask = jnp.ones((B, T), bool)
        attention_mask = attention_mask.astype(bool)
        cos32, sin32 = mrope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, cfg.mrope_section)
        # HF casts the tables to the activation dtype before rotating.
        cos, sin = cos32.astype(dtype)[:, :, None, :], sin32.astype(dtype)[:, :, None, :]
        if mode is CacheMode.NONE:
            mask = jnp.tril(jnp.ones((T, T), bool))[None] & attention_mask[:, None, :]
            start = valid = None
        else:
            S = cache.k.shape[3]
            start = cache.index
            valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, start))
            q_abs = start + jnp.arange(T)
            mask = (jnp.arange(S)[None, :] <= q_abs[:, None])[None] & valid[:, None, :]
        inputs = AttnInputs(cos, sin, attention_mask, mask, start)
        if path is AttnPath.FLASH_DECODE or layer_path != "xla":
            inputs = inputs._replace(bias=jnp.where(mask[:, 0, :], 0.0, NEG).astype(jnp.float32))   # [B, S]
        elif path is AttnPath.FUSED_CAUSAL:
            inputs = inputs._replace(q_len=jnp.sum(attention_mask, axis=-1).astype(jnp.int32))
        collect_kv = kv_extra_slots is not None
        layers = {k: getattr(self, k)[...] for k in self._LAYER_KEYS}
        if layer_path != "xla":    # T == 1 with the stacked cache; no kv_extra_slots (that takes no cache)
            h, kc, vc = fused_decode_layers(layers, x, cache, inputs, cos32[:, 0], sin32[:, 0], cfg=cfg, visual=visual,
                                            interpret=layer_path == "interpret")
            normed = rms_norm(h, self.final_norm[...], cfg.rms_norm_eps)
            return h, normed, KVCache(kc, vc, valid, start + T)

        def body(carry, xs):
            h, kc, vc = carry                   # kc, vc: the stacked cache (STACKED), else None
            p, li, kl, vl = xs                  # kl, vl: this layer's cache slice (SLICED), else None
            view = (LayerCache(kl, vl) if mode is CacheMode.SLICED
                    else LayerCache(kc, vc, li) if mode is CacheMode.STACKED else None)
            h, view, kv = decoder_layer(p, h, view, inputs, cfg=cfg, path=path)
            h = add_deepstack(h, visual, li)
            if mode is CacheMode.STACKED:
                kc, vc = view.k, view.v
            return (h, kc, vc), (kv if collect_kv else (view.k, view.v) if mode is CacheMode.SLICED else None)

        if remat == "full":
            body = jax.checkpoint(body)
        elif remat == "dots":
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
        elif remat != "none":
            raise ValueError(f"remat={remat!r}: expected 'none', 'full' or 'dots'")
        kc, vc = (cache.k, cache.v) if mode is CacheMode.STACKED else (None, None)
        kls, vls = (cache.k, cache.v) if mode is CacheMode.SLICED else (None, None)
        # Single-token steps with a stacked cache unroll the layer loop: a rolled loop costs a device->host predicate
        # sync per layer and dynamic cache indexing that forces copies; prefill keeps the compact rolled scan.
        # The rolled SLICED steps of training can unroll too (`rollout_layers`): a rolled loop copies each layer's
        # weights out of the stacked weights on every step, an unrolled one reads static slices in place.
        if rollout_layers not in ROLLOUT_LAYERS:
            raise ValueError(f"rollout_layers={rollout_layers!r}: expected one of {ROLLOUT_LAYERS}")
        unrolled = mode is CacheMode.STACKED or (mode is CacheMode.SLICED and rollout_layers == "unrolled")
        unroll = cfg.num_hidden_layers if (T == 1 and unrolled) else 1
        (h, kc, vc), kv = jax.lax.scan(body, (x, kc, vc), (layers, jnp.arange(cfg.num_hidden_layers), kls, vls),
                                       unroll=unroll)
        normed = rms_norm(h, self.final_norm[...], cfg.rms_norm_eps)
        if mode is CacheMode.SLICED:
            kc, vc = kv
        new_cache = None if mode is CacheMode.NONE else KVCache(kc, vc, valid, start + T)
        if collect_kv:  # [L, B, T, K, hd] -> the cache layout [L, B, K, T + n, hd]
            pad = ((0, 0), (0, 0), (0, 0), (0, kv_extra_slots), (0, 0))
            ks, vs = (jnp.pad(a.transpose(0, 1, 3, 2, 4), pad) for a in kv)
            valid = jnp.pad(attention_mask, ((0, 0), (0, kv_extra_slots)))
            new_cache = KVCache(ks, vs, valid, jnp.asarray(T, jnp.int32))
        return h, normed, new_cache
