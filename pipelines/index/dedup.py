"""Corpus-level near-duplicate groups: all pairs with cosine ≥ δ_dedup, connected components.

Pairs come from an exact FAISS range search (Flat) up to ``exact_max_n`` videos and, above,
from the clustered search (SemDeDup's shape: spherical k-means, border vectors in their nearest
few clusters, exact blocked products inside each cluster — linear in N for a bounded cluster
size; ``DedupConfig``), run out of core by :mod:`.dedup_spill`: tasks per part read
``video_id`` + ``video_emb`` and spill each vector to its clusters' bucket files, tasks per
bucket find the pairs (Ray tasks when Ray is up) — the driver holds ids, a k-means sample and
one float per row, never the vectors. The one-process IVF range search stays as
``method="ivf"``. Frame embeddings are read only for the rows of candidate pairs; components
come from scipy over the rows in pairs, with no Python object per corpus row. The canonical
member of a group is its smallest video_id (deterministic, independent of part order).
Singletons get no row: a video absent from the table is its own canonical member. A histogram
of every video's top-1 similarity, with the threshold drawn in, is written next to the table
to help choose δ_dedup on a new corpus.

A video embedding is a frame mean (Eq. 3), blind to order: a clip and its reverse, or the same
objects moving along other paths, can share it. So a candidate pair must also agree frame by
frame: the mean cosine of its time-aligned frame embeddings must reach ``delta_frame``.
Re-encoded, resized or trimmed copies keep their frames; distinct clips do not (on the demo
corpus: copies ≥ 0.974, distinct pairs above δ_dedup ≤ 0.92; BENCHMARKS.md). Tables without
frame embeddings skip the check.

The table's size and sha256 go into the report; an index build copies the table into its
version and records them in ``index.json``, and readers of an index's duplicates pass that
record to :func:`read_duplicates` (checked whole before parsing).
"""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ragvid.pipelines.index.dedup_blocks import (
    StreamedVectors,
    embedding_sources,
    read_frame_rows,
    read_video_vectors,
)
from ragvid.pipelines.index.dedup_grow import grow_groups, prior_groups
from ragvid.pipelines.index.dedup_spill import (
    CorpusScan,
    scan_corpus,
    spill_folder,
    spilled_clustered_pairs,
)
from ragvid.pipelines.index.degenerate import dedup_warnings, pair_cosine_sum
from ragvid.pipelines.index.layout import IndexManifest, damaged
from ragvid.pipelines.index.vectors import source_snapshot
from ragvid.schemas import DUPLICATES, EMBEDDINGS, list_parts, read_table, write_table
from ragvid.schemas.checksum import ChecksumMismatchError, FileRecord, file_record
from ragvid.schemas.config import DedupConfig, IndexConfig, defaults
from ragvid.schemas.io import exists, write_bytes_atomic

_INDEX = defaults(IndexConfig)
log = logging.getLogger(__name__)
# the report carries the warnings and the CLI / flows print them: no last-resort stderr copy
log.addHandler(logging.NullHandler())


@dataclass
class DuplicateReport:
    n_videos: int
    n_pairs: int
    n_groups: int
    n_in_groups: int
    n_non_canonical: int
    delta_dedup: float
    delta_frame: float | None
    n_rejected_by_frames: int
    method: str
    table_path: str
    histogram_path: str
    seconds: float
    record: dict[str, Any] = field(default_factory=dict)  # size + sha256 of the table file
    largest_group: int = 0
    mean_pair_cosine: float | None = None  # over every pair of videos (from the vectors read)
    warnings: list[str] = field(default_factory=list)  # degenerate output (DedupConfig.warn_*)
    grown_from: int | None = None  # rows of the earlier table this one grew from
    reused: bool = False  # the table on disk was already this corpus's: kept as is
    nodes: list[str] = field(default_factory=list)  # Ray nodes that ran the pair tasks
    timings: dict[str, float] = field(default_factory=dict)  # read / pairs / frames, seconds


def similar_pairs(
    x: np.ndarray,
    delta: float,
    *,
    exact_max_n: int = 20_000,
    nprobe: int = 16,
    batch: int = 4096,
    hist_sample: int = 20_000,
    first_query: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """All pairs (i < j) with x_i·x_j ≥ delta, plus the top-1 similarity to another row for
    up to ``hist_sample`` rows (-1 for rows outside the sample). Returns (i, j, sim, top1,
    method). ``first_query`` > 0 searches only rows from there on (a grown corpus's new rows,
    against every row): the pairs with at least one new member."""
    n, dim = x.shape
    if n <= exact_max_n:
        index: faiss.Index = faiss.IndexFlatIP(dim)
        method = "exact range search (Flat)"
    else:
        nlist = 2 ** int(round(math.log2(4 * math.sqrt(n))))
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        index.train(x[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))])
        faiss.extract_index_ivf(index).nprobe = nprobe
        method = f"IVF{nlist} range search, nprobe={nprobe}"
    index.add(x)
    ii, jj, ss = [], [], []
    top1 = np.full(n, -1.0, dtype=np.float32)
    for a in range(first_query, n, batch):
        q = x[a : a + batch]
        lims, d, j = index.range_search(q, float(delta))
        i = np.repeat(np.arange(a, a + len(q)), np.diff(lims.astype(np.int64)))
        keep = (i < j) | (j < first_query)  # a new row's pairs with old rows, once each
        ii.append(np.minimum(i[keep], j[keep]))
        jj.append(np.maximum(i[keep], j[keep]))
        ss.append(d[keep])
    sample = np.arange(first_query, n)
    if len(sample) > hist_sample:
        sample = np.sort(np.random.default_rng(1).choice(sample, hist_sample, replace=False))
    for a in range(0, len(sample), batch):
        rows = sample[a : a + batch]
        dk, jk = index.search(x[rows], 2)
        top1[rows] = np.where(jk != rows[:, None], dk, -1.0).max(axis=1)
    cat = np.concatenate
    empty = [np.empty(0, np.int64)]
    return cat(ii or empty), cat(jj or empty), cat(ss or empty).astype(np.float32), top1, method


def aligned_frame_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine of time-aligned frames (T×dim each; the longer one resampled to the
    shorter's count at evenly spaced positions)."""
    n = min(len(a), len(b))
    if n == 0:
        return -1.0
    fa = a[np.linspace(0, len(a) - 1, n).round().astype(int)]
    fb = b[np.linspace(0, len(b) - 1, n).round().astype(int)]
    fa = fa / np.maximum(np.linalg.norm(fa, axis=1, keepdims=True), 1e-12)
    fb = fb / np.maximum(np.linalg.norm(fb, axis=1, keepdims=True), 1e-12)
    return float((fa * fb).sum(1).mean())


def load_frames(embeddings: str | pa.Table, video_ids: set[str]) -> dict[str, np.ndarray]:
    """Frame embeddings (T×dim float32) of ``video_ids`` only, read part by part; empty when
    the table has no frame embeddings."""
    if isinstance(embeddings, pa.Table):
        tables = [embeddings]
    else:
        where = str(embeddings)
        paths = [where] if where.endswith(".parquet") else list_parts(where)
        tables = (read_table(p, EMBEDDINGS, columns=["video_id", "frame_emb"]) for p in paths)
    wanted = pa.array(sorted(video_ids), pa.string())
    out: dict[str, np.ndarray] = {}
    for t in tables:
        if "frame_emb" not in t.column_names:
            return {}
        t = t.filter(pc.is_in(t.column("video_id"), value_set=wanted))
        for vid, fr in zip(t.column("video_id").to_pylist(), t.column("frame_emb"), strict=True):
            flat = fr.values.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            out[vid] = flat.reshape(len(fr), -1) if len(fr) else flat.reshape(0, 0)
    return out


def verify_pairs(
    ids: np.ndarray, i: np.ndarray, j: np.ndarray, frames: dict[str, np.ndarray], delta: float
) -> np.ndarray:
    """Mask of candidate pairs whose aligned frames agree (≥ ``delta``); pairs with a member
    lacking frame embeddings are kept (nothing to check them with)."""
    keep = np.ones(len(i), dtype=bool)
    for k, (a, b) in enumerate(zip(ids[i].astype(str), ids[j].astype(str), strict=True)):
        fa, fb = frames.get(a), frames.get(b)
        if fa is not None and fb is not None and fa.size and fb.size:
            keep[k] = aligned_frame_agreement(fa, fb) >= delta
    return keep


def verify_rows(
    i: np.ndarray, j: np.ndarray, frames: dict[int, np.ndarray], delta: float
) -> np.ndarray:
    """:func:`verify_pairs` over row numbers (frames keyed by row, from
    :func:`~ragvid.pipelines.index.dedup_blocks.read_frame_rows`)."""
    keep = np.ones(len(i), dtype=bool)
    for k, (a, b) in enumerate(zip(i.tolist(), j.tolist(), strict=True)):
        fa, fb = frames.get(a), frames.get(b)
        if fa is not None and fb is not None and fa.size and fb.size:
            keep[k] = aligned_frame_agreement(fa, fb) >= delta
    return keep


def group_pairs(
    ids: np.ndarray | pa.Array, i: np.ndarray, j: np.ndarray, s: np.ndarray
) -> pa.Table:
    """Connected components of the pair graph as a DUPLICATES table (members of groups ≥ 2).

    Only rows that appear in a pair are touched (relabelled to 0..m-1 for scipy's
    ``connected_components``); the canonical member is the group's smallest video_id, groups
    are numbered in their canonical ids' order and rows sorted by (group, video_id)."""
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    nodes, inv = np.unique(np.concatenate([i, j]), return_inverse=True)
    m = len(nodes)
    li, lj = inv[: len(i)], inv[len(i) :]
    graph = coo_matrix((np.ones(len(i)), (li, lj)), shape=(m, m))
    _, label = connected_components(graph, directed=False) if m else (0, np.empty(0, int))
    sizes = np.bincount(label) if m else np.empty(0, np.int64)
    max_sim = np.full(m, -1.0, dtype=np.float32)
    np.maximum.at(max_sim, li, s)
    np.maximum.at(max_sim, lj, s)
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        sid = np.asarray(ids.take(pa.array(nodes, pa.int64())).to_pylist(), dtype=str)
    else:
        sid = np.asarray(ids, dtype=object)[nodes].astype(str)
    by_label = np.lexsort((sid, label))  # each label's rows, smallest id first
    first = np.ones(m, dtype=bool)
    first[1:] = label[by_label][1:] != label[by_label][:-1]
    canon_row = np.empty(sizes.size, dtype=np.int64)
    canon_row[label[by_label][first]] = by_label[first]
    canon = sid[canon_row]  # per label
    gid_of_label = np.empty(sizes.size, dtype=np.int64)
    gid_of_label[np.argsort(canon, kind="stable")] = np.arange(sizes.size)
    gid = gid_of_label[label]
    order = np.lexsort((sid, gid))
    return pa.table(
        {
            "video_id": pa.array(sid[order].tolist(), pa.string()),
            "group_id": pa.array(gid[order], pa.int64()),
            "canonical_id": pa.array(canon[label[order]].tolist(), pa.string()),
            "is_canonical": pa.array(sid[order] == canon[label[order]]),
            "group_size": pa.array(sizes[label[order]].astype(np.int32), pa.int32()),
            "max_sim": pa.array(max_sim[order], pa.float32()),
        }
    )


def write_histogram(top1: np.ndarray, delta: float, uri: str, title: str = "") -> None:
    """PNG histogram of each video's top-1 similarity, with δ_dedup drawn in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    vals = top1[top1 > -1]
    ax.hist(
        vals, bins=np.linspace(max(-1.0, float(vals.min(initial=0.0))), 1.0, 81), color="#4C72B0"
    )
    ax.axvline(delta, color="#C44E52", ls="--", label=f"δ_dedup = {delta:g}")
    ax.set_yscale("log")
    ax.set_xlabel("cosine similarity to the nearest other video")
    ax.set_ylabel("videos")
    above = int((vals >= delta).sum())
    ax.set_title(title or f"top-1 similarity, {above}/{len(vals)} videos at or above δ_dedup")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(uri, buf.getvalue())


def histogram_path(out_path: str) -> str:
    return str(out_path).removesuffix(".parquet") + "_hist.png"


def find_duplicates(
    embeddings: str | pa.Table,
    out_path: str,
    delta_dedup: float = _INDEX["delta_dedup"],
    *,
    delta_frame: float | None = _INDEX["delta_frame"],
    exact_max_n: int | None = None,
    nprobe: int = 16,
    config: DedupConfig | None = None,
    grow: bool = True,
) -> DuplicateReport:
    """Find near-duplicate groups, write the DUPLICATES table and its histogram PNG.

    Candidate pairs (video cosine ≥ ``delta_dedup``) must also pass the aligned-frame check
    (≥ ``delta_frame``; None turns it off). ``config`` picks how pairs are found (exact range
    search up to ``exact_max_n`` videos, clustered above; ``exact_max_n`` overrides the
    config's); ``nprobe`` is for ``method="ivf"`` only. Reads ``video_id`` + ``video_emb``
    part by part, and ``frame_emb`` only for the rows in candidate pairs.

    Reruns: when ``out_path`` holds this corpus's table from the same parts and thresholds it
    is kept (``reused``); when the corpus only gained parts since, the exact and IVF methods
    grow it — only the new rows are searched, against every row (:mod:`.dedup_grow`,
    ``grown_from``) — unless ``grow=False``. The clustered method recomputes: its search of
    every pair was faster than growing (BENCHMARKS.md).

    The report's ``warnings`` (also logged) say when the groups are too big to be copies
    (``DedupConfig.warn_*``: a random or collapsed encoder), with the vectors' mean pairwise
    cosine, computed in one O(N × dim) sum over the vectors already read."""
    if not -1.0 < delta_dedup <= 1.0:
        raise ValueError(f"delta_dedup={delta_dedup} must be in (-1, 1] (paper: 0.965)")
    if delta_frame is not None and not -1.0 < delta_frame <= 1.0:
        raise ValueError(f"delta_frame={delta_frame} must be in (-1, 1], or None to skip")
    cfg = config or DedupConfig()
    if exact_max_n is not None:
        cfg = cfg.model_copy(update={"exact_max_n": exact_max_n})
    t0 = time.perf_counter()
    nodes: list[str] = []
    where = "embeddings table" if isinstance(embeddings, pa.Table) else str(embeddings)
    sources = embedding_sources(embeddings)
    how = cfg.method
    if how == "auto":
        how = "exact" if sum(r for _, r in sources) <= cfg.exact_max_n else "clustered"
    if how == "clustered":  # out of core: the driver never holds the vectors
        vec: StreamedVectors | CorpusScan = scan_corpus(sources, where, cfg)
        pair_sum = vec.pair_cosine_sum
    else:
        vec = read_video_vectors(embeddings, dtype=cfg.vectors_dtype)
        pair_sum, _ = pair_cosine_sum(vec.x)
    n = len(vec.ids)
    timings = {"read": round(time.perf_counter() - t0, 1)}
    mean_cos = pair_sum / (n * (n - 1) / 2) if n > 1 else None
    snapshot = None if isinstance(embeddings, pa.Table) else source_snapshot(str(embeddings))
    prior = None
    if grow and snapshot is not None:
        prior = prior_groups(
            out_path,
            str(embeddings),
            snapshot["parts"],
            encoder=vec.encoder,
            delta_dedup=delta_dedup,
            delta_frame=delta_frame,
            search=cfg.model_dump(),
        )
    hist = histogram_path(out_path)
    if prior is not None and prior.n_rows == n and exists(hist):  # nothing new: kept as is
        return _report(
            prior.table,
            n,
            0,
            delta_dedup,
            delta_frame,
            prior.config.get("n_rejected_by_frames", 0),
            f"kept: {prior.config.get('method', '')}",
            out_path,
            cfg,
            mean_cos,
            vec.encoder,
            t0,
            reused=True,
        )
    if how == "clustered":
        # growing searches the new rows against all through a range search, which at 200k
        # took 2.8× the clustered search of every pair (BENCHMARKS.md): recompute instead
        prior = None
    if prior is not None:
        assert isinstance(vec, StreamedVectors)
        i, j, s, top1, method = similar_pairs(
            np.asarray(vec.x, dtype=np.float32),
            delta_dedup,
            exact_max_n=n if how == "exact" else 0,
            nprobe=nprobe,
            first_query=prior.n_rows,
        )
        method = f"grown from {prior.n_rows} videos by {n - prior.n_rows} new, {method}"
    elif isinstance(vec, CorpusScan):
        spill = spill_folder(out_path)
        i, j, s, top1, method, nodes = spilled_clustered_pairs(vec, delta_dedup, cfg, spill)
    else:
        assert isinstance(vec, StreamedVectors)
        i, j, s, top1, method = similar_pairs(
            np.asarray(vec.x, dtype=np.float32),
            delta_dedup,
            exact_max_n=n if how == "exact" else 0,
            nprobe=nprobe,
        )
    timings["pairs"] = round(time.perf_counter() - t0 - sum(timings.values()), 1)
    rejected = 0
    if delta_frame is not None and len(i):
        frames = read_frame_rows(vec.parts, np.concatenate([i, j]))
        if frames:
            keep = verify_rows(i, j, frames, delta_frame)
            rejected = int((~keep).sum())
            i, j, s = i[keep], j[keep], s[keep]
            method += f" + aligned frames ≥ {delta_frame:g}"
    timings["frames"] = round(time.perf_counter() - t0 - sum(timings.values()), 1)
    if prior is not None:
        table = grow_groups(vec.ids, prior, i, j, s)
    else:
        table = group_pairs(vec.ids, i, j, s)
    write_table(
        out_path,
        table,
        DUPLICATES,
        encoder=vec.encoder,
        config={
            "delta_dedup": delta_dedup,
            "delta_frame": delta_frame,
            "method": method,
            "n_videos": n,
            "n_rejected_by_frames": rejected,
            "dedup": cfg.model_dump(),
            "source_parts": snapshot["parts"] if snapshot is not None else None,
            "grown_from": prior.n_rows if prior is not None else None,
        },
    )
    title = ""
    if prior is not None:
        title = f"top-1 similarity of the {n - prior.n_rows} new videos (to any video)"
    write_histogram(top1, delta_dedup, hist, title)
    return _report(
        table,
        n,
        len(i),
        delta_dedup,
        delta_frame,
        rejected,
        method,
        out_path,
        cfg,
        mean_cos,
        vec.encoder,
        t0,
        grown_from=prior.n_rows if prior is not None else None,
        nodes=nodes,
        timings=timings,
    )


def _report(
    table: pa.Table,
    n: int,
    n_pairs: int,
    delta_dedup: float,
    delta_frame: float | None,
    rejected: int,
    method: str,
    out_path: str,
    cfg: DedupConfig,
    mean_cos: float | None,
    encoder: str,
    t0: float,
    **extra: Any,
) -> DuplicateReport:
    """The report of a written (or kept) table, with its degenerate-output warnings."""
    canon = table.column("is_canonical").to_numpy(zero_copy_only=False)
    sizes = table.column("group_size").to_numpy(zero_copy_only=False)
    largest = int(sizes.max()) if len(sizes) else 0
    warnings = dedup_warnings(
        n,
        largest,
        len(table),
        delta_dedup=delta_dedup,
        group_share=cfg.warn_group_share,
        in_groups_share=cfg.warn_in_groups_share,
        mean_cosine=mean_cos,
        encoder=encoder,
    )
    for w in warnings:
        log.warning("dedup of %s: %s", out_path, w)
    return DuplicateReport(
        n_videos=n,
        n_pairs=n_pairs,
        n_groups=len(set(table.column("group_id").to_pylist())),
        n_in_groups=len(table),
        n_non_canonical=int((~canon).sum()),
        delta_dedup=delta_dedup,
        delta_frame=delta_frame,
        n_rejected_by_frames=rejected,
        method=method,
        table_path=str(out_path),
        histogram_path=histogram_path(out_path),
        seconds=round(time.perf_counter() - t0, 3),
        record=file_record(out_path).to_json(),
        largest_group=largest,
        mean_pair_cosine=None if mean_cos is None else round(mean_cos, 6),
        warnings=warnings,
        **extra,
    )


def read_duplicates(path: str, expect: FileRecord | None = None) -> dict[str, list]:
    """The duplicates table as columns (video_id, group_id, canonical_id, is_canonical, …);
    ``expect`` (e.g. ``IndexManifest.duplicates_record``) checks the whole file first."""
    return read_table(path, DUPLICATES, expect=expect).to_pydict()


def read_index_duplicates(man: IndexManifest) -> dict[str, list] | None:
    """The duplicates table an index version was built with (its copy, checked against the
    record in ``index.json``), or None when it was built without one."""
    if man.duplicates is None:
        return None
    try:
        return read_duplicates(man.duplicates, man.duplicates_record)
    except ChecksumMismatchError as exc:
        raise damaged(exc, man.path) from None
