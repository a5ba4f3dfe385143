"""The exact per-video vectors of an index version: one ``.npy`` piece per shard, read by row.

Re-ranking a compressed index and the mutual-dedup filter need each row's exact vector
whatever FAISS stores. A version keeps them once, in ``float16`` by default (512-d: 1 KiB a
video, ≈ 11 GB for WebVid10M instead of 22 GB of float32), written by the task that fills the
shard — the driver never holds the corpus — and memory-mapped when local, so an opened index
costs page cache, not RAM. Versions built before pieces keep one float32 ``vectors.npy``;
:class:`RowStore` opens both.
"""

from __future__ import annotations

import io
import mmap
from dataclasses import dataclass
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from ragvid.pipelines.index.layout import IndexManifest
from ragvid.pipelines.index.shards import read_verified, verify_file
from ragvid.schemas.checksum import FileRecord
from ragvid.schemas.files import fs_and_path
from ragvid.schemas.workspace import VECTORS_FILE

# A page fault on a file mapping maps more than the row it reads: the pages around it
# (fault_around_bytes, 64 KiB) or, on kernels whose page cache holds large folios, the whole
# folio — measured 2 MiB a row on this box (Linux 6.18). The worst case sizes a gather's steps;
# the growth itself is read from /proc/self/statm where there is one.
ROW_FAULT_MAX = 2 * 2**20
_PAGE = mmap.PAGESIZE


def _mapped_file_bytes() -> int | None:
    """This process's resident file-backed + shared pages (Linux), else None."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[2]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def pieces_of(man: IndexManifest) -> list[dict[str, Any]]:
    """The manifest's vector pieces (a pre-pieces version: its one ``vectors.npy``)."""
    v = man.vectors
    if "pieces" in v:
        return list(v["pieces"])
    return [{"file": v.get("file", VECTORS_FILE), "rows": man.ntotal, **v}]


def piece_records(man: IndexManifest) -> list[tuple[str, str, FileRecord]]:
    return [
        (
            man.layout.file(p["file"]),
            "vectors file",
            FileRecord(int(p.get("size", -1)), p["sha256"]),
        )
        for p in pieces_of(man)
        if p.get("sha256")
    ]


@dataclass
class RowStore:
    """Rows of the concatenated pieces, gathered by global row id as float32.

    Memory-mapped pages stay in the process's resident set once touched: a re-rank of many
    queries or a full scan would grow it to every piece (10 GB at 10M). So after each
    ``release_bytes`` of pages read, the mapping is told to drop them (``MADV_DONTNEED``: the
    page cache keeps them, the next read maps them back) — the process holds at most about
    that much of the pieces. Pieces of at most ``keep_mapped_bytes`` in all (1M × 512 float16:
    1 GB) stay mapped: releasing and mapping them again would cost a re-rank more time than
    the bounded share saves."""

    pieces: list[np.ndarray]
    starts: np.ndarray  # (len(pieces) + 1,) first row of each piece, then the total
    dim: int
    release_bytes: int = 256 * 2**20
    keep_mapped_bytes: int = 2 * 2**30
    _touched: int = 0  # estimated bytes mapped since the last release (no /proc)
    _base: int | None = None  # resident file bytes when opened / last released (measured)

    def __post_init__(self) -> None:
        self._base = _mapped_file_bytes()

    @classmethod
    def open(cls, man: IndexManifest, verify: bool = True) -> RowStore:
        """Open (memory-map when local) every piece, checked against its sha256."""
        arrays = []
        for p in pieces_of(man):
            uri = man.layout.file(p["file"])
            fs, path = fs_and_path(uri)
            if isinstance(fs, LocalFileSystem):
                if verify:
                    verify_file(uri, p.get("sha256"), "vectors file")
                a = np.load(path, mmap_mode="r")
            else:
                a = np.load(io.BytesIO(read_verified(uri, p.get("sha256"), "vectors file")))
            if a.ndim != 2 or a.shape != (int(p.get("rows", a.shape[0])), man.dim):
                raise ValueError(
                    f"{uri}: shape {a.shape} ≠ ({p.get('rows')}, {man.dim}) — the vectors file "
                    "does not belong to this index; rebuild it with `ragvid index build`"
                )
            arrays.append(a)
        return cls.of(arrays, man.dim)

    @classmethod
    def of(cls, arrays: list[np.ndarray], dim: int) -> RowStore:
        starts = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
        return cls(list(arrays), starts, dim)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.starts[-1]), self.dim

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, rows: Any) -> np.ndarray:
        """``store[rows]`` for an int, a slice or an int array of any shape → float32."""
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(len(self)))
        rows = np.asarray(rows, dtype=np.int64)
        rows = np.where(rows < 0, rows + len(self), rows)  # numpy's negative rows
        if rows.ndim == 0:
            return self[rows[None]][0]
        flat = rows.ravel()
        out = np.empty((len(flat), self.dim), dtype=np.float32)
        if not self._releases():
            self._gather(flat, out)
            return out.reshape(*rows.shape, self.dim)
        # a random gather maps up to ROW_FAULT_MAX a row (a re-rank of 4,096 queries × 25
        # candidates mapped 3.6 GB of the pieces at 10M): steps whose worst case fits
        # release_bytes, released as the measured growth reaches it
        row_bytes = self.pieces[0].itemsize * self.dim
        step = max(1, self.release_bytes // max(ROW_FAULT_MAX, row_bytes))
        for a in range(0, len(flat), step):
            self._gather(flat[a : a + step], out[a : a + step])
            self._read(min(step, len(flat) - a) * max(ROW_FAULT_MAX, row_bytes))
        return out.reshape(*rows.shape, self.dim)

    def _gather(self, rows: np.ndarray, out: np.ndarray) -> None:
        if len(self.pieces) == 1:
            out[:] = self.pieces[0][rows]
            return
        which = np.searchsorted(self.starts, rows, side="right") - 1
        for i in np.unique(which):
            m = which == i
            out[m] = self.pieces[i][rows[m] - self.starts[i]]

    def blocks(self, block_rows: int = 262_144):
        """(first row, float32 block) over all rows in order: exact scans in bounded memory."""
        for i, a in enumerate(self.pieces):
            for s in range(0, len(a), block_rows):
                block = np.asarray(a[s : s + block_rows], dtype=np.float32)
                self._read(block.shape[0] * a.itemsize * self.dim)
                yield int(self.starts[i]) + s, block

    def _releases(self) -> bool:
        """Whether mapped pages are dropped as reads go: memory-mapped pieces above
        ``keep_mapped_bytes`` in all (pieces read from remote storage are in RAM already)."""
        mapped = [a for a in self.pieces if getattr(a, "_mmap", None) is not None]
        return sum(a.nbytes for a in mapped) > self.keep_mapped_bytes

    def _read(self, nbytes: int) -> None:
        """Count what a read may have mapped; release once it reaches ``release_bytes`` —
        measured (resident file pages grown since the last release) where /proc has it,
        else estimated (``nbytes`` summed)."""
        if not self._releases():
            return
        self._touched += nbytes
        now = _mapped_file_bytes()
        grown = now - self._base if now is not None and self._base is not None else None
        if (grown if grown is not None else self._touched) >= self.release_bytes:
            self.release()

    def release(self) -> None:
        """Drop the pieces' mapped pages from this process (they stay in the page cache)."""
        self._touched = 0
        for a in self.pieces:
            mm = getattr(a, "_mmap", None)
            if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
                mm.madvise(mmap.MADV_DONTNEED)
        self._base = _mapped_file_bytes()


def exact_topk(
    q: np.ndarray, store: RowStore, k: int, score_bytes: int = 256 * 2**20
) -> np.ndarray:
    """Row ids of each query's ``k`` highest inner products, scanning ``store`` block by block
    (a 200 × 10M score matrix would be 8 GB); a block's scores (and ``-s`` beside them) stay
    near ``score_bytes`` whatever the number of queries (1,000 queries × 262k rows: 6.4 GB
    peak before)."""
    k = min(k, len(store))
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.empty((len(q), 0), dtype=np.int64)
    block_rows = int(np.clip(score_bytes // (4 * max(1, len(q))), 4096, 262_144))
    for start, xb in store.blocks(block_rows):
        s = q @ xb.T
        kk = min(k, s.shape[1])
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    return best_i
