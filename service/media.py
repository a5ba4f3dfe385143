"""What the UI shows besides results: a video's file and first frame, its manifest row and
near-duplicate group, and the index's similarity histogram.

Files are looked up by ``video_id`` in the manifest the index was built from — the only
files served are those the manifest lists for rows of the index; no path ever comes from the
request.
"""

from __future__ import annotations

import io
import mimetypes
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from ragvid.pipelines.index.dedup import histogram_path
from ragvid.pipelines.index.inspect_page import first_frame
from ragvid.schemas import RetrievalConfig
from ragvid.schemas.config import defaults
from ragvid.schemas.io import exists, fs_and_path
from ragvid.schemas.workspace import IndexLayout
from ragvid.service.errors import ServiceError
from ragvid.service.registry import IndexState

_RET = defaults(RetrievalConfig)


def row_of(state: IndexState, video_id: str) -> int:
    row = state.retriever.ids.row(video_id)
    if row is None:
        raise ServiceError(
            404,
            "unknown_video",
            f"video_id '{video_id}' is not in index '{state.name}' (version {state.version})",
            video_id=video_id,
        )
    return row


def video_info(state: IndexState, video_id: str) -> dict[str, Any]:
    """The index's view of one video: caption, manifest row, near-duplicate group."""
    row = row_of(state, video_id)
    r = state.retriever
    out: dict[str, Any] = {
        "index": state.name,
        "version": state.version,
        "video_id": video_id,
        "row": row,
        "caption": r.captions[row].as_py(),
        "manifest": state.columns.record(row) if state.columns is not None else None,
        "group": None,
    }
    if state.groups is not None:
        gid = int(state.groups.group_of_row[row])
        out["group"] = state.groups.describe(gid) if gid >= 0 else None
    return out


def video_uri(state: IndexState, video_id: str) -> str:
    row = row_of(state, video_id)
    if state.columns is None or "uri" not in state.columns.types:
        raise ServiceError(
            404, "no_file", f"index '{state.name}' records no manifest: no file to serve"
        )
    uri = state.columns.column("uri")[row].as_py()
    if not uri:
        raise ServiceError(404, "no_file", f"the manifest has no file for video '{video_id}'")
    return uri


def open_video(state: IndexState, video_id: str) -> tuple[str | None, Any, str]:
    """(local path or None, an open binary file when remote, media type) of a video's file."""
    uri = video_uri(state, video_id)
    media = mimetypes.guess_type(uri.split("::", 1)[0])[0] or "video/mp4"
    fs, path = fs_and_path(uri)
    if not fs.exists(path):
        raise ServiceError(404, "file_missing", f"the file of video '{video_id}' is missing: {uri}")
    if "://" not in uri:
        return path, None, media
    return None, fs.open(path, "rb"), media


class Thumbnails:
    """First frames as PNG, kept for the last ``size`` videos asked for."""

    def __init__(self, size: int):
        self.size = size
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def png(self, state: IndexState, video_id: str, short_side: int = 160) -> bytes:
        key = (state.name, state.version, video_id, short_side)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        frame = first_frame(video_uri(state, video_id), short_side)
        if frame is None:
            raise ServiceError(404, "no_frame", f"no frame of video '{video_id}' could be decoded")
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        data = buf.getvalue()
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return data


def histogram(state: IndexState, sample: int, bins: int = 50) -> dict[str, Any]:
    """Top-1 similarity of a seeded sample of index rows to their nearest other row (the
    histogram ``ragvid index dedup`` draws, from this version's own vectors), cached per
    version; with the thresholds that apply to it."""
    with state.lock:
        hit = state.cache.get(("histogram", sample, bins))
        if hit is not None:
            return hit
    r = state.retriever
    n = r.man.ntotal
    rows = np.sort(np.random.default_rng(0).choice(n, size=min(n, sample), replace=False))
    top1 = np.full(len(rows), np.nan, np.float32)
    if n > 1:
        got, scores = r.candidates(np.asarray(r.vectors[rows], np.float32), 2)
        other = np.where(got != rows[:, None], scores, -np.inf).max(axis=1)
        top1 = np.where(np.isfinite(other), other, np.nan).astype(np.float32)
    vals = top1[np.isfinite(top1)]
    lo = max(-1.0, float(np.floor(vals.min() * 10) / 10)) if len(vals) else 0.0
    lo = min(lo, _RET["delta_min_video"] - 0.05)  # δ_min stays in the picture
    counts, edges = np.histogram(vals, bins=bins, range=(lo, 1.0))
    dedup_png = histogram_path(IndexLayout(r.man.path).duplicates)
    out = {
        "index": state.name,
        "version": state.version,
        "what": "cosine similarity of each sampled video to its nearest other indexed video",
        "sample": int(len(rows)),
        "videos": n,
        "edges": [round(float(e), 6) for e in edges],
        "counts": counts.astype(int).tolist(),
        "delta_dedup": _RET["delta_dedup"],
        "delta_min_video": _RET["delta_min_video"],
        "at_or_above_delta_dedup": int((vals >= _RET["delta_dedup"]).sum()),
        "dedup_histogram_png": exists(dedup_png),
    }
    with state.lock:
        state.cache[("histogram", sample, bins)] = out
    return out


def dedup_histogram_png(state: IndexState) -> bytes:
    """The PNG ``ragvid index dedup`` wrote next to the index's duplicates table."""
    uri = histogram_path(IndexLayout(state.man.path).duplicates)
    if not exists(uri):
        raise ServiceError(
            404,
            "no_histogram",
            f"index '{state.name}' has no dedup histogram — run `ragvid index dedup`; "
            "GET …/histogram has the same figure as JSON from the index's own vectors",
        )
    fs, path = fs_and_path(uri)
    with fs.open(path, "rb") as fh:
        return fh.read()
