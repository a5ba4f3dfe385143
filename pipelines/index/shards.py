"""Fan a query batch out over an index's shards and merge the per-shard top-k lists.

Each shard holds a disjoint slice of the rows (global row ids), so the merged top-k of the
shards' top-k lists is the unsharded top-k — exactly so for Flat shards. Locally, IVF shards
trained together are merged into one index at open (:func:`merge_ivf_shards`) and other
shards are searched from a thread pool (FAISS releases the GIL); ``RayShardSet`` keeps each
shard in a Ray actor for indexes that outgrow one process. faiss-gpu is used when present.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np

from ragvid.pipelines.index.layout import REBUILD, CorruptShardError, IndexManifest
from ragvid.schemas.checksum import file_record
from ragvid.schemas.io import fs_and_path

log = logging.getLogger(__name__)


def _missing(uri: str, what: str) -> CorruptShardError:
    return CorruptShardError(f"{what} {uri} is missing — the index is incomplete; {REBUILD}")


def _mismatch(uri: str, what: str, size: int) -> CorruptShardError:
    return CorruptShardError(
        f"{what} {uri} is corrupted or truncated (checksum mismatch: {size} bytes, sha256 "
        f"differs from index.json) — {REBUILD}"
    )


def read_verified(uri: str, sha256: str | None, what: str) -> bytes:
    """Read a file and check its sha256; a mismatch names the file and the fix."""
    fs, path = fs_and_path(uri)
    if not fs.exists(path):
        raise _missing(uri, what)
    with fs.open(path, "rb") as fh:
        data = fh.read()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise _mismatch(uri, what, len(data))
    return data


def verify_file(uri: str, sha256: str | None, what: str) -> None:
    """Stream a file through sha256 (no full copy in memory) and check it."""
    fs, path = fs_and_path(uri)
    if not fs.exists(path):
        raise _missing(uri, what)
    got = file_record(uri)
    if sha256 is not None and got.sha256 != sha256:
        raise _mismatch(uri, what, got.size)


def load_shard(man: IndexManifest, i: int) -> faiss.Index:
    """Shard ``i`` of the manifest's version, checked against its sha256 before FAISS reads it."""
    rec = man.shards[i]
    data = read_verified(man.layout.file(rec["file"]), rec.get("sha256"), f"shard {i}")
    try:
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:  # pragma: no cover - checksum catches this first
        raise CorruptShardError(f"shard {rec['file']} of {man.path} is unreadable: {exc}") from None


def set_params(index: faiss.Index, params: dict[str, Any]) -> None:
    if params:
        text = ",".join(f"{k}={v}" for k, v in params.items())
        faiss.ParameterSpace().set_index_parameters(index, text)


def merge_topk(ds: list[np.ndarray], ix: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (scores, ids) lists: highest score first, ties broken by row id."""
    d = np.concatenate(ds, axis=1)
    i = np.concatenate(ix, axis=1)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), -d), axis=-1)[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def _to_gpu(index: faiss.Index) -> faiss.Index:
    """The index on every GPU with faiss-gpu; kinds FAISS has no GPU version of (the 4-bit
    fast-scan default among them) are searched on the CPU, which scans them in SIMD."""
    if hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0:
        try:  # pragma: no cover - needs faiss-gpu
            return faiss.index_cpu_to_all_gpus(index)
        except RuntimeError as exc:  # pragma: no cover - "not implemented on GPU"
            log.info("index %s stays on the CPU: %s", type(index).__name__, exc)
    return index


def _encoder_state(ivf: faiss.IndexIVF) -> np.ndarray | None:
    """What an IVF index's codes were trained on besides its centroids (PQ codebooks, SQ
    ranges; empty for plain lists); None for a kind this does not know how to compare."""
    if isinstance(ivf, faiss.IndexIVFFlat):
        return np.zeros(0, np.float32)
    if hasattr(ivf, "pq"):  # IVFPQ, IVFPQ fast-scan
        return faiss.vector_to_array(ivf.pq.centroids)
    if isinstance(ivf, faiss.IndexIVFScalarQuantizer):
        return faiss.vector_to_array(ivf.sq.trained)
    return None


def _mergeable(into: faiss.Index, x: faiss.Index) -> tuple[faiss.IndexIVF, faiss.IndexIVF] | None:
    """Both as IVF indexes when ``x``'s lists can join ``into``'s: the same kind, the same
    flat coarse quantizer and the same trained codes; None otherwise."""
    a, b = faiss.downcast_index(into), faiss.downcast_index(x)
    if not isinstance(a, faiss.IndexIVF) or type(a) is not type(b):
        return None  # Flat, HNSW, a wrapped IVF (IDMap, PreTransform), mixed kinds
    qa, qb = faiss.downcast_index(a.quantizer), faiss.downcast_index(b.quantizer)
    if not (isinstance(qa, faiss.IndexFlat) and isinstance(qb, faiss.IndexFlat)):
        return None
    if qa.ntotal != qb.ntotal or not np.array_equal(
        qa.reconstruct_n(0, qa.ntotal), qb.reconstruct_n(0, qb.ntotal)
    ):
        return None
    sa, sb = _encoder_state(a), _encoder_state(b)
    if sa is None or sb is None or not np.array_equal(sa, sb):
        return None
    return a, b


def merge_ivf_shards(indexes: Iterable[faiss.Index]) -> list[faiss.Index]:
    """IVF shards filled from one trained index (a build fills all its shards — and an add its
    new ones — from one) merged into the first, one at a time; a shard that cannot join it
    stays a shard of its own (the merged top-k of both is still the top-k: row ids are global).

    Searched in one process, shards repeat per query the work that does not depend on how
    many codes a list holds: the coarse quantizer search and, for PQ, the distance tables of
    every probed list. 4-bit fast-scan codes are cheap enough to scan that these dominate: 4
    shards of IVF1024,PQ512x4fs over 1M × 512 searched at 7,000 QPS, merged at 13,700
    (BENCHMARKS.md). The merge moves the codes; a shard merged is dropped straight away, so
    given a generator (:meth:`ShardSet.open`) the peak is the codes plus one shard, not twice
    the codes (7.1 GB at 10M when all 8 shards were loaded first). 1.1–1.3 s at 1M.
    """
    out: list[faiss.Index] = []
    for x in indexes:
        pair = _mergeable(out[0], x) if out else None
        if pair is None:
            out.append(x)
            continue
        pair[0].merge_from(pair[1], 0)  # the shards' lists hold global row ids already
        del pair, x  # frees the emptied shard's buffers (its lists keep their capacity)
    return out  # the objects that own the indexes, not downcast views of them


class ShardSet:
    """The shards of one index, searched as one: :meth:`open` merges IVF shards trained
    together (:func:`merge_ivf_shards`); other shards are searched in parallel threads and
    their lists merged."""

    def __init__(self, man: IndexManifest, indexes: list[faiss.Index]):
        self.man = man
        self.indexes = indexes
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(len(self.indexes), 8)))
        self.set_params(man.search_params)

    @classmethod
    def open(cls, man: IndexManifest, *, gpu: bool = True) -> ShardSet:
        idx = merge_ivf_shards(load_shard(man, i) for i in range(len(man.shards)))
        if gpu:
            idx = [_to_gpu(x) for x in idx]
        return cls(man, idx)

    @property
    def ntotal(self) -> int:
        return int(sum(x.ntotal for x in self.indexes))

    def set_params(self, params: dict[str, Any]) -> None:
        for x in self.indexes:
            set_params(x, params)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores float32, row ids int64; -1 where fewer than k exist) over all shards."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        k = max(1, int(k))
        if len(self.indexes) == 1:
            return self.indexes[0].search(q, k)
        parts = list(self._pool.map(lambda x: x.search(q, k), self.indexes))
        return merge_topk([p[0] for p in parts], [p[1] for p in parts], k)


class _ShardActor:
    def __init__(self, man: IndexManifest, shard: int):
        # the driver's manifest, not a fresh load: a build switching versions meanwhile
        # must not hand the actors shards of another version than the driver's ids
        self.index = load_shard(man, shard)
        set_params(self.index, man.search_params)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(q, k)


class RayShardSet:
    """Each shard held by a Ray actor; same ``search`` contract as :class:`ShardSet`."""

    def __init__(self, man: IndexManifest, num_cpus: float | None = None):
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        if num_cpus is None:  # half a CPU each, less when shards outnumber 2 × the CPUs:
            # actors that cannot be placed would wait forever
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            num_cpus = min(0.5, cpus / max(1, len(man.shards)))
        actor = ray.remote(num_cpus=num_cpus)(_ShardActor)
        self.man = man
        self.actors = [actor.remote(man, i) for i in range(len(man.shards))]

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import ray

        q = np.ascontiguousarray(q, dtype=np.float32)
        parts = ray.get([a.search.remote(q, k) for a in self.actors])
        return merge_topk([p[0] for p in parts], [p[1] for p in parts], k)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
