"""`ragvid export`: a corpus's embeddings in a peer tool's layout, one output part per input part.

:class:`ExportStage` follows the stage contract (:mod:`ragvid.pipelines.executor`): ``plan``
lists the embedding parts (a complete table only) and which outputs are already done; ``run``
reads one part's ``video_id``, ``caption``, ``video_emb`` and ``text_emb`` columns — never
``frame_emb``, the bulk of a part — and writes that part's files atomically through the format
(:mod:`.clip_retrieval`, :mod:`.nemo`). The executor holds the output folder's lock and writes
each part's marker (size + sha256 of every file, and the source part's identity), so a rerun
skips finished parts, a re-embedded source part is exported again, and outputs of parts that no
longer exist are removed. Memory is one part's columns at a time. Empty source parts (every row
quarantined) write nothing: clip-retrieval's readers skip 0-row files unevenly.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from ragvid.pipelines.corpus.parts import ManifestSlice, SliceReader
from ragvid.pipelines.executor.base import LocalExecutor, Part, ProgressFn
from ragvid.pipelines.index.parts import part_encoder, part_info, read_columns
from ragvid.pipelines.index.vectors import table_vectors
from ragvid.schemas.config import ExportConfig
from ragvid.schemas.files import (
    clean_temporaries,
    exists,
    fs_and_path,
    join,
    relative_to,
    write_json_atomic,
)
from ragvid.schemas.markers import TableState, clear_marker, complete_parts

SUMMARY_FILE = "ragvid_export.json"  # what was exported, from what (beside the format's files)
READ = ["video_id", "caption", "video_emb", "text_emb"]
_PART_NUMBER = re.compile(r"part-(\d+)\.parquet")


class ExportFormat(Protocol):
    """One peer layout: where part ``i``'s files go and how one part is written."""

    name: str
    signature: dict[str, Any]  # the format's options: outputs made with others are redone

    def outputs(self, out: str, index: int) -> tuple[str, dict[str, str]]:
        """Part ``index``'s main file (its marker names it) and its other files (role → uri)."""
        ...

    def prepare(self, out: str) -> None:
        """Create folders / declare the table before the first part."""
        ...

    def write(self, part: Part, rows: ExportRows) -> None:
        """Write the part's files atomically."""
        ...

    def existing(self, out: str) -> dict[int, list[str]]:
        """The part files present in ``out``, by part index (to remove stale ones)."""
        ...


@dataclass
class ExportRows:
    """One source part's rows as the formats need them (float32 vectors, manifest uris)."""

    video_id: pa.Array
    caption: pa.Array
    video: np.ndarray  # float32 (n, dim)
    text: np.ndarray  # float32 (n, dim)
    uri: pa.Array  # the manifest uri of each row (null where unknown)
    encoder: str


@dataclass
class ExportReport:
    """What a run wrote: every part's stats, and the summary written beside the files."""

    out: str
    format: str
    encoder: str
    dim: int
    rows: int
    parts: int
    skipped: int
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def source_identity(uri: str, marker) -> dict[str, Any]:
    """What an output part is made from: the source part's name and, for a managed table, the
    sha256 its marker vouches for (else size + mtime) — a re-embedded part is exported again."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    if marker is not None:
        rec = marker.record("main")
        return {"source": name, "size": rec.size, "sha256": rec.sha256}
    fs, path = fs_and_path(uri)
    info = fs.info(path)
    return {"source": name, "size": info.get("size"), "mtime": info.get("mtime")}


def part_number(uri: str, position: int) -> int:
    """The number in a source part's name (``part-00007.parquet`` → 7): an output keeps its
    source's number when an earlier part goes; else the part's position."""
    m = _PART_NUMBER.fullmatch(uri.rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else position


class ExportStage:
    """Embeddings folder → ``out`` in ``fmt``'s layout (plan → parts, run(part) → stats)."""

    name = "export"

    def __init__(
        self,
        embeddings: str,
        out: str,
        fmt: ExportFormat,
        manifest: str | None = None,
    ) -> None:
        self.embeddings = str(embeddings).rstrip("/")
        self.output = str(out).rstrip("/")
        self.fmt = fmt
        self.manifest = manifest
        self.encoder = ""
        self.dim = -1
        self.removed: list[str] = []
        self._slices = SliceReader(["video_id", "uri"])

    def plan(self) -> list[Part]:
        sources = complete_parts(self.embeddings, f"embeddings {self.embeddings}")
        if not sources:
            raise FileNotFoundError(
                f"{self.embeddings}: no part-*.parquet files — run `ragvid embed`"
            )
        self.fmt.prepare(self.output)
        parts, encoders, dims = [], set(), set()
        states: dict[str, TableState] = {}
        for position, (uri, marker) in enumerate(sources):
            i = part_number(uri, position)
            info = part_info(uri)
            if info.rows == 0:
                continue
            encoders.add(part_encoder(info))
            dims.add(info.dim)
            main, files = self.fmt.outputs(self.output, i)
            folder = main.rsplit("/", 1)[0]
            state = states.setdefault(folder, TableState(folder))
            identity = {**source_identity(uri, marker), **self.fmt.signature}
            src = {"uri": uri, "slice": marker.input if marker is not None else None}
            done = state.done(main, expect_input=identity)
            parts.append(Part(i, main, done, info.rows, src, files, identity))
        if len(encoders) > 1 or len(dims) > 1:
            raise ValueError(
                f"{self.embeddings}: parts from several encoders {sorted(encoders)} / dimensions "
                f"{sorted(dims)} — export one encoder's embeddings"
            )
        if not parts:
            raise ValueError(f"{self.embeddings}: every part is empty — nothing to export")
        self.encoder, self.dim = encoders.pop(), dims.pop()
        self.removed = self._remove_stale({p.index for p in parts})
        for folder in states:
            clean_temporaries(folder)
        return parts

    def _remove_stale(self, live: set[int]) -> list[str]:
        """Outputs (and markers) of parts no longer in the source, or now empty."""
        gone = []
        for i, uris in sorted(self.fmt.existing(self.output).items()):
            if i in live:
                continue
            for u in uris:
                fs, path = fs_and_path(u)
                fs.rm(path)
                gone.append(u)
            clear_marker(self.fmt.outputs(self.output, i)[0])
        return gone

    def _uris(self, part: Part, ids: pa.Array) -> pa.Array:
        """Each row's manifest uri, read from the manifest slice the source part was made from
        (its marker's input) — a few row groups, never the whole manifest."""
        sl = (part.source or {}).get("slice")
        if self.manifest is None or not isinstance(sl, dict) or "manifest" not in sl:
            return pa.nulls(len(ids), pa.string())
        file = join(self.manifest, sl["manifest"])
        if not exists(file):
            return pa.nulls(len(ids), pa.string())
        t = self._slices.table(ManifestSlice(file, int(sl["start"]), int(sl["stop"])))
        lookup = dict(
            zip(t.column("video_id").to_pylist(), t.column("uri").to_pylist(), strict=True)
        )
        return pa.array([lookup.get(v) for v in ids.to_pylist()], pa.string())

    def run(self, part: Part) -> dict[str, Any]:
        started = time.perf_counter()
        uri = part.source["uri"]
        t = read_columns(uri, READ)
        if len(t) != part.rows:
            raise RuntimeError(f"{uri}: read {len(t)} rows, its footer says {part.rows}")
        ids = t.column("video_id").combine_chunks().cast(pa.string())
        rows = ExportRows(
            video_id=ids,
            caption=t.column("caption").combine_chunks().cast(pa.string()),
            video=np.ascontiguousarray(table_vectors(t, "video_emb"), np.float32),
            text=np.ascontiguousarray(table_vectors(t, "text_emb"), np.float32),
            uri=self._uris(part, ids),
            encoder=self.encoder,
        )
        self.fmt.write(part, rows)
        return {
            "part": part.index,
            "rows": len(t),
            "seconds": round(time.perf_counter() - started, 3),
        }


def read_summary(out: str) -> dict[str, Any]:
    """The previous run's ``ragvid_export.json`` ({} if none or unreadable)."""
    from ragvid.schemas.files import UnreadableJsonError, read_json

    uri = join(out, SUMMARY_FILE)
    try:
        return read_json(uri) if exists(uri) else {}
    except (UnreadableJsonError, OSError):
        return {}


def run_export(
    stage: ExportStage,
    config: ExportConfig,
    progress: ProgressFn | None = None,
    executor: Any = None,
    finish: Callable[[ExportReport, dict[str, Any]], dict[str, Any]] | None = None,
) -> ExportReport:
    """Run the stage (in-process by default; any executor of the stage contract), then
    ``finish(report, previous summary)`` (what it returns lands in ``report.extra``), then write
    the summary ``ragvid_export.json`` beside the files (atomically, last)."""
    previous = read_summary(stage.output)
    result = (executor or LocalExecutor()).run(stage, progress=progress)
    rows = sum(int(s.get("rows", 0)) for s in result.stats)
    report = ExportReport(
        out=stage.output,
        format=stage.fmt.name,
        encoder=stage.encoder,
        dim=stage.dim,
        rows=rows,
        parts=len(result.parts),
        skipped=result.skipped,
        removed=stage.removed,
        seconds=round(result.seconds, 3),
    )
    if finish is not None:
        report.extra = finish(report, previous)
    write_json_atomic(
        join(stage.output, SUMMARY_FILE),
        {
            "format": report.format,
            "config": config.model_dump(),
            "encoder": report.encoder,
            "dim": report.dim,
            "rows": report.rows,
            "parts": [
                {"index": p.index, "file": relative_to(p.uri, stage.output), **(p.input or {})}
                for p in result.parts
            ],
            "source": stage.embeddings,
            **report.extra,
            "written_at": time.time(),
        },
    )
    return report
