"""Shared fixtures: a tiny random HF Qwen3-VL, saved with `save_pretrained`, converted through the conversion CLI,
and our port loaded from the converted orbax checkpoint (so every parity test also exercises the conversion)."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# LLVM at -O0 for the CPU programs of the tests (and of the subprocesses they start, which inherit the environment):
# about 30% less compile time, which dominates tiny-model tests. Every comparison here is against PyTorch, an
# independent formula, or another run under the same flags, so the optimisation level changes no verdict.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import pytest

# The heaviest files first (seconds on 2 cores): scripts/test.sh runs two pytest-xdist workers with --dist loadfile,
# which hands whole files to the workers in collection order, so a heavy file collected late runs alone at the end.
_HEAVY_FIRST = ("test_multihost.py", "test_train_resume.py", "test_eval_golden.py", "test_train_sharding.py",
                "test_sharding.py", "test_decode_attention.py", "test_benchmarks.py", "test_sft.py",
                "test_cli_errors.py", "test_sqr.py", "test_episode.py", "test_caption_pretrain.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(_HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: order within a file is kept


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """(hf_model, our_model, cfg) on the same random weights, untied, fp32."""
    from flax import nnx
    from tests.hf_fixtures import save_tiny, tiny_hf_model
    from vsr1_jax import convert
    from vsr1_jax.ckpt.read import load_converted
    from vsr1_jax.models.qwen3_vl.model import Qwen3VL
    from vsr1_jax.models.qwen3_vl.params import load_flat
    hf = tiny_hf_model(seed=0)
    root = tmp_path_factory.mktemp("tiny")
    save_tiny(str(root / "hf"), hf)
    assert convert.main(["hf-to-orbax", str(root / "hf"), str(root / "orbax"), "-q"]) == 0
    ck = load_converted(str(root / "orbax"))
    model = Qwen3VL(ck.cfg, rngs=None)
    load_flat(model, {tuple(str(p) for p in path): v for path, v in nnx.to_flat_state(nnx.State(ck.params))})
    return hf, model, ck.cfg


@pytest.fixture
def cudnn_as_xla(monkeypatch):
    """Run our attn_impl="cudnn" code paths on CPU: `jax.nn.dot_product_attention(..., implementation="cudnn")`
    becomes JAX's own XLA implementation of the same call (same per-row lengths, causal flag, masks), so the layouts
    and arguments we hand the fused kernel are checked against HF here; the kernel itself only runs on GPUs."""
    import jax
    real = jax.nn.dot_product_attention

    def fake(*args, implementation=None, **kw):
        return real(*args, implementation="xla" if implementation == "cudnn" else implementation, **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
