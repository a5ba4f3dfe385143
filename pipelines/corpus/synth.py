"""A generated demo corpus in the WebVid layout, with known truth.

Each clip is a coloured shape (circle, square, triangle, star, cross) moving over a plain or
gradient background (left/right/up/down/diagonal, rotating, zooming or static; slow or fast),
encoded as real H.264 in mp4 with PyAV's bundled **libx264** (yuv420p, ``crf`` 23,
one thread). Same seed, same CSV and exactly the same rendered frames; the encoded mp4s
decode to the same frames up to encoder noise (this x264 build is not always bit-for-bit
reproducible between processes: 1–2 of 12 clips differed in ~1 of 3 runs, even with the codec
context single-threaded and PYTHONHASHSEED fixed; cause not found). Captions
name shape, colour and motion in varied sentence templates; the attributes are also written
as extra CSV columns so retrieval and dedup results can be checked against ground truth.

Planted faults, so downstream stages are tested on the mess real corpora contain:

* near-duplicates (``planted="duplicate"``, ``duplicate_of`` = the original's id) — the same
  rendered content re-encoded at another CRF, resized, or trimmed by one or two frames, so
  their CLIP embeddings stay nearly identical to the original's;
* bad files: ``zero_byte``, ``truncated`` (an mp4 cut before its ``moov`` atom),
  ``not_a_video`` (text named ``.mp4``) and ``missing`` (a CSV row whose file does not exist).

Layout written to ``out_dir``::

    results_0.csv         videoid, contentUrl, duration, page_dir, name, <truth columns>
    videos/<videoid>.mp4
    synth.json            the config and the counts (SynthReport)
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import av
import numpy as np
from matplotlib.path import Path as PolyPath
from PIL import Image

from ragvid.schemas.config import SynthConfig
from ragvid.schemas.io import join, makedirs, write_bytes_atomic, write_json_atomic

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (150, 40, 190),
}
BACKGROUNDS = {"black": (10, 10, 10), "grey": (128, 128, 128), "white": (245, 245, 245)}
BACKGROUND_NAMES = (*BACKGROUNDS, "gradient")
MOTIONS = ("left", "right", "up", "down", "diagonal", "rotate", "zoom", "static")
SPEEDS = ("slow", "fast")
BAD_KINDS = ("zero_byte", "truncated", "not_a_video", "missing")
DUP_KINDS = ("reencode", "resize", "trim")
# motions whose frames are the same set (reversed order) over the same path
_STYLE_AXES = {
    "horizontal": ("left", "right"),
    "vertical": ("up", "down"),
    "diagonal": ("diagonal",),
    "rotate": ("rotate",),
    "zoom": ("zoom",),
    "static": ("static",),
}

CSV_COLUMNS = (
    "videoid",
    "contentUrl",
    "duration",
    "page_dir",
    "name",
    "shape",
    "colour",
    "motion",
    "background",
    "speed",
    "duplicate_of",
    "planted",
)

_MOTION_PHRASES = {
    "left": ("moving left", "sliding to the left", "drifting leftwards"),
    "right": ("moving right", "sliding to the right", "drifting rightwards"),
    "up": ("moving up", "rising upwards", "sliding upwards"),
    "down": ("moving down", "falling downwards", "sliding downwards"),
    "diagonal": ("moving diagonally", "travelling diagonally", "crossing the frame diagonally"),
    "rotate": ("rotating", "spinning in place", "turning around"),
    "zoom": ("growing larger", "zooming in", "expanding"),
    "static": ("standing still", "staying still", "resting motionless"),
}
_BG_PHRASES = {
    "black": "a black background",
    "grey": "a grey background",
    "white": "a white background",
    "gradient": "a dark gradient background",
}
_TEMPLATES = (
    "{A} {colour} {shape} {motion} on {bg}.",
    "{Colour} {shape} {motion} {speedly}.",
    "Video of {a} {colour} {shape} {motion} against {bg}",
    "a {speed} {colour} {shape} {motion}",
    "Animation: {colour} {shape}, {motion}, on {bg}",
    "Close-up of {a} {colour} {shape} {motion} {speedly}",
)


@dataclass(frozen=True)
class Clip:
    """Ground truth of one generated clip."""

    shape: str
    colour: str
    motion: str
    background: str
    speed: str
    x0: float  # start centre, fraction of width
    y0: float  # start centre, fraction of height
    size: float  # radius, fraction of height
    angle0: float
    caption: str


@dataclass
class SynthReport:
    """What ``synth_corpus`` wrote: paths and counts per kind of row."""

    out_dir: str
    csv_path: str
    videos_dir: str
    num_rows: int
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    config: dict = field(default_factory=dict)

    @property
    def num_good(self) -> int:
        """Rows whose video decodes (originals + duplicates)."""
        return self.counts.get("original", 0) + self.counts.get("duplicate", 0)


def _check(config: SynthConfig) -> None:
    if config.width % 2 or config.height % 2:
        raise ValueError(
            f"SynthConfig width={config.width}, height={config.height}: H.264 (yuv420p) needs "
            "even frame sizes — pick even numbers"
        )
    if config.num_duplicates > config.num_videos:
        raise ValueError(
            f"SynthConfig num_duplicates={config.num_duplicates} exceeds num_videos="
            f"{config.num_videos}: each planted copy needs its own original"
        )


def make_clips(config: SynthConfig) -> list[Clip]:
    """Balanced, seeded attributes: every shape×colour combination recurs as often as
    ``num_videos`` allows, so text→video retrieval by shape and colour has several targets."""
    rng = np.random.default_rng([config.seed, 1])
    combos = [(s, c) for s in SHAPES for c in COLOURS]
    order: list[tuple[str, str]] = []
    while len(order) < config.num_videos:
        order += [combos[i] for i in rng.permutation(len(combos))]
    # distinct clips of one shape×colour never share a motion axis *and* a background (until
    # all 24 pairs are used): the video embedding (Eq. 3) is a frame mean, blind to order, so
    # "left" and "right" (or "up" and "down") over one path are the same frames, and one
    # object sliding the same way on the same background at another speed is nearly so; two
    # such clips would be near-copies and a near-duplicate detector right to group them
    styles = [(axis, bg) for axis in _STYLE_AXES for bg in BACKGROUND_NAMES]
    queues: dict[tuple[str, str], list[int]] = {}
    clips = []
    for i in range(config.num_videos):
        shape, colour = order[i]
        queue = queues.setdefault((shape, colour), [])
        if not queue:
            queue.extend(rng.permutation(len(styles)).tolist())
        axis, background = styles[queue.pop()]
        motion = _STYLE_AXES[axis][int(rng.integers(len(_STYLE_AXES[axis])))]
        speed = SPEEDS[int(rng.integers(len(SPEEDS)))]
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        phrase = _MOTION_PHRASES[motion][int(rng.integers(3))]
        caption = template.format(
            colour=colour,
            Colour=colour.capitalize(),
            a="an" if colour[0] in "aeiou" else "a",
            A="An" if colour[0] in "aeiou" else "A",
            shape=shape,
            motion=phrase,
            bg=_BG_PHRASES[background],
            speed=speed,
            speedly="slowly" if speed == "slow" else "quickly",
        )
        clips.append(
            Clip(
                shape=shape,
                colour=colour,
                motion=motion,
                background=background,
                speed=speed,
                x0=float(rng.uniform(0.35, 0.65)),
                y0=float(rng.uniform(0.35, 0.65)),
                size=float(rng.uniform(0.18, 0.26)),
                angle0=float(rng.uniform(0, 2 * np.pi)),
                caption=caption,
            )
        )
    return clips


def _outline(shape: str, n: int = 64) -> np.ndarray:
    """Unit outline (radius 1) of a shape as polygon vertices."""
    if shape == "circle":
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "square":
        a = np.pi / 4 + np.arange(4) * np.pi / 2
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "triangle":
        a = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if shape == "cross":
        t = 0.33
        return np.array(
            [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t),
             (-1, t), (-1, -t), (-t, -t)],
            dtype=float,
        )  # fmt: skip
    raise ValueError(f"unknown shape '{shape}'. Available: {list(SHAPES)}")


def render(clip: Clip, width: int, height: int, num_frames: int) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of one clip."""
    ys, xs = np.mgrid[0:height, 0:width]
    points = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)
    if clip.background == "gradient":
        ramp = np.linspace(20, 90, width)[None, :, None]
        bg = np.broadcast_to(ramp * np.array([0.6, 0.7, 1.0]), (height, width, 3))
    else:
        bg = np.broadcast_to(np.array(BACKGROUNDS[clip.background], float), (height, width, 3))
    bg = bg.astype(np.uint8)
    colour = np.array(COLOURS[clip.colour], np.uint8)
    amp = 0.22 if clip.speed == "slow" else 0.5
    outline = _outline(clip.shape)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        u = t / max(num_frames - 1, 1) - 0.5  # -0.5 … 0.5
        cx, cy, radius, angle = clip.x0 * width, clip.y0 * height, clip.size * height, clip.angle0
        if clip.motion == "left":
            cx -= u * amp * width
        elif clip.motion == "right":
            cx += u * amp * width
        elif clip.motion == "up":
            cy -= u * amp * height
        elif clip.motion == "down":
            cy += u * amp * height
        elif clip.motion == "diagonal":
            cx += u * amp * width
            cy += u * amp * height
        elif clip.motion == "rotate":
            angle += u * (np.pi / 2 if clip.speed == "slow" else 2 * np.pi)
        elif clip.motion == "zoom":
            radius *= 1.0 + u * (0.6 if clip.speed == "slow" else 1.2)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        verts = outline @ rot.T * radius + np.array([cx, cy])
        inside = PolyPath(verts).contains_points(points).reshape(height, width)
        frame = bg.copy()
        frame[inside] = colour
        frames[t] = frame
    return frames


def _yuv_frame(rgb: np.ndarray, size: tuple[int, int]) -> av.VideoFrame:
    """An RGB array as a yuv420p frame of ``size`` (BT.601 limited range), converted here.

    Done in NumPy/PIL rather than swscale so the encoder input is exactly reproducible
    (swscale leaves row padding uninitialised); planes are copied into zero-padded rows.
    """
    if (rgb.shape[1], rgb.shape[0]) != size:
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    h, w = y.shape
    planes = [y] + [c.reshape(h // 2, 2, w // 2, 2).mean((1, 3)) for c in (u, v)]
    frame = av.VideoFrame(w, h, "yuv420p")
    for data, plane in zip(planes, frame.planes, strict=True):
        buf = np.zeros((plane.height, plane.line_size), np.uint8)
        buf[:, : plane.width] = np.clip(np.rint(data), 0, 255).astype(np.uint8)
        plane.update(buf.tobytes())
    return frame


def encode_mp4(
    frames: np.ndarray, fps: int, crf: int = 23, size: tuple[int, int] | None = None
) -> bytes:
    """H.264 mp4 bytes (libx264, yuv420p); ``size=(w, h)`` rescales while encoding."""
    height, width = frames.shape[1:3]
    size = size or (width, height)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        # the codec context's own thread settings make libx264 single-threaded (the "threads"
        # option alone does not); it still differs run to run on a few clips (see docstring)
        stream.codec_context.thread_count = 1
        stream.codec_context.thread_type = "NONE"
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        for i, arr in enumerate(frames):
            frame = _yuv_frame(arr, size)
            frame.pts, frame.time_base = i, Fraction(1, fps)  # unset: bytes varied per run
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _duration(num_frames: int, fps: int) -> str:
    """WebVid's ISO-8601 duration (whole seconds, as in results_*.csv)."""
    s = max(1, round(num_frames / fps))
    return f"PT{s // 3600:02d}H{s % 3600 // 60:02d}M{s % 60:02d}S"


def _page_dir(i: int) -> str:
    lo = i // 50 * 50 + 1
    return f"{lo:06d}_{lo + 49:06d}"


def synth_corpus(
    out_dir: str,
    config: SynthConfig | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SynthReport:
    """Write the demo corpus (see module docstring) to ``out_dir``; deterministic by seed.

    Rerunning overwrites every file atomically. ``on_progress(done, total)`` is called per
    written row (the CLI's progress bar).
    """
    config = config or SynthConfig()
    _check(config)
    started = time.perf_counter()
    out_dir = str(out_dir).rstrip("/")
    videos_dir = join(out_dir, "videos")
    makedirs(videos_dir)
    rng = np.random.default_rng([config.seed, 2])
    clips = make_clips(config)
    n, fps, T = config.num_videos, config.fps, config.num_frames
    ids = [str(1_000_000 + config.seed % 1000 * 10_000 + i) for i in range(n)]
    dup_sources = sorted(rng.choice(n, size=config.num_duplicates, replace=False).tolist())
    total = n + config.num_duplicates + config.num_bad
    rows: list[dict[str, str]] = []
    counts = {"original": 0, "duplicate": 0, **{k: 0 for k in BAD_KINDS}}
    cache: dict[int, np.ndarray] = {}

    def row(i: int, vid: str, clip: Clip, num_frames: int, dup_of: str, planted: str) -> dict:
        return {
            "videoid": vid,
            "contentUrl": f"videos/{vid}.mp4",
            "duration": _duration(num_frames, fps),
            "page_dir": _page_dir(i),
            "name": clip.caption,
            "shape": clip.shape,
            "colour": clip.colour,
            "motion": clip.motion,
            "background": clip.background,
            "speed": clip.speed,
            "duplicate_of": dup_of,
            "planted": planted,
        }

    def tick() -> None:
        if on_progress:
            on_progress(len(rows), total)

    dup_set = set(dup_sources)
    for i, clip in enumerate(clips):
        frames = render(clip, config.width, config.height, T)
        if i in dup_set:
            cache[i] = frames
        write_bytes_atomic(join(videos_dir, f"{ids[i]}.mp4"), encode_mp4(frames, fps))
        rows.append(row(i, ids[i], clip, T, "", ""))
        counts["original"] += 1
        tick()

    next_id = 1_000_000 + config.seed % 1000 * 10_000 + n
    for j, src in enumerate(dup_sources):
        kind = DUP_KINDS[j % len(DUP_KINDS)]
        frames = cache.pop(src)
        vid = str(next_id)
        next_id += 1
        if kind == "reencode":
            data = encode_mp4(frames, fps, crf=int(rng.choice([30, 34])))
        elif kind == "resize":
            # 1.5× with a width that is a multiple of 16: decord 0.6 returns 4-channel frames
            # for some widths (72×48 and 48×32 do; 96×64, 80×54, 144×96 don't)
            w = max(16, round(config.width * 1.5 / 16) * 16)
            h = max(2, round(config.height * w / config.width / 2) * 2)
            data = encode_mp4(frames, fps, crf=26, size=(w, h))
        else:  # trim one or two frames off the ends
            cut = int(rng.integers(1, 3))
            frames = frames[cut:] if j % 2 else frames[:-cut]
            data = encode_mp4(frames, fps)
        write_bytes_atomic(join(videos_dir, f"{vid}.mp4"), data)
        rows.append(row(n + j, vid, clips[src], len(frames), ids[src], "duplicate"))
        counts["duplicate"] += 1
        tick()

    bad_clips = make_clips(config.model_copy(update={"seed": config.seed + 7919}))
    for j in range(config.num_bad):
        kind = BAD_KINDS[j % len(BAD_KINDS)]
        clip = bad_clips[j % len(bad_clips)]
        vid = str(next_id)
        next_id += 1
        path = join(videos_dir, f"{vid}.mp4")
        if kind == "zero_byte":
            write_bytes_atomic(path, b"")
        elif kind == "truncated":
            data = encode_mp4(render(clip, config.width, config.height, T), fps)
            write_bytes_atomic(path, data[: len(data) * 2 // 5])
        elif kind == "not_a_video":
            write_bytes_atomic(path, b"This is a caption file, not a video.\n" * 8)
        rows.append(row(n + config.num_duplicates + j, vid, clip, T, "", kind))
        counts[kind] += 1
        tick()

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = join(out_dir, "results_0.csv")
    write_bytes_atomic(csv_path, buf.getvalue().encode("utf-8"))
    report = SynthReport(
        out_dir=out_dir,
        csv_path=csv_path,
        videos_dir=videos_dir,
        num_rows=len(rows),
        counts=counts,
        seconds=round(time.perf_counter() - started, 3),
        config=config.model_dump(),
    )
    write_json_atomic(join(out_dir, "synth.json"), asdict(report))
    return report
