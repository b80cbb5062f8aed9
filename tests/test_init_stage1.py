"""`python -m vsr1_jax.convert init-stage1`: a plain Qwen3-VL policy + a plain embedder -> the Stage-1 start.

The reference is what the original does to the base model (sqr_and_sft.md §2.1, §3): transformers'
`tokenizer.add_tokens(["<REFINE>"], special_tokens=True)` then `model.resize_token_embeddings(len(tokenizer))`; every
policy tensor of the written folder, loaded back by transformers, must equal that model's, and the refine_* tensors
must have the launcher's init.
"""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.hf_fixtures import save_tiny, tiny_hf_model
from vsr1_jax import convert
from vsr1_jax.ckpt import read, surgery
from vsr1_jax.ckpt.layout import ConvertError
from vsr1_jax.data.tiny_tokenizer import build_tiny_tokenizer


def _base_folders(root, tie):
    pol, emb = os.path.join(root, "policy"), os.path.join(root, "embedder")
    tok = build_tiny_tokenizer(out_dir=pol, with_refine=False)   # 794 tokens; the checkpoint has 1024 rows
    ids = tuple(tok.convert_tokens_to_ids(t) for t in
                ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"))
    save_tiny(pol, tiny_hf_model(0, tie=tie, vocab_size=1024, ids=ids))
    build_tiny_tokenizer(out_dir=emb, with_refine=False)
    embedder = tiny_hf_model(100, tie=True, vocab_size=len(tok), ids=ids)
    save_tiny(emb, embedder)
    return pol, emb, len(tok), embedder


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_stage1_start_equals_transformers_resize_and_has_the_launcher_init(tmp_path, tie):
    import torch
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    pol, emb, n_tok, embedder = _base_folders(str(tmp_path), tie)
    dst = str(tmp_path / "stage1")
    assert convert.main(["init-stage1", pol, emb, dst, "-q", "--seed", "3"]) == 0

    # the reference: the original's tokenizer + resize on the base model
    ref_tok = AutoTokenizer.from_pretrained(pol, local_files_only=True)
    ref_tok.add_tokens(["<REFINE>"], special_tokens=True)
    ref = Qwen3VLForConditionalGeneration.from_pretrained(pol, local_files_only=True).eval()
    ref.resize_token_embeddings(len(ref_tok))
    assert len(ref_tok) == n_tok + 1

    got = Qwen3VLForConditionalGeneration.from_pretrained(dst, local_files_only=True).eval()
    assert got.config.text_config.vocab_size == n_tok + 1
    ref_sd, got_sd = ref.state_dict(), got.state_dict()
    assert set(got_sd) == set(ref_sd)
    for k, v in ref_sd.items():
        assert torch.equal(got_sd[k], v), k
    tok = AutoTokenizer.from_pretrained(dst, local_files_only=True)
    assert tok.convert_tokens_to_ids("<REFINE>") == n_tok == ref_tok.convert_tokens_to_ids("<REFINE>")

    # the SQR head as the launcher makes it (D = He = the embedder's hidden size, 64 here)
    sd = load_file(os.path.join(dst, "model.safetensors"))
    H = D = 64
    for k in ("refine_projector.3.weight", "refine_projector.3.bias", "refine_gate.weight", "refine_gate.bias"):
        assert not np.any(sd[k]), k                                     # zero_init_refine
    w0 = sd["refine_projector.0.weight"]
    assert w0.shape == (D, H) and 0 < np.abs(w0).max() <= 1 / np.sqrt(H)  # torch.nn.Linear default bound
    for prefix in ("refine_projector.1", "refine_latent_input_projector.0", "refine_append_input_projector.0"):
        assert np.all(sd[prefix + ".weight"] == 1) and not np.any(sd[prefix + ".bias"]), prefix
    for k in ("refine_latent_input_projector.1", "refine_append_input_projector.1"):
        np.testing.assert_array_equal(sd[k + ".weight"], np.eye(64, dtype=np.float32), err_msg=k)
        assert not np.any(sd[k + ".bias"]), k

    # the query embedder is the source embedder, untouched
    emb_got = Qwen3VLForConditionalGeneration.from_pretrained(os.path.join(dst, "query_embedder"),
                                                              local_files_only=True).state_dict()
    for k, v in embedder.state_dict().items():
        assert torch.equal(emb_got[k], v), k

    # and the project loads it as a training start
    models = read.load_checkpoint(dst)
    assert models.head.cfg.retrieval_dim == models.head.cfg.embedder_hidden == 64
    assert models.policy.cfg.text.vocab_size == n_tok + 1 == len(models.tokenizer)


def test_init_stage1_refuses_a_released_checkpoint(tmp_path):
    from tests.hf_fixtures import make_released_fixture
    released = str(tmp_path / "released")
    make_released_fixture(released)
    with pytest.raises(ConvertError, match="already a VideoSearch-R1 checkpoint"):
        surgery.init_stage1(released, os.path.join(released, "query_embedder"), str(tmp_path / "x"), quiet=True)
    assert not os.path.exists(tmp_path / "x")


def test_resize_vocab_grows_with_the_mean_row():
    rs = np.random.RandomState(0)
    from vsr1_jax.models.qwen3_vl.config import get_preset
    cfg = get_preset("tiny").with_vocab_size(10)
    cfg = cfg.replace(image_token_id=1, video_token_id=2, vision_start_token_id=3, vision_end_token_id=4)
    params = {"text": {"embed": rs.randn(10, 4).astype(np.float32), "lm_head": rs.randn(4, 10).astype(np.float32)}}
    out, new = surgery.resize_vocab(params, cfg, 12)
    assert new.text.vocab_size == 12
    np.testing.assert_array_equal(out["text"]["embed"][:10], params["text"]["embed"])
    np.testing.assert_allclose(out["text"]["embed"][10:], np.repeat(params["text"]["embed"].mean(0, keepdims=True),
                                                                    2, 0), rtol=1e-6)
    np.testing.assert_allclose(out["text"]["lm_head"][:, 11], params["text"]["lm_head"].mean(1), rtol=1e-6)
    with pytest.raises(ConvertError, match="drops the ids"):
        surgery.resize_vocab(params, cfg, 3)
    json.dumps(new.to_hf_dict())   # still a writable config
