"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (spawned by tests/test_sharding.py).

Checks that sharded forward logits and greedy decoding equal the unsharded run on several (data, fsdp, tensor)
meshes, and that params saved on one mesh restore onto another mesh's shardings.
"""
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from vsr1_jax import sharding
from vsr1_jax.ckpt import orbax_io
from vsr1_jax.generate.sampler import SamplingParams, Sampler, pack_prompts
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL, abstract_model
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.models.qwen3_vl.params import load_flat
from flax import nnx


def flat_params(model):
    return {tuple(str(p) for p in path): np.asarray(v.get_value())
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def main():
    assert len(jax.devices()) == 8, jax.devices()
    cfg = get_preset("tiny")
    ref_model = Qwen3VL(cfg, rngs=nnx.Rngs(0))
    params = flat_params(ref_model)
    rng = np.random.RandomState(0)
    vid = (2, 4, 4)
    vpx = rng.randn(int(np.prod(vid)) * 8, 1536).astype(np.float32)
    seqs = []
    for i in range(8):
        s = list(rng.randint(0, 900, size=3 + i))
        s += [cfg.vision_start_token_id] + [cfg.video_token_id] * 4 + [cfg.vision_end_token_id]
        s += [900, cfg.vision_start_token_id] + [cfg.video_token_id] * 4 + [cfg.vision_end_token_id]
        seqs.append(s + list(rng.randint(0, 900, size=2)))
    p = pack_prompts(seqs, cfg=cfg, pad_id=0, video_pixels=vpx, video_grids=[vid] * 8)
    sp = SamplingParams(max_new_tokens=6, eos_ids=(7,), pad_id=0)

    def forward(model):
        return np.asarray(model(jnp.asarray(p.ids), jnp.asarray(p.positions), jnp.asarray(p.mask),
                                video_pixels=jnp.asarray(vpx), video_grids=p.video_grids).logits)

    ref_logits = forward(ref_model)
    ref_tokens = np.asarray(Sampler(ref_model).generate(p, sp).tokens)
    for spec in ({"data": 8, "fsdp": 1, "tensor": 1}, {"data": 2, "fsdp": 4, "tensor": 1},
                 {"data": 1, "fsdp": 2, "tensor": 4}):
        mesh = sharding.make_mesh(spec)
        model = Qwen3VL(cfg, rngs=None)
        load_flat(model, params)
        sharding.shard_module(model, mesh)
        q = model.text.q_kernel[...]
        if spec["tensor"] > 1:
            assert "tensor" in str(q.sharding.spec), q.sharding
        logits = jax.jit(lambda m: m(jnp.asarray(p.ids), jnp.asarray(p.positions), jnp.asarray(p.mask),
                                     video_pixels=jnp.asarray(vpx), video_grids=p.video_grids).logits)(model)
        np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-4 * np.abs(ref_logits).max(), rtol=1e-4)
        toks = np.asarray(Sampler(model, mesh=mesh).generate(p, sp).tokens)
        np.testing.assert_array_equal(toks, ref_tokens)
        print("mesh ok", spec, flush=True)

    # a batch the data axis cannot split is refused by name
    mesh = sharding.make_mesh({"data": 8})
    bad = pack_prompts(seqs[:3], cfg=cfg, pad_id=0, video_pixels=vpx[:3 * 32], video_grids=[vid] * 3)
    try:
        Sampler(ref_model, mesh=mesh).generate(bad, sp)
    except ValueError as e:
        assert "not divisible by the data-parallel size" in str(e), e
    else:
        raise AssertionError("batch 3 on data=8 should fail")

    # the agent's sampler (split_batch=False) on weights placed on the mesh: its default mesh is theirs, and every
    # device holds the whole batch, of any size
    model = Qwen3VL(cfg, rngs=None)
    load_flat(model, params)
    sharding.shard_module(model, mesh)
    agent = Sampler(model, split_batch=False)
    assert agent.mesh == mesh, agent.mesh
    np.testing.assert_array_equal(np.asarray(agent.generate(bad, sp).tokens),
                                  np.asarray(Sampler(ref_model).generate(bad, sp).tokens))

    # the flash-decoding kernel is refused under a mesh (XLA would gather the cache onto every device)
    try:
        Sampler(ref_model, RunOptions(decode_attn_impl="pallas"), mesh=mesh)
    except ValueError as e:
        assert "runs unsharded" in str(e), e
    else:
        raise AssertionError("pallas decode under a mesh should fail")

    # save on one mesh, restore straight into another mesh's shardings
    with tempfile.TemporaryDirectory() as d:
        mesh_a = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
        model = Qwen3VL(cfg, rngs=None)
        load_flat(model, params)
        sharding.shard_module(model, mesh_a)
        tree = {"model": nnx.to_pure_dict(nnx.state(model, nnx.Param))}
        orbax_io.save_params(os.path.join(d, "ckpt"), tree)
        mesh_b = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
        target = {"model": sharding.abstract_params(abstract_model(cfg), mesh_b)}
        restored = orbax_io.restore_params(os.path.join(d, "ckpt"), target=target)
        q = restored["model"]["text"]["q_kernel"]
        assert q.sharding.spec == target["model"]["text"]["q_kernel"].sharding.spec, q.sharding
        assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape[-1] == q.shape[-1] // 4
        np.testing.assert_array_equal(np.asarray(q), params[("text", "q_kernel")])
        print("restore ok", flush=True)
    check_sharded_embedder()
    print("ALL OK")


def check_sharded_embedder():
    """The build's search engine on a mesh (prepare.make_embedder with several devices): batches split over the
    data-parallel axes give the single-device vectors."""
    from vsr1_jax.demo_models import tiny_embedder
    vcfg = {"total_pixels": 10 * 768 * 32 * 32, "min_pixels": 4 * 32 * 32, "max_frames": 64}
    rng = np.random.RandomState(0)
    texts = ["a red circle", "", "two blue squares move left then right", "x", "the green triangle fades"]
    videos = [rng.randint(0, 255, (4, 64, 96, 3), np.uint8) for _ in range(3)]
    videos += [rng.randint(0, 255, (6, 64, 64, 3), np.uint8) for _ in range(2)]
    ref = tiny_embedder(0, video_cfg=vcfg)
    t_ref, v_ref = ref.embed_texts(texts, batch_size=4), ref.embed_videos(videos, batch_size=4)
    for spec in ({"data": 8}, {"data": 4, "fsdp": 2}):
        emb = tiny_embedder(0, video_cfg=vcfg, mesh=sharding.make_mesh(spec))
        x = emb._put(np.zeros((emb._rows(3, 4), 5), np.int32), 2)
        assert x.shape[0] == 8 and len(x.addressable_shards) == 8 and x.addressable_shards[0].data.shape[0] == 1
        np.testing.assert_allclose(emb.embed_texts(texts, batch_size=4), t_ref, atol=2e-5)
        np.testing.assert_allclose(emb.embed_videos(videos, batch_size=4), v_ref, atol=2e-5)
        print("embedder ok", spec, flush=True)


if __name__ == "__main__":
    sys.exit(main())
