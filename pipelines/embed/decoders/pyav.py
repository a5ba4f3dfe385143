"""PyAV (FFmpeg): the most tolerant backend, and the fallback for the others.

The stream is indexed from its packets (pts and keyframe flags, no decoding). Reading seeks to
the keyframe before a wanted frame only when that skips whole GOPs, decodes forward to it, and
converts (and resizes, in swscale) only the wanted frames; the timestamps returned are the pts
of the frames decoded. If seeking misbehaves (a damaged index), it decodes the stream
sequentially from the start instead, as the previous PyAV fallback did.
"""

from __future__ import annotations

import io

import numpy as np

NAME = "pyav"


def check_available() -> None:
    try:
        import av  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"decoder 'pyav' is not installed ({exc}): pip install av") from None


def packet_index(container, stream) -> tuple[np.ndarray, np.ndarray]:
    """(pts in stream time-base units, keyframe flags) of every frame in presentation order,
    from the packets alone."""
    pts, key = [], []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None:
            continue
        pts.append(packet.pts)
        key.append(packet.is_keyframe)
    order = np.argsort(np.asarray(pts, np.int64), kind="stable")
    return np.asarray(pts, np.int64)[order], np.asarray(key, bool)[order]


class PyAVReader:
    def __init__(self, src, target: tuple[int, int] | None, threads: int = 1):
        import av

        if isinstance(src, io.BytesIO):
            src.seek(0)
        self._container = av.open(src)
        self._stream = stream = self._container.streams.video[0]
        if threads > 1:
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = threads
        else:
            stream.thread_type = "NONE"
        self._tb = float(stream.time_base)
        self.fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        self._pts, self._key = packet_index(self._container, stream)
        self.total = len(self._pts)
        self._convert = {"format": "rgb24"}
        if target:
            self._convert.update(width=target[0], height=target[1])
        self.seeks = 0  # how many times reading sought (for tests / benchmarks)

    def timestamps(self) -> np.ndarray:
        if self.total == 0:
            return np.zeros(0, np.float64)
        return (self._pts - self._pts[0]) * self._tb

    def keyframes(self) -> np.ndarray:
        return np.flatnonzero(self._key).astype(np.int64)

    def _seconds(self, pts: list[int]) -> np.ndarray:
        return (np.asarray(pts, np.int64) - self._pts[0]) * self._tb

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        try:
            got = self._read_seeking(np.unique(indices))
        except Exception:  # noqa: BLE001 - a damaged index: decode it all, in order
            got = None
        if got is None:
            got = self._read_sequential(np.unique(indices))
        frames = np.stack([got[int(i)][0] for i in indices])
        return frames, self._seconds([got[int(i)][1] for i in indices])

    def _decode_from(self, pts: int | None):
        """Frames from the keyframe at or before ``pts`` (``None``: from the start)."""
        if pts is not None:
            self._container.seek(int(pts), stream=self._stream, backward=True, any_frame=False)
            self.seeks += 1
        else:
            self._container.seek(0)
        for packet in self._container.demux(self._stream):
            yield from packet.decode()

    def _read_seeking(self, wanted: np.ndarray) -> dict[int, tuple[np.ndarray, int]] | None:
        """Frame index → (pixels, pts) of the frame decoded for it: the first with pts ≥ the
        wanted frame's (the frame itself on an intact stream)."""
        key_idx = np.flatnonzero(self._key)
        if len(key_idx) == 0:
            return None
        got: dict[int, tuple[np.ndarray, int]] = {}
        frames = None
        pos = -1  # index of the last frame decoded (presentation order), -1: none yet
        for i in wanted:
            k = key_idx[np.searchsorted(key_idx, i, side="right") - 1] if i >= key_idx[0] else 0
            if frames is None or pos >= i or k > pos + 1:  # a whole GOP or more to skip
                frames = self._decode_from(int(self._pts[k]) if i >= key_idx[0] else None)
            target = self._pts[i]
            for frame in frames:
                if frame.pts is None:
                    return None
                if frame.pts < target:
                    pos = int(np.searchsorted(self._pts, frame.pts))
                    continue
                got[int(i)] = (frame.to_ndarray(**self._convert), int(frame.pts))
                pos = int(np.searchsorted(self._pts, frame.pts))
                break
            else:
                return None  # ran out of frames before the wanted one
        return got

    def _read_sequential(self, wanted: np.ndarray) -> dict[int, tuple[np.ndarray, int]]:
        """Decode from the start, frame n of the decoder's output standing for index n."""
        want = {int(i) for i in wanted}
        got: dict[int, tuple[np.ndarray, int]] = {}
        self._container.seek(0)
        last = None
        for n, frame in enumerate(self._container.decode(self._stream)):
            pts = frame.pts if frame.pts is not None else int(self._pts[min(n, self.total - 1)])
            last = (frame, pts)
            if n in want:
                got[n] = (frame.to_ndarray(**self._convert), int(pts))
                if len(got) == len(want):
                    break
        if last is None:
            raise ValueError("no frame decodes")
        for i in want - got.keys():  # fewer frames decode than packets: the last one stands in
            got[i] = (last[0].to_ndarray(**self._convert), int(last[1]))
        return got

    def close(self) -> None:
        self._container.close()


def open_reader(src, target, threads: int = 1) -> PyAVReader:
    return PyAVReader(src, target, threads)
