"""TVP datasets (SSv2, BridgeData V1, Epic-Kitchens-100) → a ragvid video manifest on Beam.

The same pipeline shape and guarantees as the corpus ingest (:mod:`ragvid.pipelines.corpus.beam`,
whose writers, runner choice, staging swap and count check it reuses): units (label files,
annotation CSVs, trajectory folders) → raw records (:mod:`.sources`) → validated rows or
rejects with a reason → dedup by id (the first by (file, row) wins) → ``num_shards`` Parquet
parts through ``write_table(..., MANIFEST)``. Every input row ends in the manifest or in the
rejects (``ingested + rejected == input rows`` or the run fails); the protocol split is the
manifest's ``split`` column (train / val, and ``holdout`` for SSv2 validation rows past the
first 2,048).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict

from ragvid.pipelines.corpus.beam import (
    REPORT_NAME,
    IngestReport,
    _finish,
    _import_beam,
    _pipeline,
    _rm,
    _step_error,
    _swap,
    _write_count,
    _write_rejects,
    _write_shard,
    _writing,
    check_rejects,
)
from ragvid.pipelines.corpus.layouts import InputFile, InputPlan
from ragvid.pipelines.corpus.validate import dedup_group, shard_of
from ragvid.pipelines.tvp.sources import EXTRA_COLUMNS, TVPPlan, plan_tvp, read_unit, validate_tvp
from ragvid.schemas.config import FCAConfig, ManifestConfig
from ragvid.schemas.io import join, makedirs, output_lock, write_json_atomic


def _read(unit: str, plan: TVPPlan):
    yield from read_unit(unit, plan)


def _validate(rec: dict, plan: TVPPlan, fca: FCAConfig, source: str):
    import apache_beam as beam

    row, reject = validate_tvp(rec, plan, fca, source)
    if row is not None:
        yield row
    else:
        yield beam.pvalue.TaggedOutput("rejects", reject)


def _dedup(kv):
    import apache_beam as beam

    first, rejects = dedup_group(kv[1])
    yield first
    for r in rejects:
        yield beam.pvalue.TaggedOutput("rejects", r)


def ingest_tvp(
    dataset: str,
    input_path: str,
    manifest_dir: str,
    rejects_dir: str,
    config: ManifestConfig | None = None,
    fca: FCAConfig | None = None,
    *,
    source: str | None = None,
    pipeline_args: list[str] | None = None,
    check_ratio: bool = True,
) -> IngestReport:
    """Ingest the ``dataset`` ("ssv2" | "bridge" | "epic100") at ``input_path`` into
    ``manifest_dir`` (parts + ``_report.json``) and ``rejects_dir``; ``fca`` holds the
    protocol (SSv2's 2,048 validation samples, Bridge's seeded 80/20). Raises like
    :func:`ragvid.pipelines.corpus.beam.ingest` (FailureRatioError after writing when more
    than ``config.max_failure_ratio`` of the rows were rejected, unless ``check_ratio=False``)."""
    beam = _import_beam()
    config, fca = config or ManifestConfig(), fca or FCAConfig()
    started = time.perf_counter()
    plan = plan_tvp(dataset, str(input_path))
    source = source or dataset
    manifest_dir, rejects_dir = str(manifest_dir).rstrip("/"), str(rejects_dir).rstrip("/")
    parent = manifest_dir.rsplit("/", 1)[0] if "/" in manifest_dir else "."
    tag = uuid.uuid4().hex[:8]
    stage_m, stage_r = f"{manifest_dir}.staging-{tag}", f"{rejects_dir}.staging-{tag}"
    meta = {
        "manifest": config.model_dump(),
        "fca": fca.model_dump(),
        "input": plan.input_path,
        "source": source,
        "dataset": dataset,
    }
    # the corpus ingest's bookkeeping (count check, empty parts, report) reads an InputPlan
    corpus_plan = InputPlan(
        plan.input_path,
        dataset,
        tuple(InputFile(u, "tvp") for u in plan.units),
        {"id": "video_id", "caption": "caption", "uri": "uri", "duration": None},
        EXTRA_COLUMNS,
    )
    with output_lock(parent):
        makedirs(stage_m)
        makedirs(stage_r)
        try:
            pipeline, runner = _pipeline(config, pipeline_args)
            logging.getLogger("apache_beam").setLevel(logging.WARNING)
            with pipeline as p:
                raw = (
                    p
                    | "Units" >> beam.Create(list(plan.units))
                    | "Read" >> beam.FlatMap(_read, plan)
                )
                _ = (
                    raw
                    | "CountInput" >> beam.combiners.Count.Globally()
                    | "WriteCount" >> beam.Map(_write_count, stage_r)
                )
                checked = raw | "Validate" >> beam.FlatMap(
                    _validate, plan, fca, source
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
                    | "WriteShards" >> beam.Map(_write_shard, stage_m, EXTRA_COLUMNS, meta)
                )
                _ = (
                    (checked.rejects, deduped.rejects)
                    | "AllRejects" >> beam.Flatten()
                    | "KeyRejects" >> beam.Map(lambda r: (0, r))
                    | "GroupRejects" >> beam.GroupByKey()
                    | "WriteRejects" >> beam.Map(_write_rejects, stage_r, meta)
                )
            report = _finish(corpus_plan, config, source, runner, stage_m, stage_r, meta)
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
