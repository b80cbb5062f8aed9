"""Stage-1 SFT's host side (sqr_and_sft.md §2.4, §6): `SFTExamples` turns an item of train_oneturn.json into token
ids, labels, M-RoPE positions, the <REFINE> index, the video's patches and the query-embedder ids; `SFTCollate` pads
one optimizer step's examples into bucketed [A, B, ...] arrays, so the step compiles once per bucket combination.
numpy only; the loss and the jitted step that take these batches are in train/sft.py. (It lives in train/, not
data/, because the positions and the vision packing are the model's: data/ may not import model code.)"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from vsr1_jax.data.files import load_npy_video
from vsr1_jax.buckets import BucketOverflowError, bucket_length, round_up
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.rope import get_rope_index
from vsr1_jax.models.qwen3_vl.vision import VisionBatch, VisionBuckets, pack_vision
from vsr1_jax.processing import chat
from vsr1_jax.processing import prompts as P
from vsr1_jax.processing.special_tokens import REFINE_TOKEN, special_ids
from vsr1_jax.processing.video import preprocess_video


# ---- host: one example -------------------------------------------------------------------------------------------
class SkipExample(ValueError):
    """A training item that cannot be used; the message names the item and the fix."""


@dataclasses.dataclass
class SFTExamples:
    """record (data.queries.sft_records) -> example dict of numpy arrays. Picklable (grain workers)."""
    tokenizer: Any
    embed_tokenizer: Any
    policy_cfg: Any                        # Qwen3VLConfig (token ids, merge size)
    video_cfg: Any                         # configs/_video.py `sft`
    video_meta: Mapping | None = None      # data.files.VideoMeta of train/video_npy_with_meta (timestamps "meta")
    timestamps_mode: str = "index"
    outer_vision_tokens: bool = False
    instruction: str = P.EMBEDDER_INSTRUCTION
    embedder_max_length: int = P.EMBEDDER_MAX_LENGTH
    refine_token: str = REFINE_TOKEN

    def __post_init__(self):
        self.ids = special_ids(self.tokenizer, self.refine_token)

    def _messages(self, rec) -> list:
        msgs = []
        for m in rec["messages"]:
            content = m["content"]
            if m["role"] == "user" and isinstance(content, str):
                content = P.split_video_markers(content)
            msgs.append({"role": m["role"], "content": content})
        return msgs

    def __call__(self, rec: Mapping) -> dict:
        where = f"train_oneturn.json item {rec.get('index')} (qid {rec.get('qid')!r})"
        try:   # a record may carry its frames (Stage 0c renders them per batch) instead of an npy path
            frames = rec["frames"] if "frames" in rec else load_npy_video(rec["video_path"])
        except (FileNotFoundError, ValueError) as e:
            return {"skip": "video_unreadable", "skip_detail": f"{where}: {e}", **_ids_of(rec)}
        meta = None if self.video_meta is None else self.video_meta.get(rec["video_id"])
        vin = preprocess_video(frames, self.video_cfg, self.timestamps_mode, meta)
        enc = chat.encode_chat(self.tokenizer, self._messages(rec), video_grid_thw=[vin.grid_thw],
                               timestamps=[vin.timestamps], outer_vision_tokens=self.outer_vision_tokens,
                               ids=self.ids)
        ids, loss_mask = enc.input_ids.astype(np.int32), enc.loss_mask
        if not loss_mask.any():
            return {"skip": "no_assistant_turn", "skip_detail": f"{where}: no assistant tokens; the item must end "
                                                               "with an assistant message", **_ids_of(rec)}
        refine = np.flatnonzero(ids == self.ids.refine)
        pos, _ = get_rope_index(ids[None], image_token_id=self.policy_cfg.image_token_id,
                                video_token_id=self.policy_cfg.video_token_id,
                                spatial_merge_size=self.policy_cfg.vision.spatial_merge_size,
                                video_grid_thw=[vin.grid_thw], attention_mask=np.ones((1, len(ids)), np.int32))
        emb_ids = chat.embedder_query_ids(self.embed_tokenizer, rec["query"], self.instruction,
                                          self.embedder_max_length)
        return dict(input_ids=ids, loss_mask=loss_mask, positions=pos[:, 0].astype(np.int32),
                    refine_index=int(refine[-1]) if refine.size else -1, pixel_rows=vin.pixel_rows,
                    grid=tuple(vin.grid_thw), emb_ids=np.asarray(emb_ids, np.int32), **_ids_of(rec))


def _ids_of(rec) -> dict:
    return dict(index=int(rec.get("index", -1)), qid=str(rec["qid"]), query=str(rec["query"]),
                pos_video_id=str(rec["pos_video_id"]), video_id=str(rec["video_id"]))


# ---- host: batches -----------------------------------------------------------------------------------------------
def _bucket(lengths, buckets, rows, field: str, what: str) -> int:
    """The bucket of the longest row, or an error naming the row, the config field and the fix."""
    i = int(np.argmax(lengths))
    try:
        return bucket_length(lengths[i], buckets)
    except BucketOverflowError:
        raise BucketOverflowError(f"train_oneturn.json item {rows[i]['index']} (qid {rows[i]['qid']!r}) has "
                                  f"{lengths[i]} {what}, more than the largest bucket of {field} {tuple(buckets)}; "
                                  "add a larger bucket") from None


@dataclasses.dataclass
class SFTCollate:
    """Examples of one optimizer step (A micro-batches x B rows, in order) -> host batch dict with a leading [A, B]
    shape on every array, padded to buckets so the step compiles once per bucket combination:
    - tokens: right-padded to the smallest `buckets` length;
    - the LM loss positions (assistant tokens) to the smallest `label_buckets` count;
    - videos (one per row) into a `VisionBatch` per micro-batch with common group / patch buckets;
    - the refined-query embedder prompt to a fixed length (embedder_max_length + latents, rounded up to 32).
    Unusable examples (`skip`) are replaced by a copy of a usable row with `row_valid` False, and counted.
    Python-side fields (qid, pos/retrieved ids) come back as [A][B] lists. Picklable (grain workers)."""
    policy_cfg: Any
    pad_id: int
    accumulation: int
    buckets: tuple[int, ...]
    label_buckets: tuple[int, ...]
    group_buckets: tuple[int, ...] | None
    patch_buckets: tuple[int, ...] | None
    num_latents: int = 8
    splice_tail: int = 6
    embedder_max_length: int = P.EMBEDDER_MAX_LENGTH

    @staticmethod
    def sizes(examples: Sequence[dict]) -> tuple[int, int, int, int]:
        """The unpadded maxima that pick this batch's buckets: (tokens, assistant tokens, frame groups, patches per
        group). Multi-host runs take the maximum over the processes and pass it as `min_sizes`, so every process
        pads its rows to the same buckets."""
        good = [e for e in examples if "skip" not in e]
        if not good:
            return (0, 0, 0, 0)
        return (max(len(e["input_ids"]) for e in good),
                max(max(int(np.count_nonzero(e["loss_mask"][1:])), 1) for e in good),
                max(int(e["grid"][0]) for e in good), max(int(e["grid"][1] * e["grid"][2]) for e in good))

    def __call__(self, examples: Sequence[dict], min_sizes: Sequence[int] | None = None) -> dict:
        """min_sizes: (tokens, assistant tokens, frame groups, patches) that the buckets must hold besides these
        rows (see `sizes`)."""
        examples = list(examples)
        A = self.accumulation
        m_tok, m_lab, m_grp, m_hw = (int(x) for x in ((0, 0, 0, 0) if min_sizes is None else min_sizes))
        if len(examples) % A:
            raise ValueError(f"{len(examples)} examples do not split into {A} micro-batches")
        good = [e for e in examples if "skip" not in e]
        skips = [e for e in examples if "skip" in e]
        if not good:
            raise SkipExample("every example of this step is unusable: " + "; ".join(e["skip_detail"] for e in skips))
        rows = [e if "skip" not in e else good[0] for e in examples]
        valid = np.asarray(["skip" not in e for e in examples])
        n = len(rows)
        label_pos = [np.flatnonzero(e["loss_mask"][1:]) + 1 for e in rows]   # HF shifts the labels by one
        T = _bucket([len(e["input_ids"]) for e in rows], self.buckets, rows, "config.sft.buckets", "tokens")
        La = _bucket([max(len(p), 1) for p in label_pos], self.label_buckets, rows, "config.sft.label_buckets",
                     "assistant tokens")
        T, La = max(T, bucket_length(m_tok, self.buckets)), max(La, bucket_length(m_lab, self.label_buckets))
        ids = np.full((n, T), self.pad_id, np.int32)
        mask = np.zeros((n, T), np.int32)
        pos = np.zeros((3, n, T), np.int32)
        lsrc = np.zeros((n, La), np.int32)
        lids = np.zeros((n, La), np.int32)
        lmask = np.zeros((n, La), bool)
        for i, (e, lp) in enumerate(zip(rows, label_pos)):
            L = len(e["input_ids"])
            ids[i, :L], mask[i, :L], pos[:, i, :L] = e["input_ids"], 1, e["positions"]
            lsrc[i, :len(lp)], lids[i, :len(lp)], lmask[i, :len(lp)] = lp - 1, e["input_ids"][lp], True
        refine = np.asarray([e["refine_index"] for e in rows], np.int32)
        emb_len = round_up(self.embedder_max_length + self.num_latents, 32)
        e_ids, e_lat, e_idx, e_mask = S.splice_layout([list(e["emb_ids"]) for e in rows], self.num_latents,
                                                       self.splice_tail, pad_id=self.pad_id)
        padw = ((0, 0), (0, emb_len - e_ids.shape[1]))
        e_ids, e_lat, e_idx, e_mask = (np.pad(a, padw) for a in (e_ids, e_lat, e_idx, e_mask))
        vcfg = self.policy_cfg.vision
        grids = [e["grid"] for e in rows]
        G = bucket_length(max([g[0] for g in grids] + [m_grp]), self.group_buckets) if self.group_buckets else max(
            [g[0] for g in grids] + [m_grp])
        HW = bucket_length(max([g[1] * g[2] for g in grids] + [m_hw]), self.patch_buckets) if self.patch_buckets \
            else max([g[1] * g[2] for g in grids] + [m_hw])
        B = n // A
        vb = VisionBuckets(items=(B,), groups=(G,), patches=(HW,))
        visions = [pack_vision([(e["pixel_rows"], e["grid"]) for e in rows[a * B:(a + 1) * B]], vcfg, vb,
                               input_ids=ids[a * B:(a + 1) * B], placeholder_ids=self.policy_cfg.video_token_id)
                   for a in range(A)]
        vision = VisionBatch(*(np.stack(parts) for parts in zip(*visions)))
        split = lambda x, axis=0: np.stack(np.split(x, A, axis=axis), axis=axis)  # noqa: E731 [.., n, ..] -> [A, ..]
        out = dict(input_ids=split(ids), attention_mask=split(mask), positions=np.moveaxis(split(pos, 1), 1, 0),
                   label_src=split(lsrc), label_ids=split(lids), label_mask=split(lmask), refine_index=split(refine),
                   has_refine=split(refine >= 0), emb_ids=split(e_ids), emb_is_latent=split(e_lat),
                   emb_latent_index=split(e_idx), emb_mask=split(e_mask), row_valid=split(valid), vision=vision)
        for key in ("qid", "query", "pos_video_id", "video_id", "index"):
            vals = [e[key] for e in rows]
            out[key] = [vals[a * B:(a + 1) * B] for a in range(A)]
        out["skipped"] = [e["skip_detail"] for e in skips]
        out["skip_reasons"] = [e["skip"] for e in skips]
        return out
