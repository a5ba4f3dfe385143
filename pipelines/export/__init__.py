"""Exports of ragvid tables in the formats peer tools read (clip-retrieval, NeMo Curator).

:func:`export_embeddings` is what ``ragvid export`` calls: the stage (:mod:`.stage`) over a
corpus's embeddings folder in one of :data:`FORMATS`, then — for clip-retrieval with an index —
the folder ``clip-retrieval back`` serves (:func:`.clip_retrieval.write_back_index`).
"""

from __future__ import annotations

from typing import Any

from ragvid.pipelines.export.clip_retrieval import (
    ClipRetrievalFormat,
    back_index,
    write_back_index,
)
from ragvid.pipelines.export.nemo import NemoFormat
from ragvid.pipelines.export.stage import ExportReport, ExportStage, run_export
from ragvid.schemas.config import ExportConfig
from ragvid.schemas.files import exists

FORMATS = ("clip-retrieval", "nemo")

__all__ = ["FORMATS", "ExportReport", "ExportStage", "export_embeddings", "make_format"]


def make_format(config: ExportConfig):
    """The format object of ``config.format``."""
    if config.format == "clip-retrieval":
        return ClipRetrievalFormat(text=config.text)
    if config.format == "nemo":
        return NemoFormat(vectors=config.vectors)
    raise KeyError(f"unknown export format '{config.format}'. Available: {list(FORMATS)}")


def export_embeddings(
    embeddings: str,
    out: str,
    config: ExportConfig,
    *,
    manifest: str | None = None,
    index: Any = None,
    index_name: str | None = None,
    clip_model: str | None = None,
    progress=None,
) -> ExportReport:
    """Export the embeddings folder ``embeddings`` into ``out`` (resumable: finished parts are
    skipped). ``manifest`` (the corpus's manifest folder) fills clip-retrieval's ``image_path``;
    ``index`` (an :class:`~ragvid.pipelines.index.layout.IndexManifest`, clip-retrieval only)
    adds ``image.index`` + ``indices_paths.json`` under ``index_name``, with ``clip_model`` the
    name ``clip-retrieval back`` loads the query encoder by."""
    if index is not None and config.format != "clip-retrieval":
        raise ValueError(
            f"--index builds clip-retrieval's image.index; format '{config.format}' has none"
        )
    stage = ExportStage(embeddings, out, make_format(config), manifest=manifest)
    name = index_name or (index.name if index is not None else None)

    def finish(report: ExportReport, previous: dict[str, Any]) -> dict[str, Any]:
        if index is None:
            return {}
        old = previous.get("back") or {}
        unchanged = report.skipped == report.parts and not report.removed
        same = (old.get("index"), old.get("version"), old.get("clip_model")) == (
            name,
            index.version,
            clip_model,
        )
        if unchanged and same and old.get("ntotal") == report.rows and exists(back_index(out)):
            return {"back": {**old, "reused": True}}
        return {"back": write_back_index(report, index, name, clip_model)}

    return run_export(stage, config, progress=progress, finish=finish)
