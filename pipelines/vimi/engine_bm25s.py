"""The bm25s backend of one memory-engine shard (the alternative to tantivy).

bm25s scores eagerly: the index is a sparse (term × caption) matrix of precomputed BM25
contributions, and a query sums its terms' columns into a dense score vector over the shard
(O(captions of the shard) per query, so shards must stay small) and takes the top k. It is
built from the same tokens as tantivy (:mod:`.engine_text`), with tantivy's k1 / b and Lucene's
IDF; its contributions lack tantivy's constant factor (k1 + 1), which :meth:`prepare` puts back,
so both backends give the same scores.

Memory: a shard's tokens are held while it is indexed (bm25s has no streaming writer) — the
build of a shard is bounded by the shard's size, not the memory's; more shards, smaller tasks.

Global IDF: :meth:`prepare` rescales each term's column by ``idf_global / idf_shard`` once at
open (a copy of the matrix data in RAM), so scores use the IDF of the whole memory; the
average caption length stays per shard (see :mod:`.engine_tantivy`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ragvid.pipelines.vimi.engine_text import K1, B, idf, tokens
from ragvid.schemas.files import exists, join, write_json_atomic

EMPTY = "empty.json"  # a shard no row hashed to (bm25s cannot index zero documents)


class Bm25sShardWriter:
    def __init__(self, folder: str, heap_mb: int) -> None:  # noqa: ARG002 - same signature
        self.folder = folder
        self.docs: list[list[str]] = []
        self.rows = 0

    def add(self, captions: Sequence[str]) -> None:
        self.docs.extend(tokens(c) for c in captions)
        self.rows += len(captions)

    def close(self) -> None:
        from ragvid.pipelines.index.bm25 import bm25s  # imported with its logger quietened

        if not self.docs:
            write_json_atomic(join(self.folder, EMPTY), {"rows": 0})
            return
        model = bm25s.BM25(k1=K1, b=B, method="lucene")
        model.index(self.docs, show_progress=False)
        model.save(self.folder, show_progress=False)
        self.docs = []


class Bm25sShard:
    def __init__(self, folder: str) -> None:
        from ragvid.pipelines.index.bm25 import bm25s  # imported with its logger quietened

        self.model = None
        self.num_docs = 0
        self._df: np.ndarray = np.zeros(0, np.int64)
        self.vocab: dict[str, int] = {}
        if exists(join(folder, EMPTY)):
            return
        self.model = bm25s.BM25.load(folder, load_corpus=False, mmap=False)
        self.num_docs = int(self.model.scores["num_docs"])
        self.vocab = self.model.vocab_dict
        self._df = np.diff(np.asarray(self.model.scores["indptr"])).astype(np.int64)

    def doc_freq(self, term: str) -> int:
        tid = self.vocab.get(term)
        return int(self._df[tid]) if tid is not None and tid < len(self._df) else 0

    def prepare(self, global_idf: Callable[[str], float]) -> None:
        """Rescale every term's contributions to the memory's IDF and tantivy's scale."""
        if self.model is None:
            return
        factor = np.zeros(len(self._df), np.float64)
        for term, tid in self.vocab.items():
            if tid < len(self._df) and self._df[tid]:
                factor[tid] = (K1 + 1.0) * global_idf(term) / idf(self.num_docs, self._df[tid])
        scores = self.model.scores
        data = np.asarray(scores["data"], np.float64) * np.repeat(factor, self._df)
        scores["data"] = data.astype(np.float32)

    def search(
        self,
        queries: Sequence[Sequence[str]],
        depth: int,
        global_idf: Callable[[str], float],  # noqa: ARG002 - applied in prepare()
    ) -> list[list[tuple[float, int]]]:
        out: list[list[tuple[float, int]]] = [[] for _ in queries]
        if self.model is None:
            return out
        ids, live = [], []
        for qi, terms in enumerate(queries):
            known = [self.vocab[t] for t in terms if self.doc_freq(t)]
            if known:
                ids.append(known)
                live.append(qi)
        if not ids:
            return out
        k = min(int(depth), self.num_docs)
        rows, sc = self.model.retrieve(ids, k=k, show_progress=False, n_threads=0)
        for qi, r, s in zip(live, rows, sc, strict=True):
            out[qi] = [(float(v), int(d)) for v, d in zip(s, r, strict=True) if v > 0]
        return out
