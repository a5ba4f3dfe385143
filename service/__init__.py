"""The retrieval service: an HTTP API and a web UI over named indexes."""
