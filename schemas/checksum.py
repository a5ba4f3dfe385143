"""File records (size + sha256): what a marker or a manifest records about a file it vouches for.

Writers record a file right after writing it; readers check the size cheaply on every plan
(one listing) and the full hash when they read the bytes anyway (or on demand, ``--verify``).
A file whose record does not match is *not* part of its table: it is recomputed or refused,
never read as if it were good.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from typing import Any

from .files import fs_and_path

CHUNK = 1 << 24


class ChecksumMismatchError(ValueError):
    """A file differs from the record written when it was made (truncated, flipped, replaced)."""


@dataclass(frozen=True)
class FileRecord:
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> FileRecord | None:
        if not data or "sha256" not in data:
            return None
        return cls(size=int(data.get("size", -1)), sha256=str(data["sha256"]))


def bytes_record(data: bytes) -> FileRecord:
    return FileRecord(len(data), hashlib.sha256(data).hexdigest())


def file_record(uri: str | os.PathLike) -> FileRecord:
    """Stream a file through sha256 (bounded memory) and return its record."""
    fs, path = fs_and_path(uri)
    h, size = hashlib.sha256(), 0
    with fs.open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
            size += len(block)
    return FileRecord(size, h.hexdigest())


def mismatch(uri: str, what: str, expected: FileRecord, size: int, sha: str | None = None) -> str:
    got = f"{size} bytes" + (f", sha256 {sha[:12]}…" if sha else "")
    return (
        f"{uri}: {what} does not match the record written with it (expected {expected.size} "
        f"bytes, sha256 {expected.sha256[:12]}…; found {got}) — the file was truncated, "
        "corrupted or replaced"
    )


def verify_bytes(uri: str, data: bytes, expected: FileRecord | None, what: str = "file") -> None:
    if expected is None:
        return
    got = bytes_record(data)
    if got != expected:
        raise ChecksumMismatchError(mismatch(uri, what, expected, got.size, got.sha256))


def verify_file(
    uri: str, expected: FileRecord | None, what: str = "file", deep: bool = True
) -> None:
    """Check a file against its record: size only (``deep=False``), or size and sha256."""
    if expected is None:
        return
    fs, path = fs_and_path(uri)
    if not fs.exists(path):
        raise ChecksumMismatchError(
            f"{uri}: {what} is missing (its record says {expected.size} bytes)"
        )
    if not deep:
        size = int(fs.size(path))
        if size != expected.size:
            raise ChecksumMismatchError(mismatch(uri, what, expected, size))
        return
    got = file_record(uri)
    if got != expected:
        raise ChecksumMismatchError(mismatch(uri, what, expected, got.size, got.sha256))
