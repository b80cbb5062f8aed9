"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (spawned by tests/test_train_sharding.py).

One SFT step and one GRPO step on 8 simulated devices with two mesh shapes each equal the one-device steps: the loss,
the metrics and every parameter after one plain gradient step (SGD, learning rate 1, so the parameters move by
exactly the gradient: Adam would move every element by ~lr whatever its gradient, hiding or inflating differences).
"""
import jax
import numpy as np
import optax
from flax import nnx

from vsr1_jax import sharding
from vsr1_jax.agent.rollout import Trajectory, Turn
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.models.qwen3_vl.rope import get_rope_index
from vsr1_jax.processing.video import VideoInputs
from vsr1_jax.train import grpo, optim, sft, sft_batches
from vsr1_jax.train import state as state_lib
from vsr1_jax.train.scoring import scoring_batch

CFG = get_preset("tiny")
OPTS = RunOptions()
MESHES = [{"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}]
REFINE = 794


def video_row(rng, grid, n_before, n_after):
    t, h, w = grid
    ids = list(rng.randint(0, 700, n_before))
    for g in range(t):
        ids += [700 + g, CFG.vision_start_token_id] + [CFG.video_token_id] * (h * w // 4) + [CFG.vision_end_token_id]
    return ids + list(rng.randint(0, 700, n_after))


def pixels(grid, seed):
    return np.random.RandomState(seed).randn(int(np.prod(grid)), CFG.vision.patch_dim).astype(np.float32)


def models(seed=0):
    policy = Qwen3VL(CFG, rngs=nnx.Rngs(seed))
    head = S.SQRHead(S.SQRConfig(policy_hidden=64, retrieval_dim=64, embedder_hidden=64, zero_init_refine=False),
                     rngs=nnx.Rngs(seed + 1))
    embedder = Qwen3VL(CFG, rngs=nnx.Rngs(seed + 2))
    return policy, head, embedder


def put(batch, mesh):
    sh = sharding.batch_shardings(mesh, batch)
    return {k: jax.tree.map(lambda x, s: jax.device_put(x, s), v, sh[k]) for k, v in batch.items()}


def compare(name, ref, got):
    (ls, ps), (lg, pg) = ref, got
    for k in ls:
        np.testing.assert_allclose(lg[k], ls[k], rtol=2e-5, atol=2e-6, err_msg=f"{name}: metric {k}")
    for a, b in zip(jax.tree.leaves(ps), jax.tree.leaves(pg)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6, err_msg=name)


def sft_batch():
    rng = np.random.RandomState(0)
    ex = []
    for i in range(8):
        grid = [(2, 4, 4), (1, 4, 6), (2, 2, 4)][i % 3]
        ids = np.asarray(video_row(rng, grid, 5 + i, 3) + list(rng.randint(0, 700, 4 + i)) + [REFINE, 770, 198],
                         np.int32)
        loss_mask = np.zeros(len(ids), bool)
        loss_mask[-(7 + i):] = True
        pos, _ = get_rope_index(ids[None], image_token_id=CFG.image_token_id, video_token_id=CFG.video_token_id,
                                video_grid_thw=[grid])
        ex.append(dict(input_ids=ids, loss_mask=loss_mask, positions=pos[:, 0].astype(np.int32),
                       refine_index=len(ids) - 3, pixel_rows=pixels(grid, i), grid=grid,
                       emb_ids=np.asarray(rng.randint(0, 700, 9 + i), np.int32), index=i, qid=f"q{i}", query="q",
                       pos_video_id="p", video_id="v"))
    host = sft_batches.SFTCollate(CFG, 0, 1, (64, 96), (32,), (2,), (16, 32), num_latents=8, embedder_max_length=24)(ex)
    cand = rng.randn(1, 8, 5, 64).astype(np.float32)
    host.update(candidates=cand / np.linalg.norm(cand, axis=-1, keepdims=True),
                candidate_mask=np.ones((1, 8, 5), bool), ret_valid=np.asarray([[True] * 7 + [False]]))
    return {k: v for k, v in host.items() if not isinstance(v, list)}


def run_sft(mesh):
    policy, head, embedder = models()
    tx = optax.sgd(1.0)
    state, gd = state_lib.create(policy, head, optim.sft_trainable, tx, mesh)
    egd, eparams = nnx.split(sharding.shard_module(embedder, mesh))
    step = sft.make_train_step(gd, egd, tx, OPTS, sft.LossConfig(num_latents=8, logprob_chunk=16), {})
    st = state_lib.shardings_of(state)
    state, m = jax.jit(step, donate_argnums=0, in_shardings=(st, state_lib.shardings_of(eparams), None),
                       out_shardings=(st, None))(state, eparams, put(sft_batch(), mesh))
    m.pop("q_final")
    return jax.device_get(m), jax.device_get(state.params)


def grpo_inputs():
    rng = np.random.RandomState(1)
    trajs = []
    for i in range(8):
        grid = [(2, 4, 4), (1, 4, 6)][i % 2]
        prompt = np.asarray(video_row(rng, grid, 4 + i, 2), np.int32)
        comp = rng.randint(0, 700, 3 + i).astype(np.int32)
        vin = VideoInputs(pixels(grid, i), grid, [0.5] * grid[0], 2 * grid[0], (64, 64))
        t = Turn(turn=1, doc_id="v", rank=1, prompt_ids=prompt, video=vin, sampled_ids=comp,
                 logprobs=np.zeros(len(comp), np.float32), text="", answer="unknown", span=None, has_refine=False)
        trajs.append(Trajectory(query={}, sample=i, qvec=np.zeros(4), orig_rank=1, turns=[t]))
    adv, _ = grpo.group_advantages(rng.randn(8), 8)
    batch = scoring_batch(trajs, adv, cfg=CFG, pad_id=0, micro_batches=2, rows_per_micro=4, prompt_buckets=(64,),
                          completion_length=16, group_buckets=(2,), patch_buckets=(32,), loss_type="grpo")
    batch["ref_logprobs"] = -np.abs(rng.randn(2, 4, 16)).astype(np.float32)
    return batch


def run_grpo(mesh):
    policy, head, _ = models(3)
    tx = optax.sgd(1.0)
    state, gd = state_lib.create(policy, head, optim.grpo_trainable, tx, mesh)
    step = grpo.make_train_step(gd, tx, OPTS, grpo.LossConfig(logprob_chunk=8), {})
    st = state_lib.shardings_of(state)
    # rows per micro-batch (4) are split over the data-parallel devices (8 or 4): only meshes whose data-parallel
    # size divides it apply
    state, m = jax.jit(step, donate_argnums=0, in_shardings=(st, None), out_shardings=(st, None))(
        state, put(grpo_inputs(), mesh))
    return jax.device_get(m), jax.device_get(state.params)


def main():
    assert len(jax.devices()) == 8, jax.devices()
    ref = run_sft(sharding.single_device_mesh())
    for spec in MESHES:
        compare(f"sft {spec}", ref, run_sft(sharding.make_mesh(spec)))
        print("sft OK", spec, flush=True)
    ref = run_grpo(sharding.single_device_mesh())
    for spec in [{"data": 4, "fsdp": 1, "tensor": 2}, {"data": 2, "fsdp": 2, "tensor": 2}]:
        compare(f"grpo {spec}", ref, run_grpo(sharding.make_mesh(spec)))
        print("grpo OK", spec, flush=True)
    print("ALL OK")


if __name__ == "__main__":
    main()
