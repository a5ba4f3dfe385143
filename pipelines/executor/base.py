"""The stage contract and the in-process executor (datatrove's step/executor split).

A stage says *what* a part is and how to compute it: ``plan() → parts`` (once per run, O(N)
at most), ``run(part) → stats`` (writes the part's files, never its marker). An executor owns
*everything else*: the output lock, skip-if-done, the marker (``_markers/part-i.json``: the
part's stats and the size + sha256 of every file it wrote, :mod:`ragvid.schemas.markers`),
progress, and the merged result. The in-process loop here, :mod:`.ray_tasks` and the
embed stage's Ray Data streaming executor all finish a part through :func:`finish_part`, so a
marker means the same thing whichever engine wrote it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ragvid.schemas.io import mark_done, output_lock, read_done
from ragvid.schemas.markers import TableState


@dataclass
class Part:
    """One unit of a stage's work: its index, main output file, the other files it writes
    (role → uri; the marker vouches for all of them) and what it is made from."""

    index: int
    uri: str
    done: bool = False
    rows: int = 0
    source: Any = None  # the stage's own description of its input (a manifest slice, …)
    files: dict[str, str] = field(default_factory=dict)
    input: Any = None  # JSON form of ``source``: a marker made from other input is not done
    marker: dict[str, Any] | None = None  # the stats of its valid marker, read while planning


@runtime_checkable
class Stage(Protocol):
    name: str
    output: str  # the folder the executor locks

    def plan(self) -> list[Part]: ...

    def run(self, part: Part) -> dict[str, Any]: ...


ProgressFn = Callable[[int, int, dict[str, Any]], None]


@dataclass
class StageResult:
    """What a run did: every part's stats (finished earlier ones marked ``skipped``)."""

    stage: str
    parts: list[Part]
    stats: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return sum(1 for s in self.stats if s.get("skipped"))


def table_state(folder: str, deep: bool = False) -> TableState:
    """The output folder's parts and markers, listed once (``deep``: re-hash every file)."""
    return TableState(folder, deep=deep)


def finish_part(part: Part, stats: dict[str, Any]) -> dict[str, Any]:
    """The one place a part becomes done: its marker, written last, holds its stats and the
    checksums of every file it wrote."""
    stats = {**stats, "finished_at": time.time()}
    mark_done(part.uri, stats, files=part.files, input=part.input)
    part.done, part.marker = True, stats
    return stats


def marker_stats(part: Part) -> dict[str, Any]:
    """A finished part's stats: kept from planning when the plan read them, else its marker."""
    stats = part.marker if part.marker is not None else read_done(part.uri)
    return {**stats, "skipped": True}


class LocalExecutor:
    """Runs the parts one after another in this process (the plain loop)."""

    name = "local"

    def run(
        self,
        stage: Stage,
        progress: ProgressFn | None = None,
        parts: list[Part] | None = None,
    ) -> StageResult:
        started = time.perf_counter()
        with output_lock(stage.output):
            parts = stage.plan() if parts is None else parts
            result = StageResult(stage.name, parts)
            for n, part in enumerate(parts, 1):
                if part.done:
                    stats = marker_stats(part)
                else:
                    stats = finish_part(part, stage.run(part))
                result.stats.append(stats)
                if progress:
                    progress(n, len(parts), stats)
        result.seconds = time.perf_counter() - started
        return result
