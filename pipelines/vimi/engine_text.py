"""What both BM25 backends of the memory engine agree on: tokens, the BM25 formula, shard keys.

One analyzer (tantivy's ``simple`` tokenizer: split on anything not alphanumeric, tokens over
40 bytes dropped, lowercased, English stop words removed) tokenises the captions at build time
and the queries at search time, for tantivy *and* bm25s — so both backends index the same terms
and score them with the same BM25 (k1 = 1.2, b = 0.75, Lucene's IDF; tantivy's constants), and
a query is a bag of exact terms: never parsed, so punctuation or ``AND`` / ``-`` / ``"`` in a
caption cannot break it or change its meaning.

Rows go to shards by FNV-1a 64 of the ``item_id`` bytes (vectorised over an Arrow column): a
stable hash, the same on every machine and Python, so a rebuild puts every row where it was.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pyarrow as pa

TOKENIZER_ID = "tantivy-simple/remove_long40/lowercase/stopword-english"
K1, B = 1.2, 0.75  # tantivy's BM25 constants; the bm25s backend is built with the same
MAX_TOKEN_BYTES = 40

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@lru_cache(maxsize=1)
def analyzer():
    """The tantivy text analyzer both backends use (built once per process)."""
    import tantivy

    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_BYTES))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stopword("english"))
        .build()
    )


def tokens(text: str | None) -> list[str]:
    """A caption's terms, in order, repeats kept (what the index counts)."""
    return analyzer().analyze(text) if text else []


def query_terms(text: str | None) -> list[str]:
    """A query's distinct terms, first-seen order: a bag of term clauses, repeats not doubled."""
    return list(dict.fromkeys(tokens(text)))


def idf(num_docs: int, doc_freq: int) -> float:
    """Lucene's / tantivy's BM25 IDF: ln(1 + (N − n + 0.5) / (n + 0.5))."""
    return math.log(1.0 + (num_docs - doc_freq + 0.5) / (doc_freq + 0.5))


def shard_of(item_ids: pa.Array | pa.ChunkedArray, shards: int) -> np.ndarray:
    """Each row's shard: FNV-1a 64 of its ``item_id``'s UTF-8 bytes, modulo ``shards``."""
    if isinstance(item_ids, pa.ChunkedArray):
        item_ids = item_ids.combine_chunks()
    arr = item_ids.cast(pa.large_string())
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.int64)
    if arr.null_count:
        raise ValueError("item_id is null in the memory table — re-ingest the memory")
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64, n + 1, arr.offset * 8)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(lengths.max(initial=0))):
            live = lengths > j
            idx = np.nonzero(live)[0]
            h[idx] = (h[idx] ^ data[starts[idx] + j].astype(np.uint64)) * _FNV_PRIME
    return (h % np.uint64(shards)).astype(np.int64)
