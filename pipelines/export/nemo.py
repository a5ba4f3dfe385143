"""NeMo Curator's embedding parquet: ``id`` + ``embeddings`` (float32 lists), one file a part.

The columns are the defaults of Curator's semantic-dedup workflow (``id_field="id"``,
``embedding_field="embeddings"``); a list of float32 is what cuDF — Curator's engine, which has
no float16 — and every other Parquet reader take. The folder is a ragvid table too
(``_markers/``: names Curator's, dask's and pyarrow's readers skip).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from ragvid.pipelines.executor.base import Part
from ragvid.pipelines.export.stage import ExportRows
from ragvid.schemas.files import fs_and_path, join
from ragvid.schemas.io import part_name, write_table
from ragvid.schemas.markers import declare_table
from ragvid.schemas.tables import NEMO_EMBEDDINGS

_PART = re.compile(r"part-(\d{5})\.parquet")


def float32_lists(x: np.ndarray) -> pa.Array:
    """(n, dim) float32 → ``list<float32>`` without a Python loop."""
    n, dim = x.shape
    offsets = pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32))
    items = pa.array(np.ascontiguousarray(x, np.float32).ravel())
    return pa.ListArray.from_arrays(offsets, items).cast(NEMO_EMBEDDINGS.schema().field(1).type)


class NemoFormat:
    """``part-<i>.parquet`` with ``id`` and the video (or caption) vectors as ``embeddings``."""

    name = "nemo"

    def __init__(self, vectors: str = "video") -> None:
        if vectors not in ("video", "text"):
            raise ValueError(f"vectors={vectors!r}: expected 'video' or 'text'")
        self.vectors = vectors
        self.signature = {"vectors": vectors}

    def outputs(self, out: str, index: int) -> tuple[str, dict[str, str]]:
        return join(out, part_name(index)), {}

    def prepare(self, out: str) -> None:
        declare_table(out, "export-nemo")

    def write(self, part: Part, rows: ExportRows) -> None:
        x = rows.video if self.vectors == "video" else rows.text
        table = pa.table({"id": rows.video_id, "embeddings": float32_lists(x)})
        write_table(part.uri, table, NEMO_EMBEDDINGS, encoder=rows.encoder)

    def existing(self, out: str) -> dict[int, list[str]]:
        fs, path = fs_and_path(out)
        found: dict[int, list[str]] = {}
        if fs.exists(path):
            for p in fs.ls(path, detail=False):
                m = _PART.fullmatch(p.rstrip("/").rsplit("/", 1)[-1])
                if m:
                    found.setdefault(int(m.group(1)), []).append(join(out, m.group(0)))
        return found
