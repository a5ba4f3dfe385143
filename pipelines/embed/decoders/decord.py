"""decord: frame-accurate random access (seeks to the keyframe before each frame), resize in
the decoder (``width``/``height``). Last released 2021; no VP9-in-webm issues seen here."""

from __future__ import annotations

import numpy as np

NAME = "decord"


def _import():
    """decord, imported after PyAV: decord's bundled FFmpeg loaded first breaks PyAV's libvpx
    encoder in the same process (avcodec_open2 EINVAL), seen here with PyAV 18 / decord 0.6."""
    import av  # noqa: F401
    import decord

    return decord


def check_available() -> None:
    try:
        _import()
    except ImportError as exc:
        raise ValueError(f"decoder 'decord' is not installed ({exc}): pip install decord") from None


class DecordReader:
    def __init__(self, src, target: tuple[int, int] | None, threads: int = 1):
        decord = _import()
        w, h = target if target else (-1, -1)
        self._vr = decord.VideoReader(
            src, ctx=decord.cpu(0), width=w, height=h, num_threads=max(1, threads)
        )
        self.total = len(self._vr)
        self.fps = float(self._vr.get_avg_fps()) if self.total else 0.0
        self._ts: np.ndarray | None = None

    def timestamps(self) -> np.ndarray:
        if self._ts is None:
            if self.total == 0:
                self._ts = np.zeros(0, np.float64)
            else:
                ts = self._vr.get_frame_timestamp(np.arange(self.total))[:, 0].astype(np.float64)
                self._ts = ts - ts[0]
        return self._ts

    def keyframes(self) -> np.ndarray:
        return np.asarray(self._vr.get_key_indices(), np.int64)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = self._vr.get_batch([int(i) for i in indices]).asnumpy()
        return frames, self.timestamps()[np.asarray(indices, np.int64)]

    def close(self) -> None:
        self._vr = None


def open_reader(src, target, threads: int = 1) -> DecordReader:
    return DecordReader(src, target, threads)
