"""Find the synth world's object in one frame: its palette colour, its blob, the blob's shape
features.

Every synth object is one flat colour of the palette (``synth.COLOURS``, all strongly
saturated and bright) and every background is black, grey, white or a dim gradient whose
saturation stays below 0.45 and whose brightest channel stays below 100 — so the object is the
saturated, bright pixels, labelled by their nearest palette colour. Codecs blend edges into the
background and a random model paints scattered colour everywhere; the object is therefore the
largest 8-connected blob of the frame's majority colour, and it only counts when it is big
enough and holds most of that colour's pixels (noise never forms such a blob).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ragvid.pipelines.corpus.synth import COLOURS

COLOUR_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in COLOUR_NAMES], np.float32)
MIN_SATURATION = 0.5  # (max − min) / max; the gradient background reaches 0.4, palette ≥ 0.79
MIN_VALUE = 100  # brightest channel; the gradient reaches 90, palette ≥ 190
MAX_DISTANCE = 90.0  # RGB distance to the nearest palette colour (orange–yellow are 80 apart)
MIN_AREA_FRACTION = 0.004  # of the frame (≥ MIN_AREA pixels): smaller blobs are no object
MIN_AREA = 6
MIN_SHARE = 0.5  # the blob's share of its colour's pixels: noise scatters, objects cohere


@dataclass(frozen=True)
class Blob:
    """The object found in one frame."""

    colour: str
    mask: np.ndarray  # (H, W) bool
    area: int
    cx: float  # centroid, fraction of width
    cy: float  # centroid, fraction of height
    touches_border: bool


def colour_labels(frame: np.ndarray) -> np.ndarray:
    """(H, W) int: index into ``COLOUR_NAMES`` of each object-coloured pixel, −1 elsewhere."""
    x = np.asarray(frame, np.float32)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"expected an RGB frame (H, W, 3), got {x.shape}")
    hi, lo = x.max(-1), x.min(-1)
    bright = (hi >= MIN_VALUE) & (hi - lo >= MIN_SATURATION * hi)
    d2 = (x * x).sum(-1, keepdims=True) - 2 * x @ _PALETTE.T + (_PALETTE**2).sum(-1)
    label = d2.argmin(-1)
    near = np.take_along_axis(d2, label[..., None], -1)[..., 0] <= MAX_DISTANCE**2
    return np.where(bright & near, label, -1)


def find_blob(frame: np.ndarray) -> Blob | None:
    """The frame's object, or ``None`` when no coherent blob of one palette colour is there."""
    labels = colour_labels(frame)
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=len(COLOUR_NAMES))
    if counts.sum() == 0:
        return None
    colour = int(counts.argmax())
    mask = (labels == colour).astype(np.uint8)
    n, comp, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n < 2:
        return None
    best = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
    area = int(stats[best, cv2.CC_STAT_AREA])
    h, w = mask.shape
    if area < max(MIN_AREA, MIN_AREA_FRACTION * h * w) or area < MIN_SHARE * counts[colour]:
        return None
    x, y, bw, bh = (int(stats[best, k]) for k in range(4))
    border = x == 0 or y == 0 or x + bw >= w or y + bh >= h
    cx, cy = cents[best]
    return Blob(COLOUR_NAMES[colour], comp == best, area, cx / w, cy / h, border)


def shape_features(mask: np.ndarray) -> np.ndarray:
    """(9,) float: the 7 log Hu moments, solidity and compactness of a blob.

    Hu moments are invariant to position, scale and rotation — what varies within one shape
    in the synth world; solidity (area / convex hull) separates the star and the cross from
    the convex shapes, compactness (4π·area / perimeter²) the circle from the polygons. The
    symmetric shapes' higher moments are ~0 with a noisy sign, so the log is of |h| + 1e-6
    (a signed log turned that noise into the largest feature differences).
    """
    m = np.ascontiguousarray(mask, np.uint8)
    hu = cv2.HuMoments(cv2.moments(m, binaryImage=True)).ravel()
    log_hu = np.log10(np.abs(hu) + 1e-6)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cnt = max(contours, key=cv2.contourArea)
    area = max(float(cv2.contourArea(cnt)), 0.5)
    hull = max(float(cv2.contourArea(cv2.convexHull(cnt))), area)
    perimeter = max(float(cv2.arcLength(cnt, True)), 1e-6)
    compact = 4 * np.pi * area / perimeter**2
    return np.concatenate([log_hu, [area / hull, compact]]).astype(np.float64)
