"""The embedding stage: parts, markers, quarantine, a real kill + resume on Ray, retries, locks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import synth_manifest
from typer.testing import CliRunner

from ragvid.pipelines.embed.stage import (
    PartStats,
    embed_part,
    embeddings_dir,
    failures_dir,
    plan_parts,
    video_embedding,
)
from ragvid.pipelines.embed.throughput import progress_line
from ragvid.schemas import (
    EMBEDDINGS,
    FAILURES,
    MANIFEST,
    EmbedConfig,
    LockedError,
    SynthConfig,
    Workspace,
    read_parts,
)
from ragvid.schemas.io import output_lock, read_done
from ragvid.schemas.markers import marker_uri as done_marker

BAD_CLASSES = {"zero_byte": "empty", "truncated": "truncated", "not_a_video": "undecodable",
               "missing": "missing"}  # fmt: skip


def _all_rows(folder: str, spec, **kw):
    return read_parts(folder, spec, **kw).to_pylist()


def test_demo_corpus_every_row_embedded_or_quarantined(demo_embeddings):
    d = demo_embeddings
    config = EmbedConfig(encoder=d.encoder, part_size=64)
    plans = plan_parts(d.ws, d.corpus, config)
    assert plans and all(p.done for p in plans)
    manifest = read_parts(d.ws.manifest(d.corpus), MANIFEST).to_pylist()
    emb = read_parts(d.embeddings_dir, EMBEDDINGS, encoder=d.encoder)
    fail = _all_rows(d.failures_dir, FAILURES)
    ids = emb.column("video_id").to_pylist() + [r["video_id"] for r in fail]
    assert sorted(ids) == sorted(r["video_id"] for r in manifest)  # no loss, no duplicates
    planted = {r["video_id"]: r["planted"] for r in manifest}
    assert {r["video_id"]: r["error_class"] for r in fail} == {
        vid: BAD_CLASSES[p] for vid, p in planted.items() if p in BAD_CLASSES
    }
    assert all(r["stage"] == "decode" and r["message"] for r in fail)
    # stored vectors: T×dim frames, Eq. 3 video vector (to float16 precision), unit text vector
    row = emb.slice(0, 1).to_pylist()[0]
    frames = np.asarray(row["frame_emb"], np.float32)
    assert frames.shape == (row["n_frames"], 64) and row["n_frames"] == 8
    np.testing.assert_allclose(row["video_emb"], video_embedding(frames), atol=2e-3)
    assert abs(np.linalg.norm(np.asarray(row["text_emb"], np.float32)) - 1) < 2e-3
    assert len(row["frame_ts"]) == 8 and row["encoder"] == d.encoder
    # a finished part is never recomputed
    before = os.stat(done_marker(plans[0].uri)).st_mtime_ns
    stats = embed_part(d.ws, d.corpus, 0, config)
    assert stats.skipped and os.stat(done_marker(plans[0].uri)).st_mtime_ns == before


def test_changed_decode_settings_recompute_parts_speed_settings_do_not(demo_embeddings):
    """A part made with other frames (count, sampling, keyframes, backend) or another storage
    dtype is not reused; batch sizes, threads and worker counts change only speed."""
    d = demo_embeddings
    same = EmbedConfig(encoder=d.encoder, part_size=64, batch_size=7, decode_threads=3)
    assert all(p.done for p in plan_parts(d.ws, d.corpus, same))
    for change in ({"num_frames": 4}, {"keyframes": True}, {"decoder": "pyav"},
                   {"sampling": "fps", "fps": 2.0}, {"storage_dtype": "float32"}):  # fmt: skip
        other = EmbedConfig(encoder=d.encoder, part_size=64, **change)
        plans = plan_parts(d.ws, d.corpus, other)
        assert plans and not any(p.done for p in plans), change
        assert other.output_settings().items() <= plans[0].input.items()


def test_cli_encoder_list_and_embed_summary(demo_embeddings):
    from ragvid.flows.cli import app

    d = demo_embeddings
    out = CliRunner().invoke(app, ["encoder", "list"])
    assert out.exit_code == 0 and "tiny" in out.output
    args = ["embed", "-c", d.corpus, "-e", "demo-tiny", "-w", d.root, "--engine", "local"]
    out = CliRunner().invoke(app, args)  # every part done: skips them all, prints the table
    assert out.exit_code == 0, out.output
    assert "quarantined" in out.output and "truncated" in out.output
    out = CliRunner().invoke(app, ["embed", "-c", "nope", "-w", d.root, "--engine", "local"])
    assert out.exit_code == 2 and "ragvid corpus ingest" in out.output


def test_concurrent_run_is_refused(demo_embeddings):
    from ragvid.flows.cli import app
    from ragvid.pipelines.embed.run import embed_corpus

    d = demo_embeddings
    config = EmbedConfig(encoder=d.encoder, part_size=64)
    with output_lock(embeddings_dir(d.ws, d.corpus, d.encoder)):
        with pytest.raises(LockedError, match="another run"):
            embed_corpus(d.ws, d.corpus, config)
        args = ["embed", "-c", d.corpus, "-e", d.encoder, "-w", d.root, "--engine", "local"]
        out = CliRunner().invoke(app, args)
        assert out.exit_code == 2 and "being written by another run" in out.output


def test_kill_midway_then_resume_on_ray_then_retry_failures(tmp_path, ray_local):
    """A real SIGKILL of `ragvid embed`, a rerun on Ray Data that recomputes no finished part,
    then --retry-failures after the missing file appears."""
    from ragvid.pipelines.corpus.synth import synth_corpus
    from ragvid.pipelines.embed.run import embed_corpus

    raw = synth_corpus(
        str(tmp_path / "raw"), SynthConfig(num_videos=20, num_duplicates=2, num_bad=4, seed=3)
    )
    ws = Workspace.at(tmp_path / "ws")
    synth_manifest(raw, ws, "k")
    config = EmbedConfig(encoder="tiny", part_size=2)
    plans = plan_parts(ws, "k", config)
    assert len(plans) == 13
    ragvid = Path(sys.executable).with_name("ragvid")
    cmd = [str(ragvid), "embed", "-c", "k", "-e", "tiny", "--part-size", "2", "-w", ws.root,
           "--engine", "local"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not any(os.path.exists(done_marker(p.uri)) for p in plans):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no part finished in 120 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = {p.uri: (os.stat(done_marker(p.uri)).st_mtime_ns, read_done(p.uri))
                   for p in plans if os.path.exists(done_marker(p.uri))}  # fmt: skip
    assert 1 <= len(done_before) < len(plans), "the kill must land mid-run"

    lines: list[str] = []
    report = embed_corpus(
        ws, "k", config, progress=lambda _n, _t, s: lines.append(progress_line(s.get("throughput")))
    )
    assert report.parts_skipped == len(done_before)
    # pools sized from the rates measured on the first videos; every landed part names a bound
    assert report.throughput["pools"]["basis"] == "measured"
    landed = len(plans) - len(done_before)
    assert sum("-bound" in line for line in lines) >= landed, lines
    for uri, (mtime, stats) in done_before.items():
        assert os.stat(done_marker(uri)).st_mtime_ns == mtime and read_done(uri) == stats
    assert all(p.done for p in plan_parts(ws, "k", config))
    emb = _all_rows(embeddings_dir(ws, "k", "tiny"), EMBEDDINGS)
    fail = _all_rows(failures_dir(ws, "k", "tiny"), FAILURES)
    ids = [r["video_id"] for r in emb] + [r["video_id"] for r in fail]
    manifest = read_parts(ws.manifest("k"), MANIFEST).to_pylist()
    assert sorted(ids) == sorted(r["video_id"] for r in manifest)
    assert report.embedded + report.quarantined == report.rows == len(manifest)
    assert report.by_class == {"empty": 1, "truncated": 1, "undecodable": 1, "missing": 1}
    # Ray and in-process paths give the same vectors for the same video
    from ragvid.pipelines.embed.encoder import load_encoder
    from ragvid.pipelines.embed.stage import embed_rows

    ray_row = next(r for r in emb if r["video_id"] == manifest[0]["video_id"])
    local = embed_rows([manifest[0]], load_encoder("tiny"), config)[0]
    np.testing.assert_allclose(ray_row["video_emb"], local["video_emb"], atol=2e-3)

    # --retry-failures: the missing video appears; only quarantined rows are reprocessed
    missing = next(r for r in manifest if r["planted"] == "missing")
    good = next(r for r in manifest if r["planted"] == "")
    shutil.copy(good["uri"], missing["uri"])
    marker_times = {p.uri: os.stat(done_marker(p.uri)).st_mtime_ns for p in plans}
    failed_parts = {plans[r["part"]].uri for r in fail}
    report = embed_corpus(ws, "k", config, retry_failures=True)
    assert report.quarantined == 3 and report.embedded + 3 == len(manifest)
    fail = _all_rows(failures_dir(ws, "k", "tiny"), FAILURES)
    assert missing["video_id"] not in {r["video_id"] for r in fail}
    assert {r["attempt"] for r in fail} == {2}
    emb_ids = [r["video_id"] for r in _all_rows(embeddings_dir(ws, "k", "tiny"), EMBEDDINGS)]
    assert missing["video_id"] in emb_ids and len(emb_ids) == len(set(emb_ids))
    changed = [u for u, t in marker_times.items() if os.stat(done_marker(u)).st_mtime_ns != t]
    assert set(changed) == failed_parts  # only the parts holding quarantined rows were touched
    assert PartStats.from_marker(changed[0]).attempt == 2


def test_float32_storage_keeps_the_contract_metadata(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ragvid.pipelines.embed.stage import PartPlan, write_part
    from ragvid.schemas.io import read_metadata

    plan = PartPlan(
        index=0,
        uri=f"{tmp_path}/e/part-00000.parquet",
        rows=1,
        files={"failures": f"{tmp_path}/f/p.parquet"},
    )
    fe = np.random.default_rng(0).random((3, 4)).astype(np.float32)
    row = dict(video_id="a", uri="x", caption="c", frame_emb=fe, video_emb=video_embedding(fe))
    row.update(text_emb=fe[1], frame_ts=np.arange(3, dtype=np.float32), error_class=None)
    config = EmbedConfig(encoder="tiny", storage_dtype="float32")
    stats = write_part(plan, [row], "preset:tiny", 4, config, seconds=0.0)
    # the stage writes the files; only an executor (finish_part) writes the marker
    assert stats.embedded == 1 and not os.path.exists(done_marker(plan.uri))
    stored = pq.read_table(plan.uri)
    assert stored.schema.field("video_emb").type.value_type == pa.float32()
    np.testing.assert_array_equal(stored.column("video_emb")[0].values, video_embedding(fe))
    assert read_metadata(plan.uri)[b"ragvid.encoder"] == b"preset:tiny"
