"""Validated, atomic Parquet I/O on local paths or fsspec URIs, plus part markers and locks.

Writes go to a temporary name and are renamed into place, so a reader never sees half a
file; a part is finished only when its ``.done`` marker exists (datatrove's completions
idea), which is what resume logic checks.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .contract import SchemaMismatchError, TableSpec, file_dim


def fs_and_path(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """Split a local path or fsspec URI (``s3://…``, ``memory://…``) into (filesystem, path)."""
    fs, path = fsspec.core.url_to_fs(str(uri))
    return fs, path


def join(base: str | os.PathLike, *parts: str) -> str:
    base = str(base).rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts]])


def exists(uri: str | os.PathLike) -> bool:
    fs, path = fs_and_path(uri)
    return fs.exists(path)


def makedirs(uri: str | os.PathLike) -> None:
    fs, path = fs_and_path(uri)
    fs.makedirs(path, exist_ok=True)


def _atomic_put(uri: str, write) -> None:
    fs, path = fs_and_path(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}"
    try:
        with fs.open(tmp, "wb") as fh:
            write(fh)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def write_bytes_atomic(uri: str, data: bytes) -> None:
    _atomic_put(str(uri), lambda fh: fh.write(data))


def write_json_atomic(uri: str, obj: Any) -> None:
    write_bytes_atomic(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    fs, path = fs_and_path(uri)
    with fs.open(path, "rb") as fh:
        return json.loads(fh.read().decode())


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
    _atomic_put(uri, lambda fh: pq.write_table(table, fh, compression="zstd"))
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
) -> pa.Table:
    """Read a Parquet file and check it was written under ``spec`` (version, dim, encoder)."""
    uri = str(uri)
    fs, path = fs_and_path(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: no such table file — run the stage that produces it")
    try:
        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
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
        table = spec.conform(table, dim=file_dim(meta) if spec.has_dim else None, where=uri)
    return table


def read_metadata(uri: str | os.PathLike) -> dict[bytes, bytes]:
    fs, path = fs_and_path(str(uri))
    with fs.open(path, "rb") as fh:
        return dict(pq.ParquetFile(fh).schema_arrow.metadata or {})


def read_parts(
    folder: str | os.PathLike,
    spec: TableSpec,
    *,
    dim: int | None = None,
    encoder: str | None = None,
    columns: list[str] | None = None,
    require_done: bool = False,
) -> pa.Table:
    """Read every ``part-*.parquet`` of a folder (sorted) into one table."""
    paths = list_parts(folder, require_done=require_done)
    if not paths:
        raise FileNotFoundError(f"{folder}: no part-*.parquet files — run the producing stage")
    tables = [read_table(p, spec, dim=dim, encoder=encoder, columns=columns) for p in paths]
    return pa.concat_tables(tables, promote_options="permissive")


def list_parts(folder: str | os.PathLike, require_done: bool = False) -> list[str]:
    fs, path = fs_and_path(str(folder))
    if not fs.exists(path):
        return []
    names = sorted(
        p
        for p in fs.ls(path, detail=False)
        if p.rsplit("/", 1)[-1].startswith("part-") and p.endswith(".parquet")
    )
    proto = str(folder).split("://", 1)[0] + "://" if "://" in str(folder) else ""
    out = [proto + n if proto and not n.startswith(proto) else n for n in names]
    if require_done:
        out = [p for p in out if is_done(p)]
    return out


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def done_marker(part_uri: str) -> str:
    return str(part_uri).removesuffix(".parquet") + ".done"


def is_done(part_uri: str) -> bool:
    return exists(done_marker(part_uri))


def mark_done(part_uri: str, stats: Mapping[str, Any] | None = None) -> None:
    """Write the part's done marker, holding its small stats record."""
    write_json_atomic(done_marker(part_uri), dict(stats or {}))


def clear_done(part_uri: str) -> None:
    """Remove a part's marker (before rewriting the part in place)."""
    fs, path = fs_and_path(done_marker(part_uri))
    if fs.exists(path):
        fs.rm(path)


def read_done(part_uri: str) -> dict[str, Any]:
    return read_json(done_marker(part_uri))


class LockedError(RuntimeError):
    """Another run holds the output's lock."""


@contextmanager
def output_lock(folder: str | os.PathLike, stale_after_s: float = 6 * 3600) -> Iterator[None]:
    """Refuse to let two runs write the same output folder at once.

    The lock is a file created exclusively; it names host and pid. A lock whose process is
    gone (same host) or older than ``stale_after_s`` is taken over.
    """
    folder = str(folder)
    makedirs(folder)
    fs, path = fs_and_path(join(folder, ".lock"))
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    if fs.exists(path):
        try:
            with fs.open(path, "rb") as fh:
                other = json.loads(fh.read().decode())
        except Exception:  # noqa: BLE001 - unreadable lock is stale
            other = {}
        alive = _pid_alive(other) if other.get("host") == me["host"] else True
        fresh = time.time() - float(other.get("since", 0)) < stale_after_s
        if alive and fresh:
            raise LockedError(
                f"{folder} is being written by another run (host {other.get('host')}, pid "
                f"{other.get('pid')}). Wait for it to finish, or delete {path} if that run is "
                "dead."
            )
    if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            os.unlink(path)  # stale, checked above
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
    else:
        with fs.open(path, "wb") as fh:
            fh.write(json.dumps(me).encode())
    try:
        yield
    finally:
        if fs.exists(path):
            fs.rm(path)


def _pid_alive(info: Mapping[str, Any]) -> bool:
    pid = int(info.get("pid", 0) or 0)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
