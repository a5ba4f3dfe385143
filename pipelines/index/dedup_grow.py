"""Growing near-duplicate groups with a corpus's new embedding parts (issue 13).

A corpus that grows by new parts (a new crawl, a second source) need not have every pair
searched again: the pairs among the old rows are already summarised by the groups of the
table written last time. So only the new rows are searched, against every row (old and new),
and the old groups enter the components as star edges (member → canonical member), which
connect exactly what their pairs connected. Components, canonical members (the smallest
video_id) and group numbers then come out as a full recompute's would; each old row keeps its
``max_sim``, raised where a new pair beats it. With exact pair search (up to
``DedupConfig.exact_max_n`` videos) the table equals a full recompute's (tested).

The table records the parts it was computed over (names, sizes, mtimes — the index build's
staleness test); it is grown only when those parts are an unchanged prefix of today's and the
thresholds and encoder are the same. Anything else — a part rewritten or removed, another
threshold — is a full recompute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ragvid.pipelines.index.parts import embedding_parts
from ragvid.schemas import DUPLICATES, read_table
from ragvid.schemas.contract import META_ENCODER, file_config
from ragvid.schemas.io import exists, read_metadata


@dataclass
class PriorGroups:
    """The groups of the corpus's first ``n_rows`` rows, from the table written last time,
    with the config recorded in that table."""

    table: pa.Table
    n_rows: int
    config: dict[str, Any]


def prior_groups(
    out_path: str,
    embeddings: str,
    parts_now: list[dict[str, Any]],
    *,
    encoder: str,
    delta_dedup: float,
    delta_frame: float | None,
    search: dict[str, Any],
) -> PriorGroups | None:
    """The table at ``out_path`` when the corpus only grew since it was written: its recorded
    parts are an unchanged prefix of ``parts_now`` (the snapshot of ``embeddings``' parts),
    with the same encoder, thresholds and search config (``search``: the ``DedupConfig``
    dump). None otherwise (no table, an older table without its parts, a damaged one, another
    method: the caller searches afresh)."""
    if not exists(out_path):
        return None
    try:
        meta = read_metadata(out_path)
        cfg = file_config(meta)
        before = cfg.get("source_parts")
        if (
            not before
            or len(before) > len(parts_now)
            or parts_now[: len(before)] != before
            or meta.get(META_ENCODER, b"").decode() != encoder
            or cfg.get("delta_dedup") != delta_dedup
            or cfg.get("delta_frame") != delta_frame
            or cfg.get("dedup") != search
        ):
            return None
        n_rows = sum(info.rows for info in embedding_parts(embeddings)[: len(before)])
        if cfg.get("n_videos") != n_rows:
            return None
        table = read_table(out_path, DUPLICATES)
    except (OSError, ValueError, KeyError):
        return None
    return PriorGroups(table, n_rows, cfg)


def grow_groups(
    ids: pa.Array, prior: PriorGroups, i: np.ndarray, j: np.ndarray, s: np.ndarray
) -> pa.Table:
    """The DUPLICATES table of the grown corpus (``ids``: every row's video_id, the prior
    rows first) from the prior groups and the new rows' verified pairs (i, j, sim)."""
    from ragvid.pipelines.index.dedup import group_pairs

    t = prior.table
    member = np.asarray(pc.index_in(t.column("video_id"), value_set=ids), dtype=np.float64)
    canon = np.asarray(pc.index_in(t.column("canonical_id"), value_set=ids), dtype=np.float64)
    if np.isnan(member).any() or np.isnan(canon).any():
        raise ValueError("the prior duplicates table names videos the corpus no longer has")
    star = member != canon
    si, sj = member[star].astype(np.int64), canon[star].astype(np.int64)
    table = group_pairs(
        ids,
        np.concatenate([si, np.asarray(i, np.int64)]),
        np.concatenate([sj, np.asarray(j, np.int64)]),
        np.concatenate([np.full(len(si), -1.0, np.float32), np.asarray(s, np.float32)]),
    )
    # the old rows' pairs were not searched again: their max_sim comes from the prior table
    at = pc.index_in(table.column("video_id"), value_set=t.column("video_id"))
    old = np.asarray(pc.fill_null(pc.take(t.column("max_sim"), at), -1.0), dtype=np.float32)
    new = table.column("max_sim").to_numpy(zero_copy_only=False)
    column = table.schema.get_field_index("max_sim")
    return table.set_column(
        column, "max_sim", pa.array(np.maximum(old, new).astype(np.float32), pa.float32())
    )
