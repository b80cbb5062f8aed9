"""Soft Query Refinement (SQR) parameters of VideoSearch-R1 (shared/spec/sqr_and_sft.md §2.1).

- refine_projector: Linear(H->D), LayerNorm(D), GELU, Linear(D->D); the last Linear zero-initialised.
- refine_latent_input_projector: LayerNorm(D), Linear(D->H) initialised as a partial identity.
- refine_append_input_projector: LayerNorm(D), Linear(D->He) initialised as a partial identity.
- refine_gate: Linear(H->1), zero-initialised; kept so checkpoints load, never used (use_refine_gate=False).
LayerNorms are PyTorch defaults (eps 1e-5). H = policy text hidden, D = retrieval dim, He = embedder hidden.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax.models.embedder import embed_inputs_embeds
from vsr1_jax.models.qwen3_vl.layers import layer_norm, linear

LN_EPS = 1e-5  # torch.nn.LayerNorm default


@dataclasses.dataclass(frozen=True)
class SQRConfig:
    policy_hidden: int          # H
    retrieval_dim: int = 2048   # D (read from the embedding .npy files in the original)
    embedder_hidden: int = 2048  # He
    num_latents: int = 8        # rollout depth (refine_token_count)
    splice_tail: int = 6        # latents go before the last 6 tokens of the embedder prompt
    zero_init_refine: bool = True


def _torch_linear_init(key, fan_in, fan_out, dtype):
    """torch.nn.Linear default init: kaiming_uniform(a=sqrt(5)) for W, U(-1/sqrt(fan_in), ..) for b."""
    bound = 1.0 / math.sqrt(fan_in)
    kw, kb = jax.random.split(key)
    w = jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound).astype(dtype)
    b = jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound).astype(dtype)
    return w, b


def _partial_identity(d_in, d_out, dtype):
    """W = 0, then W[i, i] = 1 for i < min(d_in, d_out) (original MAIN L427-442)."""
    n = min(d_in, d_out)
    return jnp.zeros((d_in, d_out), dtype).at[jnp.arange(n), jnp.arange(n)].set(1), jnp.zeros((d_out,), dtype)


def _P(value, *axes):
    return nnx.Param(value, logical_axes=tuple(axes))


class SQRHead(nnx.Module):
    def __init__(self, cfg: SQRConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.cfg = cfg
        H, D, He = cfg.policy_hidden, cfg.retrieval_dim, cfg.embedder_hidden
        key = rngs.params() if rngs is not None else jax.random.key(0)
        k1, k2, k3 = jax.random.split(key, 3)
        w1, b1 = _torch_linear_init(k1, H, D, param_dtype)
        w2, b2 = _torch_linear_init(k2, D, D, param_dtype)
        if cfg.zero_init_refine:
            w2, b2 = jnp.zeros_like(w2), jnp.zeros_like(b2)
        self.proj_fc1_kernel, self.proj_fc1_bias = _P(w1, "embed", None), _P(b1, None)
        self.proj_norm_scale, self.proj_norm_bias = _P(jnp.ones((D,), param_dtype), None), _P(
            jnp.zeros((D,), param_dtype), None)
        self.proj_fc2_kernel, self.proj_fc2_bias = _P(w2, None, None), _P(b2, None)
        gw, gb = _torch_linear_init(k3, H, 1, param_dtype)
        if cfg.zero_init_refine:
            gw, gb = jnp.zeros_like(gw), jnp.zeros_like(gb)
        self.gate_kernel, self.gate_bias = _P(gw, "embed", None), _P(gb, None)
        self.latent_norm_scale = _P(jnp.ones((D,), param_dtype), None)
        self.latent_norm_bias = _P(jnp.zeros((D,), param_dtype), None)
        wl, bl = _partial_identity(D, H, param_dtype)
        self.latent_kernel, self.latent_bias = _P(wl, None, "embed"), _P(bl, "embed")
        self.append_norm_scale = _P(jnp.ones((D,), param_dtype), None)
        self.append_norm_bias = _P(jnp.zeros((D,), param_dtype), None)
        wa, ba = _partial_identity(D, He, param_dtype)
        self.append_kernel, self.append_bias = _P(wa, None, None), _P(ba, None)

    def project(self, h):
        """refine_projector: hidden [..., H] -> latent [..., D] (computed in float32 as the original)."""
        h = h.astype(jnp.float32)
        x = linear(h, self.proj_fc1_kernel[...], self.proj_fc1_bias[...])
        x = layer_norm(x, self.proj_norm_scale[...], self.proj_norm_bias[...], LN_EPS)
        x = jax.nn.gelu(x, approximate=False)
        return linear(x, self.proj_fc2_kernel[...], self.proj_fc2_bias[...])

    def latent_input(self, z):
        """refine_latent_input_projector: latents [..., D] -> policy input embeddings [..., H] (float32)."""
        z = layer_norm(z.astype(jnp.float32), self.latent_norm_scale[...], self.latent_norm_bias[...], LN_EPS)
        return linear(z, self.latent_kernel[...], self.latent_bias[...])

    def append_input(self, z):
        """refine_append_input_projector: latents [..., D] -> embedder input embeddings [..., He] (float32)."""
        z = layer_norm(z.astype(jnp.float32), self.append_norm_scale[...], self.append_norm_bias[...], LN_EPS)
        return linear(z, self.append_kernel[...], self.append_bias[...])


# ---- latent rollout (sqr_and_sft.md §2.3; decision 2 of the spec README) ----------------------------------------
def invalidate_after(cache, slot):
    """Drop cache slots after each row's `slot` (what follows the last <REFINE> is not part of the rollout)."""
    keep = jnp.arange(cache.valid.shape[1])[None, :] <= slot[:, None]
    return cache._replace(valid=cache.valid & keep)


def rollout_cached(model, head: SQRHead, cache, h_refine, refine_slot, refine_pos, *, opts, num_latents: int = 8):
    """The 8-latent rollout as a KV-cached continuation.

    z1 = project(pre-norm hidden at the last generated <REFINE>); then for k = 1..N-1 the input embedding
    latent_input(z_k) is fed at M-RoPE position pos(<REFINE>) + k on all three axes and z_{k+1} = project(final-normed
    hidden there). Equals the original's N-1 full re-forwards with the latents spliced after <REFINE> (causal
    attention: later tokens never change earlier hidden states). cache holds the prompt and generated tokens;
    refine_slot/refine_pos [B] locate the <REFINE> token. Returns (Z [B, N, D] float32, cache).
    """
    B = h_refine.shape[0]
    cache = invalidate_after(cache, refine_slot)
    z1 = head.project(h_refine)
    Z = jnp.zeros((B, num_latents, z1.shape[-1]), jnp.float32).at[:, 0].set(z1)

    # Straight-line code (7 single-position steps, unrolled): no loop-carried cache, so every cache write is an
    # in-place update and nothing waits on a loop predicate.
    for k in range(1, num_latents):
        x = head.latent_input(Z[:, k - 1])[:, None, :].astype(opts.jdtype)
        pos = jnp.broadcast_to((refine_pos + k)[None, :, None], (3, B, 1))
        out = model.decode(x, pos, jnp.ones((B, 1), bool), opts=opts, cache=cache, logits="none")
        Z = Z.at[:, k].set(head.project(out.hidden[:, 0]))
        cache = out.cache
    return Z, cache


def splice_layout(token_lists, num_latents: int = 8, tail: int = 6, pad_id: int = 0):
    """Host-side layout of the refined-query embedder input: each row's ids with N latent slots inserted before
    the last min(tail, len) tokens (TRN L695-722), right-padded.

    Returns ids [B, L], is_latent [B, L] bool, latent_index [B, L] int32, mask [B, L] int32."""
    L = max(len(t) for t in token_lists) + num_latents
    B = len(token_lists)
    ids = np.full((B, L), pad_id, np.int32)
    is_lat = np.zeros((B, L), bool)
    lat_idx = np.zeros((B, L), np.int32)
    mask = np.zeros((B, L), np.int32)
    for b, t in enumerate(token_lists):
        cut = len(t) - min(tail, len(t))
        row = list(t[:cut]) + [pad_id] * num_latents + list(t[cut:])
        ids[b, :len(row)] = row
        is_lat[b, cut:cut + num_latents] = True
        lat_idx[b, cut:cut + num_latents] = np.arange(num_latents)
        mask[b, :len(row)] = 1
    return ids, is_lat, lat_idx, mask


def q_final(embedder_model, head: SQRHead, Z, ids, is_latent, latent_index, mask, *, opts):
    """Refined query [B, D]: embedder text model on the query tokens with append_input(Z) spliced in (layout from
    `splice_layout`), default 1-D positions, last position pooled, L2-normalised (TRN L658-750)."""
    return q_spliced(embedder_model, head.append_input(Z), ids, is_latent, latent_index, mask, opts=opts)


def q_spliced(embedder_model, A, ids, is_latent, latent_index, mask, *, opts):
    """`q_final` from the embedder-input vectors A [B, N, He] themselves (what append_input(Z) gives)."""
    tok = embedder_model.text.embed_tokens(ids, opts.jdtype)
    lat = jnp.take_along_axis(A.astype(opts.jdtype), latent_index[..., None], axis=1)
    x = jnp.where(is_latent[..., None], lat, tok)
    return embed_inputs_embeds(embedder_model, x, mask, opts=opts)
