"""VIMI (seed 003): the image-text memory, BM25 bulk retrieval, the retrieval-augmented
multimodal prompt dataset and the three instruction-tuning task tables."""
