"""VIMI's three instruction-tuning task tables (seed 003 §3.3) as a stage of the executor layer.

One :class:`TaskStage` per task turns each part of the prompt dataset
(``Workspace.vimi_prompts``, VIMI_PROMPTS) into one VIMI_TASKS part of
``Workspace.vimi_task(dataset, task)`` with the same part number; what a row becomes is
:mod:`.tasks_rows`. The executor (:class:`~ragvid.pipelines.executor.base.LocalExecutor` or
:class:`~ragvid.pipelines.executor.ray_tasks.RayTaskExecutor`) owns the lock, skip-if-done and
the markers: an output part's marker records the source part's checksum and the task's
signature (instruction, placeholder, entity / grounding settings), so a rerun skips finished
parts, and a source part that changed, or a changed setting, is redone — never mixed.

The subject-driven task writes one mask PNG per grounded entity to
``Workspace.vimi_segments(dataset)/<task>/part-NNNNN/`` *before* its part, clearing that folder
first, so a part killed half-way is redone whole on the next run. (The part's marker vouches
for the table; the masks are named by it.)

Rows dropped for a task are counted per reason in the part's stats (``dropped_<reason>``, with a
few examples); when more than ``VimiConfig.max_bad_share`` of a task's rows have an unreadable
video, :func:`build_tasks` raises :class:`VimiTaskError` — that is a broken corpus, not noise.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pyarrow as pa

from ragvid.pipelines.executor.base import LocalExecutor, Part, ProgressFn, StageResult
from ragvid.pipelines.export.stage import part_number, source_identity
from ragvid.pipelines.vimi.tasks_rows import (
    Dropped,
    check_task_row,
    first_frame_row,
    interleaved_row,
    retrieval_row,
)
from ragvid.schemas.config import VimiConfig
from ragvid.schemas.files import clean_temporaries, exists, fs_and_path, join, makedirs
from ragvid.schemas.io import part_name, read_table, write_table
from ragvid.schemas.markers import TableState, clear_marker, complete_parts, declare_table
from ragvid.schemas.tables import VIMI_PROMPTS, VIMI_TASKS
from ragvid.schemas.workspace import Workspace

__all__ = ["TaskStage", "VimiTaskError", "build_tasks", "check_task_row", "task_signature"]

MAX_EXAMPLES = 5  # dropped rows named per part (the rest are counted)
READ = ["video_id", "video_uri", "caption", "retrieved", "prompt"]


class VimiTaskError(RuntimeError):
    """Most rows of a task failed for a reason that is not their content (unreadable videos)."""


ROW_RULES = "v2"  # v2: retrieval rows need a readable target video (a change redoes parts)


def task_signature(task: str, config: VimiConfig) -> dict[str, Any]:
    """What a task part depends on besides its source part: outputs made otherwise are redone."""
    sig: dict[str, Any] = {
        "task": task,
        "instruction": config.templates[task],
        "placeholder": config.placeholder,
        "rules": ROW_RULES,
    }
    if task == "interleaved":
        sig.update(
            max_entities=config.max_entities,
            entity_frame=config.entity_frame,
            entity_extractor=config.entity_extractor,
            detector=config.detector,
            detector_threshold=config.detector_threshold,
            segmenter=config.segmenter,
        )
    return sig


_GROUNDING: dict[tuple, tuple[Any, Any]] = {}


def _grounding(config: VimiConfig):
    """The detector and segmenter, made once per process (models load once per worker)."""
    key = (config.detector, config.segmenter, config.detector_threshold, config.grounding_device)
    if key not in _GROUNDING:
        from ragvid.pipelines.vimi.grounding import make_detector, make_segmenter

        _GROUNDING.clear()
        det = make_detector(config.detector, config.detector_threshold, config.grounding_device)
        seg = make_segmenter(config.segmenter, config.grounding_device)
        _GROUNDING[key] = (det, seg)
    return _GROUNDING[key]


class TaskStage:
    """Prompt parts → one task's VIMI_TASKS parts (plan → parts, run(part) → stats)."""

    def __init__(self, workspace: Workspace | str, dataset: str, task: str, config: VimiConfig):
        if task not in config.templates:
            raise ValueError(f"unknown VIMI task '{task}'. Available: {list(config.templates)}")
        self.ws = Workspace.at(workspace)
        self.dataset, self.task, self.config = dataset, task, config
        self.name = f"vimi-{task}"
        self.source = self.ws.vimi_prompts(dataset)
        self.output = self.ws.vimi_task(dataset, task)
        self.removed: list[str] = []
        if task == "interleaved":  # a bad detector / segmenter name fails before any work
            from ragvid.pipelines.vimi.entities import get_lexicon
            from ragvid.pipelines.vimi.grounding import DETECTORS, SEGMENTERS, parse_spec

            parse_spec(config.detector, DETECTORS, "detector")
            parse_spec(config.segmenter, SEGMENTERS, "segmenter")
            get_lexicon(config.entity_extractor)

    def masks(self, index: int) -> str:
        return join(self.ws.vimi_segments(self.dataset), self.task, f"part-{index:05d}")

    def plan(self) -> list[Part]:
        sources = complete_parts(
            self.source, f"VIMI prompts of '{self.dataset}'", "build the prompt dataset first"
        )
        if not sources:
            raise FileNotFoundError(
                f"{self.source}: no prompt parts — build the VIMI prompt dataset '{self.dataset}'"
            )
        declare_table(self.output, self.name)
        state = TableState(self.output)
        signature = task_signature(self.task, self.config)
        parts = []
        for position, (uri, marker) in enumerate(sources):
            i = part_number(uri, position)
            main = join(self.output, part_name(i))
            identity = {**source_identity(uri, marker), **signature}
            rows = int((marker.stats if marker is not None else {}).get("rows", 0) or 0)
            done = state.done(main, expect_input=identity)
            parts.append(Part(i, main, done, rows, {"uri": uri}, {}, identity))
        self._remove_stale(state, {p.uri for p in parts})
        clean_temporaries(self.output)
        return parts

    def _remove_stale(self, state: TableState, live: set[str]) -> None:
        """Outputs (markers, masks) of source parts that are gone."""
        for uri in sorted(set(state.parts()) | set(state.marked())):
            if uri in live:
                continue
            fs, path = fs_and_path(uri)
            if fs.exists(path):
                fs.rm(path)
            clear_marker(uri)
            n = part_number(uri, -1)
            if n >= 0 and exists(self.masks(n)):
                fs, path = fs_and_path(self.masks(n))
                fs.rm(path, recursive=True)
            self.removed.append(uri)

    def run(self, part: Part) -> dict[str, Any]:
        started = time.perf_counter()
        source = read_table(part.source["uri"], VIMI_PROMPTS, columns=READ).to_pylist()
        mask_dir = self.masks(part.index)
        if self.task == "interleaved":
            fs, path = fs_and_path(mask_dir)
            if fs.exists(path):
                fs.rm(path, recursive=True)  # a rerun never leaves an earlier run's masks
            makedirs(mask_dir)
        rows, dropped, examples = [], Counter(), []
        images = 0
        for r, row in enumerate(source):
            if self.task == "retrieval":
                out = retrieval_row(row, self.config)
            elif self.task == "first_frame":
                out = first_frame_row(row, self.config)
            else:
                det, seg = _grounding(self.config)
                out = interleaved_row(row, self.config, det, seg, mask_dir, r)
            if isinstance(out, Dropped):
                dropped[out.reason] += 1
                if len(examples) < MAX_EXAMPLES:
                    examples.append({"video_id": row["video_id"], **vars(out)})
                continue
            rows.append(out)
            images += len(out["images"])
        table = pa.Table.from_pylist(rows, schema=VIMI_TASKS.schema())
        write_table(part.uri, table, VIMI_TASKS, config=task_signature(self.task, self.config))
        return {
            "task": self.task,
            "part": part.index,
            "rows_in": len(source),
            "rows": len(rows),
            "images": images,
            **{f"dropped_{k}": v for k, v in sorted(dropped.items())},
            "dropped_examples": examples,
            "seconds": round(time.perf_counter() - started, 3),
        }


def task_totals(result: StageResult) -> dict[str, int]:
    """Rows in / out, images and drops by reason, summed over a task's parts."""
    totals: Counter[str] = Counter()
    for s in result.stats:
        for k, v in s.items():
            if k in ("rows_in", "rows", "images") or k.startswith("dropped_"):
                if isinstance(v, int):
                    totals[k] += v
    return dict(totals)


def _executor(name: str, ray_address: str | None):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        from ragvid.pipelines.executor.ray_tasks import RayTaskExecutor

        return RayTaskExecutor(ray_address=ray_address)
    raise ValueError(f"unknown executor '{name}'. Available: local, ray")


def build_tasks(
    workspace: Workspace | str,
    dataset: str,
    config: VimiConfig | None = None,
    *,
    executor: str = "local",
    ray_address: str | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, StageResult]:
    """Write every task table of ``config.tasks`` for the prompt dataset ``dataset``; returns
    each task's :class:`StageResult` (per-part stats; :func:`task_totals` sums them).
    ``progress(done_parts, parts, stats)`` is called per part (``stats["task"]`` says which).
    Raises :class:`VimiTaskError` when more than ``config.max_bad_share`` of a task's rows had
    an unreadable video (the tables are written; the error names the first reasons)."""
    config = config or VimiConfig()
    runner = _executor(executor, ray_address)
    results: dict[str, StageResult] = {}
    for task in config.tasks:
        stage = TaskStage(workspace, dataset, task, config)
        results[task] = runner.run(stage, progress=progress)
    for task, result in results.items():
        t = task_totals(result)
        bad, n = t.get("dropped_unreadable_video", 0), t.get("rows_in", 0)
        if n and bad > config.max_bad_share * n:
            examples = [
                e["detail"]
                for s in result.stats
                for e in s.get("dropped_examples", [])
                if e.get("reason") == "unreadable_video"
            ][:3]
            raise VimiTaskError(
                f"VIMI task '{task}' of '{dataset}': {bad} of {n} rows have an unreadable video "
                f"(more than {config.max_bad_share:.0%}) — check the corpus' video files "
                f"(e.g. {'; '.join(examples)})"
            )
    return results
