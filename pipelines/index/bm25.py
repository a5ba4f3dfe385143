"""Sparse caption search with BM25 (VIMI §3.1 picks BM25 over dense for scale and speed),
plus reciprocal-rank fusion for the hybrid mode.

A query whose words match no caption returns padded slots (id None, score 0), not an error.
Saved indexes are verified on load against the records :meth:`Bm25Index.records` took after
saving (the index build keeps them in ``index.json``): bm25s would read a damaged file as a
different ranking.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import bm25s
import numpy as np

from ragvid.schemas.checksum import FileRecord, file_record, verify_file
from ragvid.schemas.io import exists, fs_and_path, join, read_json, write_json_atomic

IDS_JSON = "ids.json"
# bm25s sets its own logger to DEBUG on import: its "Building index from IDs objects" lines
# reached the CLI's console through Prefect's handlers
logging.getLogger("bm25s").setLevel(logging.WARNING)


class Bm25Index:
    """BM25 over captions; ids are the video_ids in the order the captions were given."""

    def __init__(self, model: bm25s.BM25, ids: Sequence[str]):
        self.model = model
        self.ids = np.asarray(list(ids), dtype=object)

    @classmethod
    def build(cls, captions: Sequence[str], ids: Sequence[str]) -> Bm25Index:
        if len(captions) != len(ids):
            raise ValueError(f"captions ({len(captions)}) and ids ({len(ids)}) differ in length")
        if not len(ids):
            raise ValueError("cannot build a BM25 index over zero captions")
        model = bm25s.BM25()
        tokens = bm25s.tokenize([c or "" for c in captions], stopwords="en", show_progress=False)
        model.index(tokens, show_progress=False)
        return cls(model, ids)

    def save(self, out_dir: str) -> None:
        fs, path = fs_and_path(out_dir)
        if "://" in str(out_dir) and not str(out_dir).startswith("file://"):
            raise ValueError(f"{out_dir}: BM25 indexes are saved to local folders only")
        fs.makedirs(path, exist_ok=True)
        self.model.save(path, show_progress=False)
        write_json_atomic(join(out_dir, IDS_JSON), [str(i) for i in self.ids])

    @staticmethod
    def records(out_dir: str) -> dict[str, FileRecord]:
        """Size + sha256 of every file of a saved index, by name (taken right after saving)."""
        fs, path = fs_and_path(out_dir)
        names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
        return {n: file_record(join(out_dir, n)) for n in names if not n.startswith(".")}

    @classmethod
    def load(cls, out_dir: str, expect: Mapping[str, FileRecord | None] | None = None) -> Bm25Index:
        """Load a saved index; ``expect`` (from :meth:`records`) checks every file first
        (:class:`~ragvid.schemas.checksum.ChecksumMismatchError` names a damaged one)."""
        if not exists(join(out_dir, IDS_JSON)):
            raise FileNotFoundError(f"{out_dir}: no BM25 index here — rebuild the index")
        for name, rec in (expect or {}).items():
            verify_file(join(out_dir, name), rec, "BM25 index file")
        _, path = fs_and_path(out_dir)
        model = bm25s.BM25.load(path, show_progress=False)
        return cls(model, read_json(join(out_dir, IDS_JSON)))

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query: ids object (n, k) with None where padded, scores float32 (n, k)."""
        if isinstance(queries, str):
            queries = [queries]
        n, kk = len(queries), min(int(k), len(self.ids))
        ids = np.full((n, int(k)), None, dtype=object)
        scores = np.zeros((n, int(k)), dtype=np.float32)
        if not n:
            return ids, scores
        toks = bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
        toks = [t if t else [""] for t in toks]
        rows, sc = self.model.retrieve(toks, k=kk, show_progress=False, n_threads=1)
        hit = sc > 0
        ids[:, :kk] = np.where(hit, self.ids[rows], None)
        scores[:, :kk] = np.where(hit, sc, 0.0)
        return ids, scores


def rrf_fuse(
    rankings: Sequence[np.ndarray], k: int, c: float = 60.0
) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal-rank fusion of several (n, m) id rankings (None = no hit): Σ 1/(c + rank)."""
    n = len(rankings[0])
    out_ids = np.full((n, k), None, dtype=object)
    out_sc = np.zeros((n, k), dtype=np.float32)
    for q in range(n):
        acc: dict[str, float] = {}
        for r in rankings:
            for rank, v in enumerate(r[q]):
                if v is not None:
                    acc[v] = acc.get(v, 0.0) + 1.0 / (c + rank + 1)
        best = sorted(acc.items(), key=lambda t: (-t[1], t[0]))[:k]
        for col, (v, s) in enumerate(best):
            out_ids[q, col], out_sc[q, col] = v, s
    return out_ids, out_sc
