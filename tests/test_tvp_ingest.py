"""TVP datasets → manifests on Beam: generated SSv2 / BridgeData V1 / Epic-Kitchens-100
layouts (real webm / jpg / mp4 files), every input row in the manifest or the rejects with a
reason, and the paper's validation protocols in the ``split`` column."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from ragvid.model.video_io import export_to_mp4, read_video
from ragvid.pipelines.corpus.split import val_mask
from ragvid.pipelines.tvp.ingest import ingest_tvp
from ragvid.schemas.config import FCAConfig, ManifestConfig, SplitConfig
from ragvid.schemas.io import read_parts
from ragvid.schemas.tables import MANIFEST, REJECTS

CONFIG = ManifestConfig(num_shards=2, max_failure_ratio=0.9)


def frames(n=4, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)


def write_webm(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libvpx", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i, f in enumerate(arr):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 8)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def run(dataset, root, tmp_path, fca=None):
    report = ingest_tvp(
        dataset, str(root), str(tmp_path / "m"), str(tmp_path / "r"), CONFIG, fca or FCAConfig()
    )
    rows = read_parts(str(tmp_path / "m"), MANIFEST).to_pylist()
    rejects = read_parts(str(tmp_path / "r"), REJECTS).to_pylist()
    assert report.ingested == len(rows) and report.rejected == len(rejects)
    assert report.ingested + report.rejected == report.input_rows
    return report, {r["video_id"]: r for r in rows}, rejects


def test_ssv2_labels_and_webm_folder(tmp_path):
    root = tmp_path / "ssv2"
    (root / "labels").mkdir(parents=True)
    videos = root / "20bn-something-something-v2"
    for i, vid in enumerate(["1", "2", "10", "11", "12"]):
        write_webm(videos / f"{vid}.webm", frames(seed=i))

    def item(vid, label):
        return {
            "id": vid,
            "label": label,
            "template": "Moving [something] left",
            "placeholders": ["cup"],
        }

    train = [item("1", "moving cup left"), item("2", "pushing pen"), item("3", "no video")]
    val = [item("10", "a"), {"id": "11", "label": ""}, item("12", "c"), item("10", "dup")]
    (root / "labels/something-something-v2-train.json").write_text(json.dumps(train))
    (root / "labels/something-something-v2-validation.json").write_text(json.dumps(val))
    report, rows, rejects = run("ssv2", root, tmp_path, FCAConfig(ssv2_val_samples=2))
    assert report.input_rows == 7
    assert {k: r["split"] for k, r in rows.items()} == {
        "1": "train",
        "2": "train",
        "10": "val",
        "12": "holdout",
    }
    assert rows["1"]["caption"] == "moving cup left" and rows["1"]["uri"].endswith("1.webm")
    assert json.loads(rows["1"]["placeholders"]) == ["cup"] and rows["1"]["media"] == "video"
    assert sorted((r["video_id"], r["reason"]) for r in rejects) == [
        ("10", "duplicate id"),
        ("11", "empty field"),
        ("3", "file not found"),
    ]
    assert read_video(rows["12"]["uri"]).shape == (4, 32, 32, 3)  # a real, decodable webm


def _traj(root: Path, task: str, n: int, lang: str | None, images: int) -> Path:
    traj = (
        root
        / "berkeley"
        / "toykitchen1"
        / task
        / "2021-06-01_15-48-38"
        / "raw"
        / "traj_group0"
        / f"traj{n}"
    )
    (traj / "images0").mkdir(parents=True)
    for i, f in enumerate(frames(images, seed=n)):
        Image.fromarray(f).save(traj / "images0" / f"im_{i}.jpg")
    if lang is not None:
        (traj / "lang.txt").write_text(lang)
    return traj


def test_bridge_trajectories_and_seeded_split(tmp_path):
    root = tmp_path / "bridge"
    for n in range(6):
        _traj(root, "put_corn_in_pot", n, None, 3)
    _traj(root, "open_drawer", 6, "open the drawer\nconfidence: 1\n", 2)
    _traj(root, "open_drawer", 7, "", 2)  # annotation file present but empty
    _traj(root, "open_drawer", 8, None, 0)  # no frames
    report, rows, rejects = run("bridge", root, tmp_path)
    assert report.input_rows == 9 and report.ingested == 7
    assert sorted(r["reason"] for r in rejects) == ["empty field", "file not found"]
    by_traj = {k.rsplit("/", 1)[-1]: r for k, r in rows.items()}
    assert by_traj["traj0"]["caption"] == "put corn in pot"
    assert by_traj["traj6"]["caption"] == "open the drawer"
    assert by_traj["traj6"]["num_frames"] == "2" and by_traj["traj6"]["media"] == "frames"
    assert Path(by_traj["traj0"]["uri"], "im_2.jpg").is_file()
    ids = sorted(rows)
    expected = val_mask(ids, SplitConfig(val_fraction=0.2, seed=0))
    assert [rows[i]["split"] == "val" for i in ids] == expected.tolist()
    other = run("bridge", root, tmp_path / "again", FCAConfig(bridge_split_seed=7))[1]
    assert [other[i]["split"] == "val" for i in ids] == val_mask(
        ids, SplitConfig(val_fraction=0.2, seed=7)
    ).tolist()


def test_epic100_annotations_become_clips(tmp_path):
    root = tmp_path / "epic"
    export_to_mp4(frames(8), root / "P01" / "videos" / "P01_01.MP4")
    export_to_mp4(frames(8, 1), root / "P02" / "videos" / "P02_03.MP4")
    header = [
        "narration_id",
        "participant_id",
        "video_id",
        "narration_timestamp",
        "start_timestamp",
        "stop_timestamp",
        "start_frame",
        "stop_frame",
        "narration",
        "verb",
        "verb_class",
        "noun",
        "noun_class",
        "all_nouns",
        "all_noun_classes",
    ]

    def row(nid, video, start, stop, text):
        return [nid, video[:3], video, start, start, stop, 1, 2, text, "v", 0, "n", 0, "[]", "[]"]

    for name, rows in {
        "EPIC_100_train.csv": [
            row("P01_01_0", "P01_01", "00:00:00.10", "00:00:00.90", "open door"),
            row("P01_01_1", "P01_01", "00:00:00.50", "00:00:00.20", "reversed"),
            row("P01_01_2", "P01_01", "00:00:00.10", "00:00:00.60", ""),
        ],
        "EPIC_100_validation.csv": [
            row("P02_03_0", "P02_03", "00:00:00.00", "00:00:00.75", "take cup"),
            row("P09_01_0", "P09_01", "00:00:00.00", "00:00:01.00", "no such video"),
        ],
    }.items():
        with open(root / name, "w", newline="") as fh:
            csv.writer(fh).writerows([header, *rows])
    report, rows, rejects = run("epic100", root, tmp_path)
    assert report.input_rows == 5
    assert {k: r["split"] for k, r in rows.items()} == {"P01_01_0": "train", "P02_03_0": "val"}
    clip = rows["P01_01_0"]
    assert clip["uri"].endswith("P01/videos/P01_01.MP4") and clip["caption"] == "open door"
    assert (clip["start_s"], clip["end_s"]) == ("0.100", "0.900")
    assert clip["duration_s"] == pytest.approx(0.8)
    assert sorted((r["video_id"], r["reason"]) for r in rejects) == [
        ("P01_01_1", "bad duration"),
        ("P01_01_2", "empty field"),
        ("P09_01_0", "file not found"),
    ]
    assert {r["source_row"] for r in rejects if r["video_id"] == "P01_01_1"} == {3}


def test_unknown_layout_is_named(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="no something-something-v2-train.json"):
        ingest_tvp("ssv2", str(tmp_path / "x"), str(tmp_path / "m"), str(tmp_path / "r"))
    with pytest.raises(ValueError, match="unknown TVP dataset 'kinetics'"):
        ingest_tvp("kinetics", str(tmp_path / "x"), str(tmp_path / "m"), str(tmp_path / "r"))
