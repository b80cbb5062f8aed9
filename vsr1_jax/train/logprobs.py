"""Per-token log-probabilities from final hidden states, computed in sequence chunks so the [B, T, vocab] logits
are never materialised whole (a 151k vocabulary makes them several GB): each chunk's logits live only inside a
rematerialised scan step, in the forward and again in the backward."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits_fn, hidden, targets, *, chunk: int = 256, temperature: float = 1.0):
    """log softmax(logits_fn(hidden) / temperature)[targets].

    logits_fn: h [B, c, D] -> float32 logits [B, c, V] (e.g. `Qwen3VL.text.logits`); hidden [B, T, D];
    targets [B, T] int. Returns float32 [B, T]. T is padded up to a multiple of `chunk` internally.
    """
    B, T, D = hidden.shape
    c = min(int(chunk), T)
    n = -(-T // c)
    pad = n * c - T
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(B, n, c, D).swapaxes(0, 1)
    t = jnp.pad(targets, ((0, 0), (0, pad))).reshape(B, n, c).swapaxes(0, 1)

    @jax.checkpoint
    def one(hc, tc):
        logits = logits_fn(hc).astype(jnp.float32) / temperature
        lse = jax.nn.logsumexp(logits, axis=-1)
        return jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0] - lse

    lp = jax.lax.map(lambda xs: one(*xs), (h, t))          # [n, B, c]
    return lp.swapaxes(0, 1).reshape(B, n * c)[:, :T]
