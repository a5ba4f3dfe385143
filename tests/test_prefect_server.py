"""A REAL Prefect server on localhost: a ragvid flow run in another process against it via
PREFECT_API_URL, read back (flow run, task runs, artifacts) through the Prefect client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from ragvid.schemas import io
from ragvid.schemas.tables import MANIFEST
from ragvid.schemas.workspace import Workspace

RAGVID = str(Path(sys.executable).with_name("ragvid"))


def _tiny_workspace(root: Path) -> Workspace:
    ws = Workspace.at(root)
    for corpus, n in (("alpha", 3), ("beta", 2)):
        rows = {
            "video_id": [f"{corpus}-{i}" for i in range(n)],
            "uri": [f"/videos/{corpus}-{i}.mp4" for i in range(n)],
            "caption": [f"a red circle moving left {i}" for i in range(n)],
            "duration_s": [2.0] * n,
            "source": [corpus] * n,
            "source_file": ["results_0.csv"] * n,
            "source_row": list(range(n)),
        }
        io.write_table(io.join(ws.manifest(corpus), io.part_name(0)), pa.table(rows), MANIFEST)
    return ws


def test_flow_runs_and_artifacts_readable_through_real_server(prefect_server, tmp_path):
    url, env = prefect_server
    ws = _tiny_workspace(tmp_path / "ws")
    proc = subprocess.run(
        [RAGVID, "run", "status", "-w", ws.root],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reports = list((tmp_path / "ws" / "reports").glob("workspace-status-*.md"))
    assert len(reports) == 1 and "alpha" in reports[0].read_text()

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.client.schemas.objects import Artifact
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # this prefect 3.8.8 + fastapi<0.155 server rejects (422) the client's default None for
    # limit/sort, and for the artifact endpoint's flow_runs/task_runs: pass them explicitly
    async def read_back():
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["workspace-status"])),
                sort=FlowRunSort.START_TIME_DESC,
                limit=10,
            )
            assert len(runs) == 1
            run = runs[0]
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
                sort=TaskRunSort.EXPECTED_START_TIME_DESC,
                limit=50,
            )
            # read_artifacts() sends flow_runs/task_runs: null, which this server rejects (422)
            # and empty filters join away flow-level artifacts: post the filter ourselves
            resp = await client.request(
                "POST",
                "/artifacts/filter",
                json={
                    "artifacts": {"flow_run_id": {"any_": [str(run.id)]}},
                    "sort": "CREATED_DESC",
                    "limit": 50,
                },
            )
            arts = Artifact.model_validate_list(resp.json())
            return run, tasks, arts

    with temporary_settings({PREFECT_API_URL: url}):
        run, tasks, arts = asyncio.run(read_back())
    assert run.state.is_completed() and run.name == "workspace-status"
    assert sorted(t.name for t in tasks) == ["status-alpha", "status-beta", "status-indexes"]
    assert all(t.state.is_completed() for t in tasks)
    by_key = {a.key: a for a in arts}
    assert {"workspace-corpora", "workspace-indexes", "workspace-status-report"} <= set(by_key)
    table = by_key["workspace-corpora"]
    assert table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {r["corpus"]: r["manifest_rows"] for r in rows} == {"alpha": 3, "beta": 2}
    assert by_key["workspace-status-report"].type == "markdown"
    assert "alpha" in by_key["workspace-status-report"].data


def _dead_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"  # nothing listens there once the socket closes


def test_server_down_fails_fast_with_clear_message(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ragvid.flows.preflight import check_prefect_api

    url = _dead_url()
    with temporary_settings({PREFECT_API_URL: url}):
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="does not answer"):
            check_prefect_api(timeout_s=2)
        assert time.monotonic() - started < 5

    ws = _tiny_workspace(tmp_path / "ws")
    env = dict(os.environ, PREFECT_API_URL=url)
    started = time.monotonic()
    proc = subprocess.run(
        [RAGVID, "run", "status", "-w", ws.root], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Prefect server at PREFECT_API_URL" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "ws" / "reports").exists()


def test_ragvid_serve_runs_a_deployment_on_the_real_server(prefect_server, tmp_path):
    """`ragvid serve` registers the deployments; a run started through the API executes."""
    import signal

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, env = prefect_server
    ws = _tiny_workspace(tmp_path / "ws")
    serve = subprocess.Popen(
        [RAGVID, "serve", "--only", "workspace-status", "-w", ws.root],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    async def drive():
        async with get_client() as client:
            deadline = time.monotonic() + 90
            dep = None
            while dep is None:
                assert serve.poll() is None, serve.stdout.read().decode()[-3000:]
                try:
                    dep = await client.read_deployment_by_name("workspace-status/workspace-status")
                except Exception:  # noqa: BLE001 - not registered yet
                    assert time.monotonic() < deadline, "serve never registered the deployment"
                    await asyncio.sleep(0.5)
            assert dep.parameters["workspace"] == ws.root  # -w overrides the YAML
            assert [s.schedule.cron for s in dep.schedules] == ["0 * * * *"]
            run = await client.create_flow_run_from_deployment(dep.id)
            while True:
                run = await client.read_flow_run(run.id)
                if run.state.is_final():
                    return run
                assert time.monotonic() < deadline + 60, f"run stuck in {run.state.name}"
                await asyncio.sleep(0.5)

    try:
        with temporary_settings({PREFECT_API_URL: url}):
            run = asyncio.run(drive())
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)
    assert run.state.is_completed(), run.state
    assert list((tmp_path / "ws" / "reports").glob("workspace-status-*.md"))
