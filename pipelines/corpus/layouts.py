"""Corpus layouts: detect what an input is (WebVid CSVs, video2dataset shards, a folder +
captions) and plan its files and column roles. See :mod:`.manifest` for the layouts.

Planning never lets one bad input file abort the others. An entry that is not a regular file
(a FIFO, a socket, a device, a folder named ``.csv``), a Parquet shard that is not Parquet, or
a CSV whose header is not UTF-8 is planned with no columns and a ``problem``: its reader makes
the file one reject instead of reading it (opening a FIFO would block the ingest forever).
Text is decoded as UTF-8 with ``surrogateescape`` (:func:`_open_text`), so a bad byte costs
its row, not the file: see :mod:`.readers`.

**Tar members are read in place.** A video2dataset ``*.tar`` shard is never extracted: the
manifest ``uri`` of a video inside it is fsspec's tar URL chaining form,
``tar://<member>::<shard uri>`` — e.g. ``tar://000000000.mp4::/data/v2d/00000.tar`` or
``tar://000000000.mp4::s3://bucket/v2d/00000.tar`` (:func:`tar_uri`, :func:`split_tar_uri`).
``fsspec.open(uri)`` opens it as it stands; the decoder (``ragvid.pipelines.embed.decode``)
instead looks the member up in the shard's header index (:func:`tar_index`: one pass over the
512-byte headers, no video bytes; cached per process) and reads only the member's byte range.
A member name holding ``::`` cannot be written in this form (the shard's sample is rejected).
"""

from __future__ import annotations

import csv
import json
import re
import stat
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from ragvid.schemas.config import ManifestConfig
from ragvid.schemas.files import open_arrow
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


def columns_help() -> str:
    """The column names each layout accepts per role, for ``corpus ingest --help``."""
    lines = ["Column names recognised (first present wins; override with --*-column):"]
    for layout, roles in CANDIDATES.items():
        named = "; ".join(f"{role}: {', '.join(names)}" for role, names in roles.items())
        lines.append(f"- {layout}: {named}")
    return "\n".join(lines)


@dataclass(frozen=True)
class InputFile:
    """One input file and how to read it."""

    uri: str
    kind: str  # "csv" | "jsonl" | "parquet" | "tar"
    columns: tuple[str, ...] = ()  # header / schema / keys seen
    problem: tuple[str, str] | None = None  # (reason, detail): the file is one reject


@dataclass(frozen=True)
class InputPlan:
    """What an ingest reads: the layout, its files, the column roles and the extra columns."""

    input_path: str
    layout: str
    files: tuple[InputFile, ...]
    roles: dict[str, str | None]  # role → column name
    extra_columns: tuple[str, ...]
    videos: dict[str, str] = field(default_factory=dict)  # folder layout: id/stem → video uri
    videos_dir: str | None = None  # unused: video2dataset tars are read in place (kept for API)


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


def not_a_file(uri: str) -> str | None:
    """What ``uri`` is when it is not a regular file ("a folder", "a FIFO (named pipe)",
    "a socket", …), None for a regular file; FileNotFoundError when it does not exist. Reading
    a FIFO blocks until someone writes to it, so nothing may open one before this check."""
    fs, path = fs_and_path(uri)
    info = fs.info(path)
    kind = info.get("type")
    if kind in ("file", "directory"):
        return None if kind == "file" else "a folder"
    mode = info.get("mode") or 0
    kinds = (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), f"a special file ({kind})")


def not_regular(uri: str, kind: str) -> tuple[str, str]:
    """The (reason, detail) of a reject for an input that is not a regular file."""
    return (
        "not a regular file",
        f"{uri} is {kind}, not a regular file — ingest reads only regular files; replace it "
        "with the file itself (or move it out of the corpus folder)",
    )


def _check_top(input_path: str) -> None:
    fs, path = fs_and_path(input_path)
    if not fs.exists(path):
        raise FileNotFoundError(f"input {input_path} does not exist: pass a corpus file/folder")
    kind = not_a_file(input_path)
    if kind and kind != "a folder":
        raise ValueError(
            f"input {input_path} is {kind}, not a regular file or folder — pass the corpus "
            "file or folder itself"
        )


def detect_layout(input_path: str) -> str:
    """Guess the layout of ``input_path`` (see module docstring) or say what was expected."""
    _check_top(input_path)
    fs, path = fs_and_path(input_path)
    if fs.isfile(path):
        name = _basename(path).lower()
        if name.endswith((".parquet", ".tar")):
            return "video2dataset"
        if name.endswith(".jsonl"):
            return "folder"
        if name.endswith(".csv"):
            header, _ = _csv_header(_uri(fs, path, input_path))
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


# --- text: UTF-8, with undecodable bytes kept for the reject ------------------------------


def _open_text(uri: str):
    """``uri`` as UTF-8 text (a BOM is skipped). Bytes that are not UTF-8 do not raise: they
    decode to lone surrogates (``surrogateescape``), so one Latin-1 byte costs its row, not the
    file — readers check each row with :func:`is_clean` and reject the ones that are not."""
    fs, path = fs_and_path(uri)
    return fs.open(path, "rt", encoding="utf-8-sig", newline="", errors="surrogateescape")


def is_clean(text: str) -> bool:
    """True when ``text`` holds no undecodable byte (a C-speed check, cheap per row)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` safe to store as UTF-8: each undecodable byte shown as ``\\xe9``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def encoding_problem(text: str) -> str:
    """Say which bytes of ``text`` are not UTF-8 and how to fix the file."""
    bad = [c for c in text if "\udc80" <= c <= "\udcff"]
    shown = "".join(f"\\x{ord(c) - 0xDC00:02x}" for c in bad[:8]) + ("…" if len(bad) > 8 else "")
    return (
        f"byte(s) {shown} are not UTF-8 (the file is in another encoding, e.g. Latin-1/cp1252); "
        "re-encode the file as UTF-8 (`iconv -f cp1252 -t utf-8`)"
    )


def _csv_header(uri: str) -> tuple[list[str], tuple[str, str] | None]:
    """The first non-blank row, or ``([], problem)`` when it is unreadable or not UTF-8: then
    no column of the file can be named, so the whole file is one reject (and its garbage no
    column name)."""
    with _open_text(uri) as fh:
        reader = csv.reader(fh)
        try:
            for row in reader:
                if row and any(c.strip() for c in row):
                    if is_clean("".join(row)):
                        return [c.strip() for c in row], None
                    return [], (
                        "not UTF-8",
                        f"{uri} line {reader.line_num} (the header): "
                        f"{encoding_problem(''.join(row))}; no row of this file could be read",
                    )
        except csv.Error as exc:  # e.g. an oversized field: binary data named .csv
            return [], (
                "unreadable file",
                f"{uri} line {reader.line_num}: CSV parse error before any header ({exc}) — "
                "is it a CSV file?",
            )
    return [], None


def _jsonl_keys(uri: str) -> list[str]:
    keys: dict[str, None] = {}
    with _open_text(uri) as fh:
        for line in fh:
            if not is_clean(line):
                continue  # rejected by the reader
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
    """List the input files of ``input_path`` and resolve the column roles and extras.

    ``videos_dir`` is accepted for compatibility and unused: tar members are read in place."""
    _check_top(input_path)
    fs, path = fs_and_path(input_path)
    layout = detect_layout(input_path) if config.layout == "auto" else config.layout
    top = _uri(fs, path, input_path)
    entries = [top] if fs.isfile(path) else _ls(top)
    files: list[InputFile] = []
    videos: dict[str, str] = {}
    if layout == "webvid":
        csvs = [e for e in entries if e.endswith(".csv")]
        if not fs.isfile(path):
            csvs = [e for e in csvs if re.fullmatch(r"results_.*\.csv", _basename(e))]
        files = [_input_file(u, "csv") for u in csvs]
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
        files = [_input_file(u, "parquet") for u in pqs]
        files += [
            _input_file(u, "tar") for u in tars if _basename(u).removesuffix(".tar") not in with_pq
        ]
    elif layout == "folder":
        caps = [e for e in entries if e.endswith((".csv", ".jsonl"))]
        files = [_input_file(u, "csv" if u.endswith(".csv") else "jsonl") for u in caps]
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
    if not columns and any(f.problem for f in files):
        problems = [f"{_basename(f.uri)}: {f.problem[0]}" for f in files if f.problem]
        raise ValueError(
            f"input {input_path}: none of its files can be read ({'; '.join(problems)}) — "
            "fix them (regular, intact files; CSV/JSONL in UTF-8) and rerun"
        )
    roles = _roles(layout, columns, config)
    if roles["caption"] is None or (roles["id"] is None and roles["uri"] is None):
        raise ValueError(
            f"input {input_path}: cannot find the caption and id/file columns among {columns}; "
            "name them with --id-column/--caption-column/--uri-column"
        )
    mapped = {c for r, c in roles.items() if c and not (layout == "video2dataset" and r == "uri")}
    extras = tuple(c for c in columns if c not in mapped)
    return InputPlan(top, layout, tuple(files), roles, extras, videos, videos_dir)


def _parquet_columns(uri: str) -> list[str]:
    with open_arrow(uri) as fh:
        return list(pq.ParquetFile(fh).schema_arrow.names)


def is_corrupt(exc: BaseException) -> bool:
    """True for a parse error of a Parquet/tar file's bytes (``ArrowInvalid``; Arrow's own
    ``OSError`` such as "Couldn't deserialize thrift", which has no errno; a ``TarError``) —
    not for a failing disk (an OSError with an errno), which must stop the run instead of
    rejecting good files."""
    if isinstance(exc, pa.ArrowInvalid | tarfile.TarError | EOFError):
        return True
    return isinstance(exc, OSError) and exc.errno is None


def unreadable(uri: str, what: str, exc: BaseException) -> tuple[str, str]:
    """The (reason, detail) of a reject for a file whose bytes do not parse."""
    return (
        "unreadable file",
        f"{uri} is not a readable {what} ({type(exc).__name__}: {str(exc)[:200]}) — replace "
        "it with an intact copy",
    )


def _input_file(uri: str, kind: str) -> InputFile:
    """Plan one input file, never opening a special file and never raising on bad bytes."""
    special = not_a_file(uri)
    if special:
        return InputFile(uri, kind, (), not_regular(uri, special))
    if kind == "csv":
        header, problem = _csv_header(uri)
        return InputFile(uri, kind, tuple(header), problem)
    if kind == "jsonl":
        return InputFile(uri, kind, tuple(_jsonl_keys(uri)))
    if kind == "parquet":
        try:
            return InputFile(uri, kind, tuple(_parquet_columns(uri)))
        except Exception as exc:  # noqa: BLE001 - pyarrow's parse errors are untyped
            if not is_corrupt(exc):
                raise
            return InputFile(uri, kind, (), unreadable(uri, "Parquet file", exc))
    return InputFile(uri, kind, ("key", "caption"))


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


# --- tar members in place: tar://<member>::<shard uri> ----------------------------------------

TAR_PREFIX = "tar://"


def tar_uri(member: str, shard_uri: str) -> str:
    """The manifest uri of ``member`` inside the tar ``shard_uri`` (fsspec chaining form)."""
    if "::" in member:
        raise ValueError(f"tar member {member!r} of {shard_uri} holds '::': no tar:// uri for it")
    return f"{TAR_PREFIX}{member}::{shard_uri}"


def split_tar_uri(uri: str) -> tuple[str, str] | None:
    """``(member, shard uri)`` of a ``tar://<member>::<shard>`` uri, None for any other uri."""
    if not uri.startswith(TAR_PREFIX) or "::" not in uri:
        return None
    member, shard = uri[len(TAR_PREFIX) :].split("::", 1)
    return member, shard


class TarIndex(dict):
    """member name → ``(offset_data, size)`` of a tar shard's regular files (``compressed``:
    the shard is gzip/bz2/xz, so offsets are in the decompressed stream and mean nothing;
    ``truncated``: why the walk stopped early — the shard ends inside a member)."""

    compressed: bool = False
    truncated: str | None = None


_INDEX_CACHE: OrderedDict[tuple, TarIndex] = OrderedDict()
_INDEX_LOCK = threading.Lock()
_INDEX_CACHE_SIZE = 32  # a 10k-sample shard indexes ~30k members (a few MB)


def _is_local(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool({"file", "local"} & set(protocols))


def _stamp(fs, path: str) -> tuple:
    info = fs.info(path)
    return (info.get("size"), info.get("mtime") or info.get("LastModified") or info.get("ETag"))


def tar_index(shard_uri: str, partial: bool = False) -> TarIndex:
    """The member index of a tar shard from its headers alone (an uncompressed tar is walked
    by seeking from header to header; no member's bytes are read). Cached per process by
    (uri, size, mtime): a rewritten shard is indexed again. FileNotFoundError when the shard
    does not exist; ``tarfile.TarError`` when it is not a tar — or, unless ``partial``, when
    it ends inside a member (``partial=True``, for the decoder: the members before the cut
    stay readable, the cut one fails its length check in :func:`read_tar_member`)."""
    index = _walk(shard_uri)
    if index.truncated and not partial:
        raise tarfile.ReadError(index.truncated)
    return index


def _walk(shard_uri: str) -> TarIndex:
    fs, path = fs_and_path(shard_uri)
    key = (shard_uri, *_stamp(fs, path))
    with _INDEX_LOCK:
        if key in _INDEX_CACHE:
            _INDEX_CACHE.move_to_end(key)
            return _INDEX_CACHE[key]
    index = TarIndex()
    kwargs = {} if _is_local(fs) else {"block_size": 1 << 16}  # a header costs 64 KiB, not 5 MB
    with fs.open(path, "rb", **kwargs) as fh:
        magic = fh.read(6)
        fh.seek(0)
        index.compressed = (
            magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic[:6] == (b"\xfd7zXZ\x00")
        )
        with tarfile.open(fileobj=fh, mode="r:*") as tar:
            try:
                for m in tar:
                    if m.isfile():
                        index[m.name] = (m.offset_data, m.size)
            except tarfile.ReadError as exc:  # "unexpected end of data": cut inside a member
                if not index:
                    raise
                index.truncated = f"{shard_uri}: {exc} after member {next(reversed(index))}"
    with _INDEX_LOCK:
        _INDEX_CACHE[key] = index
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)
    return index


def read_tar_member(shard_uri: str, member: str, index: TarIndex | None = None) -> bytes:
    """The bytes of one member: a seek + read of its byte range (a ranged read on a remote
    store); a compressed shard is streamed up to the member. KeyError when it is not listed;
    EOFError when the shard ends before the member does (a truncated shard)."""
    index = tar_index(shard_uri, partial=True) if index is None else index
    offset, size = index[member]
    fs, path = fs_and_path(shard_uri)
    if index.compressed:
        with fs.open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:*") as tar:
            return tar.extractfile(member).read()  # type: ignore[union-attr]
    if _is_local(fs):
        with fs.open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
    else:
        data = fs.cat_file(path, start=offset, end=offset + size) if size else b""
    if len(data) != size:
        raise EOFError(
            f"member {member} needs bytes {offset}..{offset + size} of {shard_uri}, which ends "
            f"at {offset + len(data)} (a truncated shard)"
        )
    return data
