"""`build-index`: corpus → manifest (Beam) → embeddings (the Ray Data pipeline the CLI runs
and the benchmark times) → near-duplicate groups → sharded FAISS index → inspection → report.

The flow only composes stage functions: embedding is one task calling ``embed_corpus`` (the
same call as ``ragvid embed``), which holds the output lock, resumes from part markers and can
retry quarantined rows; its progress artifact is updated as parts land. Task runs per flow run
stay a handful whatever the corpus size. The encoder spec is parsed before any task starts, so
a wrong name fails once with the valid names instead of inside workers, and user errors are
not retried.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragvid.flows import monitor
from ragvid.flows.preflight import (
    check_manifest,
    check_ray_address,
    check_workspace,
    own_ray,
)
from ragvid.flows.resolve import Resolver
from ragvid.schemas import (
    EmbedConfig,
    IndexConfig,
    ManifestConfig,
    RetrievalConfig,
    SplitConfig,
)
from ragvid.schemas.config import DedupConfig, defaults
from ragvid.schemas.guards import FailureRatioError
from ragvid.schemas.io import exists, list_parts
from ragvid.schemas.workspace import IndexLayout, Workspace

Engine = Literal["ray", "ray-tasks", "local"]
_EMBED, _INDEX, _RETRIEVAL = defaults(EmbedConfig), defaults(IndexConfig), defaults(RetrievalConfig)
_SPLIT = defaults(SplitConfig)


# --- ingest ----------------------------------------------------------------------------


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry crashes and flaky I/O, not bad input (it would only fail again, slower)."""
    try:
        state.result()
    except (ValueError, FileNotFoundError, KeyError, FailureRatioError):
        return False
    except Exception:  # noqa: BLE001
        return True
    return True


@task(
    name="ingest",
    task_run_name="ingest-{corpus}",
    retries=1,
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def ingest_task(workspace: str, corpus: str, input_path: str, shards: int = 4) -> dict[str, Any]:
    """Beam manifest ETL; a corpus none of whose rows survive fails the flow here."""
    from ragvid.pipelines.corpus.beam import ingest

    ws = Workspace.at(workspace)
    if not exists(input_path):
        raise FileNotFoundError(
            f"--input {input_path} does not exist: pass the corpus folder/CSV/shards to ingest"
        )
    report = ingest(
        input_path,
        ws.manifest(corpus),
        ws.rejects(corpus),
        ManifestConfig(num_shards=shards),
        source=corpus,
    )
    stats = _as_dict(report)
    rows_out = _first(stats, "ingested", "rows_out", "num_rows", default=None)
    if rows_out == 0 or not list_parts(ws.manifest(corpus)):
        raise ValueError(
            f"corpus {corpus!r}: ingest of {input_path} accepted no rows "
            f"({_first(stats, 'rejected', default='?')} rejected — see "
            f"{ws.rejects(corpus)}); fix the input's layout/columns and rerun"
        )
    monitor.table(f"ingest-{corpus}", [_flat(stats)], f"manifest ETL of {input_path}")
    return stats


# --- embed -----------------------------------------------------------------------------


@task(
    name="embed",
    task_run_name="embed-{corpus}",
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
    tags=["embed"],
)
def embed_task(
    workspace: str,
    corpus: str,
    config: EmbedConfig,
    engine: Engine = "ray",
    ray_address: str | None = None,
    retry_failures: bool = False,
):
    """The embedding stage through the same ``embed_corpus`` the CLI runs (Ray Data by
    default): one task run for the whole corpus, parts resumed by their markers, progress and
    throughput in a progress artifact updated as parts land (on Ray Data: the rate and the
    bound, ``throughput.progress_line`` as the CLI bar shows it). A retry only redoes parts
    without a marker."""
    from ragvid.pipelines.embed.run import embed_corpus
    from ragvid.pipelines.embed.throughput import progress_line

    started = time.perf_counter()
    bar = monitor.Progress(f"embed-{corpus}-progress", 1, f"embedding {corpus}")
    state = {"videos": 0}

    def on_part(done: int, total: int, stats: dict) -> None:
        if not stats.get("skipped"):
            state["videos"] += int(stats.get("rows", 0))
        rate = state["videos"] / max(time.perf_counter() - started, 1e-9)
        line = progress_line(stats.get("throughput")) or f"{rate:.1f} videos/s"
        bar.set(done, total, f"embedding {corpus}: parts done, {line}")

    report = embed_corpus(
        workspace,
        corpus,
        config,
        engine=engine,
        ray_address=ray_address,
        retry_failures=retry_failures,
        progress=on_part,
    )
    bar.finish()
    return report


# --- dedup, index, inspection ----------------------------------------------------------


@task(name="dedup", task_run_name="dedup-{index}", retries=1, cache_policy=NO_CACHE)
def dedup_task(
    embeddings: str,
    index_dir: str,
    index: str,
    delta_dedup: float,
    delta_frame: float | None,
    config: DedupConfig | None = None,
) -> dict:
    from ragvid.pipelines.index.dedup import find_duplicates

    report = find_duplicates(
        embeddings,
        IndexLayout(index_dir).duplicates,
        delta_dedup,
        delta_frame=delta_frame,
        config=config,
    )
    return asdict(report)


@task(name="train-val-split", task_run_name="split-{corpus}", cache_policy=NO_CACHE)
def split_task(workspace: str, corpus: str, config: SplitConfig, duplicates: str | None) -> dict:
    from ragvid.pipelines.corpus.split import write_split

    ws = Workspace.at(workspace)
    s = write_split(
        ws.manifest(corpus), ws.split(corpus), config, duplicates=duplicates, corpus=corpus
    )
    for w in s.warnings:
        print(f"warning: {w}")
    return {"uri": s.uri, **s.counts, "warnings": s.warnings}


@task(name="build-faiss-index", task_run_name="index-{index}", retries=1, cache_policy=NO_CACHE)
def index_task(
    embeddings: str,
    index_dir: str,
    index: str,
    config: IndexConfig,
    duplicates: str | None,
    manifest: str | None,
    use_ray: bool,
    split: str | None = None,
) -> dict:
    from ragvid.pipelines.index.build import build_index

    man = build_index(
        embeddings,
        index_dir,
        config,
        duplicates=duplicates,
        ray=use_ray,
        manifest=manifest,
        split=split,
    )
    if man.reused:
        print(f"index {index}: up to date (version {man.version}, every file verified)")
    elif man.built_because:
        what = f"added to {man.grown_from}" if man.grown_from else "rebuilt"
        print(f"index {index}: {what} — {man.built_because}")
    return man.to_json()


@task(name="inspection-pages", task_run_name="inspect-{index}", cache_policy=NO_CACHE)
def inspect_task(index_dir: str, index: str, queries: list[str], encoder, k: int) -> list:
    from ragvid.pipelines.embed.encoder import load_encoder
    from ragvid.pipelines.index.inspect_page import write_inspection

    enc = load_encoder(encoder, batch_size=64)
    out = []
    for q in queries:
        html, png = write_inspection(index_dir, q, enc, IndexLayout(index_dir).inspect, k)
        out.append({"query": q, "html": html, "png": png})
    return out


def inspection_lines(workspace: str, index: str, pages: list[dict[str, str]]) -> list[str]:
    """The report's inspection section: each query's contact sheet inline (it renders in the
    Prefect UI) and its HTML page's path as text — a link to a worker's file would point at
    the reader's own disk. The retrieval service is where the pages' videos can be browsed."""
    from ragvid.schemas.config import ServiceConfig

    svc = defaults(ServiceConfig)
    lines = [
        f"Files on the machine that ran this flow. To browse `{index}` from a browser: run "
        f"`ragvid serve-index -w {workspace} --index {index}` there (UI and API at "
        f"`http://{svc['host']}:{svc['port']}/`; `--host 0.0.0.0` to reach it from elsewhere).",
        "",
    ]
    for p in pages:
        sheet = monitor.inline_png(p["png"], f"contact sheet: {p['query']}", 640, 40_000)
        lines += [f"- **{p['query']}** — page `{p['html']}`", "", sheet, ""]
    return lines


def default_queries(ws: Workspace, corpus: str, n: int = 2) -> list[str]:
    """A few of the corpus's own captions (deterministic) to show on the inspection page."""
    import pyarrow.parquet as pq

    parts = list_parts(ws.manifest(corpus))
    table = pq.read_table(parts[0], columns=["caption"]) if parts else None
    if table is None or table.num_rows == 0:
        return []
    caps = table.column("caption").to_pylist()
    return [caps[int(i * (len(caps) - 1) / max(n - 1, 1))] for i in range(n)][:n]


# --- helpers ---------------------------------------------------------------------------


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return dict(vars(obj))


def _first(d: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return default


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not isinstance(v, list | dict)}


def _warning_lines(warnings: list[str]) -> list[str]:
    """Degenerate-output warnings as markdown callouts (nothing when there are none)."""
    return [line for w in warnings for line in (f"> **Warning:** {w}", "")]


def _throughput_cells(snapshot: dict | None) -> dict:
    """The Ray pipeline's pools, capacities and bound (empty cells for other engines)."""
    snap, pools = snapshot or {}, (snapshot or {}).get("pools") or {}
    return {
        "bound": snap.get("bound", ""),
        "decoders": pools.get("decoders"),
        "encoders": pools.get("encoders"),
        "decode_per_s": snap.get("decode_per_s"),
        "encode_per_s": snap.get("encode_per_s"),
    }


def embed_tables(report) -> tuple[list[dict], list[dict]]:
    """(summary rows, failures-by-class rows) for the artifacts and the report."""
    summary = [
        {
            "corpus": report.corpus,
            "encoder": report.encoder,
            "parts": report.parts,
            "parts_skipped": report.parts_skipped,
            "random_weights": report.random_weights,
            "rows": report.rows,
            "embedded": report.embedded,
            "quarantined": report.quarantined,
            "frames": report.frames,
            "seconds": report.seconds,
            "videos_per_s": round(report.videos_per_s, 2),
            "frames_per_s": round(report.frames_per_s, 2),
            "mean_pair_cosine": report.mean_pair_cosine,
            **_throughput_cells(report.throughput),
        }
    ]
    by_class = [{"error_class": k, "videos": v} for k, v in sorted(report.by_class.items())]
    return summary, by_class


# --- the flow --------------------------------------------------------------------------


@flow(
    name="build-index",
    flow_run_name="build-index-{corpus}",
    description="Ingest → embed (task per part) → dedup → FAISS index → inspection → report.",
    log_prints=True,
)
def build_index_flow(
    workspace: str,
    corpus: str,
    input: str | None = None,
    index: str | None = None,
    encoder: str = _EMBED["encoder"],
    num_frames: int = _EMBED["num_frames"],
    part_size: int = _EMBED["part_size"],
    num_shards: int = _INDEX["num_shards"],
    delta_dedup: float = _INDEX["delta_dedup"],
    delta_frame: float | None = _INDEX["delta_frame"],
    canonical_only: bool = _INDEX["canonical_only"],
    inspect_queries: list[str] | None = None,
    k: int = _RETRIEVAL["k"],
    engine: Engine = "ray",
    ray_address: str | None = None,
    retry_failures: bool = False,
    val_fraction: float | None = None,
    split_seed: int = _SPLIT["seed"],
    all_splits: bool = False,
    dedup_config: DedupConfig | None = None,
) -> dict[str, Any]:
    """Build (or resume building) the retrieval index ``index`` (default: the corpus name).

    ``dedup_config``: how near-duplicate pairs are found (default :class:`DedupConfig`: exact
    up to 20k videos, clustered above; the same options as ``ragvid index dedup``).

    ``val_fraction`` (re)writes the corpus's train / val split after dedup (near-duplicate
    groups kept on one side); a corpus with a split is indexed on train only unless
    ``all_splits``."""
    from ragvid.pipelines.embed.spec import parse_encoder

    check_ray_address(ray_address)
    ws = check_workspace(workspace, must_exist=input is None)
    index = index or corpus
    spec = parse_encoder(encoder, ws)  # before any task: a bad name is a config error
    if spec.warning:
        print(f"warning: {spec.warning}")
    with own_ray():
        started = time.perf_counter()
        ingest_stats = None
        if input is not None:
            ingest_stats = ingest_task(ws.root, corpus, input)
        check_manifest(ws, corpus)

        config = EmbedConfig(encoder=encoder, num_frames=num_frames, part_size=part_size)
        report = embed_task(ws.root, corpus, config, engine, ray_address, retry_failures)
        summary, by_class = embed_tables(report)
        embed_warnings = list(report.warnings)
        for w in embed_warnings:
            print(f"warning: embed: {w}")
        monitor.table(f"embed-{corpus}", summary, "embedding: counts and throughput")
        monitor.table(
            f"embed-{corpus}-failures",
            by_class or [{"error_class": "-", "videos": 0}],
            "quarantined videos by error class",
        )

        index_dir = ws.index(index)
        dedup = dedup_task(report.output, index_dir, index, delta_dedup, delta_frame, dedup_config)
        dedup_warnings = list(dedup.get("warnings", []))
        for w in dedup_warnings:
            print(f"warning: dedup: {w}")
        split_row = None
        if val_fraction is not None:
            cfg = SplitConfig(val_fraction=val_fraction, seed=split_seed)
            split_row = split_task(ws.root, corpus, cfg, dedup["table_path"])
        split = None if all_splits else Resolver(ws).split_table(corpus)
        man = index_task(
            report.output,
            index_dir,
            index,
            IndexConfig(
                num_shards=num_shards,
                canonical_only=canonical_only,
                delta_dedup=delta_dedup,
                delta_frame=delta_frame,
            ),
            dedup["table_path"],
            ws.manifest(corpus),
            engine == "ray",
            split,
        )
        queries = inspect_queries if inspect_queries is not None else default_queries(ws, corpus)
        pages = inspect_task(index_dir, index, queries, spec, k) if queries else []

        index_row = {
            "index": index,
            "factory": man["factory"],
            "ntotal": man["ntotal"],
            "shards": len(man["shards"]),
            "dim": man["dim"],
            "held_out_val": man["dropped"].get("held_out", 0),
            "dup_groups": dedup["n_groups"],
            "largest_group": dedup.get("largest_group", 0),
            "non_canonical": dedup["n_non_canonical"],
            "pairs_failing_frame_check": dedup["n_rejected_by_frames"],
            "build_s": man["build_seconds"],
        }
        monitor.table(f"index-{index}", [index_row], "FAISS index and near-duplicate groups")
        seconds = round(time.perf_counter() - started, 2)
        text = "\n".join(
            [
                f"# build-index `{index}` (corpus `{corpus}`)",
                "",
                f"Workspace `{ws.root}` · encoder `{report.encoder}` · {seconds} s",
                "",
                "## Ingest",
                "",
                monitor.markdown_table([_flat(ingest_stats)])
                if ingest_stats
                else "_manifest already ingested_\n",
                "## Embedding",
                "",
                *_warning_lines(embed_warnings),
                monitor.markdown_table(summary),
                "### Quarantined videos by error class",
                "",
                monitor.markdown_table(by_class),
                f"Failures table: `{report.failures}`",
                "",
                "## Index",
                "",
                *_warning_lines(dedup_warnings),
                monitor.markdown_table([index_row]),
                f"- index: `{index_dir}`",
                f"- train / val split: {split_row['train']} train, {split_row['val']} val "
                f"(`{split_row['uri']}`)"
                if split_row
                else f"- train / val split: {'`' + split + '`' if split else 'none'}",
                f"- duplicates: `{dedup['table_path']}`",
                f"- top-1 similarity histogram (`{dedup['histogram_path']}`):",
                "",
                monitor.inline_png(dedup["histogram_path"], "top-1 similarity histogram"),
                "",
                "## Inspection pages",
                "",
                *inspection_lines(ws.root, index, pages),
            ]
        )
        report_uri = monitor.write_report(ws.root, f"build-index-{index}", text)
        print(
            f"build-index {index}: {report.embedded} embedded, {report.quarantined} quarantined, "
            f"{man['ntotal']} indexed; report {report_uri}"
        )
        return {
            "index_dir": index_dir,
            "embeddings": report.output,
            "duplicates": dedup["table_path"],
            "histogram": dedup["histogram_path"],
            "inspection": pages,
            "report": report_uri,
            "embed": summary[0],
            "index": index_row,
            "ingest": ingest_stats,
            "split": split_row,
            "warnings": {"embed": embed_warnings, "dedup": dedup_warnings},
        }
