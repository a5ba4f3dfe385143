"""mp4 in and out with PyAV: the pipeline's video files and RagInit's retrieved clips."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def export_to_mp4(frames: np.ndarray, path: str | os.PathLike, fps: int = 8) -> str:
    """Write uint8 (F, H, W, 3) or float [0, 1] frames to an H.264 mp4 (atomic rename)."""
    import av

    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be (frames, height, width, 3), got {arr.shape}")
    h, w = arr.shape[1:3]
    # yuv420p needs even sizes; pad by edge replication rather than failing
    arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height = arr.shape[2], arr.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in arr:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return str(path)


def read_video(uri: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """Decode all (or the first `max_frames`) frames → uint8 (F, H, W, 3). fsspec URIs work."""
    import av

    from ragvid.schemas.io import fs_and_path

    fs, p = fs_and_path(uri)
    frames = []
    try:
        with fs.open(p, "rb") as fh, av.open(fh) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames and len(frames) >= max_frames:
                    break
    except av.error.FFmpegError as e:
        raise ValueError(f"{uri}: cannot decode video ({e})") from e
    if not frames:
        raise ValueError(f"{uri}: no decodable video frames")
    return np.stack(frames)
