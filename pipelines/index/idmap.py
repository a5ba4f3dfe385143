"""Index row ↔ video_id without a Python object per row.

At WebVid size (10.7M rows) an object array of ids plus a ``{id: row}`` dict costs ~2 GB in
every process that opens the index; here the ids stay one Arrow string array, and lookups go
through a sorted fixed-width byte copy (``searchsorted``), ~20 bytes a row in all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# rows converted to fixed width at a time: bounds the temporaries of the vectorised copy
_CHUNK = 1 << 20


def fixed_width(ids: pa.Array, width: int) -> np.ndarray:
    """``ids`` (Arrow strings, no nulls) as a ``S{width}`` array, built from the Arrow buffers
    without Python strings. Longer ids are cut (callers compare lengths first)."""
    ids = ids.cast(pa.large_binary()) if not pa.types.is_large_binary(ids.type) else ids
    out = np.zeros((len(ids), max(1, width)), np.uint8)
    for a in range(0, len(ids), _CHUNK):
        part = ids.slice(a, _CHUNK)
        off_buf, data_buf = part.buffers()[1:3]
        offsets = np.frombuffer(off_buf, np.int64)[part.offset : part.offset + len(part) + 1]
        lens = np.minimum(np.diff(offsets), width)
        data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        for length in np.unique(lens):  # ids come in a few lengths: one 2-D gather per length
            if length == 0:
                continue
            rows = np.flatnonzero(lens == length)
            cols = np.arange(length)
            out[a + rows, :length] = data[offsets[rows][:, None] + cols]
    return out.view(f"S{max(1, width)}").ravel()


def take_padded(column: pa.Array, rows: np.ndarray) -> np.ndarray:
    """``column``'s values at index ``rows`` (any shape) as an object array; None where a row
    is < 0 (a padded result slot)."""
    rows = np.asarray(rows, np.int64)
    flat = rows.ravel()
    ok = flat >= 0
    out = np.full(len(flat), None, dtype=object)
    if ok.any():
        out[ok] = column.take(pa.array(flat[ok])).to_numpy(zero_copy_only=False)
    return out.reshape(rows.shape)


def _as_array(ids: Iterable[str | None] | pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(ids, pa.ChunkedArray):
        return ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
    if isinstance(ids, pa.Array):
        return ids
    return pa.array(list(ids), pa.string())


class IdMap:
    """The ids of an index in row order: rows for ids (``rows``, ``row``, ``in``) and ids for
    rows (``take``). The lookup table is built on the first lookup."""

    def __init__(self, ids: pa.Array | pa.ChunkedArray | Sequence[str]):
        arr = _as_array(ids)
        if arr.null_count:
            raise ValueError(f"index ids hold {arr.null_count} null video_id(s)")
        self.array: pa.Array = arr
        self._keys: np.ndarray | None = None  # sorted fixed-width ids
        self._order: np.ndarray | None = None  # row of each sorted key
        self._lens: np.ndarray | None = None  # byte length of each sorted key's id
        self._width = 0

    def __len__(self) -> int:
        return len(self.array)

    def __iter__(self) -> Iterator[str]:
        for a in range(0, len(self.array), _CHUNK):
            yield from self.array.slice(a, _CHUNK).to_pylist()

    def tolist(self) -> list[str]:
        return self.array.to_pylist()

    def build_lookup(self) -> None:
        """Build the lookup now (a service does it before requests race for it)."""
        self._lookup()

    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        if self._keys is None:
            lens = pc.binary_length(self.array).to_numpy()
            self._width = int(lens.max()) if len(lens) else 0
            keys = fixed_width(self.array, self._width)
            # by key, then length ("ab" and "ab\0" share a key), then row: a repeated id
            # resolves to its first row
            order = np.lexsort((lens, keys))
            self._lens, self._order = lens[order], order.astype(np.int64)
            self._keys = keys[order]  # set last: another thread may be looking already
        return self._keys, self._order  # type: ignore[return-value]

    def rows(self, ids: Iterable[str | None] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Row of each id (int64; -1 for an id not in the index, or None)."""
        q = _as_array(ids)
        out = np.full(len(q), -1, np.int64)
        if not len(q) or not len(self.array):
            return out
        keys, order = self._lookup()
        q = q.cast(pa.string()) if not pa.types.is_string(q.type) else q
        lens = pc.binary_length(q).fill_null(self._width + 1).to_numpy(zero_copy_only=False)
        fits = lens <= self._width
        if not fits.any():
            return out
        qk = fixed_width(q.fill_null(""), self._width)
        last = len(keys) - 1
        pos = np.minimum(np.searchsorted(keys, qk), last)
        same = fits & (keys[pos] == qk)
        # ids that differ only by trailing NUL bytes share a key: step to the one of this length
        lens_sorted = self._lens
        step = same & (lens_sorted[pos] < lens) & (pos < last)  # type: ignore[index]
        while step.any():
            pos[step] += 1
            same &= keys[pos] == qk
            step = same & (lens_sorted[pos] < lens) & (pos < last)  # type: ignore[index]
        hit = same & (lens_sorted[pos] == lens)  # type: ignore[index]
        out[hit] = order[pos[hit]]
        return out

    def row(self, video_id: str) -> int | None:
        r = int(self.rows([video_id])[0])
        return r if r >= 0 else None

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and self.row(video_id) is not None

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Ids of ``rows`` (any shape) as an object array; None where a row is < 0."""
        return take_padded(self.array, rows)
