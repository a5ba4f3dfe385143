"""`ragvid embed`, `ragvid encoder list|fit`: the embedding stage from the command line."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ragvid.flows.cli.common import (
    DEFAULT_WORKSPACE,
    WorkspaceOpt,
    app,
    console,
    encoder_app,
    progress,
    titled_table,
    user_errors,
)
from ragvid.schemas import EmbedConfig, EncoderFitConfig

_FIT = {k: f.default for k, f in EncoderFitConfig.model_fields.items()}
_EMBED = {k: f.default for k, f in EmbedConfig.model_fields.items()}

CorpusOpt = Annotated[str, typer.Option("--corpus", "-c", help="Corpus name in the workspace.")]


@app.command("embed")
@user_errors
def embed(
    corpus: CorpusOpt = "demo",
    encoder: Annotated[
        str,
        typer.Option(
            "--encoder",
            "-e",
            help="Preset (see `ragvid encoder list`), a fitted encoder's name in the workspace, "
            "open_clip:<arch>/<tag or checkpoint>, or open_clip:local-dir:<folder>.",
        ),
    ] = _EMBED["encoder"],
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    num_frames: Annotated[int, typer.Option(help="Frames sampled per video (T).")] = _EMBED[
        "num_frames"
    ],
    sampling: Annotated[str, typer.Option(help="uniform | every_n | fps")] = _EMBED["sampling"],
    part_size: Annotated[int, typer.Option(help="Manifest rows per output part.")] = _EMBED[
        "part_size"
    ],
    batch_size: Annotated[int, typer.Option(help="Frames per encoder batch.")] = _EMBED[
        "batch_size"
    ],
    num_encoders: Annotated[
        int | None,
        typer.Option(help="Encoder actors (default: one per GPU, else sized from measured rates)."),
    ] = None,
    num_decoders: Annotated[
        int | None, typer.Option(help="Decode tasks (default: sized from measured rates).")
    ] = None,
    decode_timeout: Annotated[float, typer.Option(help="Seconds per video before quarantine.")] = (
        _EMBED["decode_timeout_s"]
    ),
    storage_dtype: Annotated[str, typer.Option(help="float16 | float32 vectors.")] = _EMBED[
        "storage_dtype"
    ],
    decoder: Annotated[
        str, typer.Option(help="auto (decord, PyAV fallback) | decord | pyav | torchcodec")
    ] = _EMBED["decoder"],
    keyframes: Annotated[
        bool,
        typer.Option(
            "--keyframes",
            help="Take the keyframe nearest each sampled time (2-4x faster decode; frame_ts "
            "records what was decoded).",
        ),
    ] = _EMBED["keyframes"],
    decode_threads: Annotated[int, typer.Option(help="Threads per decoder.")] = _EMBED[
        "decode_threads"
    ],
    engine: Annotated[
        str,
        typer.Option(
            help="ray (Ray Data: decode/encode overlap) | ray-tasks (a Ray task per part) | "
            "local (one process, part by part)"
        ),
    ] = "ray",
    ray_address: Annotated[
        str | None, typer.Option(help="ray://head:10001 to run on a cluster; default local Ray.")
    ] = None,
    retry_failures: Annotated[
        bool, typer.Option("--retry-failures", help="Reprocess only the quarantined rows.")
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Re-hash every finished part (sha256) before skipping it; damaged parts are "
            "recomputed. Without it, parts are checked by size.",
        ),
    ] = False,
    max_failure_ratio: Annotated[
        float,
        typer.Option(help="Exit 1 when more than this share of videos is quarantined."),
    ] = _EMBED["max_failure_ratio"],
) -> None:
    """Embed a corpus: decode T frames per video, CLIP-encode frames and captions, Eq. 3 video
    vectors, written as resumable parts; undecodable videos are quarantined with a reason."""
    from ragvid.pipelines.embed.run import ENGINES, embed_corpus
    from ragvid.pipelines.embed.spec import parse_encoder
    from ragvid.pipelines.embed.throughput import progress_line
    from ragvid.schemas import EmbedConfig, Workspace

    if engine not in ENGINES:
        raise ValueError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    ws = Workspace.at(workspace).ensure_writable()
    spec = parse_encoder(encoder, ws)
    if spec.warning:
        console.print(f"[bold yellow]warning:[/] {spec.warning}")
    config = EmbedConfig(
        encoder=encoder,
        num_frames=num_frames,
        sampling=sampling,
        part_size=part_size,
        batch_size=batch_size,
        num_encoders=num_encoders,
        num_decoders=num_decoders,
        decode_timeout_s=decode_timeout,
        storage_dtype=storage_dtype,
        decoder=decoder,
        keyframes=keyframes,
        decode_threads=decode_threads,
        max_failure_ratio=max_failure_ratio,
    )
    with progress() as bar:
        task = bar.add_task(f"embed {corpus}", total=None)

        def on_part(done: int, total: int, stats: dict) -> None:
            line = progress_line(stats.get("throughput"))  # rate and bound as parts land
            text = f"embed {corpus}: {line}" if line else None
            bar.update(task, completed=done, total=total, description=text)

        report = embed_corpus(
            ws,
            corpus,
            config,
            engine=engine,
            ray_address=ray_address,
            retry_failures=retry_failures,
            verify=verify,
            check_ratio=False,  # print the report first, then apply the guard
            progress=on_part,
            on_retry=lambda done, total: bar.update(
                task, description=f"retry quarantined rows of {corpus}", completed=done, total=total
            ),
        )
    console.print(embed_summary(report))
    console.print(f"embeddings: {report.output}")
    for w in report.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(w)}")
    if report.quarantined:
        console.print(f"quarantined rows: {report.failures} (retry with --retry-failures)")
    report.check_failure_ratio(config.max_failure_ratio)


def embed_summary(report) -> Table:
    """The table `ragvid embed` prints: counts, quarantine by class, throughput and — on the
    Ray pipeline — its pools and what bound the run."""
    table = titled_table(title=f"embed {report.corpus} with {report.encoder}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("manifest rows", str(report.rows))
    table.add_row("embedded", str(report.embedded))
    ratio = report.quarantined / report.rows if report.rows else 0.0
    table.add_row("quarantined", f"{report.quarantined} ({ratio:.1%})")
    for cls, n in sorted(report.by_class.items()):
        table.add_row(f"  {cls}", str(n))
    table.add_row("parts (skipped, already done)", f"{report.parts} ({report.parts_skipped})")
    table.add_row("videos/s (this run)", f"{report.videos_per_s:.1f}")
    table.add_row("frames/s (this run)", f"{report.frames_per_s:.1f}")
    table.add_row("seconds", f"{report.seconds:.1f}")
    if report.throughput:
        from ragvid.pipelines.embed.throughput import Pools, progress_line

        pools = Pools(**report.throughput["pools"])
        table.add_row("pools", pools.describe())
        table.add_row("bound", progress_line(report.throughput))
    if report.mean_pair_cosine is not None:
        style = "[yellow]" if report.warnings else ""
        table.add_row(
            f"{style}mean pairwise cosine{'[/]' if style else ''}",
            f"{style}{report.mean_pair_cosine:.4f}{'[/]' if style else ''}",
        )
    if report.random_weights:
        table.add_row("[yellow]encoder weights[/]", "[yellow]RANDOM (tests only)[/]")
    return table


@encoder_app.command("list")
@user_errors
def encoder_list() -> None:
    """List encoder presets (any open_clip:<arch>/<tag or checkpoint> spec works too)."""
    from ragvid.pipelines.embed.encoder import list_encoders

    table = Table()
    table.add_column("preset")
    table.add_column("what")
    for name, doc in list_encoders().items():
        table.add_row(name, doc)
    console.print(table)
    console.print(
        "also: open_clip:<arch>/<pretrained tag or checkpoint path>, "
        "open_clip:local-dir:<folder>, or the name of an encoder fitted into the workspace"
    )


@encoder_app.command("fit")
@user_errors
def encoder_fit(
    corpus: CorpusOpt = "demo",
    name: Annotated[
        str | None,
        typer.Option("--name", "-n", help="Saved as <ws>/encoders/<name>; default: <corpus>-tiny."),
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    preset: Annotated[str, typer.Option(help="Architecture preset to fit.")] = _FIT["preset"],
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = _FIT["steps"],
    holdout: Annotated[float, typer.Option(help="Fraction of videos held out.")] = _FIT[
        "holdout_fraction"
    ],
    seed: Annotated[int, typer.Option(help="Seed (holdout split and init).")] = _FIT["seed"],
) -> None:
    """Fit a small CLIP on the corpus's (video, caption) pairs; prints the encoder spec."""
    from ragvid.pipelines.embed.fit import fit_encoder
    from ragvid.schemas import Workspace

    ws = Workspace.at(workspace).ensure_writable()
    name = name or f"{corpus}-tiny"  # one fitted encoder per corpus, never another's overwritten
    with progress() as bar:
        task = bar.add_task(f"fit {name}", total=steps)
        spec = fit_encoder(
            ws,
            corpus,
            ws.encoders(name),
            preset=preset,
            steps=steps,
            holdout_fraction=holdout,
            seed=seed,
            progress=lambda step, _n, loss: bar.update(
                task, completed=step, description=f"fit {name} loss {loss:.3f}"
            ),
        )
    console.print(spec)
    console.print(f"next: ragvid embed --corpus {corpus} --encoder {name} -w {workspace}")
