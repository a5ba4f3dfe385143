"""`ragvid export`: a corpus's embeddings in clip-retrieval's or NeMo Curator's layout.

A thin wrapper over :func:`ragvid.pipelines.export.export_embeddings`; names become paths
through the resolver (the corpus's embeddings folder, the index) and the workspace (the
default output folder).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from ragvid.flows.cli.common import (
    DEFAULT_WORKSPACE,
    WorkspaceOpt,
    app,
    console,
    progress,
    titled_table,
    user_errors,
)
from ragvid.flows.resolve import Resolver
from ragvid.schemas import Workspace, list_parts
from ragvid.schemas.config import ExportConfig, defaults

_EXPORT = defaults(ExportConfig)
FORMAT_CHOICES = ("clip-retrieval", "nemo")


@app.command("export")
@user_errors
def export(
    format: Annotated[  # noqa: A002 - the flag is --format
        str,
        typer.Option(
            "--format",
            "-f",
            help="clip-retrieval (img_emb/ + text_emb/ .npy, metadata/ .parquet; with --index "
            "the folder `clip-retrieval back` serves) | nemo (NeMo Curator's id + embeddings "
            "parquet, float32).",
        ),
    ] = _EXPORT["format"],
    corpus: Annotated[str, typer.Option("--corpus", "-c", help="Corpus name in the workspace.")] = (
        "demo"
    ),
    encoder: Annotated[
        str | None,
        typer.Option(
            "--encoder", "-e", help="Encoder it was embedded with (default: its only one)."
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Output folder (default: "
            "<workspace>/corpora/<corpus>/exports/<encoder>/<format>).",
        ),
    ] = None,
    index: Annotated[
        str | None,
        typer.Option(
            help="clip-retrieval: also write image.index (this index's factory, trained "
            "quantizer and tuned nprobe, filled in export order) and indices_paths.json."
        ),
    ] = None,
    vectors: Annotated[
        str, typer.Option(help="nemo: video | text vectors in the embeddings column.")
    ] = _EXPORT["vectors"],
    text: Annotated[
        bool, typer.Option("--text/--no-text", help="clip-retrieval: write text_emb/ too.")
    ] = _EXPORT["text"],
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Export a corpus's embeddings for peer tools, part by part (float32).

    Resumable and idempotent: each part's files are written atomically with a marker; a rerun
    skips finished parts and redoes only parts whose embeddings changed. Reads one part's
    video/text vectors at a time (never the per-frame vectors)."""
    from ragvid.pipelines.export import export_embeddings

    if format not in FORMAT_CHOICES:
        raise ValueError(f"--format {format!r}: expected one of {list(FORMAT_CHOICES)}")
    config = ExportConfig(format=format, vectors=vectors, text=text)
    ws = Workspace.at(workspace)
    res = Resolver(ws)
    spec = res.encoder(encoder) if encoder else res.corpus_encoder(corpus)
    emb = res.embeddings(corpus, spec)
    out = output or ws.exports(corpus, spec.slug, format)
    manifest = ws.manifest(corpus) if list_parts(ws.manifest(corpus)) else None
    man = None
    if index is not None:
        from ragvid.pipelines.index.layout import IndexManifest

        man = IndexManifest.load(res.index(index))
    with progress() as bar:
        task = bar.add_task(f"export {format}", total=None)
        report = export_embeddings(
            emb,
            out,
            config,
            manifest=manifest,
            index=man,
            index_name=index,
            clip_model=spec.ecosystem_id,
            progress=lambda n, total, _s: bar.update(task, completed=n, total=total),
        )
    table = titled_table("", "", title=f"export {format}: {corpus}")
    table.add_row("encoder", escape(report.encoder))
    table.add_row("rows", str(report.rows))
    table.add_row("parts (skipped: done before)", f"{report.parts} ({report.skipped})")
    if report.removed:
        table.add_row("stale files removed", str(len(report.removed)))
    back = report.extra.get("back")
    if back:
        table.add_row("image.index", f"{back['factory']} {back['search_params'] or ''}".strip())
    console.print(table)
    console.print(f"exported to {out}")
    if back and not back.get("clip_model"):
        console.print(
            f"[bold yellow]warning:[/] encoder '{escape(report.encoder)}' has no name "
            "clip-retrieval can load (fitted, local or random weights): set clip_model in "
            "indices_paths.json to a model in the same space before `clip-retrieval back`"
        )
