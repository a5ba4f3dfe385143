"""ragvid.flows."""
