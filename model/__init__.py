"""ragvid.model."""
