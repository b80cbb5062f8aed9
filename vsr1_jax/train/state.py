"""The train state: a pytree of arrays that a jitted step takes and returns (donated), plus the static graph
definitions that turn it back into modules.

params["policy" | "head"] hold the *trainable* leaves of the policy (Qwen3VL) and the SQR head; frozen[...] the rest
(not differentiated, not in the optimizer). The query embedder is frozen in both stages and travels beside the state.
`nnx.split` / `nnx.merge` happen inside the jitted functions (`Graphdefs.modules`).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from vsr1_jax import sharding
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.model import Qwen3VL

Path = tuple[str, ...]


@flax.struct.dataclass
class TrainState:
    step: jax.Array            # int32 []: optimizer updates applied
    params: dict               # {"policy": nnx.State, "head": nnx.State} trainable leaves
    frozen: dict               # {"policy": nnx.State, "head": nnx.State} the other leaves
    opt_state: Any             # optax state over `params`
    skipped: jax.Array         # int32 []: updates skipped for a non-finite loss or gradient


class Graphdefs(NamedTuple):
    """Static (hashable) structure of the modules; pass as a static jit argument."""
    policy: Any
    head: Any

    def modules(self, params: dict, frozen: dict) -> tuple[Qwen3VL, S.SQRHead]:
        return (nnx.merge(self.policy, params["policy"], frozen["policy"]),
                nnx.merge(self.head, params["head"], frozen["head"]))


def _split(module, name: str, trainable: Callable[[Path], bool]):
    def is_trainable(path, _):
        return trainable((name,) + tuple(str(p) for p in path))

    return nnx.split(module, is_trainable, ...)


def split_models(policy: Qwen3VL, head: S.SQRHead, trainable: Callable[[Path], bool]):
    """-> (Graphdefs, params, frozen): trainable(("policy" | "head", *module path)) picks the trained leaves."""
    pg, pt, pf = _split(policy, "policy", trainable)
    hg, ht, hf = _split(head, "head", trainable)
    return Graphdefs(pg, hg), {"policy": pt, "head": ht}, {"policy": pf, "head": hf}


def create(policy: Qwen3VL, head: S.SQRHead, trainable: Callable[[Path], bool], tx: optax.GradientTransformation,
           mesh: jax.sharding.Mesh) -> tuple[TrainState, Graphdefs]:
    """A fresh train state on `mesh` (`sharding.mesh_for`; one device: a one-device mesh): every parameter is first
    placed by the logical-axis rules (`sharding.RULES`) and the optimizer state is created under jit, so its
    moments inherit those shardings."""
    sharding.shard_module(policy, mesh)
    sharding.shard_module(head, mesh)
    graphdefs, params, frozen = split_models(policy, head, trainable)
    # moments follow their params; step counters come back on one device: replicate them
    opt_state = sharding.onto_mesh(jax.jit(tx.init)(params), mesh)
    scalars = jax.device_put(dict(step=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32)),
                             sharding.replicated(mesh))
    return TrainState(params=params, frozen=frozen, opt_state=opt_state, **scalars), graphdefs


def accumulate(grad_fn, state: TrainState, batch, *args):
    """The micro-batches of one optimizer step: `grad_fn(params, frozen, *args, mb)` -> ((loss, aux), grads) over
    the leading axis [A, ...] of `batch`, scanned (one micro-batch's activations live at a time). Returns (the
    summed gradients, losses [A], aux with a leading [A]): SFT averages them, GRPO's token weights already
    normalise over the generation batch, so it sums. The skeleton of both train steps, with `guarded_update`."""
    def micro(acc, mb):
        (loss, aux), g = grad_fn(state.params, state.frozen, *args, mb)
        return jax.tree.map(jnp.add, acc, g), (loss, aux)

    grads, (losses, aux) = jax.lax.scan(micro, jax.tree.map(jnp.zeros_like, state.params), batch)
    return grads, losses, aux


def guarded_update(state: TrainState, grads, loss, tx: optax.GradientTransformation):
    """One optimizer update inside a jitted step, skipped (params and optimizer state unchanged, `skipped` counted)
    when the loss or the gradient norm is not finite. Returns (new state, gradient norm, ok)."""
    gnorm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    grads = jax.tree.map(lambda x: jnp.where(ok, x, jnp.zeros_like(x)), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
    new = state.replace(step=state.step + ok.astype(jnp.int32), params=keep(params, state.params),
                        opt_state=keep(opt_state, state.opt_state), skipped=state.skipped + (~ok).astype(jnp.int32))
    return new, gnorm, ok


def shardings_of(tree):
    """The shardings of a placed pytree (the train step's in/out shardings for the state)."""
    return jax.tree.map(lambda x: x.sharding, tree)


def count_params(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))
