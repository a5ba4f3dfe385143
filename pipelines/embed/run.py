"""``embed_corpus``: the one entry point the CLI, the Python API and the Prefect flows call.

It builds the :class:`~.stage.EmbedStage` (parsing the encoder spec once, before any worker
starts, so a bad name fails here with the list of valid ones and is never retried), runs it on
the chosen executor (which plans under the output lock), optionally retries quarantined rows,
merges the part markers into an :class:`~.stage.EmbedReport`, and finally applies the
failure-ratio guard: everything is written and marked first, so a run failed by the guard
loses nothing and a rerun (after fixing the cause) resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from ragvid.pipelines.embed.stage import (
    EmbedReport,
    EmbedStage,
    PartStats,
    embed_rows,
    retry_part,
    summarize,
)
from ragvid.pipelines.embed.throughput import latest
from ragvid.pipelines.executor.base import LocalExecutor, ProgressFn
from ragvid.pipelines.executor.ray_tasks import RayTaskExecutor
from ragvid.schemas import EmbedConfig
from ragvid.schemas.io import output_lock
from ragvid.schemas.workspace import Workspace

Engine = Literal["ray", "ray-tasks", "local"]
ENGINES = ("ray", "ray-tasks", "local")


def executor_for(engine: str, ray_address: str | None = None):
    """``ray``: the Ray Data streaming pipeline (decode tasks → encoder actors); ``ray-tasks``: a
    Ray task per part; ``local``: the plain in-process loop."""
    if engine == "ray":
        from ragvid.pipelines.embed.ray_data import RayDataExecutor

        return RayDataExecutor(ray_address)
    if engine == "ray-tasks":
        return RayTaskExecutor(num_cpus=1, ray_address=ray_address)
    if engine == "local":
        return LocalExecutor()
    raise ValueError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}")


def embed_corpus(
    workspace: Workspace | str,
    corpus: str,
    config: EmbedConfig,
    *,
    engine: str = "ray",
    ray_address: str | None = None,
    retry_failures: bool = False,
    verify: bool = False,
    progress: ProgressFn | None = None,
    on_retry: Callable[[int, int], None] | None = None,
    check_ratio: bool = True,
) -> EmbedReport:
    """Embed every unfinished part of ``corpus``; with ``retry_failures`` also reprocess the
    quarantined rows of finished parts (in this process). ``verify`` re-hashes every finished
    part's files first (a part that fails is recomputed). Raises
    :class:`~ragvid.schemas.guards.FailureRatioError` after the run when more than
    ``config.max_failure_ratio`` of the rows are quarantined (``check_ratio=False``: report
    only)."""
    started = time.perf_counter()
    stage = EmbedStage(workspace, corpus, config, verify=verify)  # parses the encoder spec
    executor = executor_for(engine, ray_address)
    result = executor.run(stage, progress=progress)  # plans under the lock
    plans = result.parts
    stats = {s["part"]: PartStats.from_dict(s) for s in result.stats}
    if retry_failures:
        retry = [p for p in plans if stats[p.index].skipped and stats[p.index].quarantined]
        if retry:
            with output_lock(stage.output):

                def process(rows: list[dict]) -> list[dict]:
                    return embed_rows(rows, stage.encoder, config)

                for n, p in enumerate(retry, 1):
                    s = retry_part(stage, p, process)
                    if s is not None:
                        stats[p.index] = s
                    if on_retry:
                        on_retry(n, len(retry))
    ordered = [stats[p.index] for p in plans if p.index in stats]
    report = summarize(stage, plans, ordered, time.perf_counter() - started)
    report.throughput = latest(result.stats)
    if check_ratio:
        report.check_failure_ratio(config.max_failure_ratio)
    return report
