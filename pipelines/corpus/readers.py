"""Readers: one input file of a planned layout → raw records (file, row, fields).

Bad bytes never abort an ingest; they cost the smallest unit that holds them:

- **Encodings.** Text inputs are UTF-8 (a BOM is skipped) — the one encoding the manifest
  stores, and the only one that can be checked rather than guessed: Latin-1 decodes *any*
  bytes, so detecting or falling back to it would silently turn a UTF-16 or binary file into
  plausible captions. Files are decoded with ``surrogateescape`` (see ``layouts._open_text``):
  a CSV row or JSONL line holding a byte that is not UTF-8 (a Latin-1 ``é`` = ``b"\\xe9"``)
  becomes a ``"not UTF-8"`` reject naming the file, the line, the column and the bytes, with
  the ``iconv`` fix; every other row ingests. A CSV whose *header* is not UTF-8 has no usable
  column names, so the whole file is one ``"not UTF-8"`` reject. Stored ``raw`` text shows
  the bytes as ``\\xe9``. A webdataset ``.txt``/``.json`` member that is not UTF-8 rejects
  its sample the same way.
- **Files.** A file the plan found unreadable (a FIFO or other special file — never opened,
  it would block —, a Parquet shard that is not Parquet, a CSV that does not parse before its
  header) is one reject with ``source_row`` 0 ("the file as a whole"); so is a tar shard that
  is not a tar. Rows of a Parquet shard whose video tar is corrupt are each rejected.

Tar shards are read in place: a sample's video becomes the uri ``tar://<member>::<shard>``
(see :mod:`.layouts`), found from the tar's headers; no video bytes are read or written at
ingest. A video member that is cut short or corrupt is the decoder's to classify.

A failing disk or store (an ``OSError`` with an errno) is not bad input: it still raises.
"""

from __future__ import annotations

import csv
import json
import tarfile
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from ragvid.pipelines.corpus.layouts import (
    VIDEO_EXTS,
    InputFile,
    InputPlan,
    _basename,
    _open_text,
    _parent,
    encoding_problem,
    is_clean,
    is_corrupt,
    printable,
    tar_index,
    tar_uri,
    unreadable,
)
from ragvid.schemas.files import open_arrow
from ragvid.schemas.io import fs_and_path, join

# --- readers: one input file → raw records -----------------------------------------------


def read_records(f: InputFile, plan: InputPlan) -> Iterator[dict[str, Any]]:
    """Raw records of one input file: ``{source_file, source_row, values, error, raw}``.

    ``error`` is set (and ``values`` may be partial) when the record itself is malformed —
    such a record still counts as an input row and is rejected with that reason.
    """
    if f.problem:  # planned as unreadable: the file as a whole is one reject
        yield _rec(f, 0, {}, None, *f.problem)
        return
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet, "tar": _read_tar}
    yield from reader[f.kind](f, plan)


def _rec(
    f: InputFile,
    row: int,
    values: dict,
    raw: str | None,
    error: str | None = None,
    detail: str = "",
    field_: str | None = None,
) -> dict:
    return {
        "source_file": f.uri,
        "source_row": row,
        "values": values,
        "error": error,
        "detail": detail,
        "field": field_,
        "raw": raw,
    }


def _bad_csv_row(f: InputFile, line: int, row: list[str], header: list[str]) -> dict:
    """The reject of a CSV row holding bytes that are not UTF-8 (named by column)."""
    i = next(i for i, c in enumerate(row) if not is_clean(c))
    column = header[i] if i < len(header) else None
    what = f"column {column!r}: " if column else f"field {i + 1}: "
    raw = printable(json.dumps(row, ensure_ascii=False))[:2000]
    return _rec(f, line, {}, raw, "not UTF-8", what + encoding_problem(row[i]), column)


def _read_csv(f: InputFile, plan: InputPlan) -> Iterator[dict[str, Any]]:
    with _open_text(f.uri) as fh:
        reader = csv.reader(fh)
        header: list[str] | None = None
        start = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # e.g. an oversized field
                line, start = start, reader.line_num + 1
                yield _rec(f, line, {}, None, "malformed row", f"CSV parse error: {exc}")
                continue
            line, start = start, reader.line_num + 1
            if not row or not any(c.strip() for c in row):
                continue  # blank lines are not rows
            if header is None:  # clean: the plan made a file with an unclean one a reject
                header = [c.strip() for c in row]
                continue
            if not is_clean("".join(row)):
                yield _bad_csv_row(f, line, row, header)
                continue
            raw = json.dumps(row, ensure_ascii=False)[:2000]
            if len(row) != len(header):
                more = "extra" if len(row) > len(header) else "missing"
                detail = f"{more} columns: expected {len(header)} ({header}), got {len(row)}"
                yield _rec(f, line, {}, raw, "malformed row", detail)
                continue
            yield _rec(f, line, dict(zip(header, row, strict=True)), raw)


def _read_jsonl(f: InputFile, plan: InputPlan) -> Iterator[dict[str, Any]]:
    with _open_text(f.uri) as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if not is_clean(line):
                raw = printable(line.strip())[:2000]
                yield _rec(f, i, {}, raw, "not UTF-8", encoding_problem(line))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield _rec(f, i, {}, line[:2000], "malformed row", f"bad JSON: {exc}")
                continue
            if not isinstance(obj, dict):
                detail = f"expected a JSON object, got {type(obj).__name__}"
                yield _rec(f, i, {}, line[:2000], "malformed row", detail)
                continue
            yield _rec(f, i, obj, line.strip()[:2000])


def _read_parquet(f: InputFile, plan: InputPlan) -> Iterator[dict[str, Any]]:
    try:
        with open_arrow(f.uri) as fh:
            table = pq.read_table(fh)
    except Exception as exc:  # noqa: BLE001 - pyarrow's parse errors are untyped
        if not is_corrupt(exc):
            raise
        yield _rec(f, 0, {}, None, *unreadable(f.uri, "Parquet file", exc))
        return
    shard = _basename(f.uri).removesuffix(".parquet")
    base = _parent(f.uri)
    tar = join(base, shard + ".tar")
    tfs, tpath = fs_and_path(tar)
    try:
        in_tar = _tar_videos(tar) if tfs.exists(tpath) else {}
    except Exception as exc:  # noqa: BLE001 - see is_corrupt
        if not is_corrupt(exc):
            raise
        _, detail = unreadable(tar, "tar file", exc)
        for i, values in enumerate(table.to_pylist(), 1):
            raw = json.dumps(values, default=str, ensure_ascii=False)[:2000]
            yield _rec(f, i, {}, raw, "unreadable file", f"its videos' shard: {detail}")
        return
    files_dir = join(base, shard)
    for i, values in enumerate(table.to_pylist(), 1):
        key = values.get(plan.roles["id"] or "key")
        video = in_tar.get(str(key)) if key is not None else None
        if video is None and key is not None:
            for ext in VIDEO_EXTS:
                cand = join(files_dir, f"{key}{ext}")
                if tfs.exists(fs_and_path(cand)[1]):
                    video = cand
                    break
        if video is not None:
            values = {**values, "__video": video}
        yield _rec(f, i, values, json.dumps(values, default=str, ensure_ascii=False)[:2000])


def _split_member(name: str) -> tuple[str, str] | None:
    """webdataset naming: ``[dir/]<key>.<ext>`` → (key, lower-case ext), None without a dot."""
    name = name.rsplit("/", 1)[-1]
    if "." not in name:
        return None
    key, ext = name.split(".", 1)
    return key, ext.lower()


def _video_uri(member: str, shard_uri: str) -> str | None:
    try:
        return tar_uri(member, shard_uri)
    except ValueError:  # a member name holding '::': its row gets no video (a reject)
        return None


def _tar_videos(shard_uri: str) -> dict[str, str]:
    """key → ``tar://<member>::<shard>`` of each sample's video, from the header index alone
    (the first video member of a key wins). Nothing is extracted or read."""
    out: dict[str, str] = {}
    for member in tar_index(shard_uri):
        parts = _split_member(member)
        if parts and "." + parts[1] in VIDEO_EXTS and parts[0] not in out:
            uri = _video_uri(member, shard_uri)
            if uri is not None:
                out[parts[0]] = uri
    return out


def _tar_samples(shard_uri: str) -> tuple[dict[str, dict[str, bytes]], dict[str, str]]:
    """webdataset grouping in tar order: ``({key: {ext: bytes}}, {key: video uri})``. Only the
    small ``.txt``/``.json`` members are read; a video member becomes a ``tar://`` uri (its
    bytes are never read), any other member only makes its key a sample."""
    fs, path = fs_and_path(shard_uri)
    samples: dict[str, dict[str, bytes]] = {}
    videos: dict[str, str] = {}
    with fs.open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:*") as tar:
        for m in tar:
            parts = _split_member(m.name) if m.isfile() else None
            if parts is None:
                continue
            key, ext = parts
            members = samples.setdefault(key, {})
            if "." + ext in VIDEO_EXTS:
                uri = _video_uri(m.name, shard_uri)
                if uri is not None:
                    videos.setdefault(key, uri)
            elif ext in ("txt", "json"):
                members[ext] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return samples, videos


def _read_tar(f: InputFile, plan: InputPlan) -> Iterator[dict[str, Any]]:
    try:
        samples, videos = _tar_samples(f.uri)
    except Exception as exc:  # noqa: BLE001 - see is_corrupt
        if not is_corrupt(exc):
            raise
        yield _rec(f, 0, {}, None, *unreadable(f.uri, "tar file", exc))
        return
    for i, (key, members) in enumerate(samples.items(), 1):
        text = {
            ext: members[ext].decode("utf-8", "surrogateescape")
            for ext in ("json", "txt")
            if ext in members
        }
        bad = next((ext for ext, t in text.items() if not is_clean(t)), None)
        if bad is not None:
            raw = printable(text[bad])[:2000]
            detail = f"member {key}.{bad}: {encoding_problem(text[bad])}"
            column = "caption" if bad == "txt" else None
            yield _rec(f, i, {"key": key}, raw, "not UTF-8", detail, column)
            continue
        meta: Any = {}
        if "json" in text:
            try:
                meta = json.loads(text["json"])
            except json.JSONDecodeError:
                meta = {}  # only a fallback for the caption: no .txt → "missing field"
        if not isinstance(meta, dict):
            meta = {}
        caption = text.get("txt")
        values = {"key": key, "caption": caption if caption is not None else meta.get("caption")}
        if key in videos:
            values["__video"] = videos[key]
        yield _rec(f, i, values, json.dumps(values, ensure_ascii=False)[:2000])
