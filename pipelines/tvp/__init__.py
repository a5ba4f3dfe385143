"""Text-video prediction (FCA, seed 004) datasets: SSv2, BridgeData V1 and Epic-Kitchens-100
into ragvid video manifests (:mod:`.ingest`, :mod:`.sources`)."""
