"""ragvid.model — the RAGME model: time enhancer, RagCA, RagInit, adapter files, pipeline.

Names resolve lazily so `import ragvid.model` stays cheap (torch/diffusers load on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TimeEnhancer": "enhancer",
    "RagCrossAttention": "ragca",
    "RagCALayers": "ragca",
    "RetrievalTokens": "ragca",
    "inject_ragca": "ragca",
    "ragca_tokens": "ragca",
    "temporal_layer_names": "ragca",
    "rag_init": "raginit",
    "encode_videos": "raginit",
    "RagmeAdapter": "adapter",
    "RagmeUNet": "adapter",
    "save_adapter": "adapter",
    "load_adapter": "adapter",
    "RagmePipeline": "pipeline_ragme",
    "RagmeOutput": "pipeline_ragme",
    "RetrievalSource": "retrieval_source",
    "RetrievedBatch": "retrieval_source",
    "InMemoryRetrieval": "retrieval_source",
    "RetrieverSource": "retrieval_source",
    "export_to_mp4": "video_io",
    "read_video": "video_io",
    "list_presets": "presets",
    "get_preset": "presets",
    "build_components": "presets",
    "save_tiny_base": "presets",
    "FCAModel": "fca",
    "FCAAdapter": "fca",
    "noise_initial_frames": "fca",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ragvid.model' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return __all__
