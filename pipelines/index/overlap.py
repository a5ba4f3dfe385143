"""Which of a set of videos the retrieval database can return: the leakage guard of evaluation.

A generated video scored against a reference clip that the index holds — or holds a near-
duplicate copy of — can be a retrieved copy rather than a generation (RagInit starts from the
retrieved latents). :func:`index_overlap` names those clips: directly indexed ids, and ids
whose near-duplicate group (the duplicates table the version was built with) has an indexed
member. It streams the version's ``ids.parquet`` one row group at a time, projected to
``video_id``, so it costs O(index rows) time and O(row group) memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ragvid.pipelines.corpus.split import credible_groups
from ragvid.pipelines.index.layout import IndexManifest
from ragvid.schemas import DUPLICATES, INDEX_IDS, SplitConfig, read_table
from ragvid.schemas.files import exists, open_arrow


@dataclass
class Overlap:
    """Ids of the checked set the index can return: ``direct`` (indexed themselves) and
    ``via_copy`` (id → the indexed near-duplicate that stands for it)."""

    index: str
    checked: int
    direct: list[str] = field(default_factory=list)
    via_copy: dict[str, str] = field(default_factory=dict)
    warning: str = ""  # the index's duplicate groups were (partly) not credible

    @property
    def ids(self) -> list[str]:
        return sorted({*self.direct, *self.via_copy})

    def __bool__(self) -> bool:
        return bool(self.direct or self.via_copy)

    def describe(self, what: str, limit: int = 5) -> str:
        if not self:
            return f"none of the {self.checked} {what} is in index '{self.index}' (held out)"
        parts = []
        if self.direct:
            shown = ", ".join(self.direct[:limit]) + (" …" if len(self.direct) > limit else "")
            parts.append(f"{len(self.direct)} indexed ({shown})")
        if self.via_copy:
            items = sorted(self.via_copy.items())[:limit]
            shown = ", ".join(f"{a} ≈ {b}" for a, b in items)
            more = " …" if len(self.via_copy) > limit else ""
            parts.append(f"{len(self.via_copy)} with an indexed near-duplicate ({shown}{more})")
        return f"{len(self.ids)} of the {self.checked} {what} are in index '{self.index}': " + (
            "; ".join(parts)
        )


def _indexed(ids_uri: str, wanted: pa.Array) -> set[str]:
    """The members of ``wanted`` that appear in the ``video_id`` column of ``ids_uri``."""
    found: set[str] = set()
    with open_arrow(ids_uri) as fh:
        pf = pq.ParquetFile(fh)
        INDEX_IDS.check_metadata(pf.schema_arrow.metadata, ids_uri)
        for i in range(pf.metadata.num_row_groups):
            col = pf.read_row_group(i, columns=["video_id"]).column(0)
            hit = col.filter(pc.is_in(col, value_set=wanted))
            found.update(hit.to_pylist())
    return found


def index_overlap(index_dir: str, video_ids: Iterable[str]) -> Overlap:
    """Which of ``video_ids`` the current version of the index at ``index_dir`` can return."""
    man = IndexManifest.load(index_dir)
    ids = sorted({str(v) for v in video_ids})
    out = Overlap(man.name, len(ids))
    if not ids:
        return out
    wanted = pa.array(ids, pa.string())
    mine = members = None
    if man.duplicates and exists(man.duplicates):
        dups = read_table(
            man.duplicates, DUPLICATES, columns=["video_id", "group_id", "group_size"]
        )
        dups, out.warning = credible_groups(
            dups, man.ntotal + sum(man.dropped.values()), SplitConfig().max_group_share
        )
        mine = dups.filter(pc.is_in(dups.column("video_id"), value_set=wanted))
        groups = mine.column("group_id").combine_chunks()
        members = dups.filter(pc.is_in(dups.column("group_id"), value_set=groups))
    # one pass over the index's ids for the checked videos and their groups' members
    lookup = (
        wanted
        if members is None
        else pc.unique(
            pa.concat_arrays(
                [wanted, members.column("video_id").combine_chunks().cast(pa.string())]
            )
        )
    )
    indexed = _indexed(man.layout.ids, lookup)
    direct = indexed.intersection(ids)
    out.direct = sorted(direct)
    if members is not None:
        by_group: dict[int, str] = {}
        for vid, gid in zip(
            members.column("video_id").to_pylist(),
            members.column("group_id").to_pylist(),
            strict=True,
        ):
            if vid in indexed:
                by_group.setdefault(gid, vid)
        for vid, gid in zip(
            mine.column("video_id").to_pylist(), mine.column("group_id").to_pylist(), strict=True
        ):
            if vid not in direct and gid in by_group:
                out.via_copy[vid] = by_group[gid]
    return out
