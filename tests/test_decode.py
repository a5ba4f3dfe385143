"""Frame decoding: sampling, timestamps, reduced-size decode, every error class, time limit."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from ragvid.pipelines.embed.decode import (
    DecodeError,
    decode_video,
    mp4_truncation,
    sample_indices,
)


def _frames(n: int, w: int = 96, h: int = 64) -> np.ndarray:
    """A bright square moving right over a dark background: frame i is distinguishable."""
    out = np.full((n, h, w, 3), 20, np.uint8)
    for i in range(n):
        x = 4 + i * (w - 24) // max(n - 1, 1)
        out[i, h // 2 - 8 : h // 2 + 8, x : x + 16] = (230, 40, 40)
    return out


def _write_mp4(path, frames: np.ndarray, fps: int = 12, pts: list[int] | None = None) -> str:
    """H.264 mp4 via PyAV; ``pts`` (in 1/1000 s) makes a variable-frame-rate file."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"preset": "ultrafast", "threads": "1"}
        if pts is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i, arr in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            if pts is not None:
                f.pts, f.time_base = pts[i], Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("decode")
    ok = _write_mp4(d / "ok.mp4", _frames(24))
    data = open(ok, "rb").read()
    (d / "truncated.mp4").write_bytes(data[: len(data) * 2 // 5])
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_bytes(b"not a video at all\n" * 20)
    one = _write_mp4(d / "one.mp4", _frames(1))
    with av.open(str(d / "audio.mp4"), "w") as c:  # audio-only mp4
        s = c.add_stream("aac", rate=8000)
        s.layout = "mono"
        for i in range(10):
            fr = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            fr.sample_rate, fr.pts = 8000, i * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    vfr_pts = [0, 40, 80, 400, 440, 900, 940, 1500, 1540, 2000]
    vfr = _write_mp4(d / "vfr.mp4", _frames(len(vfr_pts)), pts=vfr_pts)
    big = _write_mp4(d / "big.mp4", _frames(3, w=1920, h=1080))
    return {
        "dir": d,
        "ok": ok,
        "one": one,
        "vfr": vfr,
        "vfr_pts": vfr_pts,
        "big": big,
        **{k: str(d / f"{k}.mp4") for k in ("truncated", "empty", "text", "audio")},
    }


def test_uniform_sampling_frames_and_timestamps(videos):
    v = decode_video(videos["ok"], num_frames=8, timeout_s=None)
    assert v.frames.shape == (8, 64, 96, 3) and v.frames.dtype == np.uint8
    assert v.total_frames == 24 and v.backend == "decord"
    assert list(v.indices) == [1, 4, 7, 10, 13, 16, 19, 22]  # segment centres
    np.testing.assert_allclose(v.timestamps, v.indices / 12.0, atol=1e-3)
    # the moving square really is at a different place in each sampled frame
    red_x = [np.argwhere(f[..., 0] > 150)[:, 1].mean() for f in v.frames]
    assert np.all(np.diff(red_x) > 0)


def test_same_result_through_the_time_limited_helper(videos):
    a = decode_video(videos["ok"], num_frames=5, timeout_s=None)
    b = decode_video(videos["ok"], num_frames=5, timeout_s=30)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)


@pytest.mark.parametrize(
    "name, error_class",
    [
        ("missing", "missing"),
        ("empty", "empty"),
        ("truncated", "truncated"),
        ("text", "undecodable"),
        ("audio", "undecodable"),
        ("one", "too_short"),
    ],
)
@pytest.mark.parametrize("timeout_s", [None, 30])
def test_error_classes(videos, name, error_class, timeout_s):
    uri = videos.get(name, str(videos["dir"] / "no-such-file.mp4"))
    with pytest.raises(DecodeError) as info:
        decode_video(uri, timeout_s=timeout_s)
    assert info.value.error_class == error_class
    assert uri in str(info.value)
    if name == "audio":
        assert "no video stream" in str(info.value)


def test_truncation_names_the_cut_box(videos):
    from ragvid.pipelines.embed.decode import _open_source

    src, size = _open_source(videos["truncated"])
    assert "mdat" in mp4_truncation(src, size) or "moov" in mp4_truncation(src, size)
    src, size = _open_source(videos["ok"])
    assert mp4_truncation(src, size) is None


def test_variable_frame_rate_keeps_real_timestamps(videos):
    pts = np.asarray(videos["vfr_pts"]) / 1000.0
    v = decode_video(videos["vfr"], num_frames=10, timeout_s=None)
    np.testing.assert_allclose(v.timestamps, pts, atol=2e-3)
    # one frame per second by *time*, not by index: nearest frames to t = 0, 1, 2 s
    v = decode_video(videos["vfr"], num_frames=10, sampling="fps", fps=1.0, timeout_s=None)
    np.testing.assert_allclose(v.timestamps, [0.0, 0.94, 2.0], atol=2e-3)


def test_large_video_decoded_at_reduced_size(videos):
    v = decode_video(videos["big"], num_frames=3, short_side=64, timeout_s=30)
    assert v.native_size == (1920, 1080)
    assert v.frames.shape[1:] == (64, 114, 3)
    assert any("decoded at" in n for n in v.notes)


def test_time_limit_kills_a_stuck_decode_and_recovers(videos):
    with pytest.raises(DecodeError) as info:
        decode_video(videos["ok"], timeout_s=0.5, _test_delay_s=30)
    assert info.value.error_class == "timeout"
    v = decode_video(videos["ok"], num_frames=2, timeout_s=30)  # fresh helper
    assert v.frames.shape[0] == 2


def test_sample_indices():
    assert list(sample_indices(4, 8)) == [0, 1, 2, 3]  # no repeats for short videos
    assert list(sample_indices(100, 4)) == [12, 37, 62, 87]
    assert list(sample_indices(10, 8, "every_n", every_n=3)) == [0, 3, 6, 9]
    assert len(sample_indices(1000, 8, "every_n", every_n=2)) == 8
    with pytest.raises(ValueError, match="timestamps"):
        sample_indices(10, 4, "fps")
    with pytest.raises(ValueError, match="Available"):
        sample_indices(10, 4, "random")


def test_fifo_is_called_what_it_is_and_never_opened(tmp_path):
    import os

    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(DecodeError, match="not a regular file") as info:
        decode_video(str(fifo), timeout_s=None)  # opening it would block forever
    assert info.value.error_class == "undecodable"
