"""The search agent's inference loop (eval_and_data.md §2; spec README decisions 2, 3, 6, 7, 9):
retrieve the top-1 video -> verify and ground by greedy generation -> if not matched and `<REFINE>` was generated,
roll out 8 latents from the `<REFINE>` hidden state and embed the original query with them spliced in -> retrieve
again -> ... up to `max_turn` turns. Many episodes run together: each turn's prompts are grouped by video grid and
generated in batches through the KV-cache sampler; the latent rollout continues from the sampler's cache.

Writes one detail row per query with the original's fields (EVAL L2629-2666, per-turn dict L3559-3594).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax.eval import metrics
from vsr1_jax.generate.sampler import SamplingParams, Sampler, pack_prompts
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.model import Qwen3VL, RunOptions
from vsr1_jax.processing import prompts as P
from vsr1_jax.processing.chat import embedder_query_ids, encode_prompt
from vsr1_jax.processing.parsing import has_refine, parse_answer_eval, parse_span_eval, sanitize_completion
from vsr1_jax.processing.special_tokens import REFINE_TOKEN, special_ids
from vsr1_jax.processing.video import preprocess_video

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    max_turn: int = 2                 # inference.bash L119
    max_new_tokens: int = 1024        # TCK L157 (EXTERNAL_EVAL_MAX_NEW_TOKENS)
    num_latents: int = 8              # REFINE_TOKEN_COUNT (rollout depth)
    splice_tail: int = 6              # latents go before the last 6 embedder-prompt tokens
    embedder_max_length: int = 128    # QUERY_EMBEDDER_MAX_LENGTH
    instruction: str = P.EMBEDDER_INSTRUCTION
    refine_token: str = REFINE_TOKEN
    outer_vision_tokens: bool = False  # 4.57 / vLLM convention (see processing/chat.py)
    timestamps_mode: str = "index"    # the original's fps=1, indices 0..T-1 convention
    batch_size: int = 16              # episodes generated together (same video grid)
    length_bucket: int = 64           # prompts are left-padded to a multiple of this (few compiled shapes)


@dataclasses.dataclass
class _Episode:
    q: dict                 # the EvalQuery as a record
    qvec: np.ndarray        # current query vector [D]
    orig_rank: int
    turns: list = dataclasses.field(default_factory=list)
    active: bool = True
    stop_reason: str = "max_turn_reached"


def _bucket(n: int, b: int) -> int:
    return -(-n // b) * b


class SearchAgent:
    """policy + SQR head + query embedder + retriever + a video source, run over many queries at once.

    retriever: an object with `topk(q [B, D], k) -> (scores, rows)` and `rank(q, gt_rows) -> [B]` (see
      `vsr1_jax.retrieval.topk`), and `id_map` (row -> doc id).
    video_source: doc_id -> (frames uint8 [T, H, W, 3], meta row dict or None); raises FileNotFoundError when the
      npy is missing.
    """

    def __init__(self, policy: Qwen3VL, head: S.SQRHead, embedder: Qwen3VL, tokenizer, embed_tokenizer, retriever,
                 video_source: Callable, video_cfg, cfg: EpisodeConfig = EpisodeConfig(),
                 opts: RunOptions = RunOptions()):
        self.cfg, self.opts, self.video_cfg = cfg, opts, video_cfg
        self.tok, self.etok = tokenizer, embed_tokenizer
        self.retriever, self.video_source = retriever, video_source
        self.sampler = Sampler(policy, opts)
        self.ids = special_ids(tokenizer, cfg.refine_token)
        if self.ids.refine is None:
            raise ValueError(f"the policy tokenizer has no {cfg.refine_token} token; load it with "
                             "processing.tokenizer.load_tokenizer(path, add_refine=True)")
        self.policy_cfg = policy.cfg
        self.id_map = list(retriever.id_map)
        self.row_of = {d: i for i, d in enumerate(self.id_map)}
        self.sp = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=0.0, eos_ids=tuple(self.ids.eos_ids),
                                 pad_id=self.ids.pad)
        pol_gd, _ = nnx.split(policy)
        head_gd, self._head_state = nnx.split(head)
        emb_gd, self._emb_state = nnx.split(embedder)
        n = cfg.num_latents

        def rollout(pol_state, head_state, cache, h, slot, pos):
            # returns the cache too, so the donated cache is updated in place rather than copied
            return S.rollout_cached(nnx.merge(pol_gd, pol_state), nnx.merge(head_gd, head_state), cache, h, slot,
                                    pos, opts=opts, num_latents=n)

        def qfinal(emb_state, head_state, Z, ids, is_lat, lat_idx, mask):
            return S.q_final(nnx.merge(emb_gd, emb_state), nnx.merge(head_gd, head_state), Z, ids, is_lat, lat_idx,
                             mask, opts=opts)

        self._rollout = jax.jit(rollout, donate_argnames=("cache",))  # the generation's cache is not read again
        self._qfinal = jax.jit(qfinal)
        self.stats = {"video_file_missing": 0, "generate_s": 0.0, "refine_s": 0.0}

    # ---- per turn ------------------------------------------------------------------------------------------------
    def _prompt(self, ep: _Episode, doc_id: str):
        frames, meta = self.video_source(doc_id)
        vin = preprocess_video(frames, self.video_cfg, self.cfg.timestamps_mode, meta)
        msgs = P.build_eval_messages(ep.q["query"], refine_token=self.cfg.refine_token)
        ids = encode_prompt(self.tok, msgs, video_grid_thw=[vin.grid_thw], timestamps=[vin.timestamps],
                            outer_vision_tokens=self.cfg.outer_vision_tokens)
        return list(map(int, ids)), vin

    def _refine(self, gen, rows: Sequence[int], queries: Sequence[str]):
        """Latent rollout for the chosen rows of one generation batch, then q_final. -> (Z [n, N, D], q [n, D])."""
        rows = np.asarray(rows)
        Z, _ = self._rollout(self.sampler.state, self._head_state, gen.cache, gen.capture_hidden, gen.capture_slot,
                             gen.capture_pos)
        Z = Z[rows]
        toks = [list(map(int, embedder_query_ids(self.etok, q, self.cfg.instruction, self.cfg.embedder_max_length)))
                for q in queries]
        ids, is_lat, lat_idx, mask = S.splice_layout(toks, self.cfg.num_latents, self.cfg.splice_tail,
                                                     pad_id=self.ids.pad)
        L = _bucket(ids.shape[1], 32)
        padw = ((0, 0), (0, L - ids.shape[1]))
        q = self._qfinal(self._emb_state, self._head_state, Z, jnp.asarray(np.pad(ids, padw)),
                         jnp.asarray(np.pad(is_lat, padw)), jnp.asarray(np.pad(lat_idx, padw)),
                         jnp.asarray(np.pad(mask, padw)))
        return np.asarray(Z), np.asarray(q, np.float32)

    def _run_turn(self, eps: list[_Episode], turn: int):
        cfg = self.cfg
        Q = np.stack([e.qvec for e in eps])
        _, top = self.retriever.topk(jnp.asarray(Q), 1)
        top = np.asarray(top)[:, 0]
        gt_rows = np.asarray([self.row_of[e.q["gt_doc_id"]] for e in eps])
        ranks = np.asarray(self.retriever.rank(jnp.asarray(Q), jnp.asarray(gt_rows)))
        work = []
        for e, t, r in zip(eps, top, ranks):
            doc = self.id_map[int(t)]
            try:
                ids, vin = self._prompt(e, doc)
            except FileNotFoundError as err:  # the original skips such queries (EVAL L3283-3290)
                log.warning("query %s: %s", e.q["qid"], err)
                self.stats["video_file_missing"] += 1
                e.active, e.stop_reason = False, "video_file_missing"
                continue
            work.append((e, doc, int(r), ids, vin))
        # group by video grid so one compiled prefill serves a batch
        groups: dict = {}
        for w in work:
            groups.setdefault(tuple(w[4].grid_thw), []).append(w)
        for grid, items in groups.items():
            for s in range(0, len(items), cfg.batch_size):
                self._generate_batch(items[s:s + cfg.batch_size], turn)

    def _generate_batch(self, items, turn: int):
        cfg = self.cfg
        seqs = [w[3] for w in items]
        length = _bucket(max(map(len, seqs)), cfg.length_bucket)
        p = pack_prompts(seqs, cfg=self.policy_cfg, pad_id=self.ids.pad, length=length,
                         video_pixels=np.concatenate([w[4].pixel_rows for w in items]),
                         video_grids=[tuple(w[4].grid_thw) for w in items])
        t0 = time.perf_counter()
        gen = self.sampler.generate(p, self.sp, capture_id=self.ids.refine, extra_slots=cfg.num_latents)
        toks, lens = np.asarray(gen.tokens), np.asarray(gen.lengths)
        self.stats["generate_s"] += time.perf_counter() - t0
        need, infos = [], []
        for b, (e, doc, rank, _, _) in enumerate(items):
            out_ids = toks[b, :lens[b]]
            text = sanitize_completion(self.tok.decode(out_ids, skip_special_tokens=False))
            answer = parse_answer_eval(text)
            span = parse_span_eval(text, e.q.get("duration"))
            top1_is_gt = doc == e.q["gt_doc_id"]
            iou_raw, iou_r1 = metrics.turn_ious((e.q["gt_start"], e.q["gt_end"]), span, answer, top1_is_gt)
            has_ref = bool(has_refine(out_ids, self.ids.refine, 0))
            info = dict(turn=turn, rank=rank, rank_before_refine=rank, policy_rank=rank, top1_doc_id=doc,
                        top1_is_gt=top1_is_gt, policy_top1_doc_id=doc, policy_top1_is_gt=top1_is_gt, answer=answer,
                        time_parse_ok=span is not None, pred_start=None if span is None else span[0],
                        pred_end=None if span is None else span[1], iou_raw=iou_raw, iou_r1=iou_r1,
                        refine_token_generated=has_ref, refine_applied=False, qfinal_mode="embedder_splice",
                        rollout_depth_config=cfg.num_latents, rollout_depth_actual=0, raw_output=text,
                        generated_tokens=int(lens[b]))
            e.turns.append(info)
            infos.append(info)
            if answer == "matched":
                e.active, e.stop_reason = False, "matched"
            elif not has_ref:
                e.active, e.stop_reason = False, f"{answer}_no_refine_token"
            else:
                need.append(b)
        if need:
            t0 = time.perf_counter()
            Z, qn = self._refine(gen, need, [items[b][0].q["query"] for b in need])
            _, top = self.retriever.topk(jnp.asarray(qn), 1)
            gt_rows = np.asarray([self.row_of[items[b][0].q["gt_doc_id"]] for b in need])
            prank = np.asarray(self.retriever.rank(jnp.asarray(qn), jnp.asarray(gt_rows)))
            self.stats["refine_s"] += time.perf_counter() - t0
            for j, b in enumerate(need):
                e, info = items[b][0], infos[b]
                doc = self.id_map[int(np.asarray(top)[j, 0])]
                norms = np.linalg.norm(Z[j], axis=-1)
                cos_prev = [float(Z[j, k] @ Z[j, k - 1] / max(norms[k] * norms[k - 1], 1e-12))
                            for k in range(1, len(Z[j]))]
                info.update(policy_rank=int(prank[j]), policy_top1_doc_id=doc,
                            policy_top1_is_gt=doc == e.q["gt_doc_id"], refine_applied=True,
                            rollout_depth_actual=int(Z.shape[1]), rollout_shape=list(Z[j].shape),
                            rollout_latent_norms=[float(x) for x in norms], rollout_latent_cos_prev=cos_prev,
                            rollout_latent_head=[float(x) for x in Z[j, 0, :6]], latent_injected_to_llm=True)
                e.qvec = qn[j]  # not cumulative: the next refinement starts again from the original text
                if info["turn"] >= self.cfg.max_turn:
                    e.active, e.stop_reason = False, "max_turn_reached_with_refine"
                else:
                    e.stop_reason = "continue_refine"

    # ---- public --------------------------------------------------------------------------------------------------
    def run(self, queries: Sequence, qvecs: np.ndarray, progress: Callable[[int], None] | None = None):
        """progress(n) is called with the number of episodes that finished.

        queries: EvalQuery-like records (`index, qid, query, gt_doc_id, gt_start, gt_end, duration`); qvecs [N, D]
        their stored (original) query vectors. Returns the detail rows (one per query with at least one turn)."""
        eps = []
        recs = [q.to_record() if hasattr(q, "to_record") else dict(q) for q in queries]
        orig = np.asarray(self.retriever.rank(jnp.asarray(qvecs),
                                              jnp.asarray([self.row_of[r["gt_doc_id"]] for r in recs])))
        for r, v, o in zip(recs, qvecs, orig):
            eps.append(_Episode(q=r, qvec=np.asarray(v, np.float32), orig_rank=int(o)))
        for turn in range(1, self.cfg.max_turn + 1):
            act = [e for e in eps if e.active]
            if not act:
                break
            for s in range(0, len(act), max(self.cfg.batch_size * 4, 1)):
                chunk = act[s:s + self.cfg.batch_size * 4]
                self._run_turn(chunk, turn)
                if progress is not None:  # count finished episodes (all are finished after the last turn)
                    progress(sum(1 for e in chunk if not e.active or turn == self.cfg.max_turn))
        return [self._row(e) for e in eps if e.turns]

    def _row(self, e: _Episode) -> dict:
        keys = ("rank", "rank_before_refine", "top1_doc_id", "top1_is_gt", "policy_top1_doc_id", "policy_top1_is_gt",
                "answer", "time_parse_ok", "pred_start", "pred_end", "iou_raw", "iou_r1")
        first, last = e.turns[0], e.turns[-1]
        row = dict(index=e.q["index"], qid=e.q["qid"], query=e.q["query"], gt_pos_doc_id=e.q["gt_doc_id"],
                   gt_start=e.q["gt_start"], gt_end=e.q["gt_end"], orig_rank=e.orig_rank)
        row.update({f"turn1_{k}": first[k] for k in keys})
        row["turn1_rank"] = first["policy_rank"]
        row.update({f"final_{k}": last[k] for k in keys})
        # The original's final values come from the last executed turn, after its refinement if one ran (§1.2).
        row.update(final_rank=last["policy_rank"], final_top1_is_gt=last["policy_top1_is_gt"])
        matched = [t["turn"] for t in e.turns if t["answer"] == "matched"]
        row.update(matched_turn=matched[0] if matched else 0, stop_turn=last["turn"], stop_reason=e.stop_reason,
                   used_refine_any=any(t["refine_applied"] for t in e.turns),
                   refine_token_generated_turns=[t["turn"] for t in e.turns if t["refine_token_generated"]],
                   refine_applied_turns=[t["turn"] for t in e.turns if t["refine_applied"]],
                   max_turn=self.cfg.max_turn, turns=e.turns)
        return row
