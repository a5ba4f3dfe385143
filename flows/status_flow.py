"""`workspace-status`: what a workspace holds, as Prefect artifacts (a cheap scheduled check).

One task per corpus counts manifest rows, rejects, embedding parts done/pending and
quarantined videos; the index folders are listed with their manifests. The result is a table
artifact and a markdown report an MLOps engineer can glance at in the UI.
"""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq
from prefect import flow, task

from ragvid.flows import monitor
from ragvid.flows.preflight import check_workspace
from ragvid.flows.resolve import Resolver
from ragvid.schemas.files import open_arrow
from ragvid.schemas.io import exists, fs_and_path, list_parts, read_json
from ragvid.schemas.markers import TableState
from ragvid.schemas.workspace import Workspace


def _rows(parts: list[str]) -> int:
    total = 0
    for uri in parts:
        with open_arrow(uri) as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


def _children(uri: str) -> list[str]:
    fs, path = fs_and_path(uri)
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


@task(name="corpus-status", task_run_name="status-{corpus}", retries=1)
def corpus_status(workspace: str, corpus: str) -> dict[str, Any]:
    ws = Workspace.at(workspace)
    row: dict[str, Any] = {"corpus": corpus}
    row["manifest_rows"] = _rows(list_parts(ws.manifest(corpus)))
    row["rejected_rows"] = _rows(list_parts(ws.rejects(corpus)))
    row["failed_videos"] = len(Resolver(ws).quarantined(corpus))  # unique ids, any encoder
    encoders = _children(ws.embeddings_root(corpus))
    states = [TableState(ws.embeddings(corpus, e)) for e in encoders]
    row["encoders"] = ",".join(encoders) or "-"
    row["embed_parts_done"] = sum(len(s.done_parts()) for s in states)
    row["embed_parts_pending"] = sum(len(s.parts()) for s in states) - row["embed_parts_done"]
    return row


@task(name="index-status", task_run_name="status-indexes")
def index_status(workspace: str) -> list[dict[str, Any]]:
    ws = Workspace.at(workspace)
    out = []
    for name in _children(ws.indexes_root()):
        manifest = ws.index_layout(name).manifest
        info = read_json(manifest) if exists(manifest) else {}
        out.append(
            {
                "index": name,
                "built": bool(info),
                "ntotal": info.get("ntotal", info.get("num_vectors", "")),
                "factory": info.get("factory", ""),
            }
        )
    return out


@flow(
    name="workspace-status",
    flow_run_name="workspace-status",
    description="Counts of what a ragvid workspace holds (manifests, embeddings, indexes).",
    log_prints=True,
)
def workspace_status_flow(workspace: str) -> dict[str, Any]:
    ws = check_workspace(workspace)
    corpora = _children(ws.corpora_root())
    rows = [corpus_status.submit(ws.root, c) for c in corpora]
    corpora_rows = [r.result() for r in rows]
    indexes = index_status(ws.root)
    monitor.table("workspace-corpora", corpora_rows, f"corpora in {ws.root}")
    monitor.table("workspace-indexes", indexes, f"indexes in {ws.root}")
    text = (
        f"# Workspace status: `{ws.root}`\n\n## Corpora\n\n{monitor.markdown_table(corpora_rows)}"
        f"\n## Indexes\n\n{monitor.markdown_table(indexes)}"
    )
    report = monitor.write_report(ws.root, "workspace-status", text)
    print(f"workspace status report: {report}")
    return {"corpora": corpora_rows, "indexes": indexes, "report": report}
