"""A plain table of (image uri, caption) as a memory source: Parquet, CSV or JSONL.

Columns are recognised by name (first present wins, exact then case-insensitive):

* image: ``image_uri, image, uri, path, filepath, file, image_path, url`` — a local path (a
  relative one is resolved against the table's folder), an fsspec URI, or an http(s) URL; a
  Hugging Face ``image`` struct (``{bytes, path}``) counts by its path;
* caption: ``caption, text, TEXT, title, prompt``;
* optional: an id (``item_id, id, key``; else ``<table name>:<row>``), ``url``, ``width``,
  ``height``.

Every row is an input row: no image / caption → "missing field" or "empty field" naming the
row and column; with ``check_files`` a local image that does not exist, is not a regular
file, is empty or does not start like an image → a reject naming the file (a stat and a
16-byte read; nothing is decoded; remote URIs are not checked). Image bytes inside the table
are rejected ("image bytes in table"): the memory keeps images where they are. CSV and JSONL
go through the video manifest's readers (:mod:`ragvid.pipelines.corpus.readers`: UTF-8,
bad bytes cost their row, a malformed row is one reject); Parquet is read in batches, so a
table of any length reads in bounded memory. ``source_row`` is 1-based (CSV: the line).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from ragvid.pipelines.corpus.layouts import (
    _csv_header,
    _jsonl_keys,
    _parent,
    _parquet_columns,
    is_corrupt,
    not_a_file,
    not_regular,
    unreadable,
)
from ragvid.pipelines.vimi.memory_sources import (
    Record,
    SourceUnit,
    local_file_problem,
    memory_row,
    reject,
    text,
)
from ragvid.schemas.files import normalise, open_arrow
from ragvid.schemas.io import join

URI_COLUMNS = ("image_uri", "image", "uri", "path", "filepath", "file", "image_path", "url")
CAPTION_COLUMNS = ("caption", "text", "TEXT", "title", "prompt")
ID_COLUMNS = ("item_id", "id", "key")
BATCH_ROWS = 8192


def _pick(names: tuple[str, ...], columns: list[str]) -> str | None:
    for n in names:
        if n in columns:
            return n
    lower = {c.lower(): c for c in columns}
    return next((lower[n.lower()] for n in names if n.lower() in lower), None)


def _columns(uri: str) -> tuple[str, list[str], tuple[str, str] | None]:
    """(format, column names, problem) of a table file; a problem makes it one reject."""
    kind = (
        "csv"
        if uri.lower().endswith(".csv")
        else "jsonl"
        if uri.lower().endswith(".jsonl")
        else "parquet"
    )
    special = not_a_file(uri)
    if special:
        return kind, [], not_regular(uri, special)
    if kind == "csv":
        header, problem = _csv_header(uri)
        return kind, header, problem
    if kind == "jsonl":
        return kind, _jsonl_keys(uri), None
    try:
        return kind, _parquet_columns(uri), None
    except Exception as exc:  # noqa: BLE001 - pyarrow's parse errors are untyped
        if not is_corrupt(exc):
            raise
        return kind, [], unreadable(uri, "Parquet file", exc)


def plan_table(uri: str, source: str, index: int, options: dict[str, Any]) -> list[SourceUnit]:
    """One unit per table file; the image and caption columns found now (ValueError if not)."""
    kind, columns, problem = _columns(uri)
    roles = {
        "uri": _pick(URI_COLUMNS, columns),
        "caption": _pick(CAPTION_COLUMNS, columns),
        "id": _pick(ID_COLUMNS, columns),
        "url": "url" if "url" in columns else None,
        "width": "width" if "width" in columns else None,
        "height": "height" if "height" in columns else None,
    }
    if problem is None and (roles["uri"] is None or roles["caption"] is None):
        raise ValueError(
            f"memory table {uri}: no {'image' if roles['uri'] is None else 'caption'} column "
            f"among {columns} — name the image column one of {list(URI_COLUMNS)} and the "
            f"caption column one of {list(CAPTION_COLUMNS)}"
        )
    opts = {**options, "format": kind, "roles": roles, "problem": problem}
    return [SourceUnit("table", uri, source, index, {}, opts)]


def _records(unit: SourceUnit) -> Iterator[dict[str, Any]]:
    """Raw records ``{source_row, values, error, detail, field, raw}`` of the table."""
    from ragvid.pipelines.corpus.layouts import InputFile
    from ragvid.pipelines.corpus.readers import read_records

    fmt, roles = unit.options["format"], unit.options["roles"]
    if fmt in ("csv", "jsonl"):
        yield from read_records(InputFile(unit.uri, fmt, ()), None)  # type: ignore[arg-type]
        return
    wanted = list(dict.fromkeys(c for c in roles.values() if c))
    try:
        with open_arrow(unit.uri) as fh:
            row = 0
            for batch in pq.ParquetFile(fh).iter_batches(BATCH_ROWS, columns=wanted):
                for values in batch.to_pylist():
                    row += 1
                    yield {"source_row": row, "values": values, "error": None, "raw": None}
    except Exception as exc:  # noqa: BLE001 - see is_corrupt
        if not is_corrupt(exc):
            raise
        reason, detail = unreadable(unit.uri, "Parquet file", exc)
        yield {"source_row": 0, "values": {}, "error": reason, "detail": detail, "raw": None}


def _image_value(v: Any) -> tuple[str | None, bool]:
    """(uri text, holds bytes) of an image cell (a string, or a ``{bytes, path}`` struct)."""
    if isinstance(v, dict):
        path = text(v.get("path"))
        return (path or None), bool(v.get("bytes")) and not path
    if isinstance(v, bytes):
        return None, bool(v)
    return text(v), False


def _resolve(uri: str, table_uri: str) -> str:
    if "://" in uri or uri.startswith("/"):
        return uri
    return normalise(join(_parent(table_uri), uri))


def _row(unit: SourceUnit, rec: dict[str, Any]) -> Record:
    src, i = unit.uri, int(rec["source_row"])
    where = f"{src} row {i}"
    roles = unit.options["roles"]
    if rec.get("error"):
        detail = rec.get("detail") if i == 0 else f"{where}: {rec.get('detail')}"
        return "reject", reject(
            src, i, rec["error"], detail, rec.get("field"), None, rec.get("raw")
        )
    values = rec["values"]
    raw = rec.get("raw") or {k: v for k, v in values.items() if not isinstance(v, bytes | dict)}
    item_id = text(values.get(roles["id"])) if roles["id"] else None
    item_id = item_id or f"{unit.source}:{i}"
    uri, has_bytes = _image_value(values.get(roles["uri"]))
    caption = text(values.get(roles["caption"]))
    if has_bytes:
        detail = (
            f"{where}: column {roles['uri']!r} holds image bytes; the memory keeps images where "
            "they are — write them to files (or an img2dataset webdataset) and list their paths"
        )
        return "reject", reject(src, i, "image bytes in table", detail, roles["uri"], item_id, raw)
    for role, value in (("uri", uri), ("caption", caption)):
        if not value:
            reason = "missing field" if value is None else "empty field"
            detail = f"{where}: {roles[role]!r} is {'missing' if value is None else 'empty'}"
            return "reject", reject(src, i, reason, detail, roles[role], item_id, raw)
    image_uri = _resolve(uri, src)  # type: ignore[arg-type]
    if unit.options.get("check_files", True):
        problem = local_file_problem(image_uri)
        if problem:
            detail = f"{where}: {problem[1]}"
            return "reject", reject(src, i, problem[0], detail, roles["uri"], item_id, raw)
    url = text(values.get(roles["url"])) if roles["url"] else None
    if url is None and image_uri.startswith(("http://", "https://")):
        url = image_uri
    return "row", memory_row(
        item_id=item_id,
        image_uri=image_uri,
        caption=caption,  # type: ignore[arg-type]
        source=unit.source,
        source_file=src,
        source_row=i,
        url=url or None,
        width=_int(values.get(roles["width"])) if roles["width"] else None,
        height=_int(values.get(roles["height"])) if roles["height"] else None,
    )


def _int(v: Any) -> int | None:
    try:
        return None if v is None or v == "" or v != v else int(float(v))
    except (TypeError, ValueError):
        return None


def read_table_unit(unit: SourceUnit) -> Iterator[Record]:
    """The rows / rejects of one table file (module docstring)."""
    problem = unit.options.get("problem")
    if problem:
        yield "reject", reject(unit.uri, 0, problem[0], problem[1])
        return
    for rec in _records(unit):
        yield _row(unit, rec)
