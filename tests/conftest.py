"""Shared fixtures: tiny random HF Qwen3-VL models and our port loaded with the same weights."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_pair():
    """(hf_model, our_model, cfg) on the same random weights, untied, fp32."""
    from tests.hf_fixtures import tiny_hf_model
    from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig
    from vsr1_jax.models.qwen3_vl.params import model_from_hf_state_dict
    hf = tiny_hf_model(seed=0)
    cfg = Qwen3VLConfig.from_hf_dict(hf.config.to_dict())
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    return hf, model_from_hf_state_dict(cfg, sd), cfg
