"""video2dataset tars read in place: ingest writes no video bytes, manifest uris point into the
shard (``tar://<member>::<shard>``), and decode/embed read only the member's bytes."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ragvid.pipelines.corpus.beam import ingest
from ragvid.pipelines.corpus.layouts import read_tar_member, split_tar_uri, tar_index, tar_uri
from ragvid.pipelines.corpus.synth import encode_mp4, make_clips, render
from ragvid.pipelines.embed.decode import DecodeError, decode_video
from ragvid.schemas import (
    EMBEDDINGS,
    FAILURES,
    MANIFEST,
    REJECTS,
    EmbedConfig,
    ManifestConfig,
    SynthConfig,
    Workspace,
    read_parts,
)

LENIENT = ManifestConfig(max_failure_ratio=1.0, num_shards=2)


@pytest.fixture(scope="module")
def clips() -> list[bytes]:
    """Five small real mp4 clips (32×32, 12 frames)."""
    made = make_clips(SynthConfig(num_videos=5, num_duplicates=0, num_bad=0, seed=1))
    return [encode_mp4(render(c, 32, 32, 12), 12) for c in made]


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _v2d(tmp_path: Path, clips: list[bytes]) -> Path:
    """A video2dataset folder: 00000.parquet + 00000.tar (3 clips, a corrupt and a truncated
    member) and 00001.tar without a parquet (2 clips)."""
    d = tmp_path / "v2d"
    d.mkdir()
    keys = ["000000000", "000000001", "000000002", "000000003", "000000004"]
    pq.write_table(
        pa.table(
            {
                "key": keys,
                "caption": ["clip zero", "clip one", "clip two", "garbage bytes", "cut short"],
                "url": [f"https://a/{k}.mp4" for k in keys],
                "status": ["success"] * 5,
            }
        ),
        d / "00000.parquet",
    )
    members = {f"{k}.mp4": clips[i] for i, k in enumerate(keys[:3])}
    members |= {f"{k}.txt": b"caption" for k in keys}
    members["000000003.mp4"] = np.random.default_rng(0).bytes(4000)
    members["000000004.mp4"] = clips[0][: len(clips[0]) // 2]
    _tar(d / "00000.tar", members)
    _tar(
        d / "00001.tar",
        {
            "000010000.mp4": clips[3],
            "000010000.txt": b"clip three",
            "000010001.mp4": clips[4],
            "000010001.json": b'{"caption": "clip four"}',
        },
    )
    return d


def _ingest(ws: Workspace, corpus: str, path: Path, config: ManifestConfig = LENIENT):
    report = ingest(str(path), ws.manifest(corpus), ws.rejects(corpus), config, source=corpus)
    manifest = {r["video_id"]: r for r in read_parts(ws.manifest(corpus), MANIFEST).to_pylist()}
    return report, manifest, read_parts(ws.rejects(corpus), REJECTS).to_pylist()


def test_uri_form_round_trips_and_fsspec_opens_it(tmp_path, clips):
    _tar(tmp_path / "s.tar", {"a/b.mp4": clips[0], "c.txt": b"x"})
    uri = tar_uri("a/b.mp4", str(tmp_path / "s.tar"))
    assert uri == f"tar://a/b.mp4::{tmp_path}/s.tar"
    assert split_tar_uri(uri) == ("a/b.mp4", str(tmp_path / "s.tar"))
    assert split_tar_uri("s3://bucket/x.mp4") is None and split_tar_uri("/x/y.mp4") is None
    with fsspec.open(uri, "rb") as fh:  # the standard fsspec form: any reader can open it
        assert fh.read() == clips[0]
    index = tar_index(str(tmp_path / "s.tar"))
    assert set(index) == {"a/b.mp4", "c.txt"} and index["a/b.mp4"][1] == len(clips[0])
    assert read_tar_member(str(tmp_path / "s.tar"), "a/b.mp4") == clips[0]
    with pytest.raises(ValueError, match="'::'"):
        tar_uri("odd::name.mp4", "/x.tar")


def test_ingest_reads_tars_in_place(tmp_path, clips):
    d = _v2d(tmp_path, clips)
    ws = Workspace.at(tmp_path / "ws")
    report, manifest, rejects = _ingest(ws, "c", d)
    assert (report.input_rows, report.ingested, report.rejected) == (7, 7, 0), rejects
    # no video bytes written: nothing under the workspace is a video, no videos/ folder
    written = [p for p in Path(ws.root).rglob("*") if p.is_file()]
    assert not [p for p in written if p.suffix in (".mp4", ".webm", ".mkv")]
    assert not list(Path(ws.root).rglob("videos"))
    assert not [p for p in written if any(c[:256] in p.read_bytes() for c in clips)]
    for vid, row in manifest.items():
        shard = "00001" if vid.startswith("00001") else "00000"
        assert row["uri"] == f"tar://{vid}.mp4::{d}/{shard}.tar"
    with fsspec.open(manifest["000010001"]["uri"], "rb") as fh:
        assert fh.read() == clips[4]
    assert manifest["000010001"]["caption"] == "clip four"


def test_check_files_checks_shard_and_member_from_the_index(tmp_path, clips):
    _tar(tmp_path / "s.tar", {"k0.mp4": clips[0], "k1.mp4": clips[1]})
    folder = tmp_path / "f"
    folder.mkdir()
    s = tmp_path / "s.tar"
    (folder / "captions.csv").write_text(
        "video_id,caption,file\n"
        f"k0,listed member,tar://k0.mp4::{s}\n"
        f"k1,listed member too,tar://k1.mp4::{s}\n"
        f"k2,member not in the shard,tar://k2.mp4::{s}\n"
        f"k3,no such shard,tar://k3.mp4::{tmp_path}/nope.tar\n"
    )
    ws = Workspace.at(tmp_path / "ws")
    report, manifest, rejects = _ingest(ws, "c", folder)
    assert sorted(manifest) == ["k0", "k1"]
    got = {r["video_id"]: (r["reason"], r["detail"]) for r in rejects}
    assert got["k2"][0] == "file not found" and "has no member 'k2.mp4'" in got["k2"][1]
    assert got["k3"][0] == "file not found" and "nope.tar" in got["k3"][1]


def test_embedding_tar_members_equals_embedding_extracted_files(tmp_path, clips):
    from ragvid.pipelines.embed.run import embed_corpus
    from ragvid.pipelines.embed.stage import embeddings_dir, failures_dir

    d = _v2d(tmp_path, clips)
    ws = Workspace.at(tmp_path / "ws")
    _ingest(ws, "tar", d)
    # the same videos extracted to files, as a folder corpus with the same ids
    ext = tmp_path / "extracted"
    ext.mkdir()
    lines = ["video_id,caption,file"]
    for shard in ("00000", "00001"):
        with tarfile.open(d / f"{shard}.tar") as tar:
            for m in tar:
                if m.name.endswith(".mp4"):
                    (ext / m.name).write_bytes(tar.extractfile(m).read())
                    lines.append(f"{m.name[:-4]},caption,{m.name}")
    (ext / "captions.csv").write_text("\n".join(lines) + "\n")
    _ingest(ws, "files", ext)
    # a member removed from its shard after ingest is "missing" at decode
    _tar(d / "00001.tar", {"000010000.mp4": clips[3], "000010000.txt": b"clip three"})
    config = EmbedConfig(encoder="tiny", part_size=4, max_failure_ratio=1.0)
    for corpus in ("tar", "files"):
        embed_corpus(ws, corpus, config, engine="local", check_ratio=False)
    emb = {
        c: {
            r["video_id"]: r
            for r in read_parts(embeddings_dir(ws, c, "tiny"), EMBEDDINGS).to_pylist()
        }  # fmt: skip
        for c in ("tar", "files")
    }
    fail = {r["video_id"]: r for r in read_parts(failures_dir(ws, "tar", "tiny"), FAILURES)
            .to_pylist()}  # fmt: skip
    assert sorted(emb["tar"]) == ["000000000", "000000001", "000000002", "000010000"]
    for vid, row in emb["tar"].items():
        np.testing.assert_array_equal(row["video_emb"], emb["files"][vid]["video_emb"])
    assert all(r["uri"].startswith("tar://") for r in fail.values())
    classes = {v: r["error_class"] for v, r in fail.items()}
    assert classes == {"000000003": "undecodable", "000000004": "truncated",
                       "000010001": "missing"}  # fmt: skip
    assert "has no member '000010001.mp4'" in fail["000010001"]["message"]


def test_decode_with_time_limit_reads_a_tar_member(tmp_path, clips):
    shard = tmp_path / "s.tar"
    (tmp_path / "k0.mp4").write_bytes(clips[0])
    _tar(shard, {"k0.mp4": clips[0], "empty.mp4": b""})
    uri = tar_uri("k0.mp4", str(shard))
    limited = decode_video(uri, num_frames=4, timeout_s=60.0)  # the helper process
    direct = decode_video(str(tmp_path / "k0.mp4"), num_frames=4, timeout_s=None)
    np.testing.assert_array_equal(limited.frames, direct.frames)
    assert limited.total_frames == 12
    cases = {
        tar_uri("nope.mp4", str(shard)): "missing",
        tar_uri("k0.mp4", str(tmp_path / "gone.tar")): "missing",
        tar_uri("empty.mp4", str(shard)): "empty",
    }
    for bad, error_class in cases.items():
        with pytest.raises(DecodeError) as info:
            decode_video(bad, num_frames=4, timeout_s=60.0)
        assert info.value.error_class == error_class, info.value
    with pytest.raises(DecodeError) as info:
        decode_video(uri, num_frames=4, timeout_s=0.5, _test_delay_s=5.0)
    assert info.value.error_class == "timeout"


def test_shard_cut_inside_a_member_is_truncated(tmp_path, clips):
    shard = tmp_path / "s.tar"
    _tar(shard, {"k0.mp4": clips[0], "k1.mp4": clips[1]})
    offset, size = tar_index(str(shard))["k1.mp4"]  # the last member
    with open(shard, "r+b") as fh:
        fh.truncate(offset + size // 2)
    os.utime(shard, ns=(1, 1))  # a rewritten shard is indexed again (size/mtime key)
    with pytest.raises(DecodeError) as info:
        decode_video(tar_uri("k1.mp4", str(shard)), num_frames=4, timeout_s=None)
    assert info.value.error_class == "truncated"
    assert "needs bytes" in info.value.message
    # the members before the cut still decode; ingest (strict) refuses the shard as a whole
    assert decode_video(tar_uri("k0.mp4", str(shard)), num_frames=4, timeout_s=None).frames.size
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        tar_index(str(shard))
