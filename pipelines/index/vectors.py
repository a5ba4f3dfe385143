"""Per-video vectors read from embeddings tables, checked, and the dot products on them.

At the bottom of ``pipelines/index`` with :mod:`.layout`: reads only ``video_id``, ``caption``,
``video_emb`` and ``encoder`` (never the per-frame vectors).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ragvid.schemas import EMBEDDINGS
from ragvid.schemas.contract import META_ENCODER
from ragvid.schemas.io import fs_and_path, list_parts, read_metadata, read_parts, read_table


@dataclass
class Vectors:
    """Per-video vectors pulled from an embeddings table, L2-normalised float32."""

    ids: np.ndarray  # object (N,)
    x: np.ndarray  # float32 (N, dim)
    captions: np.ndarray  # object (N,)
    encoder: str
    source: dict[str, Any]


def table_vectors(table: pa.Table, column: str = "video_emb") -> np.ndarray:
    """A fixed-size-list column as a float32 (N, dim) array."""
    col = table.column(column).combine_chunks()
    dim = col.type.list_size
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(
        -1, dim
    )


def source_snapshot(embeddings: str) -> dict[str, Any]:
    """Paths, sizes and mtimes of the source parts: how to tell the index is stale."""
    parts = list_parts(embeddings) if not str(embeddings).endswith(".parquet") else [embeddings]
    snap = []
    for p in parts:
        fs, path = fs_and_path(p)
        info = fs.info(path)
        name = p.rstrip("/").rsplit("/", 1)[-1]  # names, not paths: a moved workspace is fresh
        snap.append({"name": name, "size": info.get("size"), "mtime": info.get("mtime")})
    return {"uri": str(embeddings), "parts": snap}


def load_vectors(
    embeddings: str | pa.Table,
    *,
    expect_dim: int | None = None,
    expect_encoder: str | None = None,
) -> Vectors:
    """Read and check per-video vectors: refuses empty tables, mixed encoders, duplicate ids,
    NaN or zero vectors (naming the video_ids), and dimensions/encoders other than expected.
    """
    if isinstance(embeddings, pa.Table):
        table, where = embeddings, "embeddings table"
        encoder = _single_encoder(table, where)
        source: dict[str, Any] = {"uri": None, "sha256": _table_hash(table)}
    else:
        where = str(embeddings)
        cols = ["video_id", "caption", "video_emb", "encoder"]
        if where.endswith(".parquet"):
            table = read_table(where, EMBEDDINGS, dim=expect_dim, columns=cols)
            meta = read_metadata(where)
        else:
            table = read_parts(where, EMBEDDINGS, dim=expect_dim, columns=cols)
            meta = read_metadata(list_parts(where)[0])
        encoder = _single_encoder(table, where)
        meta_enc = meta.get(META_ENCODER, b"").decode()
        if meta_enc and meta_enc != encoder:
            raise ValueError(f"{where}: metadata says encoder '{meta_enc}', rows say '{encoder}'")
        source = source_snapshot(where)
    if len(table) == 0:
        raise ValueError(f"{where}: the embeddings table is empty — nothing to index")
    x = table_vectors(table)
    if expect_dim is not None and x.shape[1] != expect_dim:
        raise ValueError(
            f"{where}: vectors have dimension {x.shape[1]}, the index expects {expect_dim} — "
            "use the index built with the same encoder, or rebuild it"
        )
    if expect_encoder is not None and encoder != expect_encoder:
        raise ValueError(
            f"{where}: embeddings made with encoder '{encoder}', the index uses "
            f"'{expect_encoder}' — mixing encoders gives meaningless similarities"
        )
    ids = np.asarray(table.column("video_id").to_pylist(), dtype=object)
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][:5].tolist()
        raise ValueError(f"{where}: video_id(s) {dup} appear more than once — dedupe the manifest")
    norms = np.linalg.norm(x, axis=1)
    bad = ~np.isfinite(norms) | (norms < 1e-6)
    if bad.any():
        names = ids[bad][:10].tolist()
        raise ValueError(
            f"{where}: {int(bad.sum())} vector(s) are NaN/inf or zero (video_id {names}"
            f"{' …' if bad.sum() > 10 else ''}) — re-embed those videos or remove them from the "
            "manifest; an index must not rank garbage"
        )
    x /= norms[:, None]
    caps = table.column("caption").to_pylist() if "caption" in table.column_names else None
    captions = np.asarray(caps if caps is not None else [""] * len(ids), dtype=object)
    return Vectors(ids=ids, x=x, captions=captions, encoder=encoder, source=source)


def _single_encoder(table: pa.Table, where: str) -> str:
    if "encoder" not in table.column_names or len(table) == 0:
        meta = table.schema.metadata or {}
        return meta.get(META_ENCODER, b"unknown").decode()
    encs = table.column("encoder").unique().to_pylist()
    if len(encs) > 1:
        raise ValueError(f"{where}: rows from several encoders {encs} — embed with one encoder")
    return encs[0]


def _table_hash(table: pa.Table) -> str:
    h = hashlib.sha256()
    for v in table.column("video_id").to_pylist():
        h.update(str(v).encode())
    h.update(table_vectors(table).tobytes())
    return h.hexdigest()


# --- choosing and training the index ---------------------------------------------------


def batch_dot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(n, d) · (n, c, d) → (n, c) through BLAS (einsum and strided matmul are 10–40× slower)."""
    return np.matmul(np.ascontiguousarray(v), np.ascontiguousarray(q)[:, :, None])[..., 0]


def l2_normalise(q: np.ndarray, dim: int, what: str) -> np.ndarray:
    q = np.atleast_2d(np.asarray(q, dtype=np.float32))
    if q.shape[1] != dim:
        raise ValueError(
            f"{what} have dimension {q.shape[1]}, the index has dimension {dim} — query with "
            "the encoder the index was built with, or select another index"
        )
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if (~np.isfinite(norms) | (norms < 1e-6)).any():
        raise ValueError(f"{what}: some query vectors are NaN or zero — cannot search with them")
    return q / norms
