"""The generated demo corpus: WebVid layout, real decodable H.264, planted faults, determinism."""

from __future__ import annotations

import collections
import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest

from ragvid.pipelines.corpus.synth import (
    BAD_KINDS,
    COLOURS,
    CSV_COLUMNS,
    SHAPES,
    make_clips,
    render,
    synth_corpus,
)
from ragvid.schemas import SynthConfig


def _rows(report) -> list[dict[str, str]]:
    with open(report.csv_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])


def test_layout_and_counts(demo_corpus_raw):
    rows = _rows(demo_corpus_raw)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert len(rows) == demo_corpus_raw.num_rows == 32 + 4 + 4
    planted = collections.Counter(r["planted"] for r in rows)
    assert planted == {"": 32, "duplicate": 4, **{k: 1 for k in BAD_KINDS}}
    assert demo_corpus_raw.counts["original"] == 32
    ids = [r["videoid"] for r in rows]
    assert len(set(ids)) == len(ids)
    for r in rows:
        assert r["contentUrl"] == f"videos/{r['videoid']}.mp4"
        assert r["duration"] == "PT00H00M02S"
        assert r["shape"] in r["name"] and r["colour"] in r["name"].lower()
    meta = json.loads(Path(demo_corpus_raw.out_dir, "synth.json").read_text())
    assert meta["counts"] == demo_corpus_raw.counts


def test_good_videos_decode_with_expected_size(demo_corpus_raw):
    base = Path(demo_corpus_raw.out_dir)
    rows = _rows(demo_corpus_raw)
    originals = [r for r in rows if r["planted"] == ""]
    for r in originals[:6]:
        frames = _decode(base / r["contentUrl"])
        assert frames.shape == (24, 64, 96, 3)
        assert frames.std() > 5  # a shape on a background, not a blank clip
        # the named colour dominates the non-background pixels of the first frame
        target = np.array(COLOURS[r["colour"]], float)
        dist = np.linalg.norm(frames[0].reshape(-1, 3).astype(float) - target, axis=1)
        assert (dist < 60).sum() > 20


def test_duplicates_are_near_copies_of_their_original(demo_corpus_raw):
    base = Path(demo_corpus_raw.out_dir)
    rows = _rows(demo_corpus_raw)
    by_id = {r["videoid"]: r for r in rows}
    dups = [r for r in rows if r["planted"] == "duplicate"]
    assert {len(_decode(base / d["contentUrl"])) for d in dups} & {22, 23}  # a trimmed copy
    for d in dups:
        src = by_id[d["duplicate_of"]]
        assert src["planted"] == "" and d["name"] == src["name"] and d["shape"] == src["shape"]
        a = _decode(base / src["contentUrl"]).astype(float).mean(0)
        b = _decode(base / d["contentUrl"]).astype(float).mean(0)
        if b.shape != a.shape:  # the resized copy: compare at its size
            import PIL.Image

            a = np.asarray(
                PIL.Image.fromarray(a.astype(np.uint8)).resize(b.shape[1::-1]), dtype=float
            )
        assert np.abs(a - b).mean() < 12, d


def test_planted_bad_files_are_bad(demo_corpus_raw):
    base = Path(demo_corpus_raw.out_dir)
    bad = {r["planted"]: base / r["contentUrl"] for r in _rows(demo_corpus_raw) if r["planted"]}
    assert not bad["missing"].exists()
    assert bad["zero_byte"].stat().st_size == 0
    assert bad["not_a_video"].read_bytes().startswith(b"This is")
    assert bad["truncated"].stat().st_size > 100
    for kind in ("zero_byte", "truncated", "not_a_video"):
        with pytest.raises(av.error.InvalidDataError):
            _decode(bad[kind])


def _assert_same_corpus(x: Path, y: Path) -> None:
    """Same files; same bytes except decodable mp4s, which must decode to the same size and
    frame count and (x264 here is not always bit-for-bit reproducible) near-equal pixels."""
    names = sorted(p.relative_to(x).as_posix() for p in x.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(y).as_posix() for p in y.rglob("*") if p.is_file())
    for name in names:
        if name == "synth.json":
            continue
        a, b = (x / name).read_bytes(), (y / name).read_bytes()
        try:
            fa, fb = _decode(x / name), _decode(y / name)
        except av.error.InvalidDataError:
            assert a == b, name
            continue
        assert fa.shape == fb.shape, name
        assert np.abs(fa.astype(float) - fb).mean() < 1.0, name


def test_deterministic_by_seed(tmp_path):
    cfg = SynthConfig(num_videos=5, num_duplicates=3, num_bad=4, num_frames=6, seed=3)
    a = synth_corpus(str(tmp_path / "a"), cfg)
    b = synth_corpus(str(tmp_path / "b"), cfg)
    assert a.counts == b.counts
    assert Path(a.csv_path).read_bytes() == Path(b.csv_path).read_bytes()
    _assert_same_corpus(tmp_path / "a", tmp_path / "b")
    synth_corpus(str(tmp_path / "a"), cfg)  # rerun in place: the same corpus, no leftovers
    _assert_same_corpus(tmp_path / "a", tmp_path / "b")
    c = synth_corpus(str(tmp_path / "c"), cfg.model_copy(update={"seed": 4}))
    assert Path(c.csv_path).read_text() != Path(a.csv_path).read_text()


def test_rendering_is_exactly_reproducible():
    clips = make_clips(SynthConfig(num_videos=6, seed=5))
    assert clips == make_clips(SynthConfig(num_videos=6, seed=5))
    for clip in clips:
        np.testing.assert_array_equal(render(clip, 32, 16, 3), render(clip, 32, 16, 3))


def test_default_size_covers_every_shape_colour_several_times():
    clips = make_clips(SynthConfig())
    combos = collections.Counter((c.shape, c.colour) for c in clips)
    assert len(combos) == len(SHAPES) * len(COLOURS)
    assert min(combos.values()) >= 5
    assert len({c.caption for c in clips}) > 0.8 * len(clips)  # varied wording


def test_distinct_clips_of_one_shape_colour_differ_in_axis_or_background():
    """Two clips of one shape+colour sliding along one axis on one background are near-copies
    to a frame-mean embedding; the demo corpus never makes them (its dedup truth relies on it)."""
    from ragvid.pipelines.corpus.synth import _STYLE_AXES

    axis_of = {m: a for a, ms in _STYLE_AXES.items() for m in ms}
    seen = collections.Counter(
        (c.shape, c.colour, axis_of[c.motion], c.background) for c in make_clips(SynthConfig())
    )
    assert max(seen.values()) == 1


def test_bad_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="even"):
        synth_corpus(str(tmp_path), SynthConfig(width=95))
    with pytest.raises(ValueError, match="num_duplicates"):
        synth_corpus(str(tmp_path), SynthConfig(num_videos=2, num_duplicates=3))


def test_every_good_video_opens_in_decord(demo_corpus_raw):
    """decord is the project's decoder; it returns 4-channel frames for some widths."""
    import decord

    base = Path(demo_corpus_raw.out_dir)
    for r in _rows(demo_corpus_raw):
        if r["planted"] in ("", "duplicate"):
            reader = decord.VideoReader(str(base / r["contentUrl"]))
            frame = reader[len(reader) - 1].asnumpy()
            assert frame.ndim == 3 and frame.shape[-1] == 3 and len(reader) >= 22
