"""Build a sharded FAISS index over per-video CLIP vectors (RAGME §3: cosine = inner product).

One quantizer is trained once on a sample; shards are filled from it in parallel (Ray tasks
when Ray is up, threads otherwise) and written with sha256 checksums into ``index.json``.
Alongside the shards the index keeps ``ids.parquet`` (row id → video_id, shard, caption),
``vectors.npy`` (the exact normalised vectors, float32 — re-ranking and the mutual-dedup
filter need them whatever the index compresses), a BM25 index over the captions, and the
embeddings source it was built from (``frame_embeddings`` reads the per-frame vectors there).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from ragvid.schemas import EMBEDDINGS, INDEX_IDS, IndexConfig, write_table
from ragvid.schemas.contract import META_ENCODER
from ragvid.schemas.io import (
    exists,
    fs_and_path,
    join,
    list_parts,
    makedirs,
    output_lock,
    read_json,
    read_metadata,
    read_parts,
    read_table,
    write_bytes_atomic,
    write_json_atomic,
)
from ragvid.schemas.workspace import (  # the index folder's file names live with the layout
    BM25_DIR,
    DUPLICATES_FILE,
    IDS_FILE,
    INDEX_JSON,
    VECTORS_FILE,
)

FLAT_MAX_N = 100_000  # exact search below this: fast enough and no recall loss


class CorruptShardError(ValueError):
    """A shard (or vectors file) does not match the checksum recorded at build time."""


@dataclass
class IndexManifest:
    """What ``index.json`` records: enough to verify, reopen and explain an index."""

    encoder: str
    dim: int
    metric: str
    factory: str
    ntotal: int
    shards: list[dict[str, Any]]
    search_params: dict[str, Any]
    source: dict[str, Any]
    build_seconds: float
    config: dict[str, Any]
    vectors: dict[str, Any] = field(default_factory=dict)
    tuned_recall: float | None = None
    canonical_only: bool = False
    duplicates: str | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    path: str = ""

    @property
    def compressed(self) -> bool:
        """True when index scores are approximate (PQ/SQ codes): re-rank with exact vectors."""
        return any(t in self.factory for t in ("PQ", "SQ", "LSH", "RQ"))

    def to_json(self) -> dict[str, Any]:
        """The JSON form; local paths are stored relative to the index folder, so a workspace
        moved or mounted elsewhere still finds its embeddings, manifest and duplicates."""
        d = asdict(self)
        base = d.pop("path")
        src = dict(d["source"])
        for key in ("uri", "manifest"):
            src[key] = relative_path(src.get(key), base)
        d["source"] = src
        d["duplicates"] = relative_path(d.get("duplicates"), base)
        return d

    @classmethod
    def load(cls, index_dir: str) -> IndexManifest:
        uri = join(index_dir, INDEX_JSON)
        if not exists(uri):
            raise FileNotFoundError(
                f"{index_dir}: no {INDEX_JSON} — not a ragvid index; build one with "
                "`ragvid index build` (or check --index / the workspace)"
            )
        data = read_json(uri)
        known = {f for f in cls.__dataclass_fields__}
        man = cls(**{k: v for k, v in data.items() if k in known}, path=str(index_dir))
        src = dict(man.source)
        for key in ("uri", "manifest"):
            src[key] = absolute_path(src.get(key), man.path)
        man.source = src
        man.duplicates = absolute_path(man.duplicates, man.path)
        return man


def _is_local(path: str | None) -> bool:
    return bool(path) and "://" not in str(path)


def relative_path(path: str | None, base: str) -> str | None:
    """``path`` relative to ``base`` when both are local (stored in manifests: relocatable)."""
    if not _is_local(path) or not _is_local(base) or not os.path.isabs(str(path)):
        return path
    return os.path.relpath(str(path), str(base))


def absolute_path(path: str | None, base: str) -> str | None:
    if not _is_local(path) or not _is_local(base) or os.path.isabs(str(path)):
        return path
    return os.path.normpath(os.path.join(str(base), str(path)))


# --- loading and checking the embeddings -----------------------------------------------


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
    return {
        "file": uri.rsplit("/", 1)[-1],
        "count": int(index.ntotal),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _fill_shards(trained: bytes, x: np.ndarray, out_dir: str, num_shards: int, use_ray: bool):
    bounds = np.linspace(0, len(x), num_shards + 1).astype(int)
    jobs = [
        (x[a:b], np.arange(a, b, dtype=np.int64), join(out_dir, f"shard-{i:03d}.faiss"))
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
    """Build ``out_dir`` (index.json, shard-NNN.faiss, ids.parquet, vectors.npy, bm25/).

    Idempotent: when ``out_dir`` already holds an index built with the same config from the
    same source parts (paths, sizes, mtimes) it is returned as is, unless ``force``.

    NaN/zero vectors are refused (not dropped) with the offending video_ids named. With
    ``config.canonical_only`` (needs ``duplicates``; defaults to ``out_dir/duplicates.parquet``
    when ``ragvid index dedup`` wrote one there) non-canonical group members are left out
    and counted in ``dropped``. ``ray=True`` fills shards with Ray tasks (starting a local Ray
    if none is up); ``ray=False`` uses threads unless Ray is already initialised.
    """
    from ragvid.pipelines.index.bm25 import Bm25Index
    from ragvid.pipelines.index.dedup import read_duplicates

    t0 = time.perf_counter()
    if not force and not isinstance(embeddings, pa.Table) and exists(join(out_dir, INDEX_JSON)):
        old = IndexManifest.load(out_dir)
        same_src = old.source.get("parts") == source_snapshot(str(embeddings))["parts"]
        if same_src and old.config == config.model_dump():
            return old
    vec = load_vectors(embeddings)
    dropped: dict[str, int] = {}
    if duplicates is None and exists(join(out_dir, DUPLICATES_FILE)):
        duplicates = join(out_dir, DUPLICATES_FILE)
    if config.canonical_only:
        if duplicates is None:
            raise ValueError(
                "canonical_only=True needs the duplicates table: run `ragvid index dedup` "
                "first and pass duplicates=<path>"
            )
        dups = read_duplicates(duplicates)
        non_canon = {
            v for v, c in zip(dups["video_id"], dups["is_canonical"], strict=True) if not c
        }
        keep = np.array([v not in non_canon for v in vec.ids], dtype=bool)
        dropped["non_canonical"] = int((~keep).sum())
        vec = Vectors(vec.ids[keep], vec.x[keep], vec.captions[keep], vec.encoder, vec.source)
    n, dim = vec.x.shape
    factory = config.factory or choose_factory(n, dim, config.memory_budget_gb)
    num_shards = max(1, min(config.num_shards, n))
    with output_lock(out_dir):
        makedirs(out_dir)
        if isinstance(embeddings, pa.Table):  # keep the source next to the index
            src_dir = join(out_dir, "embeddings")
            write_table(
                join(src_dir, "part-00000.parquet"), embeddings, EMBEDDINGS, encoder=vec.encoder
            )
            vec.source = {**vec.source, **source_snapshot(src_dir)}
        trained = train_index(vec.x, factory, config.train_sample)
        import ray as ray_mod

        use_ray = ray or ray_mod.is_initialized()
        shards, bounds = _fill_shards(trained, vec.x, out_dir, num_shards, use_ray)
        shard_of = np.repeat(np.arange(num_shards, dtype=np.int32), np.diff(bounds))
        ids_table = pa.table(
            {
                "row_id": pa.array(np.arange(n, dtype=np.int64)),
                "video_id": pa.array(vec.ids.tolist(), pa.string()),
                "shard": pa.array(shard_of),
                "caption": pa.array([str(c) if c is not None else "" for c in vec.captions]),
            }
        )
        write_table(
            join(out_dir, IDS_FILE),
            ids_table,
            INDEX_IDS,
            encoder=vec.encoder,
            config=config.model_dump(),
        )
        buf = io.BytesIO()
        np.save(buf, vec.x)
        write_bytes_atomic(join(out_dir, VECTORS_FILE), buf.getvalue())
        vectors = {
            "file": VECTORS_FILE,
            "dtype": "float32",
            "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
        }
        bm25 = Bm25Index.build([str(c) for c in vec.captions], vec.ids.tolist())
        bm25.save(join(out_dir, BM25_DIR))
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
            duplicates=duplicates,
            dropped=dropped,
            path=out_dir,
        )
        man.search_params, man.tuned_recall = tune_search_params(man, vec.x, config.recall_target)
        man.build_seconds = round(time.perf_counter() - t0, 3)
        write_json_atomic(join(out_dir, INDEX_JSON), man.to_json())
    return man


def tune_search_params(
    man: IndexManifest, x: np.ndarray, recall_target: float, n_queries: int = 200, k: int = 10
) -> tuple[dict[str, Any], float | None]:
    """Smallest nprobe / efSearch whose recall@k against exact search meets the target,
    measured with queries made by perturbing sampled corpus vectors (cosine ≈ 0.9 to their
    source: new videos like the corpus's — the corpus's own vectors would flatter IVF, since
    a point always lies in the cell it probes first); for compressed indexes after the
    retriever's 4× over-fetch and exact re-rank.
    """
    from ragvid.pipelines.index.search import batch_dot
    from ragvid.pipelines.index.shards import ShardSet

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


def list_indexes(root: str) -> list[IndexManifest]:
    """Every index under ``<workspace>/indexes`` (a folder with an index.json)."""
    base = join(root, "indexes")
    fs, path = fs_and_path(base)
    if not fs.exists(path):
        return []
    out = []
    for p in sorted(fs.ls(path, detail=False)):
        d = join(base, p.rstrip("/").rsplit("/", 1)[-1])
        if exists(join(d, INDEX_JSON)):
            out.append(IndexManifest.load(d))
    return out


def resolve_ids(man: IndexManifest) -> Sequence[str]:
    """The video_ids of the index in row order."""
    return read_table(join(man.path, IDS_FILE), INDEX_IDS).column("video_id").to_pylist()
