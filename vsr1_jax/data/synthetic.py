"""A procedural VideoSearch-R1 corpus (coloured shapes moving over plain backgrounds) written in the exact prepared
layout with the original pipeline's builders, so every pipeline, demo and test runs without downloads."""
from __future__ import annotations

import dataclasses
import itertools
import math
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from vsr1_jax.data.files import (
    id_map_from_docid2row,
    l2_normalize_rows,
    read_raw_annotation,
    read_video_embed_meta,
    write_docid2row,
    write_embeddings,
    write_faiss_index,
    write_grpo_rows,
    write_grpo_stats,
    write_hard_negatives,
    write_id_map,
    write_query_meta,
    write_raw_annotation,
    write_sft_items,
    write_sft_reasoning,
    write_video_embed_meta,
    write_video_npy,
    write_video_npy_meta,
)
from vsr1_jax.data.build import oneturn as OT
from vsr1_jax.data.build import select as SEL
from vsr1_jax.data.build import teacher as TE
from vsr1_jax.data.build.pipeline import Embedder
from vsr1_jax.data.paths import SPLITS, PreparedPaths
from vsr1_jax.data.records import QueryMetaRow, RawAnnotationRow, VideoEmbedMeta, VideoNpyMeta
from vsr1_jax.data.validate import ValidationReport, validate_dataset
from vsr1_jax.errors import UserError
from vsr1_jax.processing import prompts as P


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


def pool_query(item: PoolItem, template: int) -> str:
    """Query text `QUERY_TEMPLATES[template]` of a pool item's event."""
    return QUERY_TEMPLATES[int(template)].format(background=item.video.background, **event_words(item.event))


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


# ---------------------------------------------------------------------------------------------------------------
# Text: queries, captions, templated reasoning
# ---------------------------------------------------------------------------------------------------------------
_DIRECTION = {"left": "to the left", "right": "to the right", "up": "upward", "down": "downward"}
_LANE_H = {"first": "along the top", "middle": "through the middle", "last": "along the bottom"}
_LANE_V = {"first": "on the left side", "middle": "through the center", "last": "on the right side"}
# Every template names all deciding attributes, so each query has exactly one matching video in its split.
QUERY_TEMPLATES = (
    "a {color} {shape} moves {direction} {lane} on a {background} background",
    "on a {background} background, a {color} {shape} appears and moves {direction} {lane}",
    "the {color} {shape} slides {direction} {lane} over a plain {background} background",
    "a {color} {shape} travels {direction} {lane} against a {background} backdrop",
)


def _lane_words(ev: Event | Mapping[str, str]) -> str:
    get = ev.get if isinstance(ev, Mapping) else lambda k: getattr(ev, k)
    table = _LANE_H if get("direction") in ("left", "right") else _LANE_V
    return table.get(get("lane"), get("lane"))


def event_words(ev: Event) -> dict[str, str]:
    """The words the texts use for an event's colour, shape, direction ("to the left") and lane ("along the top")."""
    return {"color": ev.color, "shape": ev.shape, "direction": _DIRECTION.get(ev.direction, ev.direction),
            "lane": _lane_words(ev)}



def _what(ev: Event) -> str:
    w = event_words(ev)
    return f"a {w['color']} {w['shape']} moving {w['direction']} {w['lane']}"


def _when(ev: Event) -> str:
    return f"from {P.format_seconds(ev.start)} to {P.format_seconds(ev.end)} seconds"


def caption(video: SyntheticVideo) -> str:
    """What a video shows, in one or two sentences: the background, each moving shape (colour, shape, direction,
    lane, seconds) and the still distractor. Stage 0c's captions and the full teacher reasoning's description."""
    parts = [f"{_what(ev)} {_when(ev)}" for ev in video.events]
    text = f"The video has a {video.background} background and shows " + " and ".join(parts) + "."
    if video.distractor is not None:
        text += f" A {video.distractor.color} {video.distractor.shape} stays still in every frame."
    return text


REASONING_STYLES = ("full", "short", "compare")
# the one-word values the "compare" style checks, attribute by attribute
_LANE_WORD_H = {"first": "top", "middle": "middle", "last": "bottom"}
_LANE_WORD_V = {"first": "left", "middle": "center", "last": "right"}


def _check_words(ev: Event, background: str) -> list[str]:
    """The five values a "compare" text checks, in order: colour, shape, direction, position, background."""
    lane = (_LANE_WORD_H if ev.direction in ("left", "right") else _LANE_WORD_V).get(ev.lane, ev.lane)
    return [ev.color, ev.shape, ev.direction, lane, background]


def _closest_event(video: SyntheticVideo, query_event: Event, query_background: str) -> Event:
    """The event of `video` that agrees with the queried one on the most attributes (background included): what a
    teacher text describes and checks when the video does not hold the queried event."""
    want = _key(query_event, query_background)
    return max(video.events, key=lambda e: sum(a == b for a, b in zip(_key(e, video.background), want)))


def _compared(seen: Event, video: SyntheticVideo, query_event: Event, query_background: str) -> str:
    """The "compare" style: the query's five values (colour, shape, direction, position, background), what is
    seen, then the attributes one by one, each value as seen beside the query's and whether they agree ("vs query:
    red red yes, circle square no"), up to the first that disagrees; then the verdict: "matches" after five
    agreements, "does not match" right after a disagreement. The system prompt asks the model to "compare the query
    requirements with visible evidence step by step" (sqr_and_sft.md §3). Each check puts the two values it compares
    next to each other and the verdict follows the last check, so a 2-layer policy's verdict can follow its own
    reading (with every check written, the toy policy's verdict disagreed with its own five checks 40% of the time);
    the query's values come first, so that a check copies them from that list rather than repeating the value it
    has just read from the video (without the list, the toy policy wrote "red red yes" for a blue query). Issue 23,
    2026-12-07."""
    checks = []
    for a, b in zip(_check_words(seen, video.background), _check_words(query_event, query_background)):
        checks.append(f"{a} {b} {'yes' if a == b else 'no'}")
        if a != b:
            break
    same = checks[-1].endswith("yes")
    asked = " ".join(_check_words(query_event, query_background))
    w = event_words(seen)   # the lane is one of the checks: the description leaves it out (token budget)
    return (f"The query asks for: {asked}. The video shows a {w['color']} {w['shape']} moving {w['direction']} "
            f"{_when(seen)}; vs query: " + ", ".join(checks) + ("; so it matches." if same else "; so it does not match."))


_CHECKS = re.compile(r"vs query: (.*?); so it (does not match|matches)")


def parse_checks(text: str) -> tuple[list[tuple[str, str, bool]], bool] | None:
    """The checks and the verdict of a "compare"-style text (`_compared`): ([(seen, query, yes)], says "matches"),
    or None when the text has no well-formed checks. For the demo report's check that the verdict follows them."""
    m = _CHECKS.search(text or "")
    if m is None:
        return None
    checks = [c.split() for c in m.group(1).split(", ")]
    if not 1 <= len(checks) <= 5 or any(len(c) != 3 or c[2] not in ("yes", "no") for c in checks):
        return None
    return [(a, b, yes == "yes") for a, b, yes in checks], m.group(2) == "matches"


def checked_values(query: str, gt_video: SyntheticVideo, shown: SyntheticVideo) -> tuple[list[str], list[str]] | None:
    """The values a "compare" text should check for `query` (whose event is in `gt_video`) when `shown` is the video
    on screen: ([the closest event of `shown`'s five values], [the query's five values]), in check order (colour,
    shape, direction, position, background); None if no event of `gt_video` has this query text."""
    ev = next((e for e in gt_video.events for tpl in QUERY_TEMPLATES
               if tpl.format(background=gt_video.background, **event_words(e)) == query), None)
    if ev is None:
        return None
    return (_check_words(_closest_event(shown, ev, gt_video.background), shown.background),
            _check_words(ev, gt_video.background))


def matched_reasoning(query_event: Event, query_background: str, video: SyntheticVideo, style: str = "full") -> str:
    """Teacher-style reasoning for a video that contains the queried event: what is seen, and when. style "short":
    one sentence that describes the queried event as seen, then says it matches (the demo's tiny policy learns it in
    minutes; the full text is ~290 tiny-tokenizer tokens). Matched and not-matched short sentences start alike ("The
    video shows a <colour> <shape> moving <direction> <lane> from .. to .. seconds;"), so the verdict comes after the
    description, not at the second word. "compare": the short description, then a check per attribute
    (`_compared`)."""
    if style == "compare":
        return _compared(query_event, video, query_event, query_background)
    if style == "short":   # what is seen first, then the verdict: the sentence reads the video before it decides
        return f"The video shows {_what(query_event)} {_when(query_event)}; it matches the query."
    ask = f"The query asks for {_what(query_event)} on a {query_background} background."
    return (f"{ask} {caption(video)} The {query_event.color} {query_event.shape} has the queried colour, shape, "
            f"direction and position on the queried background, so the scene matches {_when(query_event)}.")


def not_matched_reasoning(query_event: Event, query_background: str, video: SyntheticVideo,
                          style: str = "full") -> str:
    """Teacher-style reasoning for a video without the queried event: what is seen and which attributes differ.
    style "short": one sentence describing the closest candidate (as `matched_reasoning`'s does the match), then
    what differs; "compare": the closest candidate checked attribute by attribute (`_compared`)."""
    ask = f"The query asks for {_what(query_event)} on a {query_background} background."
    best = _closest_event(video, query_event, query_background)  # the closest candidate in the video
    diffs = []
    qw, bw = event_words(query_event), event_words(best)
    for name, label in (("color", "colour"), ("shape", "shape"), ("direction", "direction"), ("lane", "position")):
        if getattr(best, name) != getattr(query_event, name):
            diffs.append(f"{label} ({bw[name]}, not {qw[name]})")
    if video.background != query_background:
        diffs.append(f"background ({video.background}, not {query_background})")
    if not diffs:  # impossible by construction: event tuples are unique in a split
        raise AssertionError(f"video {video.video_id} contains the queried event; it cannot be a negative")
    diff_text = diffs[0] if len(diffs) == 1 else ", ".join(diffs[:-1]) + " and " + diffs[-1]
    if style == "compare":
        return _compared(best, video, query_event, query_background)
    if style == "short":
        labels = [x.split(" (")[0] for x in diffs]
        return f"The video shows {_what(best)} {_when(best)}; its {' and '.join(labels)} differ from the query."
    still = ""
    d = video.distractor
    if d is not None and (d.color, d.shape) == (query_event.color, query_event.shape):
        still = f" The {d.color} {d.shape} in the video stays still; it does not move {qw['direction']}."
    return (f"{ask} {caption(video)} The closest moving candidate, the {best.color} {best.shape}, differs in "
            f"{diff_text}.{still} No {query_event.color} {query_event.shape} moving {qw['direction']} "
            f"{qw['lane']} on a {query_background} background appears, so the video does not match the query.")


_DESCRIBED = re.compile(r"(?:The video shows an? |The )(\w+) (\w+) moving (" + "|".join(_DIRECTION.values()) + ")")


def described_event(text: str) -> dict[str, str] | None:
    """The event a reasoning text in the teacher's form says it sees ("The video shows a red circle moving to the
    left ...", "The red circle moving upward appears ..."): {color, shape, direction}, or None when it says none.
    Inverse of `_what` for the demo report's check that the policy reads the video it was shown."""
    m = _DESCRIBED.search(text or "")
    if m is None:
        return None
    back = {v: k for k, v in _DIRECTION.items()}
    return {"color": m.group(1), "shape": m.group(2), "direction": back[m.group(3)]}


def event_attributes(videos: Sequence[SyntheticVideo]) -> dict[str, list[dict[str, str]]]:
    """video id -> [{color, shape, direction}] of its moving events (what `described_event` is compared with)."""
    return {v.video_id: [{"color": e.color, "shape": e.shape, "direction": e.direction} for e in v.events]
            for v in videos}


# ---------------------------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------------------------
# The npy meta's extraction time is fixed so that the same seed gives byte-identical files.
FIXED_EXTRACT_UTC = "1970-01-01T00:00:00Z"


@dataclasses.dataclass
class SyntheticBuild:
    """What `build_synthetic_dataset` made: the paths, the per-split plans (ground truth for tests/demos), counts,
    and the validation report of the written dataset."""

    paths: PreparedPaths
    plans: dict[str, list[SyntheticVideo]]
    counts: dict[str, Any]
    report: ValidationReport


@dataclasses.dataclass
class _Query:
    desc_id: int
    video: SyntheticVideo
    event: Event
    text: str
    cog_desc: str
    score: float


def _progress(cfg) -> Callable[[str], None]:
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        if cfg.progress:
            print(f"[synthetic {time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)
    return log


def _queries_for(videos: list[SyntheticVideo], per_event: int, rng: np.random.Generator,
                 first_desc_id: int) -> list[_Query]:
    if not 1 <= per_event <= len(QUERY_TEMPLATES):
        raise ValueError(f"queries_per_event must be in 1..{len(QUERY_TEMPLATES)}, got {per_event}")
    out = []
    for video in videos:
        for ev in video.events:
            for k in rng.permutation(len(QUERY_TEMPLATES))[:per_event]:
                text = QUERY_TEMPLATES[int(k)].format(background=video.background, **event_words(ev))
                out.append(_Query(desc_id=first_desc_id + len(out), video=video, event=ev, text=text,
                                  cog_desc=f"a {ev.shape} moves {_DIRECTION[ev.direction]}",
                                  score=round(float(rng.uniform(0.6, 1.0)), 4)))
    if len({q.text for q in out}) != len(out):  # unique tuples + distinct templates make this impossible
        raise AssertionError("duplicate query texts")
    return out


def _embed(fn, items: list, batch_size: int, n_expected: int, what: str) -> np.ndarray:
    out = np.asarray(fn(items, batch_size=batch_size), dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != n_expected or not np.isfinite(out).all():
        raise ValueError(f"embedder returned {what} embeddings of shape {out.shape} (finite: "
                         f"{bool(np.isfinite(out).all())}); expected [{n_expected}, D] finite rows")
    return out


def _rel(paths: PreparedPaths, path: Path) -> str:
    # Paths inside files are relative to the dataset dir: absolute ones would differ between build roots and break
    # byte-identical output for equal seeds (consumers look videos up by id first, video.py VideoMeta.lookup).
    return str(Path(path).relative_to(paths.dataset_dir))


def _write_split(paths: PreparedPaths, split: str, videos: list[SyntheticVideo], queries: list[_Query], cfg,
                 embedder: Embedder, log) -> tuple[np.ndarray, np.ndarray, list[QueryMetaRow], dict[str, int]]:
    """Raw annotation, npy + meta, query and video embeddings, docid2row, index for one split."""
    frames = []
    npy_meta = []
    for i, v in enumerate(videos):
        arr = render_video(v, cfg)
        npy = write_video_npy(paths.video_npy(split, v.video_id), arr)
        frames.append(arr)
        n = v.num_frames
        # extract_npy.py L201-218 fields; the "source" is the rendering itself at 1 fps (so indices = seconds)
        npy_meta.append(VideoNpyMeta(
            source_video_path=f"synthetic://{split}/{v.video_id}", source_total_frames=n,
            source_duration_sec=v.duration, raw_fps=1.0, target_sample_fps=1.0, target_max_frames=64,
            requested_indices_src=list(range(n)), sampled_indices_src=list(range(n)),
            sampled_timestamps_sec=[float(t) for t in range(n)], sampled_frames_before_even_pad=n,
            even_pad_applied=False, output_num_frames=n, output_height=int(arr.shape[1]),
            output_width=int(arr.shape[2]), output_dtype="uint8", extract_utc=FIXED_EXTRACT_UTC,
            video_id=v.video_id, output_npy_path=_rel(paths, npy)))
        if cfg.progress_every and (i + 1) % int(cfg.progress_every) == 0:
            log(f"{split}: rendered {i + 1}/{len(videos)} videos")
    write_video_npy_meta(paths.video_npy_meta(split), npy_meta)

    # raw_annotation: the VERIFIED FIG fields, grouped by video (eval_and_data.md §3.1)
    write_raw_annotation(paths.raw_annotation(split), [
        RawAnnotationRow(video=q.video.video_id, time=[float(q.event.start), float(q.event.end)],
                         desc_id=q.desc_id, duration=q.video.duration, cog_desc=q.cog_desc, fig_desc=q.text,
                         fig_desc_score=q.score) for q in queries])

    # query rows shuffled with seed 0 (prepare_activitynet_segments.py L109-124, L137-139)
    meta = [QueryMetaRow(qid=f"{q.desc_id}_fig", query=q.text, pos_doc_id=q.video.video_id, weight=1.0,
                         fig_score=q.score) for q in queries]
    random.Random(int(cfg.build.query_shuffle_seed)).shuffle(meta)
    log(f"{split}: embedding {len(meta)} queries")
    q_emb = _embed(embedder.embed_texts, [m.query for m in meta], int(cfg.embed.text_batch_size), len(meta),
                   "query")
    write_embeddings(paths.query_embeddings(split), q_emb)
    write_query_meta(paths.query_meta(split), meta)

    # One call per frame count: equal-length videos share a patch grid, so the embedder fills whole batches of one
    # compiled shape; progress is reported after each group (the slow step with a real or tiny model).
    v_emb = None
    done = 0
    for n in sorted({v.num_frames for v in videos}):
        idx = [i for i, v in enumerate(videos) if v.num_frames == n]
        part = _embed(embedder.embed_videos, [frames[i] for i in idx], int(cfg.embed.video_batch_size), len(idx),
                      "video")
        if v_emb is None:
            v_emb = np.zeros((len(videos), part.shape[1]), np.float32)
        v_emb[idx] = part
        done += len(idx)
        log(f"{split}: embedded {done}/{len(videos)} videos")
    if v_emb.shape[1] != q_emb.shape[1]:
        raise ValueError(f"query embeddings are {q_emb.shape[1]}-d but video embeddings {v_emb.shape[1]}-d")
    docid2row = {v.video_id: i for i, v in enumerate(videos)}
    write_embeddings(paths.segment_embeds(split), v_emb)
    write_docid2row(paths.docid2row(split), docid2row)
    # embed_segments.py meta row: whole video as one doc, frames at 1 fps (eval_and_data.md §3.5)
    write_video_embed_meta(paths.video_embed_meta(split), [
        VideoEmbedMeta(doc_id=v.video_id, video_id=v.video_id,
                       video_path=_rel(paths, paths.video_npy(split, v.video_id)), start=0.0, end=v.duration,
                       duration=v.duration,
                       info={"backend": "synthetic", "fps": 1.0, "num_total": v.num_frames, "start_idx": 0,
                             "end_idx": v.num_frames - 1, "idxs": list(range(v.num_frames)), "frame_size": 0,
                             "sample_fps": 1.0, "max_frames": 64, "sampled_frames": v.num_frames,
                             "sampling_control": {}})
        for v in videos])
    write_faiss_index(paths.faiss_index(split), v_emb)
    write_id_map(paths.id_map(split), id_map_from_docid2row(docid2row))
    return l2_normalize_rows(q_emb), l2_normalize_rows(v_emb), meta, docid2row


def _teacher_text(m: QueryMetaRow, shown: str, q2event, video_by_id, style: str = "full") -> str:
    """The templated "teacher" answer in the original prompts' output format ("Reasoning: ...", GM L31-63)."""
    video, ev = q2event[m.qid]
    shown_video = video_by_id[shown]
    text = (matched_reasoning(ev, video.background, shown_video, style) if shown == m.pos_doc_id
            else not_matched_reasoning(ev, video.background, shown_video, style))
    return f"Reasoning: {text}"


def _sft(paths, raw_rows, meta, q2event, scores, order, doc_ids, docid2row, video_by_id, embed_meta, cfg,
         log) -> tuple[list[dict], list[dict]]:
    """The original's top-1 pool (build_top1_pool.py, `build.select.top1_pool`), a templated teacher parsed as the
    original parses its model (`build.teacher.output_row`) and the one-turn conversion (`build.oneturn`); plus the
    synthetic-only GT-video positives (configs/_synthetic.py `sft.augment_match_to_balance`)."""
    style = cfg.get("reasoning", "full")
    if style not in REASONING_STYLES:
        raise ValueError(f"config.synthetic.reasoning={style!r}: use one of {', '.join(REASONING_STYLES)}")
    meta_json = [m.to_json() for m in meta]
    doc_meta = {r.doc_id: r.to_json() for r in embed_meta}
    top1 = order[:, 0]
    pool, pool_stats = SEL.top1_pool(meta_json, top1, scores[np.arange(len(meta)), top1], doc_ids, doc_meta,
                                     raw_rows, num_match=int(cfg.build.top1_pool_match),
                                     num_not_match=int(cfg.build.top1_pool_not_match),
                                     seed=int(cfg.build.top1_pool_seed))
    n_match = pool_stats["selected_match"]
    misses = [r for r in pool if r["gold_label"] == "not_match"]
    added = []
    if cfg.sft.augment_match_to_balance and misses:
        # synthetic-only: show the GT video for some misses, as GRPO's builder balances (shuffled cycles)
        need = max(0, int(math.ceil(len(misses) * float(cfg.sft.target_match_ratio))) - n_match)
        aug_rng = random.Random(int(cfg.sft.augment_seed))
        picked: list = []
        while len(picked) < need:
            cycle = list(misses)
            aug_rng.shuffle(cycle)
            picked.extend(cycle[:need - len(picked)])
        raw_index = SEL.RawIndex(raw_rows)
        for src in picked:
            i, pos = src["query_index"], src["query_pos_doc_id"]
            row = SEL.pool_row(meta_json[i], i, pos, float(scores[i, docid2row[pos]]), doc_meta, raw_index)
            row.update(top1_rank=int(np.flatnonzero(order[i] == docid2row[pos])[0]) + 1,
                       augmentation_type="gt_video_positive", source_top1_doc_id=src["top1_doc_id"])
            added.append(row)
    by_qid = {m.qid: m for m in meta}
    reasoning_rows = [TE.output_row(r, _teacher_text(by_qid[r["qid"]], r["top1_doc_id"], q2event, video_by_id,
                                                            style),
                                    None, "stop") for r in pool + added]
    items, _ = OT.convert_rows(reasoning_rows, exclude_finish_reasons=tuple(cfg.build.sft_exclude_finish_reasons))
    log(f"sft: {len(items)} items ({n_match} top-1 matches, {len(misses)} misses, "
        f"{len(added)} GT-video positives added)")
    return reasoning_rows, items


def build_synthetic_dataset(root, dataset: str, cfg, *, embedder: Embedder,
                            overwrite: bool = False) -> SyntheticBuild:
    """Write `<root>/<dataset>/` in the prepared layout and validate it (raises PreparedDataError if invalid).

    Args:
      root: parent folder of the dataset folder.
      dataset: dataset folder name.
      cfg: the corpus settings, a config's `synthetic` section (the repo's configs/_synthetic.py).
      embedder: the search engine, e.g. `vsr1_jax.demo_models.tiny_embedder()` (a tiny *random* Qwen3-VL:
        retrieval is then near chance, which exercises every file and the matched/not-matched balancing but not
        retrieval quality) or a real Qwen3-VL-Embedding behind `TextVideoEmbedder`.
      overwrite: replace an existing non-empty dataset folder (otherwise FileExistsError).
    """
    paths = PreparedPaths(root, dataset)
    if paths.dataset_dir.exists() and any(paths.dataset_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{paths.dataset_dir} exists and is not empty; pass overwrite=True to replace it")
        shutil.rmtree(paths.dataset_dir)
    log = _progress(cfg)
    plans = plan_splits(cfg)
    counts: dict[str, Any] = {}
    first_desc_id = 0
    per_split = {}
    for split in SPLITS:
        rng = np.random.default_rng([int(cfg.seed), ("train", "test").index(split), 1])
        queries = _queries_for(plans[split], int(cfg[split].queries_per_event), rng, first_desc_id)
        first_desc_id += len(queries)
        log(f"{split}: {len(plans[split])} videos, {sum(len(v.events) for v in plans[split])} events, "
            f"{len(queries)} queries")
        q_emb, v_emb, meta, docid2row = _write_split(paths, split, plans[split], queries, cfg, embedder, log)
        per_split[split] = (queries, q_emb, v_emb, meta, docid2row)
        counts[f"{split}/videos"] = len(plans[split])
        counts[f"{split}/queries"] = len(queries)

    queries, q_emb, v_emb, meta, docid2row = per_split["train"]
    doc_ids = id_map_from_docid2row(docid2row)
    scores = q_emb @ v_emb.T
    order = SEL.rank_order(scores)
    counts["train/top1_hits"] = int(sum(doc_ids[int(order[i, 0])] == m.pos_doc_id for i, m in enumerate(meta)))
    log(f"train: top-1 retrieval hits {counts['train/top1_hits']}/{len(meta)}; writing hard negatives")
    meta_json = [m.to_json() for m in meta]
    negatives, _ = SEL.hard_negatives(meta_json, order[:, :int(cfg.build.hard_negative_topk_pool)], doc_ids,
                                      max_negatives=int(cfg.build.hard_negative_max))
    write_hard_negatives(paths.hard_negatives, negatives)

    raw_rows = [r.to_json() for r in read_raw_annotation(paths.raw_annotation("train"))]
    q2event = {f"{q.desc_id}_fig": (q.video, q.event) for q in queries}
    video_by_id = {v.video_id: v for v in plans["train"]}
    embed_meta = read_video_embed_meta(paths.video_embed_meta("train"))
    reasoning_rows, items = _sft(paths, raw_rows, meta, q2event, scores, order, doc_ids, docid2row, video_by_id,
                                 embed_meta, cfg, log)
    write_sft_reasoning(paths.sft_reasoning, reasoning_rows)
    write_sft_items(paths.sft_oneturn, items)
    counts["sft/items"] = len(items)

    g = cfg.grpo
    grpo_rows, stats = SEL.grpo_rows(
        raw_rows, meta_json, q_emb, SEL.numpy_search(v_emb), doc_ids, lambda v: paths.video_npy_exists("train", v),
        dataset_name=dataset, problem_prefix=P.sft_system_prompt(), hard_negative_topk=int(g.hard_negative_topk),
        hard_negative_depth=int(g.hard_negative_depth), augment_match_to_balance=bool(g.augment_match_to_balance),
        target_match_ratio=float(g.target_match_ratio), augment_seed=int(g.augment_seed),
        raw_annotation=_rel(paths, paths.raw_annotation("train")))
    write_grpo_rows(paths.grpo_rows, grpo_rows)
    write_grpo_stats(paths.grpo_stats, stats)
    counts["grpo/rows"] = len(grpo_rows)
    log(f"grpo: {stats['rows_written']} rows ({stats['rows_matched']} matched, {stats['rows_not_matched']} not, "
        f"{stats['rows_augmented_match_added']} augmented); validating")

    report = validate_dataset(paths)
    report.raise_if_errors()
    log(f"done: {paths.dataset_dir}")
    return SyntheticBuild(paths=paths, plans=plans, counts=counts, report=report)


__all__ = ["Distractor", "Embedder", "Event", "FIXED_EXTRACT_UTC", "PoolItem", "QUERY_TEMPLATES", "SyntheticBuild",
           "SyntheticVideo", "build_synthetic_dataset", "caption", "described_event", "event_attributes",
           "checked_values", "event_center", "event_key", "event_words", "matched_reasoning", "not_matched_reasoning",
           "parse_checks", "plan_pool", "plan_split", "plan_splits", "pool_query", "render_video", "split_keys",
           "WorldTooSmallError"]
