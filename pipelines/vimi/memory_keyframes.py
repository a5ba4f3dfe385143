"""Keyframes of a ragvid video corpus as memory items (a corpus doubling as VIMI's memory).

Per video of the corpus's workspace manifest (MANIFEST, ``Workspace.manifest(corpus)``), one
item per ``VimiConfig.keyframes`` entry: ``first`` → ``frame_ts`` 0.0, ``middle`` →
``duration_s / 2`` (the manifest's duration; when it is unknown the container's duration is
probed with PyAV, header only). ``image_uri`` is the video's uri (a path, URI or ``tar://``
member), ``video_id`` the video's id — so bulk retrieval can exclude a video's own keyframes —,
``item_id`` ``"<video_id>#first|middle"``, ``caption`` the video's caption.

Frames are never decoded here. One unit per manifest part, so memory stays bounded by a part.
With ``check_files`` a video that cannot be a frame source is rejected (every keyframe of it,
reason named) from a stat and a few header bytes: missing, not a regular file, empty, not a
known container (mp4/mov, Matroska/WebM, AVI, MPEG-TS, FLV), or an mp4 / WebM whose boxes
run past the end of the file (the decoder's own truncation checks). A tar member is checked
from the shard's header index and the member's first bytes. Remote URIs are not checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ragvid.pipelines.vimi.memory_sources import (
    Record,
    SourceUnit,
    local_file_problem,
    memory_row,
    reject,
    text,
)

_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")


def plan_keyframes(
    workspace: Any, corpus: str, index: int, options: dict[str, Any]
) -> list[SourceUnit]:
    """One unit per part of the corpus's manifest (FileNotFoundError without one)."""
    from ragvid.schemas.io import exists, list_parts
    from ragvid.schemas.workspace import Workspace

    ws = Workspace.at(workspace)
    folder = ws.manifest(corpus)
    parts = list_parts(folder) if exists(folder) else []
    if not parts:
        raise FileNotFoundError(
            f"corpus {corpus!r} has no manifest in workspace {ws.root} ({folder}) — ingest it "
            f"first: ragvid corpus ingest <input> --name {corpus} -w {ws.root}"
        )
    kinds = tuple(options.get("keyframes") or ())
    bad = [k for k in kinds if k not in ("first", "middle")]
    if not kinds or bad:
        raise ValueError(f"keyframes {list(kinds)}: choose from 'first' and 'middle'")
    return [SourceUnit("keyframes", p, f"keyframes:{corpus}", index, {}, options) for p in parts]


def container_problem(head: bytes) -> str | None:
    """None when ``head`` starts like a video container this project decodes, else why not."""
    if len(head) >= 8 and head[4:8] in _MP4_BOXES:
        return None
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska / WebM
        return None
    if head[:4] == b"RIFF" and head[8:11] == b"AVI":
        return None
    if head[:3] == b"FLV" or head[:1] == b"\x47":  # FLV, MPEG-TS sync byte
        return None
    return f"not a video container this project reads (starts with {head[:16]!r})"


def _tar_problem(uri: str, member: str, shard: str) -> tuple[str, str] | None:
    import tarfile

    from ragvid.pipelines.corpus.layouts import is_corrupt, tar_index, unreadable
    from ragvid.pipelines.vimi.images import ImageLoadError, read_bytes

    try:
        index = tar_index(shard)
    except (FileNotFoundError, NotADirectoryError):
        return "file not found", f"tar shard {shard} of {uri} does not exist"
    except Exception as exc:  # noqa: BLE001 - see is_corrupt
        if not (is_corrupt(exc) or isinstance(exc, tarfile.TarError)):
            raise
        return unreadable(shard, "tar file", exc)
    if member not in index:
        return "file not found", f"tar shard {shard} has no member {member!r}"
    offset, size = index[member]
    if size == 0:
        return "empty file", f"video {uri} is empty (0 bytes)"
    if index.compressed:
        return None
    try:
        head = read_bytes(uri, tar_offset=offset, tar_size=min(size, 16))
    except ImageLoadError as exc:
        return "unreadable file", str(exc)
    why = container_problem(head)
    return ("not a video", f"video {uri}: {why}") if why else None


def video_problem(uri: str) -> tuple[str, str] | None:
    """(reason, detail) when ``uri`` cannot be a keyframe source (module docstring)."""
    from ragvid.pipelines.corpus.layouts import split_tar_uri
    from ragvid.pipelines.embed.decode import mp4_truncation, webm_truncation

    in_tar = split_tar_uri(uri)
    if in_tar:
        return _tar_problem(uri, *in_tar)
    problem = local_file_problem(uri, "video")
    if problem or ("://" in uri and not uri.startswith("file://")):
        return problem
    path = uri.removeprefix("file://")
    with open(path, "rb") as fh:
        head = fh.read(16)
    why = container_problem(head)
    if why:
        return "not a video", f"video {uri}: {why}"
    import os

    cut = mp4_truncation(path, os.path.getsize(path)) or webm_truncation(
        path, os.path.getsize(path)
    )
    return ("truncated", f"video {uri} is truncated ({cut})") if cut else None


def probe_duration(uri: str) -> float:
    """The container's duration in seconds, from its header (PyAV; no frame decoded).
    ValueError when the container does not say."""
    import av

    from ragvid.pipelines.embed.decode import DecodeError, _open_source

    try:
        src, _ = _open_source(uri)
    except DecodeError as exc:
        raise ValueError(exc.message) from None
    try:
        with av.open(src) as container:
            if container.duration:
                return float(container.duration) / av.time_base
            stream = container.streams.video[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
    except (av.FFmpegError, IndexError, OSError) as exc:
        raise ValueError(f"{uri}: not a readable video ({exc})") from None
    raise ValueError(f"{uri}: the container does not record its duration")


def read_keyframes(unit: SourceUnit) -> Iterator[Record]:
    """The keyframe items of one manifest part: one record per (video, keyframe)."""
    from ragvid.schemas.io import read_table
    from ragvid.schemas.tables import MANIFEST

    columns = ["video_id", "uri", "caption", "duration_s"]
    table = read_table(unit.uri, MANIFEST, columns=columns)
    kinds: tuple[str, ...] = tuple(unit.options["keyframes"])
    check = unit.options.get("check_files", True)
    for i, values in enumerate(table.to_pylist(), 1):
        vid, uri, caption = text(values["video_id"]), values["uri"], text(values["caption"])
        where = f"{unit.uri} row {i} (video {vid})"
        problem = video_problem(uri) if check else None
        duration = values.get("duration_s")
        for kind in kinds:
            item_id = f"{vid}#{kind}"
            if problem:
                detail = f"{where}: {problem[1]}"
                yield "reject", reject(unit.uri, i, problem[0], detail, "uri", item_id, values)
                continue
            if not caption:
                detail = f"{where}: the video's caption is empty"
                yield "reject", reject(unit.uri, i, "empty field", detail, "caption", item_id)
                continue
            frame_ts = 0.0
            if kind == "middle":
                if duration is None or not duration > 0:
                    try:
                        duration = probe_duration(uri)
                    except ValueError as exc:
                        detail = f"{where}: no duration for the middle frame ({exc})"
                        yield (
                            "reject",
                            reject(unit.uri, i, "unreadable video", detail, "uri", item_id),
                        )
                        continue
                frame_ts = float(duration) / 2.0
            yield (
                "row",
                memory_row(
                    item_id=item_id,
                    image_uri=uri,
                    caption=caption,
                    source=unit.source,
                    source_file=unit.uri,
                    source_row=i,
                    frame_ts=frame_ts,
                    video_id=vid,
                ),
            )
