"""The flash-decoding kernel (Pallas, run by the interpreter on CPU) against the XLA cached attention, and the model
paths that use it against HF generate and the SQR re-forward formulation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.test_sampler import EOS, PAD, _hf_generate, _prompts
from vsr1_jax.generate.sampler import SamplingParams, Sampler
from vsr1_jax.kernels.decode_attention import NEG, decode_attention
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.models.qwen3_vl.text import cached_attention


@pytest.mark.parametrize("S_len,block_k,splits,groups", [
    (150, 32, None, 2),   # ragged last block, default split count
    (150, 32, 1, 2),      # one split
    (150, 32, 7, 4),      # splits shorter than a block: rounded up to whole blocks
    (64, 16, 2, 1),       # MHA (one query head per kv head)
])
def test_kernel_equals_cached_attention(S_len, block_k, splits, groups):
    rng = np.random.default_rng(S_len + groups)
    L, B, K, hd = 3, 2, 2, 16
    kc = jnp.asarray(rng.standard_normal((L, B, K, S_len, hd)), jnp.float32)
    vc = jnp.asarray(rng.standard_normal((L, B, K, S_len, hd)), jnp.float32)
    q = jnp.asarray(rng.standard_normal((B, 1, K * groups, hd)), jnp.float32)
    mask = rng.random((B, S_len)) < 0.6          # gaps anywhere, as after left padding and invalidated slots
    mask[0, :40] = False                          # a whole masked block
    mask[:, 3] = True
    bias = jnp.where(jnp.asarray(mask), 0.0, NEG)
    for layer in range(L):
        ref = cached_attention(q, kc[layer], vc[layer], jnp.asarray(mask)[:, None, :])
        out = decode_attention(q, kc, vc, layer, bias, block_k=block_k, num_splits=splits, interpret=True)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-6, rtol=2e-6)


def test_kernel_rejects_bad_shapes():
    kc = jnp.zeros((1, 2, 2, 32, 16))
    with pytest.raises(ValueError, match="one query position"):
        decode_attention(jnp.zeros((2, 3, 4, 16)), kc, kc, 0, jnp.zeros((2, 32)), interpret=True)
    with pytest.raises(ValueError, match="does not fit cache"):
        decode_attention(jnp.zeros((3, 1, 4, 16)), kc, kc, 0, jnp.zeros((3, 32)), interpret=True)


@pytest.mark.parametrize("unroll", [True, False])   # False: the rolled layer loop, cache slices as scan inputs
def test_greedy_with_kernel_matches_hf_generate(tiny_pair, unroll):
    hf, model, cfg = tiny_pair
    rows = [[3, ("video", (3, 4, 6)), 4], [9]]     # left-padded batch, video + text
    _, p = _prompts(rows, cfg)
    n = 10
    ref = _hf_generate(hf, p, n)
    opts = RunOptions(decode_attn_impl="pallas", unroll_decode=unroll)
    gen = Sampler(model, opts).generate(p, SamplingParams(max_new_tokens=n, eos_ids=(EOS,), pad_id=PAD))
    toks, lens = np.asarray(gen.tokens), np.asarray(gen.lengths)
    for b in range(len(rows)):
        np.testing.assert_array_equal(toks[b, :int(lens[b])], ref[b, :int(lens[b])])


def test_rollout_with_kernel_equals_xla_rollout(tiny_pair):
    """The SQR rollout invalidates the slots after <REFINE> (a gap before the latents): same latents either way."""
    _, model, cfg = tiny_pair
    _, p = _prompts([[3, ("video", (2, 4, 6)), 5], [14]], cfg)
    head = S.SQRHead(S.SQRConfig(policy_hidden=cfg.text.hidden_size, retrieval_dim=32, embedder_hidden=32,
                                 zero_init_refine=False), rngs=nnx.Rngs(1))
    sp = SamplingParams(max_new_tokens=5, eos_ids=(), pad_id=PAD)
    Z = {}
    for impl in ("xla", "pallas"):
        opts = RunOptions(decode_attn_impl=impl)
        g = Sampler(model, opts).generate(p, sp, extra_slots=8)
        slot = jnp.full((2,), int(g.cache.index) - 3, jnp.int32)      # pretend <REFINE> was 3 tokens back
        Z[impl], _ = S.rollout_cached(model, head, g.cache, g.capture_hidden, slot, g.next_pos - 3, opts=opts)
    np.testing.assert_allclose(np.asarray(Z["pallas"]), np.asarray(Z["xla"]), atol=1e-5, rtol=1e-5)


def test_unknown_decode_impl_is_refused(tiny_pair):
    _, model, cfg = tiny_pair
    _, p = _prompts([[5]], cfg)
    with pytest.raises(ValueError, match="decode_attn_impl"):
        Sampler(model, RunOptions(decode_attn_impl="flash")).generate(p, SamplingParams(max_new_tokens=2))


def test_eval_config_picks_the_decode_attention():
    from configs.toy import get_config
    c = get_config()
    assert c.model.decode_attn_impl == "auto"
    assert RunOptions.from_config(c.model).decode_attn_impl == "xla"  # "auto" on a CPU; "pallas" on an NVIDIA GPU
    c.model.decode_attn_impl = "pallas"
    assert RunOptions.from_config(c.model).decode_attn_impl == "pallas"


def test_auto_picks_the_fused_kernels_on_nvidia_gpus_only(monkeypatch):
    from configs.base import get_config
    c = get_config()
    assert (c.model.attn_impl, c.model.vision_attn_impl, c.model.decode_attn_impl) == ("auto",) * 3
    o = RunOptions.from_config(c.model)
    assert (o.attn_impl, o.vision_attn_impl, o.decode_attn_impl) == ("xla", "xla", "xla")      # this CPU
    gpu = type("Dev", (), {"platform": "gpu", "device_kind": "NVIDIA H200"})()
    monkeypatch.setattr(jax, "devices", lambda *a: [gpu])
    o = RunOptions.from_config(c.model)                                                        # bf16 (default)
    assert (o.attn_impl, o.vision_attn_impl, o.decode_attn_impl) == ("cudnn", "cudnn", "pallas")
    c.model.dtype = "float32"                                                                  # cudnn: bf16/fp16
    o = RunOptions.from_config(c.model)
    assert (o.attn_impl, o.vision_attn_impl, o.decode_attn_impl) == ("xla", "xla", "pallas")
    c.model.attn_impl = "cudnn"                                                                # explicit wins
    assert RunOptions.from_config(c.model).attn_impl == "cudnn"
