"""Train / val split of a corpus: the held-out protocol of RAGME §4.

The paper scores WebVid *val* captions against a retrieval database built on *train*; scoring
a caption against an index that holds its own source clip measures recall, not generation.
A video's side is a pure function of its id and the seed (a keyed BLAKE2 hash mapped to
[0, 1)), so it never depends on manifest order, a grown corpus keeps every old video's side,
and any stage can check membership without a join. ``ragvid corpus split`` writes the
assignment once as the validated ``splits`` table next to the manifest (``split.parquet``,
the config in its metadata), streamed file by file; the index build leaves val out and
evaluation takes its prompts and reference videos from val.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ragvid.pipelines.corpus.parts import manifest_files, manifest_rows
from ragvid.schemas import DUPLICATES, MANIFEST, SPLITS, SplitConfig, read_table
from ragvid.schemas.contract import file_config
from ragvid.schemas.files import atomic_put, exists, open_arrow

log = logging.getLogger(__name__)

TRAIN, VAL = "train", "val"
SPLIT_NAMES = (TRAIN, VAL)


def val_mask(video_ids: Iterable[str], config: SplitConfig) -> np.ndarray:
    """True where a video is held out: its keyed hash falls below ``val_fraction``."""
    key = str(config.seed).encode()
    cut = int(config.val_fraction * 2**64)
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8, key=key).digest(), "big")
            < cut
            for v in video_ids
        ),
        dtype=bool,
    )


def _group_keys(ids: pa.Array, groups: pa.Table | None) -> pa.Array:
    """The id each video is hashed by: its near-duplicate group's canonical id when it is in
    ``groups`` (so a clip and its copies land on one side), else its own id."""
    if groups is None:
        return ids
    at = pc.index_in(ids, value_set=groups.column("video_id").combine_chunks())
    canon = groups.column("canonical_id").combine_chunks().take(at)
    return pc.coalesce(canon, ids)


def credible_groups(groups: pa.Table, total: int, max_share: float) -> tuple[pa.Table, str]:
    """``groups`` (duplicates rows with ``group_size``) less the groups too big to be copies:
    over ``max_share`` of a ``total``-video corpus is a collapsed encoder (it puts everything
    in one group), not near-duplicates. Returns the kept rows and a warning ('' if none)."""
    cap = max(2, int(max_share * max(total, 1)))
    big = pc.greater(groups.column("group_size"), cap)
    n_big = int(pc.sum(big).as_py() or 0)
    if not n_big:
        return groups, ""
    largest = int(pc.max(groups.column("group_size")).as_py())
    warning = (
        f"{n_big} of {total} videos sit in near-duplicate groups larger than {max_share:.0%} "
        f"of the corpus (largest: {largest}) — that is a collapsed encoder, not copies; those "
        "groups are ignored. Check the encoder (`ragvid encoder fit` offline) and rerun "
        "`ragvid index dedup`"
    )
    return groups.filter(pc.invert(big)), warning


def _usable_groups(duplicates: str, total: int, config: SplitConfig) -> tuple[pa.Table, list[str]]:
    """The duplicates table's (video_id, canonical_id) rows a split can trust (members of an
    incredible group are split by their own ids)."""
    t = read_table(duplicates, DUPLICATES, columns=["video_id", "canonical_id", "group_size"])
    t, warning = credible_groups(t, total, config.max_group_share)
    return t.select(["video_id", "canonical_id"]), [warning] if warning else []


def assign(video_ids: pa.Array, config: SplitConfig, groups: pa.Table | None = None) -> pa.Table:
    """``video_id, split`` rows for ``video_ids`` (the ``splits`` table's columns); with the
    ``groups`` of a duplicates table a whole near-duplicate group shares one side."""
    ids = video_ids.cast(pa.string())
    held = val_mask(_group_keys(ids, groups).to_pylist(), config)
    names = np.where(held, VAL, TRAIN)
    return pa.table({"video_id": ids, "split": pa.array(names, pa.string())})


@dataclass(frozen=True)
class SplitSummary:
    uri: str
    config: SplitConfig
    counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)


def write_split(
    manifest_dir: str,
    out_uri: str,
    config: SplitConfig,
    *,
    duplicates: str | None = None,
    corpus: str = "",
) -> SplitSummary:
    """Assign every manifest row to train / val and write ``out_uri`` atomically, one manifest
    file at a time (memory bounded by the largest file's ids). ``duplicates`` (a duplicates
    table) keeps each near-duplicate group on one side: a copy of a val clip left in train
    would leak it through retrieval."""
    files = manifest_files(manifest_dir, corpus)
    total = manifest_rows(manifest_dir, corpus)
    groups, warnings = None, []
    if duplicates:
        groups, warnings = _usable_groups(duplicates, total, config)
    schema = SPLITS.schema()
    meta = SPLITS.metadata(
        config={  # names, not paths: a moved workspace keeps its split
            "split": config.model_dump(),
            "corpus": corpus,
            "grouped_by_duplicates": duplicates is not None,
        }
    )
    schema = schema.with_metadata({**(schema.metadata or {}), **meta})
    counts = dict.fromkeys(SPLIT_NAMES, 0)

    def write(fh) -> None:
        with pq.ParquetWriter(fh, schema, compression="zstd", write_page_checksum=True) as w:
            for file in files:
                ids = read_table(file, MANIFEST, columns=["video_id"]).column(0).combine_chunks()
                part = SPLITS.conform(assign(ids, config, groups), where=file).cast(schema)
                held = int(pc.sum(pc.equal(part.column("split"), VAL)).as_py() or 0)
                counts[VAL] += held
                counts[TRAIN] += len(part) - held
                w.write_table(part)

    atomic_put(out_uri, write)
    for w in warnings:
        log.warning("split of %s: %s", corpus or manifest_dir, w)
    return SplitSummary(out_uri, config, counts, warnings)


def split_config(uri: str) -> SplitConfig:
    """The config a split table was written with (its Parquet metadata)."""
    with open_arrow(uri) as fh:
        meta = pq.ParquetFile(fh).schema_arrow.metadata
    SPLITS.check_metadata(meta, uri)
    return SplitConfig.model_validate(file_config(meta)["split"])


def split_ids(uri: str, name: str) -> pa.Array:
    """The video_ids on side ``name`` (train | val) of the split table at ``uri``."""
    if name not in SPLIT_NAMES:
        raise ValueError(f"unknown split '{name}'. Available: {', '.join(SPLIT_NAMES)}")
    if not exists(uri):
        raise FileNotFoundError(
            f"no split table at {uri} — run `ragvid corpus split <corpus>` first"
        )
    t = read_table(uri, SPLITS)
    keep = pc.equal(t.column("split"), name)
    return t.column("video_id").filter(keep).combine_chunks()
