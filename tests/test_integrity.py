"""Data integrity (issue 12): the lock, markers that prove their parts, tables that read as
datasets, the failure-ratio guard, leftovers of killed writers. Real processes, real files."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ragvid.pipelines.embed.run import embed_corpus
from ragvid.schemas import EMBEDDINGS, EmbedConfig, LockedError, SynthConfig, Workspace
from ragvid.schemas.guards import FailureRatioError
from ragvid.schemas.io import output_lock, read_parts
from ragvid.schemas.lock import LOCK_FILE
from ragvid.schemas.markers import IncompleteTableError, marker_uri

CFG = EmbedConfig(encoder="tiny", part_size=4)


def _cli(*args: object, code: int = 0) -> str:
    from ragvid.flows.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == code, f"ragvid {' '.join(map(str, args))}\n{res.output}"
    return res.output


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from ragvid.pipelines.corpus.synth import synth_corpus

    root = tmp_path_factory.mktemp("integrity-raw")
    config = SynthConfig(
        num_videos=16, num_duplicates=2, num_bad=2, width=48, height=32, num_frames=8, seed=7
    )
    return synth_corpus(str(root / "raw"), config).out_dir


@pytest.fixture
def ws(raw, tmp_path) -> Workspace:
    ws = Workspace.at(tmp_path / "ws")
    _cli("corpus", "ingest", raw, "--name", "c", "-w", ws.root)
    return ws


def _parts(ws: Workspace) -> list[Path]:
    return sorted(Path(ws.embeddings("c", "preset-tiny")).glob("part-*.parquet"))


def _emb_rows(ws: Workspace) -> list[tuple]:
    t = pq.read_table(ws.embeddings("c", "preset-tiny"), columns=["video_id", "video_emb"])
    return sorted(zip(t["video_id"].to_pylist(), t["video_emb"].to_pylist(), strict=True))


# --- the lock ----------------------------------------------------------------------------


def _contender(folder: str, barrier, holders, overlap, results, trials: int) -> None:
    for trial in range(trials):
        barrier.wait()
        try:
            with output_lock(folder):
                with holders.get_lock():
                    holders.value += 1
                    overlap.value = max(overlap.value, holders.value)
                time.sleep(0.03)
                with holders.get_lock():
                    holders.value -= 1
            results.put((trial, 1))
        except LockedError:
            results.put((trial, 0))
        barrier.wait()


def test_lock_has_exactly_one_holder_under_simultaneous_starts(tmp_path):
    """100 rounds of 4 processes acquiring at the same instant: one holder each round."""
    ctx = mp.get_context("fork")
    n, trials = 4, 100
    barrier, results = ctx.Barrier(n), ctx.Queue()
    holders, overlap = ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [
        ctx.Process(
            target=_contender, args=(str(tmp_path), barrier, holders, overlap, results, trials)
        )
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in range(n * trials)]
    for p in procs:
        p.join(timeout=30)
    assert overlap.value == 1, "two processes held the lock at once"
    per_round = [0] * trials
    for trial, ok in got:
        per_round[trial] += ok
    assert min(per_round) >= 1  # every round someone held it: never refused with no holder


HOLD = """
import sys, time
from ragvid.schemas.io import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_lock_held_by_a_live_long_run_is_never_taken_and_dies_with_it(tmp_path):
    folder = str(tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, folder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        lock = Path(folder) / LOCK_FILE
        info = json.loads(lock.read_text())
        assert info["pid"] == proc.pid
        # age does not matter: even a lock whose run started long ago holds while it lives
        os.utime(lock, (time.time() - 30 * 3600, time.time() - 30 * 3600))
        with pytest.raises(LockedError, match=f"pid {proc.pid}"):
            with output_lock(folder):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with output_lock(folder) as me:  # the kernel dropped it with the process: no stale lock
        assert json.loads((Path(folder) / LOCK_FILE).read_text())["token"] == me["token"]


def test_lock_clears_what_a_killed_writer_left(tmp_path):
    leftover = tmp_path / ".part-00000.parquet.0123456789ab.tmp"
    leftover.write_bytes(b"half a file")
    with output_lock(tmp_path):
        assert not leftover.exists()


# --- markers that prove their parts --------------------------------------------------------


def test_tables_read_as_datasets_with_pyarrow_and_duckdb(ws):
    import duckdb

    embed_corpus(ws, "c", CFG, engine="local")
    folders = [ws.manifest("c"), ws.embeddings("c", "preset-tiny"), ws.failures("c", "preset-tiny")]
    for folder in folders:
        n = pq.read_table(folder).num_rows
        got = duckdb.sql(f"select count(*) from read_parquet('{folder}/*.parquet')").fetchall()[0]
        assert got[0] == n > 0, folder
    assert (Path(ws.embeddings("c", "preset-tiny")) / "_markers").is_dir()


@pytest.mark.parametrize("damage", ["delete", "truncate", "empty-marker"])
def test_damaged_part_is_recomputed_never_skipped(ws, damage):
    embed_corpus(ws, "c", CFG, engine="local")
    good = _emb_rows(ws)
    victim = _parts(ws)[1]
    if damage == "delete":
        victim.unlink()
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-100])
    else:
        Path(marker_uri(str(victim))).write_bytes(b"")
    with pytest.raises(IncompleteTableError, match="1 parts done|incomplete"):
        read_parts(ws.embeddings("c", "preset-tiny"), EMBEDDINGS)
    out = _cli("index", "build", "--corpus", "c", "--encoder", "tiny", "--no-ray", "-w", ws.root,
               code=2)  # fmt: skip
    assert "incomplete" in out and "ragvid embed" in " ".join(out.split())
    report = embed_corpus(ws, "c", CFG, engine="local")
    assert report.parts_skipped == report.parts - 1
    assert report.embedded + report.quarantined == report.rows == 20
    assert _emb_rows(ws) == good


def test_bit_flip_is_caught_by_readers_and_recomputed_by_verify(ws):
    embed_corpus(ws, "c", CFG, engine="local")
    good = _emb_rows(ws)
    victim = _parts(ws)[2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x10  # same size: only a checksum can tell
    victim.write_bytes(bytes(data))
    with pytest.raises(Exception, match="checksum|sha256|CRC|Corrupt|corrupt"):
        read_parts(ws.embeddings("c", "preset-tiny"), EMBEDDINGS)
    quick = embed_corpus(ws, "c", CFG, engine="local")
    assert quick.parts_skipped == quick.parts  # the size matches: the cheap check passes it
    report = embed_corpus(ws, "c", CFG, engine="local", verify=True)
    assert report.parts_skipped == report.parts - 1 and _emb_rows(ws) == good
    read_parts(ws.embeddings("c", "preset-tiny"), EMBEDDINGS)  # whole again


def test_all_bad_corpus_fails_the_run_after_writing_everything(raw, tmp_path):
    import shutil

    bad_raw = tmp_path / "bad-raw"
    shutil.copytree(raw, bad_raw)
    videos = [p for p in bad_raw.rglob("*") if p.suffix in (".mp4", ".webm")]
    assert videos
    for p in videos:
        p.write_bytes(b"not a video at all")
    ws = Workspace.at(tmp_path / "ws")
    _cli("corpus", "ingest", bad_raw, "--name", "c", "-w", ws.root)
    with pytest.raises(FailureRatioError, match="20 of 20 rows failed"):
        embed_corpus(ws, "c", CFG, engine="local")
    markers = list((Path(ws.embeddings("c", "preset-tiny")) / "_markers").glob("part-*.json"))
    assert len(markers) == len(_parts(ws)) > 0  # everything written and marked first
    out = _cli("embed", "-c", "c", "-e", "tiny", "--part-size", "4", "--engine", "local",
               "-w", ws.root, code=1)  # fmt: skip
    said = " ".join(out.split())
    assert "20 of 20 rows failed" in said and "top errors" in said
    assert "Traceback" not in out


def test_disk_full_mid_embed_is_one_line_and_the_rerun_resumes(raw, small_disk, fill_disk):
    from ragvid.pipelines.embed.stage import check_complete

    ws = Workspace.at(small_disk / "ws")
    _cli("corpus", "ingest", raw, "--name", "c", "-w", ws.root)
    filler = fill_disk(small_disk, leave_pages=8)  # room for a part or two, not the corpus
    args = ["embed", "-c", "c", "-e", "tiny", "--part-size", "4", "--engine", "local"]
    out = _cli(*args, "-w", ws.root, code=2)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "disk full" in errors[0], out
    assert "Traceback" not in out
    filler.unlink()
    again = _cli(*args, "-w", ws.root)
    assert "20" in again
    check_complete(ws, "c", "tiny")  # every manifest row in a verified part
    assert not [p for p in Path(ws.root).rglob("*.tmp")]
