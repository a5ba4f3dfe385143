"""`ragvid demo` — the README's main job on embedded defaults, offline."""

from __future__ import annotations

from .cli_common import WorkspaceOpt, app, console, user_errors


@app.command()
@user_errors
def demo(workspace: WorkspaceOpt = "ragvid-workspace") -> None:
    """Run the whole product on a generated corpus: synth → ingest → … → report."""
    console.print(f"[bold]ragvid demo[/] in {workspace}")
