"""The image-text memory ingest on Apache Beam: sources → validated, de-duplicated IMAGE_MEMORY.

A VIMI memory (seed 003 §3.1) is a named, versioned table of the workspace:
``Workspace.memory_table(name)`` (IMAGE_MEMORY parts), ``Workspace.memory_rejects(name)``
(REJECTS) and ``<memory>/memory.json`` (version, input fingerprint, counts). Beam only wires
the plain functions of :mod:`.memory_sources`, exactly as the video manifest's ETL does
(:mod:`ragvid.pipelines.corpus.beam`, whose runner choice, staging swap and error handling
are reused): units (shards, table files, manifest parts) → records → each row validated
against IMAGE_MEMORY's types and nullability → rows grouped by ``item_id`` (the first by
(source position, file, row) wins; the others are rejected "duplicate item_id") → rows grouped
by ``crc32(item_id) % VimiConfig.memory_shards`` into that many parts, each sorted by
``item_id`` — one part per BM25 engine shard.

Every input row ends in the table or the rejects (``written + rejected == read`` is checked:
a mismatch is a bug and fails the run). Outputs are written to staging folders and swapped into
place only when the run succeeded, then ``memory.json`` is replaced (atomically): a failed or
killed run leaves the previous memory whole (its leftover staging folders are removed by the
next run, under the memory's lock).

Reruns: the inputs' fingerprint — every input file's size and mtime (stat only, like the tar
index cache), the sources, kinds and settings — is stored in ``memory.json``; a rerun whose
fingerprint matches an intact memory does nothing (``skipped: True``, the stored counts). Any
change rebuilds the whole memory and bumps ``version`` (1, 2, …; recorded in memory.json and
in each part's metadata), so the engine built on a memory can tell it is stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from ragvid.pipelines.corpus.beam import (
    _import_beam,
    _pipeline,
    _rm,
    _step_error,
    _swap,
    _write_count,
    _write_rejects,
    _writing,
)
from ragvid.pipelines.corpus.validate import rejects_table, shard_of
from ragvid.pipelines.vimi.memory_sources import SourceUnit, plan_sources, read_unit
from ragvid.schemas.config import ManifestConfig, VimiConfig
from ragvid.schemas.faults import fault_point
from ragvid.schemas.guards import check_failure_ratio
from ragvid.schemas.io import (
    exists,
    fs_and_path,
    join,
    list_parts,
    output_lock,
    part_name,
    read_json,
    read_table,
    write_json_atomic,
    write_table,
)
from ragvid.schemas.tables import IMAGE_MEMORY, REJECTS
from ragvid.schemas.workspace import Workspace

_STAGING = ".staging-"


def memory_json(workspace: Any, name: str) -> str:
    """``<memory>/memory.json``: the memory's version, input fingerprint and counts."""
    return Workspace.at(workspace).memory_manifest(name)


def memory_info(workspace: Any, name: str) -> dict[str, Any]:
    """The memory's ``memory.json`` (FileNotFoundError naming the ingest to run)."""
    uri = memory_json(workspace, name)
    if not exists(uri):
        raise FileNotFoundError(
            f"memory {name!r} has not been ingested ({uri} missing) — run "
            f"`ragvid vimi memory ingest` (ingest_memory) first"
        )
    return read_json(uri)


# --- validation against IMAGE_MEMORY --------------------------------------------------------


def _kind(t: pa.DataType) -> str:
    if pa.types.is_string(t):
        return "str"
    if pa.types.is_floating(t):
        return "float"
    return "int32" if pa.types.is_int32(t) else "int"


_FIELDS = [(f.name, _kind(f.type), f.nullable) for f in IMAGE_MEMORY.schema()]


def check_row(row: dict[str, Any]) -> str | None:
    """Why ``row`` does not fit IMAGE_MEMORY (column, type, null, range), or None."""
    for name, kind, nullable in _FIELDS:
        v = row.get(name)
        if v is None:
            if not nullable:
                return f"column {name!r} is null (required)"
            continue
        if kind == "str":
            if not isinstance(v, str):
                return f"column {name!r} is {type(v).__name__}, expected text"
            if not nullable and not v.strip():
                return f"column {name!r} is empty"
        elif kind == "float":
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                return f"column {name!r} = {v!r} is not a finite number"
        elif isinstance(v, bool) or not isinstance(v, int):
            return f"column {name!r} = {v!r} is not an integer"
        elif kind == "int32" and not 0 <= v < 2**31:
            return f"column {name!r} = {v} is out of range"
    for name in ("frame_ts", "tar_offset", "tar_size"):
        if row.get(name) is not None and row[name] < 0:
            return f"column {name!r} = {row[name]} is negative"
    return None


# --- Beam steps (module level so they pickle by reference) -----------------------------------


def _read(unit: SourceUnit):
    for tag, rec in read_unit(unit):
        if tag == "row":
            rec["_order"] = (unit.index, rec["source_file"], rec["source_row"])
        yield tag, rec


def _route(tagged: tuple[str, dict[str, Any]]):
    import apache_beam as beam

    tag, rec = tagged
    if tag == "reject":
        yield beam.pvalue.TaggedOutput("rejects", rec)
        return
    problem = check_row(rec)
    if problem is None:
        yield rec
        return
    detail = f"{rec.get('source_file')} row {rec.get('source_row')}: {problem}"
    raw = json.dumps({k: v for k, v in rec.items() if k != "_order"}, default=str)[:2000]
    yield beam.pvalue.TaggedOutput(
        "rejects",
        {
            "source_file": str(rec.get("source_file")),
            "source_row": int(rec.get("source_row") or 0),
            "field": problem.split("'")[1] if "'" in problem else None,
            "reason": "invalid row",
            "detail": detail,
            "video_id": rec.get("item_id") if isinstance(rec.get("item_id"), str) else None,
            "raw": raw,
        },
    )


def _dedup(kv: tuple[str, Any]):
    import apache_beam as beam

    item_id, rows = kv
    ordered = sorted(rows, key=lambda r: r["_order"])
    first = ordered[0]
    yield first
    for r in ordered[1:]:
        yield beam.pvalue.TaggedOutput(
            "rejects",
            {
                "source_file": r["source_file"],
                "source_row": r["source_row"],
                "field": "item_id",
                "reason": "duplicate item_id",
                "detail": f"item_id {item_id!r} first seen at {first['source_file']} row "
                f"{first['source_row']} (the first wins)",
                "video_id": item_id,
                "raw": None,
            },
        )


def memory_table(rows: list[dict[str, Any]]) -> pa.Table:
    """IMAGE_MEMORY rows (sorted by item_id) as an Arrow table."""
    names = IMAGE_MEMORY.schema().names
    rows = sorted(rows, key=lambda r: r["item_id"])
    return pa.Table.from_pylist(
        [{k: r.get(k) for k in names} for r in rows], schema=IMAGE_MEMORY.schema()
    )


def _write_part(kv: tuple[int, Any], folder: str, meta: dict) -> int:
    part, rows = kv
    rows = list(rows)
    uri = join(folder, part_name(part))
    with _writing(uri):
        write_table(uri, memory_table(rows), IMAGE_MEMORY, config=meta)
    stats = join(folder, f"_stats-{part:05d}.json")
    with _writing(stats):
        write_json_atomic(stats, {"part": part, "rows": len(rows)})
    return len(rows)


# --- fingerprint and bookkeeping ------------------------------------------------------------


def _stat(uri: str) -> list[Any]:
    fs, path = fs_and_path(uri)
    if fs.isdir(path):
        return [[p.rsplit("/", 1)[-1], _stat(join(uri, p.rsplit("/", 1)[-1]))]
                for p in sorted(fs.ls(path, detail=False))]  # fmt: skip
    info = fs.info(path)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("ETag")
    return [info.get("size"), str(mtime)]


def fingerprint(units: Sequence[SourceUnit], settings: dict[str, Any]) -> str:
    """sha256 over every input file's (size, mtime), the units and the settings."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for u in units:
        files = sorted({u.uri, *u.files.values()} if u.files else {u.uri})
        stats = [[f, _stat(f)] for f in files if exists(f)]
        h.update(json.dumps([u.kind, u.source, u.index, stats], default=str).encode())
    return h.hexdigest()


def _intact(ws: Workspace, name: str, info: dict[str, Any]) -> bool:
    """The stored memory is whole: its table has every part and its rejects exist."""
    try:
        table, rejects = ws.memory_table(name), ws.memory_rejects(name)
        return len(list_parts(table)) == int(info["parts"]) and bool(list_parts(rejects))
    except (FileNotFoundError, KeyError, ValueError):
        return False


def _previous(info_uri: str) -> dict[str, Any]:
    """The last build's memory.json; {} when there is none or it is unreadable (a rebuild)."""
    from ragvid.schemas.files import UnreadableJsonError

    try:
        return read_json(info_uri) if exists(info_uri) else {}
    except UnreadableJsonError:
        return {}


def _clean_staging(folder: str) -> None:
    """Remove staging folders a killed run left (called with the memory's lock held)."""
    fs, path = fs_and_path(folder)
    for p in fs.ls(path, detail=False):
        if _STAGING in p.rstrip("/").rsplit("/", 1)[-1]:
            fs.rm(p, recursive=True)


# --- driver --------------------------------------------------------------------------------


def ingest_memory(
    workspace: Any,
    name: str,
    sources: Sequence[str] = (),
    *,
    kind: str = "auto",
    corpus: str | Sequence[str] | None = None,
    config: VimiConfig | None = None,
    check_files: bool = True,
    runner: str = "FnApiRunner",
    pipeline_args: list[str] | None = None,
    max_failure_ratio: float | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Ingest ``sources`` (img2dataset folders / .tar shards, Parquet/CSV/JSONL tables) and the
    keyframes of ``corpus`` (a workspace corpus name, or several) into the memory ``name``.

    ``kind``: ``auto`` (from each path), ``img2dataset``, ``table`` or ``keyframes`` (then
    only ``corpus``). ``config``: ``memory_shards`` (table parts) and ``keyframes``.
    ``check_files``: stat local images / videos (and read their first bytes) at ingest.
    ``force``: rebuild even when the inputs are unchanged. ``max_failure_ratio``: after
    writing, raise FailureRatioError when more than this share of rows was rejected.

    Returns the counts — ``read`` (input rows), ``written``, ``rejected`` (``written +
    rejected == read``), ``rejects_by_reason``, ``parts`` (rows per part) — and ``name``,
    ``version``, ``skipped`` (unchanged inputs: nothing done), ``table``, ``rejects``,
    ``fingerprint``, ``runner``, ``seconds``. Raises FileNotFoundError / ValueError for a
    missing or unknown source (naming it and what is accepted) and for a run with no rows.
    """
    started = time.perf_counter()
    ws = Workspace.at(workspace)
    config = config or VimiConfig()
    corpora = [corpus] if isinstance(corpus, str) else list(corpus or [])
    if isinstance(sources, str):
        sources = [sources]
    units = plan_sources(
        sources,
        kind,
        corpora=corpora,
        workspace=ws,
        keyframes=config.keyframes,
        check_files=check_files,
    )
    settings = {
        "sources": [str(s) for s in sources],
        "corpora": corpora,
        "kind": kind,
        "parts": config.memory_shards,
        "keyframes": list(config.keyframes),
        "check_files": check_files,
        "schema": IMAGE_MEMORY.version,
    }
    fp = fingerprint(units, settings)
    folder = ws.memory(name)
    table_dir, rejects_dir = ws.memory_table(name), ws.memory_rejects(name)
    with output_lock(folder):
        _clean_staging(folder)
        info_uri = memory_json(ws, name)
        previous = _previous(info_uri)
        if not force and previous.get("fingerprint") == fp and _intact(ws, name, previous):
            report = {**previous["counts"], "skipped": True}
            report["seconds"] = round(time.perf_counter() - started, 3)
            return report
        version = int(previous.get("version", 0)) + 1
        meta = {"memory": name, "version": version, "fingerprint": fp}
        report = _run(units, config, runner, pipeline_args, table_dir, rejects_dir, meta)
        report.update(
            name=name,
            version=version,
            skipped=False,
            table=table_dir,
            rejects=rejects_dir,
            fingerprint=fp,
            seconds=round(time.perf_counter() - started, 3),
        )
        fault_point("memory-ingest:before-info")  # swapped, not yet recorded: a rerun rebuilds
        write_json_atomic(
            info_uri,
            {
                **meta,
                "name": name,
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "settings": settings,
                "parts": config.memory_shards,
                "counts": report,
            },
        )
    logging.getLogger(__name__).info(
        "memory %s v%d: %d read, %d written, %d rejected",
        name,
        version,
        report["read"],
        report["written"],
        report["rejected"],
    )
    if max_failure_ratio is not None:
        check_failure_ratio(
            f"memory ingest of {name!r}",
            report["rejected"],
            report["read"],
            report["rejects_by_reason"],
            max_failure_ratio,
            rejects_dir,
        )
    return report


def _run(
    units: list[SourceUnit],
    config: VimiConfig,
    runner: str,
    pipeline_args: list[str] | None,
    table_dir: str,
    rejects_dir: str,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Run the Beam pipeline into staging folders, check the counts, swap them into place."""
    beam = _import_beam()
    tag = uuid.uuid4().hex[:8]
    stage_t, stage_r = f"{table_dir}{_STAGING}{tag}", f"{rejects_dir}{_STAGING}{tag}"
    parts = config.memory_shards
    try:
        pipeline, used = _pipeline(ManifestConfig(runner=runner), pipeline_args)
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
        with pipeline as p:
            records = p | "Units" >> beam.Create(units) | "Read" >> beam.FlatMap(_read)
            _ = (
                records
                | "CountInput" >> beam.combiners.Count.Globally()
                | "WriteCount" >> beam.Map(_write_count, stage_r)
            )
            checked = records | "Validate" >> beam.FlatMap(_route).with_outputs(
                "rejects", main="rows"
            )
            deduped = (
                checked.rows
                | "KeyById" >> beam.Map(lambda r: (r["item_id"], r))
                | "GroupById" >> beam.GroupByKey()
                | "Dedup" >> beam.FlatMap(_dedup).with_outputs("rejects", main="rows")
            )
            _ = (
                deduped.rows
                | "KeyByPart" >> beam.Map(lambda r, n: (shard_of(r["item_id"], n), r), parts)
                | "GroupByPart" >> beam.GroupByKey()
                | "WriteParts" >> beam.Map(_write_part, stage_t, meta)
            )
            _ = (
                (checked.rejects, deduped.rejects)
                | "AllRejects" >> beam.Flatten()
                | "KeyRejects" >> beam.Map(lambda r: (0, r))
                | "GroupRejects" >> beam.GroupByKey()
                | "WriteRejects" >> beam.Map(_write_rejects, stage_r, meta)
            )
        report = _finish(units, parts, stage_t, stage_r, meta)
        report["runner"] = used
    except BaseException as exc:
        _rm(stage_t)
        _rm(stage_r)
        original = _step_error(exc)
        if original is not exc:
            raise original from None
        raise
    _swap(stage_r, rejects_dir)
    _swap(stage_t, table_dir)
    return report


def _finish(
    units: list[SourceUnit], parts: int, stage_t: str, stage_r: str, meta: dict
) -> dict[str, Any]:
    """Fill in empty parts, check written + rejected == read, build the counts."""
    count_uri = join(stage_r, "_input_rows.json")
    read = int(read_json(count_uri)["input_rows"]) if exists(count_uri) else 0
    if read == 0:
        raise ValueError(
            f"the memory sources hold no rows ({sorted({u.uri for u in units})[:5]}…) — "
            "nothing to ingest"
        )
    rows = []
    for i in range(parts):
        stats = join(stage_t, f"_stats-{i:05d}.json")
        if exists(stats):
            rows.append(int(read_json(stats)["rows"]))
            _rm(stats)
        else:
            uri = join(stage_t, part_name(i))
            with _writing(uri):
                write_table(uri, memory_table([]), IMAGE_MEMORY, config=meta)
            rows.append(0)
    rejects_part = join(stage_r, part_name(0))
    if exists(rejects_part):
        reasons = Counter(
            read_table(rejects_part, REJECTS, columns=["reason"])["reason"].to_pylist()
        )
    else:
        with _writing(rejects_part):
            write_table(rejects_part, rejects_table([]), REJECTS, config=meta)
        reasons = Counter()
    _rm(count_uri)
    written, rejected = sum(rows), sum(reasons.values())
    if written + rejected != read:
        raise RuntimeError(
            f"memory ingest: {written} written + {rejected} rejected != {read} input rows — "
            "rows were lost; please report this bug"
        )
    return {
        "read": read,
        "written": written,
        "rejected": rejected,
        "rejects_by_reason": dict(sorted(reasons.items())),
        "parts": rows,
    }
