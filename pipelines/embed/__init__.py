"""Embedding: encoder specs and loading, frame decoding, the embed stage, its Ray Data
executor, encoder fitting."""
