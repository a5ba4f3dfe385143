"""Readers: one input file of a planned layout → raw records (file, row, fields)."""

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
    _uri,
)
from ragvid.schemas.io import fs_and_path, join, makedirs, write_bytes_atomic

# --- readers: one input file → raw records -----------------------------------------------


def read_records(f: InputFile, plan: InputPlan) -> Iterator[dict[str, Any]]:
    """Raw records of one input file: ``{source_file, source_row, values, error, raw}``.

    ``error`` is set (and ``values`` may be partial) when the record itself is malformed —
    such a record still counts as an input row and is rejected with that reason.
    """
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet, "tar": _read_tar}
    yield from reader[f.kind](f, plan)


def _rec(
    f: InputFile, row: int, values: dict, raw: str | None, error: str | None = None, detail=""
) -> dict:
    return {
        "source_file": f.uri,
        "source_row": row,
        "values": values,
        "error": error,
        "detail": detail,
        "raw": raw,
    }


def _read_csv(f: InputFile, plan: InputPlan) -> Iterator[dict[str, Any]]:
    try:
        with _open_text(f.uri) as fh:
            reader = csv.reader(fh)
            header: list[str] | None = None
            start = 1
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:  # e.g. a NUL byte or an oversized field
                    line, start = start, reader.line_num + 1
                    yield _rec(f, line, {}, None, "malformed row", f"CSV parse error: {exc}")
                    continue
                line, start = start, reader.line_num + 1
                if not row or not any(c.strip() for c in row):
                    continue  # blank lines are not rows
                if header is None:
                    header = [c.strip() for c in row]
                    continue
                raw = json.dumps(row, ensure_ascii=False)[:2000]
                if len(row) != len(header):
                    more = "extra" if len(row) > len(header) else "missing"
                    detail = f"{more} columns: expected {len(header)} ({header}), got {len(row)}"
                    yield _rec(f, line, {}, raw, "malformed row", detail)
                    continue
                yield _rec(f, line, dict(zip(header, row, strict=True)), raw)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{f.uri} is not UTF-8 ({exc}); re-encode it as UTF-8") from None


def _read_jsonl(f: InputFile, plan: InputPlan) -> Iterator[dict[str, Any]]:
    with _open_text(f.uri) as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
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
    fs, path = fs_and_path(f.uri)
    with fs.open(path, "rb") as fh:
        table = pq.read_table(fh)
    shard = _basename(f.uri).removesuffix(".parquet")
    base = _parent(f.uri)
    tar_uri = join(base, shard + ".tar")
    tfs, tpath = fs_and_path(tar_uri)
    extracted = _extract_tar(tar_uri, plan.videos_dir, shard) if tfs.exists(tpath) else {}
    files_dir = join(base, shard)
    for i, values in enumerate(table.to_pylist(), 1):
        key = values.get(plan.roles["id"] or "key")
        video = extracted.get(str(key)) if key is not None else None
        if video is None and key is not None:
            for ext in VIDEO_EXTS:
                cand = join(files_dir, f"{key}{ext}")
                if tfs.exists(fs_and_path(cand)[1]):
                    video = cand
                    break
        if video is not None:
            values = {**values, "__video": video}
        yield _rec(f, i, values, json.dumps(values, default=str, ensure_ascii=False)[:2000])


def _extract_tar(tar_uri: str, videos_dir: str | None, shard: str) -> dict[str, str]:
    """Extract a webdataset shard's videos once (idempotent) → key → extracted path."""
    out: dict[str, str] = {}
    samples = _tar_samples(tar_uri)
    target = join(videos_dir or _parent(tar_uri), shard)
    makedirs(target)
    tfs, _ = fs_and_path(target)
    for key, members in samples.items():
        ext = next((e for e in members if "." + e in VIDEO_EXTS), None)
        if ext is None:
            continue
        dest = join(target, f"{key}.{ext}")
        data = members[ext]
        dfs, dpath = fs_and_path(dest)
        if not (dfs.exists(dpath) and dfs.size(dpath) == len(data)):
            write_bytes_atomic(dest, data)
        out[key] = _uri(dfs, dpath, dest)
    return out


def _tar_samples(tar_uri: str) -> dict[str, dict[str, bytes]]:
    """webdataset grouping: ``<key>.<ext>`` members → {key: {ext: bytes}} in tar order."""
    fs, path = fs_and_path(tar_uri)
    samples: dict[str, dict[str, bytes]] = {}
    with fs.open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:*") as tar:
        for m in tar:
            if not m.isfile():
                continue
            name = m.name.rsplit("/", 1)[-1]
            if "." not in name:
                continue
            key, ext = name.split(".", 1)
            data = tar.extractfile(m).read()  # type: ignore[union-attr]
            samples.setdefault(key, {})[ext.lower()] = data
    return samples


def _read_tar(f: InputFile, plan: InputPlan) -> Iterator[dict[str, Any]]:
    shard = _basename(f.uri).removesuffix(".tar")
    extracted = _extract_tar(f.uri, plan.videos_dir, shard)
    for i, (key, members) in enumerate(_tar_samples(f.uri).items(), 1):
        meta: dict[str, Any] = {}
        if "json" in members:
            try:
                meta = json.loads(members["json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                meta = {}
        caption = members["txt"].decode("utf-8", "replace") if "txt" in members else None
        values = {"key": key, "caption": caption if caption is not None else meta.get("caption")}
        if key in extracted:
            values["__video"] = extracted[key]
        yield _rec(f, i, values, json.dumps(values, ensure_ascii=False)[:2000])
