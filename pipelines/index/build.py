"""Build a sharded FAISS index over per-video CLIP vectors (RAGME §3: cosine = inner product).

Streamed and scaled out: the driver plans from ``video_id`` + ``caption`` only, trains one
quantizer on a sample sized to the index (read by one task per part), and one task per shard
(:mod:`.fill`; Ray tasks when Ray is up, threads otherwise) reads its own embedding parts and
writes its FAISS shard and its piece of the exact vectors (:mod:`.rowstore`; re-ranking and
the mutual-dedup filter need them whatever the index compresses). Alongside, a version keeps
``ids.parquet`` (row id → video_id, shard, caption), a BM25 index over the captions, a copy of
the duplicates table, and the embeddings source it was built from (``frame_embeddings`` reads
the per-frame vectors there); ``index.json`` records the size and sha256 of each and the
seconds each step took. Every build is a new version, switched to only once complete and
verified (:mod:`.versions`); a grown corpus is added to the current version's shards without
retraining (:func:`_addable`).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ragvid.pipelines.executor.map_tasks import map_tasks
from ragvid.pipelines.executor.ray_tasks import init_ray
from ragvid.pipelines.index import versions
from ragvid.pipelines.index.bm25 import Bm25Index
from ragvid.pipelines.index.dedup import read_duplicates
from ragvid.pipelines.index.fill import fill_shard, plan_shards, sample_part
from ragvid.pipelines.index.layout import CorruptShardError, IndexManifest, read_ids
from ragvid.pipelines.index.parts import (
    embedding_parts,
    embedding_paths,
    part_encoder,
    part_info,
    read_columns,
    refuse_duplicate_ids,
)
from ragvid.pipelines.index.rowstore import RowStore, exact_topk
from ragvid.pipelines.index.shards import ShardSet, load_shard, merge_topk, set_params
from ragvid.pipelines.index.vectors import (
    _single_encoder,
    _table_hash,
    batch_dot,
    source_snapshot,
)
from ragvid.schemas import DUPLICATES, EMBEDDINGS, INDEX_IDS, IndexConfig, read_table, write_table
from ragvid.schemas.checksum import FileRecord, bytes_record, file_record
from ragvid.schemas.faults import fault_point
from ragvid.schemas.files import is_local
from ragvid.schemas.io import (
    exists,
    fs_and_path,
    join,
    output_lock,
    part_name,
    write_bytes_atomic,
    write_json_atomic,
)
from ragvid.schemas.workspace import (  # the index folder's file names live with the layout
    BM25_DIR,
    DUPLICATES_FILE,
    IDS_FILE,
    INDEX_INFOS,
    IndexLayout,
)

FLAT_MAX_N = 100_000  # exact search below this: fast enough and no recall loss
log = logging.getLogger("ragvid.index")


# --- loading and checking the embeddings -----------------------------------------------


def choose_factory(n: int, dim: int, memory_budget_gb: float) -> str:
    """Flat for small corpora; IVF with 4-bit fast-scan PQ codes (one sub-quantizer per
    dimension) when they fit the budget; 8-bit scalar codes for odd dimensions; IVF-PQ
    otherwise. Compressed codes are re-ranked exactly from the float16 vector pieces the build
    writes, so the codes only have to find the candidates.

    nlist ≈ √N (a power of two). Measured at 1M × 512 on 2 cores (BENCHMARKS.md, issue 13):
    IVF1024,PQ512x4fs re-ranked reaches recall@10 0.96 at ~2× the QPS of IVF1024,SQ8 (the
    scan of 4-bit codes runs in SIMD registers; the re-rank restores what 4 bits lose) with
    half the memory, and IVF1024,SQ8 had beaten IVF4096,Flat (the 4·√N rule) by ~2× — fewer,
    longer lists cost less quantizer work than they add to the scan. Coarser fast-scan codes
    (2 dimensions per sub-quantizer) lose the true top-10 among neighbours this close. PQ has
    dim/4 sub-quantizers (encoding costs 256 × dim whatever m is, and the re-rank needs the
    true neighbours among the candidates), halved until the codes fit. HNSW is available
    through ``IndexConfig.factory`` (e.g. ``HNSW32``).
    """
    if n <= FLAT_MAX_N:
        return "Flat"
    nlist = 2 ** int(round(math.log2(math.sqrt(n))))
    budget = memory_budget_gb * 1024**3
    if dim % 2 == 0 and n * (dim * 0.5 + 8) * 1.1 <= budget:  # 4-bit codes + the lists' ids
        return f"IVF{nlist},PQ{dim}x4fs"
    if n * dim * 1.1 <= budget:  # SQ8: one byte per dimension, plus the lists' ids
        return f"IVF{nlist},SQ8"
    m = max(8, dim // 4)
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
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return faiss.IndexIDMap2(index)  # Flat/HNSW: keep global row ids
    ivf = faiss.downcast_index(ivf)
    if isinstance(ivf, faiss.IndexIVFPQ):
        # the factory turns on polysemous training (an annealing over the codes, for Hamming
        # pre-filters ragvid never uses: 4× the PQ training time measured); and 64 points per
        # code word train each sub-quantizer as well as FAISS's 256 at a quarter of the cost
        ivf.do_polysemous_training = False
        ivf.pq.cp.max_points_per_centroid = 64
    return index


# nprobe values the tuning tries, smallest first: steps of ~1.3–1.5×, so the tuned value lands
# near the recall target (powers of two overshot it: nprobe 8 where 5 already met it)
NPROBE_GRID = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
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


def sample_rows(n: int, sample: int, seed: int = 0) -> np.ndarray:
    """Sorted rows of a uniform sample of ``sample`` of ``n`` rows (the quantizer's)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(sample, n), replace=False))


def train_index(x: np.ndarray, factory: str, iterations: int | None = None) -> bytes:
    """Train an empty index on the sample ``x`` (``iterations`` of k-means for an IVF
    quantizer; None: FAISS's default); return it serialized (what shards start from)."""
    index = _new_index(x.shape[1], factory)
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and iterations is not None:
            ivf.cp.niter = iterations
        if ivf is not None and len(x) < ivf.nlist:
            raise ValueError(
                f"factory '{factory}' needs ≥ {ivf.nlist} training vectors, have {len(x)} — "
                "use fewer lists or let ragvid choose (no --factory)"
            )
        index.train(np.ascontiguousarray(x, dtype=np.float32))
    return faiss.serialize_index(index).tobytes()


def _gather_sample(parts: list[tuple[str, np.ndarray]], take: np.ndarray) -> np.ndarray:
    """The vectors of kept rows ``take`` (sorted, global), read by one task per part."""
    offsets = np.concatenate([[0], np.cumsum([len(r) for _, r in parts])])
    tasks = []
    for (uri, rows), a, b in zip(parts, offsets[:-1], offsets[1:], strict=True):
        lo, hi = np.searchsorted(take, [a, b])
        if hi > lo:
            tasks.append((uri, rows[take[lo:hi] - a]))
    return np.concatenate(list(map_tasks(sample_part, tasks, workers=2)))


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
    split: str | None = None,
) -> IndexManifest:
    """Build a new version of the index folder ``out_dir`` and switch readers to it
    (:mod:`.versions`: shards + vector pieces, ids.parquet, bm25/, a copy of the duplicates).

    Idempotent: when the current version was built with the same config from the same source
    parts (names, sizes, mtimes) and duplicates table, and every one of its files still matches
    its sha256 (checked under the lock), it is returned as is (``reused``) unless ``force``;
    a damaged current version is rebuilt, never reported up to date.

    NaN/zero vectors are refused (not dropped) with the offending video_ids named. With
    ``config.canonical_only`` (needs ``duplicates``; defaults to ``out_dir/duplicates.parquet``
    when ``ragvid index dedup`` wrote one there) non-canonical group members are left out
    and counted in ``dropped``. With ``split`` (a corpus's ``split.parquet``) its val videos
    are held out (``dropped["held_out"]``): the database of a held-out evaluation.
    ``ray=True`` fills shards with Ray tasks (starting a local Ray
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
            reason = _stale(current, str(embeddings), config, duplicates, split)
            if reason is None:
                try:
                    versions.verify(current, deep=True)
                except CorruptShardError as exc:
                    reason, previous = f"the current version is damaged: {exc}", None
            if reason is None:
                versions.collect(layout, current)
                current.reused = True
                return current
            base = _addable(current, str(embeddings), config, duplicates, reason)
            if base is not None:
                log.warning(
                    "index %s: adding %d new part(s) to %s without retraining the quantizer",
                    layout.root,
                    len(source_snapshot(str(embeddings))["parts"]) - len(base.source["parts"]),
                    base.version,
                )
            else:
                log.warning("rebuilding index %s: %s", layout.root, reason)
        else:
            base = None
            reason = "rebuild forced (--force)" if current is not None and force else None
        target = versions.begin(layout, current)  # also removes what killed builds left
        try:
            if ray:
                init_ray()
            man = _build_version(embeddings, target, config, duplicates, manifest, base, split)
            man.previous = previous
            man.grown_from = base.version if base is not None else None
            man.built_because = reason
            store = RowStore.open(man, verify=False)
            t_tune = time.perf_counter()
            man.search_params, man.tuned_recall = tune_search_params(
                man, store, config.recall_target
            )
            man.timings["tune"] = round(time.perf_counter() - t_tune, 2)
            man.files[INDEX_INFOS] = write_index_infos(man)
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


def _addable(
    old: IndexManifest, embeddings: str, config: IndexConfig, dups: str | None, reason: str
) -> IndexManifest | None:
    """``old`` when the new build may add to it instead of starting over: only new parts
    appeared after its unchanged ones (a grown corpus), nothing else changed, its files are
    intact and the index at most grows by ``config.add_max_growth`` (the quantizer was sized
    and trained for the old corpus)."""
    if reason != "the embeddings changed" or "pieces" not in old.vectors:
        return None  # (a changed split is its own reason, checked first by _stale)
    if old.config != config.model_dump():
        return None
    if old.duplicates_record != (file_record(dups) if dups is not None else None):
        if not _duplicates_grew_compatibly(old, dups, config):
            return None
    before = old.source.get("parts") or []
    now = source_snapshot(embeddings)["parts"]
    if len(now) <= len(before) or now[: len(before)] != before:
        return None
    try:
        new_rows = sum(part_info(p).rows for p in embedding_paths(embeddings)[len(before) :])
    except (OSError, ValueError):
        return None
    if old.ntotal + new_rows > config.add_max_growth * old.ntotal:
        return None
    try:
        versions.verify(old, deep=True)
    except CorruptShardError:
        return None
    return old


def _duplicates_grew_compatibly(old: IndexManifest, dups: str | None, config: IndexConfig) -> bool:
    """A grown corpus's new duplicates table (``ragvid index dedup`` grows it with the new
    parts) still lets the new parts be added, unless it drops rows ``old`` indexed: with
    ``canonical_only``, an indexed video that is no longer its group's canonical member (a
    new copy with a smaller video_id) must leave the index — a rebuild. (A non-canonical video
    stays non-canonical as a corpus grows: its group keeps the smaller id.)"""
    if dups is None or old.duplicates is None:
        return False
    if not config.canonical_only:
        return True
    table = read_table(dups, DUPLICATES, columns=["video_id", "is_canonical"])
    demoted = table.filter(pc.invert(table.column("is_canonical"))).column("video_id")
    indexed = read_ids(old).column("video_id")
    return not pc.any(pc.is_in(indexed, value_set=demoted.combine_chunks())).as_py()


def _split_source(split: str | None) -> dict[str, Any] | None:
    """What the manifest records of the split table whose val side was held out."""
    if split is None:
        return None
    # contents, not the path: a moved workspace keeps its index up to date
    return {
        "file": split.rstrip("/").rsplit("/", 1)[-1],
        "kept": "train",
        **file_record(split).to_json(),
    }


def _same_split(old: IndexManifest, split: str | None) -> bool:
    return old.source.get("split") == _split_source(split)


def _stale(
    old: IndexManifest,
    embeddings: str,
    config: IndexConfig,
    dups: str | None,
    split: str | None = None,
):
    """Why ``old`` is not what a build with these inputs would make (None: it is)."""
    if not old.version:
        return "it has the flat layout of an older ragvid (rebuilt as a version)"
    if not _same_split(old, split):
        return "the train / val split changed"
    if old.source.get("parts") != source_snapshot(embeddings)["parts"]:
        return "the embeddings changed"
    if old.config != config.model_dump():
        return "the index config changed"
    want = file_record(dups) if dups is not None else None
    if want != old.duplicates_record:
        return "the duplicates table changed"
    return None


@dataclass
class _Rows:
    """The driver's plan of a build: which rows of which parts are indexed, and their ids and
    captions (strings only — the vectors stay in the parts until the shard tasks read them)."""

    parts: list[tuple[str, np.ndarray]]  # (part uri, kept local rows)
    ids: pa.Array
    captions: pa.Array
    dim: int
    encoder: str
    dropped: dict[str, int]


def _plan_rows(where: str, exclude: dict[str, pa.Array] | None = None) -> _Rows:
    """Read ``video_id`` + ``caption`` part by part; refuse empty tables, mixed encoders or
    dimensions and duplicate ids; leave out the ids of ``exclude`` (reason → ids), counted
    per reason (an id in several sets counts for the first)."""
    exclude = {k: v for k, v in (exclude or {}).items() if v is not None}
    parts, ids, caps, encoders, dims = [], [], [], set(), set()
    dropped = dict.fromkeys(exclude, 0)
    all_ids = []
    for info in embedding_parts(where):
        if info.rows == 0:
            continue
        encoders.add(part_encoder(info))
        dims.add(info.dim)
        cols = ["video_id", "caption"] if "caption" in info.names else ["video_id"]
        t = read_columns(info.uri, cols)
        vid = t.column("video_id").combine_chunks().cast(pa.string())
        cap = (
            t.column("caption").combine_chunks().cast(pa.string())
            if "caption" in cols
            else pa.array([""] * len(t), pa.string())
        )
        all_ids.append(vid)
        keep = np.ones(len(t), dtype=bool)
        for reason, value_set in exclude.items():
            hit = np.asarray(pc.is_in(vid, value_set=value_set), dtype=bool) & keep
            dropped[reason] += int(hit.sum())
            keep &= ~hit
        if not keep.all():
            vid, cap = vid.filter(pa.array(keep)), cap.filter(pa.array(keep))
        rows = np.flatnonzero(keep).astype(np.int64)
        parts.append((info.uri, rows))
        ids.append(vid)
        caps.append(cap)
    if not all_ids:
        raise ValueError(f"{where}: the embeddings table is empty — nothing to index")
    if len(encoders) > 1:
        raise ValueError(
            f"{where}: rows from several encoders {sorted(encoders)} — embed with one encoder"
        )
    if len(dims) > 1:
        raise ValueError(
            f"{where}: parts with vector dimensions {sorted(dims)} — embed with one encoder"
        )
    refuse_duplicate_ids(pa.concat_arrays(all_ids), where)
    return _Rows(
        parts,
        pa.concat_arrays(ids),
        pa.concat_arrays(caps),
        dims.pop(),
        encoders.pop(),
        dropped,
    )


class _Clock:
    """Seconds per build step, recorded in the manifest (where a big build spends its time)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 2)
        self._t = now


def _bm25_files(captions: pa.Array, ids: pa.Array, folder: str) -> dict[str, dict[str, Any]]:
    """BM25 over the captions, saved to ``folder``; the files' records (a plain function: it
    may run in a process of its own)."""
    Bm25Index.build(captions, ids).save(folder)
    return {f"{BM25_DIR}/{k}": r.to_json() for k, r in Bm25Index.records(folder).items()}


# from this many captions the BM25 is built in a process of its own, beside the shard fills:
# its vocabulary and score matrix (GBs at 10M) are then not added to the build process's peak
BM25_PROCESS_MIN = 1_000_000


def _start_bm25(plan: _Rows, target: IndexLayout) -> Future:
    if len(plan.ids) < BM25_PROCESS_MIN:
        pool: Executor = ThreadPoolExecutor(1)
    else:
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    future = pool.submit(_bm25_files, plan.captions, plan.ids, target.bm25)
    pool.shutdown(wait=False)  # the pool goes once its one job is done
    return future


def _vectors_dtype(config: IndexConfig, factory: str) -> str:
    if config.vectors_dtype != "auto":
        return config.vectors_dtype
    return "float32" if factory.replace("IDMap,", "").startswith("Flat") else "float16"


def _build_version(
    embeddings: str | pa.Table,
    target: IndexLayout,
    config: IndexConfig,
    duplicates: str | None,
    manifest: str | None,
    base: IndexManifest | None = None,
    split: str | None = None,
) -> IndexManifest:
    """Write every file of a new version into ``target``; return its manifest (not yet sealed,
    search parameters not yet tuned). The driver holds ids and captions, a quantizer sample
    and one task result at a time — never the corpus's vectors.

    With ``base`` (see :func:`_addable`) the parts ``base`` was built from keep their rows,
    shards and vector pieces (linked or copied into the new version, unchanged); only the new
    parts are read, into new shards filled from ``base``'s trained quantizer."""
    files: dict[str, dict[str, Any]] = {}
    dropped: dict[str, int] = {}
    source_extra: dict[str, Any] = {}
    if isinstance(embeddings, pa.Table):  # keep the source with the version, then stream it
        encoder = _single_encoder(embeddings, "embeddings table")
        if len(embeddings) == 0:
            raise ValueError("embeddings table: the embeddings table is empty — nothing to index")
        write_table(join(target.embeddings, part_name(0)), embeddings, EMBEDDINGS, encoder=encoder)
        source_extra = {"sha256": _table_hash(embeddings)}
        where = target.embeddings
    else:
        where = str(embeddings)
    non_canonical = None
    if duplicates is not None:
        dups, record = _copy_duplicates(duplicates, target)
        files[DUPLICATES_FILE] = record.to_json()
        if config.canonical_only:
            non_canonical = pa.array(
                [v for v, c in zip(dups["video_id"], dups["is_canonical"], strict=True) if not c],
                pa.string(),
            )
    held_out = None
    if split is not None:
        from ragvid.pipelines.corpus.split import split_ids

        held_out = split_ids(split, "val")
    clock = _Clock()
    plan = _plan_rows(where, {"non_canonical": non_canonical, "held_out": held_out})
    clock.lap("plan")
    dropped.update(plan.dropped)
    n, dim = len(plan.ids), plan.dim
    if n == 0:
        raise ValueError(
            f"{where}: no rows left to index after leaving out {plan.dropped or 'nothing'}"
        )
    if base is not None:
        factory, dtype = base.factory, base.vectors["dtype"]
        trained = _empty_copy(base)
        kept, old_parts = _carry_over(base, target), len(base.source["parts"])
        jobs = plan_shards(
            plan.parts[old_parts:],
            config.num_shards,
            base.ntotal,
            target.shard,
            target.vector_piece,
            dtype,
            first_shard=len(base.shards),
        )
    else:
        factory = config.factory or choose_factory(n, dim, config.memory_budget_gb)
        sample = train_sample_size(factory, n, dim, config)
        x_train = (
            _gather_sample(plan.parts, sample_rows(n, sample))
            if sample
            else np.empty((0, dim), np.float32)
        )
        clock.lap("sample")
        trained = train_index(x_train, factory, config.train_iterations)
        del x_train  # not held through the shard fills
        clock.lap("train")
        dtype = _vectors_dtype(config, factory)
        kept = []
        jobs = plan_shards(
            plan.parts, config.num_shards, 0, target.shard, target.vector_piece, dtype
        )
    ray_mod = sys.modules.get("ray")
    if ray_mod is not None and ray_mod.is_initialized():
        trained = ray_mod.put(trained)  # shipped once, not once per shard
    tasks = [(trained, j) for j in jobs]
    bm25 = _start_bm25(plan, target)  # BM25 (captions only) while the shard tasks run
    # threads (no Ray): each shard holds its codes and one part's vectors; FAISS's add is
    # already multi-threaded, so more threads than cores only add memory
    workers = max(1, min(len(jobs), 4, os.cpu_count() or 1))
    results = kept + list(map_tasks(fill_shard, tasks, workers=workers))
    clock.lap("shards")
    files.update(bm25.result())
    clock.lap("bm25_after_shards")
    fault_point("index-build:after-shards")
    counts = [r["shard"]["count"] for r in results]
    if sum(counts) != n:
        raise RuntimeError(f"shards hold {sum(counts)} vectors, the plan has {n} — rebuild")
    shard_of = np.repeat(np.arange(len(results), dtype=np.int32), counts)
    ids_table = pa.table(
        {
            "row_id": pa.array(np.arange(n, dtype=np.int64)),
            "video_id": plan.ids,
            "shard": pa.array(shard_of),
            "caption": pc.fill_null(plan.captions, ""),
        }
    )
    write_table(target.ids, ids_table, INDEX_IDS, encoder=plan.encoder, config=config.model_dump())
    files[IDS_FILE] = file_record(target.ids).to_json()
    clock.lap("ids")
    fault_point("index-build:after-files")
    return IndexManifest(
        encoder=plan.encoder,
        dim=dim,
        metric="inner_product",
        factory=factory,
        ntotal=n,
        shards=[r["shard"] for r in results],
        search_params={},
        source={
            "uri": where,
            **source_snapshot(where),
            **source_extra,
            "manifest": manifest,
            "split": _split_source(split),
        },
        build_seconds=0.0,
        config=config.model_dump(),
        vectors={"dtype": dtype, "pieces": [r["piece"] for r in results]},
        canonical_only=config.canonical_only,
        timings=clock.laps,
        duplicates=target.built_duplicates if duplicates is not None else None,
        dropped=dropped,
        version=target.version,
        files=files,
        path=target.root,
    )


def index_infos(man: IndexManifest) -> dict[str, Any]:
    """autofaiss's ``index_infos.json`` keys for a built version (its ``compute_fast_metrics``
    + ``index_key`` / ``index_param`` / ``index_path``), so tools that read autofaiss's summary
    read ragvid's. Search speed and reconstruction error are left out: the build does not
    measure them. ``index_param`` is the tuned search parameters in FAISS ParameterSpace
    syntax; ``10-recall@10`` the recall the tuning measured (perturbed corpus queries)."""
    size = sum(int(s.get("bytes", 0)) for s in man.shards)
    paths = [s["file"] for s in man.shards]
    return {
        "index_key": man.factory,
        "index_param": ",".join(f"{k}={v}" for k, v in sorted(man.search_params.items())),
        "index_path": paths[0] if len(paths) == 1 else paths,
        "size in bytes": size,
        "nb vectors": man.ntotal,
        "vectors dimension": man.dim,
        "compression ratio": round(4.0 * man.ntotal * man.dim / size, 4) if size else None,
        "metric_type": "ip",
        "10-recall@10": man.tuned_recall,
        "nb shards": len(paths),
        "encoder": man.encoder,
    }


def write_index_infos(man: IndexManifest) -> dict[str, Any]:
    """Write ``index_infos.json`` into the version folder; return its record (the manifest
    vouches for it like for every other file of the version)."""
    uri = man.layout.index_infos
    write_json_atomic(uri, index_infos(man))
    return file_record(uri).to_json()


def _empty_copy(base: IndexManifest) -> bytes:
    """``base``'s trained quantizer with no vectors: shard 0, emptied."""
    index = load_shard(base, 0)
    index.reset()
    return faiss.serialize_index(index).tobytes()


def _carry_over(base: IndexManifest, target: IndexLayout) -> list[dict[str, Any]]:
    """Hard-link (or copy) ``base``'s shards and vector pieces into ``target``; return their
    records, as the shard tasks return theirs."""
    out = []
    for shard, piece in zip(base.shards, base.vectors["pieces"], strict=True):
        for name in (shard["file"], piece["file"]):
            _link_or_copy(base.layout.file(name), target.file(name))
        out.append({"shard": dict(shard), "piece": dict(piece)})
    return out


def _link_or_copy(src: str, dst: str) -> None:
    if is_local(src) and is_local(dst):
        try:
            os.link(fs_and_path(src)[1], fs_and_path(dst)[1])
            return
        except OSError:
            pass  # another filesystem, or no hard links: copy
    fs, path = fs_and_path(src)
    with fs.open(path, "rb") as fh:
        data = fh.read()
    write_bytes_atomic(dst, data)


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


TUNE_RESIDENT_MAX = 2 * 1024**3  # bytes of shards the tuning holds at once


def tune_search_params(
    man: IndexManifest, x: RowStore, recall_target: float, n_queries: int = 200, k: int = 10
) -> tuple[dict[str, Any], float | None]:
    """Smallest nprobe / efSearch whose recall@k against exact search meets the target,
    measured with queries made by perturbing sampled corpus vectors (cosine ≈ 0.9 to their
    source: new videos like the corpus's — the corpus's own vectors would flatter IVF, since
    a point always lies in the cell it probes first); for compressed indexes after the
    retriever's 4× over-fetch and exact re-rank.
    """
    if man.factory.replace("IDMap,", "").startswith("Flat"):
        return {}, 1.0
    # up to TUNE_RESIDENT_MAX of codes the shards are opened together (one load, searched in
    # one merged index); above, each grid point loads them one after another (10M × 512: 2.8 GB)
    whole = sum(int(sh.get("bytes", 0)) for sh in man.shards) <= TUNE_RESIDENT_MAX
    shards = ShardSet.open(man) if whole else None
    rng = np.random.default_rng(1)
    q = x[np.sort(rng.choice(len(x), size=min(n_queries, len(x)), replace=False))]
    q = q + rng.standard_normal(q.shape).astype(np.float32) * (0.5 / math.sqrt(q.shape[1]))
    q /= np.linalg.norm(q, axis=1, keepdims=True)  # a new video near a corpus video (cos ≈ 0.9)
    kk = min(k, len(x))
    exact = exact_topk(q, x, kk)
    first = shards.indexes[0] if shards else load_shard(man, 0)  # kept while ivf is read
    ivf = faiss.try_extract_index_ivf(first)
    if ivf is None:  # HNSW over the vectors themselves
        grid = [{"efSearch": e} for e in (16, 32, 64, 128, 256, 512, 1024)]
    else:  # IVF, whatever its coarse quantizer (an HNSW one needs efSearch ≥ nprobe)
        hnsw_q = "HNSW" in man.factory.split(",")[0]
        probes = [p for p in NPROBE_GRID if p < ivf.nlist]
        grid = [
            {"nprobe": p, **({"quantizer_efSearch": max(64, 2 * p)} if hnsw_q else {})}
            for p in [*probes, ivf.nlist]
        ]
    ivf = first = None  # a loaded shard is not held through the loop below
    recall, params = 0.0, {}
    c = kk * 4 * man.rerank_fetch if man.compressed else kk
    for params in grid:
        if shards is not None:
            shards.set_params(params)
            _, got = shards.search(q, c)
        else:  # one shard loaded at a time: the build never holds every shard's codes
            found = []
            for i in range(len(man.shards)):
                one = load_shard(man, i)
                set_params(one, params)
                found.append(one.search(q, c))
                del one
            _, got = merge_topk([f[0] for f in found], [f[1] for f in found], c)
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
    return dict(params), round(recall, 4)
