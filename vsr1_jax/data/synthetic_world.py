"""The demo's synthetic world: what each video shows (coloured shapes moving over plain backgrounds: `plan_split`,
`plan_splits`, Stage 0's `plan_pool`) and its frames (`render_video`). The texts about it (queries, captions, the
teacher's reasoning, the checks) are in synthetic_text.py; the prepared dataset written from it in synthetic.py.
numpy only: no JAX model code is imported here."""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Mapping, Sequence

import numpy as np

from vsr1_jax.data.paths import SPLITS
from vsr1_jax.errors import UserError


# How the corpus is made. Each video shows one or two *events*: a shape of some colour that appears at `start`
# seconds, moves in one direction along one lane and is gone after `end` seconds (frames at 1 fps, frame i = second
# i; the shape is drawn in frames start..end inclusive), plus optionally a static distractor of another colour.
# Every query names all deciding attributes (colour, shape, direction, lane, background) and an event's attribute
# tuple is unique in its split, so a query is satisfied by exactly one video, while near-duplicate events (one
# attribute changed) make retrieval imperfect. The steps after rendering are the original's (spec eval_and_data.md
# §3, grpo.md §5): query/video embeddings with the caller's embedder, FAISS index, hard negatives
# (build_hard_negatives_npy.py), the top-1 pool with templated "teacher" reasoning and its one-turn SFT conversion
# (build_top1_pool.py, convert_match_grounding_to_oneturn.py), the GRPO rows + stats
# (build_verified_search_minimal_top1.py). numpy only: no JAX model code is imported here.


# ---------------------------------------------------------------------------------------------------------------
# Plan: what each video shows
# ---------------------------------------------------------------------------------------------------------------
ATTRS = ("shape", "color", "direction", "lane")  # per event; the background is per video


@dataclasses.dataclass(frozen=True)
class Event:
    """A shape moving during [start, end] seconds (frames start..end inclusive)."""

    shape: str
    color: str
    direction: str
    lane: str
    start: int
    end: int


@dataclasses.dataclass(frozen=True)
class Distractor:
    """A static shape present in every frame; its colour differs from the video's events."""

    shape: str
    color: str
    cx: float
    cy: float


@dataclasses.dataclass(frozen=True)
class SyntheticVideo:
    video_id: str
    num_frames: int
    background: str
    events: tuple[Event, ...]
    distractor: Distractor | None

    @property
    def duration(self) -> float:
        return float(self.num_frames)  # 1 fps: T frames cover T seconds


class WorldTooSmallError(UserError, ValueError):
    """A split asks for more videos than the world's attribute combinations can fill with unique events."""


def _key(ev: Event | Mapping[str, str], background: str) -> tuple:
    get = ev.get if isinstance(ev, Mapping) else lambda k: getattr(ev, k)
    return tuple(get(a) for a in ATTRS) + (background,)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _spans(rng: np.random.Generator, num_frames: int, n_events: int, cfg) -> list[tuple[int, int]]:
    """Non-overlapping [start, end] frame spans, each end - start in [min_span_sec, max_span_frac * (T - 1)]."""
    min_len = int(cfg.video.min_span_sec)
    max_len = max(min_len, int(math.floor(cfg.video.max_span_frac * (num_frames - 1))))
    if n_events == 1:
        segments = [(0, num_frames - 1)]
    else:  # split the timeline at a cut so both halves can hold a span; at least one empty frame between them
        cut = int(rng.integers(min_len + 1, num_frames - min_len - 1))
        segments = [(0, cut - 1), (cut + 1, num_frames - 1)]
    spans = []
    for a, b in segments:
        length = int(rng.integers(min_len, min(max_len, b - a) + 1))
        start = int(rng.integers(a, b - length + 1))
        spans.append((start, start + length))
    return spans


def plan_split(cfg, split: str, exclude: frozenset = frozenset()) -> list[SyntheticVideo]:
    """The videos of one split, deterministic in (cfg.seed, split). Raises if the attribute space is too small for
    unique event tuples. exclude: event tuples (`event_key`) this split may not show (the other split's, when
    `cfg.difficulty.disjoint_splits`)."""
    split_cfg = cfg[split]
    rng = np.random.default_rng([int(cfg.seed), ("train", "test").index(split)])
    attrs = cfg.attributes
    options = {"shape": tuple(attrs.shapes), "color": tuple(attrs.colors.keys()),
               "direction": tuple(attrs.directions), "lane": tuple(attrs.lanes)}
    backgrounds = tuple(attrs.backgrounds.keys())
    rgbs = [tuple(int(x) for x in v) for v in list(attrs.colors.values()) + list(attrs.backgrounds.values())]
    if set(options["color"]) & set(backgrounds) or len(set(rgbs)) != len(rgbs) or \
            any(len(v) != 3 or not all(0 <= x <= 255 for x in v) for v in rgbs):
        raise ValueError("shape and background colours need distinct names and distinct RGB triples in 0..255 "
                         "(a shape's pixels are found by exact colour)")
    capacity = math.prod(len(v) for v in options.values()) * len(backgrounds)
    if len(options["color"]) < 2:
        raise ValueError("at least two shape colours are needed (distractors take another colour than the events)")
    lo, hi = int(cfg.video.min_frames), int(cfg.video.max_frames)
    if lo % 2 or hi % 2 or lo < int(cfg.video.min_span_sec) + 1 or hi < lo:
        raise ValueError(f"frame counts must be even with min_frames <= max_frames and room for a span of "
                         f"{cfg.video.min_span_sec} s; got {lo}..{hi}")
    used: set[tuple] = set(exclude)
    made: list[tuple[Event, str]] = []  # (event, background) of this split, for near-duplicates
    combos = [dict(zip(ATTRS, c)) for c in itertools.product(*(options[a] for a in ATTRS))]
    videos = []
    for i in range(int(split_cfg.num_videos)):
        num_frames = 2 * int(rng.integers(lo // 2, hi // 2 + 1))
        background = _pick(rng, backgrounds)
        two = num_frames >= 2 * (int(cfg.video.min_span_sec) + 2) and rng.random() < cfg.video.two_event_prob
        spans = _spans(rng, num_frames, 2 if two else 1, cfg)
        events: list[Event] = []
        for start, end in spans:
            taken_colors = {e.color for e in events}  # one colour per event in a video: pixels identify the event
            free = [c for c in combos if _key(c, background) not in used and c["color"] not in taken_colors]
            if not free:
                left = " less the test split's" if exclude else ""
                raise WorldTooSmallError(
                    f"config.synthetic.{split}.num_videos={int(split_cfg.num_videos)} (seed {int(cfg.seed)}): "
                    f"the {split} split ran out of unique events at video {i + 1} (the {capacity} attribute "
                    f"combinations{left}); lower config.synthetic.{split}.num_videos, try another "
                    "config.synthetic.seed or add values under config.synthetic.attributes")
            same_bg = [e for e, bg in made if bg == background]
            near = []
            if same_bg and rng.random() < cfg.difficulty.overlap_prob:
                # near-duplicate: an earlier event on the same background with exactly one attribute changed
                base = same_bg[int(rng.integers(len(same_bg)))]
                near = [c for c in free if sum(c[a] != getattr(base, a) for a in ATTRS) == 1]
            pool = near or free
            ev = Event(start=start, end=end, **pool[int(rng.integers(len(pool)))])
            used.add(_key(ev, background))
            made.append((ev, background))
            events.append(ev)
        distractor = None
        if rng.random() < cfg.video.distractor_prob:
            free = [c for c in options["color"] if c not in {e.color for e in events}]
            if free:
                size = float(cfg.video.shape_size)
                distractor = Distractor(
                    shape=_pick(rng, options["shape"]), color=_pick(rng, free),
                    cx=float(rng.uniform(size, cfg.video.width - size)),
                    cy=float(rng.uniform(size, cfg.video.height - size)))
        videos.append(SyntheticVideo(video_id=f"syn_{split}_{i:04d}", num_frames=num_frames, background=background,
                                     events=tuple(events), distractor=distractor))
    return videos


def event_key(ev: Event, background: str) -> tuple:
    """The attribute tuple a query names: (shape, colour, direction, lane, background)."""
    return _key(ev, background)


def plan_splits(cfg) -> dict[str, list[SyntheticVideo]]:
    """Both splits' plans. With `cfg.difficulty.disjoint_splits` the test split is planned first and the train
    split shows none of its event tuples, so no test query's description is ever a training description."""
    if not cfg.difficulty.get("disjoint_splits", False):
        return {split: plan_split(cfg, split) for split in SPLITS}
    test = plan_split(cfg, "test")
    return {"train": plan_split(cfg, "train", exclude=frozenset(split_keys(cfg, "test", test))), "test": test}


def split_keys(cfg, split: str, plan: list[SyntheticVideo] | None = None) -> set[tuple]:
    """The event tuples shown in a split's videos."""
    plan = plan_split(cfg, split) if plan is None else plan
    return {_key(ev, v.background) for v in plan for ev in v.events}


@dataclasses.dataclass(frozen=True)
class PoolItem:
    """A Stage-0 training video and the event its queries describe."""
    video: SyntheticVideo
    event: Event

    @property
    def key(self) -> tuple:
        return _key(self.event, self.video.background)


def plan_pool(cfg, num_videos: int, *, seed: Sequence[int], exclude: frozenset = frozenset()) -> list[PoolItem]:
    """Stage-0 training videos (vsr1_jax/train/stage0.py), in twins: items 2k and 2k+1 show events that differ in
    exactly one attribute (background included) where the space allows, with their own timing, lane motion and
    distractor. Attribute tuples repeat across twins (unlike a split, the pool is not a retrieval corpus); none is in
    `exclude` (the test split's tuples), in the queried event or in a second event. Deterministic in (cfg.seed,
    seed)."""
    rng = np.random.default_rng([int(cfg.seed), 7, *[int(x) for x in seed]])
    attrs = cfg.attributes
    options = {"shape": tuple(attrs.shapes), "color": tuple(attrs.colors.keys()),
               "direction": tuple(attrs.directions), "lane": tuple(attrs.lanes)}
    backgrounds = tuple(attrs.backgrounds.keys())
    combos = [(dict(zip(ATTRS, c)), bg) for c in itertools.product(*(options[a] for a in ATTRS)) for bg in backgrounds]
    allowed = [(c, bg) for c, bg in combos if _key(c, bg) not in exclude]
    if not allowed:
        raise ValueError("plan_pool: every attribute combination is excluded")
    lo, hi = int(cfg.video.min_frames), int(cfg.video.max_frames)

    def video(i: int, combo: dict, background: str) -> PoolItem:
        num_frames = 2 * int(rng.integers(lo // 2, hi // 2 + 1))
        two = num_frames >= 2 * (int(cfg.video.min_span_sec) + 2) and rng.random() < cfg.video.two_event_prob
        spans = _spans(rng, num_frames, 2 if two else 1, cfg)
        which = int(rng.integers(len(spans)))  # the queried event takes one span, a second event the other
        events = [None] * len(spans)
        events[which] = Event(start=spans[which][0], end=spans[which][1], **combo)
        for j in range(len(spans)):
            if j != which:
                other = [c for c, bg in allowed if bg == background and c["color"] != combo["color"]]
                if not other:
                    events.pop(j)
                    continue
                events[j] = Event(start=spans[j][0], end=spans[j][1], **other[int(rng.integers(len(other)))])
        events = [e for e in events if e is not None]
        distractor = None
        if rng.random() < cfg.video.distractor_prob:
            free = [c for c in options["color"] if c not in {e.color for e in events}]
            if free:
                size = float(cfg.video.shape_size)
                distractor = Distractor(shape=_pick(rng, options["shape"]), color=_pick(rng, free),
                                        cx=float(rng.uniform(size, cfg.video.width - size)),
                                        cy=float(rng.uniform(size, cfg.video.height - size)))
        v = SyntheticVideo(video_id=f"syn_pool_{i:05d}", num_frames=num_frames, background=background,
                           events=tuple(events), distractor=distractor)
        return PoolItem(video=v, event=events[[e.color for e in events].index(combo["color"])])

    out: list[PoolItem] = []
    for k in range(int(num_videos) // 2):
        c0, bg0 = allowed[int(rng.integers(len(allowed)))]
        near = [(c, bg) for c, bg in allowed
                if sum(c[a] != c0[a] for a in ATTRS) + (bg != bg0) == 1]
        c1, bg1 = near[int(rng.integers(len(near)))] if near else allowed[int(rng.integers(len(allowed)))]
        out.append(video(2 * k, c0, bg0))
        out.append(video(2 * k + 1, c1, bg1))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------
def _lane_center(lane: str, lanes: Sequence[str], extent: int) -> float:
    """Lanes split the cross axis evenly: first / middle / last third (rows for horizontal motion, columns for
    vertical motion)."""
    k = list(lanes).index(lane)
    return extent * (k + 0.5) / len(lanes)


def event_center(ev: Event, frame: int, cfg) -> tuple[float, float]:
    """(cx, cy) of the event's shape at `frame` (start <= frame <= end): linear motion edge to edge."""
    h, w, size = int(cfg.video.height), int(cfg.video.width), float(cfg.video.shape_size)
    frac = (frame - ev.start) / max(ev.end - ev.start, 1)
    lo_x, hi_x = size / 2 + 1, w - size / 2 - 1
    lo_y, hi_y = size / 2 + 1, h - size / 2 - 1
    if ev.direction in ("left", "right"):
        cy = _lane_center(ev.lane, cfg.attributes.lanes, h)
        cx = hi_x + (lo_x - hi_x) * frac if ev.direction == "left" else lo_x + (hi_x - lo_x) * frac
    else:
        cx = _lane_center(ev.lane, cfg.attributes.lanes, w)
        cy = hi_y + (lo_y - hi_y) * frac if ev.direction == "up" else lo_y + (hi_y - lo_y) * frac
    return cx, cy


def _shape_mask(shape: str, cx: float, cy: float, size: float, h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # pixel centres
    r = size / 2
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(x - cx) <= r * 0.85) & (np.abs(y - cy) <= r * 0.85)
    if shape == "triangle":  # apex up: half-width grows linearly from the apex to the base
        t = (y - (cy - r)) / (2 * r)
        return (t >= 0) & (t <= 1) & (np.abs(x - cx) <= r * t)
    raise ValueError(f"unknown shape {shape!r}")


def render_video(video: SyntheticVideo, cfg) -> np.ndarray:
    """uint8 [T, H, W, 3]: plain background, the distractor in every frame, each event's shape in its span (drawn
    last, so it is never hidden). Colours are exact (no anti-aliasing): a shape's pixels are found by RGB value."""
    h, w, size = int(cfg.video.height), int(cfg.video.width), float(cfg.video.shape_size)
    colors, backgrounds = cfg.attributes.colors, cfg.attributes.backgrounds
    frames = np.empty((video.num_frames, h, w, 3), np.uint8)
    frames[:] = np.asarray(backgrounds[video.background], np.uint8)
    if video.distractor is not None:
        d = video.distractor
        frames[:, _shape_mask(d.shape, d.cx, d.cy, size, h, w)] = np.asarray(colors[d.color], np.uint8)
    for ev in video.events:
        for t in range(ev.start, ev.end + 1):
            cx, cy = event_center(ev, t, cfg)
            frames[t, _shape_mask(ev.shape, cx, cy, size, h, w)] = np.asarray(colors[ev.color], np.uint8)
    return frames


__all__ = ["ATTRS", "Distractor", "Event", "PoolItem", "SyntheticVideo", "WorldTooSmallError", "event_center",
           "event_key", "plan_pool", "plan_split", "plan_splits", "render_video", "split_keys"]
