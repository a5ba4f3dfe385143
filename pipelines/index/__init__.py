"""The retrieval database: index layout and vectors, sharded FAISS build and search, dedup,
neighbour lists, BM25, inspection pages."""
