"""Validated Parquet tables on local paths or fsspec URIs: atomic writes, checked reads, parts.

Every table file is written atomically (:mod:`.files`) with its contract metadata and Parquet
page checksums, and read back with the contract checked and every page's CRC verified — a
flipped bit in a page is an error naming the file, never a different vector. A folder of
``part-*.parquet`` is a table whose parts count only with a valid marker (:mod:`.markers`);
the lock (:mod:`.lock`) keeps two runs from writing one folder. This module re-exports the
file helpers so callers have one import for table I/O.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .checksum import FileRecord, verify_bytes
from .contract import SchemaMismatchError, TableSpec, file_dim
from .files import (
    arrow_buffer,
    atomic_put,
    exists,
    fs_and_path,
    join,
    makedirs,
    open_arrow,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
)
from .lock import LockedError, output_lock
from .markers import (
    IncompleteTableError,
    TableState,
    clear_marker,
    complete_parts,
    is_managed,
    read_marker,
    write_marker,
)

__all__ = [
    "IncompleteTableError",
    "LockedError",
    "atomic_put",
    "clear_done",
    "exists",
    "fs_and_path",
    "is_done",
    "join",
    "list_parts",
    "makedirs",
    "mark_done",
    "output_lock",
    "part_name",
    "read_done",
    "read_json",
    "read_parts",
    "read_table",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_parquet",
    "write_table",
]


def write_parquet(uri: str | os.PathLike, table: pa.Table) -> None:
    """Write a Parquet file atomically, zstd, with page checksums (no contract check)."""
    atomic_put(
        str(uri),
        lambda fh: pq.write_table(table, fh, compression="zstd", write_page_checksum=True),
    )


def write_table(
    uri: str | os.PathLike,
    table: pa.Table,
    spec: TableSpec,
    *,
    dim: int | None = None,
    encoder: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Validate ``table`` against ``spec`` and write it atomically with contract metadata."""
    uri = str(uri)
    if spec.has_dim and dim is None:
        dim = _infer_dim(table)
    table = spec.conform(table, dim=dim, where=uri)
    meta = dict(table.schema.metadata or {})
    meta.update(spec.metadata(dim=dim if spec.has_dim else None, encoder=encoder, config=config))
    table = table.replace_schema_metadata(meta)
    write_parquet(uri, table)
    return table


def _infer_dim(table: pa.Table) -> int:
    for name in ("video_emb", "text_emb", "vector"):
        if name in table.column_names:
            t = table.schema.field(name).type
            if isinstance(t, pa.FixedSizeListType):
                return t.list_size
            if len(table) and table.column(name)[0].is_valid:
                return len(table.column(name)[0])
    raise ValueError("cannot infer the embedding dimension: pass dim=")


def read_table(
    uri: str | os.PathLike,
    spec: TableSpec,
    *,
    dim: int | None = None,
    encoder: str | None = None,
    columns: list[str] | None = None,
    expect: FileRecord | None = None,
) -> pa.Table:
    """Read a Parquet file and check it was written under ``spec`` (version, dim, encoder),
    verifying page checksums — and, given ``expect`` (a marker's record), the whole file's
    size and sha256 first."""
    uri = str(uri)
    fs, path = fs_and_path(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: no such table file — run the stage that produces it")
    try:
        if expect is not None:
            with fs.open(path, "rb") as fh:
                data = fh.read()
            verify_bytes(uri, data, expect, "table file")
            source = nullcontext(pa.BufferReader(arrow_buffer(data)))  # the verified bytes
        else:
            source = open_arrow(uri)
        with source as fh:
            pf = pq.ParquetFile(fh, page_checksum_verification=True)
            meta = pf.schema_arrow.metadata
            spec.check_metadata(meta, uri, dim=dim, encoder=encoder)
            table = pf.read(columns=columns)
    except SchemaMismatchError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaMismatchError(
            f"{uri}: not a readable Parquet file ({exc}) — delete it and rerun the stage"
        ) from exc
    if columns is None:
        stored_dim = file_dim(meta) if spec.has_dim else None
        table = spec.conform(table, dim=stored_dim, where=uri, keep_float32=True)
    return table


def read_metadata(uri: str | os.PathLike) -> dict[bytes, bytes]:
    with open_arrow(uri) as fh:
        return dict(pq.ParquetFile(fh).schema_arrow.metadata or {})


def read_parts(
    folder: str | os.PathLike,
    spec: TableSpec,
    *,
    dim: int | None = None,
    encoder: str | None = None,
    columns: list[str] | None = None,
    what: str = "",
    hint: str = "rerun the stage that writes it",
) -> pa.Table:
    """Read a table folder (its ``part-*.parquet``, sorted) into one table.

    A managed table (one with ``_markers/``) is read only when every part is done, and each
    part whole is checked against its marker's sha256; otherwise :class:`IncompleteTableError`
    names how many parts are done and what to run.
    """
    parts = complete_parts(str(folder), what, hint)
    if not parts:
        raise FileNotFoundError(f"{folder}: no part-*.parquet files — run the producing stage")
    tables = [
        read_table(
            p,
            spec,
            dim=dim,
            encoder=encoder,
            columns=columns,
            expect=m.record("main") if m is not None and columns is None else None,
        )
        for p, m in parts
    ]
    return pa.concat_tables(tables, promote_options="permissive")


def list_parts(folder: str | os.PathLike, require_done: bool = False) -> list[str]:
    """The table folder's ``part-*.parquet`` files, sorted.

    For a managed table (one with ``_markers/``) every part must be done — a reader never
    takes an unfinished or damaged part for data: :class:`IncompleteTableError` otherwise;
    ``require_done=True`` returns just the done parts instead (previews, status).
    """
    folder = str(folder)
    if not is_managed(folder):
        return TableState(folder).parts()
    if require_done:
        return TableState(folder).done_parts()
    return [p for p, _ in complete_parts(folder)]


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def is_done(part_uri: str) -> bool:
    """True when the part has a valid marker (its files match the recorded sizes)."""
    return TableState(str(part_uri).rsplit("/", 1)[0]).done(str(part_uri))


def mark_done(
    part_uri: str,
    stats: Mapping[str, Any] | None = None,
    files: Mapping[str, str] | None = None,
    input: Any = None,  # noqa: A002
) -> None:
    """Write the part's marker: its stats, and the size + sha256 of the part and ``files``."""
    write_marker(str(part_uri), dict(stats or {}), files, input)


def clear_done(part_uri: str) -> None:
    """Remove a part's marker (before rewriting the part in place)."""
    clear_marker(str(part_uri))


def read_done(part_uri: str) -> dict[str, Any]:
    """The stats a part's marker holds."""
    return read_marker(str(part_uri)).stats
