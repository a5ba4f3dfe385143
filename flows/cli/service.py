"""`ragvid serve-index`: the HTTP retrieval service and its web UI (``ragvid.service``)."""

from __future__ import annotations

from typing import Annotated

import typer

from ragvid.flows.cli.common import DEFAULT_WORKSPACE, WorkspaceOpt, app, console, user_errors
from ragvid.schemas.config import ServiceConfig, defaults

_SVC = defaults(ServiceConfig)


@app.command("serve-index")
@user_errors
def serve_index(
    index: Annotated[
        list[str] | None,
        typer.Option("--index", help="Index to serve (repeatable; default: every index)."),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 exposes the service to the network.")
    ] = _SVC["host"],
    port: Annotated[int, typer.Option(help="Port (0: any free one).")] = _SVC["port"],
    poll_s: Annotated[
        float, typer.Option(help="Seconds between checks for a rebuilt index version.")
    ] = _SVC["poll_s"],
    max_k: Annotated[int, typer.Option(help="Largest K a request may ask for.")] = _SVC["max_k"],
    max_body_bytes: Annotated[
        int, typer.Option(help="Larger request bodies are refused (413).")
    ] = _SVC["max_body_bytes"],
    faiss_threads: Annotated[
        int,
        typer.Option(
            help="OpenMP threads per FAISS search, in each request's thread (0: FAISS's own; "
            "1 suits many concurrent clients on few cores)."
        ),
    ] = _SVC["faiss_threads"],
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Serve named indexes over HTTP: text / video-id / vector search with RAGME's filters and
    metadata predicates, a web UI at /, /healthz and /metrics. A rebuilt index is swapped in
    without dropping requests."""
    import uvicorn
    from rich.markup import escape

    from ragvid.service.app import create_app

    cfg = ServiceConfig(
        host=host,
        port=port,
        poll_s=poll_s,
        max_k=max_k,
        max_body_bytes=max_body_bytes,
        faiss_threads=faiss_threads or None,
    )
    with console.status("opening indexes"):
        api = create_app(workspace, index or None, config=cfg)
    reg = api.state.registry
    for name in reg.names():
        state = reg.get(name)
        modes = ", ".join(state.text_modes()) or "none"
        note = (
            f" [yellow](text encoder: {escape(state.encoder_error)})[/]"
            if (state.encoder_error)
            else ""
        )
        console.print(
            f"[green]serving[/] {name} {state.version}: {state.man.ntotal} videos, text modes "
            f"{modes}{note}"
        )
    for name, why in reg.failures.items():
        console.print(f"[bold yellow]not serving[/] {name}: {escape(why)}")
    console.print(f"UI and API on http://{host}:{port}/ (Ctrl-C stops)")
    uvicorn.run(api, host=host, port=port, log_level=log_level)
