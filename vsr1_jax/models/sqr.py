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
from flax import nnx

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
