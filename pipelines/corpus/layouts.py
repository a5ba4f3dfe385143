"""Corpus layouts: detect what an input is (WebVid CSVs, video2dataset shards, a folder +
captions) and plan its files and column roles. See :mod:`.manifest` for the layouts."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from ragvid.schemas.config import ManifestConfig
from ragvid.schemas.io import fs_and_path, join

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
