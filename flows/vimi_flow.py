"""`vimi-dataset`: VIMI's retrieval-augmented multimodal prompt dataset and its three
instruction-tuning task tables (seed 003 §3.1–3.3), as one Prefect flow.

Ingest the image-text memory (when sources are given) → build its sharded BM25 engine (reused
while the memory is unchanged) → bulk-retrieve the top-K pairs for every caption of the corpus
(Ray tasks over manifest parts, resumable) → the three task tables → the sample page. Each step
is the stage the CLI runs (``ragvid vimi …``); this flow adds the Prefect tasks, progress,
tables and the report with the retrieval-score histogram.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragvid.flows import monitor
from ragvid.flows.preflight import check_ray_address, check_workspace, ensure_ray
from ragvid.schemas import Workspace
from ragvid.schemas.config import VimiConfig, defaults
from ragvid.schemas.files import join

_VIMI = defaults(VimiConfig)


def vimi_config(
    k: int = _VIMI["k"],
    engine: str = _VIMI["engine"],
    memory_shards: int = _VIMI["memory_shards"],
    tasks: list[str] | None = None,
    detector: str = _VIMI["detector"],
    segmenter: str = _VIMI["segmenter"],
) -> VimiConfig:
    """The one place the CLI and the flow turn their options into a :class:`VimiConfig`."""
    return VimiConfig(
        k=k,
        engine=engine,
        memory_shards=memory_shards,
        tasks=tuple(tasks) if tasks else _VIMI["tasks"],
        detector=detector,
        segmenter=segmenter,
    )


@task(name="vimi-memory-ingest", task_run_name="memory-{memory}", cache_policy=NO_CACHE)
def memory_ingest_task(
    workspace: str,
    memory: str,
    sources: list[str],
    kind: str,
    corpus: str | None,
    config: VimiConfig,
) -> dict[str, Any]:
    from ragvid.pipelines.vimi.memory_ingest import ingest_memory

    return dict(ingest_memory(workspace, memory, sources, kind=kind, corpus=corpus, config=config))


@task(name="vimi-memory-engine", task_run_name="bm25-{memory}", cache_policy=NO_CACHE)
def memory_engine_task(workspace: str, memory: str, config: VimiConfig) -> dict[str, Any]:
    from ragvid.pipelines.vimi.engine import build_engine

    return dict(build_engine(workspace, memory, config))


@task(name="vimi-bulk-retrieval", task_run_name="retrieve-{dataset}", cache_policy=NO_CACHE)
def retrieval_task(
    workspace: str,
    corpus: str,
    memory: str,
    dataset: str,
    config: VimiConfig,
    executor: str,
    ray_address: str | None,
) -> dict[str, Any]:
    from ragvid.pipelines.vimi.retrieve import build_prompts

    bar: monitor.Progress | None = None

    def on_progress(done: int, total: int, _stats: dict) -> None:
        nonlocal bar
        if bar is None:
            bar = monitor.Progress(f"vimi-{dataset}-retrieval", total, "manifest parts")
        bar.advance(done - bar.done)

    result = build_prompts(
        workspace,
        corpus,
        memory,
        dataset,
        config,
        executor=executor,
        ray_address=ray_address,
        progress=on_progress,
    )
    if bar is not None:
        bar.finish()
    return {"parts": len(result.parts), "skipped": result.skipped, "seconds": result.seconds}


@task(name="vimi-task-tables", task_run_name="tasks-{dataset}", cache_policy=NO_CACHE)
def task_tables_task(
    workspace: str, dataset: str, config: VimiConfig, executor: str, ray_address: str | None
) -> dict[str, Any]:
    from ragvid.pipelines.vimi.tasks import build_tasks, task_totals

    results = build_tasks(workspace, dataset, config, executor=executor, ray_address=ray_address)
    return {
        t: {"parts": len(r.parts), "skipped": r.skipped, **task_totals(r)}
        for t, r in results.items()
    }


@flow(
    name="vimi-dataset",
    flow_run_name="vimi-{corpus}-{memory}",
    description="VIMI: BM25 over an image-text memory → multimodal prompt dataset → 3 task tables.",
    log_prints=True,
)
def vimi_dataset_flow(
    workspace: str,
    corpus: str,
    memory: str,
    dataset: str | None = None,
    memory_sources: list[str] | None = None,
    memory_kind: str = "auto",
    memory_keyframes: bool = False,
    k: int = _VIMI["k"],
    engine: str = _VIMI["engine"],
    memory_shards: int = _VIMI["memory_shards"],
    tasks: list[str] | None = None,
    detector: str = _VIMI["detector"],
    segmenter: str = _VIMI["segmenter"],
    executor: str = "ray",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Build ``<workspace>/vimi/<dataset>/`` (default name: ``<corpus>-<memory>``)."""
    from ragvid.pipelines.vimi.report import summarise_dataset, write_score_histogram
    from ragvid.pipelines.vimi.sample_page import write_samples_page

    check_ray_address(ray_address)
    ws: Workspace = check_workspace(workspace)
    if executor == "ray":
        ensure_ray(ray_address)
    dataset = dataset or f"{corpus}-{memory}"
    config = vimi_config(k, engine, memory_shards, tasks, detector, segmenter)
    started = time.perf_counter()
    ingested: dict[str, Any] = {}
    if memory_sources or memory_keyframes:  # one ingest: the memory is what these make
        ingested = memory_ingest_task(
            ws.root,
            memory,
            list(memory_sources or []),
            memory_kind,
            corpus if memory_keyframes else None,
            config,
        )
    engine_info = memory_engine_task(ws.root, memory, config)
    retrieved = retrieval_task(ws.root, corpus, memory, dataset, config, executor, ray_address)
    built = task_tables_task(ws.root, dataset, config, executor, ray_address)
    summary = summarise_dataset(ws, dataset, config)
    hist = write_score_histogram(
        summary.scores,
        join(ws.vimi_dataset(dataset), "retrieval_scores.png"),
        f"BM25 scores of the retrieved pairs, {dataset}",
    )
    page = write_samples_page(ws, dataset)
    rows = summary.rows()
    monitor.table(f"vimi-{dataset}-counts", rows, "VIMI dataset: rows and images per table")
    sample = [
        {"video_id": r["video_id"], "prompt": r["prompt"][:300]}
        for r in _first_prompts(ws, dataset, 8)
    ]
    monitor.table(f"vimi-{dataset}-sample", sample, "the first prompts of the dataset")
    seconds = round(time.perf_counter() - started, 2)
    problems = "".join(f"> **Problem:** {p}\n\n" for p in summary.problems)
    for name, stats in built.items():
        dropped = {k.removeprefix("dropped_"): v for k, v in stats.items() if "dropped_" in k}
        if any(dropped.values()):
            problems += f"Task `{name}` left out: {dropped}\n\n"
    text = (
        f"# vimi-dataset `{dataset}`\n\nCorpus `{corpus}` · memory `{memory}` "
        f"({engine_info.get('rows', '?')} pairs, {len(engine_info.get('shards') or [])} BM25 "
        f"shards, {engine_info.get('backend', config.engine)}) · K={config.k} · {seconds} s\n\n"
        + problems
        + f"{monitor.markdown_table(rows)}\n"
        + monitor.inline_png(hist, "retrieval-score histogram")
        + f"\n\nSample page: `{page}`\n\n"
        + f"{monitor.markdown_table(sample)}\n"
    )
    report = monitor.write_report(ws.root, f"vimi-{dataset}", text)
    print(
        f"vimi {dataset}: {summary.prompts} prompts, mean {summary.mean_retrieved:.2f}/{config.k} "
        f"images; tasks {summary.tasks}; {summary.n_problems} problems"
    )
    return {
        "dataset": dataset,
        "out_dir": ws.vimi_dataset(dataset),
        "ingested": ingested,
        "engine": engine_info,
        "retrieval": retrieved,
        "tasks": built,
        "counts": rows,
        "problems": summary.problems,
        "n_problems": summary.n_problems,
        "samples_page": page,
        "histogram": hist,
        "report": report,
        "seconds": seconds,
    }


def _first_prompts(ws: Workspace, dataset: str, n: int) -> list[dict]:
    """The first ``n`` rows of the prompt dataset (one part read, two columns)."""
    from ragvid.schemas.io import read_table
    from ragvid.schemas.markers import complete_parts
    from ragvid.schemas.tables import VIMI_PROMPTS

    out: list[dict] = []
    for part, _ in complete_parts(ws.vimi_prompts(dataset)):
        out += read_table(part, VIMI_PROMPTS, columns=["video_id", "prompt"]).to_pylist()
        if len(out) >= n:
            break
    return out[:n]
