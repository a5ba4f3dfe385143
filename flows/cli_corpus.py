"""`ragvid corpus synth|ingest` — filled in by the corpus work (issue 2)."""
