"""Ray-task executor: each unfinished part is one Ray task running ``stage.run(part)``.

The driver keeps what :class:`~.base.LocalExecutor` keeps — the lock, skip-if-done, the
marker (written here, after the task returns) and progress — and bounds the tasks in flight,
so a stage with 100k parts never has 100k futures outstanding. The stage object is shipped to
the workers once (``ray.put``); it must be picklable and load heavy state lazily.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ragvid.pipelines.executor.base import (
    Part,
    ProgressFn,
    Stage,
    StageResult,
    finish_part,
    marker_stats,
)
from ragvid.schemas.io import output_lock


def quiet_ray_logs() -> None:
    """Keep Ray's own loggers (start-up notices, Ray Data's per-run INFO lines) to errors:
    on every run they read as failures to a newcomer. ``RAGVID_VERBOSE=1`` keeps them all."""
    if os.environ.get("RAGVID_VERBOSE"):
        return
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def init_ray(ray_address: str | None = None) -> None:
    """Join ``ray_address`` (``ray://head:10001``) or start local Ray, once per process."""
    import ray

    quiet_ray_logs()
    if ray.is_initialized():
        return
    if ray_address:
        try:
            ray.init(address=ray_address, log_to_driver=False, configure_logging=False)
        except ConnectionError as exc:
            raise ConnectionError(
                f"cannot reach the Ray cluster at {ray_address} ({exc}) — check the address "
                "(ray://<head>:10001) or drop --ray-address to run on local Ray"
            ) from None
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)


def _run_part(stage: Stage, part: Part) -> dict[str, Any]:
    return stage.run(part)


class RayTaskExecutor:
    """Parts as Ray tasks (``num_cpus`` / ``num_gpus`` each), at most ``max_in_flight`` at once."""

    name = "ray-tasks"

    def __init__(
        self,
        num_cpus: float = 1,
        num_gpus: float = 0,
        max_in_flight: int | None = None,
        ray_address: str | None = None,
    ) -> None:
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.max_in_flight, self.ray_address = max_in_flight, ray_address

    def run(
        self, stage: Stage, progress: ProgressFn | None = None, parts: list[Part] | None = None
    ) -> StageResult:
        import ray

        init_ray(self.ray_address)
        started = time.perf_counter()
        with output_lock(stage.output):
            parts = stage.plan() if parts is None else parts
            result = StageResult(stage.name, parts)
            stats: dict[int, dict] = {p.index: marker_stats(p) for p in parts if p.done}
            todo = [p for p in parts if not p.done]
            limit = self.max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
            remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(
                _run_part
            )
            stage_ref = ray.put(stage)
            by_ref: dict[Any, Part] = {}
            finished = len(stats)
            queue = list(reversed(todo))
            while queue or by_ref:
                while queue and len(by_ref) < limit:
                    p = queue.pop()
                    by_ref[remote.remote(stage_ref, p)] = p
                ready, _ = ray.wait(list(by_ref), num_returns=1)
                part = by_ref.pop(ready[0])
                stats[part.index] = finish_part(part, ray.get(ready[0]))
                finished += 1
                if progress:
                    progress(finished, len(parts), stats[part.index])
            result.stats = [stats[p.index] for p in parts]
        result.seconds = time.perf_counter() - started
        return result
