"""Where a stage runs: the stage contract (plan → parts, run(part) → stats) and its executors
— the in-process loop and Ray tasks here; the embed stage's Ray Data streaming pipeline in
``ragvid.pipelines.embed.ray_data``. Executors own the lock, skip-if-done, markers and stats."""

from ragvid.pipelines.executor.base import (
    LocalExecutor,
    Part,
    Stage,
    StageResult,
    finish_part,
    marker_stats,
)
from ragvid.pipelines.executor.ray_tasks import RayTaskExecutor, init_ray

__all__ = [
    "LocalExecutor",
    "Part",
    "RayTaskExecutor",
    "Stage",
    "StageResult",
    "finish_part",
    "init_ray",
    "marker_stats",
]
