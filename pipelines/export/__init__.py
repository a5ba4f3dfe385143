"""Exports of ragvid tables in the formats peer tools read (clip-retrieval, NeMo Curator)."""
