"""Entity → image segment for VIMI's subject-driven task (seed 003 §3.3, Fig. 4).

The paper grounds each entity word with Grounding DINO (a box) and SAM (a mask). Both are
pluggable here, chosen by name (``VimiConfig.detector`` / ``.segmenter``), each name parsed once
by :func:`parse_spec`:

detector ``saliency`` (the default: offline, no weights)
    boxes of a frame's salient regions. The background is modelled as a colour plane fitted to
    the frame's border ring (so a plain *or* a linear-gradient backdrop is "background");
    pixels far from it (Otsu on the distance, at least :data:`MIN_CONTRAST`) are foreground;
    its connected components, largest first, are the candidate objects. **Limitation:** it
    does not read the entity's noun. Entities take components in caption order, except that an
    entity naming a colour ("red circle") takes the unused component whose mean colour is
    nearest that colour (none when no region is within :data:`MAX_COLOUR_DISTANCE`), and one
    headed "background" / "backdrop" takes the non-salient rest of the frame. Right for one or
    two plain objects (ragvid's synthetic corpus); a cheap stand-in on real footage, where
    Grounding DINO is the tool.
detector ``grounding-dino:<local folder>``
    transformers' ``GroundingDinoForObjectDetection`` with its processor from a folder you
    downloaded (``IDEA-Research/grounding-dino-tiny``, …): :mod:`.grounding_hf`.
segmenter ``box``
    the mask is the detector's box.
segmenter ``sam:<local folder>``
    transformers' ``SamModel`` prompted with the boxes: :mod:`.grounding_hf`.

Boxes are ``(x0, y0, x1, y1)`` in pixels of the frame (x1, y1 exclusive); masks are boolean
arrays of the whole frame, written as PNGs (0 / 255) by :func:`write_mask`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ragvid.schemas.files import write_bytes_atomic

Box = tuple[float, float, float, float]

DETECTORS = ("saliency", "grounding-dino:<local folder>")
SEGMENTERS = ("box", "sam:<local folder>")
MIN_CONTRAST = 30.0  # RGB distance from the border's colour plane that counts as foreground
MIN_AREA = 0.002  # smallest component kept, as a share of the frame
# a colour word matches a region whose mean colour is at most this far (RGB) from the word's
# reference colour: shading and codec shifts pass, orange never matches green
MAX_COLOUR_DISTANCE = 160.0
BACKGROUND_WORDS = frozenset({"background", "backdrop", "backgrounds"})
# reference colours of colour words (ragvid's synthetic palette for the six it draws)
COLOUR_WORDS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (150, 40, 190),
    "pink": (240, 130, 180),
    "brown": (120, 75, 35),
    "white": (245, 245, 245),
    "black": (10, 10, 10),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
}


@dataclass(frozen=True)
class Detection:
    """One entity's box (pixels, x1/y1 exclusive) and the detector's confidence in it."""

    box: Box
    score: float


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray, entities: Sequence[str]) -> list[Detection | None]:
        """One detection (or None: not found) per entity, for an HxWx3 uint8 frame."""
        ...


class Segmenter(Protocol):
    name: str

    def segment(self, image: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        """One boolean HxW mask of the whole frame per box."""
        ...


def parse_spec(spec: str, kinds: Sequence[str], what: str) -> tuple[str, str | None]:
    """``"grounding-dino:/models/gd"`` → ``("grounding-dino", "/models/gd")``; ``"box"`` →
    ``("box", None)``. An unknown kind, or a model kind without its folder, fails naming the
    valid forms (``kinds``: ``"name"`` or ``"name:<local folder>"``)."""
    kind, _, arg = str(spec).partition(":")
    forms = {k.split(":", 1)[0]: ":" in k for k in kinds}
    if kind not in forms:
        raise ValueError(f"unknown {what} '{spec}'. Available: {', '.join(kinds)}")
    if forms[kind] and not arg:
        raise ValueError(
            f"{what} '{spec}' needs its model folder: '{kind}:<local folder>' (weights you "
            "downloaded; nothing is fetched at run time)"
        )
    if not forms[kind] and arg:
        raise ValueError(f"{what} '{kind}' takes no argument (got '{spec}')")
    return kind, (arg or None)


def make_detector(spec: str, threshold: float = 0.35, device: str = "auto") -> Detector:
    kind, folder = parse_spec(spec, DETECTORS, "detector")
    if kind == "saliency":
        return SaliencyDetector()
    from ragvid.pipelines.vimi.grounding_hf import GroundingDinoDetector

    return GroundingDinoDetector(str(folder), threshold=threshold, device=device)


def make_segmenter(spec: str, device: str = "auto") -> Segmenter:
    kind, folder = parse_spec(spec, SEGMENTERS, "segmenter")
    if kind == "box":
        return BoxSegmenter()
    from ragvid.pipelines.vimi.grounding_hf import SamSegmenter

    return SamSegmenter(str(folder), device=device)


# -- saliency detection -----------------------------------------------------------------------


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of ``values`` (between-class variance maximised over 256 bins)."""
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(between.argmax())])


def background_distance(image: np.ndarray) -> np.ndarray:
    """Per-pixel RGB distance from a colour plane ``c + a·x + b·y`` fitted to the border ring
    (refitted once without the ring's worst quarter, so an object touching the edge does not
    drag the fit)."""
    h, w = image.shape[:2]
    img = image.astype(np.float32)
    ring = max(1, round(0.03 * min(h, w)))
    border = np.zeros((h, w), bool)
    border[:ring], border[-ring:], border[:, :ring], border[:, -ring:] = True, True, True, True
    ys, xs = np.nonzero(border)
    design = np.stack([np.ones(len(xs)), xs / w, ys / h], 1).astype(np.float32)
    target = img[ys, xs]
    keep = np.ones(len(xs), bool)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[keep], target[keep], rcond=None)
        resid = np.linalg.norm(target - design @ coef, axis=1)
        keep = resid <= np.quantile(resid, 0.75) + 1e-6
    gy, gx = np.mgrid[0:h, 0:w]
    plane = coef[0] + (gx / w)[..., None] * coef[1] + (gy / h)[..., None] * coef[2]
    return np.linalg.norm(img - plane, axis=2)


@dataclass(frozen=True)
class Region:
    box: Box
    area: int
    colour: tuple[float, float, float]
    contrast: float


def salient_regions(image: np.ndarray) -> tuple[list[Region], np.ndarray]:
    """The frame's foreground components, largest first, and the foreground mask."""
    from scipy import ndimage

    dist = background_distance(image)
    thr = max(MIN_CONTRAST, _otsu(dist))
    fg = ndimage.binary_opening(dist > thr, structure=np.ones((3, 3), bool))
    fg = ndimage.binary_fill_holes(fg)
    labels, n = ndimage.label(fg)
    if n == 0:
        return [], fg
    h, w = fg.shape
    min_area = max(4, int(MIN_AREA * h * w))
    regions = []
    for i, sl in enumerate(ndimage.find_objects(labels), 1):
        inside = labels[sl] == i
        area = int(inside.sum())
        if area < min_area:
            continue
        colour = image[sl][inside].reshape(-1, 3).mean(0)
        box = (float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop))
        contrast = float(dist[sl][inside].mean())
        regions.append(Region(box, area, tuple(float(c) for c in colour), contrast))
    regions.sort(key=lambda r: -r.area)
    return regions, fg


def _words(entity: str) -> list[str]:
    return [w.strip(".,;:!?'\"").lower() for w in entity.split()]


class SaliencyDetector:
    """Salient regions assigned to entities (see the module docstring for the rules)."""

    name = "saliency"

    def detect(self, image: np.ndarray, entities: Sequence[str]) -> list[Detection | None]:
        regions, fg = salient_regions(image)
        used: set[int] = set()
        out: list[Detection | None] = []
        for entity in entities:
            words = _words(entity)
            if words and words[-1] in BACKGROUND_WORDS:
                out.append(_background(fg))
                continue
            free = [i for i in range(len(regions)) if i not in used]
            if not free:
                out.append(None)
                continue
            pick = free[0]
            colours = [COLOUR_WORDS[w] for w in words if w in COLOUR_WORDS]
            if colours:
                ref = np.asarray(colours[0], np.float32)
                far = {i: float(np.linalg.norm(np.subtract(regions[i].colour, ref))) for i in free}
                pick = min(free, key=far.__getitem__)
                if far[pick] > MAX_COLOUR_DISTANCE:  # no region of that colour: not here
                    out.append(None)
                    continue
            used.add(pick)
            r = regions[pick]
            out.append(Detection(r.box, round(min(1.0, r.contrast / 255.0), 4)))
        return out


def _background(fg: np.ndarray) -> Detection | None:
    bg = ~fg
    if not bg.any():
        return None
    ys, xs = np.nonzero(bg)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    return Detection(box, round(float(bg.mean()), 4))


# -- segmentation -----------------------------------------------------------------------------


def box_mask(shape: tuple[int, int], box: Box) -> np.ndarray:
    """A boolean mask of ``shape`` (H, W) that is the box (x0/y0 floored, x1/y1 ceiled)."""
    h, w = shape
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


class BoxSegmenter:
    """The box itself as the mask (no segmentation model)."""

    name = "box"

    def segment(self, image: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        return [box_mask(image.shape[:2], b) for b in boxes]


def clip_box(box: Sequence[float], width: int, height: int) -> Box | None:
    """``box`` clamped to the frame; None when nothing of it is left (or it is not finite)."""
    vals = [float(v) for v in box]
    if len(vals) != 4 or not all(np.isfinite(vals)):
        return None
    x0, x1 = sorted((min(max(vals[0], 0.0), width), min(max(vals[2], 0.0), width)))
    y0, y1 = sorted((min(max(vals[1], 0.0), height), min(max(vals[3], 0.0), height)))
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        return None
    return (x0, y0, x1, y1)


def write_mask(uri: str, mask: np.ndarray) -> None:
    """The mask as an 8-bit PNG of the whole frame (255 inside), written atomically — what
    :func:`ragvid.pipelines.vimi.images.load_ref` reads back."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
    write_bytes_atomic(uri, buf.getvalue())


@dataclass(frozen=True)
class Grounded:
    """An entity bound to a segment of the frame."""

    entity: str
    box: Box
    mask: np.ndarray
    score: float


def ground(
    image: np.ndarray,
    entities: Sequence[str],
    detector: Detector,
    segmenter: Segmenter,
) -> list[Grounded | None]:
    """Detect then segment: one :class:`Grounded` (or None: not found) per entity. A mask the
    segmenter leaves empty falls back to the box (a segment is never empty)."""
    h, w = image.shape[:2]
    found = detector.detect(image, list(entities)) if entities else []
    boxes = {
        i: b
        for i, d in enumerate(found)
        if d is not None and (b := clip_box(d.box, w, h)) is not None
    }
    masks = segmenter.segment(image, list(boxes.values())) if boxes else []
    out: list[Grounded | None] = [None] * len(entities)
    for (i, box), mask in zip(boxes.items(), masks, strict=True):
        mask = np.asarray(mask, bool)
        if mask.shape != (h, w):
            raise ValueError(
                f"segmenter '{segmenter.name}' returned a {mask.shape} mask for a {h}x{w} frame"
            )
        if not mask.any():
            mask = box_mask((h, w), box)
        score = found[i].score if found[i] is not None else 0.0
        out[i] = Grounded(entities[i], box, mask, float(score))
    return out
