"""VIMI's image-text memory: the image loader, the sources and the Beam ingest (issue 17, 1).

Real files only: a generated img2dataset output (tar shards, parquet, stats), tables written
here, tiny H.264 clips from the synth corpus's renderer and a workspace manifest naming them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ragvid.pipelines.corpus.synth import Clip, encode_mp4, render
from ragvid.pipelines.vimi.images import ImageLoadError, MissingImageError, load_image, load_ref
from ragvid.pipelines.vimi.memory_ingest import ingest_memory, memory_info
from ragvid.pipelines.vimi.synth_memory import synth_memory
from ragvid.schemas import VimiConfig, Workspace
from ragvid.schemas.io import join, part_name, read_parts, write_table
from ragvid.schemas.tables import IMAGE_MEMORY, MANIFEST, REJECTS

CFG = VimiConfig(memory_shards=2)


def _table(ws: Workspace, name: str) -> list[dict]:
    return read_parts(ws.memory_table(name), IMAGE_MEMORY).to_pylist()


def _rejects(ws: Workspace, name: str) -> list[dict]:
    return read_parts(ws.memory_rejects(name), REJECTS).to_pylist()


def _accounted(report: dict, ws: Workspace, name: str) -> tuple[list[dict], list[dict]]:
    rows, rejects = _table(ws, name), _rejects(ws, name)
    assert report["written"] == len(rows) and report["rejected"] == len(rejects)
    assert report["written"] + report["rejected"] == report["read"]
    assert len({r["item_id"] for r in rows}) == len(rows)
    assert all(r["reason"] and r["detail"] and r["source_file"] for r in rejects)
    return rows, rejects


@pytest.fixture(scope="module")
def wds(tmp_path_factory):
    out = tmp_path_factory.mktemp("i2d_wds")
    return synth_memory(str(out), 40, seed=1, shards=2, fail_every=10)


def _member_pixels(image_uri: str) -> np.ndarray:
    member, shard = image_uri.removeprefix("tar://").split("::", 1)
    with tarfile.open(shard) as tar:
        data = tar.extractfile(member).read()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --- img2dataset ------------------------------------------------------------------------------


def test_synth_memory_is_a_deterministic_img2dataset_folder(wds, tmp_path):
    again = synth_memory(str(tmp_path), 40, seed=1, shards=2, fail_every=10)
    for shard, files in wds["shards"].items():
        assert files == [f"{shard}.tar", f"{shard}.parquet", f"{shard}_stats.json"]
        for f in files:
            a = open(join(wds["out_dir"], f), "rb").read()
            assert a == open(join(again["out_dir"], f), "rb").read(), f
    assert (wds["rows"], wds["failed"], wds["corrupt"]) == (40, 4, 1)
    table = pq.read_table(join(wds["out_dir"], "00000.parquet")).to_pylist()
    stats = json.load(open(join(wds["out_dir"], "00000_stats.json")))
    assert stats["count"] == len(table) == 20
    assert stats["successes"] == sum(r["status"] == "success" for r in table)
    with tarfile.open(join(wds["out_dir"], "00000.tar")) as tar:
        names = tar.getnames()
    ok = [r["key"] for r in table if r["status"] == "success"]
    assert sorted(names) == sorted(f"{k}.{e}" for k in ok for e in ("jpg", "txt", "json"))
    for r in table:
        assert r["shape"] in r["caption"] and r["colour"] in r["caption"].lower()


def test_img2dataset_webdataset_ingest_reads_tar_members_in_place(wds, tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    report = ingest_memory(ws, "mem", [wds["out_dir"]], config=CFG)
    rows, rejects = _accounted(report, ws, "mem")
    assert report["read"] == 40 and report["written"] == 40 - 4 - 1
    assert report["rejects_by_reason"] == {"download failed": 4, "not an image": 1}
    assert len(report["parts"]) == 2 and report["version"] == 1 and not report["skipped"]
    failed = [r for r in rejects if r["reason"] == "download failed"]
    assert all(r["field"] == "status" and "failed_to_download" in r["detail"] for r in failed)
    corrupt = next(r for r in rejects if r["reason"] == "not an image")
    assert corrupt["video_id"] == wds["corrupt_key"] and "00001.parquet" in corrupt["source_file"]
    truth = {}
    for shard in wds["shards"]:
        for r in pq.read_table(join(wds["out_dir"], f"{shard}.parquet")).to_pylist():
            truth[r["key"]] = r
    for row in rows[:6]:
        assert row["image_uri"].startswith("tar://") and row["image_uri"].endswith(".tar")
        assert row["caption"] == truth[row["item_id"]]["caption"]
        assert row["url"] == truth[row["item_id"]]["url"] and row["width"] == 64
        pixels = load_ref(row)  # by offset
        assert pixels.shape == (64, 64, 3)
        assert np.array_equal(pixels, _member_pixels(row["image_uri"]))
        assert np.array_equal(load_image(row["image_uri"]), pixels)  # via the header index
        assert load_ref(row, size=16).shape == (16, 16, 3)
    # unchanged inputs: nothing is rebuilt; a changed input rebuilds as version 2
    again = ingest_memory(ws, "mem", [wds["out_dir"]], config=CFG)
    assert again["skipped"] and again["version"] == 1 and again["written"] == report["written"]
    assert memory_info(ws, "mem")["version"] == 1


def test_files_format_first_wins_over_duplicate_keys(tmp_path):
    files = synth_memory(str(tmp_path / "files"), 12, seed=2, shards=1, output_format="files")
    wds = synth_memory(str(tmp_path / "wds"), 12, seed=2, shards=1, fail_every=0)
    ws = Workspace.at(tmp_path / "ws")
    report = ingest_memory(ws, "m", [files["out_dir"], wds["out_dir"]], config=CFG)
    rows, rejects = _accounted(report, ws, "m")
    assert report["read"] == 24
    # files format: 12 - 1 failed download (fail_every=25 → none at n=12) - 1 corrupt
    assert len(rows) == 11 and all(os.path.isfile(r["image_uri"]) for r in rows)
    dups = [r for r in rejects if r["reason"] == "duplicate item_id"]
    assert len(dups) == 11 and all("wds" in r["source_file"] for r in dups)
    assert all("first seen at" in r["detail"] and "files" in r["detail"] for r in dups)
    row = rows[0]
    expect = np.asarray(Image.open(row["image_uri"]).convert("RGB"))
    assert np.array_equal(load_ref(row), expect)


# --- tables -----------------------------------------------------------------------------------


def _png(path, colour) -> np.ndarray:
    arr = np.zeros((10, 14, 3), np.uint8)
    arr[..., :] = colour
    arr[2:6, 3:9] = (255, 255, 255)
    Image.fromarray(arr).save(path)
    return arr


def test_tables_csv_and_parquet_every_row_accounted_for(tmp_path):
    d = tmp_path / "tables"
    (d / "imgs").mkdir(parents=True)
    red = _png(d / "imgs" / "red.png", (200, 0, 0))
    _png(d / "imgs" / "blue.png", (0, 0, 200))
    (d / "imgs" / "notes.png").write_text("not an image at all")
    with open(d / "pairs.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        w.writerow(["imgs/red.png", "a red square"])  # relative to the table's folder
        w.writerow([str(d / "imgs" / "blue.png"), "a blue square"])
        w.writerow(["imgs/gone.png", "a missing image"])
        w.writerow(["imgs/blue.png", "   "])
        w.writerow(["imgs/notes.png", "a text file named png"])
    pq.write_table(
        pa.table(
            {
                "filepath": ["imgs/red.png", None, "imgs/blue.png"],
                "TEXT": ["red again", "no image", None],
                "width": [14, None, 14],
            }
        ),
        d / "pairs.parquet",
    )
    parquet_fmt = synth_memory(str(tmp_path / "pqfmt"), 5, seed=3, shards=1, fail_every=0,
                               output_format="parquet")  # fmt: skip
    ws = Workspace.at(tmp_path / "ws")
    sources = [str(d / "pairs.csv"), str(d / "pairs.parquet"), parquet_fmt["out_dir"]]
    report = ingest_memory(ws, "t", sources, config=CFG)
    rows, rejects = _accounted(report, ws, "t")
    assert report["read"] == 5 + 3 + 5
    by_id = {r["item_id"]: r for r in rows}
    assert set(by_id) == {"pairs:2", "pairs:3", "pairs:1"}  # CSV lines 2, 3; parquet row 1
    assert by_id["pairs:2"]["image_uri"] == str(d / "imgs" / "red.png")
    assert by_id["pairs:1"]["caption"] == "red again" and by_id["pairs:1"]["width"] == 14
    assert by_id["pairs:1"]["source_file"].endswith("pairs.parquet")
    assert np.array_equal(load_ref(by_id["pairs:2"]), red)
    got = {(os.path.basename(r["source_file"]), r["source_row"]): r for r in rejects}
    missing, empty = got[("pairs.csv", 4)], got[("pairs.csv", 5)]
    assert (missing["reason"], missing["field"]) == ("file not found", "image")
    assert "gone.png" in missing["detail"] and "row 4" in missing["detail"]
    assert (empty["reason"], empty["field"]) == ("empty field", "caption")
    assert got[("pairs.csv", 6)]["reason"] == "not an image"
    assert got[("pairs.parquet", 2)]["reason"] == "missing field"
    assert got[("pairs.parquet", 2)]["field"] == "filepath"
    assert got[("pairs.parquet", 3)]["field"] == "TEXT"
    in_pq = [r for r in rejects if r["reason"] == "image bytes in parquet"]
    assert len(in_pq) == 5 and "--output_format webdataset" in in_pq[0]["detail"]
    assert report["rejects_by_reason"]["not an image"] == 1
    # a changed input rebuilds: a new version, the new row in
    with open(d / "pairs.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["imgs/blue.png", "blue once more"])
    again = ingest_memory(ws, "t", sources, config=CFG)
    assert not again["skipped"] and again["version"] == 2 and again["read"] == report["read"] + 1
    assert any(r["caption"] == "blue once more" for r in _table(ws, "t"))
    assert memory_info(ws, "t")["version"] == 2


# --- keyframes ---------------------------------------------------------------------------------


def _write_webm(path: str, frames: np.ndarray, fps: int) -> None:
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("libvpx", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def clip_corpus(tmp_path_factory):
    """4 tiny clips — H.264 mp4s (one inside a tar shard, one with no duration in the
    manifest) and a VP8 WebM — and a zero-byte one, in a workspace manifest of two parts."""
    root = tmp_path_factory.mktemp("clips")
    ws = Workspace.at(root / "ws")
    rows = []
    with tarfile.open(root / "00000.tar", "w") as tar:
        for i, (shape, colour) in enumerate([("circle", "red"), ("square", "blue"),
                                             ("star", "green"), ("cross", "yellow")]):  # fmt: skip
            clip = Clip(shape, colour, "right", "grey", "fast", 0.5, 0.5, 0.25, 0.0, "")
            frames = render(clip, 32, 32, 12)  # 1 s at 12 fps
            data = encode_mp4(frames, 12)
            uri = str(root / f"v{i}.mp4")
            if i == 2:  # a WebM (VP8) clip
                uri = str(root / "v2.webm")
                _write_webm(uri, frames, 12)
            if i == 3:
                info = tarfile.TarInfo(f"v{i}.mp4")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                uri = f"tar://v{i}.mp4::{root / '00000.tar'}"
            elif i != 2:
                (root / f"v{i}.mp4").write_bytes(data)
            caption = f"a {colour} {shape} moving right"
            rows.append((f"v{i}", uri, caption, None if i == 1 else 1.0))
    (root / "empty.mp4").write_bytes(b"")
    rows.append(("bad", str(root / "empty.mp4"), "an empty file", 1.0))
    for p, chunk in enumerate((rows[:3], rows[3:])):
        table = pa.Table.from_pylist(
            [
                {
                    "video_id": v,
                    "uri": u,
                    "caption": c,
                    "duration_s": d,
                    "source": "t",
                    "source_file": "x.csv",
                    "source_row": j,
                }
                for j, (v, u, c, d) in enumerate(chunk, 1)
            ],  # fmt: skip
            schema=MANIFEST.schema(),
        )
        write_table(join(ws.manifest("clips"), part_name(p)), table, MANIFEST)
    return ws


def test_keyframes_of_a_corpus(clip_corpus):
    from ragvid.pipelines.embed.decode import decode_video

    ws = clip_corpus
    report = ingest_memory(ws, "kf", corpus="clips", config=CFG)
    rows, rejects = _accounted(report, ws, "kf")
    assert report["read"] == 5 * 2 and report["written"] == 8
    bad = {(r["video_id"], r["reason"], r["field"]) for r in rejects}
    assert bad == {("bad#first", "empty file", "uri"), ("bad#middle", "empty file", "uri")}
    by_id = {r["item_id"]: r for r in rows}
    assert set(by_id) == {f"v{i}#{k}" for i in range(4) for k in ("first", "middle")}
    assert by_id["v0#first"]["frame_ts"] == 0.0 and by_id["v0#middle"]["frame_ts"] == 0.5
    assert abs(by_id["v1#middle"]["frame_ts"] - 0.5) < 0.05  # probed from the container
    assert by_id["v2#first"]["video_id"] == "v2" and by_id["v2#first"]["caption"].startswith(
        "a green"
    )
    assert by_id["v3#middle"]["image_uri"].startswith("tar://v3.mp4::")
    assert by_id["v2#middle"]["image_uri"].endswith("v2.webm")
    for item in ("v0#middle", "v3#middle", "v2#first", "v2#middle"):
        row = by_id[item]
        video = decode_video(row["image_uri"], 12, backend="pyav", timeout_s=None)
        nearest = int(np.abs(video.timestamps - row["frame_ts"]).argmin())
        assert np.array_equal(load_ref(row), video.frames[nearest]), item
    # bad inputs are clear errors
    with pytest.raises(ImageLoadError, match="beyond the video"):
        load_image(by_id["v0#first"]["image_uri"], 5.0)
    with pytest.raises(ImageLoadError, match="pass frame_ts"):
        load_image(by_id["v0#first"]["image_uri"])
    with pytest.raises(FileNotFoundError, match="no manifest"):
        ingest_memory(ws, "kf2", corpus="nope", config=CFG)


# --- the loader and errors ------------------------------------------------------------------------


def test_load_ref_box_mask_and_errors(tmp_path):
    arr = _png(tmp_path / "a.png", (10, 120, 30))
    mask = np.zeros((10, 14), np.uint8)
    mask[2:6, 3:9] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    ref = {"uri": str(tmp_path / "a.png"), "frame_ts": None, "box": [3.0, 2.0, 9.0, 6.0]}
    assert np.array_equal(load_ref(ref), arr[2:6, 3:9])
    masked = load_ref({**ref, "box": None, "mask_uri": str(tmp_path / "m.png")})
    assert np.array_equal(masked[2:6, 3:9], arr[2:6, 3:9]) and not masked[0].any()
    assert load_image(str(tmp_path / "a.png"), size=5).shape == (5, 5, 3)
    with pytest.raises(MissingImageError, match="gone.png: no such file"):
        load_image(str(tmp_path / "gone.png"))
    (tmp_path / "t.jpg").write_text("hello")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(str(tmp_path / "t.jpg"))
    with tarfile.open(tmp_path / "s.tar", "w"):
        pass  # an empty shard
    with pytest.raises(MissingImageError, match="no member 'x.jpg'"):
        load_image(f"tar://x.jpg::{tmp_path / 's.tar'}")
    with pytest.raises(ValueError, match="no 'uri'"):
        load_ref({"caption": "x"})
    ws = Workspace.at(tmp_path / "ws")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ingest_memory(ws, "e", [str(tmp_path / "nowhere")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="cannot tell what it is"):
        ingest_memory(ws, "e", [str(tmp_path / "notes.txt")])
    with pytest.raises(ValueError, match="unknown memory source kind"):
        ingest_memory(ws, "e", [str(tmp_path / "a.png")], kind="images")


@pytest.mark.parametrize("fault", ["atomic-put:before-rename:4", "memory-ingest:before-info:1"])
def test_a_killed_rebuild_leaves_the_memory_whole_and_the_rerun_completes(tmp_path, fault):
    import subprocess
    import sys

    src = synth_memory(str(tmp_path / "i2d"), 12, seed=4, shards=2, fail_every=5)
    ws = Workspace.at(tmp_path / "ws")
    first = ingest_memory(ws, "k", [src["out_dir"]], config=CFG)
    before = _table(ws, "k")
    os.utime(join(src["out_dir"], "00001.parquet"), (1, 1))  # a changed input: a rebuild
    code = (
        "import sys; from ragvid.pipelines.vimi.memory_ingest import ingest_memory; "
        "from ragvid.schemas import VimiConfig; "
        "ingest_memory(sys.argv[1], 'k', [sys.argv[2]], config=VimiConfig(memory_shards=2))"
    )
    env = {**os.environ, "RAGVID_FAULT": fault}
    proc = subprocess.run([sys.executable, "-c", code, ws.root, src["out_dir"]], env=env)
    assert proc.returncode == -9  # SIGKILL at the fault point
    assert _table(ws, "k") == before  # the previous memory is whole and readable
    again = ingest_memory(ws, "k", [src["out_dir"]], config=CFG)
    assert not again["skipped"] and again["version"] == 2
    assert (again["read"], again["written"]) == (first["read"], first["written"])
    _accounted(again, ws, "k")
    assert not [p for p in os.listdir(ws.memory("k")) if ".staging-" in p]


def test_a_truncated_shard_keeps_the_rows_before_the_cut(tmp_path):
    src = synth_memory(str(tmp_path / "i2d"), 16, seed=5, shards=1, fail_every=0)
    shard = join(src["out_dir"], "00000.tar")
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: len(data) // 2 + 100])
    ws = Workspace.at(tmp_path / "ws")
    report = ingest_memory(ws, "cut", [src["out_dir"]], config=CFG)
    rows, rejects = _accounted(report, ws, "cut")
    assert report["read"] == 16 and 5 <= len(rows) <= 9
    assert all(np.array_equal(load_ref(r), _member_pixels(r["image_uri"])) for r in rows)
    cut = [r for r in rejects if r["reason"] == "truncated"]
    assert len(cut) == 16 - len(rows) - report["rejects_by_reason"].get("not an image", 0)
    assert all("end-of-archive" in r["detail"] or "cut off" in r["detail"] for r in cut)
