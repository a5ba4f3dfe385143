"""The scalable half of corpus dedup: streamed vectors, clustered pair search, row-wise frames.

* :func:`read_video_vectors` reads only ``video_id`` + ``video_emb``, part by part, into one
  preallocated array (float32, or float16 to halve memory), with the checks of
  :func:`~ragvid.pipelines.index.vectors.load_vectors` (empty, mixed encoders, duplicate ids,
  NaN/zero vectors). Ids stay an Arrow string array: no Python object per row.
* :func:`clustered_pairs` is the SemDeDup shape over vectors in memory: spherical k-means on a
  sample (N / 2,048 clusters by default); a vector near a border (its next centroid within
  ``assign_margin`` of its nearest) joins up to ``assign`` clusters, so a pair across the
  border still shares one; oversized clusters are split by k-means again; then
  :func:`block_pairs` — a plain function over one cluster's block — mapped by Ray tasks when
  Ray is initialised, else threads or in-process. Joining the runner-up unconditionally does
  not scale: on CLIP-like data one hub centroid is nearly everyone's second choice (a
  12,522-member block of 30,000). :mod:`.dedup_spill` runs the same steps out of core, which
  is what ``find_duplicates`` uses.
* :func:`read_frame_rows` reads ``frame_emb`` for the rows in candidate pairs only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

from ragvid.pipelines.executor.map_tasks import map_tasks
from ragvid.pipelines.index.parts import (
    embedding_parts,
    normalised,
    part_encoder,
    part_info,
    read_columns,
    refuse_duplicate_ids,
)
from ragvid.pipelines.index.vectors import _single_encoder, table_vectors
from ragvid.schemas import EMBEDDINGS, read_table
from ragvid.schemas.config import DedupConfig


@dataclass
class StreamedVectors:
    """Per-video vectors, L2-normalised, and where each part's rows start."""

    ids: pa.Array  # string (N,)
    x: np.ndarray  # float32 or float16 (N, dim)
    encoder: str
    parts: list[tuple[str | pa.Table, int, int]]  # (part uri or table, first row, rows)


def embedding_sources(embeddings: str | pa.Table) -> list[tuple[str | pa.Table, int]]:
    """(part uri, rows from its footer) for each part; a table is one part."""
    if isinstance(embeddings, pa.Table):
        return [(embeddings, len(embeddings))]
    return [(info.uri, info.rows) for info in embedding_parts(str(embeddings))]


def part_vectors(src: str | pa.Table, rows: int) -> tuple[pa.Array, np.ndarray, str]:
    """One part's ids (string), normalised float32 vectors and encoder, checked against the
    row count its footer gave (NaN/zero vectors refused, named by video_id)."""
    if isinstance(src, pa.Table):
        t, where = src.select(["video_id", "video_emb"]), "embeddings table"
        encoder = _single_encoder(src, where)
    else:
        t, where = read_columns(src, ["video_id", "video_emb"]), src
        encoder = part_encoder(part_info(src))
    if len(t) != rows:
        raise ValueError(f"{where}: {len(t)} rows read, the footer says {rows}")
    vid = t.column("video_id").combine_chunks()
    x = normalised(table_vectors(t), vid, where) if rows else np.empty((0, 0), np.float32)
    return vid.cast(pa.string()), x, encoder


def read_video_vectors(embeddings: str | pa.Table, dtype: str = "float32") -> StreamedVectors:
    """Read ``video_id`` + ``video_emb`` part by part into one (N, dim) array (normalised in
    float32 per part, stored as ``dtype``), refusing what ``load_vectors`` refuses."""
    where = "embeddings table" if isinstance(embeddings, pa.Table) else str(embeddings)
    sources = embedding_sources(embeddings)
    n = sum(r for _, r in sources)
    if n == 0:
        raise ValueError(f"{where}: the embeddings table is empty — nothing to index")
    x: np.ndarray | None = None
    ids: list[pa.Array] = []
    parts: list[tuple[str | pa.Table, int, int]] = []
    encoders: set[str] = set()
    start = 0
    for src, rows in sources:
        vid, v, encoder = part_vectors(src, rows)
        encoders.add(encoder)
        if rows == 0:
            continue
        if x is None:
            x = np.empty((n, v.shape[1]), dtype=dtype)
        elif v.shape[1] != x.shape[1]:
            raise ValueError(f"{src}: dimension {v.shape[1]}, earlier parts {x.shape[1]}")
        x[start : start + rows] = v
        ids.append(vid)
        parts.append((src, start, rows))
        start += rows
    if len(encoders) > 1:
        raise ValueError(f"{where}: parts from several encoders {sorted(encoders)} — use one")
    all_ids = pa.concat_arrays(ids)
    refuse_duplicate_ids(all_ids, where)
    assert x is not None
    return StreamedVectors(ids=all_ids, x=x, encoder=encoders.pop(), parts=parts)


# -- pairs inside one cluster ------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _lower_triangle(m: int) -> np.ndarray:
    """Boolean (m, m) mask of the diagonal and below (one per block size, reused)."""
    return np.tri(m, dtype=bool)


def block_pairs(
    rows: np.ndarray, xb: np.ndarray, delta: float, block_rows: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of one cluster's members with cosine ≥ ``delta`` (blocked float32 products
    over the upper triangle), as global rows (i < j) and similarity, plus each member's
    top-1 similarity to another member (-1 when alone). ``rows`` are the members' row numbers,
    ``xb`` their vectors."""
    xb = np.asarray(xb, dtype=np.float32)
    m = len(rows)
    top1 = np.full(m, -1.0, dtype=np.float32)
    ii, jj, ss = [], [], []
    for a in range(0, m, block_rows):
        b = min(m, a + block_rows)
        g = xb[a:b] @ xb[a:].T  # rows a..b against columns a..m
        np.copyto(g[:, : b - a], -2.0, where=_lower_triangle(b - a))  # self and below
        np.maximum(top1[a:b], g.max(axis=1), out=top1[a:b])
        np.maximum(top1[a:], g.max(axis=0), out=top1[a:])
        r, c = np.nonzero(g >= delta)
        if len(r):
            gi, gj = rows[a + r], rows[a + c]
            ii.append(np.minimum(gi, gj))
            jj.append(np.maximum(gi, gj))
            ss.append(g[r, c])
    top1[top1 < -1.0] = -1.0
    if not ii:
        e = np.empty(0, np.int64)
        return e, e, np.empty(0, np.float32), top1
    return np.concatenate(ii), np.concatenate(jj), np.concatenate(ss), top1


# -- clusters ----------------------------------------------------------------------------------


def _as32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def cluster_count(n: int, cfg: DedupConfig) -> int:
    """k = N / ``cluster_size`` (≥ 39 rows per centroid, as FAISS wants)."""
    return min(max(1, math.ceil(n / cfg.cluster_size)), max(1, n // 39))


def centroid_sample_size(n: int, k: int, cfg: DedupConfig) -> int:
    """Rows the k-means trains on: ``train_points_per_centroid`` per centroid (≥ 39), capped."""
    return min(n, max(39 * k, min(cfg.train_points_per_centroid * k, cfg.train_sample_cap)))


def train_centroids(sample: np.ndarray, k: int, cfg: DedupConfig) -> np.ndarray:
    """Spherical k-means centroids (k, dim) float32 of the (already drawn) sample."""
    km = faiss.Kmeans(
        sample.shape[1],
        k,
        niter=cfg.kmeans_iter,
        spherical=True,
        seed=cfg.seed,
        max_points_per_centroid=max(39, math.ceil(len(sample) / k)),
    )
    km.train(_as32(sample))
    return np.asarray(km.centroids, dtype=np.float32)


def assign_rows(
    x: np.ndarray, centroids: np.ndarray, assign: int, margin: float, chunk: int = 65_536
) -> np.ndarray:
    """Each row's ``assign`` nearest centroids, (N, assign) int64 — the second and later only
    where their cosine is within ``margin`` of the nearest's (-1 elsewhere): a vector deep
    inside its cluster joins no other, so no hub centroid collects every vector as its
    runner-up."""
    n, k = len(x), len(centroids)
    if k <= 1:
        return np.zeros((n, 1), np.int64)
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(_as32(centroids))
    m = min(assign, k)
    out = np.empty((n, m), np.int64)
    for a in range(0, n, chunk):
        sim, lab = index.search(_as32(x[a : a + chunk]), m)
        lab[sim < sim[:, :1] - margin] = -1  # not near a border: primary only
        out[a : a + chunk] = lab
    return out


def kmeans_assign(x: np.ndarray, k: int, assign: int, cfg: DedupConfig) -> np.ndarray:
    """:func:`train_centroids` on a sample of ``x`` (:func:`centroid_sample_size` rows drawn
    with ``cfg.seed``), then :func:`assign_rows` for every row of ``x``."""
    n = len(x)
    if k <= 1:
        return np.zeros((n, 1), np.int64)
    rng = np.random.default_rng(cfg.seed)
    want = centroid_sample_size(n, k, cfg)
    sample = x[np.sort(rng.choice(n, size=want, replace=False))]
    return assign_rows(x, train_centroids(sample, k, cfg), assign, cfg.assign_margin)


def _members(assignment: np.ndarray, k: int) -> list[np.ndarray]:
    n, m = assignment.shape
    flat = assignment.ravel()
    order = np.argsort(flat, kind="stable")
    order = order[flat[order] >= 0]
    rows = (order // m).astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(flat[flat >= 0], minlength=k))])
    return [rows[bounds[c] : bounds[c + 1]] for c in range(k) if bounds[c + 1] > bounds[c]]


def cluster_members(x: np.ndarray, cfg: DedupConfig, depth: int = 0) -> list[np.ndarray]:
    """Row numbers of each cluster's members (a row sits in up to ``assign`` clusters); a
    cluster over ``max_cluster_size`` is split by k-means again, with the same
    multi-assignment (up to 3 levels), so the blocks — and the work per block — stay bounded.
    A cluster k-means cannot split stays whole: slower, still exact within it."""
    n = len(x)
    k = cluster_count(n, cfg)
    if k == 1:
        return [np.arange(n, dtype=np.int64)]
    out: list[np.ndarray] = []
    for members in _members(kmeans_assign(x, k, cfg.assign, cfg), k):
        if len(members) <= cfg.max_cluster_size or depth >= 2 or len(members) > 0.9 * n:
            out.append(members)
        else:
            out.extend(members[s] for s in cluster_members(x[members], cfg, depth + 1))
    return out


def clustered_pairs(
    x: np.ndarray, delta: float, cfg: DedupConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Pairs (i < j) with x_i·x_j ≥ delta found within clusters, deduplicated, sorted by
    (i, j); top-1 similarity of every row to another member of its clusters (the nearest
    neighbour whenever it shares a cluster). Returns (i, j, sim, top1, method)."""
    n = len(x)
    clusters = cluster_members(x, cfg)
    tasks = ((rows, _as32(x[rows]), float(delta), cfg.block_rows) for rows in clusters)
    top1 = np.full(n, -1.0, dtype=np.float32)
    ii, jj, ss = [], [], []
    results = map_tasks(block_pairs, tasks, workers=cfg.workers)
    for rows, (i, j, s, t1) in zip(clusters, results, strict=True):
        np.maximum.at(top1, rows, t1)
        ii.append(i)
        jj.append(j)
        ss.append(s)
    i, j, s = (np.concatenate(a) for a in (ii, jj, ss))
    key = i.astype(np.int64) * n + j
    key, first = np.unique(key, return_index=True)
    sizes = np.array([len(c) for c in clusters])
    method = (
        f"clustered: {len(clusters)} k-means clusters, border vectors in up to {cfg.assign} "
        f"(margin {cfg.assign_margin:g}), blocks ≤ {int(sizes.max())} (mean {sizes.mean():.0f})"
    )
    return key // n, key % n, s[first].astype(np.float32), top1, method


# -- frames of the candidate rows --------------------------------------------------------------


def read_frame_rows(parts: list[tuple[str | pa.Table, int, int]], rows: np.ndarray) -> dict:
    """Frame embeddings (T×dim float32) of the given row numbers only, keyed by row: per part,
    only the ``frame_emb`` column, then only the wanted rows. Empty when the table has none."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    out: dict[int, np.ndarray] = {}
    for src, start, n in parts:
        lo, hi = np.searchsorted(rows, [start, start + n])
        if lo == hi:
            continue
        if isinstance(src, pa.Table):
            if "frame_emb" not in src.column_names:
                return {}
            col = src.column("frame_emb")
        else:
            if "frame_emb" not in part_info(src).names:
                return {}
            col = read_table(src, EMBEDDINGS, columns=["frame_emb"]).column("frame_emb")
        want = rows[lo:hi]
        taken = col.take(pa.array(want - start))
        for r, fr in zip(want.tolist(), taken, strict=True):
            flat = fr.values.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            out[r] = flat.reshape(len(fr), -1) if len(fr) else flat.reshape(0, 0)
    return out
