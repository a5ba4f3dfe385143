"""Manifest columns of one index version, aligned to its rows, for predicates and video pages.

Nothing reads a whole manifest: the first use of a column reads that column alone (plus
``video_id`` once, to align manifest rows with index rows) file by file, and keeps it as one
Arrow array of the index's length; a predicate's row mask is cached too. The object belongs
to one opened version (the registry makes a new one per version), so caches never go stale.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ragvid.pipelines.corpus.split import split_ids
from ragvid.schemas import MANIFEST, read_table
from ragvid.schemas.files import open_arrow
from ragvid.schemas.io import list_parts
from ragvid.service.errors import ServiceError
from ragvid.service.query import DURATION, SPLIT, Where


def bad_predicate(message: str, **detail: Any) -> ServiceError:
    return ServiceError(422, "bad_predicate", message, **detail)


class ManifestColumns:
    """Columns of the corpus manifest for the rows of an index (null where a row is missing)."""

    def __init__(
        self,
        manifest: str,
        index_ids: pa.Array | np.ndarray,
        split: str | None = None,
        max_masks: int = 64,
    ):
        self.manifest, self.split = manifest, split
        self.files = list_parts(manifest)
        self._ids = (
            index_ids if isinstance(index_ids, pa.Array) else pa.array(list(index_ids), pa.string())
        )
        self.types: dict[str, pa.DataType] = {}
        for f in self.files:
            with open_arrow(f) as fh:
                for field in pq.read_schema(fh):
                    self.types.setdefault(field.name, field.type)
        self._lock = threading.RLock()
        self._pos: pa.Array | None = None  # index row → global manifest row (null: absent)
        self._starts: np.ndarray | None = None  # first global row of each file
        self._cols: dict[str, pa.Array] = {}
        self._masks: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._max_masks = max_masks

    @property
    def columns(self) -> list[str]:
        return [*self.types, *([SPLIT] if self.split else [])]

    # -- alignment and columns ----------------------------------------------------------------

    def _read(self, column: str) -> pa.Array:
        parts = [
            read_table(f, MANIFEST, columns=[column]).column(0).combine_chunks() for f in self.files
        ]
        return pa.concat_arrays(parts) if parts else pa.array([], self.types.get(column))

    def _positions(self) -> pa.Array:
        if self._pos is None:
            ids = []
            for f in self.files:
                ids.append(read_table(f, MANIFEST, columns=["video_id"]).column(0).combine_chunks())
            self._starts = np.cumsum([0, *(len(a) for a in ids)]).astype(np.int64)
            self._pos = pc.index_in(self._ids, value_set=pa.concat_arrays(ids))
        return self._pos

    def column(self, name: str) -> pa.Array:
        """Column ``name`` for every index row, in row order."""
        self.check(name)
        with self._lock:
            if name not in self._cols:
                if name == SPLIT:
                    val = split_ids(self.split, "val")
                    on = pc.is_in(self._ids, value_set=val)
                    self._cols[name] = pc.if_else(on, "val", "train")
                else:
                    self._cols[name] = self._read(name).take(self._positions())
            return self._cols[name]

    def check(self, name: str) -> None:
        if name == SPLIT and self.split is None:
            raise bad_predicate(
                "split: the index's corpus has no train / val split — run `ragvid corpus "
                "split <corpus>` (or leave the predicate out)",
                column=name,
            )
        if name != SPLIT and name not in self.types:
            raise bad_predicate(
                f"no manifest column '{name}'. Available: {self.columns}",
                column=name,
                available=self.columns,
            )

    # -- predicates ---------------------------------------------------------------------------

    def masks(self, where: Where) -> list[tuple[str, str, np.ndarray]]:
        """(name, description, allowed rows) for each predicate of ``where``."""
        out = []
        lo, hi = where.duration_min, where.duration_max
        if lo is not None or hi is not None:
            what = f"{DURATION} in [{lo if lo is not None else '-∞'}, "
            what += f"{hi if hi is not None else '∞'}]"
            mask = self._cached(("range", lo, hi), lambda: duration_mask(self, lo, hi))
            out.append((f"where.{DURATION}", what, mask))
        if where.split is not None:
            out.append(
                (
                    f"where.{SPLIT}",
                    f"{SPLIT} = {where.split}",
                    self._cached((SPLIT, where.split), lambda: self._equal(SPLIT, [where.split])),
                )
            )
        for col, values in where.column_values():
            key = ("eq", col, tuple(map(repr, values)))
            shown = values[0] if len(values) == 1 else values
            out.append(
                (f"where.{col}", f"{col} = {shown}", self._cached(key, self._eq_of(col, values)))
            )
        return out

    def _cached(self, key: tuple, make) -> np.ndarray:
        with self._lock:
            hit = self._masks.get(key)
            if hit is not None:
                self._masks.move_to_end(key)
                return hit
        mask = make()
        mask.setflags(write=False)
        with self._lock:
            self._masks[key] = mask
            while len(self._masks) > self._max_masks:
                self._masks.popitem(last=False)
        return mask

    def _eq_of(self, col: str, values: Sequence):
        return lambda: self._equal(col, list(values))

    def _equal(self, col: str, values: list) -> np.ndarray:
        arr = self.column(col)
        try:
            wanted = pa.array(values).cast(arr.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise bad_predicate(
                f"where.{col}: {values!r} cannot be compared with column '{col}' of type "
                f"{arr.type} ({exc})",
                column=col,
            ) from None
        return _bools(pc.is_in(arr, value_set=wanted))

    # -- one video ----------------------------------------------------------------------------

    def record(self, row: int) -> dict[str, Any] | None:
        """Every manifest column of index row ``row`` (None when the manifest lacks it)."""
        with self._lock:
            pos = self._positions()[row].as_py()
        if pos is None:
            return None
        f = int(np.searchsorted(self._starts, pos, side="right") - 1)
        offset = pos - int(self._starts[f])
        with open_arrow(self.files[f]) as fh:
            pf = pq.ParquetFile(fh)
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                if offset < n:
                    return pf.read_row_group(g).slice(offset, 1).to_pylist()[0]
                offset -= n
        return None


def duration_mask(cols: ManifestColumns, lo: float | None, hi: float | None) -> np.ndarray:
    """Rows whose ``duration_s`` lies in [lo, hi] (a row without a duration never does)."""
    arr = cols.column(DURATION)
    if not (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type)):
        raise bad_predicate(f"{DURATION} has type {arr.type}, not a number", column=DURATION)
    keep = pa.array(np.ones(len(arr), bool))
    if lo is not None:
        keep = pc.and_(keep, pc.greater_equal(arr, lo))
    if hi is not None:
        keep = pc.and_(keep, pc.less_equal(arr, hi))
    return _bools(keep)


def _bools(arr: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)
