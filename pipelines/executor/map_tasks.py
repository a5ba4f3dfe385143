"""Map a plain function over task arguments on whatever runs here: Ray, threads, or inline.

For stages whose unit of work is not a table part (a dedup cluster block, an index shard):
Ray tasks when Ray is initialised — in this process or joined through ``--ray-address`` — with
a bounded window in flight, so the object store holds a few results, not the corpus; else a
thread pool; else in-process. Results come back in task order.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor


def map_tasks(
    fn: Callable, tasks: Iterable[tuple], *, workers: int = 1, max_in_flight: int = 64
) -> Iterator:
    """``fn(*task)`` for each task, in order (see the module docstring for where it runs)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        # SPREAD: independent tasks of similar size go round the nodes; Ray's default packs
        # short tasks on the driver's node (a cluster's dedup ran on one of its two nodes)
        remote = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(fn)
        pending: list = []
        for t in tasks:
            pending.append(remote.remote(*t))
            if len(pending) >= max_in_flight:
                yield ray.get(pending.pop(0))
        for ref in pending:
            yield ray.get(ref)
    elif workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            futs: list = []
            for t in tasks:
                futs.append(pool.submit(fn, *t))
                if len(futs) >= max_in_flight:
                    yield futs.pop(0).result()
            for f in futs:
                yield f.result()
    else:
        for t in tasks:
            yield fn(*t)


def ray_node() -> str | None:
    """The Ray node this code runs on (None outside Ray): recorded with a task's result, so
    a run on a cluster shows where each piece was made."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()
