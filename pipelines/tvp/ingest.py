"""TVP datasets (SSv2, BridgeData V1, Epic-Kitchens-100) → a ragvid video manifest on Beam.

The corpus ingest's pipeline (:func:`ragvid.pipelines.corpus.beam.run_ingest`: its writers,
runner choice, staging swap and count check) over TVP units: units (label files,
annotation CSVs, trajectory folders) → raw records (:mod:`.sources`) → validated rows or
rejects with a reason → dedup by id (the first by (file, row) wins) → ``num_shards`` Parquet
parts through ``write_table(..., MANIFEST)``. Every input row ends in the manifest or in the
rejects (``ingested + rejected == input rows`` or the run fails); the protocol split is the
manifest's ``split`` column (train / val, and ``holdout`` for SSv2 validation rows past the
first 2,048).
"""

from __future__ import annotations

import time

from ragvid.pipelines.corpus.beam import IngestReport, run_ingest
from ragvid.pipelines.corpus.layouts import InputFile, InputPlan
from ragvid.pipelines.tvp.sources import EXTRA_COLUMNS, TVPPlan, plan_tvp, read_unit, validate_tvp
from ragvid.schemas.config import FCAConfig, ManifestConfig


def _read(unit: str, plan: TVPPlan):
    yield from read_unit(unit, plan)


def _validate(rec: dict, plan: TVPPlan, fca: FCAConfig, source: str):
    import apache_beam as beam

    row, reject = validate_tvp(rec, plan, fca, source)
    if row is not None:
        yield row
    else:
        yield beam.pvalue.TaggedOutput("rejects", reject)


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
    config, fca = config or ManifestConfig(), fca or FCAConfig()
    started = time.perf_counter()
    plan = plan_tvp(dataset, str(input_path))
    source = source or dataset
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
    return run_ingest(
        corpus_plan,
        list(plan.units),
        (_read, (plan,)),
        (_validate, (plan, fca, source)),
        config,
        source,
        meta,
        manifest_dir,
        rejects_dir,
        pipeline_args=pipeline_args,
        started=started,
        check_ratio=check_ratio,
    )
