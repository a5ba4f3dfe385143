"""img2dataset output folders as memory sources: one unit per shard ``NNNNN``.

img2dataset (the downloader LAION-scale image-text sets are fetched with) writes per shard
``NNNNN.parquet`` (``key, url, caption, status, error_message, width, height, …``: one row
per sample, failures included) and ``NNNNN_stats.json``, plus the images in one of its output
formats:

* ``webdataset`` — ``NNNNN.tar`` with ``<key>.jpg|png|webp`` + ``<key>.txt`` + ``<key>.json``.
  The tar stays as it is: a row's ``image_uri`` is ``tar://<member>::<abs shard path>`` and
  ``tar_offset`` / ``tar_size`` are the member's data offset and size (tarfile's
  ``offset_data`` / ``size``), so a loader reads just those bytes with one seek
  (:func:`ragvid.pipelines.vimi.images.load_image`). A gzip/bz2/xz tar has no usable offsets:
  they are left null and the loader streams to the member;
* ``files`` — ``NNNNN/<key>.jpg`` (+ ``.txt``, ``.json``): ``image_uri`` is the file's path;
* ``parquet`` — the image bytes inside the parquet (a ``jpg``/``png``/``webp`` column). The
  memory keeps images where they are and a Parquet cell has no byte range a loader could read
  cheaply, so these rows are **rejected** ("image bytes in parquet") with the fix: rerun
  img2dataset with ``--output_format webdataset`` (or ``files``).

The parquet's rows are the input rows: ``status != "success"`` → reject "download failed"
with img2dataset's ``error_message``; a success whose image is missing, cut short by the end
of the shard, or whose first bytes are not an image → reject (the images are never decoded at
ingest: a 16-byte header check). Without a parquet, the tar's (or folder's) samples are the
rows, their ``.json`` standing in for the parquet row. The caption is the parquet's, else the
``.txt``, else the ``.json``'s. ``item_id`` is img2dataset's key, already unique across shards
(it starts with the shard number); a key that does not gets the shard number prefixed.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from ragvid.pipelines.corpus.layouts import is_corrupt, tar_uri, unreadable
from ragvid.pipelines.vimi.memory_sources import (
    IMAGE_EXTS,
    Record,
    SourceUnit,
    image_format,
    memory_row,
    reject,
    text,
)
from ragvid.schemas.files import open_arrow
from ragvid.schemas.io import fs_and_path, join

_SHARD = re.compile(r"(\d+)(\.tar|\.parquet|_stats\.json)?")
_PARQUET_COLUMNS = ("key", "url", "caption", "status", "error_message", "width", "height")
_FIX_PARQUET = (
    "img2dataset's 'parquet' output format keeps the image bytes inside the parquet, and the "
    "memory keeps images where they are (tar members / files) — rerun img2dataset with "
    "--output_format webdataset (or files)"
)


def _entries(folder: str) -> list[tuple[str, str, bool]]:
    """(name, uri, is_dir) of a folder's entries, sorted."""
    fs, path = fs_and_path(folder)
    out = []
    for info in fs.ls(path, detail=True):
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        out.append((name, join(folder, name), info.get("type") == "directory"))
    return sorted(out)


def is_img2dataset(folder: str) -> bool:
    """True when the folder holds img2dataset shards (``NNNNN.tar|.parquet|_stats.json`` or
    ``NNNNN/``)."""
    for name, _, is_dir in _entries(folder):
        m = _SHARD.fullmatch(name)
        if m and (m.group(2) or is_dir):
            return True
    return False


def plan_img2dataset(
    uri: str, source: str, index: int, options: dict[str, Any]
) -> list[SourceUnit]:
    """One unit per shard number, with the shard's ``parquet`` / ``tar`` / ``folder``."""
    fs, path = fs_and_path(uri)
    if not fs.isdir(path):  # one .tar shard (and its parquet beside it, if any)
        files = {"tar": uri}
        pq_uri = uri.removesuffix(".tar") + ".parquet"
        if fs.exists(fs_and_path(pq_uri)[1]):
            files["parquet"] = pq_uri
        return [SourceUnit("img2dataset", uri.removesuffix(".tar"), source, index, files, options)]
    shards: dict[str, dict[str, str]] = {}
    for name, entry, is_dir in _entries(uri):
        m = _SHARD.fullmatch(name)
        if not m:
            continue
        kind = {".tar": "tar", ".parquet": "parquet", None: "folder" if is_dir else None}.get(
            m.group(2)
        )
        if kind:
            shards.setdefault(m.group(1), {})[kind] = entry
    units = [
        SourceUnit("img2dataset", join(uri, shard), source, index, files, options)
        for shard, files in sorted(shards.items())
    ]
    if not units:
        raise ValueError(
            f"memory source {uri}: no img2dataset shards (NNNNN.parquet with NNNNN.tar or "
            "NNNNN/) — is it an img2dataset output folder?"
        )
    return units


# --- the images of a shard ------------------------------------------------------------------


def _split(name: str) -> tuple[str, str] | None:
    name = name.rsplit("/", 1)[-1]
    if "." not in name:
        return None
    key, ext = name.split(".", 1)
    return key, ext.lower()


def _tar_samples(shard: str) -> tuple[dict[str, dict[str, Any]], str | None]:
    """key → {image: {uri, offset, size, head, cut}, txt: bytes, json: bytes} of a tar shard,
    from one pass over its headers (only ``.txt``/``.json`` members and 16 bytes of each
    image are read), and why the walk stopped early (a shard cut short), if it did."""
    fs, path = fs_and_path(shard)
    total = fs.size(path)
    samples: dict[str, dict[str, Any]] = {}
    stopped = None
    end, last = 0, ""  # where the last member's (512-byte padded) data ends
    with fs.open(path, "rb") as fh:
        magic = fh.read(6)
        fh.seek(0)
        compressed = magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic[:6] == b"\xfd7zXZ\x00"
        with tarfile.open(fileobj=fh, mode="r:*") as tar:
            try:
                for m in tar:
                    end, last = m.offset_data + -(-m.size // 512) * 512, m.name
                    parts = _split(m.name) if m.isfile() else None
                    if parts is None:
                        continue
                    key, ext = parts
                    sample = samples.setdefault(key, {})
                    if ext in IMAGE_EXTS and "image" not in sample:
                        cut = not compressed and m.offset_data + m.size > total
                        head = b"" if cut else tar.extractfile(m).read(16)  # type: ignore[union-attr]
                        try:
                            uri = tar_uri(m.name, shard)
                        except ValueError:
                            uri = None  # a member name holding '::': its row is rejected
                        sample["image"] = {
                            "uri": uri,
                            "member": m.name,
                            "offset": None if compressed else m.offset_data,
                            "size": None if compressed else m.size,
                            "head": head,
                            "cut": cut,
                        }
                    elif ext in ("txt", "json") and ext not in sample:
                        sample[ext] = tar.extractfile(m).read()  # type: ignore[union-attr]
            except (tarfile.ReadError, EOFError) as exc:
                if not samples:
                    raise
                stopped = f"{shard} ends inside a member ({exc}): a truncated shard"
    if stopped is None and not compressed and last and total < end + 1024:
        # tarfile stops quietly at a missing header: an intact tar ends with 2 zero blocks
        stopped = (
            f"{shard} is truncated: it ends at byte {total}, without the end-of-archive marker "
            f"after its last member {last!r} — the members after it are lost"
        )
    return samples, stopped


def _folder_samples(folder: str) -> dict[str, dict[str, Any]]:
    """The same for img2dataset's ``files`` format (``NNNNN/<key>.<ext>``)."""
    fs, _ = fs_and_path(folder)
    samples: dict[str, dict[str, Any]] = {}
    for name, uri, is_dir in _entries(folder):
        parts = None if is_dir else _split(name)
        if parts is None:
            continue
        key, ext = parts
        sample = samples.setdefault(key, {})
        _, path = fs_and_path(uri)
        if ext in IMAGE_EXTS and "image" not in sample:
            with fs.open(path, "rb") as fh:
                head = fh.read(16)
            sample["image"] = {"uri": uri, "offset": None, "size": None, "head": head, "cut": False}
        elif ext in ("txt", "json") and ext not in sample:
            with fs.open(path, "rb") as fh:
                sample[ext] = fh.read()
    return samples


def _shard_samples(unit: SourceUnit) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The shard's samples and, when its images cannot be read, why (every row names it)."""
    if "tar" in unit.files:
        try:
            return _tar_samples(unit.files["tar"])
        except Exception as exc:  # noqa: BLE001 - tarfile's parse errors; see is_corrupt
            if not is_corrupt(exc):
                raise
            return {}, unreadable(unit.files["tar"], "tar file", exc)[1]
    if "folder" in unit.files:
        return _folder_samples(unit.files["folder"]), None
    return {}, None


# --- rows -------------------------------------------------------------------------------------


def _meta(sample: dict[str, Any]) -> dict[str, Any]:
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = {}
    return meta if isinstance(meta, dict) else {}


def _int(v: Any) -> int | None:
    try:
        return None if v is None or v != v else int(v)
    except (TypeError, ValueError):
        return None


def _row(
    unit: SourceUnit,
    source_file: str,
    i: int,
    values: dict[str, Any],
    sample: dict[str, Any],
    images_problem: str | None,
) -> Record:
    shard = unit.uri.rstrip("/").rsplit("/", 1)[-1]
    where = f"{source_file} row {i}"
    raw = {k: v for k, v in values.items() if not k.startswith("__")}
    key = text(values.get("key"))
    if not key:
        return "reject", reject(
            source_file, i, "missing field", f"{where}: no 'key'", "key", None, raw
        )
    item_id = key if key.startswith(shard) else f"{shard}_{key}"
    status = text(values.get("status"))
    if status not in (None, "", "success"):
        error = text(values.get("error_message")) or ""
        detail = f"{where}: img2dataset status {status!r}: {error}"
        return "reject", reject(source_file, i, "download failed", detail, "status", item_id, raw)
    if values.get("__image_bytes"):
        detail = f"{where}: {_FIX_PARQUET}"
        return "reject", reject(
            source_file, i, "image bytes in parquet", detail, "jpg", item_id, raw
        )
    image = sample.get("image")
    where_images = unit.files.get("tar") or unit.files.get("folder") or f"{unit.uri}.tar"
    if image is None or image["uri"] is None:
        why = images_problem or f"no image {key}.<{'|'.join(IMAGE_EXTS[:3])}…> in {where_images}"
        reason = "file not found"
        if images_problem:
            reason = "truncated" if "truncated" in images_problem else "unreadable file"
        return "reject", reject(source_file, i, reason, f"{where}: {why}", "key", item_id, raw)
    if image["cut"]:
        detail = f"{where}: image {image['member']} is cut off: {where_images} ends before it does"
        return "reject", reject(source_file, i, "truncated", detail, "key", item_id, raw)
    if image_format(image["head"]) is None:
        detail = (
            f"{where}: {image['uri']} is not a JPEG/PNG/WebP/GIF/BMP/TIFF image (starts with "
            f"{image['head']!r}) — a corrupt download"
        )
        return "reject", reject(source_file, i, "not an image", detail, "key", item_id, raw)
    meta = _meta(sample)
    caption = text(values.get("caption"))
    if not caption and "txt" in sample:
        caption = text(sample["txt"])
    if not caption:
        caption = text(meta.get("caption"))
    if caption is None or not caption:
        reason = "missing field" if caption is None else "empty field"
        detail = f"{where}: no caption (parquet 'caption', {key}.txt or {key}.json)"
        return "reject", reject(source_file, i, reason, detail, "caption", item_id, raw)
    url = text(values.get("url")) or text(meta.get("url"))
    row = memory_row(
        item_id=item_id,
        image_uri=image["uri"],
        caption=caption,
        source=unit.source,
        source_file=source_file,
        source_row=i,
        url=url or None,
        width=_int(values.get("width", meta.get("width"))),
        height=_int(values.get("height", meta.get("height"))),
        tar_offset=image["offset"],
        tar_size=image["size"],
    )
    return "row", row


def read_img2dataset(unit: SourceUnit) -> Iterator[Record]:
    """The rows / rejects of one shard (module docstring)."""
    samples, problem = _shard_samples(unit)
    pq_uri = unit.files.get("parquet")
    if pq_uri is None:  # no parquet: the samples are the rows
        source_file = unit.files.get("tar") or unit.files.get("folder") or unit.uri
        if problem and not samples:
            yield "reject", reject(source_file, 0, "unreadable file", problem)
            return
        for i, (key, sample) in enumerate(samples.items(), 1):
            meta = _meta(sample)
            values = {"key": key, **{k: meta.get(k) for k in _PARQUET_COLUMNS if k != "key"}}
            yield _row(unit, source_file, i, values, sample, problem)
        return
    try:
        with open_arrow(pq_uri) as fh:
            pf = pq.ParquetFile(fh)
            names = pf.schema_arrow.names
            image_cols = [c for c in names if c.lower() in IMAGE_EXTS]
            columns = [c for c in _PARQUET_COLUMNS if c in names]
            table = pf.read(columns=columns)
            has_bytes = (
                pf.read(columns=image_cols[:1]).column(0).is_valid().to_pylist()
                if image_cols
                else None
            )
    except Exception as exc:  # noqa: BLE001 - pyarrow's parse errors are untyped
        if not is_corrupt(exc):
            raise
        yield "reject", reject(pq_uri, 0, *unreadable(pq_uri, "Parquet file", exc))
        return
    for i, values in enumerate(table.to_pylist(), 1):
        if (
            has_bytes is not None
            and has_bytes[i - 1]
            and "image" not in samples.get(text(values.get("key")) or "", {})
        ):
            values["__image_bytes"] = True
        yield _row(unit, pq_uri, i, values, samples.get(text(values.get("key")) or "", {}), problem)
