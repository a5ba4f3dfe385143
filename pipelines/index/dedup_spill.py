"""Clustered dedup out of core: no process holds the corpus's vectors.

:func:`~ragvid.pipelines.index.dedup_blocks.clustered_pairs` needs every vector in one array
(10 GB of float16 at 10M × 512). Here the same algorithm runs in three passes of tasks
(:func:`~ragvid.pipelines.executor.map_tasks.map_tasks`: Ray tasks when Ray is up, on any node
that sees the spill folder):

1. **scan** — one task per part reads ``video_id`` + ``video_emb``, checks and normalises them
   (:func:`~ragvid.pipelines.index.dedup_blocks.part_vectors`, as ``read_video_vectors``) and
   returns its ids, its rows of the k-means sample and the sum of its unit vectors (the mean
   pair cosine in O(N × dim));
2. **spill** — after k-means on the sample (in the driver: 262k rows at most), one task per
   part reads it again, assigns each vector to its nearest centroid (and the next ones within
   ``assign_margin``) and appends it to the spill file of that cluster's bucket (clusters are
   dealt to buckets of ≈ ``spill_bucket_rows`` rows), in ``vectors_dtype``;
3. **pairs** — one task per bucket loads its files, and for each cluster in it (split by k-means
   again when over ``max_cluster_size``) runs the blocked products of
   :func:`~ragvid.pipelines.index.dedup_blocks.block_pairs`.

The driver holds the ids (Arrow strings), the sample, one float32 top-1 per row and the pairs.
With float32 vectors the clusters, pairs and top-1 are those of the in-memory
``clustered_pairs``. The spill folder (up to ``assign`` rows a video: 1.7 × 10 GB at 10M ×
512 in float16) is removed at the end and wiped at the start of a rerun.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from ragvid.pipelines.executor.map_tasks import map_tasks, ray_node
from ragvid.pipelines.index.dedup_blocks import (
    assign_rows,
    block_pairs,
    centroid_sample_size,
    cluster_count,
    cluster_members,
    part_vectors,
    train_centroids,
)
from ragvid.pipelines.index.parts import refuse_duplicate_ids
from ragvid.schemas.config import DedupConfig
from ragvid.schemas.files import fs_and_path


@dataclass
class CorpusScan:
    """What the driver keeps of the corpus: ids, where each part's rows start, the sample."""

    ids: pa.Array  # string (N,)
    encoder: str
    parts: list[tuple[str | pa.Table, int, int]]  # (part uri or table, first row, rows)
    sample: np.ndarray  # float32 (sample rows, dim), unit vectors
    pair_cosine_sum: float  # Σ_{i<j} x_i·x_j
    dim: int


def scan_part(src: str | pa.Table, rows: int, sample_local: np.ndarray):
    """Pass 1 over one part: (ids, sample rows' vectors, Σ unit vectors, encoder, dim)."""
    ids, x, encoder = part_vectors(src, rows)
    total = x.sum(axis=0, dtype=np.float64) if rows else None
    return ids, x[sample_local], total, encoder, (x.shape[1] if rows else -1)


def scan_corpus(
    sources: list[tuple[str | pa.Table, int]], where: str, cfg: DedupConfig
) -> CorpusScan:
    """Pass 1: every part read once (a task each); the k-means sample is drawn by row number
    from the footers' counts, so it is the one ``clustered_pairs`` draws."""
    n = sum(r for _, r in sources)
    if n == 0:
        raise ValueError(f"{where}: the embeddings table is empty — nothing to index")
    k = cluster_count(n, cfg)
    take = np.sort(
        np.random.default_rng(cfg.seed).choice(
            n, size=centroid_sample_size(n, k, cfg) if k > 1 else 0, replace=False
        )
    )
    starts = np.concatenate([[0], np.cumsum([r for _, r in sources])]).astype(np.int64)
    tasks = []
    for (src, rows), a, b in zip(sources, starts[:-1], starts[1:], strict=True):
        lo, hi = np.searchsorted(take, [a, b])
        tasks.append((src, rows, take[lo:hi] - a))
    ids, samples, parts, encoders, dims = [], [], [], set(), set()
    total = None
    for (src, rows, _), start, (pid, xs, tot, enc, dim) in zip(
        tasks, starts[:-1], map_tasks(scan_part, tasks, workers=cfg.workers), strict=True
    ):
        encoders.add(enc)
        if not rows:
            continue
        dims.add(dim)
        if len(dims) > 1:
            raise ValueError(f"{src}: dimension {dim}, earlier parts {sorted(dims - {dim})}")
        ids.append(pid)
        samples.append(xs)
        parts.append((src, int(start), rows))
        total = tot if total is None else total + tot
    if len(encoders) > 1:
        raise ValueError(f"{where}: parts from several encoders {sorted(encoders)} — use one")
    all_ids = pa.concat_arrays(ids)
    refuse_duplicate_ids(all_ids, where)
    dim = dims.pop()
    return CorpusScan(
        ids=all_ids,
        encoder=encoders.pop(),
        parts=parts,
        sample=np.concatenate(samples) if samples else np.empty((0, dim), np.float32),
        pair_cosine_sum=float((total @ total - n) / 2.0),
        dim=dim,
    )


def _bucket_file(spill: str, bucket: int, part: int) -> str:
    return os.path.join(spill, f"b{bucket:05d}-p{part:05d}.npz")


def spill_part(
    src: str | pa.Table,
    part: int,
    start: int,
    rows: int,
    centroids: np.ndarray,
    n_buckets: int,
    spill: str,
    cfg: DedupConfig,
) -> np.ndarray:
    """Pass 2 over one part: each vector into the bucket file of each cluster it joins (global
    row, cluster, vector in ``vectors_dtype``). Returns the rows written per bucket."""
    _, x, _ = part_vectors(src, rows)
    lab = assign_rows(x, centroids, cfg.assign, cfg.assign_margin)
    local, slot = np.nonzero(lab >= 0)
    cluster = lab[local, slot]
    bucket = cluster % n_buckets
    order = np.argsort(bucket, kind="stable")
    counts = np.bincount(bucket, minlength=n_buckets)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for b in np.nonzero(counts)[0]:
        sel = order[bounds[b] : bounds[b + 1]]
        path = _bucket_file(spill, int(b), part)
        with open(path + ".tmp", "wb") as fh:
            np.savez(
                fh,
                rows=(local[sel] + start).astype(np.int64),
                cluster=cluster[sel].astype(np.int32),
                x=x[local[sel]].astype(cfg.vectors_dtype),
            )
        os.replace(path + ".tmp", path)
    return counts


def bucket_pairs(files: list[str], delta: float, cfg: DedupConfig):
    """Pass 3 over one bucket: the pairs ≥ ``delta`` inside each of its clusters (an oversized
    one split by k-means again first), and each member's top-1 within its clusters. Returns
    (i, j, sim, rows, top1, block sizes, the Ray node that ran it or None)."""
    loaded = [np.load(f) for f in files]
    rows = np.concatenate([z["rows"] for z in loaded])
    cluster = np.concatenate([z["cluster"] for z in loaded])
    x = np.concatenate([z["x"] for z in loaded])
    del loaded
    order = np.argsort(cluster, kind="stable")  # each cluster's members in row order
    cuts = np.nonzero(np.diff(cluster[order]))[0] + 1
    ii, jj, ss, rr, tt, sizes = [], [], [], [], [], []
    for members in np.split(order, cuts):
        members = members[np.argsort(rows[members], kind="stable")]
        xm = np.asarray(x[members], dtype=np.float32)
        if len(members) > cfg.max_cluster_size:
            blocks = cluster_members(xm, cfg, depth=1)
        else:
            blocks = [np.arange(len(members))]
        for blk in blocks:
            i, j, s, t1 = block_pairs(rows[members[blk]], xm[blk], delta, cfg.block_rows)
            ii.append(i)
            jj.append(j)
            ss.append(s)
            rr.append(rows[members[blk]])
            tt.append(t1)
            sizes.append(len(blk))
    cat = np.concatenate
    e = [np.empty(0, np.int64)]
    return (
        cat(ii or e),
        cat(jj or e),
        cat(ss or [np.empty(0, np.float32)]),
        cat(rr or e),
        cat(tt or [np.empty(0, np.float32)]),
        np.asarray(sizes, np.int64),
        ray_node(),
    )


def spill_folder(out_path: str) -> str:
    """Where the buckets go: beside the table when it is local (a folder every Ray node of a
    shared workspace sees), else the local temp folder."""
    fs, path = fs_and_path(str(out_path))
    local = isinstance(fs, LocalFileSystem)
    base = os.path.dirname(os.path.abspath(path)) if local else tempfile.gettempdir()
    name = os.path.basename(path).removesuffix(".parquet")
    return os.path.join(base, f".{name}.dedup-spill")


def spilled_clustered_pairs(
    scan: CorpusScan, delta: float, cfg: DedupConfig, spill: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str, list[str]]:
    """Passes 2 and 3 (module docstring). Returns what ``clustered_pairs`` returns —
    (i, j, sim, top1, method), pairs deduplicated and sorted by (i, j) — and the Ray nodes
    that ran the bucket tasks (empty outside Ray)."""
    n = len(scan.ids)
    k = cluster_count(n, cfg)
    centroids = (
        train_centroids(scan.sample, k, cfg) if k > 1 else np.zeros((1, scan.dim), np.float32)
    )
    # a vector is spilled once per cluster it joins: at most ``assign`` times (1.7 measured at
    # 10M with margin 0.05), so no bucket exceeds ``spill_bucket_rows`` on average
    n_buckets = max(1, min(k, -(-min(cfg.assign, k) * n // cfg.spill_bucket_rows)))
    shutil.rmtree(spill, ignore_errors=True)  # a killed run's leftovers
    os.makedirs(spill)
    try:
        tasks = [
            (src, p, start, rows, centroids, n_buckets, spill, cfg)
            for p, (src, start, rows) in enumerate(scan.parts)
        ]
        spilled = sum(map_tasks(spill_part, tasks, workers=cfg.workers))
        buckets = [
            (sorted(glob.glob(os.path.join(spill, f"b{b:05d}-p*.npz"))), float(delta), cfg)
            for b in np.nonzero(spilled)[0]
        ]
        top1 = np.full(n, -1.0, dtype=np.float32)
        ii, jj, ss, sizes, nodes = [], [], [], [], set()
        for i, j, s, rows, t1, sz, node in map_tasks(bucket_pairs, buckets, workers=cfg.workers):
            nodes.add(node)
            np.maximum.at(top1, rows, t1)
            ii.append(i)
            jj.append(j)
            ss.append(s)
            sizes.append(sz)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    i, j, s = (np.concatenate(a) for a in (ii, jj, ss))
    key, first = np.unique(i.astype(np.int64) * n + j, return_index=True)
    sz = np.concatenate(sizes)
    method = (
        f"clustered: {len(sz)} k-means clusters, border vectors in up to {cfg.assign} "
        f"(margin {cfg.assign_margin:g}), blocks ≤ {int(sz.max())} (mean {sz.mean():.0f}); "
        f"{int(spilled.sum())} rows spilled to {len(buckets)} buckets"
    )
    ran_on = sorted(v for v in nodes if v)
    return key // n, key % n, s[first].astype(np.float32), top1, method, ran_on
