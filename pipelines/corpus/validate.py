"""Row validation: raw records → manifest rows or rejects (file, row, field, reason), the
de-duplication by key, and the manifest / rejects tables.

A record the reader marked bad (malformed, not UTF-8, an unreadable file: see
:mod:`.readers`) is rejected with the reader's reason and field. With ``check_files`` a local
video must exist *and* be a regular file: a FIFO named ``.mp4`` is rejected here as "not a
regular file" rather than reaching the decoder, which would block on it or call it empty.
A ``tar://<member>::<shard>`` uri (a video2dataset tar read in place) is checked from the
shard's header index — the shard must exist (locally or in its store) and list the member;
the video's bytes are not read (the index is cached, so a shard costs one header pass)."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from ragvid.pipelines.corpus.layouts import (
    InputPlan,
    _basename,
    _parent,
    is_corrupt,
    not_a_file,
    split_tar_uri,
    tar_index,
    unreadable,
)
from ragvid.schemas.config import ManifestConfig
from ragvid.schemas.io import join

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
        # a file-level reject (row 0) already names its file
        detail = rec.get("detail") if rec["source_row"] == 0 else f"{where}: {rec.get('detail')}"
        return None, _reject(rec, rec["error"], detail, rec.get("field"))
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
    if config.check_files and ("://" not in uri or split_tar_uri(uri)):
        problem = _video_problem(uri)
        if problem:
            return None, _reject(rec, problem[0], f"{where}: {problem[1]}", roles["uri"], vid)
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


def _video_problem(uri: str) -> tuple[str, str] | None:
    """Why a local video cannot be read — missing, not a regular file, or not stat-able —
    from one stat (a row-level reject: the failure-ratio guard catches a systematic cause).
    A tar member: why its shard cannot be read or does not list it (see :func:`_member_problem`)."""
    in_tar = split_tar_uri(uri)
    if in_tar:
        return _member_problem(uri, *in_tar)
    try:
        kind = not_a_file(uri)
    except (FileNotFoundError, NotADirectoryError):
        return "file not found", f"video {uri} does not exist"
    except OSError as exc:
        return "unreadable file", f"video {uri} cannot be read ({exc.strerror or exc})"
    if kind:
        return "not a regular file", f"video {uri} is {kind}, not a regular file — replace it"
    return None


def _member_problem(uri: str, member: str, shard: str) -> tuple[str, str] | None:
    """Why ``member`` of the tar ``shard`` cannot be read, from the shard's header index."""
    if "://" not in shard:
        problem = _video_problem(shard)
        if problem:
            return problem[0], f"{problem[1]} (the tar shard of {uri})"
    try:
        index = tar_index(shard)
    except (FileNotFoundError, NotADirectoryError):
        return "file not found", f"tar shard {shard} of {uri} does not exist"
    except Exception as exc:  # noqa: BLE001 - see is_corrupt
        if not is_corrupt(exc):
            raise
        return unreadable(shard, "tar file", exc)
    if member not in index:
        return "file not found", f"tar shard {shard} has no member {member!r}"
    return None


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
