"""Files on local disks or fsspec stores: paths, atomic writes, JSON, leftover clean-up.

The bottom of ``schemas``: tables (:mod:`.io`), markers, checksums and locks build on it.
A write goes to a hidden temporary name (``.<name>.<random>.tmp``, which no ``*.parquet`` glob
or dataset reader picks up), is flushed to disk, and is renamed into place — a reader sees the
old file or the new one, never half of one. A killed writer leaves only such temporaries,
which :func:`clean_temporaries` removes when the next run takes the folder's lock.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
import pyarrow as pa

from .faults import fault_point

TMP_SUFFIX = ".tmp"


def fs_and_path(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """Split a local path or fsspec URI (``s3://…``, ``memory://…``) into (filesystem, path)."""
    fs, path = fsspec.core.url_to_fs(str(uri))
    return fs, path


def is_local(uri: str | os.PathLike) -> bool:
    return "://" not in str(uri) or str(uri).startswith("file://")


def join(base: str | os.PathLike, *parts: str) -> str:
    base = str(base).rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts]])


def normalise(uri: str) -> str:
    """Collapse ``a/b/../c`` in a local path or the path part of an fsspec URI."""
    if "://" in uri:
        proto, rest = uri.split("://", 1)
        return f"{proto}://{posixpath.normpath(rest)}"
    return os.path.normpath(uri)


def relative_to(uri: str, base: str) -> str:
    """``uri`` written relative to the folder ``base`` (same store): markers and manifests
    record relative paths, so a workspace copied or mounted elsewhere still resolves."""
    if "://" in uri or "://" in base:
        strip = lambda u: u.split("://", 1)[1] if "://" in u else u  # noqa: E731
        return posixpath.relpath(strip(uri), strip(base))
    return os.path.relpath(uri, base)


def resolve(base: str, rel: str) -> str:
    if "://" in rel or os.path.isabs(rel):
        return rel
    return normalise(join(base, rel))


def exists(uri: str | os.PathLike) -> bool:
    fs, path = fs_and_path(uri)
    return fs.exists(path)


def makedirs(uri: str | os.PathLike) -> None:
    fs, path = fs_and_path(uri)
    fs.makedirs(path, exist_ok=True)


def temporary_name(path: str) -> str:
    parent, name = path.rsplit("/", 1) if "/" in path else (".", path)
    return f"{parent}/.{name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}"


def atomic_put(uri: str | os.PathLike, write) -> None:
    """Run ``write(fh)`` into a temporary file next to ``uri``, flush it to disk and rename it
    into place (``os.replace`` locally: atomic; ``fs.mv`` on object stores: see README)."""
    fs, path = fs_and_path(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    fs.makedirs(parent, exist_ok=True)
    tmp = temporary_name(path)
    try:
        if is_local(uri):
            with open(tmp, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            fault_point("atomic-put:before-rename")
            os.replace(tmp, path)
        else:
            with fs.open(tmp, "wb") as fh:
                write(fh)
            fs.mv(tmp, path)
    except BaseException:
        try:
            if fs.exists(tmp):
                fs.rm(tmp)
        except OSError:
            pass
        raise


def arrow_buffer(data: bytes) -> pa.Buffer:
    """``data`` copied into Arrow's own memory.

    Arrow frees buffers from its worker threads; a buffer that wraps Python ``bytes`` needs the
    GIL to be freed, and a worker that asks for it while the interpreter exits aborts the whole
    process ("terminate called without an active exception", exit 134, after a clean run).
    """
    out = pa.BufferOutputStream()
    out.write(data)
    return out.getvalue()


@contextmanager
def open_arrow(uri: str | os.PathLike) -> Iterator[pa.NativeFile]:
    """A file for Arrow / Parquet readers that holds no Python-owned memory (see
    :func:`arrow_buffer`): local files are opened natively; a remote object is read once into
    Arrow memory (stage parts are bounded in size)."""
    fs, path = fs_and_path(uri)
    if is_local(uri):
        with pa.OSFile(path, "r") as fh:
            yield fh
        return
    with fs.open(path, "rb") as fh:
        data = fh.read()
    with pa.BufferReader(arrow_buffer(data)) as reader:
        yield reader


def write_bytes_atomic(uri: str | os.PathLike, data: bytes) -> None:
    atomic_put(str(uri), lambda fh: fh.write(data))


def write_json_atomic(uri: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


class UnreadableJsonError(ValueError):
    """A JSON record (marker, manifest, pointer) is empty or not JSON."""


def read_json(uri: str | os.PathLike) -> Any:
    fs, path = fs_and_path(uri)
    with fs.open(path, "rb") as fh:
        raw = fh.read()
    if not raw.strip():
        raise UnreadableJsonError(
            f"{uri} is empty (0 bytes of JSON) — it was cut off while written"
        )
    try:
        return json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableJsonError(f"{uri} is not valid JSON ({exc}) — it is corrupt") from None


def clean_temporaries(folder: str | os.PathLike) -> int:
    """Remove the ``.*.tmp`` files a killed writer left in ``folder`` (call with its lock held:
    no live writer of this folder can own one). Returns how many were removed."""
    fs, path = fs_and_path(folder)
    if not fs.exists(path):
        return 0
    removed = 0
    for p in fs.ls(path, detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        if (name.startswith(".tmp-") or (name.startswith(".") and name.endswith(TMP_SUFFIX))) and (
            fs.isfile(p)
        ):
            try:
                fs.rm(p)
                removed += 1
            except FileNotFoundError:
                pass
    return removed
