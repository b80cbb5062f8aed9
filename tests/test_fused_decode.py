"""The fused decode layer (vsr1_jax.kernels.fused_decode) through the Pallas interpreter against its XLA reference
(models/qwen3_vl/fused_ref.py), the reference against the model's real decode step, and the kernels' lowering to
Triton IR at the 2B shapes (jax.export for CUDA on the CPU: Pallas -> Triton IR, not Triton's own compiler)."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vsr1_jax.kernels import fused_decode as F
from vsr1_jax.models.qwen3_vl import fused_ref as R
from vsr1_jax.models.qwen3_vl.config import TextConfig, get_preset
from vsr1_jax.models.qwen3_vl.rope import text_positions
from vsr1_jax.models.qwen3_vl.text import KVCache, TextModel

# head_dim 32: hd/2 = 16, the smallest half-head a Triton dot takes (the interpreter takes anything)
CFG = TextConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, mrope_section=(8, 4, 4))
SMALL = F.Blocks(qkv_k=32, attn_block_k=16, o_n=16, mlp_n=32, mlp_k=32, down_n=16, down_k=32)
L, S = 2, 37          # S: a ragged last block of 16 slots
POS = {1: [36], 3: [36, 5, 20]}   # per-row write slots (the last slot, an early one, the middle)
# jitted whole: op-by-op dispatch of the reference and the interpreted kernels costs several times the compile
REF = jax.jit(R.decoder_layer_decode_ref, static_argnames=("cfg", "parts"))
FUSED = jax.jit(F.fused_decoder_layer_decode, static_argnames=("cfg", "blocks", "interpret"))


def _case(B, dtype, seed=0, with_bias=False):
    rng = np.random.default_rng(seed + B)
    D, I, Hq, K, hd = (CFG.hidden_size, CFG.intermediate_size, CFG.num_attention_heads, CFG.num_key_value_heads,
                       CFG.head_dim)
    w = lambda *s, sc=0.1: jnp.asarray(rng.standard_normal(s) * sc, jnp.float32).astype(dtype)  # noqa: E731
    params = dict(input_norm=1 + w(L, D), q_kernel=w(L, D, Hq * hd), k_kernel=w(L, D, K * hd),
                  v_kernel=w(L, D, K * hd), o_kernel=w(L, Hq * hd, D), q_norm=1 + w(L, hd), k_norm=1 + w(L, hd),
                  post_norm=1 + w(L, D), gate_kernel=w(L, D, I), up_kernel=w(L, D, I), down_kernel=w(L, I, D))
    x = w(B, D, sc=1.0)
    ck, cv = w(L, B, K, S, hd, sc=1.0), w(L, B, K, S, hd, sc=1.0)
    pos = jnp.asarray(POS[B], jnp.int32)
    cos, sin = R.decode_cos_sin(pos + 11, CFG)          # rope positions need not be the slots
    bias = None
    if with_bias:
        valid = rng.random((B, S)) < 0.7               # gaps anywhere, as left padding / invalidated slots
        valid[np.arange(B), POS[B]] = True
        valid[0, :20] = False                          # a whole masked block
        bias = jnp.where(jnp.asarray(valid), 0.0, F.NEG).astype(jnp.float32)
    return params, x, ck, cv, pos, cos, sin, bias


def _close(a, b, dtype, what):
    a, b = np.asarray(jnp.asarray(a, jnp.float32)), np.asarray(jnp.asarray(b, jnp.float32))
    if dtype == jnp.float32:
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5, err_msg=what)
    else:   # bf16: a few roundings apart (XLA rounds between elementwise ops where the kernels keep fp32)
        np.testing.assert_allclose(a, b, atol=0.04 * max(1.0, np.abs(b).max()), rtol=0.03, err_msg=what)


def _check_cache(new, old, ref, pos, layer, dtype):
    """The kernels wrote exactly (layer, b, :, pos[b], :) of each row, and those rows equal the reference's."""
    new, old = np.asarray(jnp.asarray(new, jnp.float32)), np.asarray(jnp.asarray(old, jnp.float32))
    changed = np.zeros(new.shape, bool)
    for b, p in enumerate(np.asarray(pos)):
        changed[layer, b, :, p] = True
    np.testing.assert_array_equal(new[~changed], old[~changed])
    _close(new[changed], np.asarray(jnp.asarray(ref, jnp.float32))[changed], dtype, "written cache rows")


def test_kernels_each_against_reference_parts():
    """Each kernel on the reference's inputs of its stage (fp32, batch 3, per-row slots, a valid-mask bias)."""
    dtype, layer = jnp.float32, 1
    params, x, ck, cv, pos, cos, sin, bias = _case(3, dtype, with_bias=True)
    out, rk, rv, parts = REF(params, x, ck, cv, pos, cos, sin, cfg=CFG, layer=layer, bias=bias, parts=True)
    p, wl = F.stacked(params, layer)
    kw = dict(blocks=SMALL, interpret=True)
    for blocks in (SMALL, SMALL._replace(qkv_splits=2)):       # (a) alone, and (a1) partials + (a2) finish
        q, nk, nv = F.qkv_rope_cache(x, p, ck, cv, pos, cos, sin, wlayer=wl, layer=layer, eps=CFG.rms_norm_eps,
                                     blocks=blocks, interpret=True)
        _close(q, parts["q"], dtype, f"q, {blocks.qkv_splits} split(s)")
        _check_cache(nk, ck, rk, pos, layer, dtype)
        _check_cache(nv, cv, rv, pos, layer, dtype)
    o, m, l = F.attention_partials(parts["q"], rk, rv, pos + 1, layer=layer, bias=bias, **kw)
    _close(F.merge_partials(o, m, l, dtype), parts["attn"], dtype, "attention")
    _close(F.oproj_residual(o, m, l, x, p, wlayer=wl, **kw), parts["h"], dtype, "o-proj + residual")
    _close(F.gate_up_silu(parts["h"], p, wlayer=wl, eps=CFG.rms_norm_eps, **kw), parts["act"], dtype, "gate/up")
    _close(F.down_residual(parts["act"], parts["h"], p, wlayer=wl, **kw), out, dtype, "down + residual")


@pytest.mark.parametrize("B,dtype,blocks,with_bias", [
    (1, jnp.float32, SMALL, False),
    (3, jnp.float32, SMALL._replace(qkv_splits=2, attn_splits=3), True),
    (1, jnp.bfloat16, SMALL._replace(attn_splits=1), False),
    (3, jnp.bfloat16, SMALL, True),
])
def test_fused_layer_equals_reference(B, dtype, blocks, with_bias):
    params, x, ck, cv, pos, cos, sin, bias = _case(B, dtype, with_bias=with_bias)
    layer = 1
    ref, rk, rv = REF(params, x, ck, cv, pos, cos, sin, cfg=CFG, layer=layer, bias=bias)
    # one layer's (unstacked) weights for the same layer: both layouts are accepted
    one = R.layer_params(params, layer) if B == 1 else params
    out, nk, nv = FUSED(one, x[:, None], ck, cv, pos, cos, sin, cfg=CFG, layer=layer, bias=bias, blocks=blocks,
                        interpret=True)
    assert out.shape == (B, 1, CFG.hidden_size) and out.dtype == dtype
    _close(out[:, 0], ref, dtype, "layer output")
    _check_cache(nk, ck, rk, pos, layer, dtype)
    _check_cache(nv, cv, rv, pos, layer, dtype)


def test_reference_and_kernels_match_the_model_decode_step():
    """Prefill (a left-padded row) and one decode step of the tiny TextModel (2 layers, one row no longer live):
    the reference chained over the layers, and the kernels, give its hidden state and cache update."""
    cfg = get_preset("tiny").text
    model = TextModel(cfg, tie_word_embeddings=False, rngs=nnx.Rngs(3))
    B, T, size = 2, 5, 9
    rng = np.random.default_rng(0)
    mask = np.ones((B, T), np.int32)
    mask[1, :2] = 0
    x = jnp.asarray(rng.standard_normal((B, T, cfg.hidden_size)), jnp.float32)
    step = nnx.jit(lambda m, *a, **k: m(*a, **k))
    _, _, cache = step(model, x, jnp.asarray(text_positions(mask)), jnp.asarray(mask),
                        cache=KVCache.zeros(cfg, B, size, jnp.float32))
    x1 = jnp.asarray(rng.standard_normal((B, 1, cfg.hidden_size)), jnp.float32)
    next_pos = jnp.asarray(mask.sum(1), jnp.int32)               # text rows: the count of prompt tokens
    live = jnp.asarray([True, False])
    h, _, new = step(model, x1, jnp.broadcast_to(next_pos[None, :, None], (3, B, 1)), live[:, None], cache=cache)

    params = {k: getattr(model, k)[...] for k in F.LAYER_KEYS}
    slot = jnp.full((B,), T, jnp.int32)                          # every row writes at cache.index
    valid = jax.lax.dynamic_update_slice(cache.valid, live[:, None], (0, T))
    bias = jnp.where(valid, 0.0, F.NEG).astype(jnp.float32)
    cos, sin = R.decode_cos_sin(next_pos, cfg)
    for name, layer_fn in (("reference", REF), ("kernels", functools.partial(FUSED, interpret=True))):
        y, ck, cv = x1[:, 0], cache.k, cache.v
        for li in range(cfg.num_hidden_layers):
            y, ck, cv = layer_fn(params, y, ck, cv, slot, cos, sin, cfg=cfg, layer=li, bias=bias)
        np.testing.assert_allclose(np.asarray(y), np.asarray(h[:, 0]), atol=2e-5, rtol=2e-5, err_msg=name)
        np.testing.assert_allclose(np.asarray(ck), np.asarray(new.k), atol=2e-5, rtol=2e-5, err_msg=name)
        np.testing.assert_allclose(np.asarray(cv), np.asarray(new.v), atol=2e-5, rtol=2e-5, err_msg=name)


@pytest.mark.parametrize("B,qkv_splits", [(1, 1), (8, 4)])
def test_lowers_to_triton_at_2b_shapes(B, qkv_splits):
    """The 2B layer's kernels lower through Pallas' Triton lowering (power-of-two blocks, supported primitives,
    indexing) for CUDA, with the expected kernels and grids; Triton's compiler itself only runs on a GPU."""
    from jax import export   # noqa: PLC0415  (only this test exports)
    cfg = get_preset("qwen3_vl_2b").text
    Lc, Sc = 28, 2048
    D, I, Hq, K, hd = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                       cfg.head_dim)
    sd = lambda *s, dt=jnp.bfloat16: jax.ShapeDtypeStruct(s, dt)  # noqa: E731
    params = dict(input_norm=sd(Lc, D), q_kernel=sd(Lc, D, Hq * hd), k_kernel=sd(Lc, D, K * hd),
                  v_kernel=sd(Lc, D, K * hd), o_kernel=sd(Lc, Hq * hd, D), q_norm=sd(Lc, hd), k_norm=sd(Lc, hd),
                  post_norm=sd(Lc, D), gate_kernel=sd(Lc, D, I), up_kernel=sd(Lc, D, I), down_kernel=sd(Lc, I, D))
    blocks = F.Blocks(qkv_splits=qkv_splits)
    f = jax.jit(lambda p, x, ck, cv, pos, c, s, bias: F.fused_decoder_layer_decode(
        p, x, ck, cv, pos, c, s, cfg, layer=3, bias=bias, blocks=blocks))
    exp = export.export(f, platforms=["cuda"],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
        params, sd(B, D), sd(Lc, B, K, Sc, hd), sd(Lc, B, K, Sc, hd), sd(B, dt=jnp.int32), sd(B, hd, dt=jnp.float32),
        sd(B, hd, dt=jnp.float32), sd(B, Sc, dt=jnp.float32))
    text = exp.mlir_module()
    names = re.findall(r'name = "(vsr1_\w+)"', text)
    grids = [tuple(map(int, g)) for g in re.findall(r"grid_x = (\d+) : i32, grid_y = (\d+) : i32, grid_z = (\d+)",
                                                    text)]
    qkv = ["vsr1_qkv"] if qkv_splits == 1 else ["vsr1_qkv_partial", "vsr1_qkv_finish"]
    assert names == qkv + ["vsr1_attention", "vsr1_oproj", "vsr1_gate_up", "vsr1_down"]
    assert grids[0] == (Hq + 2 * K, qkv_splits, 1)
    assert grids[-3:] == [(D // 32, 1, 1), (I // 64, 1, 1), (D // 32, 1, 1)]
    # the cache goes through kernel (a) in place: its outputs alias its cache operands
    assert text.count("output_operand_aliases") >= 1
