"""Sparse caption search with BM25 (VIMI §3.1 picks BM25 over dense for scale and speed),
plus reciprocal-rank fusion for the hybrid mode.

A query whose words match no caption returns padded slots (id None, score 0), not an error.
Saved indexes are verified on load against the records :meth:`Bm25Index.records` took after
saving (the index build keeps them in ``index.json``): bm25s would read a damaged file as a
different ranking.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain, islice

import bm25s
import numpy as np
import pyarrow as pa
from bm25s.stopwords import STOPWORDS_EN

from ragvid.schemas.checksum import FileRecord, file_record, verify_file
from ragvid.schemas.io import exists, fs_and_path, join, read_json, write_bytes_atomic

IDS_JSON = "ids.json"
CHUNK = 10_000  # captions tokenized at a time: their token strings (~1 kB a caption) are the peak
# bm25s.tokenize's defaults (token_pattern, lower=True) with stopwords="en", as search() uses
_SPLIT = re.compile(r"(?u)\b\w\w+\b").findall
_STOPWORDS = frozenset(STOPWORDS_EN)
# bm25s (lucene, its defaults); _WORK is the float type its per-caption score arithmetic runs in
# (float32 tf + float64 scalar: float64 under NumPy 2, float32 under NumPy 1's value casting)
_K1, _B = 1.5, 0.75
_WORK = (np.ones(1, np.float32) + np.float64(1.0)).dtype
# bm25s sets its own logger to DEBUG on import: its "Building index from IDs objects" lines
# reached the CLI's console through Prefect's handlers
logging.getLogger("bm25s").setLevel(logging.WARNING)


class Bm25Index:
    """BM25 over captions; ids are the video_ids in the order the captions were given."""

    def __init__(self, model: bm25s.BM25, ids: Sequence[str]):
        self.model = model
        # Arrow strings: 10M Python str objects would cost ~0.7 GB in the build process
        if not isinstance(ids, pa.Array):
            ids = pa.array([str(i) for i in ids], pa.string())
        self.ids = ids

    @classmethod
    def build(
        cls, captions: Sequence[str | None], ids: Sequence[str], chunk_size: int = CHUNK
    ) -> Bm25Index:
        """Index ``chunk_size`` captions at a time: bm25s.tokenize + index holds every caption's
        tokens as Python lists (~1 kB a caption, ~10 GB at 10M); this keeps ~14 bytes a
        (caption, term) pair and builds the same index (same vocabulary ids, same scores)."""
        if len(captions) != len(ids):
            raise ValueError(f"captions ({len(captions)}) and ids ({len(ids)}) differ in length")
        if not len(ids):
            raise ValueError("cannot build a BM25 index over zero captions")
        scores, vocab = _stream_scores(captions, max(1, int(chunk_size)))
        model = bm25s.BM25()
        # what BM25.index sets, with its create_empty_token: "" gets the id after the last word
        vocab[""] = len(vocab)
        model.scores, model.vocab_dict = scores, vocab
        model.unique_token_ids_set = set(vocab.values())
        model.nonoccurrence_array = None  # only bm25l / bm25+ use it
        return cls(model, ids)

    def save(self, out_dir: str) -> None:
        fs, path = fs_and_path(out_dir)
        if "://" in str(out_dir) and not str(out_dir).startswith("file://"):
            raise ValueError(f"{out_dir}: BM25 indexes are saved to local folders only")
        fs.makedirs(path, exist_ok=True)
        self.model.save(path, show_progress=False)
        # the id list written a slice at a time, not as one list of 10M Python strings
        step = 100_000
        body = ",".join(
            json.dumps(self.ids.slice(a, step).to_pylist())[1:-1]
            for a in range(0, len(self.ids), step)
        )
        write_bytes_atomic(join(out_dir, IDS_JSON), f"[{body}]".encode())

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
        # a query of stopwords only: " " is no vocabulary word (bm25s's "" has no score column
        # in 0.3.16, so [""] raised "maximum token ID ... higher than the number of tokens")
        toks = [t if t else [" "] for t in toks]
        rows, sc = self.model.retrieve(toks, k=kk, show_progress=False, n_threads=1)
        hit = sc > 0
        found = self.ids.take(pa.array(rows.ravel())).to_numpy(zero_copy_only=False)
        ids[:, :kk] = np.where(hit, found.reshape(rows.shape), None)
        scores[:, :kk] = np.where(hit, sc, 0.0)
        return ids, scores


def _batches(captions: Sequence[str | None] | pa.Array, size: int) -> Iterator[list]:
    """Lists of ``size`` captions: an Arrow array is sliced, never made one Python list."""
    if isinstance(captions, (pa.Array, pa.ChunkedArray)):
        for a in range(0, len(captions), size):
            yield captions.slice(a, size).to_pylist()
        return
    it = iter(captions)
    while batch := list(islice(it, size)):
        yield batch


def _tokenize_chunks(
    captions: Sequence[str | None], chunk_size: int, vocab: dict[str, int]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per chunk: each caption's (term id, count) pairs by caption (cols, tf, terms per caption)
    and its token count. New words get ids in first-seen order, as bm25s.tokenize gives them;
    ``vocab`` maps stopwords to -1 (dropped) and grows in place."""
    for batch in _batches(captions, chunk_size):
        toks = [_SPLIT((c or "").lower()) for c in batch]
        flat = list(chain.from_iterable(toks))
        for t in dict.fromkeys(flat):
            if t not in vocab:
                vocab[t] = len(vocab) - len(_STOPWORDS)
        tid = np.fromiter(map(vocab.__getitem__, flat), np.int64, len(flat))
        doc = np.repeat(np.arange(len(batch)), np.fromiter(map(len, toks), np.int64, len(toks)))
        keep = tid >= 0
        tid, doc = tid[keep], doc[keep]
        del toks, flat, keep
        n_terms = max(1, len(vocab) - len(_STOPWORDS))
        key, tf = np.unique(doc * n_terms + tid, return_counts=True)
        row = key // n_terms
        cols = (key - row * n_terms).astype(np.int32)
        tf = tf.astype(np.uint16 if not tf.size or tf.max() < 2**16 else np.uint32)
        per_doc = np.bincount(row, minlength=len(batch)).astype(np.int32)
        yield cols, tf, per_doc, np.bincount(doc, minlength=len(batch)).astype(np.int32)


def _stream_scores(
    captions: Sequence[str | None], chunk_size: int
) -> tuple[dict[str, np.ndarray | int], dict[str, int]]:
    """bm25s's score matrix (CSC: a column per term, rows ascending) and vocabulary, built from
    compact per-chunk arrays: two passes over the (caption, term) pairs, never the tokens."""
    lut: dict[str, int] = dict.fromkeys(_STOPWORDS, -1)
    parts: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque()
    lens = []
    for cols, tf, per_doc, n_tok in _tokenize_chunks(captions, chunk_size, lut):
        parts.append((cols, tf, per_doc))
        lens.append(n_tok)
    vocab = {t: i for t, i in lut.items() if i >= 0}
    del lut
    if not vocab:
        raise ValueError("no caption has a word to index (all empty or stopwords)")
    doc_len = np.concatenate(lens)
    del lens
    n_docs, n_vocab = len(doc_len), len(vocab)
    avg_len = np.float64(doc_len.sum(dtype=np.int64)) / n_docs  # == bm25s's np.mean
    df = np.zeros(n_vocab, np.int64)
    for cols, _, _ in parts:
        df += np.bincount(cols, minlength=n_vocab)
    # bm25s's lucene idf, with math.log as it calls it (np.log may differ in the last bit)
    inner = 1.0 + (n_docs - df + 0.5) / (df + 0.5)
    idf = np.fromiter(map(math.log, inner.tolist()), np.float64, n_vocab).astype(np.float32)
    indptr = np.zeros(n_vocab + 1, np.int64)
    np.cumsum(df, out=indptr[1:])
    heads = indptr[:-1].copy()  # next free slot of each column
    data = np.empty(int(indptr[-1]), np.float32)
    indices = np.empty(int(indptr[-1]), np.int32)
    first = 0
    while parts:
        cols, tf, per_doc = parts.popleft()
        row = np.repeat(np.arange(len(per_doc)), per_doc)
        denom = (_K1 * ((1 - _B) + _B * doc_len[first + row] / avg_len)).astype(_WORK)
        tfw = tf.astype(_WORK)
        score = (idf[cols].astype(_WORK) * (tfw / (tfw + denom))).astype(np.float32)
        order = np.argsort(cols, kind="stable")  # by term, then by caption
        c = cols[order]
        if c.size:
            start = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
            counts = np.diff(np.r_[start, c.size])
            pos = heads[c] + (np.arange(c.size) - np.repeat(start, counts))
            data[pos] = score[order]
            indices[pos] = row[order] + first
            heads[c[start]] += counts
        first += len(per_doc)
    return {"data": data, "indices": indices, "indptr": indptr, "num_docs": n_docs}, vocab


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
