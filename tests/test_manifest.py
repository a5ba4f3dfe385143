"""Manifest ETL on Beam: every input layout, every bad-input case, counts that add up."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import av
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ragvid.pipelines.corpus.beam import ingest, read_report
from ragvid.pipelines.corpus.manifest import dedup_group, detect_layout, parse_duration, shard_of
from ragvid.schemas import MANIFEST, REJECTS, ManifestConfig, Workspace, read_parts
from ragvid.schemas.guards import FailureRatioError

# the hand-made corpora below are mostly bad rows on purpose: lift the failure-ratio guard
# (tests/test_ingest_faults.py tests the guard itself)
LENIENT = ManifestConfig(max_failure_ratio=1.0)


def _run(tmp_path: Path, input_path, config: ManifestConfig | None = None, **kw):
    ws = Workspace.at(tmp_path / "ws")
    report = ingest(str(input_path), ws.manifest("c"), ws.rejects("c"), config, **kw)
    manifest = read_parts(ws.manifest("c"), MANIFEST)
    rejects = read_parts(ws.rejects("c"), REJECTS)
    assert report.ingested == manifest.num_rows and report.rejected == rejects.num_rows
    assert report.ingested + report.rejected == report.input_rows
    return report, manifest, rejects


def _by(table: pa.Table, key: str) -> dict:
    return {r[key]: r for r in table.to_pylist()}


# --- pure row logic --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("PT00H00M11S", 11.0),
        ("PT01H02M03S", 3723.0),
        ("PT1M2.5S", 62.5),
        ("12.5", 12.5),
        ("00:01:05", 65.0),
        ("", None),
        (None, None),
        (7, 7.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["five seconds", "PT", "P", "-3", "1:xx", "nan"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_shard_and_dedup_are_stable():
    assert [shard_of(str(i), 4) for i in range(8)] == [shard_of(str(i), 4) for i in range(8)]
    assert len({shard_of(str(i), 4) for i in range(100)}) == 4
    rows = [
        {"video_id": "a", "source_file": "f2", "source_row": 2},
        {"video_id": "a", "source_file": "f1", "source_row": 9},
        {"video_id": "a", "source_file": "f1", "source_row": 3},
    ]
    first, rejects = dedup_group(rows)
    assert (first["source_file"], first["source_row"]) == ("f1", 3)
    assert [(r["source_file"], r["source_row"]) for r in rejects] == [("f1", 9), ("f2", 2)]
    assert all(r["reason"] == "duplicate id" and "f1 row 3" in r["detail"] for r in rejects)


# --- WebVid CSV with every kind of bad row ---------------------------------------------

WEBVID_0 = (
    "videoid,contentUrl,duration,page_dir,name\n"
    '1,https://x/1.mp4,PT00H00M10S,p,"A red circle, moving ""left"""\n'  # line 2
    '2,https://x/2.mp4,PT00H00M05S,p,"Two lines\nof caption"\n'  # lines 3-4
    "\n"  # line 5: blank, not a row
    "3,https://x/3.mp4,PT00H01M00S,p,Ünïcödé 日本語 caption 🎬\n"  # line 6
    "4,https://x/4.mp4,PT00H00M05S,p,caption,EXTRA\n"  # 7: extra column
    "5,https://x/5.mp4,PT00H00M05S\n"  # 8: missing columns
    "6,https://x/6.mp4,PT00H00M05S,p,   \n"  # 9: empty caption
    ",https://x/7.mp4,PT00H00M05S,p,no id\n"  # 10: empty id
    "1,https://x/1b.mp4,PT00H00M05S,p,dup of one\n"  # 11: duplicate id
    "8,https://x/8.mp4,five seconds,p,bad duration\n"  # 12: unparseable duration
    "9,,PT00H00M05S,p,no url\n"  # 13: empty contentUrl
    "10,videos/10.mp4,,p,relative path and no duration\n"  # 14: ok, local file
    "12,videos/12.mp4,PT00H00M05S,p,relative path to nothing\n"  # 15: file not found
)
WEBVID_1 = (
    "\ufeffvideoid,contentUrl,duration,page_dir,name\r\n"
    "11,https://x/11.mp4,PT00H00M03S,q,green square\r\n"  # line 2
    "3,https://x/3b.mp4,PT00H00M03S,q,second copy of three\r\n"  # line 3: duplicate of 0:6
)


@pytest.fixture
def webvid_dir(tmp_path, demo_corpus_raw):
    d = tmp_path / "webvid"
    (d / "videos").mkdir(parents=True)
    (d / "results_0.csv").write_text(WEBVID_0, encoding="utf-8")
    (d / "results_1.csv").write_bytes(WEBVID_1.encode("utf-8"))
    (d / "notes.csv").write_text("not,a,partition\n")  # ignored: not results_*.csv
    shutil.copy(next(Path(demo_corpus_raw.videos_dir).glob("*.mp4")), d / "videos" / "10.mp4")
    return d


def test_webvid_csv_every_bad_row_is_rejected_with_file_row_field(tmp_path, webvid_dir):
    assert detect_layout(str(webvid_dir)) == "webvid"
    config = ManifestConfig(num_shards=3, max_failure_ratio=1.0)
    report, manifest, rejects = _run(tmp_path, webvid_dir, config)
    counts = (report.layout, report.input_rows, report.ingested, report.rejected)
    assert counts == ("webvid", 14, 5, 9)
    rows = _by(manifest, "video_id")
    assert set(rows) == {"1", "2", "3", "10", "11"}
    assert rows["1"]["caption"] == 'A red circle, moving "left"'
    assert rows["2"]["caption"] == "Two lines\nof caption"
    assert rows["3"]["caption"] == "Ünïcödé 日本語 caption 🎬"
    assert rows["3"]["duration_s"] == 60.0 and rows["10"]["duration_s"] is None
    assert rows["3"]["source_row"] == 6 and rows["11"]["source_row"] == 2
    assert rows["1"]["uri"] == "https://x/1.mp4"
    assert rows["10"]["uri"] == str(webvid_dir / "videos" / "10.mp4")
    assert rows["11"]["page_dir"] == "q"  # extra input column carried
    assert set(manifest.column_names) >= {"page_dir", "source", "source_file"}
    f0, f1 = str(webvid_dir / "results_0.csv"), str(webvid_dir / "results_1.csv")
    rej = rejects.to_pylist()
    got = {(r["source_file"], r["source_row"]): (r["field"], r["reason"]) for r in rej}
    assert got == {
        (f0, 7): (None, "malformed row"),
        (f0, 8): (None, "malformed row"),
        (f0, 9): ("name", "empty field"),
        (f0, 10): ("videoid", "empty field"),
        (f0, 11): ("video_id", "duplicate id"),
        (f0, 12): ("duration", "bad duration"),
        (f0, 13): ("contentUrl", "empty field"),
        (f0, 15): ("contentUrl", "file not found"),
        (f1, 3): ("video_id", "duplicate id"),
    }
    details = {(r["source_file"], r["source_row"]): r["detail"] for r in rejects.to_pylist()}
    assert "extra columns" in details[(f0, 7)] and "missing columns" in details[(f0, 8)]
    assert f"{f0} row 6" in details[(f1, 3)]
    assert report.rejects_by_reason["duplicate id"] == 2
    # deterministic layout: every part sorted by id, each id in its hash shard
    ws = Workspace.at(tmp_path / "ws")
    for i, part in enumerate(sorted(Path(ws.manifest("c")).glob("part-*.parquet"))):
        ids = pq.read_table(part).column("video_id").to_pylist()
        assert ids == sorted(ids) and all(shard_of(v, 3) == i for v in ids)
    assert read_report(ws.manifest("c")).input_rows == 14


# --- the generated demo corpus; reruns ---------------------------------------------------


def test_demo_corpus_manifest(demo_manifest, demo_corpus_raw):
    ws = Workspace.at(demo_manifest.workspace)
    manifest = read_parts(ws.manifest(demo_manifest.corpus), MANIFEST)
    rejects = read_parts(ws.rejects(demo_manifest.corpus), REJECTS)
    assert manifest.num_rows + rejects.num_rows == demo_corpus_raw.num_rows
    assert rejects.column("reason").to_pylist() == ["file not found"]
    assert {r["planted"] for r in manifest.to_pylist()} == {
        "",
        "duplicate",
        "zero_byte",
        "truncated",
        "not_a_video",
    }
    first = manifest.to_pylist()[0]
    assert Path(first["uri"]).is_file() and first["source"] == "demo"
    assert first["duration_s"] == 2.0 and first["shape"] in first["caption"]


def test_rerun_replaces_manifest_atomically_and_identically(tmp_path, demo_corpus_raw):
    ws = Workspace.at(tmp_path / "ws")
    ingest(demo_corpus_raw.out_dir, ws.manifest("d"), ws.rejects("d"), ManifestConfig(num_shards=3))
    first = {p.name: pq.read_table(p) for p in Path(ws.manifest("d")).glob("part-*.parquet")}
    ingest(demo_corpus_raw.out_dir, ws.manifest("d"), ws.rejects("d"), ManifestConfig(num_shards=2))
    second = sorted(p.name for p in Path(ws.manifest("d")).glob("part-*.parquet"))
    assert second == ["part-00000.parquet", "part-00001.parquet"]  # stale part 3 gone
    ingest(demo_corpus_raw.out_dir, ws.manifest("d"), ws.rejects("d"), ManifestConfig(num_shards=3))
    again = {p.name: pq.read_table(p) for p in Path(ws.manifest("d")).glob("part-*.parquet")}
    assert again.keys() == first.keys()
    assert all(again[k].equals(first[k]) for k in first)
    leftovers = [p.name for p in Path(ws.corpus("d")).iterdir()]
    # no staging/old folders; the flock file _lock stays (free, and skipped by readers)
    assert sorted(leftovers) == ["_lock", "manifest", "rejects"]


# --- video2dataset: parquet + webdataset tar shards -------------------------------------


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_video2dataset_parquet_and_tar_shards(tmp_path, demo_corpus_raw):
    mp4s = sorted(Path(demo_corpus_raw.videos_dir).glob("*.mp4"))[:4]
    clip = [p.read_bytes() for p in mp4s]
    d = tmp_path / "v2d"
    d.mkdir()
    pq.write_table(
        pa.table(
            {
                "key": ["000000000", "000000001", "000000002"],
                "caption": ["a red circle", "a blue square", "never downloaded"],
                "url": ["https://a/0.mp4", "https://a/1.mp4", "https://a/2.mp4"],
                "status": ["success", "success", "failed_to_download"],
                "error_message": [None, None, "HTTP 404"],
                "width": [96, 96, None],
            }
        ),
        d / "00000.parquet",
    )
    _tar(
        d / "00000.tar",
        {
            "000000000.mp4": clip[0],
            "000000000.txt": b"a red circle",
            "000000000.json": b'{"key": "000000000"}',
            "000000001.mp4": clip[1],
            "000000001.txt": b"a blue square",
        },
    )
    _tar(  # a shard with no parquet: its samples are the rows
        d / "00001.tar",
        {
            "000010000.mp4": clip[2],
            "000010000.json": json.dumps({"caption": "a star spinning"}).encode(),
            "000010001.mp4": clip[3],
            "000010001.txt": b"",
        },
    )
    assert detect_layout(str(d)) == "video2dataset"
    report, manifest, rejects = _run(tmp_path, d, LENIENT)
    assert (report.layout, report.input_rows, report.ingested) == ("video2dataset", 5, 3)
    rows = _by(manifest, "video_id")
    assert rows["000000000"]["caption"] == "a red circle"
    assert rows["000000000"]["url"] == "https://a/0.mp4" and rows["000000000"]["width"] == "96"
    assert rows["000010000"]["caption"] == "a star spinning"
    for row in rows.values():  # read in place: fsspec's tar URL, decodable, nothing extracted
        with fsspec.open(row["uri"], "rb") as fh, av.open(fh) as container:
            assert sum(1 for _ in container.decode(video=0)) > 0
    assert rows["000010000"]["uri"] == f"tar://000010000.mp4::{d}/00001.tar"
    assert not (tmp_path / "ws/corpora/c/videos").exists()
    reasons = {r["video_id"]: (r["reason"], r["field"]) for r in rejects.to_pylist()}
    assert reasons == {
        "000000002": ("download failed", "status"),
        "000010001": ("empty field", "caption"),
    }


# --- folder of videos + captions CSV / JSONL -------------------------------------------


def _video_folder(tmp_path: Path, demo_corpus_raw, n: int = 3) -> Path:
    d = tmp_path / "folder"
    (d / "videos").mkdir(parents=True)
    for i, p in enumerate(sorted(Path(demo_corpus_raw.videos_dir).glob("*.mp4"))[:n]):
        shutil.copy(p, d / "videos" / f"clip{i}.mp4")
    return d


def test_folder_with_captions_csv(tmp_path, demo_corpus_raw):
    d = _video_folder(tmp_path, demo_corpus_raw)
    (d / "captions.csv").write_text(
        "file,caption,fps\n"
        "videos/clip0.mp4,first clip,12\n"
        'videos/clip1.mp4,"second, with comma",12\n'
        "videos/clip9.mp4,no such file,12\n"
        "videos/clip0.mp4,same file again,12\n"
    )
    assert detect_layout(str(d)) == "folder"
    report, manifest, rejects = _run(tmp_path, d, LENIENT)
    assert report.input_rows == 4 and report.ingested == 2
    rows = _by(manifest, "video_id")
    assert rows["clip1"]["caption"] == "second, with comma" and rows["clip1"]["fps"] == "12"
    assert rows["clip0"]["uri"] == str(d / "videos" / "clip0.mp4")
    assert sorted(rejects.column("reason").to_pylist()) == ["duplicate id", "file not found"]


def test_folder_with_captions_jsonl(tmp_path, demo_corpus_raw):
    d = _video_folder(tmp_path, demo_corpus_raw)
    lines = [
        {"video_id": "clip0", "caption": "zero", "duration": 2},
        {"video_id": "clip1", "text": "no caption key"},
        {"video_id": "clip2", "caption": "two", "tags": ["a", "b"]},
        {"video_id": "clip7", "caption": "no video for this id"},
    ]
    body = "\n".join(json.dumps(x) for x in lines[:2]) + "\n{not json\n\n"
    body += "\n".join(json.dumps(x) for x in lines[2:]) + "\n"
    (d / "captions.jsonl").write_text(body)
    report, manifest, rejects = _run(tmp_path, d / "captions.jsonl", LENIENT)
    assert report.layout == "folder" and report.input_rows == 5
    rows = _by(manifest, "video_id")
    assert set(rows) == {"clip0", "clip2"}
    assert rows["clip0"]["duration_s"] == 2.0 and rows["clip2"]["tags"] == '["a", "b"]'
    assert rows["clip2"]["uri"] == str(d / "videos" / "clip2.mp4")
    got = {r["source_row"]: (r["reason"], r["field"]) for r in rejects.to_pylist()}
    assert got == {
        2: ("missing field", "caption"),
        3: ("malformed row", None),
        6: ("file not found", None),
    }


# --- errors: missing input, empty corpus, unknown layout, an all-bad corpus ---------------


def test_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _run(tmp_path, tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results_0.csv").write_text("videoid,contentUrl,duration,page_dir,name\n\n")
    with pytest.raises(ValueError, match="no rows"):
        _run(tmp_path, empty)
    assert not (tmp_path / "ws/corpora/c/manifest").exists()  # nothing half-written
    with pytest.raises(ValueError, match="no results_"):
        detect_layout(str(tmp_path / "ws"))
    (empty / "results_0.csv").write_text("id,url,caption\n1,u,c\n")
    with pytest.raises(ValueError, match="lacks WebVid column"):
        _run(tmp_path, empty)
    (empty / "results_0.csv").write_bytes(
        b"videoid,contentUrl,duration,page_dir,name\n1,u,,p,caf\xe9\n"
    )
    with pytest.raises(FailureRatioError, match="not UTF-8"):  # its one row is a reject
        _run(tmp_path, empty)


def test_cli_ingest_and_clean_errors(tmp_path, demo_corpus_raw):
    from ragvid.flows.cli import app

    runner = CliRunner()
    ws = tmp_path / "ws"
    ok = runner.invoke(
        app, ["corpus", "ingest", demo_corpus_raw.out_dir, "--name", "x", "-w", str(ws)]
    )
    assert ok.exit_code == 0, ok.output
    assert "input rows" in ok.output and "file not found" in ok.output
    assert (ws / "corpora/x/manifest/_report.json").exists()
    cases = {
        "does not exist": [str(tmp_path / "missing"), "-w", str(ws)],
        "not writable": [demo_corpus_raw.out_dir, "-w", str(tmp_path / "afile" / "ws")],
        "--layout": [demo_corpus_raw.out_dir, "--layout", "nope", "-w", str(ws)],
    }
    (tmp_path / "afile").write_text("a file, not a folder")
    for message, args in cases.items():
        result = runner.invoke(app, ["corpus", "ingest", *args])
        assert result.exit_code == 2, result.output
        out = " ".join(result.output.split())  # rich wraps long lines
        assert message in out and "Traceback" not in out, out
