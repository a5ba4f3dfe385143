"""Ingest under bad bytes and a failing disk: a bad row or file is one reject, the rest ingests;
too many rejects fail the run after everything is written; a full disk is one error line and
a clean rerun. Real files (a FIFO, Latin-1 bytes, a tmpfs that fills up), no mocks."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from ragvid.flows.cli.common import user_errors
from ragvid.flows.cli.errors import describe_error, describe_os_error
from ragvid.pipelines.corpus.beam import ingest
from ragvid.schemas import MANIFEST, REJECTS, ManifestConfig, Workspace, read_parts
from ragvid.schemas.checksum import ChecksumMismatchError
from ragvid.schemas.guards import FailureRatioError
from ragvid.schemas.markers import IncompleteTableError

HEADER = "videoid,contentUrl,duration,page_dir,name\n"
LENIENT = ManifestConfig(num_shards=2, max_failure_ratio=1.0)


def _rows(first: int, n: int) -> str:
    return "".join(
        f"{i},https://x/{i}.mp4,PT00H00M05S,p,clip number {i}\n" for i in range(first, first + n)
    )


def _webvid(d: Path, files: dict[str, bytes]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def _run(tmp_path: Path, input_path: Path, config: ManifestConfig = LENIENT):
    ws = Workspace.at(tmp_path / "ws")
    report = ingest(str(input_path), ws.manifest("c"), ws.rejects("c"), config)
    manifest = read_parts(ws.manifest("c"), MANIFEST)
    rejects = read_parts(ws.rejects("c"), REJECTS).to_pylist()
    assert report.ingested == manifest.num_rows and report.rejected == len(rejects)
    assert report.ingested + report.rejected == report.input_rows
    return report, manifest, rejects


# --- bad bytes: a row, a file ----------------------------------------------------------------


def test_latin1_row_is_a_reject_and_every_other_row_and_file_ingests(tmp_path):
    latin1 = (
        HEADER.encode()
        + _rows(10, 2).encode()  # lines 2-3
        + "13,https://x/13.mp4,PT00H00M05S,p,un café crème\n".encode("latin-1")  # line 4
        + _rows(14, 2).encode()  # lines 5-6: after the bad byte, still read
    )
    d = _webvid(
        tmp_path / "in",
        {
            "results_0.csv": (HEADER + _rows(0, 3)).encode(),
            "results_1.csv": latin1,
            "results_2.csv": (HEADER + "20,https://x/20.mp4,,p,déjà vu in UTF-8\n").encode(),
        },
    )
    report, manifest, rejects = _run(tmp_path, d, ManifestConfig(num_shards=2))  # default guard
    assert (report.input_rows, report.ingested, report.rejected) == (9, 8, 1)
    ids = set(manifest.column("video_id").to_pylist())
    assert ids == {"0", "1", "2", "10", "11", "14", "15", "20"}
    assert "déjà vu in UTF-8" in manifest.column("caption").to_pylist()
    (rej,) = rejects
    f1 = str(d / "results_1.csv")
    assert (rej["source_file"], rej["source_row"], rej["field"]) == (f1, 4, "name")
    assert rej["reason"] == "not UTF-8" and report.rejects_by_reason == {"not UTF-8": 1}
    assert rej["detail"].startswith(f"{f1} row 4: column 'name': byte(s) \\xe9")
    assert "not UTF-8" in rej["detail"] and "iconv" in rej["detail"]
    assert "caf\\xe9 cr\\xe8me" in rej["raw"]  # stored readable, bytes shown


def test_latin1_line_of_a_jsonl_is_a_reject(tmp_path):
    d = tmp_path / "folder"
    d.mkdir()
    (d / "captions.jsonl").write_bytes(
        b'{"video_id": "a", "caption": "one", "file": "https://x/a.mp4"}\n'
        + '{"video_id": "b", "caption": "gar\xe7on", "file": "https://x/b.mp4"}\n'.encode("latin-1")
        + b'{"video_id": "c", "caption": "three", "file": "https://x/c.mp4"}\n'
    )
    report, manifest, rejects = _run(tmp_path, d)
    assert sorted(manifest.column("video_id").to_pylist()) == ["a", "c"]
    assert [(r["source_row"], r["reason"]) for r in rejects] == [(2, "not UTF-8")]
    assert "\\xe7" in rejects[0]["detail"] and "\\xe7" in rejects[0]["raw"]


def test_a_file_of_invalid_bytes_is_one_reject(tmp_path):
    garbage = bytes(range(0x80, 0x100)) * 40 + b"\n" + bytes(range(0xFF, 0x7F, -1)) * 40 + b"\n"
    d = _webvid(
        tmp_path / "in",
        {
            "results_0.csv": (HEADER + _rows(0, 4)).encode(),
            "results_1.csv": garbage,
        },
    )
    report, manifest, rejects = _run(tmp_path, d, ManifestConfig(num_shards=2))
    assert (report.input_rows, report.ingested, report.rejected) == (5, 4, 1)
    (rej,) = rejects
    f1 = str(d / "results_1.csv")
    assert (rej["source_file"], rej["source_row"], rej["reason"]) == (f1, 0, "not UTF-8")
    assert rej["detail"].startswith(f"{f1} line 1 (the header): byte(s) \\x80\\x81")
    assert "no row of this file could be read" in rej["detail"]


def test_corrupt_parquet_and_tar_shards_are_rejects(tmp_path):
    d = tmp_path / "v2d"
    d.mkdir()
    pq.write_table(
        pa.table(
            {"key": ["k0", "k1"], "caption": ["a", "b"], "url": ["https://a/0", "https://a/1"]}
        ),
        d / "00000.parquet",
    )
    (d / "00001.parquet").write_bytes(b"PAR1" + os.urandom(512))  # no footer
    (d / "00002.tar").write_bytes(os.urandom(3000))  # a tar shard without parquet
    report, manifest, rejects = _run(tmp_path, d)
    assert report.ingested == 2 and report.rejected == 2
    got = {Path(r["source_file"]).name: (r["source_row"], r["reason"]) for r in rejects}
    assert got == {"00001.parquet": (0, "unreadable file"), "00002.tar": (0, "unreadable file")}
    assert all("replace it with an intact copy" in r["detail"] for r in rejects)


# --- special files --------------------------------------------------------------------------


def _with_deadline(fn, seconds: float = 120.0):
    """Run ``fn`` in a thread: opening a FIFO would block forever, so hanging is failing."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "ingest blocked on the FIFO"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_among_inputs_is_called_a_fifo_not_empty(tmp_path):
    d = _webvid(tmp_path / "in", {"results_0.csv": (HEADER + _rows(0, 3)).encode()})
    os.mkfifo(d / "results_1.csv")
    report, manifest, rejects = _with_deadline(lambda: _run(tmp_path, d))
    assert (report.ingested, report.rejected) == (3, 1)
    (rej,) = rejects
    assert (rej["source_row"], rej["reason"]) == (0, "not a regular file")
    assert f"{d / 'results_1.csv'} is a FIFO (named pipe), not a regular file" in rej["detail"]
    assert "0 bytes" not in rej["detail"] and "empty" not in rej["detail"]
    with pytest.raises(ValueError, match=r"is a FIFO \(named pipe\), not a regular file or folder"):
        _with_deadline(lambda: _run(tmp_path, d / "results_1.csv"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_named_like_a_video_is_rejected_at_ingest(tmp_path, demo_corpus_raw):
    d = tmp_path / "folder"
    (d / "videos").mkdir(parents=True)
    mp4 = next(Path(demo_corpus_raw.videos_dir).glob("*.mp4"))
    (d / "videos" / "clip0.mp4").write_bytes(mp4.read_bytes())
    os.mkfifo(d / "videos" / "clip1.mp4")
    (d / "captions.csv").write_text("file,caption\nvideos/clip0.mp4,zero\nvideos/clip1.mp4,one\n")
    report, manifest, rejects = _with_deadline(lambda: _run(tmp_path, d))
    assert manifest.column("video_id").to_pylist() == ["clip0"]
    (rej,) = rejects
    assert (rej["reason"], rej["field"], rej["source_row"]) == ("not a regular file", "file", 3)
    assert "is a FIFO (named pipe), not a regular file" in rej["detail"]


# --- the failure-ratio guard ------------------------------------------------------------------


def _all_bad(tmp_path: Path) -> Path:
    rows = "".join(f"{i},https://x/{i}.mp4,PT5S,p,\n" for i in range(6))  # no captions
    rows += "6,https://x/6.mp4,five seconds,p,bad duration\n"
    return _webvid(tmp_path / "bad", {"results_0.csv": (HEADER + rows).encode()})


def test_guard_fires_on_an_all_bad_corpus_after_writing_everything(tmp_path):
    d = _all_bad(tmp_path)
    ws = Workspace.at(tmp_path / "ws")
    with pytest.raises(FailureRatioError) as info:
        ingest(str(d), ws.manifest("c"), ws.rejects("c"), ManifestConfig(num_shards=2))
    err = info.value
    assert (err.failed, err.total, err.by_class) == (7, 7, {"empty field": 6, "bad duration": 1})
    message = str(err)
    assert "7 of 7 rows failed (100% > the 20% limit" in message
    assert "empty field ×6, bad duration ×1" in message and ws.rejects("c") in message
    # nothing lost: the rejects and the (empty) manifest are in place for inspection
    assert len(read_parts(ws.rejects("c"), REJECTS)) == 7
    assert read_parts(ws.manifest("c"), MANIFEST).num_rows == 0


def test_guard_passes_with_max_failure_ratio_one_and_counts_every_reason(tmp_path):
    report, manifest, rejects = _run(tmp_path, _all_bad(tmp_path), LENIENT)
    assert (report.ingested, report.rejected) == (0, 7)
    # just under / just over a limit: 2 bad of 10 passes at 0.2, fails at 0.19
    rows = _rows(0, 8) + "8,https://x/8.mp4,,p,\n9,https://x/9.mp4,,p,\n"
    d = _webvid(tmp_path / "some", {"results_0.csv": (HEADER + rows).encode()})
    _run(tmp_path, d, ManifestConfig(max_failure_ratio=0.2))
    with pytest.raises(FailureRatioError, match="2 of 10 rows failed"):
        _run(tmp_path, d, ManifestConfig(max_failure_ratio=0.19))


def test_cli_guard_exits_1_after_printing_the_report(tmp_path):
    from ragvid.flows.cli import app

    args = ["corpus", "ingest", str(_all_bad(tmp_path)), "-w", str(tmp_path / "ws")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "input rows" in result.output and "first 7 rejects" in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "7 of 7 rows failed" in errors[0]
    assert "--max-failure-ratio" in errors[0] and "Traceback" not in result.output
    ok = CliRunner().invoke(app, [*args, "--max-failure-ratio", "1"])
    assert ok.exit_code == 2 and "no row of" in ok.output  # all rejected: nothing to embed


# --- the CLI's one-line errors ----------------------------------------------------------------


def _cli_of(exc: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @user_errors
    def boom(workspace: str = "/the/workspace") -> None:
        raise exc

    return app


@pytest.mark.parametrize(
    "exc, code, text",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/d/part-00000.parquet"),
            2,
            "disk full writing /d/part-00000.parquet: free space or point --workspace at a "
            "bigger disk; rerun resumes where it stopped",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), 2, "disk full writing /the/workspace"),
        (OSError(errno.EDQUOT, "Disk quota exceeded", "/q"), 2, "disk quota exceeded writing /q"),
        (OSError(errno.EROFS, "Read-only file system", "/ro"), 2, "read-only file system at /ro"),
        (PermissionError(errno.EACCES, "Permission denied", "/p"), 2, "permission denied on /p"),
        (PermissionError(errno.EPERM, "Operation not permitted", "/p"), 2, "not permitted on /p"),
        (OSError(errno.EIO, "Input/output error", "/io"), 2, "I/O error on /io: the disk"),
        (FileNotFoundError("input /x does not exist: pass a corpus"), 2, "input /x does not"),
        (IncompleteTableError("table /t has no marker for part-00001"), 2, "no marker"),
        (ChecksumMismatchError("/t/part-0 sha256 differs"), 2, "sha256 differs"),
        (FailureRatioError("embedding: 9 of 10 rows failed", 9, 10, {}), 1, "9 of 10"),
    ],
)
def test_cli_errors_are_one_line_with_path_and_fix(exc, code, text):
    result = CliRunner().invoke(_cli_of(exc), [])
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], lines


def test_error_lines_unwrap_causes_and_fold_newlines():
    full = OSError(errno.ENOSPC, "No space left on device", "/ws/.ragvid-write-test")
    try:
        try:
            raise full
        except OSError as cause:
            raise PermissionError("workspace /ws is not writable; fix its permissions") from cause
    except PermissionError as wrapped:
        assert describe_os_error(wrapped).startswith("disk full writing /ws/.ragvid-write-test")
    remote = OSError(errno.ECONNRESET, "Connection reset", "s3://bucket/corpora/c/part-1")
    assert describe_os_error(remote).startswith("storage error on s3://bucket/corpora/c/part-1")
    assert describe_error(ValueError("line one\nline two")) == "line one line two"
    assert describe_error(KeyError("unknown table 'x'")) == "unknown table 'x'"


def test_cli_debug_reraises(monkeypatch):
    monkeypatch.setenv("RAGVID_DEBUG", "1")
    result = CliRunner().invoke(_cli_of(OSError(errno.ENOSPC, "No space left", "/d")), [])
    assert isinstance(result.exception, OSError) and result.exception.errno == errno.ENOSPC


# --- disk full: one error line, then a clean rerun ---------------------------------------------

_ENOSPC_AT_FSYNC = """
import errno, os, sys
real_fsync, under = os.fsync, os.environ["RAGVID_TEST_ENOSPC_UNDER"]

def fsync(fd):  # the disk fills up while a part is flushed: the OS names no file
    if os.readlink(f"/proc/self/fd/{fd}").startswith(under):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_fsync(fd)

os.fsync = fsync
from ragvid.flows.cli import app
app(sys.argv[1:], prog_name="ragvid")
"""


def _ingest_cli(raw: str, ws: Path, env: dict | None = None, code: str | None = None):
    args = ["corpus", "ingest", raw, "--name", "d", "-w", str(ws)]
    cmd = (
        [sys.executable, "-c", code, *args]
        if code
        else [sys.executable, "-m", "ragvid.flows.cli", *args]
    )
    env = {**os.environ, "COLUMNS": "80", **(env or {})}
    env.pop("RAGVID_DEBUG", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _assert_one_disk_full_line(run: subprocess.CompletedProcess, under: Path) -> None:
    assert run.returncode == 2, run.stdout + run.stderr
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines  # no traceback, no Beam log, nothing else
    assert lines[0].startswith(f"error: disk full writing {under}")
    assert lines[0].endswith(
        "free space or point --workspace at a bigger disk; rerun resumes where it stopped"
    )


def _assert_clean_rerun(raw: str, ws: Path, demo_corpus_raw) -> None:
    again = _ingest_cli(raw, ws)
    assert again.returncode == 0, again.stdout + again.stderr
    manifest = read_parts(Workspace.at(ws).manifest("d"), MANIFEST)
    assert manifest.num_rows == demo_corpus_raw.num_rows - 1  # the "missing" row is rejected
    assert sorted(p.name for p in (ws / "corpora" / "d").iterdir()) == [
        "_lock",
        "manifest",
        "rejects",
    ]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_disk_full_while_flushing_is_one_line_then_rerun_succeeds(tmp_path, demo_corpus_raw):
    ws = tmp_path / "ws"
    corpora = ws / "corpora"
    full = _ingest_cli(
        demo_corpus_raw.out_dir, ws, {"RAGVID_TEST_ENOSPC_UNDER": str(corpora)}, _ENOSPC_AT_FSYNC
    )
    _assert_one_disk_full_line(full, corpora / "d")
    assert [p.name for p in (corpora / "d").iterdir()] == ["_lock"]  # staging removed
    _assert_clean_rerun(demo_corpus_raw.out_dir, ws, demo_corpus_raw)


def test_real_full_disk_is_one_line_then_rerun_succeeds(small_disk, fill_disk, demo_corpus_raw):
    ws = small_disk / "ws"
    filler = fill_disk(small_disk, leave_pages=4)  # room for the lock and a JSON, not the manifest
    full = _ingest_cli(demo_corpus_raw.out_dir, ws)
    _assert_one_disk_full_line(full, ws)
    filler.unlink()  # free space
    _assert_clean_rerun(demo_corpus_raw.out_dir, ws, demo_corpus_raw)
