"""The near-duplicate groups an index version was built with (its copy of the duplicates
table, checked against ``index.json``), as a group id per index row and members per group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ragvid.pipelines.index.dedup import read_index_duplicates
from ragvid.pipelines.index.idmap import IdMap
from ragvid.pipelines.index.layout import IndexManifest


@dataclass
class DuplicateGroups:
    group_of_row: np.ndarray  # int64 (ntotal,), -1: in no group
    members: dict[int, list[dict[str, Any]]]  # group id → rows of the duplicates table
    group_of_id: dict[str, int]  # every video of the table (indexed or not) → its group

    @classmethod
    def load(cls, man: IndexManifest, ids: IdMap) -> DuplicateGroups | None:
        """None when the version was built without a duplicates table."""
        table = read_index_duplicates(man)
        if table is None:
            return None
        group_of_row = np.full(man.ntotal, -1, np.int64)
        members: dict[int, list[dict[str, Any]]] = {}
        group_of_id: dict[str, int] = {}
        rows = ids.rows(table["video_id"]).tolist()
        cols = ("video_id", "group_id", "canonical_id", "is_canonical", "max_sim")
        for vid, gid, canon, is_canon, sim, row in zip(
            *(table[c] for c in cols), rows, strict=True
        ):
            group_of_id[vid] = int(gid)
            if row >= 0:
                group_of_row[row] = gid
            members.setdefault(int(gid), []).append(
                {
                    "video_id": vid,
                    "canonical_id": canon,
                    "is_canonical": bool(is_canon),
                    "max_sim": float(sim),
                    "in_index": row >= 0,
                }
            )
        return cls(group_of_row, members, group_of_id)

    def rows_in(self, groups: np.ndarray) -> np.ndarray:
        """Index rows that belong to any of ``groups``."""
        groups = np.asarray([g for g in groups if g >= 0], np.int64)
        if not len(groups):
            return np.zeros(0, np.int64)
        return np.flatnonzero(np.isin(self.group_of_row, groups))

    def describe(self, group_id: int) -> dict[str, Any] | None:
        m = self.members.get(int(group_id))
        if m is None:
            return None
        return {"group_id": int(group_id), "size": len(m), "members": m}
