"""Hugging Face folder -> our parameters: `inspect_hf` opens a Qwen3-VL / Qwen3-VL-Embedding / released
VideoSearch-R1 folder and checks everything its headers tell (key layout, every tensor present with its shape, tied
lm_head, the refine_* SQR tensors and <REFINE>, the query_embedder/ sub-folder) before any data is read;
`read_arrays` then streams the tensors through a memory map into our layer-stacked arrays (spec README decision 8:
bit-exact). `load_hf_folder` is both in one call, in memory (no orbax); ckpt/write.py's `hf_to_orbax` writes them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import defaultdict

import numpy as np
from flax import nnx

from vsr1_jax.ckpt.layout import (CAST_DTYPES, CONFIG_FILE, EMBEDDER_DIR, FORMAT, FORMAT_VERSION, ConvertError,
                                  Converted, dtype_names, layout_rules, listing, nest, non_weight_files, progress,
                                  sqr_config, tokenizer_dir)
from vsr1_jax.ckpt.safetensors_io import INDEX_FILE, ST_DTYPES, SafetensorsError, SafetensorsFolder
from vsr1_jax.models.qwen3_vl import params as P
from vsr1_jax.models.qwen3_vl.config import ConfigError, Qwen3VLConfig
from vsr1_jax.models.qwen3_vl.model import abstract_model
from vsr1_jax.models.sqr import SQRConfig, SQRHead
from vsr1_jax.processing.special_tokens import REFINE_TOKEN

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Source:
    src: str
    cfg: Qwen3VLConfig
    tensors: SafetensorsFolder
    prefix: str                       # "model." | ""
    entries: list[P.Entry]            # model entries in source-key order
    sqr_entries: list[P.Entry]
    shapes: dict                      # ours path (model: plain; sqr: ("sqr", ...)) -> (shape, dtype)
    sqr_dims: dict | None
    dropped_lm_head: bool
    files: list[str]                  # non-weight files, relative
    embedder: "Source | None"

    @property
    def kind(self) -> str:
        return "videosearch_r1" if self.sqr_entries else "qwen3_vl"


def _sqr_shapes(dims: dict) -> dict:
    cfg = SQRConfig(policy_hidden=dims["policy_hidden"], retrieval_dim=dims["retrieval_dim"],
                    embedder_hidden=dims["embedder_hidden"])
    head = nnx.eval_shape(lambda: SQRHead(cfg, rngs=nnx.Rngs(0)))
    return {("sqr",) + k: v for k, v in P.flat_shapes(head).items()}


def _check_refine_token(src: str, cfg: Qwen3VLConfig) -> None:
    """The released tokenizer adds <REFINE> and the embedding was resized to hold it (sqr_and_sft.md §3)."""
    path = os.path.join(src, "tokenizer.json")
    if not os.path.exists(path):
        log.warning("%s: no tokenizer.json next to the refine_* tensors; <REFINE> cannot be checked", src)
        return
    try:
        with open(path) as f:
            added = json.load(f).get("added_tokens") or []
    except (OSError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: cannot read ({e})") from None
    ids = [t.get("id") for t in added if t.get("content") == REFINE_TOKEN]
    if not ids:
        log.warning("%s: the tokenizer has no %s token although refine_* tensors are present", path, REFINE_TOKEN)
    elif ids[0] >= cfg.text.vocab_size:
        raise ConvertError(f"{path}: {REFINE_TOKEN} has id {ids[0]} but the embedding has only "
                           f"{cfg.text.vocab_size} rows (config.json text_config.vocab_size)")


def inspect_hf(src: str) -> Source:
    """Open an HF folder and check everything that can be checked from headers, before any data is read."""
    src = os.path.abspath(src)
    if not os.path.isdir(src):
        raise ConvertError(f"{src}: no such folder")
    if not os.path.exists(os.path.join(src, CONFIG_FILE)):
        raise ConvertError(f"{src}: no config.json (not a Hugging Face model folder)")
    try:
        cfg = Qwen3VLConfig.from_json(src)
    except ConfigError as e:
        raise ConvertError(str(e)) from None
    try:
        tensors = SafetensorsFolder(src)
    except SafetensorsError as e:
        raise ConvertError(str(e)) from None
    try:
        keys = tensors.keys
        if any(k.startswith(("model.language_model.", "model.visual.")) for k in keys):
            prefix = "model."
        elif any(k.startswith(("language_model.", "visual.")) for k in keys):
            prefix = ""
        else:
            raise ConvertError(f"{src}: no Qwen3-VL tensors (model.language_model.* / language_model.*) among "
                               f"the keys: {listing(keys, 8)}")
        rules = layout_rules(cfg, prefix)
        shapes = dict(P.flat_shapes(abstract_model(cfg)))
        present = set(keys)
        by_hf = {e.hf: e for e in P.expand(rules)}

        dropped = False
        if cfg.tie_word_embeddings and "lm_head.weight" in present:
            embed_key = prefix + "language_model.embed_tokens.weight"
            if embed_key in present and not _same_bytes(tensors, "lm_head.weight", embed_key):
                raise ConvertError(f"{src}: tie_word_embeddings is true but lm_head.weight differs from {embed_key}")
            log.warning("%s: tied checkpoint stores lm_head.weight (equal to the embedding); dropped, and written "
                        "back as a copy of the embedding", src)
            dropped = True

        sqr_by_hf: dict[str, P.Entry] = {}
        sqr_dims = None
        if any(k.startswith("refine_") for k in keys):
            sqr_by_hf = {e.hf: e for e in P.expand(P.sqr_rules())}
            missing = [k for k in sqr_by_hf if k not in present]
            if missing:
                raise ConvertError(f"{src}: refine_* tensors are incomplete; missing keys: {listing(missing)}")
            p0 = tensors.info("refine_projector.0.weight").shape
            sqr_dims = {"policy_hidden": p0[1] if len(p0) == 2 else -1, "retrieval_dim": p0[0],
                        "embedder_hidden": tensors.info("refine_append_input_projector.1.weight").shape[0]}
            if sqr_dims["policy_hidden"] != cfg.text.hidden_size:
                raise ConvertError(f"{src}: shape mismatch: refine_projector.0.weight expected (D, "
                                   f"{cfg.text.hidden_size}) (policy hidden size), got {p0}")
            shapes.update(_sqr_shapes(sqr_dims))

        known = set(by_hf) | set(sqr_by_hf) | ({"lm_head.weight"} if dropped else set())
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise ConvertError(f"{src}: {len(unknown)} unknown tensor keys (not Qwen3-VL "
                               f"{'Qwen3VLForConditionalGeneration' if prefix else 'Qwen3VLModel'} layout or "
                               f"refine_*): {listing(unknown)}")
        missing = [k for k in by_hf if k not in present]
        if missing:
            raise ConvertError(f"{src}: {len(missing)} tensors missing from the checkpoint: {listing(missing)}")
        bad = []
        for hf, e in list(by_hf.items()) + list(sqr_by_hf.items()):
            want = P.expected_hf_shape(e, shapes[e.ours][0], cfg)
            got = tensors.info(hf).shape
            if tuple(want) != tuple(got):
                bad.append(f"{hf}: expected {tuple(want)}, got {tuple(got)}")
        if bad:
            raise ConvertError(f"{src}: shape mismatch: " + "; ".join(bad[:8]) +
                               (f" … and {len(bad) - 8} more" if len(bad) > 8 else ""))

        order = {k: i for i, k in enumerate(keys)}
        entries = sorted(by_hf.values(), key=lambda e: order[e.hf])
        sqr_entries = sorted(sqr_by_hf.values(), key=lambda e: order[e.hf])
        if sqr_entries:
            _check_refine_token(src, cfg)
        skip = {CONFIG_FILE} | set(tensors.file_names) | {INDEX_FILE}
        files = non_weight_files(src, skip)
        embedder = None
        emb_dir = os.path.join(src, EMBEDDER_DIR)
        if os.path.isdir(emb_dir):
            embedder = inspect_hf(emb_dir)
            if sqr_dims and embedder.cfg.text.hidden_size != sqr_dims["embedder_hidden"]:
                raise ConvertError(f"{src}: refine_append_input_projector.1.weight outputs "
                                   f"{sqr_dims['embedder_hidden']} dims but {EMBEDDER_DIR}/ has hidden_size "
                                   f"{embedder.cfg.text.hidden_size}")
        elif sqr_entries:
            log.warning("%s: refine_* tensors but no %s/ folder; converting the policy alone", src, EMBEDDER_DIR)
        return Source(src, cfg, tensors, prefix, entries, sqr_entries, shapes, sqr_dims, dropped, files, embedder)
    except BaseException:
        tensors.close()
        raise


def _same_bytes(tensors: SafetensorsFolder, a: str, b: str) -> bool:
    ia, ib = tensors.info(a), tensors.info(b)
    if ia.shape != ib.shape:
        return False
    x, y = tensors.get(a), tensors.get(b)
    if ia.dtype == ib.dtype:
        return bool(np.array_equal(x.view(np.uint8), y.view(np.uint8)))
    return bool(np.array_equal(x.astype(np.float32), y.astype(np.float32)))


def read_arrays(s: Source, dtype: str | None, quiet: bool) -> tuple[dict, dict]:
    """Assemble our (layer-stacked) arrays tensor by tensor. Returns (model flat, sqr flat) {path: array}."""
    cast = None if dtype is None else ST_DTYPES[CAST_DTYPES[dtype]]
    all_entries = s.entries + s.sqr_entries
    groups: dict[tuple, list[P.Entry]] = defaultdict(list)
    for e in all_entries:
        groups[e.ours].append(e)
    out: dict = {}
    total = sum(s.tensors.info(e.hf).nbytes for e in all_entries)
    with progress(total, os.path.basename(s.src) or s.src, quiet) as bar:
        def tick(e):
            bar.update(s.tensors.info(e.hf).nbytes)

        for path, group in groups.items():
            dt = cast
            if dt is None:
                kinds = {s.tensors.info(e.hf).dtype for e in group}
                # A stacked array mixing dtypes (rare) is widened so the way back can restore each one exactly.
                dt = None if len(kinds) == 1 else np.dtype(np.float64 if "F64" in kinds else np.float32)
            try:
                got = P.assemble(group, s.shapes, s.tensors.get, dtype=dt, on_tensor=tick)
            except ValueError as e:
                raise ConvertError(f"{s.src}: {e}") from None
            out.update(got)
            if got[path].flags.owndata:  # copied (stacked / transposed / cast): the file pages are not needed
                for e in group:
                    s.tensors.release(e.hf)
    model = {k: v for k, v in out.items() if k[0] != "sqr"}
    sqr = {k[1:]: v for k, v in out.items() if k[0] == "sqr"}
    return model, sqr


def source_meta(s: Source, model: dict, sqr: dict) -> dict:
    keys = [e.hf for e in s.entries + s.sqr_entries] + (["lm_head.weight"] if s.dropped_lm_head else [])
    order = {k: i for i, k in enumerate(s.tensors.keys)}
    keys.sort(key=order.__getitem__)
    tensors = [{"key": k, "dtype": s.tensors.info(k).dtype, "shape": list(s.tensors.info(k).shape)} for k in keys]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": s.kind,
        "source": s.src,
        "key_layout": "Qwen3VLForConditionalGeneration" if s.prefix else "Qwen3VLModel",
        "key_prefix": s.prefix,
        "tie_word_embeddings": s.cfg.tie_word_embeddings,
        "dropped_tied_lm_head": s.dropped_lm_head,
        "source_dtypes": sorted({t["dtype"] for t in tensors}),
        "param_dtypes": {"model": dtype_names(model), **({"sqr": dtype_names(sqr)} if sqr else {})},
        "sqr": s.sqr_dims,
        "hf_tensors": tensors,
        "hf_files": s.files,
        "query_embedder": EMBEDDER_DIR if s.embedder is not None else None,
    }


def close_source(s: Source | None) -> None:
    while s is not None:
        s.tensors.close()
        s = s.embedder


def load_hf_folder(src: str, *, dtype: str | None = None, quiet: bool = True) -> Converted:
    """Read an HF folder straight into our layout (in memory, no orbax); the embedder sub-folder too."""
    if dtype is not None and dtype not in CAST_DTYPES:
        raise ConvertError(f"dtype {dtype!r} not supported; choose one of {sorted(CAST_DTYPES)}")
    s = inspect_hf(src)
    try:
        return _load_source(s, dtype, quiet)
    finally:
        close_source(s)


def _load_source(s: Source, dtype: str | None, quiet: bool) -> Converted:
    model, sqr = read_arrays(s, dtype, quiet)
    # Untransposed tensors are still views of the memory-mapped files; give the caller arrays it owns.
    own = lambda flat: {k: v if v.flags.owndata else np.array(v) for k, v in flat.items()}  # noqa: E731
    model, sqr = own(model), own(sqr)
    emb = _load_source(s.embedder, dtype, quiet) if s.embedder is not None else None
    return Converted(cfg=s.cfg, params=nest(model), sqr_params=nest(sqr) if sqr else None,
                     sqr_cfg=sqr_config(s.sqr_dims), embedder=emb, tokenizer_dir=tokenizer_dir(s.src),
                     meta=source_meta(s, model, sqr))
