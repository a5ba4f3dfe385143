"""Deterministic row ranges of a manifest, planned from Parquet metadata alone.

A stage over a corpus is cut into parts of ``part_size`` consecutive rows of one manifest
file (the Beam ingest writes each file sorted by ``video_id``, ids hash-sharded across files,
so the cut is stable across runs). Planning reads only each file's footer — O(files), no row
data — so a 10M-row manifest plans in seconds. Reading a part reads only the row groups it
overlaps, projected to the columns asked for; :class:`SliceReader` keeps the last row group so
walking parts in order reads every row group once.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ragvid.schemas import MANIFEST
from ragvid.schemas.files import open_arrow
from ragvid.schemas.io import list_parts

READ_COLUMNS = ["video_id", "uri", "caption"]


@dataclass(frozen=True)
class ManifestSlice:
    """Rows ``[start, stop)`` of manifest file ``file``."""

    file: str
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def manifest_files(manifest_dir: str, corpus: str = "") -> list[str]:
    files = list_parts(manifest_dir)
    if not files:
        name = f"corpus '{corpus}'" if corpus else manifest_dir
        raise FileNotFoundError(
            f"{name} has no manifest at {manifest_dir} — run `ragvid corpus ingest` first"
        )
    return files


def _row_groups(file: str) -> list[int]:
    with open_arrow(file) as fh:
        pf = pq.ParquetFile(fh)
        MANIFEST.check_metadata(pf.schema_arrow.metadata, file)
        return [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]


def manifest_rows(manifest_dir: str, corpus: str = "") -> int:
    """Rows of the whole manifest, from the files' footers."""
    return sum(sum(_row_groups(f)) for f in manifest_files(manifest_dir, corpus))


def plan_slices(manifest_dir: str, part_size: int, corpus: str = "") -> list[ManifestSlice]:
    """Every part's slice, in (file, row) order; footers only."""
    out = []
    for file in manifest_files(manifest_dir, corpus):
        n = sum(_row_groups(file))
        out.extend(ManifestSlice(file, a, min(a + part_size, n)) for a in range(0, n, part_size))
    return out


class SliceReader:
    """Reads slices' rows; caches the row groups last read (walk in order: each read once)."""

    def __init__(self, columns: list[str] | None = None) -> None:
        self.columns = columns or READ_COLUMNS
        self._file: str | None = None
        self._bounds: list[int] = []
        self._cache: dict[int, pa.Table] = {}

    def _open(self, file: str) -> None:
        if file != self._file:
            sizes = _row_groups(file)
            self._bounds = [0]
            for s in sizes:
                self._bounds.append(self._bounds[-1] + s)
            self._file, self._cache = file, {}

    def table(self, sl: ManifestSlice) -> pa.Table:
        self._open(sl.file)
        groups = [
            g
            for g in range(len(self._bounds) - 1)
            if self._bounds[g] < sl.stop and self._bounds[g + 1] > sl.start
        ]
        missing = [g for g in groups if g not in self._cache]
        if missing:
            with open_arrow(sl.file) as fh:
                pf = pq.ParquetFile(fh)
                for g in missing:
                    self._cache[g] = pf.read_row_group(g, columns=self.columns)
            self._cache = {g: self._cache[g] for g in groups}  # keep only what this slice uses
        first = self._bounds[groups[0]] if groups else 0
        table = pa.concat_tables([self._cache[g] for g in groups]) if groups else None
        if table is None:
            return pa.table({c: pa.array([], pa.string()) for c in self.columns})
        return table.slice(sl.start - first, sl.rows)

    def rows(self, sl: ManifestSlice) -> list[dict]:
        rows = self.table(sl).to_pylist()
        ids = [r["video_id"] for r in rows]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(
                f"manifest {sl.file} rows {sl.start}–{sl.stop} repeat video_id '{dup}' — "
                "re-ingest the corpus (the ingest de-duplicates by key)"
            )
        return rows
