"""Training neighbour lists (RAGME §3): K retrieved videos per training video, q ∉ Z.

The query is the video's own embedding; the query is excluded by id, its whole near-duplicate
group is excluded (duplicates table), and so is any candidate with cosine ≥ δ_dedup to the
query — otherwise training learns to copy the target. Then the usual filters: δ_min (video),
mutual dedup, keep K, pad + mask. Output: Parquet parts, each vouched for by a marker holding
its checksum and the parameters' hash (resume skips finished parts and recomputes a damaged
one; a rerun with other parameters is refused instead of mixing lists).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ragvid.pipelines.executor.map_tasks import map_tasks, ray_node
from ragvid.pipelines.executor.ray_tasks import init_ray
from ragvid.pipelines.index.dedup import read_duplicates, read_index_duplicates
from ragvid.pipelines.index.degenerate import neighbour_warnings
from ragvid.pipelines.index.layout import IndexManifest, read_ids, relative_path
from ragvid.pipelines.index.search import Retriever
from ragvid.pipelines.index.vectors import batch_dot
from ragvid.schemas import NEIGHBOURS, RetrievalConfig, mark_done, write_table
from ragvid.schemas.checksum import file_record
from ragvid.schemas.faults import fault_point
from ragvid.schemas.io import join, output_lock
from ragvid.schemas.markers import Marker, TableState, declare_table


@dataclass
class NeighbourReport:
    out_dir: str
    n_videos: int
    n_parts: int
    parts_written: int
    parts_skipped: int
    mean_valid: float
    fully_padded: int
    seconds: float
    search_seconds: float
    videos_per_s: float
    warnings: list[str] = field(default_factory=list)  # mostly padding (RetrievalConfig.warn_*)


log = logging.getLogger(__name__)
# the report carries the warnings and the CLI / flows print them: no last-resort stderr copy
log.addHandler(logging.NullHandler())
# what the warnings use, not what the lists depend on: left out of the parameters' hash
_WARN_FIELDS = {"warn_valid_share", "warn_padded_share"}


def _content_sha(duplicates: str | None, man: IndexManifest) -> str | None:
    """What the duplicates table holds, not where it sits (a rebuild moves it to a new version
    folder with the same bytes: resuming must still match)."""
    if not duplicates:
        return None
    if duplicates == man.duplicates and man.duplicates_record is not None:
        return man.duplicates_record.sha256
    return file_record(duplicates).sha256


def _list_array(values: pa.Array, n: int, k: int) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), values)


def neighbours_table(
    video_ids: Sequence[str], ids: np.ndarray, scores: np.ndarray, mask: np.ndarray
) -> pa.Table:
    n, k = ids.shape
    return pa.table(
        {
            "video_id": pa.array(list(video_ids), pa.string()),
            "neighbour_ids": _list_array(pa.array(ids.ravel().tolist(), pa.string()), n, k),
            "scores": _list_array(pa.array(scores.ravel(), pa.float32()), n, k),
            "mask": _list_array(pa.array(mask.ravel()), n, k),
        }
    )


class _Exclusion:
    """Vectorised q ∉ Z: same row, same duplicate group, or cosine ≥ δ_dedup with the query."""

    def __init__(
        self, r: Retriever, groups: dict[str, int], delta_dedup: float, exact_scores: bool
    ):
        self.r = r
        self.exact_scores = exact_scores
        self.delta = delta_dedup
        # a group id per index row, set through the id lookup (no loop over the index's rows)
        self.group_of_row = np.full(len(r.ids), -1, np.int64)
        if groups:
            rows = r.rows_for(list(groups))
            found = rows >= 0
            self.group_of_row[rows[found]] = np.fromiter(groups.values(), np.int64)[found]
        self.groups = groups

    def bind(self, video_ids: Sequence[str], q: np.ndarray, qrow: np.ndarray):
        """The filter for one batch of query videos (``qrow``: their index rows)."""
        qgroup = np.array([self.groups.get(v, -1) for v in video_ids], np.int64)

        def exclude(todo: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
            safe = np.where(rows >= 0, rows, 0)
            g = self.group_of_row[safe]
            qg = qgroup[todo][:, None]
            same = (rows == qrow[todo][:, None]) | ((g == qg) & (qg >= 0))
            if self.exact_scores:  # the candidate scores are the exact cosines already
                cos = scores
            else:
                v = np.asarray(self.r.vectors[safe.ravel()], np.float32)
                cos = batch_dot(q[todo], v.reshape(*rows.shape, -1))
            return same | (cos >= self.delta)

        return exclude


def _params(
    index_dir: str,
    out_dir: str,
    config: RetrievalConfig,
    duplicates: str | None,
    ids_hash: str,
    part_size: int,
    man: IndexManifest,
) -> dict:
    """What the lists depend on; paths relative to the output, so a moved workspace matches."""
    return {
        "index": relative_path(str(index_dir), out_dir),
        "index_shards_sha256": [s.get("sha256") for s in man.shards],
        "retrieval": config.model_dump(exclude=_WARN_FIELDS),
        "duplicates_sha256": _content_sha(duplicates, man),
        "index_ids_sha256": man.ids_record.sha256 if man.ids_record else None,
        "video_ids_sha256": ids_hash,
        "part_size": part_size,
    }


@dataclass(frozen=True)
class _Source:
    """What a worker opens once and reuses for every part it computes."""

    index_dir: str
    version: str | None
    duplicates: str | None
    delta_dedup: float
    exact_scores: bool
    backend: str = "threads"  # "ray": the shards held by Ray actors (Retriever.open)


_OPENED: dict[_Source, tuple[Retriever, _Exclusion, int]] = {}


def _open(src: _Source) -> tuple[Retriever, _Exclusion, int]:
    """The index, its exclusion filter and the widening its largest group needs — opened once
    per worker process (Ray reuses workers: each opens the shards once, not once per part)."""
    if src not in _OPENED:
        _close_opened()  # one index per worker at a time
        r = Retriever.open(src.index_dir, backend=src.backend)  # type: ignore[arg-type]
        if r.man.version != src.version:
            raise RuntimeError(
                f"index {src.index_dir} switched from {src.version} to {r.man.version} while "
                "neighbour lists were computed — rerun `ragvid neighbours` (finished parts "
                "made from the old version are refused, not mixed)"
            )
        groups: dict[str, int] = {}
        if src.duplicates:
            d = (
                read_index_duplicates(r.man)  # the version's copy, checked against index.json
                if src.duplicates == r.man.duplicates
                else read_duplicates(src.duplicates)
            )
            groups = dict(zip(d["video_id"], d["group_id"], strict=True))
        excl = _Exclusion(r, groups, src.delta_dedup, src.exact_scores)
        _OPENED[src] = (r, excl, max_group(groups) + 1)
    return _OPENED[src]


def _close_opened() -> None:
    for r, _, _ in _OPENED.values():
        close = getattr(r.shards, "close", None)
        if close is not None:  # shard actors: give their processes back
            close()
    _OPENED.clear()


def neighbour_part(
    src: _Source,
    config: RetrievalConfig,
    batch: Sequence[str],
    uri: str,
    params: dict,
    batch_size: int,
) -> dict:
    """Compute and write one output part (a plain function: a Ray task, a thread or inline);
    return its stats. The driver writes the marker."""
    r, excl, extra = _open(src)
    chunks, search_s = [], 0.0
    for a in range(0, len(batch), batch_size):
        ids = list(batch[a : a + batch_size])
        rows = r.rows_for(ids)  # looked up once: the vectors and the filter both need them
        x, found = r.vectors_for(ids, rows)
        if not found.all():
            miss = [v for v, f in zip(ids, found, strict=True) if not f][:5]
            raise KeyError(f"video_id(s) {miss} are not in the index or its embeddings")
        ts = time.perf_counter()
        bound = excl.bind(ids, x, rows)
        res = r.filtered_search(x, "video", config, None, extra, extra_exclude=bound)
        search_s += time.perf_counter() - ts
        chunks.append(res)
    nids = np.concatenate([c.ids for c in chunks])
    sc = np.concatenate([c.scores for c in chunks])
    mk = np.concatenate([c.mask for c in chunks])
    write_table(uri, neighbours_table(batch, nids, sc, mk), NEIGHBOURS, config=params)
    return {
        "rows": len(batch),
        "valid_slots": int(mk.sum()),
        "fully_padded": int((~mk.any(axis=1)).sum()),
        "params_sha256": _sha(params),
        "search_seconds": round(search_s, 4),
        "node": ray_node(),
    }


def materialize_neighbours(
    index_dir: str,
    out_dir: str,
    config: RetrievalConfig,
    *,
    video_ids: Sequence[str] | None = None,
    duplicates: str | None = None,
    part_size: int = 10_000,
    batch_size: int = 4096,
    progress=None,
    ray: bool = False,
    shard_actors: bool = False,
) -> NeighbourReport:
    """Write ``out_dir/part-NNNNN.parquet`` (NEIGHBOURS) for ``video_ids`` (default: every
    video of the index). ``duplicates`` defaults to the one the index records. ``progress``
    is an optional callable ``(done_videos, total_videos)``.

    Parts are computed in parallel as Ray tasks when Ray is up (``ray=True`` starts a local
    one; a cluster joined with ``--ray-address`` spreads them over its nodes), each worker
    opening the index once; otherwise in this process. ``shard_actors=True`` computes the parts
    here and holds each shard in a Ray actor of its own (``Retriever.open(backend="ray")``):
    no process holds every shard's codes (10M × 512 in 4-bit codes: 2.8 GB). The driver keeps
    the lock, the skip of finished parts and the markers.

    The report's ``warnings`` (also logged) say when the lists are mostly padding
    (``RetrievalConfig.warn_*``), from the per-part counts the markers already hold."""
    t0 = time.perf_counter()
    man = IndexManifest.load(index_dir)
    duplicates = duplicates or man.duplicates
    if video_ids is None:  # every video of the index, kept columnar (10M Python strings: ~1 GB)
        ids = read_ids(man).column("video_id").combine_chunks()
    else:
        ids = pa.array([str(v) for v in video_ids], pa.string())
    if not len(ids):
        raise ValueError("no training videos given — pass video_ids or build a non-empty index")
    src = _Source(
        str(index_dir),
        man.version,
        duplicates,
        config.delta_dedup,
        not man.compressed or config.rerank_exact,
        "ray" if shard_actors else "threads",
    )
    ids_hash = _ids_sha256(ids)
    params = _params(index_dir, out_dir, config, duplicates, ids_hash, part_size, man)
    n_parts = (len(ids) + part_size - 1) // part_size
    written = skipped = fully_padded = 0
    valid_sum, search_s, done = 0.0, 0.0, 0
    if ray or shard_actors:
        init_ray()
    with output_lock(out_dir):
        declare_table(out_dir, "neighbours")
        state = TableState(out_dir)
        for p in state.parts():
            m = state.check(p)
            if isinstance(m, Marker) and m.stats.get("params_sha256") != _sha(params):
                raise ValueError(
                    f"{out_dir} holds neighbour lists made with other parameters ({p}) — pick "
                    "another name, or delete the folder to recompute"
                )
        todo = []
        for part in range(n_parts):
            uri = join(out_dir, f"part-{part:05d}.parquet")
            lo, hi = part * part_size, min(len(ids), (part + 1) * part_size)
            marker = state.check(uri, expect_input={"rows": [lo, hi]})
            if isinstance(marker, Marker):
                skipped += 1
                valid_sum += marker.stats["valid_slots"]
                fully_padded += marker.stats["fully_padded"]
                done += hi - lo
                continue
            todo.append((uri, lo, hi))
        if progress:
            progress(done, len(ids))
        tasks = (
            (src, config, ids.slice(lo, hi - lo).to_pylist(), uri, params, batch_size)
            for uri, lo, hi in todo
        )
        if shard_actors:  # parts here, the search in the actors
            results = (neighbour_part(*t) for t in tasks)
        else:
            results = map_tasks(neighbour_part, tasks, max_in_flight=8)
        for (uri, lo, hi), stats in zip(todo, results, strict=True):
            search_s += stats.pop("search_seconds")
            fault_point("neighbours:before-marker")
            mark_done(uri, stats, input={"rows": [lo, hi]})
            written += 1
            valid_sum += stats["valid_slots"]
            fully_padded += stats["fully_padded"]
            done += hi - lo
            if progress:
                progress(done, len(ids))
    _close_opened()  # what this process opened for inline parts
    secs = time.perf_counter() - t0
    mean_valid = valid_sum / len(ids)
    warnings = neighbour_warnings(
        len(ids),
        mean_valid,
        fully_padded,
        k=config.k,
        delta_min=config.delta_min_video,
        delta_dedup=config.delta_dedup,
        valid_share=config.warn_valid_share,
        padded_share=config.warn_padded_share,
    )
    for w in warnings:
        log.warning("neighbours %s: %s", out_dir, w)
    return NeighbourReport(
        out_dir=str(out_dir),
        n_videos=len(ids),
        n_parts=n_parts,
        parts_written=written,
        parts_skipped=skipped,
        mean_valid=round(mean_valid, 4),
        fully_padded=fully_padded,
        seconds=round(secs, 3),
        search_seconds=round(search_s, 3),
        videos_per_s=round(len(ids) / secs, 1) if secs else 0.0,
        warnings=warnings,
    )


def _ids_sha256(ids: pa.Array, chunk: int = 1 << 20) -> str:
    """sha256 of the ids joined by newlines, a slice at a time (same digest as one join)."""
    h = hashlib.sha256()
    for a in range(0, len(ids), chunk):
        if a:
            h.update(b"\n")
        h.update("\n".join(ids.slice(a, chunk).to_pylist()).encode())
    return h.hexdigest()


def max_group(groups: dict[str, int]) -> int:
    if not groups:
        return 0
    return int(np.bincount(np.fromiter(groups.values(), np.int64)).max())


def _sha(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
