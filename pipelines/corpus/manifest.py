"""Manifest rows from corpus inputs: layout detection, per-file readers, row validation.

Plain functions, no engine: the Beam adapter (``beam_manifest``) only wires them together,
and anything else (a Ray job, a test) can call them directly. Supported layouts:

* ``webvid`` — WebVid ``results_*.csv`` partitions (a file or a folder):
  ``videoid, contentUrl, duration, page_dir, name``; ``contentUrl`` may be a URL or a path
  relative to the CSV's folder.
* ``video2dataset`` — a video2dataset output folder: ``NNNNN.parquet`` shards (``key``,
  ``caption``, ``url``, ``status``, …) with the videos in ``NNNNN.tar`` (webdataset:
  ``<key>.mp4`` + ``<key>.txt``/``.json``) or ``NNNNN/<key>.mp4`` (files format). Tar members
  are extracted once to ``<videos_dir>/<shard>/<key>.mp4`` so decord/PyAV can open them by
  path; the manifest ``uri`` points there. Without a parquet, the tar's samples are the rows.
* ``folder`` — video files plus a captions ``*.csv`` or ``*.jsonl`` (id/caption/file columns
  detected by name, or set in ``ManifestConfig``); without a file column the video is
  ``<id>.<ext>`` in the folder (or its ``videos/``).

``source_row`` is 1-based: the line where a CSV record starts (the header is line 1), the
line of a JSONL record, the row of a parquet shard, the sample of a tar.
"""

from __future__ import annotations

import csv
import json
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ragvid.schemas.config import ManifestConfig
from ragvid.schemas.io import fs_and_path, join, makedirs, write_bytes_atomic

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
ROLES = ("id", "caption", "uri", "duration")
# candidate column names per role, per layout (first present wins)
CANDIDATES = {
    "webvid": {
        "id": ("videoid",),
        "caption": ("name",),
        "uri": ("contentUrl",),
        "duration": ("duration",),
    },
    "video2dataset": {
        "id": ("key",),
        "caption": ("caption", "txt"),
        "uri": ("url",),
        "duration": ("duration",),
    },
    "folder": {
        "id": ("video_id", "videoid", "key", "id"),
        "caption": ("caption", "name", "text", "prompt"),
        "uri": ("file", "path", "filename", "video", "uri", "contentUrl"),
        "duration": ("duration_s", "duration"),
    },
}
REQUIRED_WEBVID = ("videoid", "contentUrl", "name")


@dataclass(frozen=True)
class InputFile:
    """One input file and how to read it."""

    uri: str
    kind: str  # "csv" | "jsonl" | "parquet" | "tar"
    columns: tuple[str, ...] = ()  # header / schema / keys seen


@dataclass(frozen=True)
class InputPlan:
    """What an ingest reads: the layout, its files, the column roles and the extra columns."""

    input_path: str
    layout: str
    files: tuple[InputFile, ...]
    roles: dict[str, str | None]  # role → column name
    extra_columns: tuple[str, ...]
    videos: dict[str, str] = field(default_factory=dict)  # folder layout: id/stem → video uri
    videos_dir: str | None = None  # video2dataset: where tar members are extracted


def _uri(fs, path: str, like: str) -> str:
    """Path back as a URI in the form the user gave (local → absolute path)."""
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if proto in ("file", "local"):
        import os

        return os.path.abspath(path)
    return path if "://" in path else f"{proto}://{path}"


def _ls(uri: str) -> list[str]:
    fs, path = fs_and_path(uri)
    return sorted(_uri(fs, p, uri) for p in fs.ls(path, detail=False))


def _basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def detect_layout(input_path: str) -> str:
    """Guess the layout of ``input_path`` (see module docstring) or say what was expected."""
    fs, path = fs_and_path(input_path)
    if not fs.exists(path):
        raise FileNotFoundError(f"input {input_path} does not exist: pass a corpus file/folder")
    if fs.isfile(path):
        name = _basename(path).lower()
        if name.endswith((".parquet", ".tar")):
            return "video2dataset"
        if name.endswith(".jsonl"):
            return "folder"
        if name.endswith(".csv"):
            header = _csv_header(_uri(fs, path, input_path))
            return "webvid" if set(REQUIRED_WEBVID) <= set(header) else "folder"
        raise ValueError(
            f"input {input_path}: cannot tell its layout from the name; pass a results_*.csv, "
            "a video2dataset .parquet/.tar shard, a captions .csv/.jsonl, or a folder"
        )
    names = [_basename(p) for p in fs.ls(path, detail=False)]
    if any(re.fullmatch(r"results_.*\.csv", n) for n in names):
        return "webvid"
    if any(n.endswith((".parquet", ".tar")) for n in names):
        return "video2dataset"
    if any(n.endswith((".csv", ".jsonl")) for n in names):
        return "folder"
    raise ValueError(
        f"input {input_path}: no results_*.csv (WebVid), *.parquet/*.tar (video2dataset) or "
        "captions *.csv/*.jsonl (folder of videos) found — point at the corpus's folder, or "
        "pass --layout"
    )


def _open_text(uri: str):
    fs, path = fs_and_path(uri)
    return fs.open(path, "rt", encoding="utf-8-sig", newline="", errors="strict")


def _csv_header(uri: str) -> list[str]:
    try:
        with _open_text(uri) as fh:
            for row in csv.reader(fh):
                if row and any(c.strip() for c in row):
                    return [c.strip() for c in row]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{uri} is not UTF-8 ({exc}); re-encode it as UTF-8") from None
    return []


def _jsonl_keys(uri: str) -> list[str]:
    keys: dict[str, None] = {}
    with _open_text(uri) as fh:
        for line in fh:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                keys.update(dict.fromkeys(obj))
    return list(keys)


def plan_inputs(
    input_path: str, config: ManifestConfig, videos_dir: str | None = None
) -> InputPlan:
    """List the input files of ``input_path`` and resolve the column roles and extras."""
    fs, path = fs_and_path(input_path)
    if not fs.exists(path):
        raise FileNotFoundError(f"input {input_path} does not exist: pass a corpus file/folder")
    layout = detect_layout(input_path) if config.layout == "auto" else config.layout
    top = _uri(fs, path, input_path)
    entries = [top] if fs.isfile(path) else _ls(top)
    files: list[InputFile] = []
    videos: dict[str, str] = {}
    if layout == "webvid":
        csvs = [e for e in entries if e.endswith(".csv")]
        if not fs.isfile(path):
            csvs = [e for e in csvs if re.fullmatch(r"results_.*\.csv", _basename(e))]
        files = [InputFile(u, "csv", tuple(_csv_header(u))) for u in csvs]
        for f in files:
            missing = [c for c in REQUIRED_WEBVID if c not in f.columns]
            if missing and f.columns:
                raise ValueError(
                    f"{f.uri}: header lacks WebVid column(s) {missing} (has {list(f.columns)}); "
                    "WebVid CSVs have videoid, contentUrl, duration, page_dir, name — or pass "
                    "--layout folder"
                )
    elif layout == "video2dataset":
        pqs = [e for e in entries if e.endswith(".parquet")]
        tars = [e for e in entries if e.endswith(".tar")]
        with_pq = {_basename(p).removesuffix(".parquet") for p in pqs}
        files = [InputFile(u, "parquet", tuple(_parquet_columns(u))) for u in pqs]
        files += [
            InputFile(u, "tar", ("key", "caption"))
            for u in tars
            if _basename(u).removesuffix(".tar") not in with_pq
        ]
    elif layout == "folder":
        caps = [e for e in entries if e.endswith((".csv", ".jsonl"))]
        files = [
            InputFile(u, "csv", tuple(_csv_header(u)))
            if u.endswith(".csv")
            else InputFile(u, "jsonl", tuple(_jsonl_keys(u)))
            for u in caps
        ]
        base = _parent(top) if fs.isfile(path) else top
        for folder in (base, join(base, "videos")):
            ffs, fpath = fs_and_path(folder)
            if ffs.isdir(fpath):
                for v in _ls(folder):
                    if v.lower().endswith(VIDEO_EXTS):
                        videos.setdefault(_basename(v).rsplit(".", 1)[0], v)
    else:
        raise ValueError(
            f"unknown layout '{layout}'. Available: auto, webvid, video2dataset, folder"
        )
    if not files:
        raise ValueError(
            f"input {input_path}: no {layout} input files found (an empty corpus) — check the "
            "path and --layout"
        )
    columns = list(dict.fromkeys(c for f in files for c in f.columns))
    roles = _roles(layout, columns, config)
    if roles["caption"] is None or (roles["id"] is None and roles["uri"] is None):
        raise ValueError(
            f"input {input_path}: cannot find the caption and id/file columns among {columns}; "
            "name them with --id-column/--caption-column/--uri-column"
        )
    mapped = {c for r, c in roles.items() if c and not (layout == "video2dataset" and r == "uri")}
    extras = tuple(c for c in columns if c not in mapped)
    if layout == "video2dataset" and videos_dir is None:
        raise ValueError("video2dataset inputs need videos_dir= (where tar members are extracted)")
    return InputPlan(top, layout, tuple(files), roles, extras, videos, videos_dir)


def _parquet_columns(uri: str) -> list[str]:
    fs, path = fs_and_path(uri)
    with fs.open(path, "rb") as fh:
        return list(pq.ParquetFile(fh).schema_arrow.names)


def _roles(layout: str, columns: list[str], config: ManifestConfig) -> dict[str, str | None]:
    overrides = {
        "id": config.id_column,
        "caption": config.caption_column,
        "uri": config.uri_column,
        "duration": config.duration_column,
    }
    roles: dict[str, str | None] = {}
    for role in ROLES:
        if overrides[role]:
            if overrides[role] not in columns:
                raise ValueError(
                    f"--{role}-column {overrides[role]!r} is not a column of the input "
                    f"(columns: {columns})"
                )
            roles[role] = overrides[role]
        else:
            roles[role] = next((c for c in CANDIDATES[layout][role] if c in columns), None)
    return roles


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


# --- validation ----------------------------------------------------------------------------

_ISO = re.compile(
    r"P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)
_CLOCK = re.compile(r"(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)")


def parse_duration(value: Any) -> float | None:
    """Seconds from WebVid's ISO-8601 (``PT00H00M11S``), ``HH:MM:SS(.s)`` or a number.

    Empty → None; anything else unparseable raises ValueError.
    """
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value != value or value < 0:  # NaN or negative
            raise ValueError(f"duration {value!r} is not a non-negative number")
        return float(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds != seconds or seconds < 0:
            raise ValueError(f"duration {text!r} is not a non-negative number")
        return seconds
    m = _ISO.fullmatch(text.upper())
    if m and text.upper() not in ("P", "PT") and any(m.groupdict().values()):
        d, h, mi, s = (float(m.group(g) or 0) for g in "dhms")
        return d * 86400 + h * 3600 + mi * 60 + s
    m = _CLOCK.fullmatch(text)
    if m:
        return float(m.group(1) or 0) * 3600 + float(m.group(2)) * 60 + float(m.group(3))
    raise ValueError(f"duration {text!r} is not ISO-8601 (PT00H00M11S), HH:MM:SS or seconds")


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, float) and v != v:
        return None
    return json.dumps(v, default=str, ensure_ascii=False) if isinstance(v, dict | list) else str(v)


def _reject(rec: dict, reason: str, detail: str, field_: str | None, video_id=None) -> dict:
    return {
        "source_file": rec["source_file"],
        "source_row": int(rec["source_row"]),
        "field": field_,
        "reason": reason,
        "detail": detail,
        "video_id": video_id,
        "raw": rec.get("raw"),
    }


def validate_record(
    rec: dict[str, Any], plan: InputPlan, config: ManifestConfig, source: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """One raw record → ``(manifest_row, None)`` or ``(None, reject_row)``."""
    where = f"{rec['source_file']} row {rec['source_row']}"
    if rec.get("error"):
        return None, _reject(rec, rec["error"], f"{where}: {rec.get('detail')}", None)
    values: dict[str, Any] = rec["values"]
    roles = plan.roles
    vid = _text(values.get(roles["id"])) if roles["id"] else None
    file_value = _text(values.get(roles["uri"])) if roles["uri"] else None
    if vid is not None:
        vid = vid.strip()
    if not vid and roles["id"] is None and file_value and file_value.strip():
        vid = _basename(file_value.strip()).rsplit(".", 1)[0]
    status = _text(values.get("status"))
    if plan.layout == "video2dataset" and status not in (None, "", "success"):
        error = _text(values.get("error_message")) or ""
        return None, _reject(
            rec, "download failed", f"video2dataset status {status!r}: {error}", "status", vid
        )
    for role, value in (("id", vid), ("caption", _text(values.get(roles["caption"])))):
        column = roles[role] or role
        if value is None:
            return None, _reject(rec, "missing field", f"{where}: no {column!r}", column, vid)
        if not value.strip():
            return None, _reject(rec, "empty field", f"{where}: {column!r} is empty", column, vid)
    caption = _text(values.get(roles["caption"])).strip()  # type: ignore[union-attr]
    if len(caption) < config.min_caption_chars:
        return None, _reject(
            rec,
            "empty field",
            f"{where}: caption shorter than {config.min_caption_chars} characters",
            roles["caption"],
            vid,
        )
    uri, problem = _resolve_uri(rec, values, plan, vid, file_value)
    if uri is None:
        return None, _reject(rec, problem[0], f"{where}: {problem[1]}", roles["uri"], vid)
    if config.check_files and "://" not in uri:
        fs, path = fs_and_path(uri)
        if not fs.exists(path):
            return None, _reject(
                rec, "file not found", f"{where}: video {uri} does not exist", roles["uri"], vid
            )
    duration_col = roles["duration"]
    try:
        duration = parse_duration(values.get(duration_col)) if duration_col else None
    except ValueError as exc:
        return None, _reject(rec, "bad duration", f"{where}: {exc}", duration_col, vid)
    row: dict[str, Any] = {
        "video_id": vid,
        "uri": uri,
        "caption": caption,
        "duration_s": duration,
        "source": source,
        "source_file": rec["source_file"],
        "source_row": int(rec["source_row"]),
    }
    for c in plan.extra_columns:
        row[c] = _text(values.get(c))
    return row, None


def _resolve_uri(
    rec: dict, values: dict, plan: InputPlan, vid: str, file_value: str | None
) -> tuple[str | None, tuple[str, str]]:
    if values.get("__video"):
        return values["__video"], ("", "")
    if file_value and file_value.strip():
        f = file_value.strip()
        if "://" in f or f.startswith("/"):
            return f, ("", "")
        return join(_parent(rec["source_file"]), f), ("", "")
    if plan.layout == "folder" and vid in plan.videos:
        return plan.videos[vid], ("", "")
    if plan.layout == "folder" and not plan.roles["uri"]:
        return None, ("file not found", f"no video file named {vid}.<ext> in the folder")
    column = plan.roles["uri"] or "uri"
    return None, ("missing field" if file_value is None else "empty field", f"no {column!r}")


def dedup_group(rows: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Rows sharing a video_id → (the first by (file, row), rejects for the others)."""
    ordered = sorted(rows, key=lambda r: (r["source_file"], r["source_row"]))
    first, rest = ordered[0], ordered[1:]
    rejects = [
        {
            "source_file": r["source_file"],
            "source_row": r["source_row"],
            "field": "video_id",
            "reason": "duplicate id",
            "detail": f"video_id {r['video_id']!r} first seen at {first['source_file']} row "
            f"{first['source_row']}",
            "video_id": r["video_id"],
            "raw": None,
        }
        for r in rest
    ]
    return first, rejects


def shard_of(video_id: str, num_shards: int) -> int:
    """Stable shard of an id (crc32, the same on every machine and Python run)."""
    return zlib.crc32(video_id.encode("utf-8")) % num_shards


def manifest_table(rows: list[dict[str, Any]], extra_columns: Iterable[str]) -> pa.Table:
    """Manifest rows (sorted by video_id) as an Arrow table; extras are nullable strings."""
    from ragvid.schemas.tables import MANIFEST

    schema = MANIFEST.schema()
    fields = list(schema) + [pa.field(c, pa.string()) for c in extra_columns]
    rows = sorted(rows, key=lambda r: r["video_id"])
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def rejects_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rejects sorted by (file, row) as an Arrow table."""
    from ragvid.schemas.tables import REJECTS

    rows = sorted(rows, key=lambda r: (r["source_file"], r["source_row"], r["reason"]))
    return pa.Table.from_pylist(rows, schema=REJECTS.schema())
