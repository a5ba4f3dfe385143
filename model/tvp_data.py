"""Training and evaluation examples for text-video prediction (FCA, seed 004 §4): the rows of a
TVP manifest (:func:`ragvid.pipelines.tvp.ingest.ingest_tvp`, ``Workspace.manifest(corpus)``)
as (initial frames, caption, ground-truth continuation).

Each row is cast to the pipeline's ``num_frames`` frames at its size (the paper follows Seer:
an arbitrary raw clip → a fixed number of frames, sampled uniformly over it; a clip with fewer
frames repeats its nearest ones): the whole video (SSv2), the ``[start_s, end_s]`` clip of a
long video (Epic-Kitchens-100 narrations — decoded through
:func:`~ragvid.pipelines.embed.decode.decode_video`'s clip window, the project's one decoder)
or a folder of ``im_<i>.jpg`` frames (BridgeData). The first k frames condition (k per dataset:
:data:`~ragvid.model.fca.TVP_INIT_FRAMES`, SSv2 2, Bridge / Epic100 1), the rest are the
target.

A row that cannot be read never stops a run: it is skipped with its reason in :attr:`report`
and the next readable row (in manifest order, wrapping) stands in — a pure function of the
index, so the trainer's exact resume holds. When more than ``max_bad_share`` of the rows tried
fail (after ``min_checked``), the dataset raises :class:`TVPDataError` naming the reasons: a
mostly unreadable dataset is a setup problem, not noise. The manifest is streamed by part (a
small cache of parts, columns projected); only the ids of the chosen split stay in memory.
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from ragvid.model.fca import TVP_INIT_FRAMES
from ragvid.model.train_data import PartCache
from ragvid.schemas.io import read_table
from ragvid.schemas.markers import complete_parts
from ragvid.schemas.tables import MANIFEST

ROW_COLUMNS = ["video_id", "uri", "caption", "dataset", "split", "media", "start_s", "end_s"]
_IMAGE = re.compile(r"im_(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


class TVPDataError(ValueError):
    """Most rows of a TVP manifest could not be read (names the manifest and the reasons)."""


class TVPRowError(ValueError):
    """One row that cannot become an example: ``reason`` (a short class) and the message."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class TVPDataReport:
    """Rows tried and rows skipped (video id → reason) so far."""

    rows: int = 0
    tried: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    def reasons(self) -> dict[str, int]:
        return dict(Counter(r.split(":", 1)[0] for r in self.skipped.values()))


def _float(v) -> float | None:
    return None if v in (None, "") else float(v)


def frame_indices(available: int, num_frames: int) -> np.ndarray:
    """``num_frames`` indices uniform over ``available`` frames, first and last included (a
    shorter clip repeats its nearest frames)."""
    return np.linspace(0, available - 1, num_frames).round().astype(np.int64)


def _frame_folder(uri: str, num_frames: int, height: int, width: int) -> np.ndarray:
    from PIL import Image

    from ragvid.schemas.io import fs_and_path

    fs, path = fs_and_path(uri)
    try:
        names = [p for p in fs.ls(path, detail=False) if _IMAGE.search(p)]
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise TVPRowError("missing", f"missing: frame folder {uri} not found ({exc})") from None
    names.sort(key=lambda p: int(_IMAGE.search(p).group(1)))
    if len(names) < 2:
        raise TVPRowError("too_short", f"too_short: {uri} holds {len(names)} frame(s), need 2")
    out = []
    for i in frame_indices(len(names), num_frames):
        try:
            with fs.open(names[i], "rb") as fh:
                img = Image.open(fh).convert("RGB")
                out.append(np.asarray(img.resize((width, height), Image.BILINEAR)))
        except OSError as exc:
            raise TVPRowError("undecodable", f"undecodable: {names[i]} ({exc})") from None
    return np.stack(out)


def load_clip(
    row: dict,
    num_frames: int,
    height: int,
    width: int,
    *,
    backend: str = "auto",
    timeout_s: float | None = 60.0,
) -> np.ndarray:
    """uint8 (num_frames, height, width, 3) of one TVP manifest row (see the module docstring);
    :class:`TVPRowError` when it cannot be read."""
    from ragvid.pipelines.embed.decode import DecodeError, decode_video

    uri = row.get("uri") or ""
    if row.get("media") == "frames":
        return _frame_folder(uri, num_frames, height, width)
    try:
        video = decode_video(
            uri,
            num_frames=num_frames,
            size=(width, height),
            timeout_s=timeout_s,
            backend=backend,
            start_s=_float(row.get("start_s")),
            end_s=_float(row.get("end_s")),
        )
    except DecodeError as exc:
        raise TVPRowError(exc.error_class, str(exc)) from None
    frames = video.frames
    if len(frames) < num_frames:
        frames = frames[frame_indices(len(frames), num_frames)]
    return frames


class TVPDataset(torch.utils.data.Dataset):
    """The rows of one split of a TVP manifest as examples: ``initial`` (k, 3, H, W) and
    ``target`` (F − k, 3, H, W) floats in [0, 1], ``caption``, ``video_id``, ``dataset``,
    ``key`` (manifest part + row). ``split=None`` takes every row; ``exclude_ids`` leaves
    those videos out (a corpus split's held-out side); ``cached_clips`` keeps that many decoded
    examples (LRU) for many epochs over short clips."""

    def __init__(
        self,
        manifest: str,
        *,
        split: str | None = "train",
        num_frames: int = 16,
        height: int = 480,
        width: int = 720,
        init_frames: int | None = None,
        max_bad_share: float = 0.5,
        min_checked: int = 4,
        backend: str = "auto",
        timeout_s: float | None = 60.0,
        cached_parts: int = 2,
        exclude_ids: set[str] | None = None,
        cached_clips: int = 0,
    ):
        self.manifest, self.split = str(manifest), split
        self.exclude_ids = set(exclude_ids or ())
        self.num_frames, self.height, self.width = num_frames, height, width
        self.init_frames, self.max_bad_share, self.min_checked = (
            init_frames,
            max_bad_share,
            min_checked,
        )
        self.backend, self.timeout_s = backend, timeout_s
        hint = "run `ragvid tvp ingest <dataset> <input> --corpus NAME` first"
        try:
            self._parts = complete_parts(self.manifest, f"TVP manifest {self.manifest}", hint)
        except FileNotFoundError:
            self._parts = []
        if not self._parts:
            raise FileNotFoundError(f"{self.manifest}: no manifest parts — {hint}")
        self._where: list[tuple[int, int]] = []
        self.ids: list[str] = []
        for p, (path, _) in enumerate(self._parts):
            cols = ["video_id"] if split is None else ["video_id", "split"]  # a corpus has none
            t = read_table(path, MANIFEST, columns=cols)
            splits = t.column("split").to_pylist() if split is not None else None
            for r, vid in enumerate(t.column("video_id").to_pylist()):
                if (splits is None or splits[r] == split) and vid not in self.exclude_ids:
                    self._where.append((p, r))
                    self.ids.append(vid)
        if not self.ids:
            raise ValueError(
                f"{self.manifest}: no rows in split {split!r} — the TVP ingest writes the split "
                "column (train / val / holdout)"
            )
        self.report = TVPDataReport(rows=len(self.ids))
        self._bad: set[int] = set()
        self._cache = PartCache(self._parts, MANIFEST, ROW_COLUMNS, cached_parts)
        self.cached_clips = cached_clips  # decoded examples kept (LRU): epochs over small clips
        self._clips: OrderedDict[int, dict] = OrderedDict()

    def __len__(self) -> int:
        return len(self.ids)

    def _part(self, p: int) -> pa.Table:
        return self._cache[p]

    def row(self, idx: int) -> dict:
        p, r = self._where[idx]
        return self._part(p).slice(r, 1).to_pylist()[0]

    def k_of(self, row: dict) -> int:
        """Initial frames of a row: the given ``init_frames``, else its dataset's (§4)."""
        k = self.init_frames or TVP_INIT_FRAMES.get(row.get("dataset") or "", 1)
        if not 1 <= k < self.num_frames:
            raise ValueError(f"{k} initial frames for {self.num_frames}-frame clips")
        return k

    def example(self, idx: int) -> dict:
        """Example ``idx`` as it is (:class:`TVPRowError` when its row cannot be read)."""
        if idx in self._clips:
            self._clips.move_to_end(idx)
            return self._clips[idx]
        item = self._example(idx)
        if self.cached_clips:
            self._clips[idx] = item
            if len(self._clips) > self.cached_clips:
                self._clips.popitem(last=False)
        return item

    def _example(self, idx: int) -> dict:
        row = self.row(idx)
        frames = load_clip(
            row,
            self.num_frames,
            self.height,
            self.width,
            backend=self.backend,
            timeout_s=self.timeout_s,
        )
        k = self.k_of(row)
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        p, r = self._where[idx]
        return {
            "initial": x[:k],
            "target": x[k:],
            "caption": row["caption"],
            "video_id": row["video_id"],
            "dataset": row.get("dataset"),
            "key": f"{self._parts[p][0]}#{r}",
        }

    def _fail(self, idx: int, exc: TVPRowError) -> None:
        self._bad.add(idx)
        self.report.skipped[self.ids[idx]] = str(exc)
        tried, bad = self.report.tried, len(self._bad)
        if bad == len(self.ids) or (tried >= self.min_checked and bad > self.max_bad_share * tried):
            raise TVPDataError(
                f"{self.manifest}: {bad} of {tried} rows tried could not be read "
                f"({self.report.reasons()}; e.g. {str(exc)[:300]}) — check the dataset's "
                "files (or re-ingest it)"
            )

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < len(self.ids):
            raise IndexError(f"example {idx} of {len(self.ids)} in {self.manifest}")
        for step in range(len(self.ids)):
            j = (idx + step) % len(self.ids)
            if j in self._bad:
                continue
            self.report.tried += 1
            try:
                return self.example(j)
            except TVPRowError as exc:
                self._fail(j, exc)
        raise TVPDataError(f"{self.manifest}: no readable row ({self.report.reasons()})")

    def iter_examples(self, limit: int | None = None) -> Iterator[dict]:
        """Readable examples in manifest order (evaluation), at most ``limit``; unreadable rows
        skipped and reported like in training."""
        n = 0
        for idx in range(len(self.ids)):
            if limit is not None and n >= limit:
                return
            self.report.tried += 1
            try:
                item = self.example(idx)
            except TVPRowError as exc:
                self._fail(idx, exc)
                continue
            n += 1
            yield item


def collate_tvp(items: Sequence[dict]) -> dict:
    """Stack ``initial`` / ``target`` (one k per batch); texts and ids become lists."""
    ks = {int(it["initial"].shape[0]) for it in items}
    if len(ks) != 1:
        raise ValueError(f"examples with different initial-frame counts {sorted(ks)} in a batch")
    out: dict = {k: [it[k] for it in items] for k in items[0] if k not in ("initial", "target")}
    out["initial"] = torch.stack([it["initial"] for it in items])
    out["target"] = torch.stack([it["target"] for it in items])
    return out
