"""One decode loop in production: evaluation, GRPO rollouts and the build's teacher generate with
`config.model.decode_loop`, whose default is the host-driven loop (the faster on GPUs), and the two loops give the
same tokens."""
import jax
import numpy as np
import pytest
from flax import nnx

from configs.toy import get_config
from vsr1_jax import loading, prepare
from vsr1_jax.agent.evaluate import EvalSettings, run_eval
from vsr1_jax.data.settings import BuildSettings
from vsr1_jax.generate.sampler import SamplingParams, Sampler, pack_prompts
from vsr1_jax.models.qwen3_vl.config import get_preset
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.train.grpo_run import run_grpo
from vsr1_jax.train.settings import GRPOSettings


class Decoded(Exception):
    """Raised by the spy at the first decode: which loop it would have run."""


@pytest.fixture
def spy(monkeypatch):
    def decode(self, *a, **kw):
        raise Decoded(self.loop)
    monkeypatch.setattr(Sampler, "decode", decode)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("decode_loop") / "data")   # built by the first load_models, then reused


def _config(tmp_path, data_root, loop=None):
    c = get_config()
    c.data_root, c.output_dir = data_root, str(tmp_path / "out")
    c.synthetic.train.num_videos, c.synthetic.test.num_videos = 4, 4
    c.synthetic.progress = False
    c.demo.stage0.enabled = False   # the random engine: this test is about the policy's sampler
    if loop is not None:
        c.model.decode_loop = loop
    return c


def test_default_is_the_host_loop():
    assert get_config().model.decode_loop == "host"
    assert RunOptions.from_config(get_config().model).decode_loop == "host"
    assert RunOptions().decode_loop == "host"
    assert Sampler(Qwen3VL(get_preset("tiny"), rngs=nnx.Rngs(0))).loop == "host"


@pytest.mark.parametrize("loop", [None, "while"])
def test_evaluation_grpo_and_teacher_decode_with_the_configured_loop(tmp_path, data_root, spy, loop):
    want = loop or "host"
    c = _config(tmp_path, data_root, loop)
    models = loading.load_models(c)
    with pytest.raises(Decoded) as e:
        run_eval(EvalSettings.from_config(c), models, output_dir=str(tmp_path / "eval"))
    assert e.value.args[0] == want
    with pytest.raises(Decoded) as e:
        run_grpo(GRPOSettings.from_config(c), models, out_dir=str(tmp_path / "grpo"))
    assert e.value.args[0] == want
    c.data.build.teacher = "tiny"
    assert prepare.make_teacher(c, BuildSettings.from_config(c)).sampler.loop == want


def test_the_two_loops_give_the_same_tokens():
    cfg = get_preset("tiny")
    model = Qwen3VL(cfg, rngs=nnx.Rngs(0))
    p = pack_prompts([list(np.random.RandomState(i).randint(1, 500, 20 + 3 * i)) for i in range(3)], cfg=cfg,
                     pad_id=0)
    for sp in (SamplingParams(max_new_tokens=20, eos_ids=(7,), pad_id=0),
               SamplingParams(max_new_tokens=20, temperature=1.0, eos_ids=(7,), pad_id=0)):
        a = Sampler(model, loop="while").generate(p, sp, jax.random.key(3))
        b = Sampler(model, loop="host", check_every=4).generate(p, sp, jax.random.key(3))
        np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
        np.testing.assert_array_equal(np.asarray(a.lengths), np.asarray(b.lengths))
        np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), rtol=1e-5, atol=1e-6)
