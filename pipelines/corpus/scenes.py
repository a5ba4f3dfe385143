"""A generated corpus shaped like WebVid for decode benchmarks: textured scenes, camera motion.

The demo synth (``synth.py``) draws flat shapes on plain backgrounds at 96×64: it compresses to
almost nothing and decodes in no time, so it measures Ray overhead rather than the decoder.
These clips are what a decoder meets on a real corpus: a multi-octave noise texture with edges
(stripes, blobs) under a camera that pans and zooms, plus a moving object, at 640×360 or
1280×720, 10–30 s at 25 fps, H.264 (libx264, a keyframe every ``gop`` frames, B-frames as
x264's ``veryfast`` preset makes them) in mp4, and a share as VP9 in webm (as SSv2 ships).

Frames are rendered and encoded one at a time (a 720p 30 s clip never sits in memory); the
RGB → yuv420p conversion is swscale's (the demo synth's exact NumPy conversion is ~8× slower
at 720p, and bit-exact reproducibility does not matter for timing). Same seed, same scenes.

Layout written to ``out_dir`` (WebVid's, so ``ragvid ingest`` reads it as it reads the synth)::

    results_0.csv    videoid, contentUrl, duration, page_dir, name, codec, width, height, gop
    videos/<videoid>.mp4 | .webm
    scenes.json      the config and one record per clip
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from ragvid.pipelines.corpus.synth import _duration, _page_dir

SIZES = {"360p": (640, 360), "720p": (1280, 720)}


@dataclass(frozen=True)
class SceneConfig:
    """What to generate: ``num_videos`` clips of ``size`` (w, h), ``min_s``–``max_s`` long."""

    num_videos: int = 8
    size: tuple[int, int] = (640, 360)
    min_s: float = 10.0
    max_s: float = 30.0
    fps: int = 25
    gop_s: tuple[float, float] = (1.0, 2.0)  # a keyframe every 1–2 s, drawn per clip
    webm_share: float = 0.25  # share of clips as VP9/webm, the rest H.264/mp4
    crf: int = 18  # H.264; VP9 gets crf + 10. ~0.4 Mbit/s at 360p, ~1.5 at 720p
    seed: int = 0

    def check(self) -> None:
        if self.num_videos < 1:
            raise ValueError(f"num_videos={self.num_videos}: must be ≥ 1")
        if min(self.size) < 16 or self.size[0] % 2 or self.size[1] % 2:
            raise ValueError(f"size={self.size}: need even sides ≥ 16 (yuv420p)")
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"min_s={self.min_s}, max_s={self.max_s}: need 0 < min_s ≤ max_s")
        if not 0 <= self.webm_share <= 1:
            raise ValueError(f"webm_share={self.webm_share}: must be in [0, 1]")


def _noise(rng: np.random.Generator, w: int, h: int, octaves: int = 8) -> np.ndarray:
    """Value noise in [0, 1], (h, w): random grids upsampled bilinearly, coarse to fine."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 4 * 2**o
        grid = rng.random((max(2, h * cells // w), cells), dtype=np.float32)
        img = Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BILINEAR)
        out += amp * np.asarray(img)
        total += amp
        amp *= 0.75
    out -= out.min()
    return out / max(float(out.max()), 1e-6)  # full range: contrast at every scale


def texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A colour texture (h, w, 3) uint8 with detail at every scale and some hard edges."""
    base = np.stack([_noise(rng, w, h) for _ in range(3)], -1)
    tint = rng.random(3, dtype=np.float32) * 0.4 + 0.6
    img = base * tint
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(24, 96)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0.6
    img[stripes] = img[stripes] * 0.4 + 0.5
    for _ in range(12):  # blobs: hard-edged discs of a flat colour
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, h / 6)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img[disc] = rng.random(3, dtype=np.float32)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def render(
    rng: np.random.Generator, size: tuple[int, int], num_frames: int
) -> Iterator[np.ndarray]:
    """Frames (h, w, 3) of one scene: a camera window panning (and slowly zooming) over a
    texture 1.6× the frame, and a bright object crossing the frame."""
    w, h = size
    tw, th = int(w * 1.6) // 2 * 2, int(h * 1.6) // 2 * 2
    tex = texture(rng, tw, th)
    x0, y0 = rng.uniform(0, tw - w), rng.uniform(0, th - h)
    x1, y1 = rng.uniform(0, tw - w), rng.uniform(0, th - h)
    zoom = rng.uniform(0.0, 0.25)  # crop shrinks by up to this share, then scaled back
    obj_c = rng.integers(100, 256, 3).astype(np.uint8)
    obj_r = int(h * rng.uniform(0.06, 0.12))
    oy, vy = rng.uniform(obj_r, h - obj_r), rng.uniform(-0.3, 0.3) * h
    for i in range(num_frames):
        t = i / max(1, num_frames - 1)
        z = 1.0 - zoom * t
        cw, ch = int(w * z) // 2 * 2, int(h * z) // 2 * 2
        cx = int(x0 + (x1 - x0) * t + (w - cw) / 2)
        cy = int(y0 + (y1 - y0) * t + (h - ch) / 2)
        crop = tex[cy : cy + ch, cx : cx + cw]
        frame = crop if (cw, ch) == (w, h) else np.asarray(Image.fromarray(crop).resize((w, h)))
        frame = frame.copy()
        ox = int(-obj_r + (w + 2 * obj_r) * t)
        oyi = int(np.clip(oy + vy * t, obj_r, h - obj_r))
        frame[max(0, oyi - obj_r) : oyi + obj_r, max(0, ox - obj_r) : max(0, ox + obj_r)] = obj_c
        yield frame


def encode_clip(
    frames: Iterator[np.ndarray],
    path: str,
    size: tuple[int, int],
    fps: int,
    gop: int,
    codec: str = "h264",
    crf: int = 23,
) -> int:
    """Encode frames to ``path`` (H.264 mp4 or VP9 webm) with a keyframe every ``gop`` frames
    (x264 scene cuts off, so the GOP is regular); returns the frame count."""
    fmt = {"h264": "mp4", "vp9": "webm"}[codec]
    n = 0
    with av.open(path, "w", format=fmt) as container:
        stream = container.add_stream("libx264" if codec == "h264" else "libvpx-vp9", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = gop
        stream.codec_context.thread_count = 1
        if codec == "h264":
            stream.options = {
                "crf": str(crf),
                "preset": "veryfast",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
            }
        else:
            stream.options = {
                "crf": str(crf + 10),
                "b": "0",
                "deadline": "realtime",
                "cpu-used": "8",
                "g": str(gop),
                "keyint_min": str(gop),
            }
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = n, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
            n += 1
        for packet in stream.encode():
            container.mux(packet)
    return n


def scene_corpus(out_dir: str, config: SceneConfig, progress=None) -> list[dict]:
    """Write ``config.num_videos`` clips and the WebVid-style CSV; returns one record per clip
    (id, path, codec, size, frames, seconds, gop). Local ``out_dir`` only."""
    config.check()
    rng = np.random.default_rng(config.seed)
    os.makedirs(f"{out_dir}/videos", exist_ok=True)
    n_webm = round(config.num_videos * config.webm_share)
    webm = set(rng.choice(config.num_videos, n_webm, replace=False).tolist())
    records = []
    started = time.perf_counter()
    for i in range(config.num_videos):
        seconds = float(rng.uniform(config.min_s, config.max_s))
        frames = max(2, round(seconds * config.fps))
        gop = max(1, round(rng.uniform(*config.gop_s) * config.fps))
        codec = "vp9" if i in webm else "h264"
        vid = f"s{config.size[1]}_{i:05d}"
        rel = f"videos/{vid}.{'webm' if codec == 'vp9' else 'mp4'}"
        clip_rng = np.random.default_rng([config.seed, i])
        n = encode_clip(
            render(clip_rng, config.size, frames),
            f"{out_dir}/{rel}",
            config.size,
            config.fps,
            gop,
            codec,
            config.crf,
        )
        records.append(
            {
                "videoid": vid,
                "contentUrl": rel,
                "duration": _duration(n, config.fps),
                "page_dir": _page_dir(i),
                "name": f"a textured scene, camera panning, {codec}",
                "codec": codec,
                "width": config.size[0],
                "height": config.size[1],
                "gop": gop,
                "frames": n,
                "bytes": os.path.getsize(f"{out_dir}/{rel}"),
            }
        )
        if progress:
            progress(i + 1, config.num_videos)
    with open(f"{out_dir}/results_0.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    with open(f"{out_dir}/scenes.json", "w") as fh:
        json.dump(
            {
                "config": asdict(config),
                "seconds": round(time.perf_counter() - started, 2),
                "clips": records,
            },
            fh,
            indent=1,
        )
    return records
