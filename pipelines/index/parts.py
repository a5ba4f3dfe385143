"""Embedding parts as the index stages read them: footers, one part's columns, checked vectors.

Index build, dedup and neighbour lists stream the embeddings table part by part and read only
the columns they need (``video_id``, ``caption``, ``video_emb``; never ``frame_emb`` unless
asked), so no process holds the corpus. The checks are those the whole-table reader makes
(mixed encoders, NaN/zero vectors named by video_id), applied per part.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ragvid.pipelines.index.vectors import _single_encoder, table_vectors
from ragvid.schemas import EMBEDDINGS, list_parts, read_table
from ragvid.schemas.contract import META_ENCODER
from ragvid.schemas.files import open_arrow


@dataclass(frozen=True)
class PartInfo:
    """One part's footer: rows, vector dimension, the encoder its metadata names ('' if none)."""

    uri: str
    rows: int
    dim: int
    encoder: str
    names: tuple[str, ...] = ()


def part_info(uri: str) -> PartInfo:
    with open_arrow(uri) as fh:
        pf = pq.ParquetFile(fh)
        schema = pf.schema_arrow
        meta = dict(schema.metadata or {})
        field = schema.field("video_emb") if "video_emb" in schema.names else None
        dim = field.type.list_size if field is not None else -1
        return PartInfo(
            uri,
            pf.metadata.num_rows,
            dim,
            meta.get(META_ENCODER, b"").decode(),
            tuple(schema.names),
        )


def embedding_paths(embeddings: str) -> list[str]:
    """The parts of an embeddings folder (or one ``.parquet`` file), sorted; a managed folder
    must be complete (:func:`~ragvid.schemas.io.list_parts`)."""
    where = str(embeddings)
    paths = [where] if where.endswith(".parquet") else list_parts(where)
    if not paths:
        raise FileNotFoundError(f"{where}: no part-*.parquet files — run the embed stage")
    return paths


def embedding_parts(embeddings: str) -> list[PartInfo]:
    """The footers of every part (:func:`embedding_paths`)."""
    return [part_info(p) for p in embedding_paths(embeddings)]


def part_encoder(info: PartInfo) -> str:
    """The encoder of a part: its metadata, else its ``encoder`` column (one value)."""
    if info.encoder:
        return info.encoder
    return _single_encoder(read_table(info.uri, EMBEDDINGS, columns=["encoder"]), info.uri)


def read_columns(uri: str, columns: list[str]) -> pa.Table:
    return read_table(uri, EMBEDDINGS, columns=columns)


def normalised(v: np.ndarray, ids: pa.Array, where: str) -> np.ndarray:
    """``v`` L2-normalised in place; NaN/inf or zero rows are refused, named by video_id."""
    norms = np.linalg.norm(v, axis=1)
    bad = ~np.isfinite(norms) | (norms < 1e-6)
    if bad.any():
        names = ids.filter(pa.array(bad)).to_pylist()[:10]
        raise ValueError(
            f"{where}: {int(bad.sum())} vector(s) are NaN/inf or zero (video_id {names}"
            f"{' …' if bad.sum() > 10 else ''}) — re-embed those videos or remove them from the "
            "manifest; an index must not rank garbage"
        )
    v /= norms[:, None]
    return v


def refuse_duplicate_ids(ids: pa.Array, where: str) -> None:
    """A video_id may appear once in an embeddings table: name the first repeated ones."""
    if len(pc.unique(ids)) != len(ids):
        vc = pc.value_counts(ids)
        dup = vc.field("values").filter(pc.greater(vc.field("counts"), 1)).to_pylist()[:5]
        raise ValueError(f"{where}: video_id(s) {dup} appear more than once — dedupe the manifest")


def _rows_vectors(t: pa.Table, rows: np.ndarray | None, uri: str) -> np.ndarray:
    """``video_emb`` of ``rows`` of a part's table (all if None), checked and normalised; a
    contiguous run is sliced (zero-copy), other rows taken."""
    if rows is not None:
        run = len(rows) > 0 and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows)))
        t = t.slice(int(rows[0]), len(rows)) if run else t.take(pa.array(rows))
    return normalised(table_vectors(t), t.column("video_id").combine_chunks(), uri)


def iter_part_vectors(
    uri: str, rows: np.ndarray | None = None, chunk_rows: int = 65_536
) -> Iterator[np.ndarray]:
    """One part's ``video_emb`` (the local ``rows`` only, if given) a chunk of rows at a time,
    checked and normalised: a shard task holds the part's Arrow column and one float32 chunk,
    not a float32 copy of the part beside a taken copy (~1 GB more per task for a 250k-row
    part; the 10M build peaked at 6.65 GB with two shard tasks)."""
    t = read_columns(uri, ["video_id", "video_emb"])
    rows = np.arange(len(t), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    for a in range(0, len(rows), chunk_rows):
        yield _rows_vectors(t, rows[a : a + chunk_rows], uri)


def read_part_vectors(uri: str, rows: np.ndarray | None = None) -> np.ndarray:
    """One part's ``video_emb`` (the local ``rows`` only, if given), checked and normalised."""
    rows = None if rows is None else np.asarray(rows, np.int64)
    return _rows_vectors(read_columns(uri, ["video_id", "video_emb"]), rows, uri)
