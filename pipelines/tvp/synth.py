"""A generated text-video prediction dataset in a real TVP layout, for demos and tests.

The demo world's moving shapes (:mod:`ragvid.pipelines.corpus.synth`): each clip shows one
shape moving one way, its caption names the shape and the motion — first frames + a caption
naming the motion → the continuation, the task the paper's datasets pose. Written in the
Something-Something-V2 layout (label JSON files + ``<id>.webm``) or BridgeData's (trajectory
folders of ``im_<i>.jpg`` + ``lang.txt``), which :func:`ragvid.pipelines.tvp.ingest.ingest_tvp`
reads like the real datasets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ragvid.schemas.config import SynthConfig


@dataclass
class TVPSynthReport:
    out_dir: str
    layout: str
    train: int
    val: int


def _write_webm(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libvpx", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def synth_tvp(
    out_dir: str | Path,
    layout: str = "ssv2",
    *,
    train: int = 6,
    val: int = 2,
    num_frames: int = 12,
    size: int = 32,
    seed: int = 0,
) -> TVPSynthReport:
    """Write ``train`` + ``val`` clips of ``num_frames`` frames at ``size``² in ``layout``
    (``ssv2`` | ``bridge``; Bridge has no fixed split: ingest draws its seeded 80/20)."""
    from ragvid.pipelines.corpus.synth import make_clips, render

    if layout not in ("ssv2", "bridge"):
        raise ValueError(f"unknown TVP synth layout {layout!r}: use ssv2 or bridge")
    out = Path(out_dir)
    clips = make_clips(SynthConfig(num_videos=train + val, seed=seed))
    labels: dict[str, list[dict]] = {"train": [], "validation": []}
    for i, clip in enumerate(clips):
        frames = render(clip, size, size, num_frames)
        caption = f"Moving {clip.colour} {clip.shape} {clip.motion}"
        if layout == "ssv2":
            vid = str(1000 + i)
            _write_webm(out / "20bn-something-something-v2" / f"{vid}.webm", frames)
            item = {
                "id": vid,
                "label": caption,
                "template": "Moving [something] " + clip.motion,
                "placeholders": [f"{clip.colour} {clip.shape}"],
            }
            labels["train" if i < train else "validation"].append(item)
        else:
            from PIL import Image

            traj = out / "synth" / clip.motion / "raw" / "traj_group0" / f"traj{i}"
            (traj / "images0").mkdir(parents=True, exist_ok=True)
            for t, f in enumerate(frames):
                Image.fromarray(f).save(traj / "images0" / f"im_{t}.jpg", quality=95)
            (traj / "lang.txt").write_text(caption + "\n")
    if layout == "ssv2":
        (out / "labels").mkdir(parents=True, exist_ok=True)
        for split, items in labels.items():
            path = out / "labels" / f"something-something-v2-{split}.json"
            path.write_text(json.dumps(items))
    return TVPSynthReport(str(out), layout, train, val)
