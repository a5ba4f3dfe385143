"""`build-index`: corpus → manifest (Beam) → embeddings (a task per part, Ray) → near-duplicate
groups → sharded FAISS index → inspection pages → report.

The flow only composes stage functions. Resume has two layers: each embed part writes a
``.done`` marker (the stage skips a finished part), and the part task's cache key is the part's
inputs plus its marker, so once a part is finished Prefect shows later runs of it as Cached.
A key is only issued when the marker exists: deleting the outputs can never be masked by a
stale cache entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import asdict
from typing import Any, Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from ragvid.flows import monitor
from ragvid.flows.preflight import (
    check_manifest,
    check_ray_address,
    check_workspace,
    ensure_ray,
    own_ray,
)
from ragvid.schemas import EmbedConfig, IndexConfig, ManifestConfig
from ragvid.schemas.io import done_marker, exists, join, list_parts, read_json
from ragvid.schemas.workspace import Workspace

Engine = Literal["ray", "local"]


# --- ingest ----------------------------------------------------------------------------


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry crashes and flaky I/O, not bad input (it would only fail again, slower)."""
    try:
        state.result()
    except (ValueError, FileNotFoundError, KeyError):
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


def part_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """Key = the part's inputs + its done marker; no key (no caching) until it is done."""
    marker = done_marker(parameters["part_uri"])
    if not exists(marker):
        return None
    config: EmbedConfig = parameters["config"]
    blob = json.dumps(
        {
            "part": parameters["part"],
            "uri": parameters["part_uri"],
            "config": config.model_dump(),
            "marker": read_json(marker),
        },
        sort_keys=True,
        default=str,
    )
    return "embed-part-" + hashlib.sha256(blob.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=2)
def _local_encoder(spec: str, batch_size: int):
    from ragvid.pipelines.embed.encoder import load_encoder

    return load_encoder(spec, batch_size=batch_size)


def _embed_in_worker(workspace: str, corpus: str, part: int, config: EmbedConfig):
    from ragvid.pipelines.embed.stage import embed_part

    return embed_part(Workspace.at(workspace), corpus, part, config)


@task(
    name="embed-part",
    task_run_name="embed-{corpus}-part-{part}",
    retries=2,
    retry_delay_seconds=2,
    cache_key_fn=part_cache_key,
    tags=["embed"],
)
def embed_part_task(
    workspace: str,
    corpus: str,
    part: int,
    part_uri: str,
    config: EmbedConfig,
    engine: Engine = "ray",
) -> dict[str, Any]:
    """One manifest part: decode + CLIP (a Ray task, or in this process for ``local``)."""
    from ragvid.pipelines.embed.stage import PartStats, embed_part
    from ragvid.schemas.io import is_done

    if is_done(part_uri):  # finished by an earlier run: no Ray round trip, no encoder load
        return asdict(PartStats.from_marker(part_uri))
    if engine == "ray":
        import ray

        remote = ray.remote(num_cpus=1, max_retries=1)(_embed_in_worker)
        stats = ray.get(remote.remote(workspace, corpus, part, config))
    else:
        encoder = _local_encoder(config.encoder, config.batch_size)
        stats = embed_part(Workspace.at(workspace), corpus, part, config, encoder=encoder)
    return asdict(stats)


def embed_parts(
    ws: Workspace, corpus: str, config: EmbedConfig, engine: Engine, ray_address: str | None
) -> dict[str, Any]:
    """Run one task per part; a failed part does not stop the others (rerun retries it)."""
    from ragvid.pipelines.embed.stage import PartStats, plan_parts, summarize

    started = time.perf_counter()
    plans = plan_parts(ws, corpus, config)
    todo = sum(not p.done for p in plans)
    progress = monitor.Progress(
        f"embed-{corpus}-progress", len(plans), f"embedding {corpus}: {todo} of {len(plans)} parts"
    )
    for p in plans:
        if p.done:
            progress.advance()
    if engine == "ray" and todo:
        ensure_ray(ray_address)
    args = [(ws.root, corpus, p.index, p.uri, config, engine) for p in plans]
    states = {}
    if engine == "ray":
        futures = {p.index: embed_part_task.submit(*a) for p, a in zip(plans, args, strict=True)}
        for i, fut in futures.items():
            fut.wait()
            states[i] = fut.state
            if not plans[i].done:
                progress.advance()
    else:
        for p, a in zip(plans, args, strict=True):
            states[p.index] = embed_part_task(*a, return_state=True)
            if not p.done:
                progress.advance()
    progress.finish()
    stats, failed = [], []
    for i, state in states.items():
        if state.is_completed():
            stats.append(PartStats(**state.result()))
        else:
            failed.append({"part": i, "state": state.name, "message": str(state.message)[:300]})
    report = summarize(ws, corpus, config, plans, stats, time.perf_counter() - started)
    return {"report": report, "failed_parts": failed, "plans": plans}


# --- dedup, index, inspection ----------------------------------------------------------


@task(name="dedup", task_run_name="dedup-{index}", retries=1, cache_policy=NO_CACHE)
def dedup_task(
    embeddings: str, index_dir: str, index: str, delta_dedup: float, delta_frame: float | None
) -> dict:
    from ragvid.pipelines.index.dedup import find_duplicates

    report = find_duplicates(
        embeddings, join(index_dir, "duplicates.parquet"), delta_dedup, delta_frame=delta_frame
    )
    return asdict(report)


@task(name="build-faiss-index", task_run_name="index-{index}", retries=1, cache_policy=NO_CACHE)
def index_task(
    embeddings: str,
    index_dir: str,
    index: str,
    config: IndexConfig,
    duplicates: str | None,
    manifest: str | None,
    use_ray: bool,
) -> dict:
    from ragvid.pipelines.index.build import build_index

    man = build_index(
        embeddings, index_dir, config, duplicates=duplicates, ray=use_ray, manifest=manifest
    )
    return man.to_json()


@task(name="inspection-pages", task_run_name="inspect-{index}", cache_policy=NO_CACHE)
def inspect_task(index_dir: str, index: str, queries: list[str], encoder: str, k: int) -> list:
    from ragvid.pipelines.index.inspect_page import write_inspection

    enc = _local_encoder(encoder, 64)
    out = []
    for q in queries:
        html, png = write_inspection(index_dir, q, enc, join(index_dir, "inspect"), k)
        out.append({"query": q, "html": html, "png": png})
    return out


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


def embed_tables(report, failed: list[dict]) -> tuple[list[dict], list[dict]]:
    """(summary rows, failures-by-class rows) for the artifacts and the report."""
    summary = [
        {
            "corpus": report.corpus,
            "encoder": report.encoder,
            "parts": report.parts,
            "parts_skipped": report.parts_skipped,
            "parts_failed": len(failed),
            "rows": report.rows,
            "embedded": report.embedded,
            "quarantined": report.quarantined,
            "frames": report.frames,
            "seconds": report.seconds,
            "videos_per_s": round(report.videos_per_s, 2),
            "frames_per_s": round(report.frames_per_s, 2),
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
    encoder: str = "tiny",
    num_frames: int = 8,
    part_size: int = 64,
    num_shards: int = 1,
    delta_dedup: float = 0.965,
    delta_frame: float | None = 0.95,
    canonical_only: bool = False,
    inspect_queries: list[str] | None = None,
    k: int = 5,
    engine: Engine = "ray",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Build (or resume building) the retrieval index ``index`` (default: the corpus name)."""
    check_ray_address(ray_address)
    ws = check_workspace(workspace, must_exist=input is None)
    index = index or corpus
    with own_ray():
        started = time.perf_counter()
        ingest_stats = None
        if input is not None:
            ingest_stats = ingest_task(ws.root, corpus, input)
        check_manifest(ws, corpus)

        config = EmbedConfig(encoder=encoder, num_frames=num_frames, part_size=part_size)
        emb = embed_parts(ws, corpus, config, engine, ray_address)
        report = emb["report"]
        summary, by_class = embed_tables(report, emb["failed_parts"])
        monitor.table(f"embed-{corpus}", summary, "embedding: counts and throughput")
        monitor.table(
            f"embed-{corpus}-failures",
            by_class or [{"error_class": "-", "videos": 0}],
            "quarantined videos by error class",
        )
        if emb["failed_parts"]:
            monitor.table(f"embed-{corpus}-failed-parts", emb["failed_parts"], "parts that failed")
            raise RuntimeError(
                f"{len(emb['failed_parts'])} of {report.parts} embed parts failed (see the "
                "embed-part task runs); rerun the flow to retry only those parts"
            )

        index_dir = ws.index(index)
        dedup = dedup_task(report.output, index_dir, index, delta_dedup, delta_frame)
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
        )
        queries = inspect_queries if inspect_queries is not None else default_queries(ws, corpus)
        pages = inspect_task(index_dir, index, queries, encoder, k) if queries else []

        index_row = {
            "index": index,
            "factory": man["factory"],
            "ntotal": man["ntotal"],
            "shards": len(man["shards"]),
            "dim": man["dim"],
            "dup_groups": dedup["n_groups"],
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
                monitor.markdown_table(summary),
                "### Quarantined videos by error class",
                "",
                monitor.markdown_table(by_class),
                f"Failures table: `{report.failures}`",
                "",
                "## Index",
                "",
                monitor.markdown_table([index_row]),
                f"- index: `{index_dir}`",
                f"- duplicates: `{dedup['table_path']}`",
                f"- top-1 similarity histogram: ![histogram]({dedup['histogram_path']})",
                "",
                "## Inspection pages",
                "",
                *[f"- [{p['query']}]({p['html']}) ([contact sheet]({p['png']}))" for p in pages],
                "",
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
        }
