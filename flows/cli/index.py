"""`ragvid index build|dedup|list`, `ragvid search`, `ragvid neighbours`, `ragvid inspect`.

Thin wrappers over ``ragvid.pipelines.{index,dedup,retrieval,neighbours,inspect_page}``: the
same functions the Prefect flows call.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ragvid.flows.cli.common import (
    DEFAULT_WORKSPACE,
    WorkspaceOpt,
    app,
    console,
    index_app,
    progress,
    titled_table,
    user_errors,
)
from ragvid.flows.resolve import Resolver
from ragvid.schemas import IndexConfig, RetrievalConfig, Workspace, list_parts
from ragvid.schemas.config import DedupConfig, defaults
from ragvid.schemas.workspace import IndexLayout

_INDEX, _RET = defaults(IndexConfig), defaults(RetrievalConfig)
_DEDUP = defaults(DedupConfig)

RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Run the tasks on a Ray cluster (ray://HOST:10001 or HOST:6379; the workspace on "
        "a path every node sees); default: local Ray.",
    ),
]


def _join_ray(address: str | None) -> None:
    """Join the cluster at ``address`` (checked first); nothing to do without one."""
    if address:
        from ragvid.flows.preflight import check_ray_address
        from ragvid.pipelines.executor.ray_tasks import init_ray

        check_ray_address(address)
        init_ray(address)


MODES = {
    "dense": "dense",
    "bm25": "bm25",
    "hybrid": "hybrid-rerank",
    "hybrid-rerank": "hybrid-rerank",
    "rrf": "rrf",
}


def _encoder(spec: str | None, index: str, workspace: str):
    """The query encoder: ``spec`` or the index's own."""
    from ragvid.pipelines.embed.encoder import load_encoder

    res = Resolver.at(workspace)
    return load_encoder(res.encoder(spec) if spec else res.index_encoder(index))


@index_app.command("build")
@user_errors
def build(
    corpus: Annotated[str, typer.Option(help="Corpus whose embeddings to index.")],
    encoder: Annotated[
        str | None,
        typer.Option(help="Encoder the corpus was embedded with (default: its only one)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Index name (default: the corpus).")] = None,
    factory: Annotated[str | None, typer.Option(help="FAISS factory string override.")] = None,
    shards: Annotated[int, typer.Option(help="Number of shards.")] = _INDEX["num_shards"],
    memory_gb: Annotated[
        str,
        typer.Option(
            "--memory-gb",
            help="Memory budget for the index type: GiB (8, 1.5) or a size (16G, 512M).",
        ),
    ] = str(_INDEX["memory_budget_gb"]),
    recall_target: Annotated[float, typer.Option(help="Recall@10 to tune nprobe/ef for.")] = (
        _INDEX["recall_target"]
    ),
    canonical_only: Annotated[
        bool, typer.Option(help="Index canonical duplicate-group members only.")
    ] = False,
    ray: Annotated[bool, typer.Option(help="Fill shards with Ray tasks.")] = True,
    ray_address: RayAddressOpt = None,
    force: Annotated[
        bool, typer.Option(help="Rebuild from scratch even if up to date or only grown.")
    ] = False,
    all_splits: Annotated[
        bool,
        typer.Option(
            "--all-splits",
            help="Index val videos too (default: a corpus with `ragvid corpus split` is indexed "
            "on train only, so evaluation on val is held out).",
        ),
    ] = False,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Build a sharded FAISS index over a corpus's per-video embeddings.

    Shard tasks read their own embedding parts; when only new parts appeared since the
    current version (a grown corpus), they are added to it without retraining. A corpus with
    a train / val split is indexed on train (val held out) unless --all-splits."""
    from ragvid.pipelines.index.build import build_index

    _join_ray(ray_address)

    ws = Workspace.at(workspace).ensure_writable()
    emb = Resolver(ws).embeddings(corpus, encoder)
    out = ws.index(name or corpus)
    cfg = IndexConfig(
        factory=factory,
        num_shards=shards,
        memory_budget_gb=memory_gb,
        recall_target=recall_target,
        canonical_only=canonical_only,
    )
    manifest = ws.manifest(corpus) if list_parts(ws.manifest(corpus)) else None
    split = None if all_splits else Resolver(ws).split_table(corpus)
    with console.status(f"building index '{name or corpus}' from {emb}"):
        man = build_index(emb, out, cfg, ray=ray, manifest=manifest, force=force, split=split)
    if man.reused:
        console.print(
            f"[green]index[/] {out} is up to date: version {man.version}, every file verified "
            "(--force rebuilds it)"
        )
        return
    grown = f" (added to {man.grown_from})" if man.grown_from else ""
    if man.built_because:
        console.print(f"[yellow]{'grown' if man.grown_from else 'rebuilt'}:[/] {man.built_because}")
    console.print(
        f"[green]index[/] {out}: version {man.version}{grown}, {man.ntotal} videos, {man.factory}, "
        f"{len(man.shards)} shard(s), search {man.search_params or 'exact'} "
        f"(recall@10 {man.tuned_recall}), {man.build_seconds:.1f}s"
        + (f", left out {man.dropped}" if man.dropped else "")
    )
    if split is not None:
        console.print(
            f"train split only: {man.dropped.get('held_out', 0)} val video(s) held out "
            "(--all-splits indexes them too)"
        )


@index_app.command("dedup")
@user_errors
def dedup(
    corpus: Annotated[str, typer.Option(help="Corpus whose embeddings to scan.")],
    encoder: Annotated[
        str | None,
        typer.Option(help="Encoder the corpus was embedded with (default: its only one)."),
    ] = None,
    threshold: Annotated[float, typer.Option(help="δ_dedup: cosine for a near-duplicate.")] = (
        _INDEX["delta_dedup"]
    ),
    frame_threshold: Annotated[
        float,
        typer.Option(help="Aligned-frame agreement a pair must also reach (-1: skip the check)."),
    ] = _INDEX["delta_frame"],
    name: Annotated[str | None, typer.Option(help="Index name (default: the corpus).")] = None,
    method: Annotated[
        str,
        typer.Option(
            help="auto (exact up to --exact-max-n videos, clustered above) | exact | clustered "
            "(SemDeDup-shaped, linear in N) | ivf."
        ),
    ] = _DEDUP["method"],
    exact_max_n: Annotated[
        int, typer.Option(help="auto: the largest corpus searched exactly.")
    ] = _DEDUP["exact_max_n"],
    cluster_size: Annotated[
        int, typer.Option(help="clustered: target videos per cluster.")
    ] = _DEDUP["cluster_size"],
    assign: Annotated[
        int, typer.Option(help="clustered: nearest clusters a video may join.")
    ] = _DEDUP["assign"],
    workers: Annotated[
        int, typer.Option(help="clustered: threads over clusters without Ray.")
    ] = _DEDUP["workers"],
    vectors_dtype: Annotated[
        str,
        typer.Option(
            help="float32 | float16: how the vectors are held (exact/ivf: the driver's "
            "array; clustered: the spill files beside the table, ≈ 1.7 rows a video) — "
            "float16 halves it."
        ),
    ] = _DEDUP["vectors_dtype"],
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="clustered: run the part scans and cluster buckets as tasks on this Ray "
            "cluster (ray://HOST:10001 or auto; the workspace on a path every node sees).",
        ),
    ] = None,
    grow: Annotated[
        bool,
        typer.Option(
            "--grow/--recompute",
            help="A corpus that only gained parts since the last table: the exact and ivf "
            "methods search just the new videos and grow the groups (clustered searches "
            "every pair: faster); an unchanged corpus keeps its table. --recompute: always "
            "search every pair again.",
        ),
    ] = True,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Find near-duplicate groups; writes indexes/<name>/duplicates.parquet + a histogram
    (the next `ragvid index build` copies it into the new version; the current one keeps
    the table it was built with). A grown corpus grows the table: only new videos are
    searched."""
    from rich.markup import escape as markup_escape

    from ragvid.pipelines.index.dedup import find_duplicates

    config = DedupConfig(
        method=method,
        exact_max_n=exact_max_n,
        cluster_size=cluster_size,
        assign=assign,
        workers=workers,
        vectors_dtype=vectors_dtype,
    )
    ws = Workspace.at(workspace).ensure_writable()
    emb = Resolver(ws).embeddings(corpus, encoder)
    out = ws.index_layout(name or corpus).duplicates
    if ray_address:
        from ragvid.pipelines.executor.ray_tasks import init_ray

        init_ray(ray_address)
    with console.status(f"near-duplicate pairs at cosine ≥ {threshold} over {emb}"):
        delta_frame = None if frame_threshold <= -1 else frame_threshold
        rep = find_duplicates(
            emb, out, threshold, delta_frame=delta_frame, config=config, grow=grow
        )
    console.print(
        f"[green]duplicates[/] {rep.table_path}: {rep.n_groups} group(s), {rep.n_in_groups} "
        f"videos in groups, {rep.n_non_canonical} non-canonical, of {rep.n_videos}; "
        f"{rep.n_rejected_by_frames} candidate pair(s) failed the frame check "
        f"({rep.method}, {rep.seconds:.1f}s); histogram {rep.histogram_path}"
    )
    for w in rep.warnings:
        console.print(f"[bold yellow]warning:[/] {markup_escape(w)}")


@index_app.command("list")
@user_errors
def list_(workspace: WorkspaceOpt = DEFAULT_WORKSPACE) -> None:
    """List the indexes of the workspace."""
    from ragvid.pipelines.index.layout import list_indexes

    mans = list_indexes(Workspace.at(workspace).root)
    if not mans:
        console.print(f"no indexes in {workspace} — build one with `ragvid index build`")
        return
    t = Table(
        "name",
        "version",
        "encoder",
        "dim",
        "videos",
        "factory",
        "shards",
        "search",
        "recall@10",
        "duplicates",
    )
    for m in mans:
        t.add_row(
            m.name,
            m.version or "flat (rebuild)",
            m.encoder,
            str(m.dim),
            str(m.ntotal),
            m.factory,
            str(len(m.shards)),
            str(m.search_params or "exact"),
            str(m.tuned_recall),
            "yes" if m.duplicates else "no",
        )
    console.print(t)


@app.command("search")
@user_errors
def search(
    query: Annotated[str, typer.Argument(help="Text to search for.")],
    index: Annotated[str, typer.Option(help="Index name.")],
    encoder: Annotated[
        str | None, typer.Option(help="Text encoder spec (default: the index's encoder).")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Results to keep.")] = _RET["k"],
    mode: Annotated[str, typer.Option(help="dense | bm25 | hybrid | rrf")] = "dense",
    delta_min: Annotated[
        float | None, typer.Option(help="Minimum cosine for text queries (default: off).")
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Text→video search over a named index, with RAGME's filters."""
    from ragvid.pipelines.index.search import Retriever

    if mode not in MODES:
        raise ValueError(f"--mode {mode}: use one of {sorted(MODES)}")
    path = Resolver.at(workspace).index(index)
    r = Retriever.open(path)
    enc = None if MODES[mode] == "bm25" else _encoder(encoder, index, workspace)
    cfg = RetrievalConfig(k=k, delta_min_text=delta_min)
    res = r.search_text([query], enc, cfg, mode=MODES[mode])
    caps = r.captions_for(res.ids)[0]
    dm = "off" if res.delta_min is None else f"{res.delta_min:g}"
    t = titled_table("#", "video_id", "score", "caption", title=f"{query!r} — {mode}, δ_min {dm}")
    for i, (v, s, m, c) in enumerate(
        zip(res.ids[0], res.scores[0], res.mask[0], caps, strict=True)
    ):
        t.add_row(
            str(i + 1), str(v) if m else "[dim]— padded —[/]", f"{s:.4f}" if m else "", str(c or "")
        )
    console.print(t)


@app.command("neighbours")
@user_errors
def neighbours(
    index: Annotated[str, typer.Option(help="Index name.")],
    name: Annotated[str | None, typer.Option(help="Output name (default: the index).")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Neighbours per video.")] = _RET["k"],
    delta_min: Annotated[float, typer.Option(help="δ_min for video→video.")] = _RET[
        "delta_min_video"
    ],
    delta_dedup: Annotated[float, typer.Option(help="δ_dedup.")] = _RET["delta_dedup"],
    part_size: Annotated[int, typer.Option(help="Videos per output part.")] = 10_000,
    ray: Annotated[
        bool, typer.Option(help="One Ray task per part (each worker opens the index once).")
    ] = False,
    shard_actors: Annotated[
        bool,
        typer.Option(
            help="Hold each index shard in a Ray actor of its own and compute the parts here: "
            "no process holds every shard's codes (a 10M-video index: 2.8 GB of 4-bit codes)."
        ),
    ] = False,
    ray_address: RayAddressOpt = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Materialise training neighbour lists (query and its duplicates excluded); resumable."""
    from rich.markup import escape as markup_escape

    from ragvid.pipelines.index.neighbours import materialize_neighbours

    if shard_actors and ray:
        raise typer.BadParameter(
            "--shard-actors computes the parts in this process; --ray spreads them as tasks "
            "(each opening the whole index) — pick one"
        )
    _join_ray(ray_address)

    ws = Workspace.at(workspace).ensure_writable()
    path = Resolver(ws).index(index)
    cfg = RetrievalConfig(k=k, delta_min_video=delta_min, delta_dedup=delta_dedup)
    out = ws.neighbours(name or index)
    with progress() as bar:
        task = bar.add_task("neighbours", total=None)
        rep = materialize_neighbours(
            path,
            out,
            cfg,
            part_size=part_size,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            ray=(ray or bool(ray_address)) and not shard_actors,
            shard_actors=shard_actors,
        )
    console.print(
        f"[green]neighbours[/] {out}: {rep.n_videos} videos in {rep.n_parts} part(s) "
        f"({rep.parts_skipped} already done), mean {rep.mean_valid:.2f}/{k} kept, "
        f"{rep.fully_padded} fully padded, {rep.videos_per_s:.0f} videos/s"
    )
    for w in rep.warnings:
        console.print(f"[bold yellow]warning:[/] {markup_escape(w)}")


@app.command("inspect")
@user_errors
def inspect(
    query: Annotated[str, typer.Argument(help="Text query to look at.")],
    index: Annotated[str, typer.Option(help="Index name.")],
    encoder: Annotated[
        str | None, typer.Option(help="Text encoder spec (default: the index's encoder).")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Videos to show.")] = _RET["k"],
    mode: Annotated[str, typer.Option(help="dense | bm25 | hybrid | rrf")] = "dense",
    out: Annotated[str | None, typer.Option(help="Folder (default: <index>/inspect).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Write an HTML page + PNG contact sheet of the first frames of the K retrieved videos."""
    from ragvid.pipelines.index.inspect_page import write_inspection

    if mode not in MODES:
        raise ValueError(f"--mode {mode}: use one of {sorted(MODES)}")
    path = Resolver.at(workspace).index(index)
    enc = None if MODES[mode] == "bm25" else _encoder(encoder, index, workspace)
    html, png = write_inspection(
        path, query, enc, out or IndexLayout(path).inspect, k, mode=MODES[mode]
    )
    console.print(f"[green]wrote[/] {html}\n[green]wrote[/] {png}")
