"""`ragvid corpus synth|ingest`: generate the demo corpus; turn a corpus into a manifest."""

from __future__ import annotations

import inspect
import os
from typing import Annotated

import typer
from rich.table import Table

from ragvid.flows.cli.common import (
    DEFAULT_WORKSPACE,
    WorkspaceOpt,
    console,
    corpus_app,
    progress,
    titled_table,
    user_errors,
)
from ragvid.pipelines.corpus.layouts import columns_help
from ragvid.schemas import ManifestConfig, SplitConfig, SynthConfig
from ragvid.schemas.config import defaults

_SYNTH = defaults(SynthConfig)  # one set of defaults
_MANIFEST = defaults(ManifestConfig)
NameOpt = Annotated[str, typer.Option("--name", "-n", help="Corpus name in the workspace.")]


@corpus_app.command("synth")
@user_errors
def synth(
    name: NameOpt = "demo",
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    num_videos: Annotated[int, typer.Option(help="Distinct clips.")] = _SYNTH["num_videos"],
    num_duplicates: Annotated[int, typer.Option(help="Planted near-duplicate copies.")] = _SYNTH[
        "num_duplicates"
    ],
    num_bad: Annotated[
        int, typer.Option(help="Planted bad files (zero-byte, truncated…).")
    ] = _SYNTH["num_bad"],
    width: Annotated[int, typer.Option(help="Frame width (even).")] = _SYNTH["width"],
    height: Annotated[int, typer.Option(help="Frame height (even).")] = _SYNTH["height"],
    num_frames: Annotated[int, typer.Option(help="Frames per clip.")] = _SYNTH["num_frames"],
    fps: Annotated[int, typer.Option(help="Frames per second.")] = _SYNTH["fps"],
    seed: Annotated[int, typer.Option(help="Same seed, same corpus.")] = _SYNTH["seed"],
) -> None:
    """Generate the demo corpus (moving shapes, WebVid layout) into <workspace>/raw/<name>.

    Real H.264 mp4s with captions naming shape, colour and motion, ground-truth columns,
    planted near-duplicates and planted bad files (zero-byte, truncated, not-a-video, missing).
    """
    from ragvid.pipelines.corpus.synth import synth_corpus
    from ragvid.schemas import SynthConfig, Workspace

    config = SynthConfig(
        num_videos=num_videos,
        num_duplicates=num_duplicates,
        num_bad=num_bad,
        width=width,
        height=height,
        num_frames=num_frames,
        fps=fps,
        seed=seed,
    )
    ws = Workspace.at(workspace).ensure_writable()
    out = ws.raw(name)
    with progress() as bar:
        task = bar.add_task(f"synth {name}", total=num_videos + num_duplicates + num_bad)
        report = synth_corpus(
            out, config, on_progress=lambda done, _: bar.update(task, completed=done)
        )
    console.print(f"[bold]corpus {name!r}[/]: {report.num_rows} rows in {report.seconds} s")
    table = Table()
    table.add_column("kind")
    table.add_column("rows", justify="right")
    for kind, n in report.counts.items():
        table.add_row(kind, str(n))
    console.print(table)
    console.print(f"written to {report.out_dir} (CSV: {report.csv_path})")
    console.print(f"next: ragvid corpus ingest {report.out_dir} --name {name} -w {workspace}")


@corpus_app.command("ingest")
@user_errors
def ingest(
    input_path: Annotated[
        str,
        typer.Argument(
            help="WebVid results_*.csv (file or folder), a video2dataset output folder, or a "
            "folder of videos with a captions .csv/.jsonl. Local path or fsspec URI.",
            show_default=False,
        ),
    ],
    name: NameOpt = "demo",
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    layout: Annotated[str, typer.Option(help="auto | webvid | video2dataset | folder")] = "auto",
    shards: Annotated[int, typer.Option("--shards", help="Manifest parts.")] = 4,
    runner: Annotated[
        str,
        typer.Option(help="Beam runner: FnApiRunner (in-process), DataflowRunner, FlinkRunner…"),
    ] = "FnApiRunner",
    pipeline_option: Annotated[
        list[str] | None,
        typer.Option(
            "--pipeline-option",
            "-o",
            help="Extra Beam pipeline option, repeatable: -o --project=p -o --region=r",
        ),
    ] = None,
    id_column: Annotated[str | None, typer.Option(help="Id column (default: detected).")] = None,
    caption_column: Annotated[str | None, typer.Option(help="Caption column.")] = None,
    uri_column: Annotated[str | None, typer.Option(help="Video file/URL column.")] = None,
    check_files: Annotated[
        bool, typer.Option(help="Reject rows whose local video file is missing.")
    ] = True,
    max_failure_ratio: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Exit 1 (after writing the manifest and rejects) when more than this share "
            "of rows is rejected.",
        ),
    ] = _MANIFEST["max_failure_ratio"],
) -> None:
    """Validate and de-duplicate a corpus into a sharded Parquet manifest (Apache Beam).

    Rows with missing/empty fields, duplicate ids, unparseable durations, malformed CSV or
    bytes that are not UTF-8 — and input files that cannot be read at all — go to the rejects
    table with file, row, field and reason; ingested + rejected = input rows. More than
    --max-failure-ratio rejected fails the command (exit 1) once everything is written.
    """
    from ragvid.pipelines.corpus.beam import check_rejects
    from ragvid.pipelines.corpus.beam import ingest as run_ingest
    from ragvid.schemas import Workspace

    if layout not in ("auto", "webvid", "video2dataset", "folder"):
        raise ValueError(f"--layout {layout!r}: use auto, webvid, video2dataset or folder")
    if shards < 1:
        raise ValueError(f"--shards {shards}: must be at least 1")
    config = ManifestConfig(
        layout=layout,  # type: ignore[arg-type]
        num_shards=shards,
        runner=runner,
        check_files=check_files,
        id_column=id_column,
        caption_column=caption_column,
        uri_column=uri_column,
        max_failure_ratio=max_failure_ratio,
    )
    ws = Workspace.at(workspace).ensure_writable()
    if "://" not in input_path:  # manifest uris must resolve from any worker's directory
        input_path = os.path.abspath(input_path)
    with console.status(f"ingesting {input_path} with Beam ({runner})…"):
        report = run_ingest(
            input_path,
            ws.manifest(name),
            ws.rejects(name),
            config,
            source=name,
            pipeline_args=list(pipeline_option or []),
            check_ratio=False,  # print the report first, then apply the guard
        )
    console.print(
        f"[bold]manifest {name!r}[/] ({report.layout} layout, {report.runner}, {report.seconds} s)"
    )
    table = Table()
    table.add_column("")
    table.add_column("rows", justify="right")
    table.add_row("input rows", str(report.input_rows))
    table.add_row("[green]ingested", str(report.ingested))
    table.add_row("[red]rejected", str(report.rejected))
    for reason, n in report.rejects_by_reason.items():
        table.add_row(f"  {reason}", str(n))
    console.print(table)
    if report.rejected:
        _show_rejects(report.rejects_dir)
    console.print(f"manifest: {report.manifest_dir} ({len(report.shards)} parts)")
    console.print(f"rejects:  {report.rejects_dir}")
    check_rejects(report, config)
    if report.ingested == 0:
        raise ValueError(
            f"no row of {input_path} was ingested (all {report.rejected} rejected) — see the "
            f"rejects table in {report.rejects_dir}"
        )


ingest.__doc__ = f"{inspect.cleandoc(ingest.__doc__)}\n\n{columns_help()}\n"


def _show_rejects(rejects_dir: str, limit: int = 10) -> None:
    from ragvid.schemas import REJECTS, read_parts

    rows = read_parts(rejects_dir, REJECTS).slice(0, limit).to_pylist()
    table = titled_table(title=f"first {len(rows)} rejects")
    for col in ("file", "row", "field", "reason", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        detail = (r["detail"] or "").split(": ", 1)[-1]
        file = r["source_file"].rsplit("/", 1)[-1]
        table.add_row(file, str(r["source_row"]), r["field"] or "", r["reason"], detail)
    console.print(table)


_SPLIT = defaults(SplitConfig)


@corpus_app.command("split")
@user_errors
def split(
    name: Annotated[str, typer.Argument(help="Corpus name in the workspace.")] = "demo",
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    val_fraction: Annotated[float, typer.Option(help="Share of videos held out as val.")] = _SPLIT[
        "val_fraction"
    ],
    seed: Annotated[int, typer.Option(help="Seed of the hash that assigns sides.")] = _SPLIT[
        "seed"
    ],
    duplicates: Annotated[
        str | None,
        typer.Option(
            help="Index name (or duplicates.parquet) whose near-duplicate groups stay on one "
            "side; default: the corpus's index when `ragvid index dedup` wrote one."
        ),
    ] = None,
) -> None:
    """Split a corpus into train / val by a seeded hash of each id (RAGME §4's protocol).

    `ragvid index build` then leaves val out of the retrieval database, and `ragvid evaluate`
    takes its prompts and reference videos from val. Rerunning with the same seed gives the
    same sides; new videos of a grown corpus never move old ones.
    """
    from ragvid.flows.resolve import Resolver
    from ragvid.pipelines.corpus.split import write_split

    res = Resolver.at(workspace)
    ws = res.ws.ensure_writable()
    dups = res.duplicates_for_split(name, duplicates)
    summary = write_split(
        ws.manifest(name),
        ws.split(name),
        SplitConfig(val_fraction=val_fraction, seed=seed),
        duplicates=dups,
        corpus=name,
    )
    c = summary.counts
    for w in summary.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(
        f"[green]split[/] {name!r}: {c['train']} train, {c['val']} val "
        f"(seed {seed}, val fraction {val_fraction}"
        + (f", near-duplicate groups from {dups}" if dups else ", no duplicate groups")
        + f") → {summary.uri}"
    )
