"""Ground-truth metrics for generated clips of the synth world (issue 20).

The synth corpus knows what every caption asks for — a colour, a shape and a motion of its
small world (``pipelines/corpus/synth.py``) — so a generated clip can be read back and scored
against its prompt, which no public benchmark offers:

* ``colour_acc[synth]``: the majority palette colour of the object's pixels vs the prompt's;
* ``shape_acc[synth]``: the majority vote of a 5-NN shape classifier over the object blob's
  frames (trained on the renderer's own frames, held-out accuracy in the setup string);
* ``direction_acc[synth]``: the object centroid's least-squares path, read as
  left / right / up / down / diagonal / none, vs the prompt's motion (rotate, zoom and static
  do not move the centre: "none").

A clip with no object (noise, a blank frame) reads nothing and is wrong for every prompt.
Each figure carries a 95% bootstrap interval over prompts (a prompt's seeds are resampled
together: they are not independent) and its chance level, Cohen's p_e = Σ_k p_prompt(k) ·
p_read(k) — what prompts unrelated to the clips would score with the same readings. The rows
are only produced when every prompt names a colour, a shape and a motion of the synth world:
anywhere else the figures would mean nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ragvid.pipelines.corpus.synth import _MOTION_PHRASES, COLOURS, MOTIONS, SHAPES

from .truth_blobs import find_blob, shape_features
from .truth_shapes import shape_classifier

# motions of synth.render that move the object's centre; rotate / zoom / static keep it put
_MOVING = ("left", "right", "up", "down", "diagonal")
DIRECTIONS = (*_MOVING, "none")
FEATURES = "synth"
KINDS = ("colour_acc", "shape_acc", "direction_acc")
MIN_DISPLACEMENT = 0.08  # of the frame over the clip; synth's slowest path moves 0.22
MAX_FRAMES = 16
BOOTSTRAP = 1000
_WORDS = {
    "colour": {c: re.compile(rf"\b{c}\b") for c in COLOURS},
    "shape": {s: re.compile(rf"\b{s}s?\b") for s in SHAPES},
}


def direction_of(motion: str) -> str:
    """The centre's direction for a synth motion (rotate, zoom, static → "none")."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown synth motion {motion!r}; the synth world has {list(MOTIONS)}")
    return motion if motion in _MOVING else "none"


@dataclass(frozen=True)
class Truth:
    """What a prompt asks for, in the synth world's vocabulary."""

    colour: str
    shape: str
    motion: str

    @property
    def direction(self) -> str:
        return direction_of(self.motion)


def parse_caption(text: str) -> Truth | None:
    """The colour, shape and motion a prompt names (synth's words and motion phrases), or
    ``None`` unless it names exactly one of each."""
    low = text.lower()
    found = {
        kind: [name for name, pat in pats.items() if pat.search(low)]
        for kind, pats in _WORDS.items()
    }
    motions = [m for m, phrases in _MOTION_PHRASES.items() if any(p in low for p in phrases)]
    if len(found["colour"]) != 1 or len(found["shape"]) != 1 or len(motions) != 1:
        return None
    return Truth(found["colour"][0], found["shape"][0], motions[0])


def synth_prompts(prompts: Sequence[str]) -> bool:
    """True when there are prompts and every one names a synth colour, shape and motion."""
    return bool(prompts) and all(parse_caption(p) is not None for p in prompts)


@dataclass(frozen=True)
class Reading:
    """What a clip shows; ``None`` where it shows nothing readable."""

    colour: str | None
    shape: str | None
    direction: str | None
    object_frames: int
    frames: int


def _direction(ts: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> str:
    """Direction of the least-squares line through the centroids (fractions of the frame per
    clip length), "none" when it moves less than ``MIN_DISPLACEMENT``."""
    dx, dy = np.polyfit(ts, xs, 1)[0], np.polyfit(ts, ys, 1)[0]
    if np.hypot(dx, dy) < MIN_DISPLACEMENT:
        return "none"
    angle = np.degrees(np.arctan2(abs(dy), abs(dx)))
    if angle < 22.5:
        return "right" if dx > 0 else "left"
    if angle > 67.5:
        return "down" if dy > 0 else "up"
    return "diagonal"


def read_clip(frames: np.ndarray) -> Reading:
    """Read one clip (T, H, W, 3) uint8: the object's colour, shape and direction.

    The object must be found in at least half of the (at most 16, evenly spaced) frames;
    shape votes prefer frames where the blob does not touch the border (a clipped shape is
    another shape)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected a clip (T, H, W, 3), got {frames.shape}")
    idx = np.linspace(0, len(frames) - 1, min(len(frames), MAX_FRAMES)).round().astype(int)
    blobs = [(t, b) for t in idx if (b := find_blob(frames[t])) is not None]
    if not blobs or 2 * len(blobs) < len(idx):
        return Reading(None, None, None, len(blobs), len(idx))
    area: dict[str, int] = {}
    for _, b in blobs:
        area[b.colour] = area.get(b.colour, 0) + b.area
    colour = max(area, key=area.__getitem__)
    own = [(t, b) for t, b in blobs if b.colour == colour]
    inner = [b for _, b in own if not b.touches_border] or [b for _, b in own]
    votes = shape_classifier().predict(np.stack([shape_features(b.mask) for b in inner]))
    shape = SHAPES[int(np.bincount(votes, minlength=len(SHAPES)).argmax())]
    direction = None
    if len(own) >= 3:
        ts = np.array([t for t, _ in own], float) / max(len(frames) - 1, 1)
        xs, ys = np.array([b.cx for _, b in own]), np.array([b.cy for _, b in own])
        direction = _direction(ts, xs, ys)
    return Reading(colour, shape, direction, len(blobs), len(idx))


def bootstrap_interval(
    correct: Sequence[bool], groups: Sequence[str], n: int = BOOTSTRAP, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the accuracy, resampling groups (prompts) with their
    members (seeds) together."""
    keys = sorted(set(groups))
    pos = {g: i for i, g in enumerate(keys)}
    hits, count = np.zeros(len(keys)), np.zeros(len(keys))
    for c, g in zip(correct, groups, strict=True):
        hits[pos[g]] += bool(c)
        count[pos[g]] += 1
    pick = np.random.default_rng(seed).integers(0, len(keys), size=(n, len(keys)))
    acc = hits[pick].sum(1) / count[pick].sum(1)
    lo, hi = np.percentile(acc, [2.5, 97.5])
    return float(lo), float(hi)


def chance_level(truths: Sequence[str], readings: Sequence[str | None]) -> float:
    """Cohen's p_e: Σ_k p_truth(k)·p_read(k), the agreement of unrelated prompts and clips
    (a clip read as nothing agrees with no prompt)."""
    n = len(truths)
    if n == 0:
        return float("nan")
    labels = set(truths)
    return float(sum(list(truths).count(k) * list(readings).count(k) for k in labels) / n**2)


@dataclass(frozen=True)
class TruthScore:
    """One ground-truth figure of one method."""

    metric: str
    value: float
    n: int
    low: float
    high: float
    chance: float
    setup: str


def _methods() -> dict[str, str]:
    return {
        "colour_acc": "majority palette colour of the object's saturated pixels (6 synth colours)"
        " vs the prompt's",
        "shape_acc": f"majority vote of a {shape_classifier().describe()}, vs the prompt's shape",
        "direction_acc": "least-squares path of the object's centroid read as "
        f"{'/'.join(DIRECTIONS)} (moves < {MIN_DISPLACEMENT} of the frame: none; rotate, zoom, "
        "static: none) vs the prompt's motion",
    }


def truth_scores(
    prompts: Sequence[str],
    videos: Sequence[np.ndarray],
    readings: Sequence[Reading] | None = None,
) -> list[TruthScore]:
    """The three figures for videos (T, H, W, 3) uint8 generated from ``prompts`` (one prompt
    per video; several seeds of a prompt repeat it). Raises unless every prompt is synth's.
    ``readings`` (from :func:`read_clip`) saves reading the same videos twice."""
    if len(prompts) != len(videos):
        raise ValueError(f"{len(prompts)} prompts for {len(videos)} videos: pass one per video")
    truths = [parse_caption(p) for p in prompts]
    bad = [p for p, t in zip(prompts, truths, strict=True) if t is None]
    if bad or not prompts:
        raise ValueError(
            f"prompt {bad[0] if bad else None!r} does not name one synth colour, shape and "
            f"motion ({list(COLOURS)}, {list(SHAPES)}, {list(MOTIONS)}): ground-truth metrics "
            "only mean something for the synth world"
        )
    readings = list(readings) if readings is not None else [read_clip(v) for v in videos]
    methods = _methods()
    scores = []
    for kind, attr in zip(KINDS, ("colour", "shape", "direction"), strict=True):
        want = [getattr(t, attr) for t in truths]
        got = [getattr(r, attr) for r in readings]
        correct = [w == g for w, g in zip(want, got, strict=True)]
        lo, hi = bootstrap_interval(correct, prompts)
        p_e = chance_level(want, got)
        n_prompts = len(set(prompts))
        setup = (
            f"{methods[kind]}; 95% CI [{lo:.2f}, {hi:.2f}] (bootstrap over {n_prompts} prompts, "
            f"a prompt's seeds resampled together, {BOOTSTRAP} resamples); chance {p_e:.2f} "
            "(Cohen's p_e: what unrelated prompts score)"
        )
        value = float(np.mean(correct))
        scores.append(TruthScore(f"{kind}[{FEATURES}]", value, len(correct), lo, hi, p_e, setup))
    return scores


def truth_rows(
    run: str, method: str, prompts: Sequence[str], videos: Sequence[np.ndarray]
) -> list[dict]:
    """METRICS rows of the three figures; none unless every prompt is a synth caption."""
    if not videos or not synth_prompts(prompts):
        return []
    return [
        {"run": run, "method": method, "metric": s.metric, "value": s.value, "n": s.n,
         "setup": s.setup}
        for s in truth_scores(prompts, videos)
    ]  # fmt: skip
