"""Model surgery for the Stage-1 start (`python -m vsr1_jax.convert init-stage1`): a plain Qwen3-VL policy with
<REFINE> added and its vocabulary resized (`resize_vocab`), a fresh SQR head, and a plain Qwen3-VL-Embedding as the
query embedder, written as a released-layout HF folder (`init_stage1`, through ckpt/hf_export.py).
"""
from __future__ import annotations

import logging

import jax
import numpy as np
from flax import nnx

from vsr1_jax.ckpt.hf_export import export_hf
from vsr1_jax.ckpt.hf_read import load_hf_folder
from vsr1_jax.ckpt.layout import ConvertError
from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig
from vsr1_jax.models.sqr import SQRConfig, SQRHead
from vsr1_jax.processing.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


def resize_vocab(params: dict, cfg: Qwen3VLConfig, vocab_size: int) -> tuple[dict, Qwen3VLConfig]:
    """`model.resize_token_embeddings(vocab_size)` of transformers on our params (sqr_and_sft.md §3, MAIN L1159):
    the embedding (and an untied lm_head) keep their first min(old, new) rows; rows added by growing are the mean of
    the old rows (transformers samples them around that mean; the Qwen3 + <REFINE> case shrinks 151,936 -> 151,670
    rows, so no row is added there). Returns (params, config with the new text vocab_size)."""
    old = cfg.text.vocab_size
    if vocab_size == old:
        return params, cfg

    def rows(w, axis):
        w = np.asarray(w)
        keep = np.take(w, np.arange(min(old, vocab_size)), axis=axis)
        if vocab_size <= old:
            return keep
        mean = w.astype(np.float64).mean(axis=axis, keepdims=True).astype(w.dtype)
        return np.concatenate([keep, np.repeat(mean, vocab_size - old, axis=axis)], axis=axis)

    text = dict(params["text"])
    text["embed"] = rows(text["embed"], 0)                 # [V, D]
    if "lm_head" in text and text["lm_head"] is not None:
        text["lm_head"] = rows(text["lm_head"], 1)         # [D, V]
    new_cfg = cfg.with_vocab_size(vocab_size)
    too_big = {k: v for k, v in (("image_token_id", cfg.image_token_id), ("video_token_id", cfg.video_token_id),
                                 ("vision_start_token_id", cfg.vision_start_token_id),
                                 ("vision_end_token_id", cfg.vision_end_token_id)) if v is not None and v >= vocab_size}
    if too_big:
        raise ConvertError(f"resizing the vocabulary to {vocab_size} rows drops the ids {too_big} of config.json")
    return {**params, "text": text}, new_cfg


def init_stage1(policy_src: str, embedder_src: str, dst: str, *, seed: int = 0, zero_init_refine: bool = True,
                overwrite: bool = False, quiet: bool = False) -> str:
    """The original's Stage-1 starting point as a released-layout HF folder (what `--config.mode=sft` starts from):

    - the policy: a plain Qwen3-VL HF folder (e.g. Qwen3-VL-4B-Instruct); `<REFINE>` added to its tokenizer as one
      special token, the embedding (and an untied lm_head) resized to len(tokenizer) (`resize_vocab`);
    - the SQR head created as the launcher does (sqr_and_sft.md §2.1): refine_projector with PyTorch's default init
      and its last Linear zeroed (`zero_init_refine`, the Stage-1 default), the gate zeroed, LayerNorms 1/0, the
      latent and append input projectors partial identities; D = He = the embedder's hidden size (the original's
      `query_embedder_head` is Identity only then, and only that case is ported); float32;
    - the query embedder: a plain Qwen3-VL-Embedding HF folder, copied under `query_embedder/` with its tokenizer.
    """
    pol = load_hf_folder(policy_src, quiet=quiet)
    if pol.sqr_params is not None:
        raise ConvertError(f"{policy_src}: already a VideoSearch-R1 checkpoint (it has refine_* tensors); "
                           "train from it directly")
    emb = load_hf_folder(embedder_src, quiet=quiet)
    if emb.sqr_params is not None:
        raise ConvertError(f"{embedder_src}: has refine_* tensors; the query embedder is a plain Qwen3-VL-Embedding")
    for src, ck in ((policy_src, pol), (embedder_src, emb)):
        if ck.tokenizer_dir is None:
            raise ConvertError(f"{src}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    tok, info = load_tokenizer(pol.tokenizer_dir, add_refine=True)
    etok, _ = load_tokenizer(emb.tokenizer_dir, add_refine=False)
    params, cfg = resize_vocab(pol.params, pol.cfg, info.required_vocab_size)
    He = emb.cfg.text.hidden_size
    head = SQRHead(SQRConfig(policy_hidden=cfg.text.hidden_size, retrieval_dim=He, embedder_hidden=He,
                             zero_init_refine=zero_init_refine), rngs=nnx.Rngs(seed))
    sqr = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(head)))
    log.info("%s: <REFINE> = id %s, vocabulary %d -> %d rows; SQR head H=%d D=He=%d", policy_src, info.refine_id,
             pol.cfg.text.vocab_size, cfg.text.vocab_size, cfg.text.hidden_size, He)
    return export_hf(dst, cfg, params, sqr_params=sqr, sqr_cfg=head.cfg, tokenizer=tok,
                     embedder=(emb.cfg, emb.params, etok), overwrite=overwrite, quiet=quiet)
