"""Small shared pieces of the Qwen3-VL port: parameter creation with logical axes, norms, linear, attention."""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def make_param(rngs: nnx.Rngs | None, shape: Sequence[int], axes: Sequence[str | None], dtype,
               init: str = "normal", std: float = 0.02) -> nnx.Param:
    """A parameter tagged with logical axis names (read by `vsr1_jax.sharding`).

    init: "normal" (std), "zeros", "ones". `rngs=None` gives zeros (used when shapes only matter).
    """
    shape = tuple(int(s) for s in shape)
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros" or rngs is None:
        value = jnp.zeros(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=tuple(axes))


def rms_norm(x, weight, eps: float):
    """HF Qwen3VLTextRMSNorm: normalise in fp32, cast back to the input dtype, then scale."""
    dt = x.dtype
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight.astype(dt) * xf.astype(dt)


def layer_norm(x, scale, bias, eps: float):
    """torch LayerNorm: statistics in fp32 (torch upcasts bf16 internally), output in the input dtype."""
    dt = x.dtype
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(dt)


def linear(x, kernel, bias=None):
    """x [..., in] @ kernel [in, out] (+ bias) in x's dtype.

    A single input row (batch-1 decode, the SQR rollout) goes in as two rows, the second zero: XLA:GPU rewrites a
    vector x matrix product with under 10M operand elements into multiply + reduce and writes the multiplied matrix
    out before reducing it, which triples the memory traffic of the q/k/v/o projections. Two rows stay a GEMM.
    """
    if math.prod(x.shape[:-1]) == 1:
        x2 = jnp.concatenate([x.reshape(1, -1), jnp.zeros((1, x.shape[-1]), x.dtype)], 0)
        y = jnp.einsum("ri,io->ro", x2, kernel.astype(x.dtype))[:1].reshape(*x.shape[:-1], kernel.shape[-1])
    else:
        y = jnp.einsum("...i,io->...o", x, kernel.astype(x.dtype))
    if bias is not None:
        y = y + bias.astype(x.dtype)
    return y


def attention(q, k, v, mask=None, *, impl: str = "xla"):
    """Scaled dot-product attention with GQA.

    q [B, Tq, H, D], k/v [B, Tk, K, D] (H divisible by K), mask [B, Tq, Tk] bool (True = attend) or None.
    Softmax in fp32 as HF's eager/sdpa paths. impl "cudnn" uses the fused kernel (GPU, bf16/fp16).
    """
    B, Tq, H, D = q.shape
    K = k.shape[2]
    scale = 1.0 / math.sqrt(D)
    if impl == "cudnn":
        m = None if mask is None else mask[:, None, :, :]
        return jax.nn.dot_product_attention(q, k, v, mask=m, scale=scale, implementation="cudnn")
    g = H // K
    qg = q.reshape(B, Tq, K, g, D)
    logits = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
    return out.reshape(B, Tq, H, D)
