"""Build a sharded FAISS index over per-video CLIP vectors (RAGME §3: cosine = inner product).

One quantizer is trained once on a sample; shards are filled from it in parallel (Ray tasks
when Ray is up, threads otherwise). Alongside the shards a version keeps ``ids.parquet`` (row
id → video_id, shard, caption), ``vectors.npy`` (the exact normalised vectors, float32 —
re-ranking and the mutual-dedup filter need them whatever the index compresses), a BM25
index over the captions, a copy of the duplicates table, and the embeddings source it was
built from (``frame_embeddings`` reads the per-frame vectors there); ``index.json`` records
the size and sha256 of each. Every build is a new version, switched to only once complete
and verified (:mod:`.versions`).
"""

from __future__ import annotations

import io
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from ragvid.pipelines.index import versions
from ragvid.pipelines.index.bm25 import Bm25Index
from ragvid.pipelines.index.dedup import read_duplicates
from ragvid.pipelines.index.layout import CorruptShardError, IndexManifest
from ragvid.pipelines.index.shards import ShardSet
from ragvid.pipelines.index.vectors import (
    Vectors,
    batch_dot,
    load_vectors,
    source_snapshot,
)
from ragvid.schemas import EMBEDDINGS, INDEX_IDS, IndexConfig, write_table
from ragvid.schemas.checksum import FileRecord, bytes_record, file_record
from ragvid.schemas.faults import fault_point
from ragvid.schemas.io import (
    exists,
    fs_and_path,
    join,
    output_lock,
    part_name,
    write_bytes_atomic,
)
from ragvid.schemas.workspace import (  # the index folder's file names live with the layout
    BM25_DIR,
    DUPLICATES_FILE,
    IDS_FILE,
    VECTORS_FILE,
    IndexLayout,
)

FLAT_MAX_N = 100_000  # exact search below this: fast enough and no recall loss
log = logging.getLogger("ragvid.index")


# --- loading and checking the embeddings -----------------------------------------------


def choose_factory(n: int, dim: int, memory_budget_gb: float) -> str:
    """Flat for small corpora; IVF-Flat when the raw vectors fit the budget; IVF-PQ otherwise.

    nlist ≈ 4·√N (a power of two), PQ with dim/8 sub-quantizers shrunk until the codes fit.
    HNSW is available through ``IndexConfig.factory`` (e.g. ``HNSW32``).
    """
    if n <= FLAT_MAX_N:
        return "Flat"
    nlist = 2 ** int(round(math.log2(4 * math.sqrt(n))))
    budget = memory_budget_gb * 1024**3
    if n * dim * 4 * 1.1 <= budget:
        return f"IVF{nlist},Flat"
    m = max(8, dim // 8)
    while m > 8 and n * m * 1.5 > budget:
        m //= 2
    while dim % m:
        m -= 1
    return f"IVF{nlist},PQ{m}"


def _new_index(dim: int, factory: str) -> faiss.Index:
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"FAISS factory string '{factory}' is invalid: {exc}") from None
    if faiss.try_extract_index_ivf(index) is None:
        index = faiss.IndexIDMap2(index)  # Flat/HNSW: keep global row ids
    return index


PQ_TRAIN_MIN = 256 * 39  # FAISS: 39 points per centroid, 256 centroids per PQ sub-quantizer


def train_sample_size(factory: str, n: int, dim: int, config: IndexConfig) -> int:
    """How many vectors train the quantizer: sized to the index, not a fixed 100k (at nlist
    16384 a fixed 100k is ≈ 6 points per centroid and recall degrades silently)."""
    if config.train_sample is not None:
        return min(n, config.train_sample)
    index = _new_index(dim, factory)
    if index.is_trained:
        return 0
    ivf = faiss.try_extract_index_ivf(index)
    nlist = ivf.nlist if ivf is not None else 1
    want = config.train_points_per_list * nlist
    if any(t in factory for t in ("PQ", "SQ", "RQ")):
        want = max(want, PQ_TRAIN_MIN)
    return min(n, config.train_sample_cap, max(want, 1))


def train_index(x: np.ndarray, factory: str, sample: int, seed: int = 0) -> bytes:
    """Train once on a random sample; return the serialized empty, trained index."""
    index = _new_index(x.shape[1], factory)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        take = rng.choice(len(x), size=min(sample, len(x)), replace=False)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and len(take) < ivf.nlist:
            raise ValueError(
                f"factory '{factory}' needs ≥ {ivf.nlist} training vectors, have {len(take)} — "
                "use fewer lists or let ragvid choose (no --factory)"
            )
        index.train(np.ascontiguousarray(x[np.sort(take)]))
    return faiss.serialize_index(index).tobytes()


def build_shard(trained: bytes, x: np.ndarray, row_ids: np.ndarray, uri: str) -> dict[str, Any]:
    """Fill one shard from the trained index and write it atomically; return its record."""
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    index.add_with_ids(np.ascontiguousarray(x, dtype=np.float32), row_ids.astype(np.int64))
    data = faiss.serialize_index(index).tobytes()
    write_bytes_atomic(uri, data)
    record = bytes_record(data)
    return {
        "file": uri.rsplit("/", 1)[-1],
        "count": int(index.ntotal),
        "bytes": record.size,
        "sha256": record.sha256,
    }


def _fill_shards(
    trained: bytes, x: np.ndarray, target: IndexLayout, num_shards: int, use_ray: bool
):
    bounds = np.linspace(0, len(x), num_shards + 1).astype(int)
    jobs = [
        (x[a:b], np.arange(a, b, dtype=np.int64), target.shard(i))
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    ]
    if use_ray:
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        remote = ray.remote(build_shard)
        trained_ref = ray.put(trained)
        refs = [remote.remote(trained_ref, xs, ids, uri) for xs, ids, uri in jobs]
        return ray.get(refs), bounds
    with ThreadPoolExecutor(max_workers=min(num_shards, 4)) as pool:
        return list(pool.map(lambda j: build_shard(trained, *j), jobs)), bounds


# --- the public entry point -------------------------------------------------------------


def build_index(
    embeddings: str | pa.Table,
    out_dir: str,
    config: IndexConfig,
    *,
    duplicates: str | None = None,
    ray: bool = True,
    manifest: str | None = None,
    force: bool = False,
) -> IndexManifest:
    """Build a new version of the index folder ``out_dir`` and switch readers to it
    (:mod:`.versions`: shards, ids.parquet, vectors.npy, bm25/, a copy of the duplicates).

    Idempotent: when the current version was built with the same config from the same source
    parts (names, sizes, mtimes) and duplicates table, and every one of its files still matches
    its sha256 (checked under the lock), it is returned as is (``reused``) unless ``force``;
    a damaged current version is rebuilt, never reported up to date.

    NaN/zero vectors are refused (not dropped) with the offending video_ids named. With
    ``config.canonical_only`` (needs ``duplicates``; defaults to ``out_dir/duplicates.parquet``
    when ``ragvid index dedup`` wrote one there) non-canonical group members are left out
    and counted in ``dropped``. ``ray=True`` fills shards with Ray tasks (starting a local Ray
    if none is up); ``ray=False`` uses threads unless Ray is already initialised.
    """
    t0 = time.perf_counter()
    layout = IndexLayout(str(out_dir).rstrip("/"))
    with output_lock(layout.root):
        if duplicates is None and exists(layout.duplicates):
            duplicates = layout.duplicates
        if config.canonical_only and duplicates is None:
            raise ValueError(
                "canonical_only=True needs the duplicates table: run `ragvid index dedup` "
                "first and pass duplicates=<path>"
            )
        current = versions.load_current(layout)
        previous = current.version if current is not None else None  # flat layouts: None
        if current is not None and not force and not isinstance(embeddings, pa.Table):
            reason = _stale(current, str(embeddings), config, duplicates)
            if reason is None:
                try:
                    versions.verify(current, deep=True)
                except CorruptShardError as exc:
                    reason, previous = f"the current version is damaged: {exc}", None
            if reason is None:
                versions.collect(layout, current)
                current.reused = True
                return current
            log.warning("rebuilding index %s: %s", layout.root, reason)
        target = versions.begin(layout, current)  # also removes what killed builds left
        try:
            man, x = _build_version(embeddings, target, config, duplicates, ray, manifest)
            man.previous = previous
            man.search_params, man.tuned_recall = tune_search_params(man, x, config.recall_target)
            man.build_seconds = round(time.perf_counter() - t0, 3)
            versions.seal(man)
            versions.verify(man, deep=True)  # what readers will check, read back from disk
        except BaseException:
            versions.abandon(target)
            raise
        fault_point("index-build:before-switch")
        versions.switch(man)
        fault_point("index-build:after-switch")
        versions.collect(layout, man)
    return man


def _stale(old: IndexManifest, embeddings: str, config: IndexConfig, dups: str | None):
    """Why ``old`` is not what a build with these inputs would make (None: it is)."""
    if not old.version:
        return "it has the flat layout of an older ragvid (rebuilt as a version)"
    if old.source.get("parts") != source_snapshot(embeddings)["parts"]:
        return "the embeddings changed"
    if old.config != config.model_dump():
        return "the index config changed"
    want = file_record(dups) if dups is not None else None
    if want != old.duplicates_record:
        return "the duplicates table changed"
    return None


def _build_version(
    embeddings: str | pa.Table,
    target: IndexLayout,
    config: IndexConfig,
    duplicates: str | None,
    ray: bool,
    manifest: str | None,
) -> tuple[IndexManifest, np.ndarray]:
    """Write every file of a new version into ``target``; return its manifest (not yet sealed,
    search parameters not yet tuned) and the normalised vectors."""
    vec = load_vectors(embeddings)
    files: dict[str, dict[str, Any]] = {}
    dropped: dict[str, int] = {}
    if duplicates is not None:
        dups, record = _copy_duplicates(duplicates, target)
        files[DUPLICATES_FILE] = record.to_json()
        if config.canonical_only:
            non_canon = {
                v for v, c in zip(dups["video_id"], dups["is_canonical"], strict=True) if not c
            }
            keep = np.array([v not in non_canon for v in vec.ids], dtype=bool)
            dropped["non_canonical"] = int((~keep).sum())
            vec = Vectors(vec.ids[keep], vec.x[keep], vec.captions[keep], vec.encoder, vec.source)
    n, dim = vec.x.shape
    factory = config.factory or choose_factory(n, dim, config.memory_budget_gb)
    num_shards = max(1, min(config.num_shards, n))
    if isinstance(embeddings, pa.Table):  # keep the source with the version
        write_table(
            join(target.embeddings, part_name(0)), embeddings, EMBEDDINGS, encoder=vec.encoder
        )
        vec.source = {**vec.source, **source_snapshot(target.embeddings)}
    trained = train_index(vec.x, factory, train_sample_size(factory, n, dim, config))
    import ray as ray_mod

    shards, bounds = _fill_shards(
        trained, vec.x, target, num_shards, ray or ray_mod.is_initialized()
    )
    fault_point("index-build:after-shards")
    shard_of = np.repeat(np.arange(num_shards, dtype=np.int32), np.diff(bounds))
    ids_table = pa.table(
        {
            "row_id": pa.array(np.arange(n, dtype=np.int64)),
            "video_id": pa.array(vec.ids.tolist(), pa.string()),
            "shard": pa.array(shard_of),
            "caption": pa.array([str(c) if c is not None else "" for c in vec.captions]),
        }
    )
    write_table(target.ids, ids_table, INDEX_IDS, encoder=vec.encoder, config=config.model_dump())
    files[IDS_FILE] = file_record(target.ids).to_json()
    buf = io.BytesIO()
    np.save(buf, vec.x)
    write_bytes_atomic(target.vectors, buf.getvalue())
    vectors = {"file": VECTORS_FILE, "dtype": "float32", **bytes_record(buf.getvalue()).to_json()}
    bm25 = Bm25Index.build([str(c) for c in vec.captions], vec.ids.tolist())
    bm25.save(target.bm25)
    files.update(
        {f"{BM25_DIR}/{k}": r.to_json() for k, r in Bm25Index.records(target.bm25).items()}
    )
    fault_point("index-build:after-files")
    man = IndexManifest(
        encoder=vec.encoder,
        dim=dim,
        metric="inner_product",
        factory=factory,
        ntotal=n,
        shards=shards,
        search_params={},
        source={**vec.source, "manifest": manifest},
        build_seconds=0.0,
        config=config.model_dump(),
        vectors=vectors,
        canonical_only=config.canonical_only,
        duplicates=target.built_duplicates if duplicates is not None else None,
        dropped=dropped,
        version=target.version,
        files=files,
        path=target.root,
    )
    return man, vec.x


def _copy_duplicates(src: str, target: IndexLayout) -> tuple[dict[str, list], FileRecord]:
    """Copy the duplicates table into the version (a later `ragvid index dedup` then cannot
    change what this version was built with) and read the copy back, checked whole."""
    fs, path = fs_and_path(src)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"duplicates table {src} does not exist — run `ragvid index dedup` or pass another"
        )
    with fs.open(path, "rb") as fh:
        data = fh.read()
    write_bytes_atomic(target.built_duplicates, data)
    record = bytes_record(data)
    return read_duplicates(target.built_duplicates, record), record


def tune_search_params(
    man: IndexManifest, x: np.ndarray, recall_target: float, n_queries: int = 200, k: int = 10
) -> tuple[dict[str, Any], float | None]:
    """Smallest nprobe / efSearch whose recall@k against exact search meets the target,
    measured with queries made by perturbing sampled corpus vectors (cosine ≈ 0.9 to their
    source: new videos like the corpus's — the corpus's own vectors would flatter IVF, since
    a point always lies in the cell it probes first); for compressed indexes after the
    retriever's 4× over-fetch and exact re-rank.
    """
    if man.factory.replace("IDMap,", "").startswith("Flat"):
        return {}, 1.0
    shards = ShardSet.open(man)
    rng = np.random.default_rng(1)
    q = x[np.sort(rng.choice(len(x), size=min(n_queries, len(x)), replace=False))]
    q = q + rng.standard_normal(q.shape).astype(np.float32) * (0.5 / math.sqrt(q.shape[1]))
    q /= np.linalg.norm(q, axis=1, keepdims=True)  # a new video near a corpus video (cos ≈ 0.9)
    kk = min(k, len(x))
    exact = np.argsort(-(q @ x.T), axis=1)[:, :kk]
    if "HNSW" in man.factory:
        name, grid = "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    else:
        nlist = faiss.try_extract_index_ivf(shards.indexes[0]).nlist
        name, grid = "nprobe", [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if p < nlist]
        grid.append(nlist)
    recall = 0.0
    for value in grid:
        shards.set_params({name: value})
        _, got = shards.search(q, kk * 4 if man.compressed else kk)
        if man.compressed:  # what the retriever returns: over-fetch, exact re-rank
            exact_s = np.where(got >= 0, batch_dot(q, x[got]), -np.inf)
            got = np.take_along_axis(got, np.argsort(-exact_s, axis=1)[:, :kk], 1)
        got = got[:, :kk]
        recall = float(
            np.mean(
                [len(set(a) & set(b)) / max(1, len(a)) for a, b in zip(exact, got, strict=True)]
            )
        )
        if recall >= recall_target:
            break
    return {name: value}, round(recall, 4)
