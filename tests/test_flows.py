"""The Prefect flows end to end: the demo leaves its outputs and artifacts behind, a REAL kill
of build-index resumes without recomputing finished parts, bad input fails fast and clearly."""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from ragvid.schemas import SynthConfig, io
from ragvid.schemas.tables import MANIFEST
from ragvid.schemas.workspace import Workspace

RAGVID = str(Path(sys.executable).with_name("ragvid"))


def _synth_with_manifest(root: Path, corpus: str, config: SynthConfig) -> Workspace:
    """A generated corpus plus its manifest written straight from the CSV (no Beam needed)."""
    from ragvid.pipelines.corpus.synth import synth_corpus

    ws = Workspace.at(root)
    rep = synth_corpus(ws.raw(corpus), config)
    rows = list(csv.DictReader(open(rep.csv_path)))
    table = {
        "video_id": [r["videoid"] for r in rows],
        "uri": [os.path.join(ws.raw(corpus), r["contentUrl"]) for r in rows],
        "caption": [r["name"] for r in rows],
        "duration_s": [None] * len(rows),
        "source": [corpus] * len(rows),
        "source_file": ["results_0.csv"] * len(rows),
        "source_row": list(range(2, len(rows) + 2)),
    }
    io.write_table(io.join(ws.manifest(corpus), io.part_name(0)), pa.table(table), MANIFEST)
    return ws


# --- the demo, once per module ---------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(prefect_harness, ray_local, tmp_path_factory):
    from ragvid.flows.demo import demo_flow

    root = tmp_path_factory.mktemp("demo-ws")
    started = time.monotonic()
    # the model steps (fine-tune, generation, evaluation) add ~100 s here: the suite's budget
    # keeps them out; `ragvid demo` runs them
    out = demo_flow(workspace=str(root), small=True, engine="ray", with_model=False)
    return out, time.monotonic() - started


def test_demo_leaves_index_neighbours_inspection_and_report(demo_run):
    from ragvid.pipelines.index.layout import IndexManifest
    from ragvid.schemas.io import list_parts
    from ragvid.schemas.tables import NEIGHBOURS

    out, seconds = demo_run
    man = IndexManifest.load(out["index"])
    assert man.ntotal > 0
    parts = list_parts(out["neighbours"], require_done=True)
    tables = [io.read_table(p, NEIGHBOURS) for p in parts]
    assert parts and sum(t.num_rows for t in tables) == man.ntotal
    masks = [m for t in tables for m in t.column("mask").to_pylist()]
    kept = sum(map(sum, masks)) / sum(map(len, masks))
    assert kept > 0.5, f"the demo's neighbour lists are {1 - kept:.0%} padding"  # a collapsed fit
    assert out["inspection"] and all(Path(p).read_text().startswith("<") for p in out["inspection"])
    report = Path(out["report"]).read_text()
    assert "ragvid demo" in report and out["index"] in report and "Model steps" in report
    assert Path(out["histogram"]).stat().st_size > 0
    assert seconds < 600


def test_demo_artifacts_readable_through_client(demo_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import Artifact

    async def read(keys):
        async with get_client() as client:
            resp = await client.request(
                "POST",
                "/artifacts/filter",
                json={"artifacts": {"key": {"any_": keys}}, "sort": "CREATED_DESC", "limit": 50},
            )
            return Artifact.model_validate_list(resp.json())

    keys = [
        "demo-small-summary",
        "demo-small-report",
        "embed-demo-small",
        "embed-demo-small-failures",
        "index-demo-small",
        "neighbours-demo-small",
        "build-index-demo-small-report",
        "embed-demo-small-progress",
    ]
    arts = asyncio.run(read(keys))
    by_key = {a.key: a for a in arts}
    assert set(keys) <= set(by_key), sorted(by_key)
    assert by_key["embed-demo-small-progress"].type == "progress"
    assert float(by_key["embed-demo-small-progress"].data) == 100.0
    assert "-bound" in by_key["embed-demo-small-progress"].description  # the measured bottleneck
    assert "bound" in by_key["embed-demo-small"].data
    assert (
        by_key["embed-demo-small"].type == "table"
        and "quarantined" in by_key["embed-demo-small"].data
    )
    failures = by_key["embed-demo-small-failures"].data
    assert "error_class" in failures  # the planted bad files are counted by class
    index_table = by_key["index-demo-small"].data
    assert "dup_groups" in index_table and "pairs_failing_frame_check" in index_table


# --- a real kill -----------------------------------------------------------------------


def test_killed_build_index_resumes_without_recomputing(prefect_server, tmp_path):
    _url, env = prefect_server
    ws = _synth_with_manifest(
        tmp_path / "ws",
        "kill",
        SynthConfig(num_videos=20, num_duplicates=2, num_bad=2, width=48, height=32, num_frames=8),
    )
    cmd = [
        RAGVID,
        "run",
        "build-index",
        "-c",
        "kill",
        "-w",
        ws.root,
        "--encoder",
        "tiny",
        "--part-size",
        "3",
        "--engine",
        "local",
    ]
    emb_dir = Path(ws.corpus("kill")) / "embeddings" / "preset-tiny"
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 150
    done: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        done = sorted(emb_dir.glob("_markers/part-*.json"))
        if len(done) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-3000:]
    total_parts = 8  # 24 rows / 3
    assert 2 <= len(done) < total_parts
    before = {p.name: p.stat().st_mtime_ns for p in emb_dir.glob("_markers/part-*.json")}
    assert not (Path(ws.index("kill")) / "index.json").exists()

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in emb_dir.glob("_markers/part-*.json")}
    assert len(after) == total_parts
    assert all(after[name] == mtime for name, mtime in before.items()), "finished part redone"
    assert f"({len(before)} reused)" in rerun.stdout
    assert (Path(ws.index("kill")) / "index.json").exists()
    assert "21 embedded" in rerun.stdout or "embedded" in rerun.stdout


# --- bad input -------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_input_fails_fast_with_one_clear_line(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    cases = [
        (["run", "build-index", "-c", "x", "-w", str(tmp_path / "nope")], "does not exist"),
        (["run", "neighbours", "--index", "x", "-w", str(tmp_path / "nope")], "does not exist"),
        (
            ["run", "build-index", "-c", "missing", "-w", ws.ensure_writable().root],
            "has no manifest",
        ),
        (
            [
                "run",
                "build-index",
                "-c",
                "x",
                "-w",
                ws.root,
                "--ray-address",
                f"ray://127.0.0.1:{_free_port()}",
            ],
            "does not answer",
        ),
    ]
    for args, message in cases:
        started = time.monotonic()
        proc = subprocess.run([RAGVID, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        err = " ".join(proc.stderr.split())  # rich wraps long lines
        assert message in err and "Traceback" not in err, (args, proc.stderr)
        assert err.startswith("error:") and proc.stderr.count("error:") == 1
        assert time.monotonic() - started < 30


def test_corpus_that_fails_ingest_entirely(prefect_server, tmp_path):
    _url, env = prefect_server
    src = tmp_path / "bad"
    src.mkdir()
    (src / "results_0.csv").write_text(
        "videoid,contentUrl,duration,page_dir,name\n,videos/a.mp4,PT00H00M02S,x,\n"
        ",videos/b.mp4,bad,x,\n"
    )
    ws = tmp_path / "ws"
    proc = subprocess.run(
        [
            RAGVID,
            "run",
            "build-index",
            "-c",
            "bad",
            "-i",
            str(src / "results_0.csv"),
            "-w",
            str(ws),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the failure-ratio guard
    err = " ".join(proc.stderr.split())
    assert "2 of 2 rows failed (100% > the 20% limit" in err and "Traceback" not in proc.stderr
    assert not (ws / "indexes").exists()


def test_preflight_checks_in_process():
    from ragvid.flows.preflight import check_ray_address

    check_ray_address(None)
    check_ray_address("auto")
    with pytest.raises(ConnectionError, match="does not answer"):
        check_ray_address(f"127.0.0.1:{_free_port()}", timeout_s=1)
    with pytest.raises(ValueError, match="not an address"):
        check_ray_address("ray://:10001")


def test_finetune_and_batch_generate_flows_on_the_demo_index(demo_run):
    """The model flows on the demo's index: 1 adapter step, 1 prompt (the demo runs more)."""
    from ragvid.flows.finetune_flow import finetune_flow
    from ragvid.flows.generate_flow import batch_generate_flow
    from ragvid.schemas.tables import GENERATIONS

    out, _ = demo_run
    ws = out["workspace"]
    common = dict(workspace=ws, index="demo-small")
    tuned = finetune_flow(**common, corpus="demo-small", run="t", max_steps=1)
    assert tuned["step"] == 1 and Path(tuned["run_dir"], "adapter.safetensors").is_file()
    gen = batch_generate_flow(**common, corpus="demo-small", run="t", job="j", num_prompts=1)
    assert (gen["generated"], gen["failed"]) == (1, 0)
    rows = io.read_table(gen["table"], GENERATIONS).to_pylist()
    assert rows[0]["status"] == "ok" and Path(rows[0]["video_path"]).stat().st_size > 0
    assert any(rows[0]["retrieved_mask"])  # retrieval from the demo index fed the generation
    again = batch_generate_flow(**common, corpus="demo-small", run="t", job="j", num_prompts=1)
    assert (again["generated"], again["skipped"]) == (0, 1)  # idempotent job


def test_workspace_status_reports_the_planted_bad_files(demo_run):
    """The status flow counts the quarantined videos of every encoder's failures folder."""
    from ragvid.flows.status_flow import workspace_status_flow
    from ragvid.schemas.io import read_parts

    out, _ = demo_run
    status = workspace_status_flow(workspace=out["workspace"])
    row = next(r for r in status["corpora"] if r["corpus"] == "demo-small")
    manifest = read_parts(out["manifest"], MANIFEST).to_pylist()
    bad = {"zero_byte", "truncated", "not_a_video", "missing"}
    planted = [r for r in manifest if r.get("planted") in bad]
    assert planted and row["failed_videos"] == len(planted)
    assert row["embed_parts_pending"] == 0 and row["embed_parts_done"] > 0


def test_k_ablation_trains_one_adapter_per_k_on_held_out_prompts(demo_run):
    """RAGME Fig. 4: one adapter per K from one neighbour build, each evaluated at its own K
    on the demo's val captions against the train index; the per-K table and plot."""
    import json

    from ragvid.flows.k_ablation_flow import k_ablation_flow
    from ragvid.schemas.tables import GENERATIONS, METRICS

    out, _ = demo_run
    ws = out["workspace"]
    res = k_ablation_flow(
        workspace=ws, corpus="demo-small", index="demo-small", name="kab", ks=[2, 1],
        max_steps=1, num_prompts=2, reference_videos=4,
    )  # fmt: skip
    assert [r["k"] for r in res["rows"]] == [1, 2]
    for k in (1, 2):
        run = Path(ws) / "runs" / f"kab-k{k}"
        assert json.loads((run / "config.json").read_text())["retrieved_k"] == k
        gen = io.read_table(
            Path(ws)
            / "evals"
            / f"kab-k{k}"
            / "generations"
            / f"ragme@k={k}"
            / "generations.parquet",
            GENERATIONS,
        )
        assert {len(ids) for ids in gen.column("retrieved_ids").to_pylist()} == {k}
        assert "held out" in (Path(ws) / "evals" / f"kab-k{k}" / "report.html").read_text()
    # two trainings (not one adapter reused at another K), each recorded as its own run
    assert all(Path(ws, "runs", f"kab-k{k}", "adapter.safetensors").is_file() for k in (1, 2))
    table = io.read_table(res["metrics"], METRICS).to_pylist()
    assert {r["method"] for r in table} == {"ragme@k=1", "ragme@k=2"}
    assert {"fvd[random3d]", "copy_sim[pixels]"} <= {r["metric"] for r in table}
    assert Path(res["plot"]).read_bytes()[:4] == b"\x89PNG"
