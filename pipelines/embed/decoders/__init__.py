"""Decode backends behind one small interface: open a video, say what frames it has, read some.

Each backend module (``decord``, ``pyav``, ``torchcodec``) has ``open_reader(src, target,
threads)`` returning a :class:`Reader`; ``ragvid.pipelines.embed.decode.decode_video`` is the
one entry point that chooses the frames (sampling, keyframe snapping) and classifies failures,
so the quarantine semantics never depend on the backend. ``src`` is a local path or an
in-memory ``io.BytesIO``; ``target`` is ``(width, height)`` to decode at (decoder-side resize)
or ``None`` for the native size; ``threads`` is the decoder's thread count.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

BACKENDS = ("decord", "pyav", "torchcodec")
DECODERS = ("auto", *BACKENDS)
# what each `decoder` setting tries, in order; PyAV (sequential, most tolerant) is the fallback
ORDER = {
    "auto": ("decord", "pyav"),
    "decord": ("decord", "pyav"),
    "pyav": ("pyav",),
    "torchcodec": ("torchcodec", "pyav"),
}


class Reader(Protocol):
    """One opened video stream. Frame ``i`` is the i-th in presentation (pts) order."""

    total: int  # frames in the stream
    fps: float

    def timestamps(self) -> np.ndarray:
        """Seconds of every frame from the first frame, float64 (total,)."""

    def keyframes(self) -> np.ndarray:
        """Indices of the keyframes (frames decodable without earlier ones), sorted."""

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 (len(indices), H, W, 3) and the seconds (from the first frame) of the
        frames that were actually decoded."""

    def close(self) -> None: ...


def load_backend(name: str):
    """The backend module for ``name``; an unknown or unusable one fails saying why and how to
    fix it (never a silent switch to another backend)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown decoder backend '{name}'. Available: {', '.join(DECODERS)}")
    module = importlib.import_module(f"ragvid.pipelines.embed.decoders.{name}")
    module.check_available()
    return module


def nearest_keyframes(timestamps: np.ndarray, keyframes: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """For each sampled frame ``idx``, the keyframe nearest to it in time (ties: the earlier);
    each keyframe once, in order — so there may be fewer frames than samples."""
    if len(idx) == 0 or len(keyframes) == 0:
        return np.asarray(idx, np.int64)
    kt = timestamps[keyframes]
    pos = np.searchsorted(kt, timestamps[idx])
    lo = np.clip(pos - 1, 0, len(kt) - 1)
    hi = np.clip(pos, 0, len(kt) - 1)
    t = timestamps[idx]
    pick = np.where(np.abs(kt[hi] - t) < np.abs(t - kt[lo]), hi, lo)
    return np.unique(np.asarray(keyframes, np.int64)[pick])
