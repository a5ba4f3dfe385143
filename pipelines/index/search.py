"""Query-time retrieval with RAGME's filters (App. A) over a built index.

Per query: over-fetch candidates from the shards (re-scored with the exact stored vectors
when the index compresses them), drop excluded ids, drop scores under δ_min (which depends
on the query's modality: ``RetrievalConfig.delta_min``), drop a candidate whose cosine with
an already-kept one is ≥ δ_dedup, keep the first K, pad to K and mask the padded slots.
When the filters leave fewer than K and more candidates could qualify, the fetch widens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ragvid.pipelines.index.idmap import IdMap, take_padded
from ragvid.pipelines.index.layout import IndexManifest, damaged, read_ids
from ragvid.pipelines.index.rowstore import RowStore
from ragvid.pipelines.index.shards import RayShardSet, ShardSet
from ragvid.pipelines.index.vectors import batch_dot, l2_normalise
from ragvid.schemas import EMBEDDINGS, MANIFEST, RetrievalConfig, read_table
from ragvid.schemas.checksum import ChecksumMismatchError
from ragvid.schemas.io import exists, list_parts, read_parts

Modality = Literal["text", "video", "vector"]
TextMode = Literal["dense", "bm25", "hybrid-rerank", "rrf"]
TEXT_MODES = ("dense", "bm25", "hybrid-rerank", "rrf")


@dataclass
class RetrievalResult:
    """K results per query; padded slots have id None, score 0 and mask False."""

    ids: np.ndarray  # object (n, K)
    scores: np.ndarray  # float32 (n, K)
    mask: np.ndarray  # bool (n, K)
    delta_min: float | None  # the minimum similarity that applied (None: off)
    modality: str
    rows: np.ndarray  # int64 (n, K) index rows, -1 where padded
    mode: str = "dense"


def select_filtered(
    rows: np.ndarray,
    scores: np.ndarray,
    vectors: np.ndarray,
    k: int,
    *,
    delta_min: float | None,
    delta_dedup: float | None,
    exclude: np.ndarray | None = None,
    chunk_elems: int = 1 << 25,
    candidate_vectors: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The RAGME filters over candidate lists sorted by score (vectorised over queries).

    ``rows`` (n, C) int64 (-1 = none), ``scores`` (n, C), ``vectors`` the exact normalised
    vectors indexed by row, ``exclude`` (n, C) bool; ``candidate_vectors`` (n, C, d), when the
    caller holds the candidates' vectors already (an exact re-rank gathered them; as
    ``(vectors, pos)``, see :meth:`Retriever.candidates_with_vectors`), spares the mutual-dedup
    filter gathering them again. Returns (rows, scores, mask), each (n, k).
    """
    n, c = rows.shape
    valid = rows >= 0
    if exclude is not None:
        valid &= ~exclude
    if delta_min is not None:
        valid &= scores >= delta_min
    # valid candidates first (score order kept), then greedy mutual dedup on a narrow window;
    # only rows that the window leaves short of K get the full width
    first = np.argsort(~valid, axis=1, kind="stable")
    rows, scores = np.take_along_axis(rows, first, 1), np.take_along_axis(scores, first, 1)
    valid = np.take_along_axis(valid, first, 1)
    if delta_dedup is None or c <= 1:
        kept = valid
    else:

        def window(sel: slice | np.ndarray, width: int) -> np.ndarray | None:
            """The held vectors of candidates [:width] of rows ``sel``, in the valid-first order."""
            if candidate_vectors is None:
                return None
            held, pos = candidate_vectors
            at = np.take_along_axis(pos[sel], first[sel, :width], 1)
            m, h = held[sel].reshape(-1, held.shape[2]), held.shape[1]
            return m[np.arange(len(at))[:, None] * h + at]  # one row gather, not a 3-d index

        kept = np.zeros_like(valid)
        w = min(c, k + 2)
        kept[:, :w] = _greedy_dedup(
            rows[:, :w], valid[:, :w], vectors, k, delta_dedup, chunk_elems, window(slice(None), w)
        )
        short = np.flatnonzero((kept.sum(axis=1) < k) & valid[:, w:].any(axis=1))
        if len(short):
            kept[short] = _greedy_dedup(
                rows[short], valid[short], vectors, k, delta_dedup, chunk_elems, window(short, c)
            )
    order = np.argsort(~kept, axis=1, kind="stable")[:, :k]
    mask = np.take_along_axis(kept, order, 1)
    out_rows = np.where(mask, np.take_along_axis(rows, order, 1), -1)
    out_scores = np.where(mask, np.take_along_axis(scores, order, 1), 0).astype(np.float32)
    if out_rows.shape[1] < k:  # fewer candidates than K: pad
        pad = k - out_rows.shape[1]
        out_rows = np.pad(out_rows, ((0, 0), (0, pad)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)))
        mask = np.pad(mask, ((0, 0), (0, pad)))
    return out_rows, out_scores, mask


def _greedy_dedup(
    rows: np.ndarray,
    valid: np.ndarray,
    vectors: np.ndarray,
    k: int,
    delta: float,
    chunk: int,
    held: np.ndarray | None = None,
) -> np.ndarray:
    """Keep a valid candidate unless an earlier kept one has cosine ≥ delta with it (``held``:
    the candidates' vectors, (n, c, d), instead of gathering them from ``vectors``)."""
    n, c = rows.shape
    kept = np.zeros_like(valid)
    step = max(1, chunk // max(1, c * vectors.shape[1]))
    for a in range(0, n, step):
        r = rows[a : a + step]
        if held is not None:
            v = np.asarray(held[a : a + step], dtype=np.float32)
        else:
            v = np.asarray(vectors[np.where(r >= 0, r, 0).ravel()], dtype=np.float32)
            v = v.reshape(len(r), c, -1)
        close = np.matmul(v, v.transpose(0, 2, 1)) >= delta  # (m, C, C); BLAS takes the view
        ok, kp = valid[a : a + step], kept[a : a + step]
        for j in range(c):
            hit = (kp[:, :j] & close[:, j, :j]).any(axis=1) if j else False
            kp[:, j] = ok[:, j] & ~hit
            if j + 1 >= k and (kp[:, : j + 1].sum(axis=1) >= k).all():
                break
    return kept


class Retriever:
    """An opened index: shards, id map, exact vectors, captions, and its embeddings source."""

    def __init__(
        self,
        man: IndexManifest,
        shards: ShardSet | RayShardSet,
        ids_table: pa.Table,
        vectors: RowStore,
    ):
        self.man = man
        self.shards = shards
        self.ids = IdMap(ids_table.column("video_id"))  # columnar: no Python object per row
        self.captions: pa.Array = ids_table.column("caption").combine_chunks()
        self.vectors = vectors
        self._bm25 = None
        self._frames_map: dict[str, tuple[int, int]] | None = None
        self._part_cache: OrderedDict[int, pa.Table] = OrderedDict()
        self._uris: dict[str, str] | None = None

    @classmethod
    def open(cls, index_dir: str, *, backend: Literal["threads", "ray"] = "threads") -> Retriever:
        """Open the current version of ``index_dir``, verifying the checksums of every shard,
        the ids table and the vectors (BM25 files: when first searched). The version stays
        the one opened, whatever later builds switch to."""
        man = IndexManifest.load(index_dir)
        # the vectors' checksums (1 GB at 1M × 512) are read while the shards load and merge:
        # hashing and FAISS both release the GIL
        with ThreadPoolExecutor(max_workers=1) as pool:
            vectors = pool.submit(RowStore.open, man)
            shards = ShardSet.open(man) if backend == "threads" else RayShardSet(man)
            ids_table = read_ids(man)
            return cls(man, shards, ids_table, vectors.result())

    # --- ids -------------------------------------------------------------------------

    def rows_for(self, ids: Sequence[str | None]) -> np.ndarray:
        """Index row of each id (-1: not in the index, or None)."""
        return self.ids.rows(ids)

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        """Video ids of index rows (any shape; None where a row is < 0)."""
        return self.ids.take(rows)

    # --- dense search ----------------------------------------------------------------

    def candidates(self, q: np.ndarray, c: int, *, rerank: bool = True):
        """Top-c (rows, scores) for normalised queries; exact re-rank on compressed indexes."""
        rows, scores, _ = self.candidates_with_vectors(q, c, rerank=rerank)
        return rows, scores

    def candidates_with_vectors(self, q: np.ndarray, c: int, *, rerank: bool = True):
        """:meth:`candidates` plus, where the re-rank gathered them, the exact vectors it holds
        (None otherwise) as ``(vectors, pos)``: candidate ``[i, j]``'s vector is
        ``vectors[i, pos[i, j]]``. The filters reuse them instead of gathering again."""
        c = max(1, min(int(c), self.man.ntotal))
        rerank = rerank and self.man.compressed
        fetch = min(self.man.ntotal, c * self.man.rerank_fetch) if rerank else c
        scores, rows = self.shards.search(q, fetch)
        held = None
        if rerank:
            v = np.asarray(self.vectors[np.where(rows >= 0, rows, 0)], dtype=np.float32)
            exact = batch_dot(q, v)
            exact = np.where(rows >= 0, exact, -np.inf)
            order = np.argsort(-exact, axis=1, kind="stable")[:, :c]
            rows = np.take_along_axis(rows, order, 1)
            scores = np.take_along_axis(exact, order, 1)
            held = (v, order)  # not permuted here: the filters take only the few they need
        return rows, scores.astype(np.float32), held

    def search(
        self,
        queries: np.ndarray,
        *,
        modality: Modality,
        config: RetrievalConfig,
        exclude_ids: Sequence[Sequence[str]] | None = None,
    ) -> RetrievalResult:
        """K filtered results per query vector (see the module docstring for the filters)."""
        if modality not in ("text", "video", "vector"):
            raise ValueError(f"modality={modality!r}: use 'text', 'video' or 'vector'")
        q = l2_normalise(queries, self.man.dim, f"{modality} queries")
        excl_rows = None
        if exclude_ids is not None:
            if len(exclude_ids) != len(q):
                raise ValueError(f"exclude_ids has {len(exclude_ids)} lists for {len(q)} queries")
            excl_rows = [self.rows_for(list(e)) for e in exclude_ids]
        extra = max((len(e) for e in excl_rows), default=0) if excl_rows else 0
        return self.filtered_search(q, modality, config, excl_rows, extra)

    def filtered_search(
        self,
        q: np.ndarray,
        modality: Modality,
        config: RetrievalConfig,
        excl_rows: list[np.ndarray] | None = None,
        extra: int = 0,
        extra_exclude=None,
    ) -> RetrievalResult:
        """K filtered results for normalised query vectors ``q`` with rows to exclude per query
        (``excl_rows``, ``extra`` more candidates fetched to make up for them) and an optional
        ``extra_exclude(todo, rows, scores) → bool mask`` (neighbour lists drop the query's
        near-duplicates with it). What :meth:`search` and the neighbour lists both run."""
        k, dmin = config.k, config.delta_min(modality)
        n = len(q)
        out_rows = np.full((n, k), -1, np.int64)
        out_sc = np.zeros((n, k), np.float32)
        out_mask = np.zeros((n, k), bool)
        todo = np.arange(n)
        c = config.overfetch * k + extra + 1
        while len(todo):
            rows, scores, held = self.candidates_with_vectors(
                q[todo], c, rerank=config.rerank_exact
            )
            exclude = np.zeros(rows.shape, bool)
            if excl_rows is not None:
                for t, qi in enumerate(todo):
                    if len(excl_rows[qi]):
                        exclude[t] = np.isin(rows[t], excl_rows[qi])
            if extra_exclude is not None:
                exclude |= extra_exclude(todo, rows, scores)
            r, s, m = select_filtered(
                rows,
                scores,
                self.vectors,
                k,
                delta_min=dmin,
                delta_dedup=config.delta_dedup,
                exclude=exclude,
                candidate_vectors=held,
            )
            del held
            out_rows[todo], out_sc[todo], out_mask[todo] = r, s, m
            # widen where the filters left < K but the last candidate could still qualify
            last = scores[:, -1]
            more = (m.sum(1) < k) & (rows[:, -1] >= 0)
            if dmin is not None:
                more &= last >= dmin
            if c >= self.man.ntotal or not more.any():
                break
            todo, c = todo[more], min(self.man.ntotal, c * 4)
        return RetrievalResult(self.ids_of(out_rows), out_sc, out_mask, dmin, modality, out_rows)

    def search_video_ids(
        self, ids: Sequence[str], config: RetrievalConfig, *, exclude_self: bool = True
    ) -> RetrievalResult:
        """Video→video retrieval for videos of the corpus (the query itself excluded)."""
        x, found = self.vectors_for(ids)
        if not found.all():
            missing = [v for v, f in zip(ids, found, strict=True) if not f][:5]
            raise KeyError(f"video_id(s) {missing} are neither in the index nor its embeddings")
        excl = [[v] for v in ids] if exclude_self else None
        return self.search(x, modality="video", config=config, exclude_ids=excl)

    def vectors_for(
        self, ids: Sequence[str], rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact vectors for video_ids: from the index, else from its embeddings source
        (``rows``: their index rows, when the caller looked them up already)."""
        rows = self.rows_for(ids) if rows is None else rows
        x = np.zeros((len(ids), self.man.dim), np.float32)
        x[rows >= 0] = self.vectors[rows[rows >= 0]]
        found = rows >= 0
        if not found.all():
            src = self._frames_index()
            for i in np.flatnonzero(~found):
                loc = src.get(ids[i])
                if loc is not None:
                    t = self._part(loc[0])
                    v = np.asarray(t.column("video_emb")[loc[1]].as_py(), np.float32)
                    x[i], found[i] = v / max(np.linalg.norm(v), 1e-12), True
        return x, found

    # --- text search -----------------------------------------------------------------

    def bm25(self):
        from ragvid.pipelines.index.bm25 import Bm25Index

        if self._bm25 is None:
            folder = self.man.layout.bm25
            if not exists(folder) and self.man.version:
                raise FileNotFoundError(
                    f"{self.man.path}: version {self.man.version}, which this search opened, "
                    "has been replaced by newer builds and removed — reopen the index"
                )
            try:
                self._bm25 = Bm25Index.load(folder, expect=self.man.bm25_records())
            except ChecksumMismatchError as exc:
                raise damaged(exc, self.man.path) from None
        return self._bm25

    def search_text(
        self,
        texts: Sequence[str],
        encoder: Any,
        config: RetrievalConfig,
        *,
        mode: TextMode = "dense",
    ) -> RetrievalResult:
        """Text→video search. ``mode``: ``dense`` (CLIP), ``bm25`` (captions), ``hybrid-rerank``
        (BM25 candidates re-scored by CLIP, then the text filters) or ``rrf`` (reciprocal-rank
        fusion of dense and BM25 rankings). ``encoder`` may be None for ``bm25``."""
        if isinstance(texts, str):
            texts = [texts]
        if mode not in TEXT_MODES:
            raise ValueError(f"mode={mode!r}: use one of {list(TEXT_MODES)}")
        k = config.k
        c = max(50, config.overfetch * k)
        q = None
        if mode != "bm25":
            self.check_encoder(encoder)
            q = l2_normalise(encoder.encode_text(list(texts)), self.man.dim, "text embeddings")
        if mode == "dense":
            res = self.search(q, modality="text", config=config)
            res.mode = mode
            return res
        b_ids, b_sc = self.bm25().search(texts, c)
        b_rows = self.rows_for(b_ids.ravel().tolist()).reshape(b_ids.shape)
        if mode == "bm25":
            rows, scores, dmin = b_rows, b_sc, None
        elif mode == "hybrid-rerank":
            v = np.asarray(self.vectors[np.where(b_rows >= 0, b_rows, 0)], np.float32)
            cos = np.where(b_rows >= 0, batch_dot(q, v), -np.inf)
            order = np.argsort(-cos, axis=1, kind="stable")
            rows, scores = np.take_along_axis(b_rows, order, 1), np.take_along_axis(cos, order, 1)
            dmin = config.delta_min("text")
        else:
            from ragvid.pipelines.index.bm25 import rrf_fuse

            d_rows, _ = self.candidates(q, c, rerank=config.rerank_exact)
            f_ids, scores = rrf_fuse([self.ids_of(d_rows), b_ids], c)
            rows, dmin = self.rows_for(f_ids.ravel().tolist()).reshape(f_ids.shape), None
        r, s, m = select_filtered(
            rows,
            np.asarray(scores, np.float32),
            self.vectors,
            k,
            delta_min=dmin,
            delta_dedup=config.delta_dedup,
        )
        return RetrievalResult(self.ids_of(r), s, m, dmin, "text", r, mode)

    def check_encoder(self, encoder: Any) -> None:
        if encoder is None:
            raise ValueError("this search mode needs a text encoder (pass --encoder)")
        enc_id, dim = getattr(encoder, "id", None), getattr(encoder, "dim", self.man.dim)
        if dim != self.man.dim:
            raise ValueError(
                f"encoder '{enc_id}' has dimension {dim}, index {self.man.path} has {self.man.dim}"
                f" (built with '{self.man.encoder}') — use that encoder"
            )
        if enc_id is not None and self.man.encoder not in ("unknown", enc_id):
            raise ValueError(
                f"encoder '{enc_id}' differs from the index's encoder '{self.man.encoder}' — "
                "query with the encoder the index was built with"
            )

    # --- what the model pipeline reads ------------------------------------------------

    def _source_uri(self) -> str:
        return self.man.source.get("uri") or self.man.layout.embeddings

    def _frames_index(self) -> dict[str, tuple[int, int]]:
        if self._frames_map is None:
            uri = self._source_uri()
            self._parts = [uri] if uri.endswith(".parquet") else list_parts(uri)
            if not self._parts:
                raise FileNotFoundError(f"{uri}: the index's embeddings source is gone")
            m: dict[str, tuple[int, int]] = {}
            for p, path in enumerate(self._parts):
                vids = read_table(path, EMBEDDINGS, columns=["video_id"]).column("video_id")
                m.update({v: (p, r) for r, v in enumerate(vids.to_pylist())})
            self._frames_map = m
        return self._frames_map

    def _part(self, p: int, max_cached: int = 8) -> pa.Table:
        if p in self._part_cache:
            self._part_cache.move_to_end(p)
            return self._part_cache[p]
        t = read_table(self._parts[p], EMBEDDINGS, columns=["video_id", "frame_emb", "video_emb"])
        self._part_cache[p] = t
        while len(self._part_cache) > max_cached:
            self._part_cache.popitem(last=False)
        return t

    def frame_embeddings(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame vectors of retrieved videos: (n, K, T, dim) float32 and a (n, K, T) mask
        (zeros/False for padded ids and missing frames; T = the longest of the videos)."""
        ids = np.asarray(ids, dtype=object)
        flat = ids.ravel()
        src = self._frames_index()
        found: list[np.ndarray | None] = [None] * len(flat)
        for i, v in enumerate(flat):
            loc = src.get(v) if v is not None else None
            if loc is not None:
                cell = self._part(loc[0]).column("frame_emb")[loc[1]]
                found[i] = np.asarray(
                    cell.values.flatten().to_numpy(zero_copy_only=False), np.float32
                )
        t = max((f.size // self.man.dim for f in found if f is not None), default=1)
        out = np.zeros((len(flat), t, self.man.dim), np.float32)
        mask = np.zeros((len(flat), t), bool)
        for i, f in enumerate(found):
            if f is not None:
                f = f.reshape(-1, self.man.dim)
                out[i, : len(f)], mask[i, : len(f)] = f, True
        return out.reshape(*ids.shape, t, self.man.dim), mask.reshape(*ids.shape, t)

    def manifest_uri(self) -> str | None:
        """The corpus manifest: recorded at build, or the workspace's layout next to the
        embeddings (``corpora/<c>/embeddings/<enc>`` → ``corpora/<c>/manifest``)."""
        if self.man.source.get("manifest"):
            return self.man.source["manifest"]
        uri = self._source_uri().rstrip("/")
        if "/embeddings/" in uri:
            cand = uri.rsplit("/embeddings/", 1)[0] + "/manifest"
            if list_parts(cand):
                return cand
        return None

    def uris(self, ids: np.ndarray) -> np.ndarray:
        """Video file locations for ids (None where padded or unknown)."""
        if self._uris is None:
            m = self.manifest_uri()
            t = read_parts(m, MANIFEST, columns=["video_id", "uri"]) if m else None
            self._uris = (
                dict(zip(*(t.column(c).to_pylist() for c in ("video_id", "uri")), strict=True))
                if t is not None
                else {}
            )
        ids = np.asarray(ids, dtype=object)
        return np.vectorize(
            lambda v: self._uris.get(v) if v is not None else None, otypes=[object]
        )(ids)

    def captions_for(self, ids: np.ndarray) -> np.ndarray:
        rows = self.rows_for(np.asarray(ids, dtype=object).ravel().tolist())
        return self.captions_of(rows).reshape(np.shape(ids))

    def captions_of(self, rows: np.ndarray) -> np.ndarray:
        """Captions of index rows (any shape; None where a row is < 0)."""
        return take_padded(self.captions, rows)
