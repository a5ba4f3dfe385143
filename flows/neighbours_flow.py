"""`materialize-neighbours`: training neighbour lists from a built index (RAGME §3, q ∉ Z).

The stage writes its own parts with done markers and refuses to mix parameters, so a rerun
after a kill resumes at the first unfinished part; this flow adds the progress artifact, the
counts table and the report.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragvid.flows import monitor
from ragvid.flows.preflight import check_ray_address, check_workspace, ensure_ray
from ragvid.flows.resolve import Resolver
from ragvid.schemas import RetrievalConfig
from ragvid.schemas.config import defaults

_RET = defaults(RetrievalConfig)


@task(
    name="materialize-neighbours",
    task_run_name="neighbours-{name}",
    retries=1,
    cache_policy=NO_CACHE,
    tags=["neighbours"],
)
def neighbours_task(
    index_dir: str, out_dir: str, name: str, config: RetrievalConfig, part_size: int
) -> dict[str, Any]:
    from ragvid.pipelines.index.neighbours import materialize_neighbours as materialize

    progress: monitor.Progress | None = None

    def on_progress(done: int, total: int) -> None:
        nonlocal progress
        if progress is None:
            progress = monitor.Progress(f"neighbours-{name}-progress", total, "training videos")
        progress.advance(done - progress.done)

    report = materialize(index_dir, out_dir, config, part_size=part_size, progress=on_progress)
    if progress is not None:
        progress.finish()
    return asdict(report)


@flow(
    name="materialize-neighbours",
    flow_run_name="neighbours-{index}",
    description="K training neighbours per video (own id and near-duplicates excluded).",
    log_prints=True,
)
def neighbours_flow(
    workspace: str,
    index: str,
    name: str | None = None,
    k: int = _RET["k"],
    delta_min: float = _RET["delta_min_video"],
    delta_dedup: float = _RET["delta_dedup"],
    part_size: int = 10_000,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Write ``<workspace>/neighbours/<name>/part-*.parquet`` (default name: the index's)."""
    check_ray_address(ray_address)
    ws = check_workspace(workspace)
    index_dir = Resolver(ws).index(index)
    if ray_address:
        ensure_ray(ray_address)
    name = name or index
    started = time.perf_counter()
    config = RetrievalConfig(k=k, delta_min_video=delta_min, delta_dedup=delta_dedup)
    out_dir = ws.neighbours(name)
    rep = neighbours_task(index_dir, out_dir, name, config, part_size)
    row = {
        "neighbours": name,
        "index": index,
        "k": k,
        "videos": rep["n_videos"],
        "parts": rep["n_parts"],
        "parts_written": rep["parts_written"],
        "parts_skipped": rep["parts_skipped"],
        "mean_valid": rep["mean_valid"],
        "fully_padded": rep["fully_padded"],
        "videos_per_s": rep["videos_per_s"],
        "seconds": rep["seconds"],
    }
    monitor.table(f"neighbours-{name}", [row], "neighbour lists: counts and throughput")
    warnings = rep.get("warnings", [])
    text = (
        f"# materialize-neighbours `{name}`\n\nIndex `{index_dir}` · K={k} · δ_min={delta_min} "
        f"(video) · δ_dedup={delta_dedup} · {round(time.perf_counter() - started, 2)} s\n\n"
        + "".join(f"> **Warning:** {w}\n\n" for w in warnings)
        + f"{monitor.markdown_table([row])}\nOutput: `{out_dir}`\n"
    )
    report = monitor.write_report(ws.root, f"neighbours-{name}", text)
    print(f"neighbours {name}: {rep['n_videos']} videos, mean valid {rep['mean_valid']:.2f}/{k}")
    for w in warnings:
        print(f"warning: {w}")
    return {"out_dir": out_dir, "report": report, **row, "warnings": warnings}
