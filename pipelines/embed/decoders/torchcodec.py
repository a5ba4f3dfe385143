"""torchcodec (the PyTorch project's decoder; FFmpeg underneath, a CUDA/NVDEC path on GPU).

Frame-accurate (``seek_mode="exact"`` scans the stream once), resize inside FFmpeg
(``transforms=[Resize]``), ``num_ffmpeg_threads`` threads. Decoded frames carry their own pts,
which are the timestamps returned. It needs FFmpeg's shared libraries (4–8) on the system —
on Debian 12: ``apt-get install libavcodec59 libavformat59 libavutil57 libswscale6
libswresample4 libavdevice59 libavfilter8`` — and ``pip install --no-deps torchcodec==0.17.0``
beside torch 2.14 (torchcodec declares no dependencies; ``--no-deps`` keeps torch as it is).
Importing it imports torch (≈1.5 s, once per process).
"""

from __future__ import annotations

import io

import numpy as np

NAME = "torchcodec"
INSTALL = (
    "pip install --no-deps torchcodec==0.17.0, and FFmpeg's shared libraries (Debian 12: apt-get "
    "install libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 "
    "libavfilter8)"
)


def check_available() -> None:
    try:
        from torchcodec._core import ops
    except ImportError as exc:
        raise ValueError(f"decoder 'torchcodec' is not installed ({exc}): {INSTALL}") from None
    if not getattr(ops, "_FFMPEG_AVAILABLE", True):
        raise ValueError(
            "decoder 'torchcodec' is installed but cannot load FFmpeg's shared libraries "
            f"(libavutil.so.56–60 not found): {INSTALL}"
        )


class TorchCodecReader:
    def __init__(
        self, src, target: tuple[int, int] | None, threads: int = 1, device: str | None = None
    ):
        from torchcodec.decoders import VideoDecoder

        self._src = src
        transforms = None
        if target:
            from torchcodec.transforms import Resize

            transforms = [Resize((target[1], target[0]))]
        source = src.getvalue() if isinstance(src, io.BytesIO) else src
        self._dec = VideoDecoder(
            source,
            dimension_order="NHWC",
            num_ffmpeg_threads=max(1, threads),
            seek_mode="exact",
            device=device,
            transforms=transforms,
        )
        meta = self._dec.metadata
        self.total = len(self._dec)
        self.fps = float(meta.average_fps or 0.0)
        self._t0 = float(meta.begin_stream_seconds_from_content or 0.0)
        self._ts: np.ndarray | None = None

    def timestamps(self) -> np.ndarray:
        """From the packets (PyAV demux, no decoding): torchcodec has no public call for the
        pts of every frame. Only sampling by time and keyframe snapping ask for them."""
        if self._ts is None:
            import av

            from ragvid.pipelines.embed.decoders.pyav import packet_index

            if isinstance(self._src, io.BytesIO):
                self._src.seek(0)
            with av.open(self._src) as container:
                stream = container.streams.video[0]
                pts, _ = packet_index(container, stream)
                tb = float(stream.time_base)
            self._ts = (pts - pts[0]) * tb if len(pts) else np.zeros(0, np.float64)
            if len(self._ts) != self.total:  # disagree on the frame count: index-spaced instead
                self._ts = np.arange(self.total) / max(self.fps, 1e-6)
        return self._ts

    def keyframes(self) -> np.ndarray:
        return np.asarray(self._dec._get_key_frame_indices(), np.int64)  # private in 0.17

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = self._dec.get_frames_at([int(i) for i in indices])
        frames = batch.data.cpu().numpy()
        return frames, batch.pts_seconds.numpy().astype(np.float64) - self._t0

    def close(self) -> None:
        self._dec = None


def open_reader(src, target, threads: int = 1) -> TorchCodecReader:
    return TorchCodecReader(src, target, threads)
