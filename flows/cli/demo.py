"""`ragvid demo` — the README's main job on embedded defaults, offline."""

from __future__ import annotations

from typing import Annotated

import typer

from ragvid.flows.cli.common import DEFAULT_WORKSPACE, WorkspaceOpt, app, console, user_errors


@app.command()
@user_errors
def demo(
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    small: Annotated[bool, typer.Option("--small", help="A ~1-minute corpus (tests, CI).")] = False,
    engine: Annotated[
        str, typer.Option(help="'ray' (embed parts as Ray tasks) or 'local' (in-process).")
    ] = "ray",
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Ray cluster; default: local Ray.")
    ] = None,
    model: Annotated[
        bool, typer.Option("--model/--no-model", help="Also fine-tune, generate and evaluate.")
    ] = True,
) -> None:
    """Run the whole product on a generated corpus: synth → ingest → fit encoder → embed →
    dedup → index → neighbours → inspection page (→ fine-tune → generate → evaluate) → report.

    Offline, a few minutes on 2 cores; a second run reuses every finished part.
    """
    import os

    from prefect.settings import PREFECT_HOME

    from ragvid.flows.demo import demo_flow
    from ragvid.flows.preflight import (
        check_prefect_api,
        check_ray_address,
        flow_settings,
        quiet_user_errors,
    )

    if engine not in ("ray", "local"):
        raise ValueError(f"--engine {engine!r}: use 'ray' or 'local'")
    api = check_prefect_api()
    check_ray_address(ray_address)
    console.print(
        f"[bold]ragvid demo[/] in {os.path.abspath(workspace)} "
        f"({'small' if small else 'full'}; Prefect: {api or 'ephemeral, starting…'})"
    )
    with flow_settings(), quiet_user_errors():
        out = demo_flow(
            workspace=workspace,
            small=small,
            engine=engine,
            ray_address=ray_address,
            with_model=model,
        )
    console.print(f"\n[bold green]demo finished[/] in {out['seconds']} s. Outputs:")
    rows = [
        ("generated corpus", out["corpus"]),
        ("manifest", out["manifest"]),
        ("encoder (fitted tiny CLIP)", out["encoder"]),
        ("embeddings", out["embeddings"]),
        ("index", out["index"]),
        ("near-duplicate groups", out["duplicates"]),
        ("similarity histogram", out["histogram"]),
        *[("inspection page", p) for p in out["inspection"]],
        ("neighbour lists", out["neighbours"]),
        *_model_rows(out),
        ("report", out["report"]),
    ]
    for label, where in rows:
        console.print(f"  {label:28s} {where}", soft_wrap=True)
    for line in out["model_steps"]:  # metric names carry [features]: not Rich markup
        console.print(f"  {line}", soft_wrap=True, markup=False)
    console.print("\nWhat the showcase queries found (against the generated corpus's truth):")
    for line in out["showcase"]:
        console.print(f"  - {line}", soft_wrap=True)
    failed = [line for line in out["model_steps"] if "**failed**" in line]
    if api:
        console.print(f"\nThe runs are on the Prefect server at {api} — open its UI.")
    else:
        console.print(
            "\nThe flow runs were recorded in the local Prefect database under "
            f"{PREFECT_HOME.value()} (ephemeral mode). To browse them: `{_prefect()} server "
            "start` (or infra/start-prefect-server.sh) and open http://127.0.0.1:4200 — runs "
            "'demo-…', 'build-index-demo', 'neighbours-demo' and their artifacts."
        )
    if failed:
        raise typer.Exit(1)


def _prefect() -> str:
    """The prefect command of this install (the venv's, which a bare `prefect` may not be)."""
    import shutil
    import sys
    from pathlib import Path

    here = Path(sys.executable).with_name("prefect")
    return str(here) if here.exists() and shutil.which("prefect") != str(here) else "prefect"


def _model_rows(out: dict) -> list[tuple[str, str]]:
    rows = []
    if isinstance(out.get("finetune"), dict):
        rows.append(("adapter run", out["finetune"]["run_dir"]))
    if isinstance(out.get("batch generation"), dict):
        rows.append(("generated videos + table", out["batch generation"]["table"]))
    if isinstance(out.get("evaluation"), dict):
        rows.append(("evaluation report (HTML)", out["evaluation"]["html"]))
    return rows
