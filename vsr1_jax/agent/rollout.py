"""The episode engine: retrieve the top-1 video -> verify and ground it by generation -> if the policy wrote
`<REFINE>` (and did not accept the video), roll out the SQR latents from its hidden state and embed the original
query with them spliced in -> retrieve again -> ... up to `max_turn` turns (eval_and_data.md §2; spec README
decisions 2, 3, 5, 9). Many episodes run together; the result is one typed `Trajectory` per (query, sample).

One implementation serves both users:
- evaluation: greedy, one sample per query, the eval prompt; `agent/detail_rows.py` turns trajectories into the
  original's detail rows;
- GRPO rollouts: temperature-1 sampling, G samples per prompt (one prefill broadcast to G), the GRPO prompt, the
  sampled ids and their log-probs kept for scoring, q_final for every row that wrote `<REFINE>` (the retrieval
  reward), turn 1 optionally on a given (pre-computed) video instead of a retrieval.

Batching: each turn's prompts are grouped by video grid and generated `batch_size` rows at a time through the
KV-cache sampler; the latent rollout continues from the sampler's cache (`refine_latents`), and the refined query
comes from the frozen embedder (`refined_query`). Both are module-level jitted pure functions.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vsr1_jax.buckets import round_up
from vsr1_jax.generate.sampler import Generation, SamplingParams, Sampler, pack_prompts
from vsr1_jax.models import sqr as S
from vsr1_jax.models.qwen3_vl.model import Qwen3VL
from vsr1_jax.models.qwen3_vl.run_options import RunOptions
from vsr1_jax.models.qwen3_vl.vision import VisionBuckets
from vsr1_jax.processing import chat, parsing
from vsr1_jax.processing import prompts as P
from vsr1_jax.processing.special_tokens import REFINE_TOKEN, special_ids
from vsr1_jax.processing.video import VideoInputs, preprocess_video

log = logging.getLogger(__name__)

PROMPT_STYLES = ("eval", "grpo")

# config.eval fields that document the original's setting and have no other implementation here (the refine gate
# is unused, the refined query always goes through the embedder splice, pooled at the last latent and normalised,
# turn 1 uses the stored query vector, every turn grounds, retrieval is over the whole corpus).
SUPPORTED_ONLY = {"use_refine_gate": False, "use_query_embedder_path": True, "qfinal_pooling": "latent_last",
                  "qfinal_normalize": True, "use_updated_query": False, "temporal": True, "rerank_topk": "all",
                  "repetition_penalty": 1.0}


def check_supported(section, name: str, supported: dict = SUPPORTED_ONLY) -> None:
    """Raise a ValueError naming `config.<name>.<field>` when a documented field holds another value."""
    for field, value in supported.items():
        if field in section and section[field] != value:
            raise ValueError(f"config.{name}.{field}={section[field]!r} is not supported: only {value!r} (the "
                             "original's shipped setting) is implemented")


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    max_turn: int = 2                 # inference.bash L119 (MAX_TURN=2); GRPO trains one turn (grpo.md §0)
    max_new_tokens: int = 1024        # TCK L157 (EXTERNAL_EVAL_MAX_NEW_TOKENS); GRPO: 768
    num_latents: int = 8              # REFINE_TOKEN_COUNT (rollout depth)
    splice_tail: int = 6              # latents go before the last 6 embedder-prompt tokens
    embedder_max_length: int = 128    # QUERY_EMBEDDER_MAX_LENGTH
    instruction: str = P.EMBEDDER_INSTRUCTION
    refine_token: str = REFINE_TOKEN
    outer_vision_tokens: bool = False  # transformers 4.57 / vLLM layout (processing/chat.py)
    timestamps_mode: str = "index"    # the original's fps=1, indices 0..T-1 convention
    batch_size: int = 16              # rows generated together (same video grid)
    max_prompt_length: int = 20384    # MODEL_MAX_LENGTH: a longer prompt skips the query (`prompt_too_long`)
    prompt_limit_field: str = "eval.model_max_length"   # the config field of max_prompt_length (messages)
    length_bucket: int = 64           # prompts are padded to a multiple of this (few compiled shapes)
    # "eval": [system, user('Query: "q"\nRetrieved video: <video>')] (EVAL L934-966);
    # "grpo": [system, user(q), user('<information>\nRetrieved video: <video>\n</information>')] (grpo.md §1.1).
    prompt_style: str = "eval"
    # Evaluation refines only rows that did not accept the video; GRPO's retrieval reward needs q_final of every
    # row that wrote <REFINE> (grpo.md §4 r_query_refine_quality), matched ones included.
    refine_matched: bool = False
    # pad each generation batch's videos to these sizes (models.qwen3_vl.vision.VisionBuckets): the prefill then
    # compiles once per bucket instead of once per video grid; None = exact grids (evaluation)
    vision_buckets: VisionBuckets | None = None

    def __post_init__(self):
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style={self.prompt_style!r}: expected one of {PROMPT_STYLES}")
        if self.max_turn < 1:
            raise ValueError(f"max_turn must be >= 1, got {self.max_turn}")

    @classmethod
    def from_config(cls, config, mode: str = "eval") -> "EpisodeConfig":
        """The episode settings of `config` for evaluation (`config.eval`) or GRPO rollouts (`config.grpo`)."""
        check_supported(config.eval, "eval")
        common = dict(embedder_max_length=config.eval.query_embedder_max_length,
                      instruction=config.eval.query_embedder_input_prefix, refine_token=config.eval.refine_token,
                      outer_vision_tokens=config.prompts.outer_vision_tokens,
                      timestamps_mode=config.video.timestamps_mode, length_bucket=config.agent.length_bucket)
        if mode == "eval":
            # the demo's SQR-only figure: the refined query of accepted rows too (computed and searched, the episode
            # unchanged; detail rows carry it as sqr_probe_rank)
            probe = bool(config.demo.enabled and config.demo.get("sqr_probe", False))
            return cls(max_turn=config.eval.max_turn, max_new_tokens=config.eval.max_new_tokens,
                       num_latents=config.eval.refine_token_count,
                       max_prompt_length=config.eval.model_max_length, prompt_limit_field="eval.model_max_length",
                       batch_size=config.agent.batch_size, prompt_style="eval", refine_matched=probe, **common)
        if mode == "grpo":
            g = config.grpo
            # the GRPO prompt limit (grpo.md §3.1): a longer prompt would not fit the scoring batch's buckets
            return cls(max_turn=g.max_turns, max_new_tokens=g.max_completion_length, num_latents=g.refine_token_count,
                       max_prompt_length=g.max_prompt_length, prompt_limit_field="grpo.max_prompt_length",
                       batch_size=g.rollout_batch_size, prompt_style="grpo", refine_matched=True,
                       vision_buckets=VisionBuckets(items=None, groups=tuple(g.vision_group_buckets),
                                                    patches=tuple(g.vision_patch_buckets)), **common)
        raise ValueError(f"mode={mode!r}: expected 'eval' or 'grpo'")


@dataclasses.dataclass
class Turn:
    """One verify/ground generation of one sample, and the refinement that followed it (if any)."""
    turn: int                          # 1-based
    doc_id: str                        # the video the policy saw
    rank: int                          # GT rank under the query vector that retrieved doc_id (-1: not retrieved)
    prompt_ids: np.ndarray             # [P] int32, unpadded, ends with `<|im_start|>assistant\n`
    video: VideoInputs                 # the video's patch rows, grid and timestamps
    sampled_ids: np.ndarray            # [n] int32, the stop token included when one was sampled
    logprobs: np.ndarray               # [n] float32 under the sampling distribution (temperature-scaled)
    text: str                          # the sanitized completion (TR:144-166)
    answer: str                        # evaluation parse: "matched" | "not_matched" | "unknown"
    span: tuple[float, float] | None   # evaluation parse of <start>/<end> (clamped to the duration)
    has_refine: bool                   # <REFINE> among the sampled ids
    stop_token: int | None = None      # the stop id that ended the completion, None when cut at max_new_tokens
    latents: np.ndarray | None = None  # [N, D] SQR latents z1..zN
    q_next: np.ndarray | None = None   # [D] refined query (unit norm)
    next_doc_id: str | None = None     # top-1 of q_next over the corpus (None without a retriever)
    next_rank: int | None = None       # GT rank under q_next

    @property
    def refined(self) -> bool:
        return self.latents is not None

    @property
    def truncated(self) -> bool:
        """Stopped by the token limit, not by a stop token."""
        return self.stop_token is None


@dataclasses.dataclass
class Trajectory:
    """One episode: a query (record with index, qid, query, gt_doc_id, gt_start, gt_end, duration) and sample g of
    its group."""
    query: dict
    sample: int
    qvec: np.ndarray                   # current query vector [D] (the stored original at the start)
    orig_rank: int                     # GT rank under the original query (-1 without a retriever)
    turns: list[Turn] = dataclasses.field(default_factory=list)
    active: bool = True
    stop_reason: str = "max_turn_reached"


# ---- the SQR calls (module-level, jitted; graphdefs and options are static) -------------------------------------
@functools.partial(jax.jit, static_argnames=("graphdefs", "opts", "num_latents"), donate_argnames=("cache",))
def refine_latents(graphdefs, policy_params, head_params, cache, h_refine, refine_slot, refine_pos, *,
                   opts: RunOptions, num_latents: int):
    """SQR latent rollout from a generation's KV cache (`models.sqr.rollout_cached`) -> (Z [B, N, D], cache).
    The cache is donated and returned, so it is updated in place rather than copied."""
    policy_gd, head_gd = graphdefs
    return S.rollout_cached(nnx.merge(policy_gd, policy_params), nnx.merge(head_gd, head_params), cache, h_refine,
                            refine_slot, refine_pos, opts=opts, num_latents=num_latents)


@functools.partial(jax.jit, static_argnames=("graphdefs", "opts"))
def refined_query(graphdefs, embedder_params, head_params, Z, ids, is_latent, latent_index, mask, *,
                  opts: RunOptions):
    """q_final [B, D] from the frozen embedder with append_input(Z) spliced into the query prompt
    (`models.sqr.q_final`; layout from `models.sqr.splice_layout`)."""
    emb_gd, head_gd = graphdefs
    return S.q_final(nnx.merge(emb_gd, embedder_params), nnx.merge(head_gd, head_params), Z, ids, is_latent,
                     latent_index, mask, opts=opts)


class EpisodeEngine:
    """policy + SQR head + query embedder + a video source (+ a retriever) run over many queries at once.

    retriever: `topk(q [B, D], k) -> (scores, rows)`, `rank(q, gt_rows) -> [B]` and `id_map` (row -> doc id), see
      `vsr1_jax.retrieval.topk`. Without one, only single-turn episodes on given videos run (`first_docs`), and
      refined queries are computed but not searched.
    video_source: doc_id -> (frames uint8 [T, H, W, 3], meta row dict or None); raises FileNotFoundError when the
      npy is missing.
    video_cfg: the phase's pixel limits (configs/_video.py: `eval` or `grpo`).
    mesh: where the policy weights that generate live (default: the policy's, `sharding.mesh_of`); every device of
      it holds the whole generation batch (`Sampler(split_batch=False)`: batches of any size).
    """

    def __init__(self, policy: Qwen3VL, head: S.SQRHead, embedder: Qwen3VL, tokenizer, embed_tokenizer,
                 video_source: Callable, video_cfg, cfg: EpisodeConfig = EpisodeConfig(),
                 opts: RunOptions = RunOptions(), *, retriever=None, mesh=None):
        self.cfg, self.opts, self.video_cfg = cfg, opts, video_cfg
        self.tok, self.etok = tokenizer, embed_tokenizer
        self.retriever, self.video_source = retriever, video_source
        self.sampler = Sampler(policy, opts, mesh, split_batch=False)   # decodes with opts.decode_loop
        self.ids = special_ids(tokenizer, cfg.refine_token)
        if self.ids.refine is None:
            raise ValueError(f"the policy tokenizer has no {cfg.refine_token} token; load it with "
                             "processing.tokenizer.load_tokenizer(path, add_refine=True)")
        self.policy_cfg = policy.cfg
        self.head_graphdef, self.head_params = nnx.split(head)
        self.embedder_graphdef, self.embedder_params = nnx.split(embedder)
        self.id_map = list(retriever.id_map) if retriever is not None else []
        self.row_of = {d: i for i, d in enumerate(self.id_map)}
        self.stats = {"video_file_missing": 0, "prompt_too_long": 0, "generate_s": 0.0, "refine_s": 0.0,
                      "generated_tokens": 0}

    def sampling_params(self, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0) -> SamplingParams:
        """Greedy (evaluation, temperature 0) or categorical sampling at `temperature` (GRPO: 1.0, no top-p/top-k;
        top_k <= 0 = off), stopping per row on `<|im_end|>` / `<|endoftext|>`."""
        return SamplingParams(max_new_tokens=self.cfg.max_new_tokens, temperature=temperature, top_p=top_p,
                              top_k=max(int(top_k), 0), eos_ids=tuple(self.ids.eos_ids), pad_id=self.ids.pad)

    # ---- public ------------------------------------------------------------------------------------------------
    def run(self, queries: Sequence, qvecs: np.ndarray, sp: SamplingParams | None = None, *, key=None,
            group: int = 1, first_docs: Sequence[str] | None = None, params=None,
            progress: Callable[[int], None] | None = None, query_keys=None) -> list[Trajectory]:
        """Run every episode to its end; returns the trajectories, `group` consecutive ones per query.

        queries: records (or objects with `to_record()`) with index, qid, query, gt_doc_id, gt_start, gt_end,
          duration; qvecs [N, D] their stored (original) query vectors.
        sp: sampling (default greedy); key: a jax PRNG key for sampling (each generation batch folds in a counter);
        query_keys: instead of `key`, one typed key per query: sample g of turn t draws from fold_in(key, t, g)
          alone, so its tokens do not depend on which other queries run, in which batch or on which process;
        first_docs: turn 1 shows these videos instead of the retriever's top-1 (GRPO's pre-computed top-1);
        params: the policy weights to generate with (default: the sampler's current ones).
        progress(n) is called with the number of episodes that finished.
        """
        cfg = self.cfg
        sp = self.sampling_params() if sp is None else sp
        if first_docs is None and self.retriever is None:
            raise ValueError("an engine without a retriever needs first_docs (the videos of turn 1)")
        if self.retriever is None and cfg.max_turn > 1:
            raise ValueError(f"max_turn={cfg.max_turn} re-retrieves with the refined query: pass a retriever")
        recs = [q.to_record() if hasattr(q, "to_record") else dict(q) for q in queries]
        qvecs = np.asarray(qvecs, np.float32)
        if self.retriever is not None:
            orig = np.asarray(self.retriever.rank(jnp.asarray(qvecs), jnp.asarray(self._gt_rows(recs))))
        else:
            orig = np.full(len(recs), -1)
        trajs = [Trajectory(query=r, sample=g, qvec=v, orig_rank=int(o))
                 for r, v, o in zip(recs, qvecs, orig) for g in range(group)]
        first = None if first_docs is None else [d for d in first_docs for _ in range(group)]
        self._params, self._key, self._batches = params, key, 0
        self._traj_keys = None
        if query_keys is not None:
            if len(query_keys) != len(recs):
                raise ValueError(f"{len(query_keys)} query keys for {len(recs)} queries")
            self._traj_keys = {id(t): query_keys[i // group] for i, t in enumerate(trajs)}
        chunk = max(cfg.batch_size * 4 // group, 1) * group  # whole groups per chunk
        for turn in range(1, cfg.max_turn + 1):
            act = [i for i, t in enumerate(trajs) if t.active]
            if not act:
                break
            for s in range(0, len(act), chunk):
                idx = act[s:s + chunk]
                docs = None if turn > 1 or first is None else [first[i] for i in idx]
                self._run_turn([trajs[i] for i in idx], turn, sp, group if turn == 1 else 1, docs)
                if progress is not None:  # count finished episodes (all are finished after the last turn)
                    progress(sum(1 for i in idx if not trajs[i].active or turn == cfg.max_turn))
        return trajs

    # ---- per turn ------------------------------------------------------------------------------------------------
    def _gt_rows(self, recs) -> np.ndarray:
        return np.asarray([self.row_of[r["gt_doc_id"]] for r in recs])

    def _messages(self, query: str):
        if self.cfg.prompt_style == "grpo":
            return P.build_grpo_messages(query, refine_token=self.cfg.refine_token)
        return P.build_eval_messages(query, refine_token=self.cfg.refine_token)

    def _prompt(self, traj: Trajectory, doc_id: str) -> tuple[list[int], VideoInputs]:
        frames, meta = self.video_source(doc_id)
        vin = preprocess_video(frames, self.video_cfg, self.cfg.timestamps_mode, meta)
        ids = chat.encode_prompt(self.tok, self._messages(traj.query["query"]), video_grid_thw=[vin.grid_thw],
                                 timestamps=[vin.timestamps], outer_vision_tokens=self.cfg.outer_vision_tokens)
        return list(map(int, ids)), vin

    def _run_turn(self, trajs: list[Trajectory], turn: int, sp: SamplingParams, group: int,
                  docs: Sequence[str] | None):
        """One turn for `trajs` (whole groups of `group` consecutive samples sharing a prompt)."""
        cfg = self.cfg
        Q = np.stack([t.qvec for t in trajs])
        if docs is None:
            _, top = self.retriever.topk(jnp.asarray(Q), 1)
            docs = [self.id_map[int(r)] for r in np.asarray(top)[:, 0]]
        if self.retriever is not None:
            ranks = np.asarray(self.retriever.rank(jnp.asarray(Q), jnp.asarray(self._gt_rows([t.query
                                                                                               for t in trajs]))))
        else:
            ranks = np.full(len(trajs), -1)
        units = []  # (trajectories sharing the prompt, doc, rank, ids, video)
        for s in range(0, len(trajs), group):
            members, doc = trajs[s:s + group], docs[s]
            try:
                ids, vin = self._prompt(members[0], doc)
            except FileNotFoundError as err:  # the original skips such queries (EVAL L3283-3290)
                log.warning("query %s: %s", members[0].query["qid"], err)
                self.stats["video_file_missing"] += len(members)
                for t in members:
                    t.active, t.stop_reason = False, "video_file_missing"
                continue
            if len(ids) > cfg.max_prompt_length:
                log.warning("query %s: the prompt has %d tokens > %d (config.%s); skipped", members[0].query["qid"],
                            len(ids), cfg.max_prompt_length, cfg.prompt_limit_field)
                self.stats["prompt_too_long"] += len(members)
                for t in members:
                    t.active, t.stop_reason = False, "prompt_too_long"
                continue
            units.append((members, doc, int(ranks[s]), ids, vin))
        # group by video grid so one compiled prefill serves a batch
        by_grid: dict = {}
        for u in units:
            by_grid.setdefault(tuple(u[4].grid_thw), []).append(u)
        per_batch = max(cfg.batch_size // group, 1)
        for items in by_grid.values():
            for s in range(0, len(items), per_batch):
                self._generate_batch(items[s:s + per_batch], turn, sp, group)

    def _next_key(self):
        if self._key is None:
            return None
        self._batches += 1
        return jax.random.fold_in(self._key, self._batches)

    def _batch_key(self, units, turn: int, group: int):
        """The sampling key of a generation batch: a counter folded into `key`, or with query keys one key per row
        (rows are the units' samples in order, see `broadcast_group`)."""
        if self._traj_keys is None:
            return self._next_key()
        rows = [u[0][b % group] for u in units for b in range(group)]
        base = jnp.stack([self._traj_keys[id(t)] for t in rows])
        data = jnp.asarray([turn * 65536 + t.sample for t in rows], jnp.uint32)
        return jax.vmap(jax.random.fold_in)(base, data)

    def _generate_batch(self, units, turn: int, sp: SamplingParams, group: int):
        cfg = self.cfg
        seqs = [u[3] for u in units]
        length = round_up(max(map(len, seqs)), cfg.length_bucket)
        p = pack_prompts(seqs, cfg=self.policy_cfg, pad_id=self.ids.pad, length=length,
                         video_pixels=np.concatenate([u[4].pixel_rows for u in units]),
                         video_grids=[tuple(u[4].grid_thw) for u in units], vision_buckets=cfg.vision_buckets,
                         padding=self.sampler.padding)
        t0 = time.perf_counter()
        gen = self.sampler.generate(p, sp, self._batch_key(units, turn, group), group=group,
                                    capture_id=self.ids.refine, extra_slots=cfg.num_latents, params=self._params)
        toks, lps, lens = np.asarray(gen.tokens), np.asarray(gen.logprobs), np.asarray(gen.lengths)
        self.stats["generate_s"] += time.perf_counter() - t0
        self.stats["generated_tokens"] += int(lens.sum())
        eos = set(self.ids.eos_ids)
        need, rows = [], []
        for b in range(len(units) * group):
            members, doc, rank, ids, vin = units[b // group]
            traj = members[b % group]
            out_ids = toks[b, :lens[b]]
            text = parsing.sanitize_completion(self.tok.decode(out_ids, skip_special_tokens=False))
            last = int(out_ids[-1]) if len(out_ids) else None
            t = Turn(turn=turn, doc_id=doc, rank=rank, prompt_ids=np.asarray(ids, np.int32), video=vin,
                     sampled_ids=out_ids.astype(np.int32), logprobs=lps[b, :lens[b]].astype(np.float32), text=text,
                     answer=parsing.parse_answer_eval(text),
                     span=parsing.parse_span_eval(text, traj.query.get("duration")),
                     has_refine=bool(parsing.has_refine(out_ids, self.ids.refine, 0)),
                     stop_token=last if last in eos else None)
            traj.turns.append(t)
            rows.append(traj)
            if t.answer == "matched":
                traj.active, traj.stop_reason = False, "matched"
                if t.has_refine and cfg.refine_matched:
                    need.append(b)
            elif not t.has_refine:
                traj.active, traj.stop_reason = False, f"{t.answer}_no_refine_token"
            else:
                need.append(b)
        if need:
            self._refine(gen, need, rows)

    def _refine(self, gen: Generation, need: Sequence[int], rows: Sequence[Trajectory]):
        """Latent rollout for the chosen rows of one generation batch, q_final, and (with a retriever) the
        refined query's top-1 and GT rank."""
        cfg = self.cfg
        t0 = time.perf_counter()
        Z, _ = refine_latents((self.sampler.graphdef, self.head_graphdef), self.sampler.weights(self._params),
                              self.head_params, gen.cache, gen.capture_hidden, gen.capture_slot, gen.capture_pos,
                              opts=self.opts, num_latents=cfg.num_latents)
        Z = Z[np.asarray(need)]
        toks = [list(map(int, chat.embedder_query_ids(self.etok, rows[b].query["query"], cfg.instruction,
                                                      cfg.embedder_max_length))) for b in need]
        ids, is_lat, lat_idx, mask = S.splice_layout(toks, cfg.num_latents, cfg.splice_tail, pad_id=self.ids.pad)
        padw = ((0, 0), (0, round_up(ids.shape[1], 32) - ids.shape[1]))
        qn = refined_query((self.embedder_graphdef, self.head_graphdef), self.embedder_params, self.head_params, Z,
                           *(jnp.asarray(np.pad(a, padw)) for a in (ids, is_lat, lat_idx, mask)), opts=self.opts)
        Z, qn = np.asarray(Z), np.asarray(qn, np.float32)
        top = prank = None
        if self.retriever is not None:
            _, top = self.retriever.topk(jnp.asarray(qn), 1)
            top = np.asarray(top)
            prank = np.asarray(self.retriever.rank(jnp.asarray(qn),
                                                   jnp.asarray(self._gt_rows([rows[b].query for b in need]))))
        self.stats["refine_s"] += time.perf_counter() - t0
        for j, b in enumerate(need):
            traj = rows[b]
            t = traj.turns[-1]
            t.latents, t.q_next = Z[j], qn[j]
            if top is not None:
                t.next_doc_id, t.next_rank = self.id_map[int(top[j, 0])], int(prank[j])
            if t.answer == "matched":  # refined for the reward only; the episode ended
                continue
            traj.qvec = qn[j]  # not cumulative: the next refinement starts again from the original text
            if t.turn >= cfg.max_turn:
                traj.active, traj.stop_reason = False, "max_turn_reached_with_refine"
            else:
                traj.stop_reason = "continue_refine"
