"""The tantivy backend of one memory-engine shard: an on-disk inverted index of the captions.

Each document is the caption (terms and frequencies only: BM25 needs no positions) and a fast
``row`` column — the row of the shard's side-car table (:mod:`.engine_shard`) — so a hit is
resolved with one columnar read (``fast_field_values``), never a stored-document fetch. The
writer's heap is ``engine_heap_mb`` (one indexing thread: the Ray task is the unit of
parallelism), so a shard's build memory is bounded whatever its size.

Global IDF: tantivy scores a term with its own index's statistics, so a shard alone would use
the shard's IDF. A query is a boolean OR of term queries, each boosted by
``idf_global(t) / idf_shard(t)``: the score becomes exactly BM25 with the IDF of the whole
memory. What stays per shard is the average caption length in the length normalisation
(hash sharding keeps it within a fraction of a percent of the global one at scale).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ragvid.pipelines.vimi.engine_text import analyzer, idf

TOKENIZER = "vimi"  # registered on every open: tantivy does not persist custom analyzers
CAPTION, ROW = "caption", "row"


def _schema():
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_text_field(CAPTION, tokenizer_name=TOKENIZER, index_option="freq")
    sb.add_integer_field(ROW, fast=True)
    return sb.build()


class TantivyShardWriter:
    """Adds captions in row order; ``close`` commits and waits for merges."""

    def __init__(self, folder: str, heap_mb: int) -> None:
        import tantivy

        self._tantivy = tantivy
        self.index = tantivy.Index(_schema(), path=folder, reuse=False)
        self.index.register_tokenizer(TOKENIZER, analyzer())
        self.writer = self.index.writer(heap_size=int(heap_mb) * 1_000_000, num_threads=1)
        self.rows = 0

    def add(self, captions: Sequence[str]) -> None:
        doc = self._tantivy.Document
        for caption in captions:
            self.writer.add_document(doc(caption=caption or "", row=self.rows))
            self.rows += 1

    def close(self) -> None:
        self.writer.commit()
        self.writer.wait_merging_threads()


class TantivyShard:
    """One shard opened for search (thread-safe: tantivy releases the GIL while searching)."""

    def __init__(self, folder: str) -> None:
        import tantivy

        self._tantivy = tantivy
        self.index = tantivy.Index.open(folder)
        self.index.register_tokenizer(TOKENIZER, analyzer())
        self.schema = self.index.schema
        self.searcher = self.index.searcher()
        self.num_docs = int(self.searcher.num_docs)
        self._df: dict[str, int] = {}

    def doc_freq(self, term: str) -> int:
        df = self._df.get(term)
        if df is None:
            if len(self._df) > 1_000_000:  # a cache, not a second vocabulary
                self._df.clear()
            df = self._df[term] = int(self.searcher.doc_freq(CAPTION, term))
        return df

    def prepare(self, global_idf: Callable[[str], float]) -> None:
        """Nothing to do: the global IDF is applied per query (term boosts)."""

    def search(
        self,
        queries: Sequence[Sequence[str]],
        depth: int,
        global_idf: Callable[[str], float],
    ) -> list[list[tuple[float, int]]]:
        """Per query (its distinct terms) the top ``depth`` (score, row), best first."""
        tv = self._tantivy
        should, term_query = tv.Occur.Should, tv.Query.term_query
        out: list[list[tuple[float, int]]] = []
        addresses, owners, scores = [], [], []
        for qi, terms in enumerate(queries):
            clauses = []
            for t in terms:
                df = self.doc_freq(t)
                if df == 0:
                    continue
                q = term_query(self.schema, CAPTION, t, "freq")
                boost = global_idf(t) / idf(self.num_docs, df)
                clauses.append((should, tv.Query.boost_query(q, boost)))
            out.append([])
            if not clauses:
                continue
            hits = self.searcher.search(tv.Query.boolean_query(clauses), depth, count=False).hits
            for score, addr in hits:
                addresses.append(addr)
                owners.append(qi)
                scores.append(float(score))
        if addresses:
            rows = self.searcher.fast_field_values(ROW, addresses)
            for qi, score, row in zip(owners, scores, rows, strict=True):
                out[qi].append((score, int(row)))
        return out
