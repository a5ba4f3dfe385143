"""infra/: every file parses, the deployments load and resolve to real @flows, crons are valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ragvid.flows.deployments import DEFAULT_FILE, check_spec, load_specs, runner_deployments

INFRA = Path(__file__).resolve().parent.parent / "infra"
RAGVID = str(Path(sys.executable).with_name("ragvid"))


def test_prefect_yaml_deployments_resolve_to_flows():
    specs = load_specs(DEFAULT_FILE)
    names = {s.name for s in specs}
    assert {"build-index", "materialize-neighbours", "finetune", "demo"} <= names
    flows = {s.name: check_spec(s) for s in specs}
    assert flows["build-index"].name == "build-index"
    for spec in specs:
        entry_file = INFRA.parent / spec.entrypoint.rsplit(":", 1)[0]
        assert entry_file.is_file(), f"{spec.name}: {entry_file} missing"


def test_schedules_batch_generation_cron_and_index_on_demand():
    from prefect.client.schemas.schedules import CronSchedule

    specs = {s.name: s for s in load_specs(DEFAULT_FILE)}
    gen = [s for s in specs.values() if s.entrypoint.endswith(":batch_generate_flow")]
    assert gen and gen[0].crons, "batch generation must run on a cron schedule"
    for spec in specs.values():
        for cron, _tz in spec.crons:
            CronSchedule(cron=cron, timezone=_tz)  # raises on a bad cron
    assert specs["build-index"].crons == ()
    doc = yaml.safe_load(DEFAULT_FILE.read_text())
    pools = {d["work_pool"]["name"] for d in doc["deployments"]}
    assert pools == {"ragvid-cpu", "ragvid-gpu"}


def test_runner_deployments_build_with_schedules_and_workspace_override(tmp_path):
    deps = runner_deployments(load_specs(DEFAULT_FILE), workspace=str(tmp_path))
    by_name = {d.name: d for d in deps}
    assert by_name["build-index"].parameters["workspace"] == str(tmp_path)
    nightly = by_name["batch-generate-nightly"]
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert by_name["build-index"].schedules in (None, [])


def test_bad_deployment_files_fail_with_the_deployment_named(tmp_path):
    bad = tmp_path / "prefect.yaml"
    bad.write_text(
        "deployments:\n  - name: broken\n    entrypoint: flows/build_index.py:no_such_flow\n"
    )
    with pytest.raises(ValueError, match="broken"):
        check_spec(load_specs(bad)[0])
    bad.write_text(
        "deployments:\n  - name: wrongparams\n    entrypoint: flows/status_flow.py:"
        "workspace_status_flow\n    parameters: {nope: 1}\n"
    )
    with pytest.raises(ValueError, match="wrongparams"):
        check_spec(load_specs(bad)[0])
    bad.write_text(
        "deployments:\n  - name: badcron\n    entrypoint: flows/status_flow.py:"
        "workspace_status_flow\n    schedules:\n      - cron: '61 * * *'\n"
    )
    with pytest.raises(ValueError, match="badcron"):
        check_spec(load_specs(bad)[0])


def test_serve_dry_run_and_list_do_not_block():
    proc = subprocess.run(
        [RAGVID, "serve", "--dry-run"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "build-index/build-index" in proc.stdout and "0 2 * * *" in proc.stdout
    assert "deployments load" in proc.stdout
    proc = subprocess.run(
        [RAGVID, "serve", "--only", "nope", "--list"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "Available" in proc.stderr


def test_ray_and_kuberay_configs():
    launcher = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    assert launcher["head_node_type"] in launcher["available_node_types"]
    assert any("--head" in c for c in launcher["head_start_ray_commands"])
    kuberay = yaml.safe_load((INFRA / "kuberay-raycluster.yaml").read_text())
    assert kuberay["apiVersion"] == "ray.io/v1" and kuberay["kind"] == "RayCluster"
    groups = kuberay["spec"]["workerGroupSpecs"]
    gpu = [g for g in groups if "nvidia.com/gpu" in str(g["template"])]
    assert gpu, "a GPU worker group for the encoder actors"
    ports = {
        p["containerPort"]
        for p in kuberay["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert {6379, 10001} <= ports


def test_dockerfile_and_scripts():
    docker = (INFRA / "Dockerfile").read_text()
    assert docker.splitlines()[3].startswith("FROM nvidia/cuda:") or "FROM nvidia/cuda:" in docker
    assert "faiss-gpu" in docker or "[gpu]" in docker
    assert "pip install -e '.[gpu]'" in docker
    for script in ("start-prefect-server.sh", "start-ray-head.sh", "create-work-pools.sh"):
        path = INFRA / script
        assert path.stat().st_mode & 0o111, f"{script} not executable"
        subprocess.run(["bash", "-n", str(path)], check=True)
    readme = (INFRA / "README.md").read_text()
    assert "PREFECT_API_URL" in readme
