"""Qwen3-VL text decoder in Flax NNX (HF `Qwen3VLTextModel`): RMSNorm, per-head q/k RMSNorm before interleaved
M-RoPE, GQA, SwiGLU, and DeepStack visual features added at visual positions after the first decoder layers.

Decoder layers are stacked on a leading axis and scanned. DeepStack features enter the scan as a closed-over
[n_deepstack, N_visual, D] array indexed by the layer number (layers past the last tap add nothing), so every
layer runs the same scanned body. An optional KV cache ([L, B, K, S, hd]: heads before slots, the layout the
decode-step attention reads without a transpose) is carried through the scan and updated in place, which is what the sampler and the SQR latent rollout use.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax.kernels.decode_attention import NEG, decode_attention
from vsr1_jax.models.qwen3_vl.config import TextConfig
from vsr1_jax.models.qwen3_vl.layers import attention, linear, make_param, rms_norm
from vsr1_jax.models.qwen3_vl.rope import apply_rope, mrope_cos_sin


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
                 remat: str = "none", kv_extra_slots: int | None = None, unroll_decode: bool = True):
        """x [B, T, D] input embeddings; positions [3, B, T]; attention_mask [B, T] (1 = real token).

        Returns (pre_norm [B, T, D] = last decoder layer output, normed [B, T, D], new cache or None).
        With a cache the T new tokens are written at `cache.index` and attend to every valid earlier slot.
        Without one, `kv_extra_slots=n` also returns a cache of T + n slots holding this call's keys and values
        (the T tokens valid where attention_mask is set, index T): a differentiable prefix to continue from (the SQR
        rollout in training), built from the scan's per-layer outputs rather than a carried cache.
        """
        cfg = self.cfg
        B, T, _ = x.shape
        dtype = x.dtype
        Hq, K, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        if attention_mask is None:
            attention_mask = jnp.ones((B, T), bool)
        attention_mask = attention_mask.astype(bool)
        cos, sin = mrope_cos_sin(positions, hd, cfg.rope_theta, cfg.mrope_section)
        # HF casts the tables to the activation dtype before rotating.
        cos, sin = cos.astype(dtype)[:, :, None, :], sin.astype(dtype)[:, :, None, :]

        if cache is None:
            causal = jnp.tril(jnp.ones((T, T), bool))
            mask = causal[None] & attention_mask[:, None, :]
            start = None
        else:
            S = cache.k.shape[3]
            start = cache.index
            valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, start))
            q_abs = start + jnp.arange(T)
            mask = (jnp.arange(S)[None, :] <= q_abs[:, None])[None] & valid[:, None, :]
        if decode_attn_impl not in ("xla", "pallas"):
            raise ValueError(f"decode_attn_impl={decode_attn_impl!r}: expected 'xla' or 'pallas'")
        flash_decode = decode_attn_impl == "pallas" and cache is not None and T == 1
        if flash_decode:
            bias = jnp.where(mask[:, 0, :], 0.0, NEG).astype(jnp.float32)        # [B, S]
            interpret = jax.default_backend() != "gpu"
        if kv_extra_slots is not None and cache is not None:
            raise ValueError("kv_extra_slots builds a new cache; it cannot be combined with an input cache")
        collect_kv = kv_extra_slots is not None
        # Rolled single-position steps with a cache (the SQR rollout in training, differentiated) take each layer's
        # cache slice as a scan input and return the updated slice as a scan output. Indexing a carried stacked cache
        # instead transposes, per layer, into a zeros array of the whole cache plus a full-size add: the backward of
        # one rollout step then moves the whole cache 2 x L times (the largest item of the H200 SFT profile).
        # Prefill and the unrolled inference decode keep the carried cache, updated in place.
        per_layer = cache is not None and T == 1 and not unroll_decode
        layers = {k: getattr(self, k)[...] for k in self._LAYER_KEYS}
        eps = cfg.rms_norm_eps
        q_len = jnp.sum(attention_mask, axis=-1).astype(jnp.int32)
        n_ds = 0 if visual is None else visual.feats.shape[0]

        def body(carry, xs):
            h, kc, vc = carry
            p, li, kl, vl = xs        # kl, vl: this layer's cache slice [B, K, S, hd] (per_layer), else None
            y = rms_norm(h, p["input_norm"], eps)
            q = rms_norm(linear(y, p["q_kernel"]).reshape(B, T, Hq, hd), p["q_norm"], eps)
            k = rms_norm(linear(y, p["k_kernel"]).reshape(B, T, K, hd), p["k_norm"], eps)
            v = linear(y, p["v_kernel"]).reshape(B, T, K, hd)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            # write the new keys/values; then (stacked cache, layer) for the decode kernel and this layer's K/V
            if kl is not None:
                kl = jax.lax.dynamic_update_slice(kl, k.astype(kl.dtype).transpose(0, 2, 1, 3), (0, 0, start, 0))
                vl = jax.lax.dynamic_update_slice(vl, v.astype(vl.dtype).transpose(0, 2, 1, 3), (0, 0, start, 0))
                stacked, layer, k_all, v_all = (kl[None], vl[None]), 0, kl, vl
            elif kc is not None:
                kt, vt = k.astype(kc.dtype).transpose(0, 2, 1, 3), v.astype(vc.dtype).transpose(0, 2, 1, 3)
                kc = jax.lax.dynamic_update_slice(kc, kt[None], (li, 0, 0, start, 0))
                vc = jax.lax.dynamic_update_slice(vc, vt[None], (li, 0, 0, start, 0))
                stacked, layer = (kc, vc), li
                k_all = jax.lax.dynamic_index_in_dim(kc, li, 0, keepdims=False)   # [B, K, S, hd]
                v_all = jax.lax.dynamic_index_in_dim(vc, li, 0, keepdims=False)
            if attn_impl == "cudnn" and T > 1:
                # Fused causal kernel with per-row lengths: skips the masked half instead of applying a dense mask.
                # Valid only for right-padded (or unpadded) rows written from slot 0 (the padding rule, run_options.py), so
                # the new keys are all the keys there are.
                o = jax.nn.dot_product_attention(q, k, v, is_causal=True, query_seq_lengths=q_len,
                                                 key_value_seq_lengths=q_len, implementation="cudnn")
                # padded query rows: zeros (finite whatever the kernel leaves there; their keys are masked later)
                o = jnp.where(attention_mask[:, :, None, None], o, jnp.zeros_like(o))
            elif flash_decode:
                o = decode_attention(q, *stacked, layer, bias, interpret=interpret)
            elif cache is not None:
                o = cached_attention(q, k_all.astype(dtype), v_all.astype(dtype), mask)
            else:
                o = attention(q, k, v, mask, impl="xla")
            h = h + linear(o.reshape(B, T, Hq * hd), p["o_kernel"])
            y = rms_norm(h, p["post_norm"], eps)
            y = jax.nn.silu(linear(y, p["gate_kernel"])) * linear(y, p["up_kernel"])
            h = h + linear(y, p["down_kernel"])
            if n_ds:
                # DeepStack: add tap `li` at visual positions after decoder layer li (li < n_deepstack).
                f = jax.lax.dynamic_index_in_dim(visual.feats, jnp.minimum(li, n_ds - 1), 0, keepdims=False)
                add = jnp.take(f, visual.idx, axis=0).astype(dtype)
                h = h + jnp.where((visual.mask & (li < n_ds))[..., None], add, jnp.zeros_like(add))
            return (h, kc, vc), ((k, v) if collect_kv else (kl, vl) if per_layer else None)

        if remat == "full":
            body = jax.checkpoint(body)
        elif remat == "dots":
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
        elif remat != "none":
            raise ValueError(f"remat={remat!r}: expected 'none', 'full' or 'dots'")
        carried = cache is not None and not per_layer
        kc, vc = (cache.k, cache.v) if carried else (None, None)
        kls, vls = (cache.k, cache.v) if per_layer else (None, None)
        # Single-token steps unroll the layer loop: a rolled loop costs a device->host predicate sync per layer and
        # dynamic cache indexing that forces copies; prefill keeps the compact rolled scan.
        (h, kc, vc), kv = jax.lax.scan(body, (x, kc, vc), (layers, jnp.arange(cfg.num_hidden_layers), kls, vls),
                                       unroll=cfg.num_hidden_layers if (T == 1 and cache is not None and unroll_decode)
                                       else 1)
        normed = rms_norm(h, self.final_norm[...], eps)
        if per_layer:
            kc, vc = kv
        new_cache = None if cache is None else KVCache(kc, vc, valid, start + T)
        if collect_kv:  # [L, B, T, K, hd] -> the cache layout [L, B, K, T + n, hd]
            pad = ((0, 0), (0, 0), (0, 0), (0, kv_extra_slots), (0, 0))
            ks, vs = (jnp.pad(a.transpose(0, 1, 3, 2, 4), pad) for a in kv)
            valid = jnp.pad(attention_mask, ((0, 0), (0, kv_extra_slots)))
            new_cache = KVCache(ks, vs, valid, jnp.asarray(T, jnp.int32))
        return h, normed, new_cache
