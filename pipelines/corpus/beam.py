"""The manifest ETL on Apache Beam: read → validate → dedup by id → sharded Parquet.

Beam only wires the plain functions of :mod:`ragvid.pipelines.corpus.manifest`: a file per element
is read into raw records, each record is validated (bad ones go to a rejects output), valid
rows are grouped by ``video_id`` (``GroupByKey``; the first by (file, row) wins, the others
are rejected as duplicates), then grouped by a stable hash of the id into ``num_shards``
parts, each written sorted by id through ``write_table(..., MANIFEST)``.

Runs on the in-process ``FnApiRunner`` by default (offline-safe: ``DirectRunner`` may pick
Prism, which downloads a binary). ``pipeline_args`` such as ``--runner=DataflowRunner
--project=… --temp_location=gs://…`` pass straight to Beam; the workspace must then be a URI
the workers can reach.

Outputs are written to staging folders and swapped into place when the pipeline succeeded
and the count invariant (ingested + rejected = input rows) holds, so a rerun replaces the
manifest as a whole and a failed run leaves the previous one untouched — a disk that fills up
mid-run costs only the staging folders (removed), and the rerun starts clean.

Bad input is rejected row by row (see :mod:`.readers` for bad bytes and special files), but a
run that rejects more than ``ManifestConfig.max_failure_ratio`` of its rows is suspect (a wrong
column, the wrong encoding everywhere): after the manifest and rejects are in place, ingest
raises :class:`~ragvid.schemas.guards.FailureRatioError` naming the top reasons.

A step's ``OSError`` (disk full, permission denied) reaches the caller as that ``OSError``,
naming the file it was writing — not as Beam's ``RuntimeError`` wrapper.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ragvid.pipelines.corpus.manifest import (
    InputFile,
    InputPlan,
    dedup_group,
    manifest_table,
    plan_inputs,
    read_records,
    rejects_table,
    shard_of,
    validate_record,
)
from ragvid.schemas.config import ManifestConfig
from ragvid.schemas.guards import check_failure_ratio
from ragvid.schemas.io import (
    exists,
    fs_and_path,
    join,
    list_parts,
    makedirs,
    output_lock,
    part_name,
    read_json,
    write_json_atomic,
    write_table,
)
from ragvid.schemas.tables import MANIFEST, REJECTS

REPORT_NAME = "_report.json"


@dataclass
class IngestReport:
    """Counts of one ingest (also stored as ``<manifest_dir>/_report.json``)."""

    input_path: str
    layout: str
    source: str
    manifest_dir: str
    rejects_dir: str
    input_rows: int
    ingested: int
    rejected: int
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    shards: list[int] = field(default_factory=list)  # rows per part
    extra_columns: list[str] = field(default_factory=list)
    runner: str = ""
    seconds: float = 0.0


# --- Beam steps (module level so they pickle by reference) -------------------------------


def _read(f: InputFile, plan: InputPlan):
    yield from read_records(f, plan)


def _validate(rec: dict, plan: InputPlan, config: ManifestConfig, source: str):
    import apache_beam as beam

    row, reject = validate_record(rec, plan, config, source)
    if row is not None:
        yield row
    else:
        yield beam.pvalue.TaggedOutput("rejects", reject)


def _dedup(kv: tuple[str, Any]):
    import apache_beam as beam

    first, rejects = dedup_group(kv[1])
    yield first
    for r in rejects:
        yield beam.pvalue.TaggedOutput("rejects", r)


@contextlib.contextmanager
def _writing(uri: str) -> Iterator[None]:
    """Name ``uri`` in an OSError that lacks a file name (a failed write or close reports
    only ``[Errno 28] No space left on device``), so the user learns where the disk is full."""
    try:
        yield
    except OSError as exc:
        if exc.errno is not None and exc.filename is None:
            exc.filename = uri
        raise


def _write_shard(kv: tuple[int, Any], folder: str, extras: tuple[str, ...], config: dict) -> int:
    shard, rows = kv
    rows = list(rows)
    part = join(folder, part_name(shard))
    with _writing(part):
        write_table(part, manifest_table(rows, extras), MANIFEST, config=config)
    stats = join(folder, f"_stats-{shard:05d}.json")
    with _writing(stats):
        write_json_atomic(stats, {"part": shard, "rows": len(rows)})
    return len(rows)


def _write_rejects(kv: tuple[int, Any], folder: str, config: dict) -> int:
    rows = list(kv[1])
    part = join(folder, part_name(0))
    with _writing(part):
        write_table(part, rejects_table(rows), REJECTS, config=config)
    return len(rows)


def _write_count(n: int, folder: str) -> None:
    uri = join(folder, "_input_rows.json")
    with _writing(uri):
        write_json_atomic(uri, {"input_rows": int(n)})


def _step_error(exc: BaseException) -> BaseException:
    """The OSError a Beam step raised, if Beam re-raised it as ``RuntimeError("OSError: …
    [while running 'Step']")`` (it does for any exception it cannot rebuild with the step's
    name appended); otherwise ``exc`` itself."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, OSError):
            break
        seen = seen.__cause__ or seen.__context__
    return seen if isinstance(seen, OSError) and isinstance(exc, RuntimeError) else exc


def check_rejects(report: IngestReport, config: ManifestConfig) -> None:
    """Raise :class:`~ragvid.schemas.guards.FailureRatioError` when more than
    ``config.max_failure_ratio`` of the input rows were rejected (top reasons named)."""
    check_failure_ratio(
        f"ingest of {report.input_path}",
        report.rejected,
        report.input_rows,
        report.rejects_by_reason,
        config.max_failure_ratio,
        report.rejects_dir,
        "max_failure_ratio (ragvid corpus ingest --max-failure-ratio)",
    )


# --- driver --------------------------------------------------------------------------------


class _NoRaisedTracebacks(logging.Filter):
    """Beam logs a failing step's exception, traceback and all, then re-raises it: the caller
    gets the exception (the CLI shows it as one line), so the log record is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


def _import_beam():
    """Import Beam without its 'apitools not found' warning (no GCP extras installed)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import apache_beam
    finally:
        root.setLevel(level)
    steps = logging.getLogger("apache_beam.runners.common")
    if not any(isinstance(f, _NoRaisedTracebacks) for f in steps.filters):
        steps.addFilter(_NoRaisedTracebacks())
    return apache_beam


def _pipeline(config: ManifestConfig, pipeline_args: list[str] | None):
    beam = _import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(pipeline_args or [])
    runner_name = options.view_as(StandardOptions).runner or config.runner
    if runner_name in ("FnApiRunner", "InProcess"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options), "FnApiRunner"
    return beam.Pipeline(runner=runner_name, options=options), runner_name


def _swap(staging: str, final: str) -> None:
    """Replace ``final`` by ``staging`` (rename on local disks; move elsewhere)."""
    fs, final_path = fs_and_path(final)
    _, staging_path = fs_and_path(staging)
    old = f"{final_path}.old-{uuid.uuid4().hex[:8]}"
    if fs.exists(final_path):
        fs.mv(final_path, old, recursive=True)
    fs.mv(staging_path, final_path, recursive=True)
    if fs.exists(old):
        fs.rm(old, recursive=True)


def _rm(uri: str) -> None:
    fs, path = fs_and_path(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def ingest(
    input_path: str,
    manifest_dir: str,
    rejects_dir: str,
    config: ManifestConfig | None = None,
    *,
    source: str | None = None,
    pipeline_args: list[str] | None = None,
    videos_dir: str | None = None,
    check_ratio: bool = True,
) -> IngestReport:
    """Turn a corpus (WebVid CSVs, video2dataset shards, folder + captions) into a manifest.

    Writes ``manifest_dir/part-0000N.parquet`` (``num_shards`` parts, rows sorted by id,
    shard = crc32(id) % num_shards), ``rejects_dir/part-00000.parquet`` and
    ``manifest_dir/_report.json``. video2dataset tar shards are read in place: a video's
    ``uri`` is ``tar://<member>::<shard>`` and no video bytes are written (``videos_dir`` is
    accepted for compatibility and unused). Raises FileNotFoundError for a missing
    input, ValueError for an unknown layout or an empty corpus, OSError (naming the file) when
    a write fails, RuntimeError if the counts do not add up (a bug: no row may vanish), and —
    after writing everything — FailureRatioError when more than ``max_failure_ratio`` of the
    rows were rejected (``check_ratio=False``: report only; see :func:`check_rejects`).
    """
    config = config or ManifestConfig()
    started = time.perf_counter()
    input_path = str(input_path)
    if not exists(input_path):
        raise FileNotFoundError(f"input {input_path} does not exist: pass a corpus file/folder")
    plan = plan_inputs(input_path, config, videos_dir)
    source = source or plan.input_path.rstrip("/").rsplit("/", 1)[-1]
    meta = {"manifest": config.model_dump(), "input": input_path, "source": source}
    return run_ingest(
        plan,
        list(plan.files),
        (_read, (plan,)),
        (_validate, (plan, config, source)),
        config,
        source,
        meta,
        manifest_dir,
        rejects_dir,
        pipeline_args=pipeline_args,
        started=started,
        check_ratio=check_ratio,
    )


def run_ingest(
    plan: InputPlan,
    units: list,
    read: tuple[Callable, tuple],
    validate: tuple[Callable, tuple],
    config: ManifestConfig,
    source: str,
    meta: dict,
    manifest_dir: str,
    rejects_dir: str,
    *,
    pipeline_args: list[str] | None = None,
    started: float | None = None,
    check_ratio: bool = True,
) -> IngestReport:
    """The Beam graph every manifest ingest runs (corpora here, TVP datasets in
    :mod:`ragvid.pipelines.tvp.ingest`): ``units`` → ``read`` (a FlatMap function and its extra
    arguments: raw records) → ``validate`` (rows, or rejects tagged ``"rejects"``) → dedup by
    ``video_id`` → ``num_shards`` parts, into staging folders swapped in under the corpus lock;
    the input count checked against rows + rejects, the report written, the reject ratio
    checked. ``plan`` supplies the extra columns and the bookkeeping :func:`_finish` reads."""
    beam = _import_beam()

    started = time.perf_counter() if started is None else started
    manifest_dir, rejects_dir = str(manifest_dir).rstrip("/"), str(rejects_dir).rstrip("/")
    parent = manifest_dir.rsplit("/", 1)[0] if "/" in manifest_dir else "."
    read_fn, read_args = read
    validate_fn, validate_args = validate
    tag = uuid.uuid4().hex[:8]
    stage_m, stage_r = f"{manifest_dir}.staging-{tag}", f"{rejects_dir}.staging-{tag}"
    with output_lock(parent):  # <corpus>/.lock: one ingest per corpus at a time
        makedirs(stage_m)
        makedirs(stage_r)
        try:
            pipeline, runner = _pipeline(config, pipeline_args)
            logging.getLogger("apache_beam").setLevel(logging.WARNING)
            with pipeline as p:
                raw = (
                    p | "Inputs" >> beam.Create(units) | "Read" >> beam.FlatMap(read_fn, *read_args)
                )
                _ = (
                    raw
                    | "CountInput" >> beam.combiners.Count.Globally()
                    | "WriteCount" >> beam.Map(_write_count, stage_r)
                )
                checked = raw | "Validate" >> beam.FlatMap(
                    validate_fn, *validate_args
                ).with_outputs("rejects", main="rows")
                deduped = (
                    checked.rows
                    | "KeyById" >> beam.Map(lambda r: (r["video_id"], r))
                    | "GroupById" >> beam.GroupByKey()
                    | "Dedup" >> beam.FlatMap(_dedup).with_outputs("rejects", main="rows")
                )
                _ = (
                    deduped.rows
                    | "KeyByShard"
                    >> beam.Map(lambda r, n: (shard_of(r["video_id"], n), r), config.num_shards)
                    | "GroupByShard" >> beam.GroupByKey()
                    | "WriteShards" >> beam.Map(_write_shard, stage_m, plan.extra_columns, meta)
                )
                _ = (
                    (checked.rejects, deduped.rejects)
                    | "AllRejects" >> beam.Flatten()
                    | "KeyRejects" >> beam.Map(lambda r: (0, r))
                    | "GroupRejects" >> beam.GroupByKey()
                    | "WriteRejects" >> beam.Map(_write_rejects, stage_r, meta)
                )
            report = _finish(plan, config, source, runner, stage_m, stage_r, meta)
            report.manifest_dir, report.rejects_dir = manifest_dir, rejects_dir
            report.seconds = round(time.perf_counter() - started, 3)
            report_uri = join(stage_m, REPORT_NAME)
            with _writing(report_uri):
                write_json_atomic(report_uri, asdict(report))
        except BaseException as exc:
            _rm(stage_m)
            _rm(stage_r)
            original = _step_error(exc)
            if original is not exc:
                raise original from None
            raise
        _swap(stage_r, rejects_dir)
        _swap(stage_m, manifest_dir)
    if check_ratio:
        check_rejects(report, config)
    return report


def _finish(
    plan: InputPlan,
    config: ManifestConfig,
    source: str,
    runner: str,
    stage_m: str,
    stage_r: str,
    meta: dict,
) -> IngestReport:
    """Fill in empty parts, check the count invariant, build the report."""
    input_rows = int(read_json(join(stage_r, "_input_rows.json"))["input_rows"])
    if input_rows == 0:
        raise ValueError(
            f"input {plan.input_path}: the corpus has no rows (files: "
            f"{[f.uri for f in plan.files]}) — nothing to ingest"
        )
    shards = []
    for i in range(config.num_shards):
        stats = join(stage_m, f"_stats-{i:05d}.json")
        if exists(stats):
            shards.append(int(read_json(stats)["rows"]))
            _rm(stats)
        else:
            part = join(stage_m, part_name(i))
            with _writing(part):
                write_table(part, manifest_table([], plan.extra_columns), MANIFEST, config=meta)
            shards.append(0)
    rejects_part = join(stage_r, part_name(0))
    if exists(rejects_part):
        from ragvid.schemas.io import read_table

        rej = read_table(rejects_part, REJECTS, columns=["reason"])
        reasons = Counter(rej.column("reason").to_pylist())
    else:
        with _writing(rejects_part):
            write_table(rejects_part, rejects_table([]), REJECTS, config=meta)
        reasons = Counter()
    _rm(join(stage_r, "_input_rows.json"))
    ingested, rejected = sum(shards), sum(reasons.values())
    if ingested + rejected != input_rows:
        raise RuntimeError(
            f"ingest of {plan.input_path}: {ingested} ingested + {rejected} rejected != "
            f"{input_rows} input rows — rows were lost; please report this bug"
        )
    assert len(list_parts(stage_m)) == config.num_shards
    return IngestReport(
        input_path=plan.input_path,
        layout=plan.layout,
        source=source,
        manifest_dir="",
        rejects_dir="",
        input_rows=input_rows,
        ingested=ingested,
        rejected=rejected,
        rejects_by_reason=dict(sorted(reasons.items())),
        shards=shards,
        extra_columns=list(plan.extra_columns),
        runner=runner,
    )


def read_report(manifest_dir: str) -> IngestReport:
    """The report of the ingest that wrote ``manifest_dir``."""
    return IngestReport(**read_json(join(manifest_dir, REPORT_NAME)))
