"""The fused decode layer wired into the production decode (`RunOptions.decode_layer_impl`): the Sampler's host loop
with the fused kernels (through the Pallas interpreter on CPU) against the XLA layers, and the rule of where the fused
layer runs (`run_options.decode_layer_path`)."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vsr1_jax.generate.sampler import SamplingParams, Sampler, pack_prompts
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.run_options import RunOptions, decode_layer_path
from vsr1_jax.models.qwen3_vl.text import KVCache, TextModel

CFG = get_preset("tiny")   # head_dim 16: the interpreter takes it (Triton would not: the rule sends it to XLA)


def _steps(smp, p, n):
    """The production host loop of `Sampler.decode` (prefill, init, n donated steps), keeping each step's logits
    (the state of the loop holds only the latest): greedy tokens [B, n], logits [n, B, V] of each sampled token."""
    sp = SamplingParams(max_new_tokens=n, eos_ids=(), pad_id=0)
    T = p.ids.shape[1]
    logits, cache, _ = smp.prefill(p, T + n)
    s = smp._init(cache, logits, jnp.asarray(p.next_pos), jax.random.key(0), sp=sp)
    seen = []
    for _ in range(n):
        seen.append(np.asarray(s["logits"]))
        s = smp._step(smp.params, s, sp=sp, capture_id=-1)
    return np.asarray(s["tokens"]), np.stack(seen)


def test_sampler_fused_layer_equals_xla_layer():
    """Batch 2, left-padded, 4 greedy tokens: the logits the fused layer gives at every step agree with the XLA
    layer's, and the greedy tokens agree wherever the top-2 margin is clear of the difference (near ties are not
    compared: after the first token that differs the two runs feed different tokens, so comparison stops there)."""
    model = Qwen3VL(CFG, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    seqs = [list(rng.integers(1, 700, 9)), list(rng.integers(1, 700, 5))]       # row 1: 4 pad slots on the left
    p = pack_prompts(seqs, cfg=CFG, pad_id=0, padding="left")
    n = 4
    smp = {impl: Sampler(model, RunOptions(decode_layer_impl=impl)) for impl in ("xla", "fused_interpret")}
    assert smp["fused_interpret"].mesh.size == 1                 # the rule's one device: the kernels run
    out = {impl: _steps(s, p, n) for impl, s in smp.items()}
    (tok_x, lg_x), (tok_f, lg_f) = out["xla"], out["fused_interpret"]
    scale = np.abs(lg_x).max()
    tol = 1e-4 * scale                # fp32: the two differ by ~1e-7 here
    compared = 0
    for i in range(n):
        np.testing.assert_allclose(lg_f[i], lg_x[i], atol=tol, rtol=0, err_msg=f"step {i} logits")
        top2 = np.sort(lg_x[i], axis=-1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 10 * tol
        np.testing.assert_array_equal(tok_f[clear, i], tok_x[clear, i], err_msg=f"step {i} tokens")
        compared += int(clear.sum())
        if (tok_f[:, i] != tok_x[:, i]).any():
            break
    assert compared >= n            # not vacuous: most tokens are clear of ties at this scale


def test_fused_path_runs_only_where_the_rule_says():
    """The single-position step with the stacked cache runs the kernels (pallas_call in its jaxpr) for
    "fused_interpret" on one device; prefill, the rolled steps of training and several devices keep XLA."""
    model = Qwen3VL(CFG, rngs=nnx.Rngs(0))
    B, S = 2, 12
    cache = KVCache.zeros(CFG.text, B, S, jnp.float32)._replace(index=jnp.asarray(5, jnp.int32))

    def kernels(T, devices=1, **kw):
        opts = RunOptions(decode_layer_impl="fused_interpret", **kw)
        x = jnp.zeros((B, T, CFG.text.hidden_size))
        pos = jnp.zeros((3, B, T), jnp.int32)
        f = lambda x, c: model.decode(x, pos, None, opts=opts, cache=c, logits="none", devices=devices)  # noqa: E731
        return "pallas_call" in str(jax.make_jaxpr(f)(x, cache))

    assert kernels(1)
    assert not kernels(3)                          # prefill / multi-position extend
    assert not kernels(1, unroll_decode=False)     # rolled, differentiated steps (CacheMode.SLICED)
    assert not kernels(1, devices=2)               # a mesh of several devices


GPU = type("Dev", (), {"platform": "gpu", "device_kind": "NVIDIA H100 80GB HBM3"})()


def test_decode_layer_rule(monkeypatch):
    tiny, big = CFG.text, get_preset("qwen3_vl_2b").text
    rule = lambda impl, cfg=big, T=1, stacked=True, devices=1: decode_layer_path(  # noqa: E731
        impl, cfg, T=T, stacked_cache=stacked, devices=devices)[0]
    assert rule("xla") == "xla"
    assert rule("fused") == "xla"                  # this CPU: Triton needs an NVIDIA GPU
    assert rule("fused_interpret", tiny) == "interpret"
    assert rule("fused_interpret", T=2) == rule("fused_interpret", stacked=False) == "xla"
    assert rule("fused_interpret", devices=4) == "xla"
    with pytest.raises(ValueError, match="decode_layer_impl"):
        rule("triton")
    monkeypatch.setattr(jax, "devices", lambda *a: [GPU])
    assert rule("fused") == "fused"
    path, why = decode_layer_path("fused", tiny, T=1, stacked_cache=True, devices=1)
    assert path == "xla" and "head_dim 16" in why          # hd/2 = 8 columns: below Triton's 16
    assert rule("fused", dataclasses.replace(big, head_dim=96)) == "xla"
    assert rule("fused", devices=2) == "xla"


def test_production_decoder_lowers_to_the_triton_kernels_at_2b_layer_shapes(monkeypatch):
    """TextModel's decode step with decode_layer_impl "fused" on an NVIDIA GPU (pretended: jax.export lowers it for
    CUDA on the CPU, Pallas -> Triton IR) runs the five kernels per layer, at the 2B's layer shapes (2 layers)."""
    from jax import export   # noqa: PLC0415  (only this test exports)
    cfg = dataclasses.replace(get_preset("qwen3_vl_2b").text, num_hidden_layers=2)
    model = nnx.eval_shape(lambda: TextModel(cfg, tie_word_embeddings=True, param_dtype=jnp.bfloat16,
                                             rngs=nnx.Rngs(0)))
    graph, state = nnx.split(model)
    B, S, bf = 8, 2176, jnp.bfloat16
    sd = jax.ShapeDtypeStruct

    def step(state, kc, vc, valid, x, pos):
        cache = KVCache(kc, vc, valid, jnp.asarray(2048, jnp.int32))
        pos3 = jnp.broadcast_to(pos[None, :, None], (3, B, 1))
        h, _, new = nnx.merge(graph, state)(x, pos3, jnp.ones((B, 1), bool), cache=cache, decode_layer_impl="fused",
                                            devices=1)
        return new.k, new.v, h

    monkeypatch.setattr(jax, "devices", lambda *a: [GPU])
    kv = sd((2, B, cfg.num_key_value_heads, S, cfg.head_dim), bf)
    exp = export.export(jax.jit(step), platforms=["cuda"],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
        state, kv, kv, sd((B, S), bool), sd((B, 1, cfg.hidden_size), bf), sd((B,), jnp.int32))
    names = re.findall(r'name = "(vsr1_\w+)"', exp.mlir_module())
    assert names == ["vsr1_qkv", "vsr1_attention", "vsr1_oproj", "vsr1_gate_up", "vsr1_down"] * 2


def test_config_default_is_xla():
    from configs.base import get_config
    c = get_config()
    assert c.model.decode_layer_impl == "xla"
    assert RunOptions.from_config(c.model).decode_layer_impl == "xla"
    c.model.decode_layer_impl = "fused"
    assert RunOptions.from_config(c.model).decode_layer_impl == "fused"
