"""Decode backends (decord, PyAV, torchcodec) on real mp4 / webm files written here: the same
frames and timestamps, the same quarantine verdicts, keyframe sampling that returns the
timestamps it decoded, and the benchmark scene generator."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from ragvid.pipelines.corpus.scenes import SceneConfig, encode_clip, render, scene_corpus
from ragvid.pipelines.embed.decode import DecodeError, decode_row, decode_video, webm_truncation
from ragvid.pipelines.embed.decoders import BACKENDS, load_backend, nearest_keyframes
from ragvid.schemas import EmbedConfig

FPS, GOP, SIZE = 24, 12, (160, 90)


def _usable(name: str) -> bool:
    try:
        load_backend(name)
    except ValueError:
        return False
    return True


BACKEND_PARAMS = [
    pytest.param(
        b, marks=pytest.mark.skipif(not _usable(b), reason=f"decoder '{b}' not usable here")
    )
    for b in BACKENDS
]


def _write(path, codec: str, frames: int = 2 * FPS, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    encode_clip(render(rng, SIZE, frames), str(path), SIZE, FPS, GOP, codec)
    return str(path)


def _full_decode(path: str) -> list[tuple[float, bool, np.ndarray]]:
    """(seconds from the first frame, keyframe?, rgb) of every frame, decoded in order."""
    out = []
    with av.open(path) as c:
        for f in c.decode(video=0):
            out.append(
                (float(f.pts * f.time_base), bool(f.key_frame), f.to_ndarray(format="rgb24"))
            )
    t0 = out[0][0]
    return [(t - t0, k, a) for t, k, a in out]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("backends")
    mp4 = _write(d / "ok.mp4", "h264")
    webm = _write(d / "ok.webm", "vp9", seed=1)
    out = {"dir": d, "mp4": mp4, "webm": webm}
    for kind, path in (("mp4", mp4), ("webm", webm)):
        data = open(path, "rb").read()
        (d / f"truncated.{kind}").write_bytes(data[: len(data) // 2])
        (d / f"empty.{kind}").write_bytes(b"")
        (d / f"text.{kind}").write_bytes(b"not a video at all\n" * 20)
        out[f"one.{kind}"] = _write(d / f"one.{kind}", "h264" if kind == "mp4" else "vp9", 1)
        out[f"full.{kind}"] = _full_decode(path)
    return out


BAD = [
    ("missing.mp4", "missing"),
    ("empty.mp4", "empty"),
    ("empty.webm", "empty"),
    ("truncated.mp4", "truncated"),
    ("truncated.webm", "truncated"),
    ("text.mp4", "undecodable"),
    ("text.webm", "undecodable"),
    ("one.mp4", "too_short"),
    ("one.webm", "too_short"),
]


def _matches_full(video, full) -> None:
    """Each returned frame is the full decode's frame at the returned timestamp."""
    times = np.array([t for t, _, _ in full])
    for frame, ts in zip(video.frames, video.timestamps, strict=True):
        j = int(np.abs(times - ts).argmin())
        assert abs(times[j] - ts) < 1e-3, f"{ts} is not a decoded frame's timestamp"
        assert np.abs(frame.astype(int) - full[j][2]).mean() < 1.0


@pytest.mark.parametrize("kind", ["mp4", "webm"])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_uniform_frames_and_timestamps(files, backend, kind):
    v = decode_video(files[kind], num_frames=8, timeout_s=None, backend=backend)
    assert v.backend == backend and not any("failed" in n for n in v.notes)
    assert v.total_frames == 2 * FPS and v.frames.shape == (8, SIZE[1], SIZE[0], 3)
    assert list(v.indices) == [3, 9, 15, 21, 27, 33, 39, 45]
    np.testing.assert_allclose(v.timestamps, v.indices / FPS, atol=2e-3)
    _matches_full(v, files[f"full.{kind}"])


@pytest.mark.parametrize("kind", ["mp4", "webm"])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_keyframe_sampling_returns_what_it_decoded(files, backend, kind):
    full = files[f"full.{kind}"]
    key_times = [t for t, k, _ in full if k]
    assert len(key_times) == 4  # 2 s at a keyframe every 12 frames
    v = decode_video(files[kind], num_frames=8, timeout_s=None, backend=backend, keyframes=True)
    assert v.backend == backend
    # every returned timestamp is a keyframe's pts in the full decode, each once, in order
    np.testing.assert_allclose(v.timestamps, key_times, atol=1e-3)
    assert list(v.indices) == [0, 12, 24, 36]
    _matches_full(v, full)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_resize_and_threads(files, backend):
    one = decode_video(files["mp4"], 4, short_side=46, timeout_s=None, backend=backend)
    assert one.frames.shape == (4, 46, 82, 3) and any("decoded at 82x46" in n for n in one.notes)
    two = decode_video(files["mp4"], 4, timeout_s=None, backend=backend, threads=2)
    ref = decode_video(files["mp4"], 4, timeout_s=None, backend=backend)
    np.testing.assert_array_equal(two.frames, ref.frames)


@pytest.mark.parametrize("name, error_class", BAD)
@pytest.mark.parametrize("backend", ["auto", *BACKEND_PARAMS])
def test_quarantine_classes(files, backend, name, error_class):
    uri = str(files["dir"] / name)
    with pytest.raises(DecodeError) as info:
        decode_video(uri, timeout_s=None, backend=backend)
    assert info.value.error_class == error_class and uri in str(info.value)


def test_backend_never_changes_what_is_quarantined(files):
    """decode_row over good and planted files, through the time-limited helper: the same
    verdict per file for every backend and for keyframe sampling."""
    names = ["ok.mp4", "ok.webm", *(n for n, _ in BAD)]
    rows = [{"video_id": n, "uri": str(files["dir"] / n), "caption": "c"} for n in names]
    verdicts = {}
    for backend in ["auto", *(b for b in BACKENDS if _usable(b))]:
        for keyframes in (False, True):
            cfg = EmbedConfig(encoder="tiny", decoder=backend, keyframes=keyframes)
            verdicts[backend, keyframes] = {
                r["video_id"]: decode_row(r, cfg, None)["error_class"] for r in rows
            }
    expected = {"ok.mp4": None, "ok.webm": None, **dict(BAD)}
    for key, got in verdicts.items():
        assert got == expected, key


def test_helper_process_passes_the_backend(files):
    a = decode_video(files["webm"], 5, timeout_s=30, backend="pyav", keyframes=True)
    b = decode_video(files["webm"], 5, timeout_s=None, backend="pyav", keyframes=True)
    assert a.backend == "pyav"
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)


def test_pyav_decodes_only_the_needed_gops(files):
    from ragvid.pipelines.embed.decoders.pyav import PyAVReader

    reader = PyAVReader(files["mp4"], None)
    frames, ts = reader.read(np.array([0, 12, 24, 36]))  # the keyframes: a seek to each
    assert reader.seeks == 4 and frames.shape[0] == 4
    np.testing.assert_allclose(ts, [0, 0.5, 1.0, 1.5], atol=1e-3)
    reader.seeks = 0
    frames, ts = reader.read(np.array([14, 17, 20]))  # one GOP: one seek, then decode forward
    assert reader.seeks == 1
    np.testing.assert_allclose(ts, np.array([14, 17, 20]) / FPS, atol=1e-3)
    reader.close()


def test_unknown_or_unusable_backend_fails_up_front(files):
    with pytest.raises(ValueError, match="Available: auto, decord, pyav, torchcodec"):
        decode_video(files["mp4"], timeout_s=None, backend="ffmpeg-cli")
    with pytest.raises(ValueError):
        EmbedConfig(encoder="tiny", decoder="ffmpeg-cli")


def test_nearest_keyframes():
    ts = np.arange(50) / 25.0
    keys = np.array([0, 25, 50 - 1])
    assert list(nearest_keyframes(ts, keys, np.array([3, 10, 13, 40, 47]))) == [0, 25, 49]
    assert list(nearest_keyframes(ts, np.array([], np.int64), np.array([3]))) == [3]


def test_webm_truncation(files):
    data = open(files["webm"], "rb").read()
    assert webm_truncation(files["webm"], len(data)) is None
    cut = str(files["dir"] / "truncated.webm")
    assert "Segment" in webm_truncation(cut, len(data) // 2)
    assert webm_truncation(files["mp4"], 100) is None  # not Matroska


def test_scene_corpus(tmp_path):
    cfg = SceneConfig(num_videos=2, size=(64, 36), min_s=1.0, max_s=1.0, webm_share=0.5, seed=2)
    records = scene_corpus(str(tmp_path), cfg)
    assert sorted(r["codec"] for r in records) == ["h264", "vp9"]
    meta = json.loads((tmp_path / "scenes.json").read_text())
    assert len(meta["clips"]) == 2 and (tmp_path / "results_0.csv").exists()
    for r in records:
        full = _full_decode(str(tmp_path / r["contentUrl"]))
        assert len(full) == r["frames"] == 25 and full[0][2].shape == (36, 64, 3)
        keys = [i for i, (_, k, _) in enumerate(full) if k]
        assert keys[0] == 0 and all(np.diff(keys) == r["gop"])  # a regular GOP
    with pytest.raises(ValueError, match="min_s"):
        SceneConfig(min_s=5, max_s=2).check()


def test_decord_import_leaves_pyav_encoders_working(tmp_path):
    """decord's bundled FFmpeg, loaded before PyAV's, broke PyAV's VP9 encoder in the same
    process; the decord backend imports PyAV first. Fresh process: import order is the test."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from ragvid.pipelines.embed.decoders import load_backend\n"
        "load_backend('decord')\n"
        "from ragvid.pipelines.corpus.scenes import encode_clip, render\n"
        f"encode_clip(render(np.random.default_rng(0), (64, 36), 3), {str(tmp_path / 'x.webm')!r},"
        " (64, 36), 25, 12, 'vp9')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
