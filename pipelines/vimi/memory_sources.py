"""Sources of a VIMI image-text memory: plan the input units, read each into rows or rejects.

Three kinds of source become IMAGE_MEMORY rows (``schemas/tables.py``), each read where it is
— no image is copied or decoded at ingest:

* ``img2dataset`` — an img2dataset output folder (:mod:`.memory_img2dataset`): webdataset
  shards (``NNNNN.tar``, members read in place as ``tar://<member>::<shard>`` with the
  member's byte offset and size), the ``files`` format (``NNNNN/<key>.jpg``), each with its
  ``NNNNN.parquet``; rows that failed to download are rejects with img2dataset's error;
* ``table`` — a Parquet / CSV / JSONL table of (image uri, caption) (:mod:`.memory_tables`);
* ``keyframes`` — the first / middle frames of a ragvid corpus's videos, from the workspace
  manifest (:mod:`.memory_keyframes`).

A *unit* is the smallest piece one worker reads (a shard, a table file, a manifest part):
:func:`plan_sources` lists them, :func:`read_unit` turns one into ``("row", row)`` /
``("reject", reject)`` pairs — every input row yields exactly one, so ingested + rejected =
read. Rejects follow the REJECTS table (``video_id`` holds the item id when there is one).
The Beam pipeline (:mod:`.memory_ingest`) only wires these functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ragvid.schemas.io import exists, fs_and_path

KINDS = ("auto", "img2dataset", "table", "keyframes")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")
Record = tuple[str, dict[str, Any]]


@dataclass
class SourceUnit:
    """One piece of one source, read by one worker: ``kind`` says which reader; ``uri`` is the
    unit (shard prefix, table file, manifest part); ``source`` is the IMAGE_MEMORY ``source``
    value; ``index`` the source's place in the ingest's list (duplicates: earlier wins)."""

    kind: str
    uri: str
    source: str
    index: int
    files: dict[str, str] = field(default_factory=dict)  # img2dataset: parquet/tar/folder
    options: dict[str, Any] = field(default_factory=dict)


# --- rows and rejects -------------------------------------------------------------------------


def memory_row(
    *,
    item_id: str,
    image_uri: str,
    caption: str,
    source: str,
    source_file: str,
    source_row: int,
    frame_ts: float | None = None,
    video_id: str | None = None,
    url: str | None = None,
    width: int | None = None,
    height: int | None = None,
    tar_offset: int | None = None,
    tar_size: int | None = None,
) -> dict[str, Any]:
    """An IMAGE_MEMORY row (every column, in the table's order)."""
    return {
        "item_id": item_id,
        "image_uri": image_uri,
        "caption": caption,
        "frame_ts": frame_ts,
        "video_id": video_id,
        "url": url,
        "width": width,
        "height": height,
        "tar_offset": tar_offset,
        "tar_size": tar_size,
        "source": source,
        "source_file": source_file,
        "source_row": int(source_row),
    }


def reject(
    source_file: str,
    source_row: int,
    reason: str,
    detail: str,
    field_: str | None = None,
    item_id: str | None = None,
    raw: Any = None,
) -> dict[str, Any]:
    """A REJECTS row: ``reason`` is short (it is counted), ``detail`` names file, row and fix."""
    if raw is not None and not isinstance(raw, str):
        raw = json.dumps(raw, default=_short, ensure_ascii=False)
    return {
        "source_file": source_file,
        "source_row": int(source_row),
        "field": field_,
        "reason": reason,
        "detail": detail,
        "video_id": item_id,
        "raw": raw[:2000] if raw else None,
    }


def _short(v: Any) -> str:
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    return str(v)


def text(v: Any) -> str | None:
    """A cell as stripped text (None for null / NaN / missing)."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace").strip()
    return str(v).strip()


def image_format(head: bytes) -> str | None:
    """The image format the first bytes announce (JPEG, PNG, WebP, GIF, BMP, TIFF) or None —
    a cheap check at ingest that a member or file is an image at all (no decode)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def local_file_problem(uri: str, what: str = "image") -> tuple[str, str] | None:
    """Why the local file ``uri`` cannot be an ingested image — missing, not a regular file,
    empty, or (images) bytes that are not an image — from a stat and a 16-byte read. Remote
    URIs are not checked (None)."""
    if "://" in uri and not uri.startswith("file://"):
        return None
    path = uri.removeprefix("file://")
    if not os.path.exists(path):
        return "file not found", f"{what} {uri} does not exist"
    if not os.path.isfile(path):  # a folder, FIFO or device: never opened
        return "not a regular file", f"{what} {uri} is not a regular file — replace it"
    if os.path.getsize(path) == 0:
        return "empty file", f"{what} {uri} is empty (0 bytes)"
    if what == "image":
        with open(path, "rb") as fh:
            head = fh.read(16)
        if image_format(head) is None:
            return "not an image", f"{uri} is not a JPEG/PNG/WebP/GIF/BMP/TIFF image ({head!r})"
    return None


# --- planning -------------------------------------------------------------------------------


def _abs(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


def detect_kind(uri: str) -> str:
    """``img2dataset`` for a folder of img2dataset shards (or one ``.tar`` shard), ``table``
    for a ``.csv`` / ``.parquet`` / ``.jsonl`` file; otherwise a ValueError saying what is
    accepted."""
    from ragvid.pipelines.vimi.memory_img2dataset import is_img2dataset

    fs, path = fs_and_path(uri)
    if fs.isdir(path):
        if is_img2dataset(uri):
            return "img2dataset"
        raise ValueError(
            f"memory source {uri} is a folder but not an img2dataset output (no NNNNN.tar, "
            "NNNNN.parquet, NNNNN_stats.json or NNNNN/ shards) — pass an img2dataset output "
            f"folder, a table file ({', '.join(TABLE_SUFFIXES)}), or corpus=<name> for keyframes"
        )
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(".tar"):
        return "img2dataset"
    if name.endswith(TABLE_SUFFIXES):
        return "table"
    raise ValueError(
        f"memory source {uri}: cannot tell what it is from its name — pass an img2dataset "
        f"output folder (or a .tar shard), a table file ({', '.join(TABLE_SUFFIXES)}), or "
        "corpus=<name> for a corpus's keyframes"
    )


def source_name(uri: str) -> str:
    """The ``source`` value of a source: its file or folder name (``.csv`` etc. dropped)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (*TABLE_SUFFIXES, ".tar"):
        name = name.removesuffix(suffix)
    return name or uri


def plan_sources(
    sources: Sequence[str],
    kind: str = "auto",
    *,
    corpora: Sequence[str] = (),
    workspace: Any = None,
    keyframes: Sequence[str] = ("first", "middle"),
    check_files: bool = True,
) -> list[SourceUnit]:
    """The units of every source, in order (``sources`` first, then each corpus's keyframes).

    Raises FileNotFoundError for a source that does not exist or a corpus without a manifest,
    ValueError for an unknown ``kind`` or a source of no known kind (saying what is accepted).
    """
    from ragvid.pipelines.vimi.memory_img2dataset import plan_img2dataset
    from ragvid.pipelines.vimi.memory_keyframes import plan_keyframes
    from ragvid.pipelines.vimi.memory_tables import plan_table

    if kind not in KINDS:
        raise ValueError(f"unknown memory source kind {kind!r}. Available: {', '.join(KINDS)}")
    if isinstance(sources, str):
        sources = [sources]
    if kind == "keyframes" and sources:
        raise ValueError(
            f"kind='keyframes' reads corpora of the workspace: pass corpus=<name>, not sources "
            f"{list(sources)}"
        )
    units: list[SourceUnit] = []
    options = {"check_files": check_files}
    for i, raw in enumerate(sources):
        uri = _abs(str(raw))
        if not exists(uri):
            raise FileNotFoundError(
                f"memory source {raw} does not exist — pass an img2dataset output folder, a "
                f"table file ({', '.join(TABLE_SUFFIXES)}) or corpus=<name>"
            )
        k = detect_kind(uri) if kind == "auto" else kind
        if k == "img2dataset":
            units += plan_img2dataset(uri, source_name(uri), i, options)
        elif k == "table":
            units += plan_table(uri, source_name(uri), i, options)
        else:
            raise ValueError(f"memory source {raw}: kind {k!r} reads corpora — use corpus=")
    for j, corpus in enumerate(corpora):
        if workspace is None:
            raise ValueError("corpus keyframes need the workspace that holds the corpus")
        opts = {**options, "keyframes": tuple(keyframes)}
        units += plan_keyframes(workspace, corpus, len(sources) + j, opts)
    if not units:
        raise ValueError(
            "no memory sources: pass img2dataset folders / tables, or corpus=<name> for keyframes"
        )
    return units


def read_unit(unit: SourceUnit) -> Iterator[Record]:
    """``("row", IMAGE_MEMORY row)`` or ``("reject", REJECTS row)`` per input row of ``unit``."""
    from ragvid.pipelines.vimi.memory_img2dataset import read_img2dataset
    from ragvid.pipelines.vimi.memory_keyframes import read_keyframes
    from ragvid.pipelines.vimi.memory_tables import read_table_unit

    readers = {
        "img2dataset": read_img2dataset,
        "table": read_table_unit,
        "keyframes": read_keyframes,
    }
    yield from readers[unit.kind](unit)
