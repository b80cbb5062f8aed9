"""The texts of the synthetic world (synthetic_world.py): the query templates, the captions of Stage 0c, the
teacher's templated reasoning in its three styles, and their inverses for the demo report (`parse_checks`,
`checked_values`, `described_event`)."""
from __future__ import annotations

import re
from typing import Mapping, Sequence

from vsr1_jax.data.synthetic_world import Event, PoolItem, SyntheticVideo, _key
from vsr1_jax.processing import prompts as P


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



def pool_query(item: PoolItem, template: int) -> str:
    """Query text `QUERY_TEMPLATES[template]` of a pool item's event."""
    return QUERY_TEMPLATES[int(template)].format(background=item.video.background, **event_words(item.event))


__all__ = ["QUERY_TEMPLATES", "REASONING_STYLES", "caption", "checked_values", "described_event",
           "event_attributes", "event_words", "matched_reasoning", "not_matched_reasoning", "parse_checks",
           "pool_query"]
