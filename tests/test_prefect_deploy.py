"""infra/ the way an MLOps engineer runs it, against a REAL `prefect server` on loopback:
infra/create-work-pools.sh creates the pools and `prefect deploy`s every deployment of
infra/prefect.yaml; a `prefect worker` on the process pool picks up a triggered run of
`workspace-status`, which reports to the server (state, task runs, artifacts, logs) like a
local run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

from ragvid.flows.deployments import load_specs
from ragvid.schemas import io
from ragvid.schemas.tables import MANIFEST
from ragvid.schemas.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")


def _workspace(root: Path) -> Workspace:
    ws = Workspace.at(root)
    rows = {
        "video_id": ["w-0", "w-1", "w-2"],
        "uri": [f"/videos/w-{i}.mp4" for i in range(3)],
        "caption": ["a red circle moving left"] * 3,
        "duration_s": [2.0] * 3,
        "source": ["worker"] * 3,
        "source_file": ["results_0.csv"] * 3,
        "source_row": [0, 1, 2],
    }
    io.write_table(io.join(ws.manifest("worker"), io.part_name(0)), pa.table(rows), MANIFEST)
    return ws


def _run(cmd: list[str], env: dict, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    hint = (
        " (a 422 for a null limit/offset: the server's fastapi is too new for prefect 3.8.8 — "
        "pyproject pins fastapi<0.151)"
        if "422" in proc.stdout + proc.stderr
        else ""
    )
    assert proc.returncode == 0, f"{cmd}{hint}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_deploy_infra_and_a_process_worker_runs_a_deployment(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import Artifact
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api, server_env = prefect_server
    # the script and the worker call `prefect` by name, as on an engineer's shell; INFO logs
    # (the fixture's default is WARNING) so the run's log lines reach the server as by default
    env = dict(server_env, PATH=f"{BIN}{os.pathsep}{server_env.get('PATH', '')}")
    env["PREFECT_LOGGING_LEVEL"] = "INFO"
    ws = _workspace(tmp_path / "ws")
    elsewhere = tmp_path / "elsewhere"  # not the checkout: the pull step must find flows/
    elsewhere.mkdir()
    started = time.monotonic()
    names = [s.name for s in load_specs(INFRA / "prefect.yaml")]

    async def deployments():
        async with get_client() as client:
            resp = await client.request(
                "POST", "/deployments/filter", json={"limit": 100, "offset": 0}
            )
            return {dep["name"]: dep for dep in resp.json()}

    async def wait_for(run_id, deadline: float):
        async with get_client() as client:
            while True:
                run = await client.read_flow_run(run_id)
                if run.state.is_final() or time.monotonic() > deadline:
                    return run
                await asyncio.sleep(0.5)

    async def read_back(run_id):
        async with get_client() as client:
            # this server rejects (422) the client's default nulls: post the filters ourselves
            arts = await client.request(
                "POST",
                "/artifacts/filter",
                json={"artifacts": {"flow_run_id": {"any_": [str(run_id)]}}, "limit": 50},
            )
            tasks = await client.request(
                "POST",
                "/task_runs/filter",
                json={"flow_runs": {"id": {"any_": [str(run_id)]}}, "limit": 50, "offset": 0},
            )
            logs = await client.request(
                "POST",
                "/logs/filter",
                json={"logs": {"flow_run_id": {"any_": [str(run_id)]}}, "limit": 200},
            )
            return Artifact.model_validate_list(arts.json()), tasks.json(), logs.json()

    async def clean_up(deployment_ids, run_id):
        async with get_client() as client:
            for dep_id in deployment_ids:
                await client.delete_deployment(dep_id)
            if run_id:
                await client.delete_flow_run(run_id)

    deployed: dict = {}
    run_id = None
    try:
        # 1. pools + every deployment, from a directory that is not the checkout
        proc = _run(["bash", str(INFRA / "create-work-pools.sh")], env, elsewhere, 240)
        with temporary_settings({PREFECT_API_URL: api}):
            deployed = asyncio.run(deployments())
        assert set(names) <= set(deployed), (sorted(deployed), proc.stdout[-2000:])
        status = deployed["workspace-status"]
        assert status["work_pool_name"] == "ragvid-cpu"
        assert status["entrypoint"] == "flows/status_flow.py:workspace_status_flow"
        assert status["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
        ]
        assert deployed["finetune"]["work_pool_name"] == "ragvid-gpu"
        assert deployed["finetune"]["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/ragvid"}}
        ]
        assert [s["schedule"]["cron"] for s in status["schedules"]] == ["0 * * * *"]

        # 2. a run triggered as from the UI's "Run" / the CLI, then a bounded process worker
        trig = _run(
            [PREFECT, "deployment", "run", "workspace-status/workspace-status"]
            + ["--param", f"workspace={ws.root}"],
            env,
            elsewhere,
            60,
        )
        run_id = next(
            line.rsplit("/", 1)[-1].strip()
            for line in trig.stdout.splitlines()
            if "/runs/flow-run/" in line
        )
        worker = _run(
            [PREFECT, "worker", "start", "--pool", "ragvid-cpu", "--run-once"],
            env,
            elsewhere,
            180,
        )
        with temporary_settings({PREFECT_API_URL: api}):
            run = asyncio.run(wait_for(run_id, time.monotonic() + 30))
            arts, tasks, logs = asyncio.run(read_back(run_id))
    finally:
        # the server is the session's: tests after this one count workspace-status runs and
        # `ragvid serve` registers the same deployment names — leave neither behind
        with temporary_settings({PREFECT_API_URL: api}):
            asyncio.run(clean_up([deployed[n]["id"] for n in names if n in deployed], run_id))

    assert run.state.is_completed(), (run.state, worker.stdout[-3000:], worker.stderr[-3000:])
    assert str(run.deployment_id) == status["id"] and run.work_pool_name == "ragvid-cpu"
    assert run.parameters["workspace"] == ws.root
    assert sorted(t["name"] for t in tasks) == ["status-indexes", "status-worker"]
    assert all(t["state"]["type"] == "COMPLETED" for t in tasks)
    by_key = {a.key: a for a in arts}
    assert {"workspace-corpora", "workspace-status-report"} <= set(by_key)
    assert "worker" in by_key["workspace-status-report"].data
    messages = "\n".join(entry["message"] for entry in logs)
    assert "set_working_directory" in messages  # the pull step ran, in the run's own logs
    assert "workspace status report" in messages and "Finished in state Completed" in messages
    assert list((tmp_path / "ws" / "reports").glob("workspace-status-*.md"))
    assert time.monotonic() - started < 150
