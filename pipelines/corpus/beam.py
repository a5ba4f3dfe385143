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
manifest as a whole and a failed run leaves the previous one untouched.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
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


def _write_shard(kv: tuple[int, Any], folder: str, extras: tuple[str, ...], config: dict) -> int:
    shard, rows = kv
    rows = list(rows)
    write_table(
        join(folder, part_name(shard)), manifest_table(rows, extras), MANIFEST, config=config
    )
    write_json_atomic(join(folder, f"_stats-{shard:05d}.json"), {"part": shard, "rows": len(rows)})
    return len(rows)


def _write_rejects(kv: tuple[int, Any], folder: str, config: dict) -> int:
    rows = list(kv[1])
    write_table(join(folder, part_name(0)), rejects_table(rows), REJECTS, config=config)
    return len(rows)


def _write_count(n: int, folder: str) -> None:
    write_json_atomic(join(folder, "_input_rows.json"), {"input_rows": int(n)})


# --- driver --------------------------------------------------------------------------------


def _import_beam():
    """Import Beam without its 'apitools not found' warning (no GCP extras installed)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import apache_beam
    finally:
        root.setLevel(level)
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
) -> IngestReport:
    """Turn a corpus (WebVid CSVs, video2dataset shards, folder + captions) into a manifest.

    Writes ``manifest_dir/part-0000N.parquet`` (``num_shards`` parts, rows sorted by id,
    shard = crc32(id) % num_shards), ``rejects_dir/part-00000.parquet`` and
    ``manifest_dir/_report.json``. ``videos_dir`` is where video2dataset tar members are
    extracted (default: ``<manifest_dir>/../videos``). Raises FileNotFoundError for a missing
    input, ValueError for an unknown layout or an empty corpus, RuntimeError if the counts do
    not add up (a bug: no row may vanish).
    """
    beam = _import_beam()

    config = config or ManifestConfig()
    started = time.perf_counter()
    input_path = str(input_path)
    manifest_dir, rejects_dir = str(manifest_dir).rstrip("/"), str(rejects_dir).rstrip("/")
    parent = manifest_dir.rsplit("/", 1)[0] if "/" in manifest_dir else "."
    if not exists(input_path):
        raise FileNotFoundError(f"input {input_path} does not exist: pass a corpus file/folder")
    plan = plan_inputs(input_path, config, videos_dir or join(parent, "videos"))
    source = source or plan.input_path.rstrip("/").rsplit("/", 1)[-1]
    tag = uuid.uuid4().hex[:8]
    stage_m, stage_r = f"{manifest_dir}.staging-{tag}", f"{rejects_dir}.staging-{tag}"
    meta = {"manifest": config.model_dump(), "input": input_path, "source": source}
    with output_lock(parent):  # <corpus>/.lock: one ingest per corpus at a time
        makedirs(stage_m)
        makedirs(stage_r)
        try:
            pipeline, runner = _pipeline(config, pipeline_args)
            logging.getLogger("apache_beam").setLevel(logging.WARNING)
            with pipeline as p:
                raw = (
                    p
                    | "Files" >> beam.Create(list(plan.files))
                    | "Read" >> beam.FlatMap(_read, plan)
                )
                _ = (
                    raw
                    | "CountInput" >> beam.combiners.Count.Globally()
                    | "WriteCount" >> beam.Map(_write_count, stage_r)
                )
                checked = raw | "Validate" >> beam.FlatMap(
                    _validate, plan, config, source
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
        except BaseException:
            _rm(stage_m)
            _rm(stage_r)
            raise
        report.manifest_dir, report.rejects_dir = manifest_dir, rejects_dir
        report.seconds = round(time.perf_counter() - started, 3)
        write_json_atomic(join(stage_m, "_report.json"), asdict(report))
        _swap(stage_r, rejects_dir)
        _swap(stage_m, manifest_dir)
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
            empty = manifest_table([], plan.extra_columns)
            write_table(join(stage_m, part_name(i)), empty, MANIFEST, config=meta)
            shards.append(0)
    rejects_part = join(stage_r, part_name(0))
    if exists(rejects_part):
        from ragvid.schemas.io import read_table

        rej = read_table(rejects_part, REJECTS, columns=["reason"])
        reasons = Counter(rej.column("reason").to_pylist())
    else:
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
