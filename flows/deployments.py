"""ragvid's deployments, read from ``infra/prefect.yaml`` — one source for `prefect deploy`
(workers on work pools) and `ragvid serve` (this machine serves them with ``prefect.serve``).

Loading resolves every entrypoint to its ``@flow`` and checks each deployment's parameters
against the flow's signature and each cron schedule's syntax, so a broken deployment fails at
load time with the deployment's name, not at 2 a.m. when its schedule fires.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = REPO_ROOT / "infra" / "prefect.yaml"


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str
    description: str = ""
    tags: tuple[str, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    work_pool: str | None = None
    crons: tuple[tuple[str, str], ...] = ()  # (cron, timezone)

    @property
    def module(self) -> str:
        """``flows/build_index.py:x`` → ``ragvid.flows.build_index`` (the installed module)."""
        path = self.entrypoint.rsplit(":", 1)[0]
        if path.endswith(".py"):
            rel = Path(path).with_suffix("")
            if rel.parts[0] != "flows":
                raise ValueError(
                    f"deployment {self.name!r}: entrypoint {self.entrypoint!r} is not under "
                    "flows/ — ragvid's flows live in flows/<module>.py"
                )
            return "ragvid." + ".".join(rel.parts)
        return path

    @property
    def attr(self) -> str:
        return self.entrypoint.rsplit(":", 1)[1]


def find_file(path: str | os.PathLike | None = None) -> Path:
    """The prefect.yaml to use: the given one, ./infra/prefect.yaml, or the checkout's."""
    candidates = [Path(path)] if path else [Path("infra/prefect.yaml"), DEFAULT_FILE]
    for cand in candidates:
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"no deployments file at {', '.join(str(c) for c in candidates)}: pass --file "
        "<path to prefect.yaml> (the repository's is infra/prefect.yaml)"
    )


def load_specs(path: str | os.PathLike | None = None) -> list[DeploymentSpec]:
    """Parse the deployments of a prefect.yaml (without importing any flow)."""
    file = find_file(path)
    try:
        doc = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{file}: not valid YAML ({exc})") from None
    deployments = (doc or {}).get("deployments")
    if not isinstance(deployments, list) or not deployments:
        raise ValueError(f"{file}: no 'deployments:' list — see infra/prefect.yaml for the format")
    specs = []
    for i, dep in enumerate(deployments):
        where = f"{file}: deployments[{i}]"
        for key in ("name", "entrypoint"):
            if not dep.get(key):
                raise ValueError(f"{where}: missing '{key}'")
        crons = []
        for sched in dep.get("schedules") or []:
            if "cron" not in sched:
                raise ValueError(f"{where} ({dep['name']}): only cron schedules are used here")
            if sched.get("active", True):
                crons.append((str(sched["cron"]), str(sched.get("timezone", "UTC"))))
        pool = dep.get("work_pool") or {}
        specs.append(
            DeploymentSpec(
                name=dep["name"],
                entrypoint=dep["entrypoint"],
                description=dep.get("description", "") or "",
                tags=tuple(dep.get("tags") or ()),
                parameters=dict(dep.get("parameters") or {}),
                work_pool=pool.get("name") if isinstance(pool, dict) else None,
                crons=tuple(crons),
            )
        )
    return specs


def load_flow(spec: DeploymentSpec):
    """Import the deployment's flow object and check it is a ``@flow``."""
    import importlib

    from prefect import Flow

    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"deployment {spec.name!r}: entrypoint {spec.entrypoint!r} — cannot import "
            f"{spec.module} ({exc})"
        ) from None
    obj = getattr(module, spec.attr, None)
    if not isinstance(obj, Flow):
        raise ValueError(
            f"deployment {spec.name!r}: {spec.entrypoint!r} is not a @flow "
            f"(found {type(obj).__name__})"
        )
    return obj


# parameters a scheduled deployment must set itself: their flow default suits an interactive
# run but a rebuild nobody watches must never pick an encoder implicitly
EXPLICIT = {
    "encoder": "the encoder to embed with — a fitted encoder's name (`ragvid encoder fit`), "
    "vit-b-32 with its weights in the local open_clip cache, or "
    "open_clip:<arch>/<checkpoint path>",
}


def check_spec(spec: DeploymentSpec):
    """Resolve the flow, bind the parameters to its signature, require the parameters that
    must be explicit, and validate the crons."""
    from prefect.client.schemas.schedules import CronSchedule

    flow = load_flow(spec)
    sig = inspect.signature(flow.fn)
    try:
        sig.bind_partial(**spec.parameters)
    except TypeError as exc:
        raise ValueError(
            f"deployment {spec.name!r}: parameters {sorted(spec.parameters)} do not fit "
            f"{spec.entrypoint} ({exc})"
        ) from None
    for name, what in EXPLICIT.items():
        param = sig.parameters.get(name)
        if param is not None and param.default is not None and name not in spec.parameters:
            raise ValueError(
                f"deployment {spec.name!r} sets no {name}: add `{name}: …` under its "
                f"parameters in infra/prefect.yaml — {what}"
            )
    for cron, tz in spec.crons:
        try:
            CronSchedule(cron=cron, timezone=tz)
        except Exception as exc:  # noqa: BLE001 - pydantic/croniter errors
            raise ValueError(f"deployment {spec.name!r}: bad cron {cron!r} ({exc})") from None
    return flow


def runner_deployments(specs: list[DeploymentSpec], workspace: str | None = None) -> list:
    """``RunnerDeployment`` objects for ``prefect.serve`` (workspace overrides the YAML's)."""
    from prefect.schedules import Cron

    out = []
    for spec in specs:
        flow = check_spec(spec)
        params = dict(spec.parameters)
        if workspace is not None and "workspace" in inspect.signature(flow.fn).parameters:
            params["workspace"] = workspace
        out.append(
            flow.to_deployment(
                name=spec.name,
                schedules=[Cron(c, timezone=tz) for c, tz in spec.crons] or None,
                parameters=params,
                tags=list(spec.tags),
                description=spec.description or None,
            )
        )
    return out


def serve(specs: list[DeploymentSpec], workspace: str | None = None, limit: int | None = None):
    """Serve the deployments from this process until interrupted (blocks)."""
    from prefect import serve as prefect_serve

    from ragvid.flows.preflight import check_prefect_api

    check_prefect_api()
    prefect_serve(*runner_deployments(specs, workspace), limit=limit)
