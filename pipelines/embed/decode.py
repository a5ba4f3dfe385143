"""Frame decoding: one entry point over the decode backends, every failure classified.

``decode_video`` samples T frames (uniform over the frame indices, every n-th frame, or a fixed
rate in seconds — the last uses the real timestamps, so variable-frame-rate files sample
correctly) and returns them with the timestamps of the frames decoded. ``keyframes=True`` moves
each sample to the nearest keyframe (each keyframe once), so a frame costs one keyframe decode
instead of a decode from the GOP's start. Large videos are decoded at reduced size
(``short_side``, resized inside the decoder), which is where decode time goes on a real corpus
(DESIGN.md "Scale").

The backend (``ragvid.pipelines.embed.decoders``: ``decord``, ``pyav``, ``torchcodec``) is
chosen by ``backend`` (``EmbedConfig.decoder``); ``auto`` is decord. A file the chosen backend
fails on is retried with PyAV, the most tolerant one, and the result says which decoded it.
The checks that classify a bad file (missing, empty, truncated, no video stream, too short)
run before and independently of the backend, so the choice never changes what is quarantined.

Failures raise :class:`DecodeError` whose ``error_class`` is one of :data:`ERROR_CLASSES`. The
time limit is real: with ``timeout_s`` set, decoding runs in a persistent helper process
(``python -m ragvid.pipelines.embed.decode --serve``) that is killed and restarted when a video
overruns, so a decoder stuck (or crashing) inside C code never hangs or kills the caller.

A uri is a local path, an fsspec URI (read into memory), or a member of a video2dataset tar
shard read in place, ``tar://<member>::<shard path or URI>`` (see
``ragvid.pipelines.corpus.layouts``): only the member's bytes are read, found from the shard's
header index; a shard or member that is not there is ``missing``, a shard cut short inside the
member ``truncated``. The helper process receives the uri string and keeps its own index cache.
"""

from __future__ import annotations

import io
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from ragvid.schemas import EmbedConfig

ERROR_CLASSES = ("missing", "empty", "truncated", "undecodable", "too_short", "timeout")
Sampling = Literal["uniform", "every_n", "fps"]
STARTUP_LIMIT_S = 120.0


class DecodeError(Exception):
    """A video that cannot be decoded; ``error_class`` says why (see ``ERROR_CLASSES``)."""

    def __init__(self, error_class: str, message: str):
        if error_class not in ERROR_CLASSES:
            raise ValueError(
                f"unknown decode error class '{error_class}'. Available: {ERROR_CLASSES}"
            )
        super().__init__(f"{error_class}: {message}")
        self.error_class = error_class
        self.message = message

    def __reduce__(self):
        return (DecodeError, (self.error_class, self.message))


@dataclass
class DecodedVideo:
    """Sampled frames of one video: ``frames`` uint8 (T, H, W, 3), ``timestamps`` seconds."""

    frames: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray
    total_frames: int
    fps: float
    native_size: tuple[int, int]  # (width, height) of the stream
    backend: str
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# --- sampling --------------------------------------------------------------------------------


def _spread(indices: np.ndarray, k: int) -> np.ndarray:
    """At most ``k`` of ``indices``, evenly spread."""
    if len(indices) <= k:
        return indices
    pick = ((np.arange(k) + 0.5) * len(indices) / k).astype(np.int64)
    return indices[pick]


def sample_indices(
    total: int,
    num_frames: int,
    sampling: Sampling = "uniform",
    *,
    every_n: int = 1,
    fps: float = 1.0,
    timestamps: np.ndarray | None = None,
) -> np.ndarray:
    """Frame indices to decode: T uniform segment centres, every n-th, or one per 1/fps s.

    Fewer frames than T gives every frame once (no repeats); ``fps`` needs the timestamps.
    """
    if total <= 0:
        return np.zeros(0, np.int64)
    if sampling == "uniform":
        if total <= num_frames:
            return np.arange(total, dtype=np.int64)
        return ((np.arange(num_frames) + 0.5) * total / num_frames).astype(np.int64)
    if sampling == "every_n":
        return _spread(np.arange(0, total, max(1, every_n), dtype=np.int64), num_frames)
    if sampling == "fps":
        if timestamps is None or len(timestamps) != total:
            raise ValueError("sampling='fps' needs the timestamps of every frame")
        targets = np.arange(0.0, float(timestamps[-1]) + 1e-9, 1.0 / fps)
        nearest = np.abs(timestamps[None, :] - targets[:, None]).argmin(1)
        return _spread(np.unique(nearest).astype(np.int64), num_frames)
    raise ValueError(f"unknown sampling '{sampling}'. Available: uniform, every_n, fps")


# --- source checks ---------------------------------------------------------------------------


def _local_path(uri: str) -> str | None:
    if uri.startswith("file://"):
        return uri[len("file://") :]
    return None if "://" in uri else uri


def _check_local(path: str, uri: str, what: str = "") -> None:
    if not os.path.exists(path):
        raise DecodeError("missing", f"{uri}: no such file{what}")
    if os.path.isdir(path):
        raise DecodeError("undecodable", f"{uri}: is a directory, not a video file{what}")
    if not os.path.isfile(path):  # a FIFO, socket or device: opening a FIFO would block
        raise DecodeError("undecodable", f"{uri}: not a regular file (a FIFO or device){what}")


def _open_tar_member(uri: str, member: str, shard: str) -> tuple[io.BytesIO, int]:
    """An in-memory copy of one member of a tar shard, read in place: the shard's header
    index (cached per process) gives the member's offset and size, and only that byte range
    is read — a seek locally, a ranged read on a remote store."""
    import tarfile

    from ragvid.pipelines.corpus.layouts import read_tar_member, tar_index

    path = _local_path(shard)
    if path is not None:
        _check_local(path, uri, f" (the tar shard {shard})")
    try:
        index = tar_index(shard, partial=True)
    except FileNotFoundError:
        raise DecodeError("missing", f"{uri}: no tar shard {shard}") from None
    except (tarfile.TarError, EOFError) as exc:
        raise DecodeError("undecodable", f"{uri}: {shard} is not a readable tar ({exc})") from None
    if member not in index:
        raise DecodeError("missing", f"{uri}: the tar shard {shard} has no member {member!r}")
    try:
        data = read_tar_member(shard, member, index)
    except FileNotFoundError:  # the shard went away since it was indexed
        raise DecodeError("missing", f"{uri}: no tar shard {shard}") from None
    except (tarfile.TarError, EOFError) as exc:
        raise DecodeError("truncated", f"{uri}: {exc}") from None
    return io.BytesIO(data), len(data)


def _open_source(uri: str) -> tuple[str | io.BytesIO, int]:
    """A path (local), or an in-memory copy (a remote fsspec URI; a ``tar://<member>::<shard>``
    member of a video2dataset shard, of just that member) and its size in bytes."""
    if uri.startswith("tar://"):
        from ragvid.pipelines.corpus.layouts import split_tar_uri

        in_tar = split_tar_uri(uri)
        if in_tar:
            return _open_tar_member(uri, *in_tar)
    path = _local_path(uri)
    if path is not None:
        _check_local(path, uri)
        return path, os.path.getsize(path)
    import fsspec

    try:
        with fsspec.open(uri, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise DecodeError("missing", f"{uri}: no such object") from None
    return io.BytesIO(data), len(data)


def _read_head(src: str | io.BytesIO, n: int, offset: int = 0) -> bytes:
    if isinstance(src, io.BytesIO):
        return src.getbuffer()[offset : offset + n].tobytes()
    with open(src, "rb") as fh:
        fh.seek(offset)
        return fh.read(n)


def mp4_truncation(src: str | io.BytesIO, size: int) -> str | None:
    """If ``src`` is an ISO-BMFF (mp4/mov) file whose top-level boxes run past the end of the
    file, say which box is cut; ``None`` if complete or not an mp4."""
    if _read_head(src, 8)[4:8] != b"ftyp":
        return None
    offset = 0
    while offset + 8 <= size:
        head = _read_head(src, 16, offset)
        box_size, kind = struct.unpack(">I", head[:4])[0], head[4:8].decode("latin-1")
        if box_size == 1 and len(head) >= 16:
            box_size = struct.unpack(">Q", head[8:16])[0]
        elif box_size == 0:
            return None  # box extends to the end of the file by definition
        if box_size < 8:
            return f"corrupt '{kind}' box at byte {offset}"
        if offset + box_size > size:
            return f"'{kind}' box at byte {offset} needs {box_size} bytes, file ends at {size}"
        offset += box_size
    return None


_EBML_HEADER, _SEGMENT = 0x1A45DFA3, 0x18538067


def _ebml_vint(buf: bytes, pos: int, keep_marker: bool) -> tuple[int, int, bool]:
    """(value, length, all-ones) of the EBML variable-length integer at ``pos``."""
    first = buf[pos]  # IndexError past the end: the file stops inside the header
    length = 9 - first.bit_length() if first else 9
    if length > 8:
        raise ValueError("bad EBML integer")
    if pos + length > len(buf):
        raise IndexError("EBML integer past the end")
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for b in buf[pos + 1 : pos + length]:
        value = (value << 8) | b
    ones = not keep_marker and value == (1 << (7 * length)) - 1
    return value, length, ones


def webm_truncation(src: str | io.BytesIO, size: int) -> str | None:
    """If ``src`` is a Matroska/WebM file whose Segment declares more bytes than the file has,
    say so; ``None`` if complete, of unknown size (a live stream), or not Matroska."""
    head = _read_head(src, 64)
    if len(head) < 4 or int.from_bytes(head[:4], "big") != _EBML_HEADER:
        return None
    try:
        hsize, hlen, _ = _ebml_vint(head, 4, keep_marker=False)
        pos = 4 + hlen + hsize
        head = _read_head(src, 16, pos)
        sid, slen, _ = _ebml_vint(head, 0, keep_marker=True)
        if sid != _SEGMENT:
            return None
        seg_size, vlen, unknown = _ebml_vint(head, slen, keep_marker=False)
    except ValueError:
        return None  # not a Matroska header after all: the probe says what it is
    except IndexError:
        return f"file ends inside its EBML header ({size} bytes)"
    if unknown:
        return None
    end = pos + slen + vlen + seg_size
    if end > size:
        return f"Segment at byte {pos} needs {end - pos} bytes, file ends at {size}"
    return None


# --- backends --------------------------------------------------------------------------------


def _probe(src: str | io.BytesIO, uri: str) -> tuple[int, int, int]:
    """(width, height, frames-in-header) of the first video stream, via PyAV (header only)."""
    import av

    try:
        with av.open(src) as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise DecodeError(
                    "undecodable", f"{uri}: no video stream (streams: {', '.join(kinds)})"
                )
            stream = container.streams.video[0]
            return stream.codec_context.width, stream.codec_context.height, int(stream.frames)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any open failure is "undecodable"
        raise DecodeError("undecodable", f"{uri}: not a readable video ({exc})") from None
    finally:
        if isinstance(src, io.BytesIO):
            src.seek(0)


def _target_size(
    native: tuple[int, int], size: tuple[int, int] | None, short_side: int | None
) -> tuple[int, int] | None:
    if size is not None:
        return size
    w, h = native
    if short_side is None or min(w, h) <= short_side:
        return None
    scale = short_side / min(w, h)
    return max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2)


def _reader(name: str, src, target, threads: int):
    from ragvid.pipelines.embed.decoders import load_backend

    return load_backend(name).open_reader(src, target, threads)


def _decode_with(name, src, target, threads, choose):
    """Open ``src`` with backend ``name``, choose the frames, read them."""
    if isinstance(src, io.BytesIO):
        src.seek(0)
    reader = _reader(name, src, target, threads)
    try:
        idx = choose(reader)
        if len(idx) == 0:
            return np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0), idx, reader.total, reader.fps
        frames, ts = reader.read(idx)
        return frames, ts, idx, reader.total, reader.fps
    finally:
        reader.close()


def decode_inprocess(
    uri: str,
    num_frames: int = 8,
    sampling: Sampling = "uniform",
    *,
    every_n: int = 1,
    fps: float = 1.0,
    size: tuple[int, int] | None = None,
    short_side: int | None = None,
    min_frames: int = 2,
    backend: str = "auto",
    keyframes: bool = False,
    threads: int = 1,
    start_s: float | None = None,
    end_s: float | None = None,
) -> DecodedVideo:
    """``decode_video`` without the time limit (runs in the calling process)."""
    from ragvid.pipelines.embed.decoders import ORDER, load_backend, nearest_keyframes

    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: must be ≥ 1")
    if backend not in ORDER:
        raise ValueError(f"unknown decoder backend '{backend}'. Available: {', '.join(ORDER)}")
    if threads < 1:
        raise ValueError(f"threads={threads}: must be ≥ 1")
    load_backend(ORDER[backend][0])  # an unusable backend is a setup error, not a bad video
    started = time.perf_counter()
    src, nbytes = _open_source(uri)
    if nbytes == 0:
        raise DecodeError("empty", f"{uri}: file is empty (0 bytes)")
    cut = mp4_truncation(src, nbytes) or webm_truncation(src, nbytes)
    if cut:
        raise DecodeError("truncated", f"{uri}: file is truncated ({cut})")
    width, height, _ = _probe(src, uri)
    target = _target_size((width, height), size, short_side)
    notes = [] if target is None else [f"decoded at {target[0]}x{target[1]}"]
    short: list[int] = []

    window = start_s is not None or end_s is not None
    if window and keyframes:
        raise ValueError("keyframes=True with start_s/end_s: snap within a clip is not supported")

    def choose(reader) -> np.ndarray:
        total = reader.total
        ts = reader.timestamps() if sampling == "fps" or keyframes or window else None
        inside = None
        if window:  # a clip of the video (Epic-Kitchens narrations): its frames only
            lo = -np.inf if start_s is None else start_s
            hi = np.inf if end_s is None else end_s
            inside = np.flatnonzero((ts >= lo) & (ts <= hi))
            total, ts = len(inside), ts[inside]
        if total < min_frames:  # the same verdict whichever backend counted
            short.append(total)
            return np.zeros(0, np.int64)
        idx = sample_indices(total, num_frames, sampling, every_n=every_n, fps=fps, timestamps=ts)
        if keyframes:
            idx = nearest_keyframes(ts, reader.keyframes(), idx)
        return idx if inside is None else inside[idx]

    order = ORDER[backend]
    for n, name in enumerate(order):
        try:
            frames, ts, idx, total, rate = _decode_with(name, src, target, threads, choose)
            used = name
            break
        except Exception as exc:  # noqa: BLE001 - decoders' errors are untyped; fall back
            if n + 1 < len(order):
                notes.append(f"{name} failed ({str(exc).splitlines()[0][:200]}); used {order[-1]}")
                continue
            raise DecodeError("undecodable", f"{uri}: {name} could not decode it ({exc})") from None
    if short:
        raise DecodeError(
            "too_short",
            f"{uri}: {short[0]} decodable frame(s)"
            + (f" in [{start_s}, {end_s}] s" if window else "")
            + f", need at least {min_frames}",
        )
    return DecodedVideo(
        frames=np.ascontiguousarray(frames),
        timestamps=np.asarray(ts, np.float32),
        indices=np.asarray(idx, np.int64),
        total_frames=int(total),
        fps=float(rate),
        native_size=(int(width), int(height)),
        backend=used,
        seconds=time.perf_counter() - started,
        notes=notes,
    )


# --- the time limit: a persistent helper process ----------------------------------------------


def _send(fh, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    fh.write(struct.pack(">Q", len(data)) + data)
    fh.flush()


def _recv_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class _Helper:
    """One decode helper process per calling process, restarted after a kill or a crash."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragvid.pipelines.embed.decode", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:  # start-up (imports) is not counted against a video's time limit
            fd = proc.stdout.fileno()
            n = struct.unpack(">Q", _recv_exact(fd, 8, time.monotonic() + STARTUP_LIMIT_S))[0]
            pickle.loads(_recv_exact(fd, n, None))
        except (TimeoutError, EOFError):
            proc.kill()
            proc.wait()
            raise RuntimeError(
                "the decode helper process did not start (python -m ragvid.pipelines.embed.decode "
                "--serve); check that decord and av import in this environment"
            ) from None
        return proc

    def _kill(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        return proc.wait()

    def call(self, kwargs: dict, timeout_s: float) -> DecodedVideo:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._start()
            proc = self.proc
            try:
                _send(proc.stdin, kwargs)
            except (BrokenPipeError, OSError):
                self._kill()
                self.proc = proc = self._start()
                _send(proc.stdin, kwargs)
            deadline = time.monotonic() + timeout_s
            try:
                n = struct.unpack(">Q", _recv_exact(proc.stdout.fileno(), 8, deadline))[0]
                reply = pickle.loads(_recv_exact(proc.stdout.fileno(), n, None))
            except TimeoutError:
                self._kill()
                raise DecodeError(
                    "timeout", f"{kwargs['uri']}: decoding took longer than {timeout_s:g} s"
                ) from None
            except EOFError:
                code = self._kill()
                raise DecodeError(
                    "undecodable", f"{kwargs['uri']}: the decoder crashed (exit code {code})"
                ) from None
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "decode_error":
            raise DecodeError(reply[1], reply[2])
        raise ValueError(reply[1])


_HELPER = _Helper()


def _serve() -> None:
    """Helper-process loop: read kwargs, decode, write the result; exit on EOF."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    import av  # noqa: F401 - pay the imports once, before the first deadline
    import decord  # noqa: F401

    _send(stdout, ("ready",))
    while True:
        head = stdin.read(8)
        if len(head) < 8:
            return
        kwargs = pickle.loads(stdin.read(struct.unpack(">Q", head)[0]))
        delay = kwargs.pop("_test_delay_s", 0.0)
        try:
            if delay:
                time.sleep(delay)
            reply = ("ok", decode_inprocess(**kwargs))
        except DecodeError as exc:
            reply = ("decode_error", exc.error_class, exc.message)
        except ValueError as exc:
            reply = ("value_error", str(exc))
        except Exception as exc:  # noqa: BLE001 - anything else is an undecodable file
            reply = ("decode_error", "undecodable", f"{kwargs['uri']}: {exc!r}")
        _send(stdout, reply)


def decode_video(
    uri: str,
    num_frames: int = 8,
    sampling: Sampling = "uniform",
    *,
    every_n: int = 1,
    fps: float = 1.0,
    size: tuple[int, int] | None = None,
    short_side: int | None = None,
    min_frames: int = 2,
    timeout_s: float | None = 60.0,
    backend: str = "auto",
    keyframes: bool = False,
    threads: int = 1,
    start_s: float | None = None,
    end_s: float | None = None,
    _test_delay_s: float = 0.0,
) -> DecodedVideo:
    """Decode ``num_frames`` frames of the video at ``uri`` (a path, an fsspec URI or a
    ``tar://<member>::<shard>`` member).

    ``size=(w, h)`` decodes at exactly that size; ``short_side=s`` scales down (never up) so
    the shorter side is ``s``, keeping the aspect ratio. Fewer than ``min_frames`` decodable
    frames is ``too_short``. ``timeout_s`` bounds the wall time per video (helper process);
    ``None`` decodes in-process with no limit. ``backend`` is ``auto``, ``decord``, ``pyav``
    or ``torchcodec``; ``keyframes`` snaps samples to the nearest keyframes; ``threads`` is
    the decoder's thread count. ``start_s`` / ``end_s`` (seconds, inclusive) restrict the
    sampling to the frames of that clip (an annotated segment of a long video).
    """
    kwargs = dict(
        uri=str(uri),
        num_frames=num_frames,
        sampling=sampling,
        every_n=every_n,
        fps=fps,
        size=size,
        short_side=short_side,
        min_frames=min_frames,
        backend=backend,
        keyframes=keyframes,
        threads=threads,
    )
    if start_s is not None or end_s is not None:  # only when given: old helpers keep working
        kwargs.update(start_s=start_s, end_s=end_s)
    if timeout_s is None:
        return decode_inprocess(**kwargs)
    if _test_delay_s:
        kwargs["_test_delay_s"] = _test_delay_s
    return _HELPER.call(kwargs, timeout_s)


DECODE_STAGE = "decode"


def decode_row(row: dict, config: EmbedConfig, short_side: int | None) -> dict:
    """Decode one manifest row; failures come back as a row with ``error_class`` set."""
    started = time.perf_counter()
    out = {k: row[k] for k in ("video_id", "uri", "caption")}
    try:
        video = decode_video(
            row["uri"],
            num_frames=config.num_frames,
            sampling=config.sampling,
            every_n=config.every_n,
            fps=config.fps,
            short_side=short_side,
            timeout_s=config.decode_timeout_s,
            backend=config.decoder,
            keyframes=config.keyframes,
            threads=config.decode_threads,
        )
        out.update(frames=video.frames, frame_ts=video.timestamps, error_class=None, message="")
    except DecodeError as exc:
        out.update(frames=None, frame_ts=None, error_class=exc.error_class, message=str(exc))
    out["decode_s"] = time.perf_counter() - started
    out["stage"] = DECODE_STAGE
    return out


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    # Serve from the importable module, so replies pickle as ragvid.pipelines.embed.decode.* types.
    from ragvid.pipelines.embed.decode import _serve as serve

    serve()
